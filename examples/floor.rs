//! The stack's floor for `loadtest/compare.sh`: hyper on tokio answering every
//! request with the same 302, nothing else. What clickedge does beyond it is the
//! price of its features.
//!
//! cargo run --release --example floor -- 127.0.0.1:18780

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18780".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_request| async {
                let mut response = hyper::Response::new(Full::new(Bytes::new()));
                *response.status_mut() = hyper::StatusCode::FOUND;
                response.headers_mut().insert(
                    hyper::header::LOCATION,
                    hyper::header::HeaderValue::from_static(
                        "https://www.acme.com/landing?utm_source=impact",
                    ),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
