//! SPEC §2 "Mobile apps" and `app_site`: the response each kind of visitor gets,
//! the interstitial page (checked in a real headless Chromium too), and the
//! app-site association files byte for byte.

use serde_json::Value;

use crate::support::{request, Consumed, TestEdge};

const AASA: &str = r#"{"applinks":{"details":[{"appIDs":["ABCDE12345.com.acme.app"],"components":[{"/":"/c/*"}]}]}}"#;
const ASSETLINKS: &str = r#"[{"relation":["delegate_permission/common.handle_all_urls"],"target":{"namespace":"android_app","package_name":"com.acme"}}]"#;

fn links() -> String {
    format!(
        r#"{{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"10","url":"https://www.acme.com/app?x=1","app":{{"ios_url":"https://apps.apple.com/app/id123","android_url":"https://play.google.com/store/apps/details?id=com.acme&hl=en","deeplink":"acme://home?ref=edge","interstitial":true}}}}
{{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"11","url":"https://www.acme.com/store","app":{{"ios_url":"https://apps.apple.com/app/id123","android_url":"https://play.google.com/store/apps/details?id=com.acme"}}}}
{{"type":"tracking","host":"acme.sjv.io","campaign_id":"1","ad_id":"12","url":"https://www.acme.com/plain"}}
{{"type":"fallback","host":"acme.sjv.io","url":"https://www.acme.com/"}}
{{"type":"app_site","host":"acme.sjv.io","apple_app_site_association":{AASA},"assetlinks":{ASSETLINKS}}}
"#
    )
}

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

/// (name, User-Agent, device, os, bot)
const MATRIX: &[(&str, Option<&str>, &str, &str, bool)] = &[
    ("iPhone Safari", Some(IPHONE), "mobile", "ios", false),
    ("iPad Safari", Some("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1"), "tablet", "ios", false),
    ("Android phone Chrome", Some("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"), "mobile", "android", false),
    ("Android tablet Chrome", Some("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"), "tablet", "android", false),
    ("Instagram in-app (iOS)", Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 320.0.2.26.108 (iPhone14,5; iOS 17_4; en_US; en-US; scale=3.00; 1170x2532; 560347025)"), "mobile", "ios", false),
    ("Facebook in-app (Android)", Some("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240205.004; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/122.0.6261.119 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/454.0.0.44.109;]"), "mobile", "android", false),
    ("Windows Chrome", Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"), "desktop", "windows", false),
    ("macOS Safari", Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"), "desktop", "macos", false),
    ("Linux Firefox", Some("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"), "desktop", "linux", false),
    ("Googlebot smartphone", Some("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"), "bot", "android", true),
    ("facebookexternalhit", Some("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"), "bot", "other", true),
    ("WhatsApp preview", Some("WhatsApp/2.23.20.0 A"), "bot", "other", true),
    ("empty", None, "bot", "other", true),
];

fn event_for_partner<'a>(events: &'a [Consumed], partner: &str) -> &'a Consumed {
    let matching: Vec<_> = events
        .iter()
        .filter(|e| e.field("partner_id") == partner)
        .collect();
    assert_eq!(matching.len(), 1, "exactly one event for partner {partner}");
    matching[0]
}

fn href(page: &str, id: &str) -> Option<String> {
    let start = page.find(&format!("id=\"{id}\" href=\""))? + id.len() + 12;
    let end = start + page[start..].find('"')?;
    Some(html_unescape(&page[start..end]))
}

fn html_unescape(text: &str) -> String {
    text.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

#[tokio::test]
async fn each_kind_of_visitor_gets_its_answer_and_one_event() {
    let edge = TestEdge::start(&links(), &[]).await;
    let mut expected_events = 0;
    for (index, (name, ua, _device, os, bot)) in MATRIX.iter().enumerate() {
        let headers: Vec<(&str, &str)> = ua.map(|ua| ("user-agent", ua)).into_iter().collect();
        let app_visitor = !bot && (*os == "ios" || *os == "android");

        // The interstitial record.
        let r = request(
            edge.http,
            "GET",
            "acme.sjv.io",
            &format!("/c/i{index}/10/1"),
            &headers,
        )
        .await;
        if app_visitor {
            assert_eq!(r.status, 200, "{name}");
            assert_eq!(
                r.header("content-type"),
                Some("text/html; charset=utf-8"),
                "{name}"
            );
            assert_eq!(
                href(&r.body, "open-app").as_deref(),
                Some("acme://home?ref=edge"),
                "{name}"
            );
            let store = href(&r.body, "get-app").unwrap();
            let want = if *os == "ios" {
                "https://apps.apple.com/app/id123"
            } else {
                "https://play.google.com/store/apps/details?id=com.acme&hl=en"
            };
            assert_eq!(store, want, "{name}");
            let website = href(&r.body, "website").unwrap();
            assert!(
                website.starts_with("https://www.acme.com/app?x=1&clickid="),
                "{name}: {website}"
            );
        } else {
            assert_eq!(r.status, 302, "{name}");
            assert!(
                r.location()
                    .starts_with("https://www.acme.com/app?x=1&clickid="),
                "{name}"
            );
        }

        // The store record.
        let r = request(
            edge.http,
            "GET",
            "acme.sjv.io",
            &format!("/c/s{index}/11/1"),
            &headers,
        )
        .await;
        assert_eq!(r.status, 302, "{name}");
        let want = match (app_visitor, *os) {
            (true, "ios") => "https://apps.apple.com/app/id123",
            (true, _) => "https://play.google.com/store/apps/details?id=com.acme",
            (false, _) => "https://www.acme.com/store?clickid=",
        };
        assert!(r.location().starts_with(want), "{name}: {}", r.location());

        // No app: every visitor is redirected as usual.
        let r = request(
            edge.http,
            "GET",
            "acme.sjv.io",
            &format!("/c/p{index}/12/1"),
            &headers,
        )
        .await;
        assert_eq!(r.status, 302, "{name}");
        assert!(
            r.location()
                .starts_with("https://www.acme.com/plain?clickid="),
            "{name}"
        );
        expected_events += 3;
    }

    let events = edge.events(expected_events).await;
    assert_eq!(
        events.len(),
        expected_events,
        "one event per click, none more"
    );
    for (index, (name, _, device, os, bot)) in MATRIX.iter().enumerate() {
        let app_visitor = !bot && (*os == "ios" || *os == "android");
        for (prefix, outcome) in [
            (
                "i",
                if app_visitor {
                    "interstitial"
                } else {
                    "redirect"
                },
            ),
            ("s", if app_visitor { "app_store" } else { "redirect" }),
            ("p", "redirect"),
        ] {
            let e = event_for_partner(&events, &format!("{prefix}{index}"));
            assert_eq!(e.field("outcome"), outcome, "{name} {prefix}");
            assert_eq!(e.field("device"), *device, "{name}");
            assert_eq!(e.field("os"), *os, "{name}");
            assert_eq!(e.field("bot"), *bot, "{name}");
        }
        if app_visitor {
            let e = event_for_partner(&events, &format!("i{index}"));
            assert_eq!(e.field("status"), 200);
            assert!(e
                .field("location")
                .as_str()
                .unwrap()
                .ends_with(e.field("click_id").as_str().unwrap()));
        }
    }
}

#[tokio::test]
async fn the_interstitial_is_locked_down_and_its_links_leave_the_edge() {
    let edge = TestEdge::start(&links(), &[]).await;
    let r = request(
        edge.http,
        "GET",
        "acme.sjv.io",
        "/c/77/10/1",
        &[("user-agent", IPHONE)],
    )
    .await;
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").expect("a CSP");
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-robots-tag"), Some("noindex"));
    assert!(r.header("set-cookie").is_some());
    assert!(
        !r.body.contains("<script") && !r.body.contains("src="),
        "self-contained: {}",
        r.body
    );
    assert!(r.body.contains("x=1&amp;clickid="), "escaped: {}", r.body);
    for id in ["open-app", "get-app", "website"] {
        let link = href(&r.body, id).unwrap();
        assert!(
            !link.contains("acme.sjv.io"),
            "{id} leads back to the edge: {link}"
        );
    }
    assert_eq!(edge.events(1).await.len(), 1);
}

#[tokio::test]
async fn app_site_files_are_served_byte_for_byte() {
    let edge = TestEdge::start(&links(), &[]).await;
    for (path, body) in [
        ("/.well-known/apple-app-site-association", AASA),
        ("/.well-known/assetlinks.json", ASSETLINKS),
    ] {
        let r = request(
            edge.http,
            "GET",
            "acme.sjv.io",
            path,
            &[("user-agent", IPHONE)],
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(r.body, body, "{path}");
        let _: Value = serde_json::from_str(&r.body).unwrap();
    }
    // Not clicks.
    let (bootstrap, topic) = (edge.bootstrap.clone(), edge.topic.clone());
    let events = tokio::task::spawn_blocking(move || {
        crate::support::consume_blocking(&bootstrap, &topic, 1, std::time::Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(events.is_empty());
}

/// Renders the page in Debian's Chromium at a phone's viewport: a screenshot for
/// people (kept as a test artifact), and the DOM's three links for the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interstitial_renders_in_a_real_browser() {
    let profile = tempfile::tempdir().unwrap();
    if crate::support::chromium(profile.path(), &[]).is_none() {
        return;
    }
    let edge = TestEdge::start(&links(), &[]).await;
    let url = format!("http://acme.sjv.io:{}/c/4242/10/1", edge.http.port());
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("interstitial.png");
    let _ = std::fs::remove_file(&artifact);
    let run = |extra: Vec<String>| {
        let mut command =
            crate::support::chromium(profile.path(), &["acme.sjv.io"]).expect("found above");
        command.args(["--hide-scrollbars", "--window-size=390,844"]);
        command.arg(format!("--user-agent={IPHONE}"));
        command.args(extra);
        command.arg(&url);
        command.output().unwrap()
    };
    // The test body has its own thread; the edge serves on the runtime's workers.
    let screenshot = run(vec![format!("--screenshot={}", artifact.display())]);
    assert!(
        artifact.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&screenshot.stderr)
    );
    let png = std::fs::read(&artifact).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 5_000, "a blank page? {} bytes", png.len());
    eprintln!("interstitial screenshot: {}", artifact.display());

    let dom = run(vec!["--dump-dom".into()]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("Open in the app"), "{dom}");
    assert_eq!(
        href(&dom, "open-app").as_deref(),
        Some("acme://home?ref=edge")
    );
    assert_eq!(
        href(&dom, "get-app").as_deref(),
        Some("https://apps.apple.com/app/id123")
    );
    assert!(href(&dom, "website")
        .unwrap()
        .starts_with("https://www.acme.com/app?x=1&clickid="));
}
