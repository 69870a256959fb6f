//! clickedge: a click-redirect edge proxy.
//!
//! A request is resolved against an in-memory link map ([`links`]), answered with a
//! redirect whose `Location` is built by [`destination`], and produces one click event
//! ([`event`]) that goes to Kafka through a [`sink`] without the request ever waiting
//! for it. Brands report what followed the click ([`action`]) to the same edge, and
//! those events take the same way. `main.rs` is a thin shell around [`Config`] and [`Server`].
//!
//! # Layout
//! In the order a click flows through the modules:
//!
//! - [`config`]: flags → a validated [`Config`] (nothing bound or read yet).
//! - `server`: the listeners, one worker thread and runtime per core, the
//!   connection (admission, PROXY header, timeouts, TLS, HTTP/1.1 and 2), the
//!   drain; `server::edge` the request path in phases: parse → decide (pure) →
//!   render → emit → count.
//! - [`host`]: host names normalized and checked in one place.
//! - [`links`]: records, the map and `resolve`, rules and splits compiled at load;
//!   [`destination`]: the `Location`; [`geoip`]: the client's country.
//! - [`click_id`], [`useragent`], [`event`]: the click's id, device and event.
//! - [`action`]: the conversions side: one reported action checked (JSON or a
//!   pixel's query), and its `action.v1` event; `server::edge::actions` serves
//!   `/v1/actions`, `/v1/px` and `/v1/tag.js` on a brand's hosts.
//! - [`sink`]: each worker's batch → the event pump → the spool (journal) → Kafka,
//!   for clicks and actions alike (each frame names its topic).
//! - `metrics`: every metric, registered once per server.
//! - [`tls`], [`signal`], [`consume`]: certificates, SIGTERM, the `consume` command.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod action;
mod background;
pub mod click_id;
pub mod config;
pub mod consume;
pub mod destination;
pub mod event;
pub mod geoip;
pub mod host;
mod json;
pub mod links;
mod metrics;
mod server;
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
