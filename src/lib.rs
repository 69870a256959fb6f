//! clickedge: a click-redirect edge proxy.
//!
//! A request is resolved against an in-memory link map ([`links`]), answered with a
//! redirect whose `Location` is built by [`destination`], and produces one click event
//! ([`event`]) that goes to Kafka through a [`sink`] without the request ever waiting
//! for it. [`server`] ties these together; `main.rs` is a thin shell around
//! [`Config`] and [`Server`].
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod background;
pub mod click_id;
pub mod config;
pub mod consume;
pub mod destination;
pub mod event;
pub mod links;
pub mod metrics;
pub mod server;
pub mod signal;
pub mod sink;
pub mod tls;
pub mod useragent;

pub use config::{Config, ConfigError};
pub use server::Server;

/// Starts a server for `config` and runs it until `shutdown` completes, then drains.
///
/// This is the three-line way to run the edge; use [`Server::bind`] directly to learn
/// the bound addresses first (as the tests do with `127.0.0.1:0`).
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    Server::bind(config).await?.run(shutdown).await
}
