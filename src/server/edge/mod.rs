//! The edge's request path, in named phases: **parse** the request into
//! [`decide::Facts`] → **decide** the [`decide::Answer`] (pure: the map
//! snapshot, the ids; no I/O) → **render** the response → **emit** the click
//! event to the sink → **count** it in the metrics. Labels and the event are
//! derived from the answer, never the other way round.
//!
//! Synchronous on purpose: nothing here waits. The map is a lock-free snapshot, the
//! event goes into the worker's own batch, and no I/O happens.

pub mod actions;
pub mod decide;
mod stat;

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
use super::{interstitial, AppState, EdgeSettings};
use crate::click_id::ClickId;
use crate::event::ClickEvent;
use crate::links::LinkKind;
use crate::sink::{EventIntake, Topic};

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
    // The client's address and scheme, behind trusted proxies: for the country
    // (rules, the event), the cookie's `Secure` and the event.
    let client = super::client_ip::client(
        peer.ip(),
        secure,
        request.headers(),
        &state.connection.trusted_proxies,
        state.connection.client_ip_header,
    );
    let mut facts = parse(&state.edge, request);
    facts.country = state
        .edge
        .geoip
        .load()
        .as_ref()
        .and_then(|geoip| geoip.country(client.ip));
    let map = state.links.load();
    let now = facts.now;
    let answer = decide(
        &facts,
        &map,
        Settings {
            click_id_param: &state.edge.click_id_param,
        },
        &state.edge.classifier,
        || ClickId::generate(now),
    );
    let response = match &answer {
        Answer::Click(click) => {
            let response = render_click(click, &client);
            if click.recorded {
                emit(&state.edge, &*state.sink, request, &facts, click, &client);
            }
            response
        }
        Answer::StatScript { link, partner_id } => stat::response(link, partner_id, request),
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
fn parse<'r, B>(settings: &EdgeSettings, request: &'r Request<B>) -> Facts<'r> {
    let visitor = if !settings.visitor_cookie || asks_not_to_be_tracked(request) {
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
        accept_language: header_text(request, &ACCEPT_LANGUAGE),
        country: None,
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
        Answer::StatBadPartner => text(
            StatusCode::BAD_REQUEST,
            "bad request: /stat.js needs ?partner= with a partner id (1-64 characters of [A-Za-z0-9_-])\n",
        ),
        Answer::Click(_) | Answer::StatScript { .. } => {
            unreachable!("clicks and the STAT tag are rendered with the request")
        }
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
    settings: &EdgeSettings,
    sink: &dyn EventIntake,
    request: &Request<B>,
    facts: &Facts<'_>,
    click: &ClickAnswer<'_, '_>,
    client: &Client,
) {
    // The ids' text, checked once (every `as_str` validates the bytes again).
    let click_id = click.click_id.as_str();
    let visitor = click.visitor.as_ref().map(ClickId::as_str);
    let referer = header_text(request, &REFERER);
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
        accept_language: facts.accept_language.as_deref(),
        device: click.client.device.as_str(),
        os: click.client.os.as_str(),
        bot: click.client.bot,
        scheme: if client.https { "https" } else { "http" },
        node: &settings.node_id,
        rule: click.rule.map(|i| i as u32),
        variant: click.variant.map(|i| i as u32),
        country: facts
            .country
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok()),
        test: click.test,
    };
    // One visitor's clicks share a key, so they stay ordered on one partition.
    let key = visitor.unwrap_or(click_id);
    sink.submit(Topic::Clicks, key, &mut |buf| event.write_json(buf));
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

/// A JSON answer, one line (the admin listener's and the action endpoints').
pub(super) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec(value).expect("JSON values serialize");
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `401` for a missing or wrong bearer secret, saying which one is wanted.
pub(super) fn bearer_refused(error: &str) -> Response<Body> {
    let mut response = json_response(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": error }),
    );
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer"),
    );
    response
}

/// What a bearer secret is compared as: its SHA-256, so that a comparison (in
/// constant time) takes the same time whatever the length presented, and
/// records hold digests, never secrets.
pub(super) fn secret_digest(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The `ETag` of a script's bytes: the first 8 bytes of their SHA-256, in hex.
pub(super) fn etag_of(body: &[u8]) -> HeaderValue {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a header value")
}

/// A script the edge serves (the action tag, the STAT tag): `304` when the
/// request already holds this version, else the body; browsers keep it five
/// minutes.
pub(super) fn script_response<B>(
    body: Bytes,
    etag: HeaderValue,
    request: &Request<B>,
) -> Response<Body> {
    let unchanged = request
        .headers()
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut response = if unchanged {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(Full::new(body))
    };
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(http::header::ETAG, etag);
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
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

/// The phases after the decision, without sockets or Kafka: the response's
/// headers and the event, field by field, from an in-memory sink (the socket
/// and Kafka tests in `tests/it` keep the wire).
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::links::load_str;
    use crate::useragent::Classifier;

    /// Keeps each event's key and JSON.
    #[derive(Default)]
    struct Kept(Mutex<Vec<(String, serde_json::Value)>>);

    impl EventIntake for Kept {
        fn submit(&self, topic: Topic, key: &str, write: &mut dyn FnMut(&mut Vec<u8>)) {
            assert_eq!(topic, Topic::Clicks, "the click path writes clicks only");
            let mut bytes = Vec::new();
            write(&mut bytes);
            let event = serde_json::from_slice(&bytes).expect("the event is JSON");
            self.0.lock().unwrap().push((key.to_owned(), event));
        }
    }

    const LINKS: &str = r#"{"type":"tracking","host":"acme.sjv.io","campaign_id":"9012","ad_id":"5678","url":"https://www.acme.com/summer?utm_source=impact"}"#;
    const VISITOR: &str = "01HZY8X6Q6A1B2C3D4E5F6G7HA";

    /// The request through every phase; the response and what the sink kept.
    fn click(
        request: Request<()>,
        visitor_cookie: bool,
        secure: bool,
    ) -> (Response<Body>, Vec<(String, serde_json::Value)>) {
        let settings = EdgeSettings {
            classifier: Classifier::new(),
            node_id: "node-7".into(),
            click_id_param: "clickid".into(),
            visitor_cookie,
            tag: actions::TagScript::new("clickid"),
            geoip: arc_swap::ArcSwapOption::empty(),
        };
        let map = load_str(LINKS, "test", true).unwrap().map;
        let facts = parse(&settings, &request);
        let now = facts.now;
        let settings_ref = Settings {
            click_id_param: &settings.click_id_param,
        };
        let answer = decide(&facts, &map, settings_ref, &settings.classifier, || {
            ClickId::generate(now)
        });
        let Answer::Click(answer) = answer else {
            panic!("not a click: {answer:?}")
        };
        let client = Client {
            ip: "203.0.113.9".parse().unwrap(),
            https: secure,
        };
        let response = render_click(&answer, &client);
        let sink = Kept::default();
        if answer.recorded {
            emit(&settings, &sink, &request, &facts, &answer, &client);
        }
        (response, sink.0.into_inner().unwrap())
    }

    #[test]
    fn a_click_is_answered_and_its_event_says_what_happened() {
        let request = Request::get("/c/1234/5678/9012?subId1=a&sharedid=s&color=red")
            .header("host", "Acme.sjv.io:443")
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36")
            .header("referer", "https://partner.example/post")
            .header("accept-language", "de-DE")
            .body(())
            .unwrap();
        let (response, events) = click(request, true, true);
        assert_eq!(response.status(), 302);
        let headers = response.headers();
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(headers[X_ROBOTS_TAG], "noindex");
        let location = headers[LOCATION].to_str().unwrap();
        let cookie = headers[SET_COOKIE].to_str().unwrap();
        assert!(cookie.ends_with("; Secure"), "{cookie}");

        let [(key, event)] = &events[..] else {
            panic!("one event: {events:?}")
        };
        let click_id = event["click_id"].as_str().unwrap();
        let visitor = event["visitor_id"].as_str().unwrap();
        assert_eq!(key, visitor, "keyed by the visitor");
        assert!(
            cookie.starts_with(&format!("ce_vid={visitor};")),
            "{cookie}"
        );
        assert_eq!(
            location,
            format!("https://www.acme.com/summer?utm_source=impact&color=red&clickid={click_id}")
        );
        for (field, want) in [
            ("type", "tracking"),
            ("outcome", "redirect"),
            ("host", "acme.sjv.io"),
            ("path", "/c/1234/5678/9012"),
            ("partner_id", "1234"),
            ("ad_id", "5678"),
            ("campaign_id", "9012"),
            ("location", location),
            ("shared_id", "s"),
            ("ip", "203.0.113.9"),
            ("referer", "https://partner.example/post"),
            ("accept_language", "de-DE"),
            ("device", "desktop"),
            ("scheme", "https"),
            ("node", "node-7"),
        ] {
            assert_eq!(event[field], want, "{field}");
        }
        assert_eq!(event["status"], 302);
        assert_eq!(event["sub_ids"], serde_json::json!(["a", null, null]));
        assert_eq!(event["new_visitor"], true);
        assert_eq!(event["bot"], false);
    }

    #[test]
    fn a_known_visitor_keeps_its_id_and_a_head_records_nothing() {
        let known = Request::get("/c/1/5678/9012")
            .header("host", "acme.sjv.io")
            .header("cookie", format!("other=1; ce_vid={VISITOR}"))
            .body(())
            .unwrap();
        let (response, events) = click(known, true, false);
        assert!(
            response.headers().get(SET_COOKIE).is_none(),
            "not set again"
        );
        assert_eq!(events[0].0, VISITOR);
        assert_eq!(events[0].1["new_visitor"], false);
        assert_eq!(events[0].1["scheme"], "http");

        // Sec-GPC: no cookie read or set; the event is keyed by the click id.
        let private = Request::get("/c/1/5678/9012")
            .header("host", "acme.sjv.io")
            .header("sec-gpc", "1")
            .header("cookie", format!("ce_vid={VISITOR}"))
            .body(())
            .unwrap();
        let (response, events) = click(private, true, false);
        assert!(response.headers().get(SET_COOKIE).is_none());
        assert_eq!(events[0].1["visitor_id"], serde_json::Value::Null);
        assert_eq!(events[0].0, events[0].1["click_id"].as_str().unwrap());

        let head = Request::head("/c/1/5678/9012")
            .header("host", "acme.sjv.io")
            .body(())
            .unwrap();
        let (response, events) = click(head, true, false);
        assert_eq!(response.status(), 302);
        assert!(events.is_empty(), "{events:?}");
    }
}
