//! SPEC §5: links change without a restart: reloads, the admin API, the links
//! topic, and their precedence.

use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::cli::Running;
use crate::support::{
    consume_blocking, eventually, mock_kafka, produce, request, request_with_body, sample,
    TestEdge, TestResponse, LINKS,
};

const TOKEN: &str = "test-token-0123456789";
const BEARER: &str = "Bearer test-token-0123456789";

const NEW_VANITY: &str = r#"{"type":"vanity","host":"new.pxf.io","slug":"fresh","partner_id":"9","campaign_id":"9","ad_id":"9","url":"https://www.acme.com/fresh"}"#;

async fn admin(
    edge: &TestEdge,
    method: &str,
    target: &str,
    auth: Option<&str>,
    body: &str,
) -> TestResponse {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    request_with_body(
        edge.admin,
        method,
        "localhost",
        target,
        &headers,
        body.to_owned(),
    )
    .await
}

fn json_body(r: &TestResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

#[tokio::test]
/// Issue 13, item 3: `resolve` shows destinations and partner ids, so without a
/// token configured the whole admin API is off, reads included.
async fn without_a_token_the_admin_api_is_forbidden_reads_included() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for (method, target) in [
        ("PUT", "/admin/links"),
        ("DELETE", "/admin/links"),
        ("POST", "/admin/reload"),
        (
            "GET",
            "/admin/resolve?url=https%3A%2F%2Facme.sjv.io%2Fc%2F1%2F5678%2F9012",
        ),
    ] {
        for auth in [None, Some(BEARER)] {
            let r = admin(&edge, method, target, auth, NEW_VANITY).await;
            assert_eq!(r.status, 403, "{method} {target}: {}", r.body);
            assert!(!r.body.contains("acme.com"), "{}", r.body);
        }
    }
    assert_eq!(
        edge.get("new.pxf.io", "/fresh").await.status,
        404,
        "nothing was applied"
    );
    // Probes and metrics stay open.
    assert_eq!(edge.admin_get("/readyz").await.status, 200);
    assert_eq!(edge.admin_get("/metrics").await.status, 200);
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401() {
    let edge = TestEdge::start(LINKS, &["--admin-token", TOKEN]).await;
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("Basic dGVzdA=="),
        Some("Bearer "),
    ] {
        for (method, target) in [
            ("PUT", "/admin/links"),
            ("POST", "/admin/reload"),
            ("GET", "/admin/resolve?url=https%3A%2F%2Fa.io%2F"),
        ] {
            let r = admin(&edge, method, target, auth, NEW_VANITY).await;
            assert_eq!(r.status, 401, "{auth:?} {method} {target}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    assert_eq!(edge.get("new.pxf.io", "/fresh").await.status, 404);
    // Probes and metrics need no token.
    assert_eq!(edge.admin_get("/healthz").await.status, 200);
    assert_eq!(edge.admin_get("/metrics").await.status, 200);
}

#[tokio::test]
async fn put_upserts_records_and_they_serve_at_once() {
    let edge = TestEdge::start(LINKS, &["--admin-token", TOKEN]).await;
    let changed_fallback =
        r#"{"type":"fallback","host":"acme.sjv.io","url":"https://www.acme.com/new-home"}"#;
    let body = format!("# two records\n{NEW_VANITY}\n\n{changed_fallback}\n");
    let r = admin(&edge, "PUT", "/admin/links", Some(BEARER), &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_body(&r)["upserted"], 2);
    let r = edge.get("new.pxf.io", "/fresh").await;
    assert_eq!(r.status, 302);
    assert!(r
        .location()
        .starts_with("https://www.acme.com/fresh?clickid="));
    assert!(edge
        .get("acme.sjv.io", "/nothing")
        .await
        .location()
        .starts_with("https://www.acme.com/new-home?"));
    let m = edge.metrics().await;
    assert_eq!(
        sample(&m, r#"clickedge_links{type="vanity"}"#),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn put_with_an_invalid_line_names_it_and_applies_nothing() {
    let edge = TestEdge::start(LINKS, &["--admin-token", TOKEN]).await;
    let body = format!("{NEW_VANITY}\n{{\"type\":\"vanity\",\"host\":\"x.io\"}}\nnot json\n");
    let r = admin(&edge, "PUT", "/admin/links", Some(BEARER), &body).await;
    assert_eq!(r.status, 400);
    let answer = json_body(&r);
    assert_eq!(answer["invalid"][0]["line"], 2);
    assert!(
        answer["invalid"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("missing field"),
        "{answer}"
    );
    assert_eq!(answer["invalid"][1]["line"], 3);
    assert_eq!(
        edge.get("new.pxf.io", "/fresh").await.status,
        404,
        "nothing applied"
    );
    let r = admin(&edge, "PUT", "/admin/links", Some(BEARER), "\n# nothing\n").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn delete_removes_records_by_key() {
    let edge = TestEdge::start(LINKS, &["--admin-token", TOKEN]).await;
    let body = r#"{"type":"vanity","host":"ACME.pxf.io","slug":"Janes-Picks"}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678"}
{"type":"domain","host":"nothing-here.example"}"#;
    let r = admin(&edge, "DELETE", "/admin/links", Some(BEARER), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_body(&r)["keys"], 3);
    assert_eq!(json_body(&r)["deleted"], 2);
    assert_eq!(edge.get("acme.pxf.io", "/janes-picks").await.status, 404);
    let r = edge.get("acme.sjv.io", "/c/1/5678/9012").await;
    assert!(
        r.location().starts_with("https://www.acme.com/home?"),
        "falls back: {}",
        r.location()
    );
    let r = admin(
        &edge,
        "DELETE",
        "/admin/links",
        Some(BEARER),
        r#"{"type":"vanity","host":"a.io"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(json_body(&r)["invalid"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("slug"));
}

#[tokio::test]
async fn resolve_says_what_a_url_would_do() {
    let edge = TestEdge::start(LINKS, &["--admin-token", TOKEN]).await;
    let r = admin(
        &edge,
        "GET",
        "/admin/resolve?url=https%3A%2F%2FACME.sjv.io%2Fc%2F1234%2F5678%2F9012%3Fcolor%3Dred",
        Some(BEARER),
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let answer = json_body(&r);
    assert_eq!(answer["result"], "redirect");
    assert_eq!(answer["type"], "tracking");
    assert_eq!(answer["key"], "tracking|acme.sjv.io|9012|5678");
    assert_eq!(answer["status"], 302);
    assert_eq!(answer["partner_id"], "1234");
    assert_eq!(
        answer["location"],
        "https://www.acme.com/summer?utm_source=impact&color=red&clickid={click_id}"
    );
    let r = admin(
        &edge,
        "GET",
        "/admin/resolve?url=https%3A%2F%2Fnope.example%2F",
        Some(BEARER),
        "",
    )
    .await;
    assert_eq!(json_body(&r)["result"], "unknown_host");
    let r = admin(
        &edge,
        "GET",
        "/admin/resolve?url=https%3A%2F%2Facme.pxf.io%2Fnone",
        Some(BEARER),
        "",
    )
    .await;
    assert_eq!(json_body(&r)["result"], "not_found");
    let r = admin(&edge, "GET", "/admin/resolve", Some(BEARER), "").await;
    assert_eq!(r.status, 400);
    // A lookup is not a click: no event within three seconds.
    let (bootstrap, topic) = (edge.bootstrap.clone(), edge.topic.clone());
    let events = tokio::task::spawn_blocking(move || {
        consume_blocking(&bootstrap, &topic, 1, Duration::from_secs(3))
    })
    .await
    .unwrap();
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn reload_swaps_in_the_file_and_a_broken_file_keeps_the_old_map() {
    let edge = TestEdge::start(LINKS, &["--admin-token", TOKEN]).await;
    std::fs::write(edge.links_path(), format!("{LINKS}\n{NEW_VANITY}\n")).unwrap();
    let r = admin(&edge, "POST", "/admin/reload", Some(BEARER), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_body(&r)["result"], "success");
    assert_eq!(edge.get("new.pxf.io", "/fresh").await.status, 302);

    std::fs::write(edge.links_path(), "garbage\nmore garbage\n").unwrap();
    let r = admin(&edge, "POST", "/admin/reload", Some(BEARER), "").await;
    assert_eq!(r.status, 422);
    let answer = json_body(&r);
    assert_eq!(answer["result"], "error");
    assert_eq!(answer["invalid"][0]["line"], 1);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no valid link record"),
        "{answer}"
    );
    // The previous map stays in service.
    assert_eq!(edge.get("new.pxf.io", "/fresh").await.status, 302);
    assert_eq!(edge.get("acme.sjv.io", "/c/1/5678/9012").await.status, 302);
    let m = edge.metrics().await;
    assert_eq!(
        sample(&m, r#"clickedge_links_reloads_total{result="success"}"#),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"clickedge_links_reloads_total{result="error"}"#),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn api_changes_survive_a_file_reload() {
    let edge = TestEdge::start(LINKS, &["--admin-token", TOKEN]).await;
    admin(&edge, "PUT", "/admin/links", Some(BEARER), NEW_VANITY).await;
    admin(
        &edge,
        "DELETE",
        "/admin/links",
        Some(BEARER),
        r#"{"type":"vanity","host":"acme.pxf.io","slug":"janes-picks"}"#,
    )
    .await;
    let r = admin(&edge, "POST", "/admin/reload", Some(BEARER), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        edge.get("new.pxf.io", "/fresh").await.status,
        302,
        "the upsert is kept"
    );
    assert_eq!(
        edge.get("acme.pxf.io", "/janes-picks").await.status,
        404,
        "the delete is kept"
    );
}

/// An edge reading the links topic `links` at `bootstrap`, with the admin API
/// on, once ready.
async fn ready_on_topic(bootstrap: &str) -> TestEdge {
    let edge = TestEdge::start(
        LINKS,
        &[
            "--kafka-brokers",
            bootstrap,
            "--links-topic",
            "links",
            "--admin-token",
            TOKEN,
        ],
    )
    .await;
    edge.wait_ready().await;
    edge
}

async fn wait_status(edge: &TestEdge, host: &str, path: &str, status: u16) -> TestResponse {
    let what = format!("{host}{path} answering {status}");
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        &what,
        move || async move {
            let r = edge.get(host, path).await;
            if r.status == status {
                Ok(r)
            } else {
                Err(format!("it answered {}", r.status))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_links_topic_upserts_deletes_and_outranks_the_file() {
    let (_cluster, bootstrap) = mock_kafka(&[("clicks", 1), ("links", 2)]);
    let file_fallback =
        r#"{"type":"fallback","host":"acme.sjv.io","url":"https://www.acme.com/from-topic"}"#;
    produce(
        &bootstrap,
        "links",
        &[
            ("vanity|new.pxf.io|fresh", Some(NEW_VANITY)),
            ("fallback|acme.sjv.io", Some(file_fallback)),
        ],
    );
    let edge = ready_on_topic(&bootstrap).await;
    // Read to its end before ready: both records serve.
    assert_eq!(edge.get("new.pxf.io", "/fresh").await.status, 302);
    assert!(edge
        .get("acme.sjv.io", "/x")
        .await
        .location()
        .starts_with("https://www.acme.com/from-topic?"));

    // A tombstone deletes, live.
    produce(&bootstrap, "links", &[("vanity|new.pxf.io|fresh", None)]);
    wait_status(&edge, "new.pxf.io", "/fresh", 404).await;
    // A file reload keeps what came from the topic.
    let r = admin(&edge, "POST", "/admin/reload", Some(BEARER), "").await;
    assert_eq!(r.status, 200);
    assert!(edge
        .get("acme.sjv.io", "/x")
        .await
        .location()
        .starts_with("https://www.acme.com/from-topic?"));
    assert_eq!(edge.get("new.pxf.io", "/fresh").await.status, 404);
    // An invalid record on the topic is skipped, not fatal.
    produce(
        &bootstrap,
        "links",
        &[
            ("vanity|bad.io|x", Some("{not json")),
            ("vanity|new.pxf.io|fresh", Some(NEW_VANITY)),
        ],
    );
    wait_status(&edge, "new.pxf.io", "/fresh", 302).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_links_topic() {
    let (cluster, bootstrap) = mock_kafka(&[("clicks", 1), ("links", 1)]);
    produce(
        &cluster.bootstrap_servers(),
        "links",
        &[("vanity|new.pxf.io|fresh", Some(NEW_VANITY))],
    );
    cluster.broker_down(1).unwrap();
    let edge = TestEdge::start(
        LINKS,
        &[
            "--kafka-brokers",
            &bootstrap,
            "--links-topic",
            "links",
            "--links-topic-ready-timeout",
            "60s",
            "--shutdown-timeout",
            "1s",
        ],
    )
    .await;
    // Not a sleep: the edge has seen the broker down, and still is not ready.
    edge.wait_for_sample("clickedge_kafka_broker_up", 0.0).await;
    let r = edge.admin_get("/readyz").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "not ready: links topic not read to its end yet\n")
    );
    cluster.broker_up(1).unwrap();
    edge.wait_ready().await;
    assert_eq!(
        edge.get("new.pxf.io", "/fresh").await.status,
        302,
        "ready means read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), LINKS).unwrap();
    let path = file.path().to_str().unwrap();
    let (edge, http) = Running::serve(&["--links", path]);
    assert_eq!(
        request(http, "GET", "new.pxf.io", "/fresh", &[])
            .await
            .status,
        404
    );
    std::fs::write(file.path(), format!("{LINKS}\n{NEW_VANITY}\n")).unwrap();
    let pid = edge.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    edge.wait_for("Links reloaded.");
    assert_eq!(
        request(http, "GET", "new.pxf.io", "/fresh", &[])
            .await
            .status,
        302
    );
    assert_eq!(edge.terminate(), 0);
}

/// While the map is replaced again and again (file reloads, links-topic updates,
/// API upserts and deletes of other keys), a link present in every version never
/// misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_in_every_version_never_misses_while_the_map_churns() {
    let (_cluster, bootstrap) = mock_kafka(&[("clicks", 1), ("links", 1)]);
    let edge = ready_on_topic(&bootstrap).await;
    let edge = std::sync::Arc::new(edge);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (edge, stop) = (edge.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut checked = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = edge.get("acme.sjv.io", "/c/1/5678/9012").await;
                assert_eq!(r.status, 302);
                assert!(
                    r.location().starts_with("https://www.acme.com/summer?"),
                    "{}",
                    r.location()
                );
                checked += 1;
            }
            checked
        }));
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let vanity = |host: &str, i: usize| {
        format!(
            r#"{{"type":"vanity","host":"{host}","slug":"s{i}","partner_id":"1","campaign_id":"1","ad_id":"{i}","url":"https://churn.example/{i}"}}"#
        )
    };
    for i in 0..100 {
        std::fs::write(
            edge.links_path(),
            format!("{LINKS}\n{}\n", vanity("churn.io", i)),
        )
        .unwrap();
        let r = admin(&edge, "POST", "/admin/reload", Some(BEARER), "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let key = format!("vanity|topic-churn.io|s{i}");
        let value = vanity("topic-churn.io", i);
        producer
            .send(
                BaseRecord::<str, str>::to("links")
                    .key(&key)
                    .payload(&value),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.poll(Duration::ZERO);
        admin(
            &edge,
            "PUT",
            "/admin/links",
            Some(BEARER),
            &vanity("api-churn.io", i),
        )
        .await;
        let key =
            json!({"type":"vanity","host":"api-churn.io","slug":format!("s{}", i.max(1) - 1)})
                .to_string();
        admin(&edge, "DELETE", "/admin/links", Some(BEARER), &key).await;
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    wait_status(&edge, "topic-churn.io", "/s99", 302).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut checked = 0;
    for reader in readers {
        checked += reader.await.unwrap();
    }
    assert!(checked > 100, "readers ran throughout: {checked}");
    assert_eq!(edge.get("churn.io", "/s99").await.status, 302);
    assert_eq!(edge.get("api-churn.io", "/s99").await.status, 302);
    assert_eq!(edge.get("api-churn.io", "/s98").await.status, 404);
}

/// Issue 14: a node started while the broker is down becomes ready within
/// `--links-topic-ready-timeout`, serving the file plus the links topic's
/// snapshot its last run left beside the spool; when the broker answers it
/// resumes from the snapshot's offsets (not from the beginning) and the links'
/// staleness goes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_during_an_outage_is_ready_from_its_links_snapshot() {
    let (cluster, bootstrap) = mock_kafka(&[("clicks", 1), ("links", 1)]);
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap().to_owned();
    let args = [
        "--kafka-brokers",
        &bootstrap,
        "--links-topic",
        "links",
        "--spool-dir",
        &spool_dir,
        "--links-topic-ready-timeout",
        "3s",
        "--shutdown-timeout",
        "1s",
    ];
    let first_vanity = r#"{"type":"vanity","host":"new.pxf.io","slug":"first","partner_id":"9","campaign_id":"9","ad_id":"9","url":"https://www.acme.com/first-from-topic"}"#;
    produce(
        &bootstrap,
        "links",
        &[("vanity|new.pxf.io|first", Some(first_vanity))],
    );

    // A first run reads the topic and leaves its snapshot at shutdown.
    let edge = TestEdge::start(LINKS, &args).await;
    wait_status(&edge, "new.pxf.io", "/first", 302).await;
    edge.wait_for_sample("clickedge_links_topic_lag_seconds", 0.0)
        .await;
    edge.stop().await.unwrap();
    let snapshot = spool.path().join("links-topic-links.snapshot");
    let text = std::fs::read_to_string(&snapshot).expect("a snapshot beside the spool");
    assert!(text.contains("vanity|new.pxf.io|first"), "{text}");
    assert!(
        text.starts_with(r#"{"v":1,"topic":"links","offsets":{"0":1}"#),
        "{text}"
    );

    // Edit the snapshot's copy of the record: if the next run read the topic from
    // the beginning again, the topic's version would come back.
    std::fs::write(
        &snapshot,
        text.replace("first-from-topic", "first-from-snapshot"),
    )
    .unwrap();

    // The broker is down; the node is ready anyway, from the snapshot.
    cluster.broker_down(1).unwrap();
    let edge = TestEdge::start(LINKS, &args).await;
    let r = edge.admin_get("/readyz").await;
    assert_eq!(r.status, 503, "not before the bound: {}", r.body);
    edge.wait_ready().await;
    let r = edge.get("new.pxf.io", "/first").await;
    assert_eq!(r.status, 302);
    assert!(
        r.location().contains("first-from-snapshot"),
        "{}",
        r.location()
    );
    assert_eq!(
        edge.get("acme.pxf.io", "/janes-picks").await.status,
        302,
        "the file serves"
    );
    // The links are known to be stale, and by how much.
    edge.wait_for_metrics("links counted stale", |m| {
        sample(m, "clickedge_links_topic_lag_seconds").is_some_and(|lag| lag >= 3.0)
    })
    .await;

    // The broker returns: reading resumes after the snapshot's offset.
    cluster.broker_up(1).unwrap();
    let second = r#"{"type":"vanity","host":"new.pxf.io","slug":"second","partner_id":"9","campaign_id":"9","ad_id":"9","url":"https://www.acme.com/second"}"#;
    produce(
        &bootstrap,
        "links",
        &[("vanity|new.pxf.io|second", Some(second))],
    );
    wait_status(&edge, "new.pxf.io", "/second", 302).await;
    edge.wait_for_sample("clickedge_links_topic_lag_seconds", 0.0)
        .await;
    let r = edge.get("new.pxf.io", "/first").await;
    assert!(
        r.location().contains("first-from-snapshot"),
        "offset 0 was read again: {}",
        r.location()
    );
    edge.stop().await.unwrap();
}

/// Issue 14: a first start with no snapshot and no broker serves the file, is
/// ready after the bound, says so loudly, and counts its links stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_without_broker_or_snapshot_serves_the_file_and_says_so() {
    let (cluster, bootstrap) = mock_kafka(&[("clicks", 1), ("links", 1)]);
    cluster.broker_down(1).unwrap();
    let args = [
        "--kafka-brokers",
        &bootstrap,
        "--links-topic",
        "links",
        "--links-topic-ready-timeout",
        "1s",
    ];
    let edge = TestEdge::start(LINKS, &args).await;
    edge.wait_ready().await;
    assert_eq!(edge.get("acme.pxf.io", "/janes-picks").await.status, 302);
    edge.wait_for_metrics("links counted stale since start", |m| {
        sample(m, "clickedge_links_topic_lag_seconds").is_some_and(|lag| lag >= 1.0)
    })
    .await;

    let (running, http) = Running::serve(&args);
    running.wait_for("no snapshot of it exists; ready with the links FILE ALONE");
    let r = request(http, "GET", "acme.pxf.io", "/janes-picks", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(running.terminate(), 0);
}
