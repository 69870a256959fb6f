//! Actions (SPEC §8) over sockets: `POST /v1/actions`, `/v1/px`, `/v1/tag.js`
//! on a brand's hosts, each accepted action read back from the actions topic
//! field by field and checked against `deploy/schema/action.v1.json`.

use serde_json::{json, Value};

use crate::support::{request_with_body, sample, Consumed, TestEdge, TestResponse, BROWSER_UA};

const KEY: &str = "sk_live_0123456789abcdef";
const TEST_KEY: &str = "sk_test_0123456789abcdef";

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A brand on acme.sjv.io (also a tracking host), a promo code in service and
/// one expired, and a tracking host of no brand.
fn links() -> String {
    format!(
        concat!(
            r#"{{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/summer"}}"#,
            "\n",
            r#"{{"type":"tracking","host":"other.sjv.io","campaign_id":"1","ad_id":"1","url":"https://www.other.com/"}}"#,
            "\n",
            r#"{{"type":"brand","brand_id":"acme","hosts":["acme.sjv.io"],"action_keys":["{}"],"test_keys":["{}"],"origins":["https://www.acme.com"],"click_window_days":30}}"#,
            "\n",
            r#"{{"type":"promo","brand_id":"acme","code":"JANE10","partner_id":"1234"}}"#,
            "\n",
            r#"{{"type":"promo","brand_id":"acme","code":"OLD5","partner_id":"999","valid_until":"2020-01-01T00:00:00Z"}}"#,
            "\n"
        ),
        sha256_hex(KEY),
        sha256_hex(TEST_KEY)
    )
}

fn action_schema() -> jsonschema::Validator {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/schema/action.v1.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("a valid JSON Schema")
}

/// Every event valid against the schema, with the action header.
pub fn check_schema(events: &[Consumed]) {
    let schema = action_schema();
    for event in events {
        assert_eq!(
            event.headers.get("schema").map(String::as_str),
            Some("action.v1")
        );
        let errors: Vec<String> = schema
            .iter_errors(&event.value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {}", event.value);
    }
}

async fn post_actions(edge: &TestEdge, key: Option<&str>, body: &str) -> TestResponse {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![
        ("user-agent", "brand-backend/1.0"),
        ("content-type", "application/x-ndjson"),
    ];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    request_with_body(
        edge.http,
        "POST",
        "acme.sjv.io",
        "/v1/actions",
        &headers,
        body.to_owned(),
    )
    .await
}

fn json_body(response: &TestResponse) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}

/// A click id made `ms_ago` milliseconds ago (negative: ahead).
fn click_id_at(ms_ago: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    ulid::Ulid::from_parts((now - ms_ago) as u64, 42).to_string()
}

#[tokio::test]
async fn api_actions_are_checked_and_streamed_field_by_field() {
    let edge = TestEdge::start(&links(), &[]).await;
    let click = edge.get("acme.sjv.io", "/c/1234/5678/9012").await;
    let click_id = click.click_id("clickid");
    let body = format!(
        "{}\n{}\n",
        json!({"event":"sale","order_id":"A-1001","currency":"USD",
               "items":[{"sku":"SKU-1","category":"shoes","price":"29.95","quantity":2},{"sku":"SKU-2","price":0.1}],
               "click_id":click_id,"promo_code":"jane10","customer_id":"c-77","customer_status":"new",
               "metadata":{"store":"berlin"}}),
        json!({"event":"lead","amount":59.9,"currency":"EUR","customer_email_sha256":sha256_hex("jane@example.com"),
               "occurred_at":"2026-11-01T10:00:00Z","promo_code":"OLD5"})
    );
    let response = post_actions(&edge, Some(KEY), &body).await;
    assert_eq!(response.status, 202, "{}", response.body);
    let accepted = json_body(&response)["accepted"].as_array().unwrap().clone();
    assert_eq!(accepted.len(), 2);
    let ids: Vec<&str> = accepted
        .iter()
        .map(|a| a["action_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.iter().all(|id| ulid::Ulid::from_string(id).is_ok()),
        "{ids:?}"
    );

    let mut events = edge.actions(2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    check_schema(&events);
    events.sort_by_key(|e| e.field("event").as_str().unwrap().to_owned());
    let (lead, sale) = (&events[0], &events[1]);

    assert_eq!(
        sale.key.as_deref(),
        Some("acme|sale|A-1001"),
        "retries of one order land together"
    );
    let received_at = sale.field("received_at").as_str().unwrap().to_owned();
    assert_eq!(
        sale.value,
        json!({
            "v": 1, "action_id": ids[0], "received_at": received_at, "occurred_at": received_at,
            "brand_id": "acme", "event": "sale", "channel": "api", "verified": true, "test": false,
            "order_id": "A-1001", "amount": "60.00", "currency": "USD",
            "items": [
                {"sku": "SKU-1", "category": "shoes", "price": "29.95", "quantity": 2},
                {"sku": "SKU-2", "category": null, "price": "0.1", "quantity": 1}
            ],
            "click_id": click_id, "click_status": "valid",
            "promo_code": "jane10", "promo_partner_id": "1234",
            "customer_id": "c-77", "customer_email_sha256": null, "customer_status": "new",
            "metadata": {"store": "berlin"},
            "host": "acme.sjv.io", "ip": "127.0.0.1", "user_agent": "brand-backend/1.0", "node": "edge-test"
        })
    );
    // No order id: keyed by its action id. The amount exactly as sent (a JSON
    // number's own text); an expired promo code names no partner.
    assert_eq!(lead.key.as_deref(), Some(ids[1]));
    assert_eq!(lead.field("amount"), "59.9");
    assert_eq!(lead.field("occurred_at"), "2026-11-01T10:00:00.000Z");
    assert_eq!(lead.field("promo_code"), "OLD5");
    assert_eq!(lead.field("promo_partner_id"), &Value::Null);
    assert_eq!(lead.field("click_status"), &Value::Null);
    assert_eq!(
        lead.field("customer_email_sha256"),
        sha256_hex("jane@example.com").as_str()
    );

    let metrics = edge.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"clickedge_actions_total{channel="api",result="accepted"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"clickedge_requests_total{type="brand",outcome="actions",status="202"}"#
        ),
        Some(1.0)
    );
    // Timed: the click only (an action report's time includes its upload).
    assert_eq!(
        sample(&metrics, "clickedge_request_duration_seconds_count"),
        Some(1.0)
    );
    edge.wait_for_sample(r#"clickedge_action_events_total{result="delivered"}"#, 2.0)
        .await;
    edge.stop().await.unwrap();
}

#[tokio::test]
async fn keys_are_checked_and_a_test_key_makes_every_action_a_test() {
    let edge = TestEdge::start(&links(), &[]).await;
    let lead = r#"{"event":"lead"}"#;
    let missing = post_actions(&edge, None, lead).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    // The digest itself is not a key; neither is another brand's scheme.
    for wrong in [sha256_hex(KEY).as_str(), "sk_live_0123456789abcdeF"] {
        assert_eq!(
            post_actions(&edge, Some(wrong), lead).await.status,
            401,
            "{wrong}"
        );
    }
    let basic = request_with_body(
        edge.http,
        "POST",
        "acme.sjv.io",
        "/v1/actions",
        &[("authorization", &format!("Basic {KEY}"))],
        lead.to_owned(),
    )
    .await;
    assert_eq!(basic.status, 401);

    let response = post_actions(
        &edge,
        Some(TEST_KEY),
        "{\"event\":\"lead\"}\n{\"event\":\"install\",\"test\":false}",
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.body);
    let events = edge.actions(2).await;
    assert_eq!(
        events.len(),
        2,
        "nothing of the refused requests: {events:?}"
    );
    check_schema(&events);
    assert!(events.iter().all(|e| e.field("test") == true), "{events:?}");
    let metrics = edge.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"clickedge_actions_total{channel="api",result="unauthorized"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"clickedge_actions_total{channel="api",result="accepted"}"#
        ),
        Some(2.0)
    );
    edge.stop().await.unwrap();
}

#[tokio::test]
async fn one_invalid_action_refuses_the_request_naming_each_line_and_field() {
    let edge = TestEdge::start(&links(), &[]).await;
    let too_old = click_id_at(31 * 24 * 3600 * 1000);
    let body = [
        r#"{"event":"lead"}"#.to_owned(),
        r#"{"event":"sale","amount":"10.00"}"#.to_owned(),
        String::new(),
        r#"{"event":"sale","order_id":"jane@example.com","amount":"1","currency":"USD"}"#.to_owned(),
        r#"{"event":"lead","colour":"red"}"#.to_owned(),
        r#"{"event":"sale","order_id":"A","items":[{"sku":"S","price":"1.23456"}],"currency":"USD"}"#.to_owned(),
        r#"{"event":"lead","click_id":"not-a-click-id"}"#.to_owned(),
        r#"{"event":"lead","amount":"5","currency":"usd"}"#.to_owned(),
        r#"{"event":"lead","occurred_at":"2999-01-01T00:00:00Z"}"#.to_owned(),
        format!(r#"{{"event":"lead","click_id":"{too_old}"}}"#),
    ]
    .join("\n");
    let response = post_actions(&edge, Some(KEY), &body).await;
    assert_eq!(response.status, 400, "{}", response.body);
    let answer = json_body(&response);
    let errors: Vec<(u64, String)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (2, "order_id".to_owned()),
            (4, "order_id".to_owned()),
            (5, "colour".to_owned()),
            (6, "items[0].price".to_owned()),
            (7, "click_id".to_owned()),
            (8, "currency".to_owned()),
            (9, "occurred_at".to_owned()),
        ],
        "{answer}"
    );
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("none was recorded"));
    // An expired click id is not an error: it is recorded as expired.
    let fine = format!(
        "{}\n{}",
        json!({"event":"lead","click_id":too_old}),
        json!({"event":"lead","click_id":click_id_at(-3600 * 1000)})
    );
    assert_eq!(post_actions(&edge, Some(KEY), &fine).await.status, 202);
    let events = edge.actions(2).await;
    assert_eq!(
        events.len(),
        2,
        "only the accepted request's actions: {events:?}"
    );
    let mut statuses: Vec<&str> = events
        .iter()
        .map(|e| e.field("click_status").as_str().unwrap())
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["expired", "future"]);
    let metrics = edge.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"clickedge_actions_total{channel="api",result="rejected"}"#
        ),
        Some(9.0)
    );
    edge.stop().await.unwrap();
}

#[tokio::test]
async fn limits_methods_and_hosts() {
    let edge = TestEdge::start(&links(), &[]).await;
    let lead = "{\"event\":\"lead\"}\n";
    let too_many = lead.repeat(1001);
    let response = post_actions(&edge, Some(KEY), &too_many).await;
    assert_eq!(response.status, 413, "{}", response.body);
    assert!(response.body.contains("at most 1000"), "{}", response.body);
    assert_eq!(
        post_actions(&edge, Some(KEY), &lead.repeat(1000))
            .await
            .status,
        202
    );
    let padded = format!(
        "{{\"event\":\"lead\",\"customer_id\":\"{}\"}}",
        "x".repeat(1 << 20)
    );
    assert_eq!(post_actions(&edge, Some(KEY), &padded).await.status, 413);
    assert_eq!(post_actions(&edge, Some(KEY), "").await.status, 400);

    let get = edge.get("acme.sjv.io", "/v1/actions").await;
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));
    let put = request_with_body(
        edge.http,
        "PUT",
        "acme.sjv.io",
        "/v1/tag.js",
        &[],
        String::new(),
    )
    .await;
    assert_eq!((put.status, put.header("allow")), (405, Some("GET, HEAD")));
    let delete = request_with_body(
        edge.http,
        "DELETE",
        "acme.sjv.io",
        "/v1/px",
        &[],
        String::new(),
    )
    .await;
    assert_eq!(delete.status, 405);

    // On a host of no brand the paths are not endpoints: the host's own answer.
    let elsewhere = request_with_body(
        edge.http,
        "POST",
        "other.sjv.io",
        "/v1/actions",
        &[("authorization", &format!("Bearer {KEY}"))],
        lead.to_owned(),
    )
    .await;
    assert_eq!(
        elsewhere.status, 405,
        "the click path's answer to a POST: {}",
        elsewhere.body
    );
    assert_eq!(edge.get("other.sjv.io", "/v1/tag.js").await.status, 404);
    assert_eq!(
        edge.get("unknown.example", "/v1/px?event=lead")
            .await
            .status,
        404
    );

    let events = edge.actions(1000).await;
    assert_eq!(events.len(), 1000);
    check_schema(&events);
    edge.stop().await.unwrap();
}

#[tokio::test]
async fn the_pixel_always_answers_and_records_only_valid_reports() {
    let edge = TestEdge::start(&links(), &[]).await;
    let pixel = edge
        .get(
            "acme.sjv.io",
            "/v1/px?event=sale&order_id=P-1&currency=EUR&sku=A&price=10.5&qty=2&sku=B&price=1&qty=1&promo_code=JANE10&metadata.page=checkout",
        )
        .await;
    assert_eq!(pixel.status, 200);
    assert_eq!(pixel.header("content-type"), Some("image/gif"));
    assert_eq!(pixel.header("cache-control"), Some("no-store"));
    assert_eq!(pixel.bytes.len(), 43);
    assert!(pixel.bytes.starts_with(b"GIF89a"));
    // Invalid: still a GIF, no event.
    let bad = edge
        .get("acme.sjv.io", "/v1/px?event=sale&amount=abc")
        .await;
    assert_eq!((bad.status, bad.bytes.len()), (200, 43));
    let unknown = edge
        .get("acme.sjv.io", "/v1/px?event=lead&colour=red")
        .await;
    assert_eq!(unknown.status, 200);

    // A beacon from the brand's own site: 204 and the CORS grant.
    let beacon = request_with_body(
        edge.http,
        "POST",
        "acme.sjv.io",
        "/v1/px?channel=tag",
        &[
            ("origin", "https://www.acme.com"),
            ("content-type", "text/plain;charset=UTF-8"),
            ("user-agent", BROWSER_UA),
        ],
        r#"{"event":"lead","customer_id":"c-1"}"#.to_owned(),
    )
    .await;
    assert_eq!(beacon.status, 204);
    assert_eq!(
        beacon.header("access-control-allow-origin"),
        Some("https://www.acme.com")
    );
    assert_eq!(beacon.header("cache-control"), Some("no-store"));
    // From another site: refused, no grant, no event.
    let foreign = request_with_body(
        edge.http,
        "POST",
        "acme.sjv.io",
        "/v1/px",
        &[("origin", "https://evil.example")],
        r#"{"event":"lead"}"#.to_owned(),
    )
    .await;
    assert_eq!(foreign.status, 403);
    assert_eq!(foreign.header("access-control-allow-origin"), None);
    let preflight = request_with_body(
        edge.http,
        "OPTIONS",
        "acme.sjv.io",
        "/v1/px",
        &[
            ("origin", "https://www.acme.com"),
            ("access-control-request-method", "POST"),
        ],
        String::new(),
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://www.acme.com")
    );

    let mut events = edge.actions(2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    check_schema(&events);
    events.sort_by_key(|e| e.field("channel").as_str().unwrap().to_owned());
    let (pixel, tag) = (&events[0], &events[1]);
    assert_eq!(pixel.field("channel"), "pixel");
    assert_eq!(pixel.field("verified"), false);
    assert_eq!(pixel.field("amount"), "22.0", "the items' exact sum");
    assert_eq!(
        pixel.field("items"),
        &json!([
            {"sku":"A","category":null,"price":"10.5","quantity":2},
            {"sku":"B","category":null,"price":"1","quantity":1}
        ])
    );
    assert_eq!(pixel.field("promo_partner_id"), "1234");
    assert_eq!(pixel.field("metadata"), &json!({"page": "checkout"}));
    assert_eq!(pixel.key.as_deref(), Some("acme|sale|P-1"));
    assert_eq!(tag.field("channel"), "tag");
    assert_eq!(tag.field("customer_id"), "c-1");

    let metrics = edge.metrics().await;
    for (series, want) in [
        (
            r#"clickedge_actions_total{channel="pixel",result="accepted"}"#,
            1.0,
        ),
        (
            r#"clickedge_actions_total{channel="pixel",result="rejected"}"#,
            2.0,
        ),
        (
            r#"clickedge_actions_total{channel="pixel",result="unauthorized"}"#,
            1.0,
        ),
        (
            r#"clickedge_actions_total{channel="tag",result="accepted"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&metrics, series), Some(want), "{series}");
    }
    edge.stop().await.unwrap();
}

#[tokio::test]
async fn the_tag_is_cached_by_etag_and_names_the_configured_parameter() {
    let edge = TestEdge::start(&links(), &["--click-id-param", "irclickid"]).await;
    let tag = edge.get("acme.sjv.io", "/v1/tag.js").await;
    assert_eq!(tag.status, 200);
    assert_eq!(
        tag.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(tag.header("cache-control"), Some("public, max-age=300"));
    assert!(tag.bytes.len() <= 4096, "{} bytes", tag.bytes.len());
    assert!(tag.body.contains("\"irclickid\""), "{}", tag.body);
    let etag = tag.header("etag").expect("an ETag").to_owned();
    let again = edge
        .get_with("acme.sjv.io", "/v1/tag.js", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    assert!(again.bytes.is_empty());
    let other = edge
        .get_with(
            "acme.sjv.io",
            "/v1/tag.js",
            &[("if-none-match", "\"0000\"")],
        )
        .await;
    assert_eq!(other.status, 200);
    edge.stop().await.unwrap();
}

/// Actions can be retried, clicks cannot: with the broker down and the spool
/// nearly full, a request is refused whole (`503`, `Retry-After`) rather than
/// accepted and partly dropped.
#[tokio::test]
async fn a_spool_without_room_refuses_the_request_and_drops_no_accepted_action() {
    let (_cluster, edge) = crate::ops::broker_down_small_spool_serving(&links(), &[]).await;
    let batch: String = (0..20)
        .map(|i| format!("{{\"event\":\"sale\",\"order_id\":\"O-{i}\",\"amount\":\"1\",\"currency\":\"USD\"}}\n"))
        .collect();
    let mut accepted = 0;
    let refused = loop {
        let response = post_actions(&edge, Some(KEY), &batch).await;
        match response.status {
            202 => accepted += 20,
            503 => break response,
            other => panic!("{other}: {}", response.body),
        }
        assert!(accepted < 2000, "never refused");
        // The pump's view of the room is a turn behind.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(
        refused.body.contains("nothing was recorded"),
        "{}",
        refused.body
    );
    assert!(accepted > 0);
    // Every accepted action journaled (sent while the broker's state was not
    // known yet, or kept for replay), none dropped.
    let journaled = |m: &str| {
        ["queued", "spooled"]
            .iter()
            .map(|r| {
                sample(
                    m,
                    &format!(r#"clickedge_action_events_total{{result="{r}"}}"#),
                )
                .unwrap()
            })
            .sum::<f64>()
    };
    let metrics = edge
        .wait_for_metrics("every accepted action journaled", |m| {
            journaled(m) >= accepted as f64
        })
        .await;
    assert_eq!(
        sample(
            &metrics,
            r#"clickedge_action_events_total{result="dropped"}"#
        ),
        Some(0.0),
        "{metrics}"
    );
    edge.stop().await.unwrap();
}
