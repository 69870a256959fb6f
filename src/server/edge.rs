//! The edge's request path: request → resolve → response + click event → sink.
//!
//! Synchronous on purpose: nothing here waits. The map is a lock-free snapshot, the
//! event is handed to the producer's bounded queue, and no I/O happens.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCEPT_LANGUAGE, ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, REFERER, SET_COOKIE, USER_AGENT,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use time::OffsetDateTime;

use super::request::{
    asks_not_to_be_tracked, header_text, request_host, visitor_cookie, visitor_set_cookie,
};
use super::{interstitial, AppState};
use crate::click_id::ClickId;
use crate::destination::IncomingQuery;
use crate::event::ClickEvent;
use crate::links::{resolve, AppSiteFile, Link, LinkKind, Route};
use crate::metrics::{Outcome, RequestType};
use crate::useragent::{Client, Os};

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
    let (response, kind, outcome) = answer(state, request, peer, secure);
    state.metrics.request(
        kind,
        outcome,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

fn answer<B>(
    state: &AppState,
    request: &Request<B>,
    peer: SocketAddr,
    secure: bool,
) -> (Response<Body>, RequestType, Outcome) {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return (response, RequestType::None, Outcome::MethodNotAllowed);
    }
    let Some(host) = request_host(request) else {
        return (
            text(StatusCode::BAD_REQUEST, "bad request: no Host\n"),
            RequestType::None,
            Outcome::BadRequest,
        );
    };
    let path = request.uri().path();
    let now = SystemTime::now();
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let map = state.links.load();

    match resolve(&map, &host, path, now_ms) {
        Route::Robots => (
            text(StatusCode::OK, ROBOTS_TXT),
            RequestType::None,
            Outcome::Robots,
        ),
        Route::AppSite(site, file) => {
            let body = match file {
                AppSiteFile::AppleAppSiteAssociation => site.apple_app_site_association.as_deref(),
                AppSiteFile::AssetLinks => site.assetlinks.as_deref(),
            };
            let mut response = Response::new(Full::new(Bytes::copy_from_slice(
                body.unwrap_or_default().as_bytes(),
            )));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            (response, RequestType::AppSite, Outcome::AppSite)
        }
        Route::UnknownHost => (
            text(StatusCode::NOT_FOUND, "unknown host\n"),
            RequestType::None,
            Outcome::UnknownHost,
        ),
        Route::NotFound => (
            text(StatusCode::NOT_FOUND, "not found\n"),
            RequestType::None,
            Outcome::NotFound,
        ),
        Route::Redirect { link, partner_id } => {
            let click = Click {
                state,
                request,
                client: super::client_ip::client(
                    peer.ip(),
                    secure,
                    request.headers(),
                    &state.trusted_proxies,
                    state.client_ip_header,
                ),
                host: &host,
                path,
                now,
                link,
                partner_id,
            };
            let (response, outcome) = click.redirect();
            (response, request_type(link.kind), outcome)
        }
    }
}

/// One tracked request that resolved to a record.
struct Click<'a, B> {
    state: &'a AppState,
    request: &'a Request<B>,
    /// The client's address and scheme, behind trusted proxies.
    client: super::client_ip::Client,
    host: &'a str,
    path: &'a str,
    now: SystemTime,
    link: &'a Link,
    partner_id: Option<&'a str>,
}

impl<B> Click<'_, B> {
    /// Answers the click (a redirect, or for a mobile visitor of a record with an
    /// app, the interstitial or the store), and emits its event. Returns the
    /// response and its outcome.
    fn redirect(&self) -> (Response<Body>, Outcome) {
        let Click {
            state,
            request,
            link,
            ..
        } = *self;
        let click_id = ClickId::generate(self.now);
        // The ids' text, checked once (every `as_str` validates the bytes again).
        let click_id = click_id.as_str();
        let query = IncomingQuery::parse(request.uri().query());
        let user_agent = header_text(request, &USER_AGENT);
        let client = state.classifier.classify(user_agent.as_deref());

        let (visitor, new_visitor) = if state.visitor_cookie && !asks_not_to_be_tracked(request) {
            match visitor_cookie(request) {
                Some(known) => (Some(known), false),
                None => (Some(ClickId::generate(self.now)), true),
            }
        } else {
            (None, false)
        };
        let visitor = visitor.as_ref().map(ClickId::as_str);

        let mut location = String::with_capacity(256);
        let deeplink_outcome =
            link.write_location(&query, &state.click_id_param, click_id, &mut location);

        // A person on a phone, for a record with an app: the app's way instead.
        let app = link
            .app()
            .filter(|_| !client.bot && matches!(client.os, Os::Ios | Os::Android));
        let store = app.and_then(|app| match client.os {
            Os::Ios => app.ios_url.as_deref(),
            _ => app.android_url.as_deref(),
        });
        let (mut response, outcome, event_location, status) = match app {
            Some(app) if app.interstitial => {
                let site = url::Url::parse(&location)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default();
                let page = interstitial::render(&interstitial::Choices {
                    site: &site,
                    deeplink: app.deeplink.as_deref(),
                    store,
                    os: client.os,
                    website: &location,
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
                (response, Outcome::Interstitial, location.as_str(), 200)
            }
            Some(_) if store.is_some() => {
                let store = store.expect("checked");
                (redirect_to(store, 302), Outcome::AppStore, store, 302)
            }
            _ => {
                let status = link.status.code();
                (
                    redirect_to(&location, status),
                    Outcome::Redirect,
                    location.as_str(),
                    status,
                )
            }
        };
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(X_ROBOTS_TAG, HeaderValue::from_static("noindex"));
        if let (Some(visitor), true) = (visitor, new_visitor) {
            // The cookie's own buffer becomes the header value (no copy).
            if let Ok(cookie) = HeaderValue::from_maybe_shared(Bytes::from(visitor_set_cookie(
                visitor,
                self.client.https,
            ))) {
                headers.insert(SET_COOKIE, cookie);
            }
        }

        // HEADs come from link previews with browser agents: no event, or they
        // would count as clicks.
        if request.method() == Method::GET {
            self.emit(Emitted {
                click_id,
                visitor,
                new_visitor,
                query: &query,
                deeplink: deeplink_outcome,
                outcome,
                location: event_location,
                status,
                user_agent: user_agent.as_deref(),
                client,
            });
        }
        (response, outcome)
    }

    fn emit(&self, emitted: Emitted<'_>) {
        let Emitted {
            click_id,
            visitor,
            new_visitor,
            query,
            deeplink,
            outcome,
            location,
            status,
            user_agent,
            client,
        } = emitted;
        let request = self.request;
        let referer = header_text(request, &REFERER);
        let accept_language = header_text(request, &ACCEPT_LANGUAGE);
        let link = self.link;
        let is_fallback = link.kind == LinkKind::Fallback;
        let event = ClickEvent {
            v: 1,
            click_id,
            ts: OffsetDateTime::from(self.now),
            kind: link.kind.as_str(),
            outcome: match outcome {
                Outcome::Interstitial => "interstitial",
                Outcome::AppStore => "app_store",
                _ => "redirect",
            },
            host: self.host,
            path: self.path,
            partner_id: self.partner_id,
            ad_id: link.ad_id().filter(|_| !is_fallback),
            campaign_id: link.campaign_id().filter(|_| !is_fallback),
            slug: link.slug(),
            location,
            status,
            shared_id: query.shared_id.as_deref(),
            sub_ids: [
                query.sub_ids[0].as_deref(),
                query.sub_ids[1].as_deref(),
                query.sub_ids[2].as_deref(),
            ],
            deeplink,
            visitor_id: visitor,
            new_visitor,
            ip: self.client.ip,
            user_agent,
            referer: referer.as_deref(),
            accept_language: accept_language.as_deref(),
            device: client.device.as_str(),
            os: client.os.as_str(),
            bot: client.bot,
            scheme: if self.client.https { "https" } else { "http" },
            node: &self.state.node_id,
        };
        // One visitor's clicks share a key, so they stay ordered on one partition.
        let key = visitor.unwrap_or(click_id);
        self.state
            .sink
            .submit_with(key, |buf| event.write_json(buf));
    }
}

/// What a click's event is made of, besides the request and the record.
struct Emitted<'a> {
    click_id: &'a str,
    visitor: Option<&'a str>,
    new_visitor: bool,
    query: &'a IncomingQuery<'a>,
    deeplink: Option<&'a str>,
    outcome: Outcome,
    location: &'a str,
    status: u16,
    user_agent: Option<&'a str>,
    client: Client,
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

fn request_type(kind: LinkKind) -> RequestType {
    match kind {
        LinkKind::Tracking => RequestType::Tracking,
        LinkKind::Vanity => RequestType::Vanity,
        LinkKind::Domain => RequestType::Domain,
        LinkKind::Fallback => RequestType::Fallback,
    }
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
