//! SPEC §6–§7 and shutdown: metrics, probes, drain and flush, drops. Broker faults
//! come from librdkafka's mock cluster, started here outside the edge.

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;

use crate::support::{
    consume, eventually, missing_and_duplicates, mock_kafka, request, sample, TestEdge, BROWSER_UA,
    LINKS,
};

#[tokio::test]
async fn metrics_count_requests_events_links_and_connections() {
    let edge = TestEdge::start(LINKS, &[]).await;
    for _ in 0..3 {
        assert_eq!(edge.get("acme.sjv.io", "/c/1/5678/9012").await.status, 302);
    }
    edge.get("acme.sjv.io", "/c/1/5679/9012").await;
    edge.get("acme.sjv.io", "/nothing").await;
    edge.get("unknown.example", "/").await;
    request(edge.http, "POST", "acme.sjv.io", "/", &[]).await;
    edge.get("x", "/robots.txt").await;

    let m = edge
        .wait_for_sample(r#"clickedge_click_events_total{result="delivered"}"#, 5.0)
        .await;
    let expect = [
        (
            r#"clickedge_requests_total{type="tracking",outcome="redirect",status="302"}"#,
            3.0,
        ),
        (
            r#"clickedge_requests_total{type="tracking",outcome="redirect",status="307"}"#,
            1.0,
        ),
        (
            r#"clickedge_requests_total{type="fallback",outcome="redirect",status="302"}"#,
            1.0,
        ),
        (
            r#"clickedge_requests_total{type="none",outcome="unknown_host",status="404"}"#,
            1.0,
        ),
        (
            r#"clickedge_requests_total{type="none",outcome="method_not_allowed",status="405"}"#,
            1.0,
        ),
        (
            r#"clickedge_requests_total{type="none",outcome="robots",status="200"}"#,
            1.0,
        ),
        (r#"clickedge_click_events_total{result="queued"}"#, 5.0),
        (r#"clickedge_click_events_total{result="dropped"}"#, 0.0),
        (r#"clickedge_click_events_total{result="failed"}"#, 0.0),
        (r#"clickedge_links{type="tracking"}"#, 7.0),
        (r#"clickedge_links{type="vanity"}"#, 1.0),
        (r#"clickedge_links{type="domain"}"#, 1.0),
        (r#"clickedge_links{type="fallback"}"#, 1.0),
        (r#"clickedge_links{type="app_site"}"#, 1.0),
        (r#"clickedge_links_reloads_total{result="success"}"#, 1.0),
        (r#"clickedge_links_reloads_total{result="error"}"#, 0.0),
        (r#"clickedge_request_duration_seconds_count"#, 8.0),
        (
            r#"clickedge_request_duration_seconds_bucket{le="+Inf"}"#,
            8.0,
        ),
        (r#"clickedge_spool_backlog_bytes"#, 0.0),
        (r#"clickedge_build_info{version="0.1.0"}"#, 1.0),
        // This scrape's own connection.
        (r#"clickedge_connections_active{listener="admin"}"#, 1.0),
    ];
    for (series, want) in expect {
        assert_eq!(sample(&m, series), Some(want), "{series}\n{m}");
    }
    let reloaded_at = sample(&m, "clickedge_links_last_reload_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - reloaded_at).abs() < 120.0, "{reloaded_at} vs {now}");
    assert!(
        m.contains("# TYPE clickedge_request_duration_seconds histogram"),
        "{m}"
    );
    assert!(
        sample(&m, "clickedge_kafka_queue_messages").is_some(),
        "{m}"
    );
    assert!(
        sample(&m, "clickedge_spool_size_bytes").unwrap() > 0.0,
        "events are journaled: {m}"
    );
    // Acknowledged events leave the disk once their segment is sealed.
    edge.wait_for_sample("clickedge_spool_size_bytes", 0.0)
        .await;
    edge.wait_for_sample("clickedge_spool_segments", 0.0).await;
}

#[tokio::test]
async fn probes_health_and_readiness() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let health = edge.admin_get("/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    edge.wait_ready().await;
    assert_eq!(edge.admin_get("/readyz").await.body, "ready\n");
    assert_eq!(edge.admin_get("/nope").await.status, 404);
}

/// An edge on a 64 KiB spool whose broker is down from the start, with `args`.
async fn broker_down_small_spool(
    args: &[&str],
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    TestEdge,
) {
    broker_down_small_spool_serving(LINKS, args).await
}

/// As [`broker_down_small_spool`], serving `links`.
pub async fn broker_down_small_spool_serving(
    links: &str,
    args: &[&str],
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    TestEdge,
) {
    let (cluster, bootstrap) = mock_kafka(&[("clicks", 1), ("actions", 1)]);
    cluster.broker_down(1).unwrap();
    let mut argv = vec![
        "--kafka-brokers",
        &bootstrap,
        "--spool-max-bytes",
        "64KiB",
        "--shutdown-timeout",
        "1s",
    ];
    argv.extend_from_slice(args);
    let edge = TestEdge::start(links, &argv).await;
    (cluster, edge)
}

/// Clicks until the spool refuses one (broker down, small spool).
async fn fill_the_spool(edge: &TestEdge) -> usize {
    for sent in 1..=2000 {
        assert_eq!(edge.get("acme.sjv.io", "/c/1/5678/9012").await.status, 302);
        let m = edge.metrics().await;
        if sample(&m, r#"clickedge_click_events_total{result="dropped"}"#) > Some(0.0) {
            return sent;
        }
    }
    panic!("the spool never filled");
}

#[tokio::test]
async fn readiness_follows_whether_a_new_event_would_be_kept() {
    let (cluster, edge) = broker_down_small_spool(&[]).await;
    // Broker down, spool empty: events are safe on disk, so the node is ready.
    edge.wait_for_sample("clickedge_kafka_broker_up", 0.0).await;
    assert_eq!(edge.admin_get("/readyz").await.status, 200);

    fill_the_spool(&edge).await;
    let r = edge.wait_readyz(503).await;
    assert_eq!(
        r.body,
        "not ready: the spool is full (--spool-max-bytes); new click events would be dropped\n"
    );

    // The broker returns: the spool drains, and the node is ready again.
    cluster.broker_up(1).unwrap();
    edge.wait_ready().await;
    edge.wait_for_sample("clickedge_spool_backlog_bytes", 0.0)
        .await;
    assert_eq!(
        sample(&edge.metrics().await, "clickedge_kafka_broker_up"),
        Some(1.0)
    );
}

/// Issue 13, item 7: with the broker back but the spool still full (replay held
/// to 1 event/s), new clicks are dropped: the node must not say it is ready.
#[tokio::test]
async fn a_full_spool_is_not_ready_even_with_the_broker_up() {
    let (cluster, edge) = broker_down_small_spool(&["--spool-replay-rate", "1"]).await;
    fill_the_spool(&edge).await;
    cluster.broker_up(1).unwrap();
    edge.wait_for_sample("clickedge_kafka_broker_up", 1.0).await;
    let dropped = |m: &str| sample(m, r#"clickedge_click_events_total{result="dropped"}"#).unwrap();
    let before = dropped(&edge.metrics().await);
    for _ in 0..100 {
        assert_eq!(edge.get("acme.sjv.io", "/c/1/5678/9012").await.status, 302);
        let r = edge.admin_get("/readyz").await;
        assert_eq!(r.status, 503, "ready while dropping: {}", r.body);
    }
    assert!(dropped(&edge.metrics().await) > before);
}

#[tokio::test]
async fn shutdown_flushes_every_queued_event_to_the_broker() {
    let (cluster, bootstrap) = mock_kafka(&[("clicks", 2)]);
    // Slow acks, so events are still in flight when shutdown begins.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(300))
        .unwrap();
    let edge = TestEdge::start(LINKS, &["--kafka-brokers", &bootstrap]).await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(
            edge.get("acme.sjv.io", "/c/1/5678/9012")
                .await
                .click_id("clickid"),
        );
    }
    edge.stop().await.unwrap();
    // The edge is gone; the events it answered must all be in the topic.
    let events = consume(&bootstrap, "clicks", ids.len()).await;
    let mut delivered: Vec<String> = events
        .iter()
        .map(|e| e.field("click_id").as_str().unwrap().to_owned())
        .collect();
    delivered.sort();
    delivered.dedup();
    ids.sort();
    assert_eq!(delivered, ids);
}

#[tokio::test]
async fn draining_answers_503_on_readyz_and_refuses_new_clicks() {
    let (cluster, bootstrap) = mock_kafka(&[("clicks", 1)]);
    let mut edge = TestEdge::start(
        LINKS,
        &["--kafka-brokers", &bootstrap, "--shutdown-timeout", "3s"],
    )
    .await;
    edge.wait_ready().await;
    // With the broker down, the flush holds the drain open for the timeout.
    cluster.broker_down(1).unwrap();
    edge.get("acme.sjv.io", "/c/1/5678/9012").await;
    let started = Instant::now();
    let run = edge.begin_stop();
    let r = eventually(
        Duration::from_secs(3),
        Duration::from_millis(20),
        "readyz turning 503",
        || async {
            let r = edge.admin_get("/readyz").await;
            if r.status == 503 {
                Ok(r)
            } else {
                Err(r.status)
            }
        },
    )
    .await;
    assert_eq!(r.body, "not ready: shutting down\n");
    assert!(
        tokio::net::TcpStream::connect(edge.http).await.is_err(),
        "the edge listener is closed while draining"
    );
    run.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "flush waited for the broker"
    );
}

#[tokio::test]
async fn a_full_spool_drops_and_counts_while_redirects_go_on() {
    let (_cluster, edge) = broker_down_small_spool(&[]).await;
    for _ in 0..300 {
        assert_eq!(edge.get("acme.sjv.io", "/c/1/5678/9012").await.status, 302);
    }
    let count = |m: &str, result: &str| {
        sample(
            m,
            &format!(r#"clickedge_click_events_total{{result="{result}"}}"#),
        )
        .unwrap()
    };
    // Every click is accounted for: sent (and spooled), kept for replay, or
    // dropped. Waited for (the pump counts after the answer), then exact.
    let total = |m: &str| count(m, "queued") + count(m, "spooled") + count(m, "dropped");
    let m = edge
        .wait_for_metrics("every click counted", |m| total(m) >= 300.0)
        .await;
    assert_eq!(total(&m), 300.0, "counted once each: {m}");
    assert!(count(&m, "dropped") > 0.0, "{m}");
    let size = sample(&m, "clickedge_spool_size_bytes").unwrap();
    assert!(size > 0.0 && size <= 65536.0, "{m}");
    edge.stop().await.unwrap();
}

/// Several edge workers, each with its own sockets: concurrent keep-alive
/// connections are all served (on whichever worker the kernel gave them), every
/// click's event is delivered once, and the drain waits for every worker.
#[tokio::test]
async fn several_workers_serve_every_connection_and_drain_together() {
    let edge = TestEdge::start(LINKS, &["--workers", "3"]).await;
    let http = edge.http;
    let clients: Vec<_> = (0..24)
        .map(|_| {
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(http).await.unwrap();
                let (mut send, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                let mut ids = Vec::new();
                for _ in 0..5 {
                    let request = http::Request::get("/c/1/5678/9012")
                        .header("host", "acme.sjv.io")
                        .header("user-agent", BROWSER_UA)
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    let response = send.send_request(request).await.unwrap();
                    assert_eq!(response.status(), 302);
                    let location = response.headers()["location"].to_str().unwrap();
                    ids.push(location.rsplit("clickid=").next().unwrap().to_owned());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for client in clients {
        ids.extend(client.await.unwrap());
    }
    assert_eq!(ids.len(), 120);
    let events = edge.events(ids.len()).await;
    let (missing, duplicates) = missing_and_duplicates(&ids, &events);
    assert!(missing.is_empty(), "events missing: {missing:?}");
    assert_eq!(duplicates, 0);
    assert_eq!(events.len(), ids.len(), "no event but the clicks'");
    edge.stop().await.unwrap();
}
