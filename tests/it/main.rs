//! One integration-test binary: real servers on 127.0.0.1:0, real sockets, events
//! read back from Kafka (librdkafka's mock cluster, and a tansu broker process).

mod actions;
mod browser;
mod cli;
mod client_ip;
mod delivery;
mod deploy;
mod events;
mod fleet;
mod hostile;
mod limits;
mod links;
mod mobile;
mod ops;
mod properties;
mod redirect;
mod rules;
mod support;
mod tansu;
mod tls;
