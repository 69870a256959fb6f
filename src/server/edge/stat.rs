//! The STAT tag (SPEC §9): `GET /stat.js?partner=ID` on a host whose tracking
//! record says `"stat": true` answers a small script that turns a partner's
//! direct links to the brand (the record's `deeplink_hosts`) into that
//! partner's tracking links, `…/c/{partner}/{ad}/{campaign}?u={the link}`,
//! which the edge then resolves through the record, the original URL being an
//! accepted deep link.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;

use crate::links::Link;

const SOURCE: &str = include_str!("stat.js");

/// The script for `partner_id`'s links through `link`, or `304` when the
/// request already holds this version.
pub fn response<B>(link: &Link, partner_id: &str, request: &Request<B>) -> Response<Full<Bytes>> {
    let (campaign_id, ad_id) = link.campaign_and_ad();
    let patterns: Vec<&str> = link
        .deeplink_hosts()
        .map_or(Vec::new(), |hosts| hosts.as_str().split(' ').collect());
    let json = |value: &str| serde_json::to_string(value).expect("a string serializes");
    let body = SOURCE
        .replace("\"__HOST__\"", &json(&link.host))
        .replace(
            "\"__PATH__\"",
            &json(&format!("/c/{partner_id}/{ad_id}/{campaign_id}?u=")),
        )
        .replace(
            "__PATTERNS__",
            &serde_json::to_string(&patterns).expect("strings serialize"),
        );
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let etag: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let etag = HeaderValue::from_str(&format!("\"{etag}\"")).expect("hex is a header value");
    let unchanged = request
        .headers()
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut response = if unchanged {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Full::new(Bytes::from(body)))
    };
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(ETAG, etag);
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
