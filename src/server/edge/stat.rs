//! The STAT tag (SPEC §9): `GET /stat.js?partner=ID` on a host whose tracking
//! record says `"stat": true` answers a small script that turns a partner's
//! direct links to the brand (the record's `deeplink_hosts`) into that
//! partner's tracking links, `…/c/{partner}/{ad}/{campaign}?u={the link}`,
//! which the edge then resolves through the record, the original URL being an
//! accepted deep link.

use bytes::Bytes;
use http::{Request, Response};
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
    let etag = super::etag_of(body.as_bytes());
    super::script_response(Bytes::from(body), etag, request)
}
