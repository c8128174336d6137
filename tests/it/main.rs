//! Integration tests of Portcullis: the real binary, real upstream servers, a real client,
//! all on 127.0.0.1 (or, where a test needs a host that is not loopback, in a network
//! namespace it creates: `support::netns`). Each test starts its own processes on its own
//! ports, so they run concurrently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod access_log;
mod admin;
mod auth;
mod body_limits;
mod cache;
mod cli;
mod connections;
mod cors;
mod dashboards;
mod deploy;
mod faults;
mod grpc;
mod hygiene;
mod introspection;
mod ip_lists;
mod key_sets;
mod layers;
mod lifecycle;
mod matching;
mod metrics;
mod oidc_harness;
mod outliers;
mod ratelimit;
mod reload;
mod retries;
mod revoke;
mod route_edits;
mod routing;
mod sessions;
mod status_page;
mod targets;
mod tls;
mod tracing;
mod upstream_tls;
mod upstreams;
