//! Link rules, split tests, country and test clicks (SPEC §9) over sockets,
//! with a MaxMind database the test writes itself (Debian's
//! libmaxmind-db-writer-perl; no downloaded database) and every event read
//! back from Kafka and checked against the click schema.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{request_with_body, sample, Consumed, TestEdge, BROWSER_UA};

const TOKEN: &str = "test-token-0123456789";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

const LINKS: &str = r#"
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/summer","deeplink_hosts":["www.acme.com"],"rules":[{"if":{"os":"ios"},"url":"https://apps.apple.com/app/id123"},{"if":{"country":["DE","AT"]},"url":"https://www.acme.com/de/summer"},{"if":{"language":"fr"},"url":"https://www.acme.com/fr/summer"},{"if":{"query":{"utm_campaign":"vip"}},"url":"https://www.acme.com/vip"}],"split":[{"url":"https://www.acme.com/summer-a","weight":70},{"url":"https://www.acme.com/summer-b","weight":30}]}
{"type":"vanity","host":"acme.pxf.io","slug":"test-link","partner_id":"77","campaign_id":"9012","ad_id":"1","url":"https://www.acme.com/t","test":true}
"#;

/// Writes a country database with `networks` (`203.0.113.0/24=DE`) built at
/// `epoch`; `None` (a skip) where the writer is not installed, a failure in CI.
pub fn write_geoip(path: &Path, epoch: u64, networks: &[&str]) -> Option<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/write_geoip.pl");
    let written = std::process::Command::new("perl")
        .arg(script)
        .arg(path)
        .arg(epoch.to_string())
        .args(networks)
        .output()
        .ok()
        .filter(|o| o.status.success());
    if written.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide libmaxmind-db-writer-perl (see .ci/run)"
        );
        eprintln!("SKIPPED: libmaxmind-db-writer-perl not installed");
    }
    written.map(drop)
}

async fn click(
    edge: &TestEdge,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (String, String) {
    let r = edge.get_with(host, target, headers).await;
    assert_eq!(r.status, 302, "{target}: {}", r.body);
    (r.location().to_owned(), r.click_id("clickid"))
}

fn event<'e>(events: &'e [Consumed], click_id: &str) -> &'e Value {
    &crate::support::event_for(events, click_id).value
}

fn check_schema(events: &[Consumed]) {
    let schema = crate::deploy::click_schema();
    for e in events {
        let errors: Vec<String> = schema
            .iter_errors(&e.value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {}", e.value);
    }
}

/// `POST /admin/reload`: the links, and the GeoIP database with them.
async fn reload(edge: &TestEdge) -> crate::support::TestResponse {
    let bearer = format!("Bearer {TOKEN}");
    request_with_body(
        edge.admin,
        "POST",
        "localhost",
        "/admin/reload",
        &[("authorization", &bearer)],
        String::new(),
    )
    .await
}

struct Geo {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn geo(networks: &[&str], epoch: u64) -> Option<Geo> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("country.mmdb");
    write_geoip(&path, epoch, networks)?;
    Some(Geo { _dir: dir, path })
}

#[tokio::test]
async fn rules_country_language_query_split_and_test_clicks_over_sockets() {
    let Some(geo) = geo(&["203.0.113.0/24=DE", "198.51.100.0/24=FR"], 1_790_000_000) else {
        return;
    };
    let db = geo.path.to_str().unwrap().to_owned();
    let edge = TestEdge::start(
        LINKS,
        &[
            "--geoip-db",
            &db,
            "--trusted-proxies",
            "127.0.0.1",
            "--admin-token",
            TOKEN,
        ],
    )
    .await;
    let path = "/c/1234/5678/9012";
    let from = |ip: &'static str| [("user-agent", BROWSER_UA), ("x-forwarded-for", ip)];
    let (iphone, iphone_id) = click(
        &edge,
        "acme.sjv.io",
        path,
        &[("user-agent", IPHONE), ("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert!(
        iphone.starts_with("https://apps.apple.com/app/id123?clickid="),
        "{iphone}"
    );
    let (german, german_id) = click(&edge, "acme.sjv.io", path, &from("203.0.113.9")).await;
    assert!(
        german.starts_with("https://www.acme.com/de/summer?clickid="),
        "{german}"
    );
    let (french, french_id) = click(
        &edge,
        "acme.sjv.io",
        path,
        &[
            ("user-agent", BROWSER_UA),
            ("x-forwarded-for", "198.51.100.7"),
            ("accept-language", "fr-CH, de;q=0.5"),
        ],
    )
    .await;
    assert!(
        french.starts_with("https://www.acme.com/fr/summer?clickid="),
        "{french}"
    );
    let (vip, vip_id) = click(
        &edge,
        "acme.sjv.io",
        &format!("{path}?utm_campaign=vip&ce_test=1"),
        &from("192.0.2.1"),
    )
    .await;
    assert!(
        vip.starts_with("https://www.acme.com/vip?utm_campaign=vip&clickid="),
        "ce_test consumed: {vip}"
    );
    // No rule holds: the split, by the visitor; the same visitor keeps it.
    let first = edge.get_with("acme.sjv.io", path, &from("192.0.2.1")).await;
    let cookie = first.cookie_pair().to_owned();
    let split_id = first.click_id("clickid");
    let variant_url = first.location().split('?').next().unwrap().to_owned();
    assert!(
        variant_url.ends_with("/summer-a") || variant_url.ends_with("/summer-b"),
        "{variant_url}"
    );
    for _ in 0..5 {
        let again = edge
            .get_with(
                "acme.sjv.io",
                path,
                &[
                    ("user-agent", BROWSER_UA),
                    ("x-forwarded-for", "192.0.2.1"),
                    ("cookie", &cookie),
                ],
            )
            .await;
        assert_eq!(
            again.location().split('?').next().unwrap(),
            variant_url,
            "sticky"
        );
    }
    let (_, test_id) = click(&edge, "acme.pxf.io", "/test-link", &from("192.0.2.1")).await;

    let events = edge.events(11).await;
    assert_eq!(events.len(), 11);
    check_schema(&events);
    let fields = |id: &str| {
        let e = event(&events, id);
        (
            e["rule"].clone(),
            e["variant"].clone(),
            e["country"].clone(),
            e["test"].clone(),
        )
    };
    use serde_json::json;
    assert_eq!(
        fields(&iphone_id),
        (json!(0), Value::Null, json!("DE"), json!(false))
    );
    assert_eq!(
        fields(&german_id),
        (json!(1), Value::Null, json!("DE"), json!(false))
    );
    assert_eq!(
        fields(&french_id),
        (json!(2), Value::Null, json!("FR"), json!(false)),
        "a French address, rule by language"
    );
    assert_eq!(
        fields(&vip_id),
        (json!(3), Value::Null, Value::Null, json!(true))
    );
    let variant = if variant_url.ends_with("-a") { 0 } else { 1 };
    assert_eq!(
        fields(&split_id),
        (Value::Null, json!(variant), Value::Null, json!(false))
    );
    assert_eq!(
        fields(&test_id),
        (Value::Null, Value::Null, Value::Null, json!(true)),
        "a test record"
    );

    // The database is reloaded with the links: the same address, another country.
    let old = r#"clickedge_geoip_info{database="clickedge-Test-Country",build_epoch="1790000000"}"#;
    assert_eq!(sample(&edge.metrics().await, old), Some(1.0));
    write_geoip(&geo.path, 1_790_086_400, &["203.0.113.0/24=AT"]).unwrap();
    let reloaded = reload(&edge).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let (_, austrian_id) = click(&edge, "acme.sjv.io", path, &from("203.0.113.9")).await;
    let metrics = edge.metrics().await;
    assert_eq!(sample(&metrics, old), Some(0.0));
    assert_eq!(
        sample(
            &metrics,
            r#"clickedge_geoip_info{database="clickedge-Test-Country",build_epoch="1790086400"}"#
        ),
        Some(1.0)
    );
    // A database that cannot be read keeps the loaded one.
    std::fs::write(&geo.path, b"broken").unwrap();
    let reloaded = reload(&edge).await;
    assert_eq!(
        reloaded.status, 200,
        "links still reload: {}",
        reloaded.body
    );
    let (_, still_id) = click(&edge, "acme.sjv.io", path, &from("203.0.113.9")).await;
    let events = edge.events(13).await;
    assert_eq!(event(&events, &austrian_id)["country"], "AT");
    assert_eq!(event(&events, &still_id)["country"], "AT");
    edge.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_database_no_country_and_country_rules_never_hold() {
    let edge = TestEdge::start(LINKS, &["--trusted-proxies", "127.0.0.1"]).await;
    let (location, id) = click(
        &edge,
        "acme.sjv.io",
        "/c/1234/5678/9012",
        &[
            ("user-agent", BROWSER_UA),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await;
    assert!(
        location.contains("/summer-a?") || location.contains("/summer-b?"),
        "{location}"
    );
    let events = edge.events(1).await;
    assert_eq!(event(&events, &id)["country"], Value::Null);
    edge.stop().await.unwrap();
}

#[tokio::test]
async fn admin_resolve_shows_the_rule_or_variant_a_request_would_get() {
    let Some(geo) = geo(&["203.0.113.0/24=DE"], 1_790_000_000) else {
        return;
    };
    let db = geo.path.to_str().unwrap().to_owned();
    let edge = TestEdge::start(LINKS, &["--geoip-db", &db, "--admin-token", TOKEN]).await;
    let bearer = format!("Bearer {TOKEN}");
    let resolve = |query: String| {
        let bearer = bearer.clone();
        let admin = edge.admin;
        async move {
            let r = request_with_body(
                admin,
                "GET",
                "localhost",
                &format!("/admin/resolve?{query}"),
                &[("authorization", &bearer)],
                String::new(),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            serde_json::from_str::<Value>(&r.body).unwrap()
        }
    };
    let url = "url=https%3A%2F%2Facme.sjv.io%2Fc%2F1%2F5678%2F9012";
    let german = resolve(format!("{url}&ip=203.0.113.9")).await;
    assert_eq!(
        (german["rule"].clone(), german["country"].clone()),
        (serde_json::json!(1), serde_json::json!("DE"))
    );
    assert!(
        german["location"]
            .as_str()
            .unwrap()
            .starts_with("https://www.acme.com/de/summer?clickid={click_id}"),
        "{german}"
    );
    let iphone = resolve(format!("{url}&user_agent={}", urlencode(IPHONE))).await;
    assert_eq!(
        (iphone["rule"].clone(), iphone["os"].clone()),
        (serde_json::json!(0), serde_json::json!("ios"))
    );
    let french = resolve(format!("{url}&accept_language=fr-FR")).await;
    assert_eq!(french["rule"], 2);
    // A visitor's variant, the same every time it is asked.
    let visitor = "01HZY8X6Q6A1B2C3D4E5F6G7HA";
    let first = resolve(format!("{url}&visitor={visitor}")).await;
    assert_eq!(first["rule"], Value::Null);
    assert!(first["variant"].is_u64(), "{first}");
    for _ in 0..3 {
        assert_eq!(
            resolve(format!("{url}&visitor={visitor}")).await["variant"],
            first["variant"]
        );
    }
    // The same from the admin request's own headers.
    let r = request_with_body(
        edge.admin,
        "GET",
        "localhost",
        &format!("/admin/resolve?{url}"),
        &[
            ("authorization", &bearer),
            ("user-agent", BROWSER_UA),
            ("accept-language", "fr"),
            ("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
        ],
        String::new(),
    )
    .await;
    let by_headers: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (by_headers["rule"].clone(), by_headers["country"].clone()),
        (serde_json::json!(1), serde_json::json!("DE")),
        "{by_headers}"
    );
    let test = resolve("url=https%3A%2F%2Facme.pxf.io%2Ftest-link".to_owned()).await;
    assert_eq!(test["test"], true);
    edge.stop().await.unwrap();
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn bad_rules_splits_and_stat_records_name_the_line_and_reason() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        concat!(
            r#"{"type":"tracking","host":"a.io","campaign_id":"1","ad_id":"1","url":"https://a.example/","rules":[{"if":{"planet":"mars"},"url":"https://a.example/m"}]}"#, "\n",
            r#"{"type":"tracking","host":"a.io","campaign_id":"1","ad_id":"2","url":"https://a.example/","split":[{"url":"https://a.example/a","weight":0}]}"#, "\n",
            r#"{"type":"tracking","host":"a.io","campaign_id":"1","ad_id":"3","url":"https://a.example/","stat":true}"#, "\n",
            r#"{"type":"vanity","host":"a.io","slug":"s","partner_id":"1","campaign_id":"1","ad_id":"4","url":"https://a.example/","deeplink_hosts":["a.example"],"stat":true}"#, "\n",
            r#"{"type":"tracking","host":"a.io","campaign_id":"1","ad_id":"5","url":"https://a.example/","rules":[{"if":{"device":"mobile"},"url":"javascript:alert(1)"}]}"#, "\n",
            r#"{"type":"tracking","host":"a.io","campaign_id":"1","ad_id":"6","url":"https://a.example/"}"#, "\n",
        ),
    )
    .unwrap();
    let output = crate::cli::binary()
        .args(["--check", "--links"])
        .arg(file.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    for (line, reason) in [
        (1, "rules[0]`.if: unknown condition `planet`"),
        (2, "split[0]`.weight"),
        (3, "needs `deeplink_hosts`"),
        (4, "only a tracking record can carry `stat`"),
        (5, "rules[0]`.url:"),
    ] {
        assert!(
            said.lines()
                .any(|l| l.contains(&format!("line {line}:")) && l.contains(reason)),
            "line {line} {reason:?} in:\n{said}"
        );
    }
}
