//! The edge's request path, in named phases: **parse** the request into
//! [`decide::Facts`] → **decide** the [`decide::Answer`] (pure: the map
//! snapshot, the ids; no I/O) → **render** the response → **emit** the click
//! event to the sink → **count** it in the metrics. Labels and the event are
//! derived from the answer, never the other way round.
//!
//! Synchronous on purpose: nothing here waits. The map is a lock-free snapshot, the
//! event goes into the worker's own batch, and no I/O happens.

pub mod decide;

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    ACCEPT_LANGUAGE, ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, REFERER, SET_COOKIE, USER_AGENT,
};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use time::OffsetDateTime;

use self::decide::{decide, Answer, ClickAnswer, Facts, Settings, VisitorFact, Way};
use super::client_ip::Client;
use super::request::{
    asks_not_to_be_tracked, header_text, request_host, visitor_cookie, visitor_set_cookie,
};
use super::{interstitial, AppState};
use crate::click_id::ClickId;
use crate::event::ClickEvent;
use crate::links::LinkKind;

const ROBOTS_TXT: &str = "User-agent: *\nDisallow: /";
/// A `HeaderName` made once: from a `&str`, every insert allocated and parsed it.
const X_ROBOTS_TAG: http::HeaderName = http::HeaderName::from_static("x-robots-tag");

type Body = Full<Bytes>;

/// Answers one edge request and counts it.
/// `secure`: the request came over TLS (cookie `Secure`, event `scheme: "https"`,
/// unless a trusted proxy's `X-Forwarded-Proto` says otherwise).
pub fn handle<B>(
    state: &AppState,
    request: &Request<B>,
    peer: SocketAddr,
    secure: bool,
) -> Response<Body> {
    let started = Instant::now();
    let facts = parse(state, request);
    let map = state.links.load();
    let now = facts.now;
    let answer = decide(
        &facts,
        &map,
        Settings {
            click_id_param: &state.click_id_param,
        },
        &state.classifier,
        || ClickId::generate(now),
    );
    let response = match &answer {
        Answer::Click(click) => {
            // The client's address and scheme, behind trusted proxies: only a
            // click needs them (the cookie's `Secure`, the event).
            let client = super::client_ip::client(
                peer.ip(),
                secure,
                request.headers(),
                &state.trusted_proxies,
                state.client_ip_header,
            );
            let response = render_click(click, &client);
            if click.recorded {
                emit(state, request, &facts, click, &client);
            }
            response
        }
        other => render(other),
    };
    let (kind, outcome) = answer.labels();
    state.metrics.request(
        kind,
        outcome,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// What the decision needs from the request.
fn parse<'r, B>(state: &AppState, request: &'r Request<B>) -> Facts<'r> {
    let visitor = if !state.visitor_cookie || asks_not_to_be_tracked(request) {
        VisitorFact::NotTracked
    } else {
        visitor_cookie(request).map_or(VisitorFact::Unknown, VisitorFact::Known)
    };
    Facts {
        method: request.method(),
        host: request_host(request),
        path: request.uri().path(),
        query: request.uri().query(),
        user_agent: header_text(request, &USER_AGENT),
        visitor,
        now: SystemTime::now(),
    }
}

/// The response to anything but a click.
fn render(answer: &Answer<'_, '_>) -> Response<Body> {
    match answer {
        Answer::MethodNotAllowed => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        Answer::NoHost => text(StatusCode::BAD_REQUEST, "bad request: no Host\n"),
        Answer::Robots => text(StatusCode::OK, ROBOTS_TXT),
        Answer::AppSite(body) => {
            let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Answer::UnknownHost => text(StatusCode::NOT_FOUND, "unknown host\n"),
        Answer::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
        Answer::Click(_) => unreachable!("clicks are rendered by render_click"),
    }
}

/// A click's response: the redirect, the store or the interstitial page, with
/// the headers every click gets and the new visitor's cookie.
fn render_click(click: &ClickAnswer<'_, '_>, client: &Client) -> Response<Body> {
    let mut response = match click.way {
        Way::Interstitial { app, store } => {
            let site = url::Url::parse(&click.location)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            let page = interstitial::render(&interstitial::Choices {
                site: &site,
                deeplink: app.deeplink.as_deref(),
                store,
                os: click.client.os,
                website: &click.location,
            });
            let mut response = Response::new(Full::new(Bytes::from(page)));
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            headers.insert(
                http::header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(interstitial::content_security_policy()),
            );
            headers.insert(
                http::header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        }
        Way::Store { url } => redirect_to(url, 302),
        Way::Redirect { status } => redirect_to(&click.location, status),
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_ROBOTS_TAG, HeaderValue::from_static("noindex"));
    if let (Some(visitor), true) = (&click.visitor, click.new_visitor) {
        // The cookie's own buffer becomes the header value (no copy).
        if let Ok(cookie) = HeaderValue::from_maybe_shared(Bytes::from(visitor_set_cookie(
            visitor.as_str(),
            client.https,
        ))) {
            headers.insert(SET_COOKIE, cookie);
        }
    }
    response
}

/// The click's event, to the sink.
fn emit<B>(
    state: &AppState,
    request: &Request<B>,
    facts: &Facts<'_>,
    click: &ClickAnswer<'_, '_>,
    client: &Client,
) {
    // The ids' text, checked once (every `as_str` validates the bytes again).
    let click_id = click.click_id.as_str();
    let visitor = click.visitor.as_ref().map(ClickId::as_str);
    let referer = header_text(request, &REFERER);
    let accept_language = header_text(request, &ACCEPT_LANGUAGE);
    let link = click.link;
    let query = &click.query;
    let is_fallback = link.kind == LinkKind::Fallback;
    let event = ClickEvent {
        v: 1,
        click_id,
        ts: OffsetDateTime::from(facts.now),
        kind: link.kind.as_str(),
        outcome: click.event_outcome(),
        host: facts.host.as_deref().unwrap_or_default(),
        path: facts.path,
        partner_id: click.partner_id,
        ad_id: link.ad_id().filter(|_| !is_fallback),
        campaign_id: link.campaign_id().filter(|_| !is_fallback),
        slug: link.slug(),
        location: click.sent_to(),
        status: click.status(),
        shared_id: query.shared_id.as_deref(),
        sub_ids: [
            query.sub_ids[0].as_deref(),
            query.sub_ids[1].as_deref(),
            query.sub_ids[2].as_deref(),
        ],
        deeplink: click.deeplink,
        visitor_id: visitor,
        new_visitor: click.new_visitor,
        ip: client.ip,
        user_agent: facts.user_agent.as_deref(),
        referer: referer.as_deref(),
        accept_language: accept_language.as_deref(),
        device: click.client.device.as_str(),
        os: click.client.os.as_str(),
        bot: click.client.bot,
        scheme: if client.https { "https" } else { "http" },
        node: &state.node_id,
    };
    // One visitor's clicks share a key, so they stay ordered on one partition.
    let key = visitor.unwrap_or(click_id);
    state.sink.submit_with(key, |buf| event.write_json(buf));
}

/// A redirect with an empty body; `location` is visible ASCII (request targets and
/// parsed URLs are), else the edge falls back to `/` rather than fail.
fn redirect_to(location: &str, status: u16) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(status).expect("302 and 307 are statuses");
    response.headers_mut().insert(
        LOCATION,
        HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/")),
    );
    response
}

/// A short plain-text answer (also used by the admin listener).
pub(super) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
