//! The event's `ip` behind load balancers: PROXY protocol v1 and v2, and
//! forwarding headers believed only from `--trusted-proxies`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestEdge, LINKS};

const REQUEST: &str =
    "GET /c/1234/5678/9012 HTTP/1.1\r\nHost: acme.sjv.io\r\nConnection: close\r\n\r\n";

/// Sends `preamble` then a plain request on one connection; returns what came back.
async fn raw(addr: SocketAddr, preamble: &[u8], request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(preamble).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn click_id_of(response: &str) -> String {
    let location = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("location:"))
        .unwrap_or_else(|| panic!("no Location in {response:?}"));
    location
        .trim()
        .rsplit("clickid=")
        .next()
        .unwrap()
        .to_owned()
}

fn v2_header(source: &str, destination: &str) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let source: SocketAddr = source.parse().unwrap();
    let destination: SocketAddr = destination.parse().unwrap();
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_set_the_event_ip() {
    let edge = TestEdge::start(LINKS, &["--proxy-protocol"]).await;
    let v1 = raw(
        edge.http,
        b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 80\r\n",
        REQUEST,
    )
    .await;
    assert!(v1.starts_with("HTTP/1.1 302"), "{v1}");
    let v2 = raw(
        edge.http,
        &v2_header("[2001:db8::7]:51234", "[2001:db8::1]:80"),
        REQUEST,
    )
    .await;
    assert!(v2.starts_with("HTTP/1.1 302"), "{v2}");
    let v2_ipv4 = raw(
        edge.http,
        &v2_header("203.0.113.50:4000", "10.0.0.1:80"),
        REQUEST,
    )
    .await;
    let events = edge.events(3).await;
    let ip_of = |response: &str| {
        let id = click_id_of(response);
        events
            .iter()
            .find(|e| e.field("click_id") == id.as_str())
            .unwrap()
            .field("ip")
            .clone()
    };
    assert_eq!(ip_of(&v1), "198.51.100.7");
    assert_eq!(ip_of(&v2), "2001:db8::7");
    assert_eq!(ip_of(&v2_ipv4), "203.0.113.50");
}

#[tokio::test]
async fn a_malformed_or_missing_proxy_header_closes_the_connection() {
    let edge = TestEdge::start(LINKS, &["--proxy-protocol"]).await;
    for preamble in [
        &b"PROXY GARBAGE\r\n"[..],
        b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n",
        b"",
    ] {
        let answer = raw(edge.http, preamble, REQUEST).await;
        assert!(answer.is_empty(), "{preamble:?} got {answer:?}");
    }
    // The listener still serves proper connections.
    let ok = raw(
        edge.http,
        b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 80\r\n",
        REQUEST,
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 302"), "{ok}");
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let spoof = "GET /c/1234/5678/9012 HTTP/1.1\r\nHost: acme.sjv.io\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.7\r\nConnection: close\r\n\r\n";
    let untrusted = TestEdge::start(LINKS, &[]).await;
    let answer = raw(untrusted.http, b"", spoof).await;
    let events = untrusted.events(1).await;
    assert_eq!(events[0].field("click_id"), click_id_of(&answer).as_str());
    assert_eq!(
        events[0].field("ip"),
        "127.0.0.1",
        "a spoofed header from an untrusted peer is ignored"
    );

    let trusted = TestEdge::start(LINKS, &["--trusted-proxies", "127.0.0.0/8,10.0.0.0/8"]).await;
    let answer = raw(trusted.http, b"", spoof).await;
    let events = trusted.events(1).await;
    assert_eq!(events[0].field("click_id"), click_id_of(&answer).as_str());
    assert_eq!(
        events[0].field("ip"),
        "198.51.100.7",
        "the right-most untrusted hop"
    );
}

/// The event whose click id the raw response carries.
fn event_of<'e>(
    events: &'e [crate::support::Consumed],
    response: &str,
) -> &'e crate::support::Consumed {
    crate::support::event_for(events, &click_id_of(response))
}

fn request_with(headers: &str) -> String {
    format!(
        "GET /c/1234/5678/9012 HTTP/1.1\r\nHost: acme.sjv.io\r\nUser-Agent: {}\r\n{headers}Connection: close\r\n\r\n",
        crate::support::BROWSER_UA
    )
}

/// Issue 13, item 1, as found by running the binary: a client's own `Forwarded`
/// passed through a proxy that appends X-Forwarded-For chose the event's ip.
#[tokio::test]
async fn a_clients_own_forwarded_header_does_not_choose_its_ip() {
    let edge = TestEdge::start(LINKS, &["--trusted-proxies", "127.0.0.0/8"]).await;
    let spoof = request_with("Forwarded: for=6.6.6.6\r\nX-Forwarded-For: 198.51.100.7\r\n");
    let answer = raw(edge.http, b"", &spoof).await;
    let events = edge.events(1).await;
    assert_eq!(event_of(&events, &answer).field("ip"), "198.51.100.7");

    // With --client-ip-header forwarded it is the other way round.
    let edge = TestEdge::start(
        LINKS,
        &[
            "--trusted-proxies",
            "127.0.0.0/8",
            "--client-ip-header",
            "forwarded",
        ],
    )
    .await;
    let answer = raw(
        edge.http,
        b"",
        &request_with("Forwarded: for=\"[2001:db8::9]:4711\"\r\nX-Forwarded-For: 6.6.6.6\r\n"),
    )
    .await;
    let events = edge.events(1).await;
    assert_eq!(event_of(&events, &answer).field("ip"), "2001:db8::9");
}

/// A hop that does not parse stops the walk: nothing left of it is believed.
#[tokio::test]
async fn an_unparseable_hop_stops_the_walk_over_sockets() {
    let edge = TestEdge::start(LINKS, &["--trusted-proxies", "127.0.0.0/8,10.0.0.0/8"]).await;
    let answer = raw(
        edge.http,
        b"",
        &request_with("X-Forwarded-For: 6.6.6.6, not-an-ip, 10.1.1.1\r\n"),
    )
    .await;
    let events = edge.events(1).await;
    assert_eq!(event_of(&events, &answer).field("ip"), "10.1.1.1");
}

/// TLS ended at a trusted load balancer: `X-Forwarded-Proto: https` makes the
/// event https and the cookie Secure; from an untrusted peer it changes nothing.
#[tokio::test]
async fn x_forwarded_proto_from_a_trusted_peer_sets_the_scheme_and_secure() {
    let proto = request_with("X-Forwarded-Proto: https\r\n");
    let trusted = TestEdge::start(LINKS, &["--trusted-proxies", "127.0.0.1"]).await;
    let answer = raw(trusted.http, b"", &proto).await;
    let cookie = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie in {answer}"));
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    let events = trusted.events(1).await;
    assert_eq!(event_of(&events, &answer).field("scheme"), "https");

    let untrusted = TestEdge::start(LINKS, &[]).await;
    let answer = raw(untrusted.http, b"", &proto).await;
    assert!(!answer.contains("Secure"), "{answer}");
    let events = untrusted.events(1).await;
    assert_eq!(event_of(&events, &answer).field("scheme"), "http");
}

/// With --trusted-proxies, a PROXY header is believed only from those peers:
/// anyone else reaching the port could otherwise name any client address.
#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_closes_the_connection() {
    let preamble = b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 80\r\n";
    let closed = TestEdge::start(
        LINKS,
        &["--proxy-protocol", "--trusted-proxies", "10.0.0.0/8"],
    )
    .await;
    let answer = raw(closed.http, preamble, REQUEST).await;
    assert!(answer.is_empty(), "{answer:?}");

    let open = TestEdge::start(
        LINKS,
        &["--proxy-protocol", "--trusted-proxies", "127.0.0.0/8"],
    )
    .await;
    let answer = raw(open.http, preamble, &request_with("")).await;
    assert!(answer.starts_with("HTTP/1.1 302"), "{answer}");
    let events = open.events(1).await;
    assert_eq!(event_of(&events, &answer).field("ip"), "198.51.100.7");
}
