//! A request target (as hyper hands it over: an origin-form or absolute URI) and a
//! Host → resolution → `Location`. Whatever arrives, the edge must not panic, and
//! a redirect's `Location` must be a valid header value on a host the record
//! allows: its own destination's, or a deep link's host on its allow-list.
#![no_main]

use std::sync::OnceLock;

use clickedge::destination::IncomingQuery;
use clickedge::links::{load_str, resolve, LinkMap, Route};
use libfuzzer_sys::fuzz_target;

/// Every kind of record, deep links allowed on some.
const LINKS: &str = r#"
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/summer?utm_source=impact","deeplink_hosts":["www.acme.com","*.acme-shop.com"]}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5680","url":"https://www.acme.com/nofwd?fixed=1","forward_query":false}
{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5681","url":"https://www.acme.com/own#frag","click_id_param":"irclickid"}
{"type":"fallback","host":"acme.sjv.io","url":"https://www.acme.com/home"}
{"type":"vanity","host":"acme.pxf.io","slug":"Janes-Picks","partner_id":"1234","campaign_id":"9012","ad_id":"7001","url":"https://www.acme.com/jane","deeplink_hosts":["*.acme.com","acme.com"]}
{"type":"domain","host":"acmeradio.example","partner_id":"3456","campaign_id":"9020","ad_id":"8001","url":"http://www.acme.com:8080/radio?a=%20b#listen"}
"#;

const HOSTS: [&str; 4] = ["acme.sjv.io", "acme.pxf.io", "acmeradio.example", "ACME.SJV.IO.:443"];

fn map() -> &'static LinkMap {
    static MAP: OnceLock<LinkMap> = OnceLock::new();
    MAP.get_or_init(|| load_str(LINKS, "fuzz", true).expect("the links load").map)
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, target)) = data.split_first() else {
        return;
    };
    // The host: one of the records', or the input's own first line.
    let (host, target) = match choice % 5 {
        4 => match target.iter().position(|&b| b == b'\n') {
            Some(end) => (String::from_utf8_lossy(&target[..end]).into_owned(), &target[end + 1..]),
            None => return,
        },
        n => (HOSTS[n as usize].to_owned(), target),
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let Some(host) = clickedge::host::normalize(&host) else {
        return;
    };
    let Route::Redirect { link, .. } = resolve(map(), &host, uri.path(), 1_700_000_000_000) else {
        return;
    };
    let query = IncomingQuery::parse(uri.query());
    let mut location = String::new();
    let deeplink = link.write_location(&query, "clickid", "01JD0000000000000000000000", &mut location);

    assert!(
        http::HeaderValue::from_str(&location).is_ok(),
        "not a header value: {location:?}"
    );
    let parsed = url::Url::parse(&location).unwrap_or_else(|e| panic!("{location:?}: {e}"));
    assert!(matches!(parsed.scheme(), "http" | "https"), "{location:?}");
    let on_host = parsed.host_str().unwrap_or_else(|| panic!("no host: {location:?}"));
    // A trailing dot names the same host.
    let on_host = on_host.strip_suffix('.').unwrap_or(on_host);
    let own = url::Url::parse(link.destination.as_str()).expect("a record's url parses");
    match deeplink {
        Some("accepted") => {
            assert!(
                link.deeplink_hosts().iter().any(|pattern| pattern.matches(on_host)),
                "deep link to {on_host} accepted: {location:?}"
            );
            assert!(
                on_host.split('.').all(|label| !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
                "deep link to a host that is no host name: {location:?}"
            );
        }
        _ => assert_eq!(on_host, own.host_str().unwrap(), "{location:?}"),
    }
});
