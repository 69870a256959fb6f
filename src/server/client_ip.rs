//! Who the client is, behind load balancers (SPEC §4 `ip`).
//!
//! - PROXY protocol v1 and v2 (`--proxy-protocol`), as AWS NLB and HAProxy send it:
//!   the header is read before HTTP or TLS, and its source address is the peer. A
//!   malformed header closes the connection.
//! - `X-Forwarded-For` / `Forwarded` count only when the peer is one of
//!   `--trusted-proxies`; then the client is the right-most address that is not a
//!   trusted proxy (addresses left of it could be forged by the client).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;

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

/// The client's address: the peer's, or, from a trusted proxy, the right-most
/// untrusted address of `Forwarded` (preferred) or `X-Forwarded-For`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = forwarded_for(headers);
    if chain.is_empty() {
        chain = x_forwarded_for(headers);
    }
    // Walk from the nearest hop outwards; the first address we do not trust is the
    // client as far as anyone we trust can tell.
    let mut client = peer;
    for hop in chain.into_iter().rev() {
        client = hop.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

fn x_forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| parse_hop(hop.trim()))
        .collect()
}

/// RFC 7239: `Forwarded: for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"`.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_hop(value.trim().trim_matches('"')))
                    .flatten()
            })
        })
        .collect()
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

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip("203.0.113.9".parse().unwrap(), &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.1.2.3".parse().unwrap(), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.1.2.3".parse().unwrap(), &h, &[]),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "172.16.0.0/12"]);
        // The client forged the left-most entry; our proxies added the others.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4, 198.51.100.7, 172.16.0.5"),
            ("x-forwarded-for", "10.0.0.9"),
        ]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[
            (
                "forwarded",
                r#"for=1.2.3.4, for="[2001:db8::7]:4711";proto=https, for=10.0.0.2"#,
            ),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.8")]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &trusted),
            "10.0.0.7".parse::<IpAddr>().unwrap(),
            "all trusted: the farthest"
        );
        let h = headers(&[("x-forwarded-for", "garbage, 198.51.100.7:1234")]);
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }
}
