//! Integration tests of Portcullis: the real binary, real upstream servers, a real client,
//! all on 127.0.0.1. Each test starts its own processes on its own ports, so they run
//! concurrently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
mod auth;
mod cli;
mod connections;
mod hygiene;
mod lifecycle;
mod ratelimit;
mod reload;
mod routing;
mod tls;
mod upstreams;
