//! SPEC §4: the click event, read back from Kafka and compared field by field with
//! the request that produced it.

use serde_json::{json, Value};

use crate::support::{event_for, request, TestEdge, BROWSER_UA, LINKS};

#[tokio::test]
async fn a_tracking_click_event_matches_its_request_field_by_field() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let r = edge
        .get_with(
            "ACME.sjv.io:8080",
            "/c/1234/5678/9012/x?subId1=a&subId3=c%20d&sharedid=abc&color=red",
            &[
                ("user-agent", BROWSER_UA),
                ("referer", "https://blog.example/post"),
                ("accept-language", "en-US,en;q=0.9"),
            ],
        )
        .await;
    let click_id = r.click_id("clickid");
    let visitor = r.cookie_pair().strip_prefix("ce_vid=").unwrap().to_owned();

    let events = edge.events(1).await;
    assert_eq!(events.len(), 1, "exactly one event: {events:?}");
    let event = &events[0];
    assert_eq!(
        event.headers.get("schema").map(String::as_str),
        Some("click.v1")
    );
    assert_eq!(
        event.key.as_deref(),
        Some(visitor.as_str()),
        "keyed by visitor"
    );

    let ts = event.field("ts").as_str().unwrap().to_owned();
    assert_eq!(ts.len(), "2026-11-21T10:00:00.123Z".len(), "{ts}");
    assert!(ts.ends_with('Z'));
    let parsed =
        time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339).unwrap();
    let ulid_ms = ulid::Ulid::from_string(&click_id).unwrap().timestamp_ms() as i128;
    assert_eq!(
        parsed.unix_timestamp_nanos() / 1_000_000,
        ulid_ms,
        "ts is the click id's time"
    );

    let expected = json!({
        "v": 1,
        "click_id": click_id,
        "ts": ts,
        "type": "tracking",
        "outcome": "redirect",
        "host": "acme.sjv.io",
        "path": "/c/1234/5678/9012/x",
        "partner_id": "1234",
        "ad_id": "5678",
        "campaign_id": "9012",
        "slug": null,
        "location": r.location(),
        "status": 302,
        "shared_id": "abc",
        "sub_ids": ["a", null, "c d"],
        "deeplink": null,
        "visitor_id": visitor,
        "new_visitor": true,
        "ip": "127.0.0.1",
        "user_agent": BROWSER_UA,
        "referer": "https://blog.example/post",
        "accept_language": "en-US,en;q=0.9",
        "device": "desktop",
        "os": "windows",
        "bot": false,
        "scheme": "http",
        "node": "edge-test",
        "rule": null,
        "variant": null,
        "country": null,
        "test": false,
    });
    assert_eq!(event.value, expected);
}

#[tokio::test]
async fn vanity_domain_and_fallback_events_carry_their_record() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let vanity = edge
        .get("acme.pxf.io", "/JANES-PICKS/")
        .await
        .click_id("clickid");
    let domain = edge
        .get("www.acmeradio.example", "/x")
        .await
        .click_id("clickid");
    let fallback = edge
        .get("acme.sjv.io", "/nothing")
        .await
        .click_id("clickid");
    let expired = edge
        .get("acme.sjv.io", "/c/77/1000/9012")
        .await
        .click_id("clickid");
    let events = edge.events(4).await;
    assert_eq!(events.len(), 4);

    let e = event_for(&events, &vanity);
    assert_eq!(
        (
            e.field("type"),
            e.field("slug"),
            e.field("partner_id"),
            e.field("ad_id"),
            e.field("campaign_id")
        ),
        (
            &json!("vanity"),
            &json!("janes-picks"),
            &json!("1234"),
            &json!("7001"),
            &json!("9012")
        )
    );
    assert_eq!(e.field("path"), "/JANES-PICKS/");

    let e = event_for(&events, &domain);
    assert_eq!(
        (
            e.field("type"),
            e.field("host"),
            e.field("partner_id"),
            e.field("ad_id"),
            e.field("campaign_id")
        ),
        (
            &json!("domain"),
            &json!("www.acmeradio.example"),
            &json!("3456"),
            &json!("8001"),
            &json!("9020")
        )
    );

    for id in [&fallback, &expired] {
        let e = event_for(&events, id);
        assert_eq!(e.field("type"), "fallback");
        assert_eq!(e.field("status"), 302);
        assert_eq!(e.field("partner_id"), &Value::Null);
        assert_eq!(e.field("campaign_id"), &Value::Null);
        assert!(e
            .field("location")
            .as_str()
            .unwrap()
            .starts_with("https://www.acme.com/home?clickid="));
    }
}

#[tokio::test]
async fn deeplink_outcome_is_recorded() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let ok = edge
        .get(
            "acme.sjv.io",
            "/c/1/5678/9012?u=https%3A%2F%2Fwww.acme.com%2Fshoes",
        )
        .await
        .click_id("clickid");
    let bad = edge
        .get(
            "acme.sjv.io",
            "/c/1/5678/9012?u=https%3A%2F%2Fwww.acme.com.evil.example%2F",
        )
        .await
        .click_id("clickid");
    let none = edge
        .get("acme.sjv.io", "/c/1/5678/9012")
        .await
        .click_id("clickid");
    let events = edge.events(3).await;
    assert_eq!(event_for(&events, &ok).field("deeplink"), "accepted");
    assert!(event_for(&events, &ok)
        .field("location")
        .as_str()
        .unwrap()
        .starts_with("https://www.acme.com/shoes?clickid="));
    assert_eq!(event_for(&events, &bad).field("deeplink"), "rejected");
    assert_eq!(event_for(&events, &none).field("deeplink"), &Value::Null);
}

#[tokio::test]
async fn only_tracked_gets_produce_events() {
    let edge = TestEdge::start(LINKS, &[]).await;
    // None of these is a click.
    request(edge.http, "HEAD", "acme.sjv.io", "/c/1/5678/9012", &[]).await;
    edge.get("unknown.example", "/c/1/5678/9012").await;
    edge.get("acme.sjv.io", "/robots.txt").await;
    edge.get("acme.sjv.io", "/.well-known/assetlinks.json")
        .await;
    edge.get("acme.pxf.io", "/no-such-slug").await;
    request(edge.http, "POST", "acme.sjv.io", "/c/1/5678/9012", &[]).await;
    // This one is.
    let id = edge
        .get("acme.sjv.io", "/c/1/5678/9012")
        .await
        .click_id("clickid");
    let events = edge.events(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].field("click_id"), id.as_str());
}

#[tokio::test]
async fn returning_visitor_and_privacy_signals() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let first = edge.get("acme.sjv.io", "/c/1/5678/9012").await;
    let pair = first.cookie_pair().to_owned();
    let vid = pair.strip_prefix("ce_vid=").unwrap().to_owned();
    let again = edge
        .get_with(
            "acme.sjv.io",
            "/c/1/5678/9012",
            &[("cookie", &pair), ("user-agent", BROWSER_UA)],
        )
        .await
        .click_id("clickid");
    let gpc = edge
        .get_with(
            "acme.sjv.io",
            "/c/1/5678/9012",
            &[
                ("cookie", &pair),
                ("sec-gpc", "1"),
                ("user-agent", BROWSER_UA),
            ],
        )
        .await
        .click_id("clickid");
    let events = edge.events(3).await;

    let e = event_for(&events, &again);
    assert_eq!(e.field("visitor_id"), vid.as_str());
    assert_eq!(e.field("new_visitor"), false);
    assert_eq!(e.key.as_deref(), Some(vid.as_str()));

    // Not read under GPC: no visitor, keyed by the click id.
    let e = event_for(&events, &gpc);
    assert_eq!(e.field("visitor_id"), &Value::Null);
    assert_eq!(e.field("new_visitor"), false);
    assert_eq!(e.key.as_deref(), Some(gpc.as_str()));
}

#[tokio::test]
async fn bots_are_redirected_and_flagged() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let mut ids = Vec::new();
    for ua in [
        Some("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"),
        Some("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"),
        Some("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = ua.map(|ua| ("user-agent", ua)).into_iter().collect();
        let r = edge
            .get_with("acme.sjv.io", "/c/1/5678/9012", &headers)
            .await;
        assert_eq!(r.status, 302, "{ua:?}");
        ids.push((ua, r.click_id("clickid")));
    }
    let human = edge
        .get_with(
            "acme.sjv.io",
            "/c/1/5678/9012",
            &[("user-agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")],
        )
        .await
        .click_id("clickid");
    let events = edge.events(5).await;
    for (ua, id) in &ids {
        let e = event_for(&events, id);
        assert_eq!(e.field("bot"), true, "{ua:?}");
        assert_eq!(e.field("device"), "bot", "{ua:?}");
    }
    let e = event_for(&events, &human);
    assert_eq!(
        (e.field("bot"), e.field("device"), e.field("os")),
        (&json!(false), &json!("mobile"), &json!("ios"))
    );
}

#[tokio::test]
async fn the_topic_flag_names_the_topic() {
    let edge = TestEdge::start(LINKS, &["--kafka-topic", "clicks-eu"]).await;
    let id = edge
        .get("acme.sjv.io", "/c/1/5678/9012")
        .await
        .click_id("clickid");
    assert_eq!(edge.topic, "clicks-eu");
    let events = edge.events(1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].field("click_id"), id.as_str());
}
