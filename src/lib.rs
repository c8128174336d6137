//! Portcullis: an authenticating edge proxy on Pingora.
//!
//! The binary (`src/main.rs`) only parses the command line; everything lives here:
//! [`config`] (the YAML file), [`runtime`] (its compiled form), [`routing`], [`upstream`]
//! (pools, balancing, health), [`connections`] (limits and timeouts per client connection), [`proxy`] (the request path), [`reload`], [`admin`],
//! [`metrics`], [`memory`] (handing freed memory back), [`access_log`], [`server`] (wiring) and [`demo`].

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod carry;
pub mod client_ip;
pub mod config;
pub mod connections;
pub mod cors;
pub mod demo;
pub mod edits;
pub mod generation;
pub mod headers;
pub mod ip_lists;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod revocation;
pub mod routing;
pub mod server;
pub mod session;
pub mod settings;
pub mod status;
pub mod store;
pub mod tls;
pub mod trace;
pub mod upstream;
