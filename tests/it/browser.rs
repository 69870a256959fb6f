//! The first-party tags end to end in headless Chromium.
//!
//! The action tag (SPEC §8): a tracking link on the edge lands on a local shop
//! page carrying the tag; the tag keeps the click id in `ce_cid`;
//! `clickedge.track('sale', …)` on a later page of the shop produces an
//! `action.v1` whose `click_id` is the click event's. A page on an origin the
//! brand did not list is refused.
//!
//! The STAT tag (SPEC §9): a partner's links to the brand become tracking
//! links, added ones too, others stay, and one followed through the edge lands
//! where it pointed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::support::{sample, TestEdge};

/// The shop's pages, as a brand's site would serve them, with the tag from
/// the tracking host `edge`.
fn page(path: &str, edge: u16) -> Option<String> {
    let tag = format!(r#"<script src="http://acme.sjv.io:{edge}/v1/tag.js"></script>"#);
    Some(match path {
        // The landing page: the tag keeps the click id; the page shows what it
        // sees, then opens the checkout (same site) in a frame.
        "/landing" => format!(
            r#"<!doctype html><html><head>
<script>window.beforeTag = Object.keys(window);</script>
{tag}
</head><body><pre id="seen"></pre>
<script>(function () {{
var added = Object.keys(window).filter(function (k) {{ return beforeTag.indexOf(k) < 0 && k !== "beforeTag"; }});
document.getElementById("seen").textContent =
  "cookie=" + document.cookie + " id=" + clickedge.clickId() + " globals=" + added.join(",");
var frame = document.createElement("iframe");
frame.src = "/checkout";
document.body.appendChild(frame);
}})();</script>
<img src="/slow"></body></html>"#
        ),
        // A later page with no click id in its URL: the cookie has it.
        "/checkout" => format!(
            r#"<!doctype html><html><head>{tag}</head><body>
<script>clickedge.track("sale", {{ order_id: "B-1", amount: "19.90", currency: "USD", items: [{{ sku: "SKU-9", quantity: 1 }}] }});</script>
</body></html>"#
        ),
        // A partner's page with the STAT tag: links to the brand (before and
        // after the script, and one added later), one elsewhere, one already
        // a tracking link.
        "/partner" => format!(
            r#"<!doctype html><html><body>
<a id="brand" href="https://www.acme.com/shoes?color=red">shoes</a>
<a id="sub" href="http://shop.acme.com/deal">deal</a>
<a id="other" href="https://other.example/page">elsewhere</a>
<a id="tracked" href="http://acme.sjv.io:{edge}/c/4242/5678/9012">tracked</a>
<script src="http://acme.sjv.io:{edge}/stat.js?partner=4242"></script>
<a id="after" href="https://www.acme.com/after">after</a>
<script>setTimeout(function () {{
  var a = document.createElement("a"); a.id = "later"; a.href = "https://www.acme.com/later"; a.textContent = "later";
  document.body.appendChild(a);
}}, 50);</script>
<img src="/slow"></body></html>"#
        ),
        // Another site copying the tag.
        "/foreign" => format!(
            r#"<!doctype html><html><head>{tag}</head><body>
<script>clickedge.track("lead", {{ customer_id: "copied" }});</script>
<img src="/slow"></body></html>"#
        ),
        _ => return None,
    })
}

/// Serves the shop's pages on 127.0.0.1; `/slow` answers after a second, so the
/// page's load (and Chromium's DOM dump) waits for the beacons to leave.
/// The edge's port is set once the edge runs (its brand record names the
/// shop's origin, so the shop starts first).
async fn serve_shop(edge: Arc<AtomicU16>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let edge = edge.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| async move {
                        let path = request.uri().path().to_owned();
                        let response = if path == "/slow" {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            hyper::Response::builder()
                                .header("content-type", "image/gif")
                                .body(Full::new(Bytes::new()))
                        } else if let Some(html) = page(&path, edge) {
                            hyper::Response::builder()
                                .header("content-type", "text/html; charset=utf-8")
                                .body(Full::new(Bytes::from(html)))
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::new()))
                        };
                        Ok::<_, Infallible>(response.unwrap())
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The DOM Chromium has once `url` loaded (on a thread of its own: the edge and
/// the shop serve on the runtime meanwhile).
async fn dump_dom(mut chromium: Command, url: String) -> String {
    tokio::task::spawn_blocking(move || {
        let output = chromium.arg("--dump-dom").arg(url).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tag_keeps_the_click_id_and_tracks_a_sale_from_the_brands_site_only() {
    let profile = tempfile::tempdir().unwrap();
    let browser =
        || crate::support::chromium(profile.path(), &["acme.sjv.io", "shop.test", "evil.test"]);
    if browser().is_none() {
        return;
    }
    let edge_port = Arc::new(AtomicU16::new(0));
    let shop = serve_shop(edge_port.clone()).await;
    let shop_origin = format!("http://shop.test:{}", shop.port());
    let links = format!(
        concat!(
            r#"{{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"{origin}/landing"}}"#,
            "\n",
            r#"{{"type":"brand","brand_id":"acme","hosts":["acme.sjv.io"],"origins":["{origin}"]}}"#,
            "\n"
        ),
        origin = shop_origin
    );
    let edge = TestEdge::start(&links, &[]).await;
    let http_port = edge.http.port();
    edge_port.store(http_port, Ordering::SeqCst);

    let click_url = format!("http://acme.sjv.io:{http_port}/c/1234/5678/9012");
    let dom = dump_dom(browser().unwrap(), click_url).await;

    let clicks = edge.events(1).await;
    assert_eq!(clicks.len(), 1, "{clicks:?}");
    let click_id = clicks[0].field("click_id").as_str().unwrap().to_owned();
    // The landing page saw the click id in the cookie, and one new global.
    assert!(
        dom.contains(&format!(
            "cookie=ce_cid={click_id} id={click_id} globals=clickedge<"
        )),
        "{dom}"
    );

    let actions = edge.actions(1).await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    crate::actions::check_schema(&actions);
    let sale = &actions[0];
    assert_eq!(sale.field("event"), "sale");
    assert_eq!(
        sale.field("click_id"),
        click_id.as_str(),
        "the click's id, from the cookie"
    );
    assert_eq!(sale.field("click_status"), "valid");
    assert_eq!(sale.field("channel"), "tag");
    assert_eq!(sale.field("verified"), false);
    assert_eq!(sale.field("amount"), "19.90");
    assert_eq!(sale.field("order_id"), "B-1");
    assert_eq!(sale.key.as_deref(), Some("acme|sale|B-1"));
    assert!(
        sale.field("user_agent")
            .as_str()
            .unwrap()
            .contains("Chrome"),
        "{:?}",
        sale.field("user_agent")
    );

    // The same tag on a site the brand did not list: refused, nothing recorded.
    let foreign = format!("http://evil.test:{}/foreign", shop.port());
    let foreign_dom = dump_dom(browser().unwrap(), foreign).await;
    assert!(foreign_dom.contains("<body>"), "{foreign_dom}");
    let metrics = edge
        .wait_for_metrics("the foreign beacon refused", |m| {
            sample(
                m,
                r#"clickedge_actions_total{channel="tag",result="unauthorized"}"#,
            ) == Some(1.0)
        })
        .await;
    assert_eq!(
        sample(
            &metrics,
            r#"clickedge_actions_total{channel="tag",result="accepted"}"#
        ),
        Some(1.0)
    );
    let actions = edge.actions(1).await;
    assert_eq!(
        actions.len(),
        1,
        "the foreign lead is not recorded: {actions:?}"
    );
    let _: &Value = actions[0].field("event");
    edge.stop().await.unwrap();
}

/// The `href` of the element with `id` in a dumped DOM (entities as Chromium
/// writes them).
fn href_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let tag_start = dom[..at].rfind('<').unwrap();
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>').unwrap()];
    let href = tag
        .split("href=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no href in {tag}"));
    href[..href.find('"').unwrap()].replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stat_tag_turns_a_partners_brand_links_into_tracking_links() {
    let profile = tempfile::tempdir().unwrap();
    let browser = || crate::support::chromium(profile.path(), &["acme.sjv.io", "shop.test"]);
    if browser().is_none() {
        return;
    }
    let edge_port = Arc::new(AtomicU16::new(0));
    let shop = serve_shop(edge_port.clone()).await;
    let links = concat!(
        r#"{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"7000","url":"https://www.acme.com/","deeplink_hosts":["www.acme.com","*.acme.com"],"stat":true}"#,
        "\n",
        r#"{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/summer"}"#,
        "\n"
    );
    let edge = TestEdge::start(links, &[]).await;
    let port = edge.http.port();
    edge_port.store(port, Ordering::SeqCst);

    let dom = dump_dom(
        browser().unwrap(),
        format!("http://shop.test:{}/partner", shop.port()),
    )
    .await;
    let encode = |original: &str| {
        // encodeURIComponent's escaping, as the tag writes it.
        let mut out = String::new();
        for b in original.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        format!("https://acme.sjv.io/c/4242/7000/9012?u={out}")
    };
    assert_eq!(
        href_of(&dom, "brand"),
        encode("https://www.acme.com/shoes?color=red")
    );
    assert_eq!(href_of(&dom, "sub"), encode("http://shop.acme.com/deal"));
    assert_eq!(href_of(&dom, "after"), encode("https://www.acme.com/after"));
    assert_eq!(
        href_of(&dom, "later"),
        encode("https://www.acme.com/later"),
        "a link added later"
    );
    assert_eq!(
        href_of(&dom, "other"),
        "https://other.example/page",
        "another site's link stays"
    );
    assert_eq!(
        href_of(&dom, "tracked"),
        format!("http://acme.sjv.io:{port}/c/4242/5678/9012"),
        "a tracking link is not rewritten"
    );
    assert_eq!(
        dom.matches("data-clickedge=").count(),
        4,
        "each brand link once: {dom}"
    );

    // Following one through the edge (over the test's plain HTTP: the tag
    // writes https) lands on the original URL, with a click id.
    let rewritten = href_of(&dom, "brand");
    let target = &rewritten[rewritten.find("/c/").unwrap()..];
    let r = edge.get("acme.sjv.io", target).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert!(
        r.location()
            .starts_with("https://www.acme.com/shoes?color=red&clickid="),
        "{}",
        r.location()
    );
    let click_id = r.click_id("clickid");
    let events = edge.events(1).await;
    let event = crate::support::event_for(&events, &click_id);
    assert_eq!(event.field("partner_id"), "4242");
    assert_eq!(event.field("deeplink"), "accepted");

    // The script itself: cached by ETag; a bad partner 400; no stat record 404.
    let script = edge.get("acme.sjv.io", "/stat.js?partner=4242").await;
    assert_eq!(script.header("cache-control"), Some("public, max-age=300"));
    let etag = script.header("etag").unwrap().to_owned();
    let again = edge
        .get_with(
            "acme.sjv.io",
            "/stat.js?partner=4242",
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(again.status, 304);
    assert_eq!(
        edge.get("acme.sjv.io", "/stat.js?partner=no%20spaces")
            .await
            .status,
        400
    );
    assert_eq!(edge.get("acme.sjv.io", "/stat.js").await.status, 400);
    edge.stop().await.unwrap();
    let plain = TestEdge::start(
        r#"{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"1","url":"https://www.acme.com/"}
{"type":"fallback","host":"acme.sjv.io","url":"https://www.acme.com/"}"#,
        &[],
    )
    .await;
    assert_eq!(
        plain
            .get("acme.sjv.io", "/stat.js?partner=4242")
            .await
            .status,
        404,
        "not the fallback's redirect"
    );
    plain.stop().await.unwrap();
}
