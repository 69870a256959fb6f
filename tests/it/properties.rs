//! Property tests over generated requests: whatever a client sends, the Location
//! the edge builds is a valid header value (no CR/LF, nothing to inject) and points
//! at the record's own host or one its `deeplink_hosts` allow; never elsewhere.
//!
//! Both go through the edge's own path: the request target parsed by `http` as
//! hyper hands it over (raw bytes, UTF-8 and other high bytes included where
//! `http` admits them), then the record's `Link::write_location`, the one
//! Location builder the edge and `/admin/resolve` share.

use clickedge::destination::IncomingQuery;
use clickedge::links::{parse_record, Link, Record};
use proptest::prelude::*;

/// The record under test: a tracking link with two deep-link patterns.
fn record(forward_query: bool) -> std::sync::Arc<Link> {
    let line = format!(
        r#"{{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/summer?utm_source=impact#top","deeplink_hosts":["www.acme.com","*.acme-shop.com"],"forward_query":{forward_query}}}"#
    );
    match parse_record(&line).unwrap() {
        Record::Link(link) => link,
        _ => unreachable!("a tracking record"),
    }
}

/// Anything printable, and the characters that make trouble in URLs and headers.
fn hostile_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::char::range(' ', '~'),
            Just('\r'),
            Just('\n'),
            Just('\0'),
            Just('é'),
            Just('\u{202e}'),
        ],
        0..40,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// A raw query string as a client could send it, with deep links of every shape.
fn raw_query() -> impl Strategy<Value = String> {
    let deeplink = prop_oneof![
        Just("https://www.acme.com/shoes".to_owned()),
        Just("https://eu.acme-shop.com/x".to_owned()),
        Just("https://www.acme.com.evil.example/".to_owned()),
        Just("//evil.example/".to_owned()),
        Just("javascript:alert(1)".to_owned()),
        Just("https://evil.example\\@www.acme.com/".to_owned()),
        hostile_text().prop_map(|t| format!("https://{t}")),
        hostile_text(),
    ];
    (
        proptest::collection::vec((hostile_text(), hostile_text()), 0..5),
        proptest::option::of(deeplink),
    )
        .prop_map(|(pairs, u)| {
            let encode = |s: &str| {
                percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            };
            let mut parts: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            if let Some(u) = u {
                parts.push(format!("u={}", encode(&u)));
            }
            parts.join("&")
        })
}

/// Raw request-target bytes after `?`: URI characters, the separators, and
/// bytes a client may send unencoded (UTF-8 sequences, lone high bytes, controls).
fn raw_query_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => (0x21u8..0x7f).prop_map(|b| vec![b]),
        1 => Just(b"&".to_vec()),
        1 => Just(b"=".to_vec()),
        1 => Just(b"%".to_vec()),
        1 => (0x80u8..=0xff).prop_map(|b| vec![b]),
        1 => Just(vec![0u8]),
        1 => Just(b"\r\n".to_vec()),
        1 => Just(b" ".to_vec()),
        1 => proptest::sample::select(vec![
            "é".as_bytes().to_vec(),
            "\u{202e}".as_bytes().to_vec(),
            b"u=https://evil.example/".to_vec(),
            b"u=https%3A%2F%2Feu.acme-shop.com%2F".to_vec(),
            "u=https://www.acme.com/é".as_bytes().to_vec(),
            b"subId1=".to_vec(),
        ]),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

fn host_of(location: &str) -> String {
    url::Url::parse(location)
        .expect("a Location is an absolute URL")
        .host_str()
        .unwrap()
        .to_owned()
}

fn is_allowed(host: &str) -> bool {
    host == "www.acme.com"
        || (host.ends_with(".acme-shop.com") && host.len() > ".acme-shop.com".len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn location_is_a_header_value_on_an_allowed_host(query in raw_query(), forward in any::<bool>()) {
        let link = record(forward);
        let incoming = IncomingQuery::parse(Some(&query));
        let mut location = String::new();
        link.write_location(&incoming, "clickid", "01JD0000000000000000000000", &mut location);

        prop_assert!(http::HeaderValue::from_str(&location).is_ok(), "not a header value: {location:?}");
        prop_assert!(!location.contains('\r') && !location.contains('\n'));
        let host = host_of(&location);
        prop_assert!(is_allowed(&host), "redirected to {host} from {query:?}");
        prop_assert!(location.contains("clickid=01JD0000000000000000000000"));
    }

    /// Raw bytes, as they arrive: whatever `http` admits as a request target
    /// reaches the Location builder as it would on the edge.
    #[test]
    fn raw_request_bytes_the_http_parser_accepts_never_break_the_header(
        raw in raw_query_bytes(),
        forward in any::<bool>(),
    ) {
        let mut target = b"/c/1/5678/9012?".to_vec();
        target.extend_from_slice(&raw);
        let Ok(uri) = http::Uri::from_maybe_shared(bytes::Bytes::from(target)) else {
            return Ok(());
        };
        let link = record(forward);
        let incoming = IncomingQuery::parse(uri.query());
        let mut location = String::new();
        link.write_location(&incoming, "clickid", "01JD0000000000000000000000", &mut location);
        prop_assert!(http::HeaderValue::from_str(&location).is_ok(), "{location:?} from {raw:?}");
        let host = host_of(&location);
        prop_assert!(is_allowed(&host), "redirected to {host} from {raw:?}");
        prop_assert!(location.contains("clickid=01JD0000000000000000000000"));
    }
}

/// The byte generator reaches what it is for: `http` admits some raw high
/// bytes, so the property above is not tested on ASCII alone.
#[test]
fn http_admits_raw_utf8_in_a_query() {
    let uri = http::Uri::from_maybe_shared(bytes::Bytes::from("/c/1/5678/9012?q=é".as_bytes()));
    assert!(uri.is_ok(), "{uri:?}");
}
