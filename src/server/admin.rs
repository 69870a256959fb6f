//! The admin listener: `/metrics`, `/healthz`, `/readyz`.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::edge::text;
use super::AppState;

pub fn handle<B>(state: &AppState, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        // Alive: the process answers. Says nothing about Kafka or links.
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(state),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Ready once the link map is loaded (it is, before the listener exists) and the
/// event path is writable (the spool has room, or the broker is up); not ready while
/// draining.
fn readiness(state: &AppState) -> Response<Full<Bytes>> {
    if state.draining.load(Ordering::SeqCst) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        );
    }
    if !state.sink.is_writable() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: spool full and Kafka topic not reachable\n",
        );
    }
    text(StatusCode::OK, "ready\n")
}
