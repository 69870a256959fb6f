//! The action endpoints (SPEC §8), served on a brand's own tracking hosts only:
//! `POST /v1/actions` (server to server, with a key), `/v1/px` (pixel and
//! beacon, no key) and `/v1/tag.js` (the first-party tag). Each checked action
//! becomes one `action.v1` event, through the same journal as clicks.
//!
//! Unlike a click, these read a request body: only here does the edge collect
//! one, bounded, so the click path stays body-free and synchronous.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE,
    ORIGIN, RETRY_AFTER, USER_AGENT, VARY,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::json;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tracing::debug;

use super::super::client_ip::{self, Client};
use super::super::request::{header_text, request_host};
use super::super::AppState;
use super::{bearer_refused, etag_of, json_response, script_response, secret_digest};
use crate::action::event::{ActionEvent, Receipt};
use crate::action::query::from_query;
use crate::action::{parse_action, Action, ActionError, Context};
use crate::click_id::ClickId;
use crate::links::Brand;
use crate::metrics::{ActionChannel, ActionResult, Outcome, RequestType};
use crate::sink::Topic;

type Body = Full<Bytes>;

/// `POST /v1/actions`: at most this many bytes and actions per request.
pub const MAX_BODY: usize = 1 << 20;
pub const MAX_ACTIONS: usize = 1000;
/// What an `action.v1` event adds to its report's bytes, about (ids, times,
/// field names, the request's host, address and User-Agent, the frame).
const EVENT_ENVELOPE_BYTES: usize = 768;
/// A beacon carries one action; browsers cap them at 64 KiB.
const MAX_BEACON_BODY: usize = 64 << 10;

/// A 1×1 transparent GIF: the pixel's answer.
const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The tag's source; `"__CLICK_ID_PARAM__"` becomes `--click-id-param`.
const TAG_SOURCE: &str = include_str!("tag.js");

/// Which action endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Actions,
    Pixel,
    Tag,
}

/// The action endpoint `request` is for, with its host's brand; `None` for
/// anything else (a click). Cheap for clicks: a path prefix compare.
pub fn route<B>(state: &AppState, request: &Request<B>) -> Option<(Route, Arc<Brand>)> {
    let route = match request.uri().path().strip_prefix("/v1/")? {
        "actions" => Route::Actions,
        "px" => Route::Pixel,
        "tag.js" => Route::Tag,
        _ => return None,
    };
    let host = request_host(request)?;
    let brand = state.links.load().brand_for_host(&host)?.clone();
    Some((route, brand))
}

/// Answers one request to an action endpoint and counts it.
pub async fn handle<B>(
    state: &AppState,
    route: Route,
    brand: Arc<Brand>,
    request: Request<B>,
    peer: std::net::SocketAddr,
    secure: bool,
) -> Response<Body>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let client = client_ip::client(
        peer.ip(),
        secure,
        request.headers(),
        &state.connection.trusted_proxies,
        state.connection.client_ip_header,
    );
    let (response, outcome) = match route {
        Route::Actions => (api(state, &brand, request, &client).await, Outcome::Actions),
        Route::Pixel => (pixel(state, &brand, request, &client).await, Outcome::Pixel),
        Route::Tag => (tag(state, &request), Outcome::Tag),
    };
    state
        .metrics
        .answered(RequestType::Brand, outcome, response.status().as_u16());
    response
}

/// What an accepted report's events share, from the request.
struct Reporter<'r> {
    host: String,
    client: &'r Client,
    user_agent: Option<String>,
}

impl<'r> Reporter<'r> {
    fn of<B>(request: &Request<B>, client: &'r Client) -> Reporter<'r> {
        Reporter {
            host: request_host(request).unwrap_or_default().into_owned(),
            client,
            user_agent: header_text(request, &USER_AGENT).map(|ua| ua.into_owned()),
        }
    }
}

/// `POST /v1/actions`.
async fn api<B>(
    state: &AppState,
    brand: &Brand,
    request: Request<B>,
    client: &Client,
) -> Response<Body>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if request.method() != Method::POST {
        return not_allowed("POST");
    }
    let count = |result, n| state.metrics.actions(ActionChannel::Api, result, n);
    let Some(test_key) = key_kind(brand, &request) else {
        count(ActionResult::Unauthorized, 1);
        return bearer_refused(
            "missing or wrong key: send Authorization: Bearer <one of the brand's action keys>",
        );
    };
    // Refuse what could not be kept before reading it: the reporter retries.
    if let Err(why) = state.sink.keeps_new_events() {
        return unavailable(&format!("the journal cannot keep events ({why:?})"));
    }
    let reporter = Reporter::of(&request, client);
    let body = match read_body(request, MAX_BODY).await {
        Ok(body) => body,
        Err(refused) => {
            count(ActionResult::Rejected, 1);
            return refused;
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        count(ActionResult::Rejected, 1);
        return bad_request("the body is not UTF-8", &[]);
    };
    let reports = reports(text);
    if reports.len() > MAX_ACTIONS {
        count(ActionResult::Rejected, reports.len() as u64);
        return json_answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": format!("{} actions: at most {MAX_ACTIONS} per request", reports.len())}),
        );
    }
    if reports.is_empty() {
        count(ActionResult::Rejected, 1);
        return bad_request("no action in the body (one JSON object, or NDJSON)", &[]);
    }
    let now = SystemTime::now();
    let checked: Vec<(usize, Result<Action, ActionError>)> = {
        let map = state.links.load();
        with_context(brand, &map, now, |context| {
            reports
                .iter()
                .map(|(line, text)| (*line, parse_action(text, context)))
                .collect()
        })
    };
    let errors: Vec<(usize, &ActionError)> = checked
        .iter()
        .filter_map(|(line, result)| result.as_ref().err().map(|error| (*line, error)))
        .collect();
    if !errors.is_empty() {
        // All or nothing: a brand resends the whole request once fixed.
        count(ActionResult::Rejected, checked.len() as u64);
        return bad_request(
            &format!(
                "{} of {} actions invalid; none was recorded",
                errors.len(),
                checked.len()
            ),
            &errors,
        );
    }
    // Room for the whole request, or none of it: an event takes about its
    // report's bytes and the envelope's.
    let needed: usize = reports
        .iter()
        .map(|(_, text)| text.len() + EVENT_ENVELOPE_BYTES)
        .sum();
    if !state.sink.has_room_for(needed as u64) {
        return unavailable("the spool has no room for these actions");
    }
    let receipt = Receipt {
        received_at: OffsetDateTime::from(now),
        brand_id: &brand.brand_id,
        channel: ActionChannel::Api,
        verified: true,
        test_key,
        host: &reporter.host,
        ip: reporter.client.ip,
        user_agent: reporter.user_agent.as_deref(),
        node: &state.edge.node_id,
    };
    let accepted: Vec<serde_json::Value> = checked
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok())
        .map(|action| json!({"action_id": record(state, action, &receipt, now).as_str()}))
        .collect();
    count(ActionResult::Accepted, accepted.len() as u64);
    json_answer(StatusCode::ACCEPTED, &json!({ "accepted": accepted }))
}

/// `/v1/px`: GET with the query form (a pixel), POST with a JSON body (a
/// beacon; the tag's). Always answers (GIF or 204) unless a browser posts from
/// an origin the brand did not list.
async fn pixel<B>(
    state: &AppState,
    brand: &Brand,
    request: Request<B>,
    client: &Client,
) -> Response<Body>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let method = request.method().clone();
    let origin = header_text(&request, &ORIGIN).map(|o| o.into_owned());
    let allowed = origin
        .as_deref()
        .is_some_and(|origin| brand.origins.iter().any(|o| **o == *origin));
    if method == Method::OPTIONS {
        return preflight(origin.as_deref().filter(|_| allowed));
    }
    if !matches!(method, Method::GET | Method::HEAD | Method::POST) {
        return not_allowed("GET, HEAD, POST, OPTIONS");
    }
    let query = request.uri().query().unwrap_or_default().to_owned();
    // What a refusal is counted as; a valid query form says the same.
    let channel = channel_of_query(&query);
    if method == Method::POST && origin.is_some() && !allowed {
        // A page of another site: no grant, no event.
        state
            .metrics
            .actions(channel, ActionResult::Unauthorized, 1);
        return json_answer(
            StatusCode::FORBIDDEN,
            &json!({"error": "this origin is not one of the brand's origins"}),
        );
    }
    let reporter = Reporter::of(&request, client);
    let report = if method == Method::POST {
        match read_body(request, MAX_BEACON_BODY).await {
            Ok(body) => match std::str::from_utf8(&body) {
                Ok(text) => Ok((text.trim().to_owned(), channel)),
                Err(_) => Err((channel, "the body is not UTF-8".to_owned())),
            },
            Err(_) => Err((
                channel,
                "the body could not be read or is too large".to_owned(),
            )),
        }
    } else {
        from_query(&query)
            .map(|form| {
                let channel = if form.from_tag {
                    ActionChannel::Tag
                } else {
                    ActionChannel::Pixel
                };
                (form.json, channel)
            })
            .map_err(|error| (channel, error.to_string()))
    };
    // A HEAD asks what the pixel is, it reports nothing.
    if method != Method::HEAD {
        let now = SystemTime::now();
        let checked = report.and_then(|(text, channel)| {
            let map = state.links.load();
            with_context(brand, &map, now, |context| parse_action(&text, context))
                .map(|action| (action, channel))
                .map_err(|error| (channel, error.to_string()))
        });
        match checked {
            Ok((action, channel)) => {
                let receipt = Receipt {
                    received_at: OffsetDateTime::from(now),
                    brand_id: &brand.brand_id,
                    channel,
                    verified: false,
                    test_key: false,
                    host: &reporter.host,
                    ip: reporter.client.ip,
                    user_agent: reporter.user_agent.as_deref(),
                    node: &state.edge.node_id,
                };
                record(state, &action, &receipt, now);
                state.metrics.actions(channel, ActionResult::Accepted, 1);
            }
            Err((channel, reason)) => {
                debug!(message = "Pixel report refused.", brand = %brand.brand_id, reason);
                state.metrics.actions(channel, ActionResult::Rejected, 1);
            }
        }
    }
    let mut response = if method == Method::POST {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
    } else {
        let mut response = Response::new(Full::new(Bytes::from_static(&PIXEL_GIF)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
        response
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(origin) = origin.filter(|_| allowed) {
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
    }
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    response
}

/// The channel a pixel request names (`channel=tag`), for counting.
fn channel_of_query(query: &str) -> ActionChannel {
    let tag = form_urlencoded::parse(query.as_bytes())
        .any(|(name, value)| name == "channel" && value == "tag");
    if tag {
        ActionChannel::Tag
    } else {
        ActionChannel::Pixel
    }
}

/// A CORS preflight (a page's `fetch` with a JSON content type): granted to the
/// brand's origins only.
fn preflight(allowed_origin: Option<&str>) -> Response<Body> {
    let Some(origin) = allowed_origin.and_then(|o| HeaderValue::from_str(o).ok()) else {
        return json_answer(
            StatusCode::FORBIDDEN,
            &json!({"error": "this origin is not one of the brand's origins"}),
        );
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    response
}

/// The tag's bytes and their ETag, made once at start (they depend only on
/// `--click-id-param`).
#[derive(Debug)]
pub struct TagScript {
    body: Bytes,
    etag: HeaderValue,
}

impl TagScript {
    pub fn new(click_id_param: &str) -> TagScript {
        let param = serde_json::to_string(click_id_param).expect("a string serializes");
        let body = TAG_SOURCE.replace("\"__CLICK_ID_PARAM__\"", &param);
        TagScript {
            etag: etag_of(body.as_bytes()),
            body: Bytes::from(body),
        }
    }
}

/// `GET /v1/tag.js`.
fn tag<B>(state: &AppState, request: &Request<B>) -> Response<Body> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return not_allowed("GET, HEAD");
    }
    let script = &state.edge.tag;
    script_response(script.body.clone(), script.etag.clone(), request)
}

/// Whether the bearer key is one of the brand's test keys (`Some(true)`), one
/// of its action keys (`Some(false)`), or neither. Every digest is compared,
/// in constant time, so the answer's timing tells nothing about the keys.
fn key_kind<B>(brand: &Brand, request: &Request<B>) -> Option<bool> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return None;
    }
    let digest = secret_digest(secret.trim());
    let matches = |keys: &[[u8; 32]]| {
        keys.iter().fold(subtle::Choice::from(0), |found, key| {
            found | key.ct_eq(&digest)
        })
    };
    let (live, test) = (matches(&brand.action_keys), matches(&brand.test_keys));
    if bool::from(test) {
        Some(true)
    } else if bool::from(live) {
        Some(false)
    } else {
        None
    }
}

/// The actions of a body: one JSON object (which may span lines), or NDJSON
/// (blank lines skipped); each with its line number.
fn reports(text: &str) -> Vec<(usize, &str)> {
    let whole = text.trim();
    if whole.is_empty() {
        return Vec::new();
    }
    if serde_json::from_str::<&serde_json::value::RawValue>(whole).is_ok() {
        return vec![(1, whole)];
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i + 1, line.trim()))
        .collect()
}

/// Runs `check` with what checking an action of `brand` needs: the clock, its
/// click window, its promo codes in service.
fn with_context<R>(
    brand: &Brand,
    map: &crate::links::LinkMap,
    now: SystemTime,
    check: impl FnOnce(&Context<'_>) -> R,
) -> R {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let promo_partner = |code: &str| {
        map.promo(&brand.brand_id, code)
            .filter(|promo| promo.is_valid_at(now_ms))
            .map(|promo| promo.partner_id.clone())
    };
    check(&Context {
        now_ms,
        click_window_days: brand.click_window_days,
        promo_partner: &promo_partner,
    })
}

/// One accepted action into the journal; returns its id.
fn record(state: &AppState, action: &Action, receipt: &Receipt<'_>, now: SystemTime) -> ClickId {
    let id = ClickId::generate(now);
    let event = ActionEvent::new(action, &id, receipt);
    let key = event.key();
    state
        .sink
        .submit_with(Topic::Actions, &key, |buf| event.write_json(buf));
    id
}

/// The body, at most `limit` bytes: a declared or actual larger one is 413.
async fn read_body<B>(request: Request<B>, limit: usize) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        json_answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": format!("the body is larger than {limit} bytes")}),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(bad_request(&format!("cannot read the body: {error}"), &[])),
    }
}

fn bad_request(error: &str, errors: &[(usize, &ActionError)]) -> Response<Body> {
    let errors: Vec<serde_json::Value> = errors
        .iter()
        .map(|(line, e)| json!({"line": line, "field": e.field, "reason": e.reason}))
        .collect();
    let mut body = json!({ "error": error });
    if !errors.is_empty() {
        body["errors"] = serde_json::Value::Array(errors);
    }
    json_answer(StatusCode::BAD_REQUEST, &body)
}

/// `503`: nothing of the request was recorded; send it again later.
fn unavailable(why: &str) -> Response<Body> {
    let mut response = json_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": format!("{why}: nothing was recorded; retry later")}),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = json_answer(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": format!("method not allowed (allowed: {allow})")}),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// A JSON answer no cache keeps (it says what happened to one request).
fn json_answer(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = json_response(status, body);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_one_object_or_ndjson_lines_numbered_as_sent() {
        assert_eq!(
            reports("{\n  \"event\": \"lead\"\n}\n"),
            vec![(1, "{\n  \"event\": \"lead\"\n}")]
        );
        assert_eq!(
            reports("{\"event\":\"lead\"}\n\n{\"event\":\"sale\"}\n"),
            vec![(1, "{\"event\":\"lead\"}"), (3, "{\"event\":\"sale\"}")]
        );
        assert!(reports(" \n ").is_empty());
    }

    #[test]
    fn the_pixel_is_a_43_byte_gif() {
        assert_eq!(PIXEL_GIF.len(), 43);
        assert_eq!(&PIXEL_GIF[..6], b"GIF89a");
        assert_eq!(PIXEL_GIF[42], b';');
    }

    #[test]
    fn the_tag_is_small_names_the_param_and_has_no_eval() {
        let script = TagScript::new("clickid");
        assert!(script.body.len() <= 4096, "{} bytes", script.body.len());
        let text = std::str::from_utf8(&script.body).unwrap();
        assert!(text.contains("|| \"clickid\";"));
        assert!(!text.contains("eval(") && !text.contains("new Function"));
    }
}
