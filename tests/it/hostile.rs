//! Oversized and garbage requests get the right status (or are closed), and the
//! edge keeps serving, and counting, afterwards.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{sample, TestEdge, LINKS};

async fn status_line(edge: &TestEdge, raw: Vec<u8>) -> String {
    let mut stream = TcpStream::connect(edge.http).await.unwrap();
    // The server may answer and close before it has read all of a huge request.
    let _ = stream.write_all(&raw).await;
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn oversized_and_garbage_requests_get_the_right_status_and_harm_nothing() {
    let edge = TestEdge::start(LINKS, &[]).await;
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: acme.sjv.io\r\n\r\n",
        "a".repeat(70_000)
    );
    assert_eq!(
        status_line(&edge, long_uri.into_bytes()).await,
        "HTTP/1.1 414 URI Too Long"
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: acme.sjv.io\r\nX-Big: {}\r\n\r\n",
        "b".repeat(500_000)
    );
    assert_eq!(
        status_line(&edge, big_header.into_bytes()).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: acme.sjv.io\r\n{many}\r\n");
    assert_eq!(
        status_line(&edge, many_headers.into_bytes()).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        status_line(&edge, b"\x00\x01\x02 garbage\r\n\r\n".to_vec()).await,
        "HTTP/1.1 400 Bad Request"
    );
    let header_injection =
        "GET /c/1/5678/9012?x=1%0d%0aSet-Cookie:%20evil=1 HTTP/1.1\r\nHost: acme.sjv.io\r\n\r\n";
    let mut stream = TcpStream::connect(edge.http).await.unwrap();
    stream.write_all(header_injection.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 302"), "{answer}");
    assert!(
        !answer.contains("set-cookie: evil"),
        "no header injected: {answer}"
    );

    // Still serving, and the real click counted once.
    let r = edge.get("acme.sjv.io", "/c/1/5678/9012").await;
    assert_eq!(r.status, 302);
    let m = edge.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"clickedge_requests_total{type="tracking",outcome="redirect",status="302"}"#
        ),
        Some(2.0),
        "{m}"
    );
}
