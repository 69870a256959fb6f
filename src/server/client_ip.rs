//! Who the client is, behind load balancers (SPEC §4 `ip`).
//!
//! - PROXY protocol v1 and v2 (`--proxy-protocol`), as AWS NLB and HAProxy send it:
//!   the header is read before HTTP or TLS, and its source address is the peer. A
//!   malformed header closes the connection.
//!   With `--trusted-proxies`, only those peers may send one.
//! - `X-Forwarded-For` or `Forwarded` (one of them, `--client-ip-header`) and
//!   `X-Forwarded-Proto` count only when the peer is one of `--trusted-proxies`;
//!   then the client is the right-most address that is not a trusted proxy
//!   (addresses left of it could be forged by the client).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;

use crate::config::ClientIpHeader;

/// No PROXY header is longer: v1 is at most 107 bytes, v2 here at most 16 + 520.
const MAX_PROXY_HEADER: usize = 536;

/// A connection whose first bytes were already read (past a PROXY header); they
/// are served again before the socket's.
#[derive(Debug)]
pub struct PrefixedStream {
    prefix: Vec<u8>,
    read: usize,
    inner: TcpStream,
}

impl PrefixedStream {
    pub fn new(prefix: Vec<u8>, inner: TcpStream) -> PrefixedStream {
        PrefixedStream {
            prefix,
            read: 0,
            inner,
        }
    }
}

impl AsyncRead for PrefixedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read < self.prefix.len() {
            let left = &self.prefix[self.read..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            self.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

// Writes go straight to the socket.
super::forward_async_write!(PrefixedStream);

/// Reads a PROXY protocol header (v1 or v2). Returns the client's address (the
/// peer's for v2 LOCAL or v1 UNKNOWN) and the bytes read past the header.
pub async fn read_proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> io::Result<(SocketAddr, Vec<u8>)> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut buf = Vec::with_capacity(MAX_PROXY_HEADER);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(invalid("connection closed inside the PROXY header".into()));
        }
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            if buf.len() >= MAX_PROXY_HEADER {
                return Err(invalid("PROXY header too long".into()));
            }
            continue;
        }
        let (source, length) = match parsed {
            HeaderResult::V1(Ok(header)) => {
                let source = match header.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)
                    }
                    ppp::v1::Addresses::Unknown => peer,
                };
                (source, header.header.len())
            }
            HeaderResult::V2(Ok(header)) => {
                let source = match header.addresses {
                    ppp::v2::Addresses::IPv4(a) => {
                        SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)
                    }
                    ppp::v2::Addresses::IPv6(a) => {
                        SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)
                    }
                    _ => peer,
                };
                (source, header.len())
            }
            HeaderResult::V1(Err(error)) => {
                return Err(invalid(format!("bad PROXY v1 header: {error}")))
            }
            HeaderResult::V2(Err(error)) => {
                return Err(invalid(format!("bad PROXY v2 header: {error}")))
            }
        };
        return Ok((source, buf.split_off(length.min(buf.len()))));
    }
}

/// Who the client is and whether it spoke TLS to the first proxy: the event's
/// `ip` and `scheme`, and the visitor cookie's `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    pub https: bool,
}

/// The client behind `peer` (SPEC §4). From a peer outside `trusted`, the peer
/// itself, over the connection's own scheme. From a trusted peer:
/// - the address: the one header named by `--client-ip-header`, walked right to
///   left past trusted addresses; the first untrusted hop is the client. A hop
///   that does not parse stops the walk: nothing left of it is believed, and the
///   client is the last trusted hop before it. The other header is ignored, so a
///   client's own `Forwarded` passing through a proxy that appends only
///   `X-Forwarded-For` changes nothing.
/// - the scheme: the right-most `X-Forwarded-Proto` value (the one the trusted
///   peer wrote), so TLS ended at a load balancer still counts as https.
pub fn client(
    peer: IpAddr,
    tls: bool,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ClientIpHeader,
) -> Client {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !is_trusted(trusted, peer) {
        return Client {
            ip: peer,
            https: tls,
        };
    }
    let mut ip = peer;
    let mut walk = |hop: Option<IpAddr>| match hop {
        Some(hop) => {
            ip = hop.to_canonical();
            is_trusted(trusted, ip)
        }
        None => false,
    };
    match header {
        ClientIpHeader::XForwardedFor => {
            for hop in list_values(headers, "x-forwarded-for").rev() {
                if !walk(parse_hop(hop)) {
                    break;
                }
            }
        }
        ClientIpHeader::Forwarded => {
            for element in list_values(headers, "forwarded").rev() {
                if !walk(forwarded_for(element)) {
                    break;
                }
            }
        }
    }
    let https = match list_values(headers, "x-forwarded-proto").next_back() {
        Some(proto) => proto.eq_ignore_ascii_case("https"),
        None => tls,
    };
    Client { ip, https }
}

/// Whether `ip` (an IPv4-mapped IPv6 address as the IPv4 one) is one of the
/// trusted proxies.
pub fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The comma-separated values of every `name` header, in order, trimmed. A
/// header that is not text is one value that parses as nothing.
fn list_values<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> impl DoubleEndedIterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
}

/// RFC 7239: the `for` of one element, `for=192.0.2.60;proto=http` or
/// `for="[2001:db8::1]:4711"`; `None` for an element without one, or with an
/// obfuscated or `unknown` one.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_hop(value.trim().trim_matches('"')))
            .flatten()
    })
}

/// `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    const XFF: ClientIpHeader = ClientIpHeader::XForwardedFor;
    const FWD: ClientIpHeader = ClientIpHeader::Forwarded;

    fn ip_of(peer: &str, h: &HeaderMap, trusted: &[IpNet], header: ClientIpHeader) -> IpAddr {
        client(peer.parse().unwrap(), false, h, trusted, header).ip
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client("203.0.113.9".parse().unwrap(), false, &h, &trusted, XFF),
            Client {
                ip: ip("203.0.113.9"),
                https: false
            }
        );
        assert_eq!(
            client("10.1.2.3".parse().unwrap(), false, &h, &trusted, XFF),
            Client {
                ip: ip("198.51.100.7"),
                https: true
            }
        );
        assert_eq!(ip_of("10.1.2.3", &h, &[], XFF), ip("10.1.2.3"));
    }

    /// Issue 13, item 1: a load balancer that appends X-Forwarded-For passes the
    /// client's own `Forwarded` through; it must not choose the address.
    #[test]
    fn only_the_configured_header_is_believed() {
        let trusted = nets(&["127.0.0.0/8"]);
        let h = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(ip_of("127.0.0.1", &h, &trusted, XFF), ip("198.51.100.7"));
        let h = headers(&[
            ("forwarded", "for=198.51.100.7"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(ip_of("127.0.0.1", &h, &trusted, FWD), ip("198.51.100.7"));
        // The believed header absent: the peer, never the other header.
        let h = headers(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(ip_of("127.0.0.1", &h, &trusted, XFF), ip("127.0.0.1"));
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "172.16.0.0/12"]);
        // The client forged the left-most entry; our proxies added the others.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4, 198.51.100.7, 172.16.0.5"),
            ("x-forwarded-for", "10.0.0.9"),
        ]);
        assert_eq!(ip_of("10.0.0.1", &h, &trusted, XFF), ip("198.51.100.7"));
        let h = headers(&[(
            "forwarded",
            r#"for=1.2.3.4, for="[2001:db8::7]:4711";proto=https, for=10.0.0.2"#,
        )]);
        assert_eq!(ip_of("10.0.0.1", &h, &trusted, FWD), ip("2001:db8::7"));
        let h = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.8")]);
        assert_eq!(
            ip_of("10.0.0.1", &h, &trusted, XFF),
            ip("10.0.0.7"),
            "all trusted: the farthest"
        );
    }

    /// A hop that does not parse stops the walk: what stands left of it was
    /// written by someone no trusted proxy vouches for.
    #[test]
    fn an_unparseable_hop_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "198.51.100.7, garbage, 10.0.0.5")]);
        assert_eq!(ip_of("10.0.0.1", &h, &trusted, XFF), ip("10.0.0.5"));
        let h = headers(&[("x-forwarded-for", "198.51.100.7, garbage")]);
        assert_eq!(ip_of("10.0.0.1", &h, &trusted, XFF), ip("10.0.0.1"));
        let h = headers(&[("x-forwarded-for", "198.51.100.7,,10.0.0.5")]);
        assert_eq!(ip_of("10.0.0.1", &h, &trusted, XFF), ip("10.0.0.5"));
        let h = headers(&[("x-forwarded-for", "198.51.100.7:1234")]);
        assert_eq!(ip_of("10.0.0.1", &h, &trusted, XFF), ip("198.51.100.7"));
        let h = headers(&[("forwarded", "for=198.51.100.7, for=_hidden, for=10.0.0.5")]);
        assert_eq!(ip_of("10.0.0.1", &h, &trusted, FWD), ip("10.0.0.5"));
        let h = headers(&[("forwarded", "for=198.51.100.7, proto=https")]);
        assert_eq!(ip_of("10.0.0.1", &h, &trusted, FWD), ip("10.0.0.1"));
    }

    #[test]
    fn the_scheme_follows_the_trusted_peers_x_forwarded_proto() {
        let trusted = nets(&["10.0.0.0/8"]);
        let https = |peer: &str, tls: bool, pairs: &[(&str, &str)]| {
            client(peer.parse().unwrap(), tls, &headers(pairs), &trusted, XFF).https
        };
        assert!(https("10.0.0.1", false, &[("x-forwarded-proto", "https")]));
        assert!(https(
            "10.0.0.1",
            false,
            &[("x-forwarded-proto", "http, HTTPS")]
        ));
        assert!(!https(
            "10.0.0.1",
            true,
            &[("x-forwarded-proto", "https, http")]
        ));
        assert!(https("10.0.0.1", true, &[]));
        assert!(!https(
            "203.0.113.9",
            false,
            &[("x-forwarded-proto", "https")]
        ));
        assert!(https("203.0.113.9", true, &[("x-forwarded-proto", "http")]));
    }
}
