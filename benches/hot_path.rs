//! The request path's steps, timed apart: resolve, build Location, classify the
//! User-Agent, make a click id, serialize the event. The whole path over sockets,
//! Kafka included, is measured by `loadtest/run.sh`.
//!
//! Run: `cargo bench --bench hot_path`. Figures are in the README.

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use time::OffsetDateTime;

use clickedge::click_id::ClickId;
use clickedge::destination::IncomingQuery;
use clickedge::event::ClickEvent;
use clickedge::links::{load_str, resolve, Route};
use clickedge::useragent::Classifier;

const BROWSER: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

/// 10,000 tracking links over 100 hosts, each host with a fallback.
fn links() -> String {
    let mut text = String::new();
    for host in 0..100 {
        text.push_str(&format!(
            "{{\"type\":\"fallback\",\"host\":\"brand{host}.sjv.io\",\"url\":\"https://www.brand{host}.com/\"}}\n"
        ));
        for ad in 0..100 {
            text.push_str(&format!(
                "{{\"type\":\"tracking\",\"host\":\"brand{host}.sjv.io\",\"campaign_id\":\"9012\",\"ad_id\":\"{ad}\",\"url\":\"https://www.brand{host}.com/landing?utm_source=aff\"}}\n"
            ));
        }
    }
    text
}

fn hot_path(c: &mut Criterion) {
    let map = load_str(&links(), "bench", true).unwrap().map;
    let now = SystemTime::now();
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let classifier = Classifier::new();

    c.bench_function("resolve tracking link (10k links)", |b| {
        b.iter(|| {
            let route = resolve(
                &map,
                black_box("brand42.sjv.io"),
                black_box("/c/1234/77/9012"),
                now_ms,
            );
            assert!(matches!(route, Route::Redirect { .. }));
        })
    });

    let Route::Redirect { link, .. } = resolve(&map, "brand42.sjv.io", "/c/1234/77/9012", now_ms)
    else {
        unreachable!()
    };
    let mut location = String::with_capacity(256);
    c.bench_function("build Location (query merge + click id)", |b| {
        b.iter(|| {
            let query = IncomingQuery::parse(black_box(Some(
                "subId1=abc&sharedid=x&color=red&utm_source=p",
            )));
            link.destination.write_location(
                &query,
                true,
                Some(("clickid", "01JD0000000000000000000000")),
                &mut location,
            );
            black_box(&location);
        })
    });

    c.bench_function("classify browser User-Agent (remembered)", |b| {
        b.iter(|| black_box(classifier.classify(black_box(Some(BROWSER)))))
    });
    c.bench_function("classify browser User-Agent (first time)", |b| {
        b.iter(|| black_box(classifier.classify_uncached(black_box(BROWSER))))
    });

    c.bench_function("generate click id", |b| {
        b.iter(|| black_box(ClickId::generate(now)))
    });

    let click_id = ClickId::generate(now);
    c.bench_function("serialize click event", |b| {
        b.iter(|| {
            let event = ClickEvent {
                v: 1,
                click_id: click_id.as_str(),
                ts: OffsetDateTime::from(now),
                kind: "tracking",
                outcome: "redirect",
                host: "brand42.sjv.io",
                path: "/c/1234/77/9012",
                partner_id: Some("1234"),
                ad_id: Some("77"),
                campaign_id: Some("9012"),
                slug: None,
                location: &location,
                status: 302,
                shared_id: Some("x"),
                sub_ids: [Some("abc"), None, None],
                deeplink: None,
                visitor_id: Some(click_id.as_str()),
                new_visitor: false,
                ip: std::net::IpAddr::from([203, 0, 113, 9]),
                user_agent: Some(BROWSER),
                referer: None,
                accept_language: Some("en-US,en;q=0.9"),
                device: "mobile",
                os: "ios",
                bot: false,
                scheme: "http",
                node: "edge-1",
                rule: None,
                variant: None,
                country: None,
                test: false,
            };
            black_box(event.to_json())
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
