//! What both daemons share.
//!
//! service-a and service-b differ in their routes and settings only; the
//! rest of a daemon's life is here, once: reading settings ([`cli`]),
//! decoding `msg` ([`query`]), the JSON error bodies ([`error`]), the server
//! span and duration metric ([`observe`]) and the access line (`access`),
//! the common headers and JSON 404/405 ([`policy`]), OpenTelemetry export
//! ([`telemetry`]), duration histograms ([`durations`]), trace ids and
//! `traceparent` ([`trace_id`]), the listening socket ([`listener`]) and
//! each connection's timeouts ([`connection`]), the systemd protocol
//! ([`notify`]) and watchdog ([`watchdog`]), signals ([`signals`]),
//! `systemctl reload` ([`reload`]) and the lifecycle that ties them
//! together ([`daemon`]).

mod access;
pub mod cli;
pub mod connection;
pub mod daemon;
pub mod durations;
pub mod error;
pub mod health;
pub mod listener;
pub mod logging;
pub mod notify;
pub mod observe;
pub mod policy;
pub mod query;
pub mod reload;
pub mod signals;
pub mod telemetry;
pub mod trace_id;
pub mod watchdog;

pub use daemon::{App, Daemon, StartError, service};
