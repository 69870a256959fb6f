//! Limits and timeouts against raw socket clients: the connection cap refuses at
//! once, slow and silent clients are closed on time, HTTP/2 resets are bounded,
//! and thousands of idle connections do not slow real clicks.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::Running;
use crate::support::{eventually, free_port, sample, TestEdge, LINKS};

const CLICK: &[u8] = b"GET /c/1/5678/9012 HTTP/1.1\r\nHost: acme.sjv.io\r\n\r\n";

/// Sends a click on an open connection and reads the answer's status line.
async fn click_on(stream: &mut TcpStream) -> String {
    stream.write_all(CLICK).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Reads until the server closes; returns what it sent and how long that took.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut all = Vec::new();
    let outcome = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "the server did not close within {within:?}"
    );
    (all, started.elapsed())
}

#[tokio::test]
async fn connections_past_the_cap_get_503_at_once_and_places_free_up() {
    let edge = TestEdge::start(LINKS, &["--max-connections", "3"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(edge.http).await.unwrap();
        assert_eq!(click_on(&mut stream).await, "HTTP/1.1 302 Found");
        held.push(stream);
    }

    // The fourth is answered without sending anything, and closed.
    let mut fourth = TcpStream::connect(edge.http).await.unwrap();
    let (answer, _) = read_to_close(&mut fourth, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");

    let metrics = edge.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            r#"clickedge_connections_refused_total{listener="http"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"clickedge_connections_active{listener="http"}"#),
        Some(3.0),
        "{metrics}"
    );
    // The admin listener has its own cap: metrics were served while the edge was full.

    // The held connections still work; closing one frees its place.
    assert_eq!(click_on(&mut held[0]).await, "HTTP/1.1 302 Found");
    drop(held.pop());
    edge.wait_for_sample(r#"clickedge_connections_active{listener="http"}"#, 2.0)
        .await;
    let mut again = TcpStream::connect(edge.http).await.unwrap();
    assert_eq!(click_on(&mut again).await, "HTTP/1.1 302 Found");
}

#[tokio::test]
async fn slowloris_is_closed_at_the_header_read_timeout() {
    let edge = TestEdge::start(LINKS, &["--header-read-timeout", "1s"]).await;
    let mut slow = TcpStream::connect(edge.http).await.unwrap();
    let started = Instant::now();
    // A byte every 100 ms: always active, never a complete head.
    let head = b"GET /c/1/5678/9012 HTTP/1.1\r\nHost: acme.sjv.io\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed_after = None;
    for byte in head.iter() {
        if slow.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the unfinished head was never closed");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed before its timeout: {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_secs(5),
        "closed long after its 1 s timeout: {closed_after:?}"
    );

    edge.wait_for_sample(
        r#"clickedge_connections_timed_out_total{timeout="header"}"#,
        1.0,
    )
    .await;
    assert_eq!(edge.get("acme.sjv.io", "/c/1/5678/9012").await.status, 302);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_read_timeout() {
    let edge = TestEdge::start(LINKS, &["--header-read-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(edge.http).await.unwrap();
    assert_eq!(click_on(&mut stream).await, "HTTP/1.1 302 Found");
    let (rest, waited) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_idle_timeout() {
    // The idle timeout, shorter than the head's, closes a connection that sent
    // part of a head and then nothing.
    let edge = TestEdge::start(
        LINKS,
        &["--header-read-timeout", "30s", "--idle-timeout", "1s"],
    )
    .await;
    let mut stream = TcpStream::connect(edge.http).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (_, waited) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    edge.wait_for_sample(
        r#"clickedge_connections_timed_out_total{timeout="idle"}"#,
        1.0,
    )
    .await;
}

/// Issue 13, item 9: a client that pipelines requests and never reads their
/// answers fills the socket's buffers; hyper then stops reading too, so neither
/// the head nor the idle timer runs. The send timeout closes it.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_at_the_send_timeout() {
    let edge = TestEdge::start(
        LINKS,
        &[
            "--send-timeout",
            "1s",
            "--idle-timeout",
            "60s",
            "--header-read-timeout",
            "60s",
        ],
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(edge.http).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Robots answers: no click events, ~150 bytes each; megabytes of answers
    // outgrow any socket buffer on the way.
    let requests = b"GET /robots.txt HTTP/1.1\r\nHost: acme.sjv.io\r\n\r\n".repeat(60_000);
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&requests).await;
        writer
    });
    edge.wait_for_sample(
        r#"clickedge_connections_timed_out_total{timeout="send"}"#,
        1.0,
    )
    .await;
    edge.wait_for_sample(r#"clickedge_connections_active{listener="http"}"#, 0.0)
        .await;
    // What the edge had written before it gave up is still readable, then the end.
    read_to_close(&mut reader, Duration::from_secs(10)).await;
    writing.abort();
}

#[tokio::test]
async fn an_unfinished_tls_handshake_is_closed_at_the_header_read_timeout() {
    let (edge, _certs) = tls_edge(&["--header-read-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(edge.https.unwrap()).await.unwrap();
    // The start of a ClientHello record, then nothing.
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let (_, waited) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    edge.wait_for_sample(
        r#"clickedge_connections_timed_out_total{timeout="handshake"}"#,
        1.0,
    )
    .await;
}

/// Over TLS, HTTP/1: the head's deadline runs from the handshake's end and from
/// each response, enforced by the connection's own timer (not hyper's).
#[tokio::test]
async fn a_slow_head_over_tls_is_closed_at_the_header_read_timeout() {
    let (edge, _certs) = tls_edge(&["--header-read-timeout", "1s"]).await;
    let (mut stream, _) =
        crate::support::tls::connect(edge.https.unwrap(), "acme.sjv.io", &[b"http/1.1"])
            .await
            .unwrap();
    // One request answered, then a head that never ends, a byte every 100 ms.
    stream
        .write_all(b"GET /c/1/5678/9012 HTTP/1.1\r\nHost: acme.sjv.io\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 302");
    let started = Instant::now();
    let mut closed_after = None;
    for byte in
        b"GET /c/1/5678/9012 HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut rest = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut rest)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            _ => {}
        }
    }
    let closed_after = closed_after.expect("the unfinished head was never closed");
    assert!(
        closed_after >= Duration::from_millis(900),
        "{closed_after:?}"
    );
    assert!(closed_after < Duration::from_secs(4), "{closed_after:?}");
    edge.wait_for_sample(
        r#"clickedge_connections_timed_out_total{timeout="header"}"#,
        1.0,
    )
    .await;
}

/// HTTP/2 connections have no head deadline of their own: a connection quiet
/// past `--header-read-timeout` (but within the idle timeout) still serves.
#[tokio::test]
async fn an_http2_connection_outlives_the_header_read_timeout() {
    let (edge, _certs) = tls_edge(&["--header-read-timeout", "1s", "--idle-timeout", "30s"]).await;
    let (stream, _) = crate::support::tls::connect(edge.https.unwrap(), "acme.sjv.io", &[b"h2"])
        .await
        .unwrap();
    let (mut sender, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    for round in 0..2 {
        let request = http::Request::get("https://acme.sjv.io/c/1/5678/9012")
            .body(())
            .unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 302, "round {round}");
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            sender = sender.ready().await.unwrap();
        }
    }
    assert!(!connection.is_finished());
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_the_idle_timeout() {
    let (edge, _certs) = tls_edge(&["--idle-timeout", "1s"]).await;
    let (stream, _) = crate::support::tls::connect(edge.https.unwrap(), "acme.sjv.io", &[b"h2"])
        .await
        .unwrap();
    let (mut sender, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get("https://acme.sjv.io/c/1/5678/9012")
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 302);

    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(700));
}

/// An edge with the HTTPS listener on (its certificates kept alive by the
/// returned directory) and `extra` flags.
async fn tls_edge(extra: &[&str]) -> (TestEdge, tempfile::TempDir) {
    let dir = crate::support::tls::cert_dir();
    let mut args = vec!["--tls-certs", dir.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    (TestEdge::start(LINKS, &args).await, dir)
}

/// The header block of `GET https://acme.sjv.io/c/1/5678/9012`, without the
/// dynamic table (GET and https from the static table; :authority and :path as
/// literals), so every stream can send the same bytes.
fn click_header_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x01, 11];
    block.extend_from_slice(b"acme.sjv.io");
    block.extend_from_slice(&[0x04, 14]);
    block.extend_from_slice(b"/c/1/5678/9012");
    block
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn rapid_reset_is_told_to_go_away_and_the_edge_keeps_serving() {
    let (edge, _certs) = tls_edge(&[]).await;
    let (mut stream, _) =
        crate::support::tls::connect(edge.https.unwrap(), "acme.sjv.io", &[b"h2"])
            .await
            .unwrap();

    // Written by hand, as an attacker would: the preface, then streams opened and
    // reset at once (CVE-2023-44487).
    const STREAMS: u32 = 2_000;
    let block = click_header_block();
    let mut attack = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    attack.extend(frame(0x4, 0, 0, &[]));
    for n in 0..STREAMS {
        let id = 2 * n + 1;
        attack.extend(frame(0x1, 0x5, id, &block));
        attack.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    // The server may close before it has read everything.
    let _ = stream.write_all(&attack).await;
    let _ = stream.flush().await;

    let frames = read_frames(&mut stream, Duration::from_secs(10)).await;
    let goaway = frames
        .iter()
        .find(|(kind, _, payload)| *kind == 0x7 && payload.len() >= 8)
        .map(|(_, _, payload)| u32::from_be_bytes(payload[4..8].try_into().unwrap()));
    assert_eq!(goaway, Some(0xb), "no GOAWAY with ENHANCE_YOUR_CALM (0xb)");

    // A fresh client is served, and the reset streams were not all served as clicks.
    let (stream, _) = crate::support::tls::connect(edge.https.unwrap(), "acme.sjv.io", &[b"h2"])
        .await
        .unwrap();
    let response = crate::support::tls::https_get(stream, "acme.sjv.io", "/c/1/5678/9012").await;
    assert_eq!(response.status(), 302);
    let metrics = edge.metrics().await;
    let clicks = sample(
        &metrics,
        r#"clickedge_requests_total{type="tracking",outcome="redirect",status="302"}"#,
    )
    .unwrap_or(0.0);
    eprintln!("{clicks} clicks served of {STREAMS} reset streams");
    assert!(
        clicks >= 1.0 && clicks < f64::from(STREAMS) / 2.0,
        "{clicks} clicks served of {STREAMS} reset streams"
    );
}

/// Frames read from `stream` until it is quiet for `quiet`: (type, stream id,
/// payload).
async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    quiet: Duration,
) -> Vec<(u8, u32, Vec<u8>)> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 16384];
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= received.len() {
        let length =
            u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]) as usize;
        let id = u32::from_be_bytes(received[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
        let end = (at + 9 + length).min(received.len());
        frames.push((received[at + 3], id, received[at + 9..end].to_vec()));
        at += 9 + length;
    }
    frames
}

#[tokio::test]
async fn streams_past_the_http2_limit_are_refused() {
    let (edge, _certs) = tls_edge(&[]).await;
    let (mut stream, _) =
        crate::support::tls::connect(edge.https.unwrap(), "acme.sjv.io", &[b"h2"])
            .await
            .unwrap();
    // 101 requests whose bodies never end: each stream stays open, so the 101st
    // is one past the 100 the server allows.
    let block = click_header_block();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(0x4, 0, 0, &[]));
    for n in 0..101u32 {
        opening.extend(frame(0x1, 0x4, 2 * n + 1, &block));
    }
    stream.write_all(&opening).await.unwrap();
    stream.flush().await.unwrap();
    let frames = read_frames(&mut stream, Duration::from_millis(1500)).await;

    let settings = frames
        .iter()
        .find(|(kind, id, payload)| *kind == 0x4 && *id == 0 && !payload.is_empty())
        .expect("the server's SETTINGS");
    let advertised = settings.2.chunks(6).find_map(|s| {
        (u16::from_be_bytes([s[0], s[1]]) == 0x3)
            .then(|| u32::from_be_bytes(s[2..6].try_into().unwrap()))
    });
    assert_eq!(advertised, Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");
    let refused: Vec<u32> = frames
        .iter()
        .filter(|(kind, _, payload)| *kind == 0x3 && payload.as_slice() == 7u32.to_be_bytes())
        .map(|(_, id, _)| *id)
        .collect();
    assert_eq!(
        refused,
        vec![201],
        "REFUSED_STREAM for the 101st stream only"
    );
    let answered = frames
        .iter()
        .filter(|(kind, id, _)| *kind == 0x1 && *id != 0)
        .count();
    assert_eq!(answered, 100, "the first 100 streams are answered");
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_refused_on_http2() {
    let (edge, _certs) = tls_edge(&[]).await;
    let (stream, _) = crate::support::tls::connect(edge.https.unwrap(), "acme.sjv.io", &[b"h2"])
        .await
        .unwrap();
    let (mut sender, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("https://acme.sjv.io/c/1/5678/9012")
        .header("x-big", "b".repeat(100_000))
        .body(())
        .unwrap();
    let outcome = match sender.send_request(request, true) {
        Ok((response, _)) => match response.await {
            Ok(response) => format!("status {}", response.status()),
            Err(error) => format!("error {error:?}"),
        },
        Err(error) => format!("not sent {error:?}"),
    };
    eprintln!("{outcome}");
    assert_eq!(outcome, "status 431 Request Header Fields Too Large");
    let (stream, _) = crate::support::tls::connect(edge.https.unwrap(), "acme.sjv.io", &[b"h2"])
        .await
        .unwrap();
    let response = crate::support::tls::https_get(stream, "acme.sjv.io", "/c/1/5678/9012").await;
    assert_eq!(response.status(), 302);
}

/// The real binary (its own file descriptors: 10,000 here and 10,000 there would
/// not fit one process's limit) with 10,000 idle connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_slow_real_clicks() {
    raise_open_files();
    let http = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let spool = tempfile::tempdir().unwrap();
    let edge = Running::start(&[
        "--http",
        &http,
        "--admin",
        &admin,
        "--spool-dir",
        spool.path().to_str().unwrap(),
        "--max-connections",
        "10100",
        "--header-read-timeout",
        "120s",
        "--idle-timeout",
        "120s",
    ]);
    edge.wait_for("Serving.");

    const IDLE: usize = 10_000;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&http).await.unwrap());
    }
    let active = format!("clickedge_connections_active{{listener=\"http\"}} {IDLE}");
    let (admin_addr, active) = (&admin, &active);
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "all idle connections taken",
        move || async move {
            let metrics = plain_get(admin_addr, "/metrics").await;
            if metrics.lines().any(|l| l == active) {
                Ok(())
            } else {
                Err(metrics)
            }
        },
    )
    .await;

    // Real clicks on fresh connections, one after another.
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let started = Instant::now();
        let mut stream = TcpStream::connect(&http).await.unwrap();
        assert_eq!(click_on(&mut stream).await, "HTTP/1.1 302 Found");
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest of 200 clicks beside {IDLE} idle connections: {slowest:?}");
    // A liveness bound, not a benchmark: a click queued behind the idle
    // connections (or their timers) would take seconds.
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    let metrics = plain_get(&admin, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l
            == r#"clickedge_requests_total{type="tracking",outcome="redirect",status="302"} 200"#),
        "{metrics}"
    );
    drop(idle);
    assert_eq!(edge.terminate(), 0);
}

async fn plain_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn raise_open_files() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        now >= 10_500,
        "this test needs 10,500 open files (ulimit -n); the limit is {now}"
    );
}
