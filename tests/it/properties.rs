//! Property tests over generated requests: whatever a client sends, the Location
//! the edge builds is a valid header value (no CR/LF, nothing to inject) and points
//! at the record's own host or one its `deeplink_hosts` allow; never elsewhere.

use clickedge::destination::{accept_deeplink, Destination, HostPattern, IncomingQuery};
use proptest::prelude::*;

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

fn host_of(location: &str) -> String {
    url::Url::parse(location)
        .expect("a Location is an absolute URL")
        .host_str()
        .unwrap()
        .to_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn location_is_a_header_value_on_an_allowed_host(query in raw_query(), forward in any::<bool>()) {
        let record = Destination::parse("https://www.acme.com/summer?utm_source=impact#top").unwrap();
        let allowed: Vec<HostPattern> = ["www.acme.com", "*.acme-shop.com"]
            .iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect();
        let incoming = IncomingQuery::parse(Some(&query));
        let deeplink = incoming.deeplink.as_deref().and_then(|u| accept_deeplink(u, &allowed));
        let destination = deeplink.as_ref().unwrap_or(&record);
        let mut location = String::new();
        destination.write_location(&incoming, forward, Some(("clickid", "01JD0000000000000000000000")), &mut location);

        prop_assert!(http::HeaderValue::from_str(&location).is_ok(), "not a header value: {location:?}");
        prop_assert!(!location.contains('\r') && !location.contains('\n'));
        let host = host_of(&location);
        prop_assert!(
            host == "www.acme.com" || (host.ends_with(".acme-shop.com") && host.len() > ".acme-shop.com".len()),
            "redirected to {host} from {query:?}"
        );
        prop_assert!(location.contains("clickid=01JD0000000000000000000000"));
    }

    #[test]
    fn a_raw_query_the_http_parser_accepts_never_breaks_the_header(raw in "[ -~]{0,80}") {
        // Only what a request target can hold reaches the edge.
        let Ok(uri) = format!("/c/1/2/3?{raw}").parse::<http::Uri>() else {
            return Ok(());
        };
        let record = Destination::parse("https://www.acme.com/x").unwrap();
        let incoming = IncomingQuery::parse(uri.query());
        let mut location = String::new();
        record.write_location(&incoming, true, Some(("clickid", "01JD0000000000000000000000")), &mut location);
        prop_assert!(http::HeaderValue::from_str(&location).is_ok(), "{location:?}");
        prop_assert_eq!(host_of(&location), "www.acme.com");
    }
}
