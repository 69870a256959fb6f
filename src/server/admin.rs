//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the admin API
//! (SPEC §5): `PUT` and `DELETE /admin/links`, `POST /admin/reload`,
//! `GET /admin/resolve?url=`.
//!
//! Every `/admin/*` call, reads included (`resolve` shows destinations and partner
//! ids), needs `Authorization: Bearer <--admin-token>`: 401 when missing or wrong.
//! Without a token configured, `/admin/*` answers 403. The probes and `/metrics`
//! stay open.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::edge::decide::{decide, Answer, Facts, Settings, VisitorFact};
use super::edge::{bearer_refused, json_response, secret_digest, text};
use super::reload::{reload_links, ReloadError};
use super::AppState;
use crate::click_id::ClickId;
use crate::links::{parse_record, resolve, LineError, RecordError, RecordKey, Route};

/// The largest NDJSON body `PUT`/`DELETE /admin/links` take.
const MAX_BODY: usize = 64 << 20;

type Body = Full<Bytes>;
/// A refusal answered instead of going on (boxed: a response is large).
type Refused = Box<Response<Body>>;

pub async fn handle<B>(state: &Arc<AppState>, request: Request<B>) -> Response<Body>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (path.as_str(), &method) {
        ("/metrics", &Method::GET) => {
            if let Some(current_at) = &state.control.links_topic_current_at_ms {
                let since = match current_at.load(Ordering::Relaxed) {
                    0 => state.control.started_at_ms,
                    at => at,
                };
                let since_ms = (super::reload::unix_millis() - since).max(0);
                state
                    .metrics
                    .links_topic_lag((since_ms as f64 / 1000.0).floor());
            }
            let mut text = state.metrics.render();
            if let Some(certs) = &state.control.certs {
                certs.render_expiry(&mut text);
            }
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        // Alive: the process answers. Says nothing about Kafka or links.
        ("/healthz", &Method::GET) => text(StatusCode::OK, "ok\n"),
        ("/readyz", &Method::GET) => readiness(state),
        ("/metrics" | "/healthz" | "/readyz", _) => not_allowed("GET"),

        ("/admin/links", &Method::PUT | &Method::DELETE) => {
            if let Err(refused) = authorize(state, &request) {
                return *refused;
            }
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(response) => return *response,
            };
            // Building and swapping the next map is a writer's work: off the runtime.
            let writing = state.clone();
            let put = method == Method::PUT;
            let written = tokio::task::spawn_blocking(move || {
                if put {
                    upsert_links(&writing, &body)
                } else {
                    delete_links(&writing, &body)
                }
            })
            .await;
            written.unwrap_or_else(|_| {
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"error": "the links update task panicked"}),
                )
            })
        }
        ("/admin/links", _) => not_allowed("PUT, DELETE"),
        ("/admin/reload", &Method::POST) => {
            if let Err(refused) = authorize(state, &request) {
                return *refused;
            }
            reload(state).await
        }
        ("/admin/reload", _) => not_allowed("POST"),
        ("/admin/resolve", &Method::GET) => {
            if let Err(refused) = authorize(state, &request) {
                return *refused;
            }
            resolve_url(state, request.uri().query(), request.headers())
        }
        ("/admin/resolve", _) => not_allowed("GET"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Ready once the link map is loaded (it is, before the listener exists), the links
/// topic (if any) has been read to its end once, and a new click event would be
/// kept (the journal has room and its disk takes writes; the broker's state does
/// not matter, events wait in the journal); not ready while draining.
fn readiness(state: &AppState) -> Response<Body> {
    if state.control.draining.load(Ordering::SeqCst) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        );
    }
    if !state.control.links_ready.load(Ordering::SeqCst) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: links topic not read to its end yet\n",
        );
    }
    match state.sink.keeps_new_events() {
        Ok(()) => {}
        Err(crate::sink::NotKept::SpoolFull) => return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the spool is full (--spool-max-bytes); new click events would be dropped\n",
        ),
        Err(crate::sink::NotKept::DiskFailing) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the spool's disk refuses writes; new click events are not journaled\n",
            )
        }
    }
    text(StatusCode::OK, "ready\n")
}

fn authorize<B>(state: &AppState, request: &Request<B>) -> Result<(), Refused> {
    let Some(token_digest) = &state.control.admin_token_digest else {
        return Err(Box::new(json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": "the admin API is disabled: start the edge with --admin-token"}),
        )));
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Digests of equal length compared in constant time: neither a prefix nor
    // the token's length shows in the time taken.
    let valid =
        presented.is_some_and(|p| bool::from(token_digest[..].ct_eq(&secret_digest(p)[..])));
    if valid {
        return Ok(());
    }
    Err(Box::new(bearer_refused("missing or wrong bearer token")))
}

async fn read_body<B>(request: Request<B>) -> Result<Bytes, Refused>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => Err(Box::new(json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": format!("cannot read the body (at most {MAX_BODY} bytes): {error}")}),
        ))),
    }
}

/// Parses every non-blank, non-comment line of an NDJSON body with `parse`.
fn parse_lines<T>(
    body: &[u8],
    mut parse: impl FnMut(&str) -> Result<T, RecordError>,
) -> Result<Vec<T>, Refused> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Box::new(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "the body is not UTF-8"}),
        )));
    };
    let mut parsed = Vec::new();
    let mut invalid = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse(line) {
            Ok(item) => parsed.push(item),
            Err(reason) => invalid.push(LineError {
                line: index + 1,
                reason,
            }),
        }
    }
    if !invalid.is_empty() {
        return Err(Box::new(json_response(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": format!("{} invalid line(s); nothing was applied", invalid.len()),
                "invalid": line_errors(&invalid),
            }),
        )));
    }
    if parsed.is_empty() {
        return Err(Box::new(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "the body holds no record"}),
        )));
    }
    Ok(parsed)
}

fn upsert_links(state: &AppState, body: &[u8]) -> Response<Body> {
    let records = match parse_lines(body, parse_record) {
        Ok(records) => records,
        Err(response) => return *response,
    };
    let count = records.len();
    let (map, _) = state
        .links
        .apply(records.into_iter().map(|r| (r.key(), Some(r))).collect());
    state.metrics.links_changed(map.counts());
    tracing::info!(
        message = "Links upserted through the admin API.",
        records = count
    );
    json_response(
        StatusCode::OK,
        &json!({"upserted": count, "records": map.len()}),
    )
}

fn delete_links(state: &AppState, body: &[u8]) -> Response<Body> {
    let keys = match parse_lines(body, RecordKey::from_json) {
        Ok(keys) => keys,
        Err(response) => return *response,
    };
    let count = keys.len();
    let (map, deleted) = state
        .links
        .apply(keys.into_iter().map(|key| (key, None)).collect());
    state.metrics.links_changed(map.counts());
    tracing::info!(
        message = "Links deleted through the admin API.",
        keys = count,
        deleted
    );
    json_response(
        StatusCode::OK,
        &json!({"keys": count, "deleted": deleted, "records": map.len()}),
    )
}

async fn reload(state: &Arc<AppState>) -> Response<Body> {
    let reloading = state.clone();
    let result = tokio::task::spawn_blocking(move || reload_links(&reloading)).await;
    match result {
        Ok(Ok(report)) => json_response(
            StatusCode::OK,
            &json!({
                "result": "success",
                "records": report.records,
                "invalid": line_errors(&report.invalid),
            }),
        ),
        Ok(Err(ReloadError(error))) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "result": "error",
                "error": error.to_string(),
                "invalid": line_errors(error.line_errors()),
                "kept": "the previous links stay in service",
            }),
        ),
        Err(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"result": "error", "error": "the reload task panicked"}),
        ),
    }
}

/// What a URL would resolve to now, without a click: the record, and the
/// `Location` with `{click_id}` where the click id would go.
fn resolve_url(state: &AppState, query: Option<&str>, headers: &http::HeaderMap) -> Response<Body> {
    let target = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(name, _)| name == "url")
        .map(|(_, value)| value.into_owned());
    let Some(target) = target else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "give the URL to resolve as ?url=<url-encoded absolute URL>"}),
        );
    };
    let Ok(url) = url::Url::parse(&target) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": format!("{target:?} is not an absolute URL")}),
        );
    };
    let Some(host) = url.host_str().and_then(crate::host::normalize) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": format!("{target:?} has no host")}),
        );
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let map = state.links.load();
    let path = url.path();
    let mut answer = json!({"url": target, "host": &*host, "path": path});
    let fields = answer.as_object_mut().expect("an object");
    match resolve(&map, &host, path, now_ms) {
        Route::Redirect { link, .. } => {
            // What a click would get: the edge's own decision, with the
            // request's parts the admin gives (`user_agent`, `accept_language`,
            // `ip` for the country, `visitor` for a split's stickiness), each a
            // parameter, else the admin request's own header of that name
            // (`ip`: the first address of `X-Forwarded-For`).
            let param = |name: &str, header: &str| {
                form_urlencoded::parse(query.unwrap_or("").as_bytes())
                    .find(|(n, _)| n == name)
                    .map(|(_, value)| value.into_owned())
                    .or_else(|| {
                        let value = headers.get(header)?.to_str().ok()?;
                        let value = match header {
                            "x-forwarded-for" => value.split(',').next()?.trim(),
                            _ => value,
                        };
                        Some(value.to_owned())
                    })
            };
            let user_agent = param("user_agent", "user-agent");
            let accept_language = param("accept_language", "accept-language");
            let ip =
                param("ip", "x-forwarded-for").and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
            let country = ip.and_then(|ip| state.edge.geoip.load().as_ref()?.country(ip));
            let visitor = param("visitor", "x-clickedge-visitor")
                .and_then(|v| ClickId::parse(&v))
                .map_or(VisitorFact::NotTracked, VisitorFact::Known);
            let facts = Facts {
                method: &Method::GET,
                host: Some(std::borrow::Cow::Borrowed(&*host)),
                path,
                query: url.query(),
                user_agent: user_agent.as_deref().map(std::borrow::Cow::Borrowed),
                accept_language: accept_language.as_deref().map(std::borrow::Cow::Borrowed),
                country,
                visitor,
                // The instant `resolve` above used: the same record in service.
                now: UNIX_EPOCH + std::time::Duration::from_millis(now_ms.max(0) as u64),
            };
            let settings = Settings {
                click_id_param: &state.edge.click_id_param,
            };
            let now = facts.now;
            let Answer::Click(click) =
                decide(&facts, &map, settings, &state.edge.classifier, || {
                    ClickId::generate(now)
                })
            else {
                unreachable!("a redirect route is a click");
            };
            let location = click
                .sent_to()
                .replace(click.click_id.as_str(), "{click_id}");
            let record = crate::links::Record::Link(link.clone());
            fields.insert("result".into(), json!(click.event_outcome()));
            fields.insert("type".into(), json!(link.kind.as_str()));
            fields.insert("key".into(), json!(record.key().to_string()));
            fields.insert("status".into(), json!(click.status()));
            fields.insert("location".into(), json!(location));
            fields.insert("partner_id".into(), json!(click.partner_id));
            fields.insert("campaign_id".into(), json!(link.campaign_id()));
            fields.insert("ad_id".into(), json!(link.ad_id()));
            fields.insert("deeplink".into(), json!(click.deeplink));
            fields.insert("rule".into(), json!(click.rule));
            fields.insert("variant".into(), json!(click.variant));
            fields.insert("test".into(), json!(click.test));
            fields.insert(
                "country".into(),
                json!(country.and_then(|c| String::from_utf8(c.to_vec()).ok())),
            );
            fields.insert("device".into(), json!(click.client.device.as_str()));
            fields.insert("os".into(), json!(click.client.os.as_str()));
        }
        Route::Stat(link) => {
            let record = crate::links::Record::Link(link.clone());
            fields.insert("result".into(), json!("stat_script"));
            fields.insert("key".into(), json!(record.key().to_string()));
            fields.insert("status".into(), json!(200));
        }
        Route::AppSite(site, _) => {
            fields.insert("result".into(), json!("app_site"));
            fields.insert("type".into(), json!("app_site"));
            fields.insert("key".into(), json!(format!("app_site|{}", site.host)));
            fields.insert("status".into(), json!(200));
        }
        Route::Robots => {
            fields.insert("result".into(), json!("robots"));
            fields.insert("status".into(), json!(200));
        }
        Route::NotFound => {
            fields.insert("result".into(), json!("not_found"));
            fields.insert("status".into(), json!(404));
        }
        Route::UnknownHost => {
            fields.insert("result".into(), json!("unknown_host"));
            fields.insert("status".into(), json!(404));
        }
    }
    json_response(StatusCode::OK, &answer)
}

fn line_errors(errors: &[LineError]) -> Value {
    errors
        .iter()
        .map(|e| json!({"line": e.line, "reason": e.reason.0}))
        .collect()
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
