//! The admin endpoint, on its own listener: `/metrics`, `/healthz`, `/readyz`, `POST /reload`.
//!
//! It reads the serving config and the metrics registry and can ask for a reload; it never
//! serves client traffic and never shows a secret.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::generation::Generation;
use crate::reload::{ReloadError, Reloader};

/// The admin HTTP app.
pub struct Admin {
    reloader: Arc<Reloader>,
}

impl Admin {
    /// Serve admin requests about `reloader`'s config.
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self { reloader }
    }
}

/// A complete small response (the admin endpoint's and the demo's built-in servers').
pub(crate) fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "no-store".parse() {
        resp.headers_mut().insert(http::header::CACHE_CONTROL, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", body.to_string().into_bytes())
}

/// The readiness report: ready when a config is loaded and every pool has a healthy target.
pub fn readiness(generation: &Generation) -> (bool, serde_json::Value) {
    let mut not_ready = Vec::new();
    let mut pools = serde_json::Map::new();
    for pool in &generation.pools {
        let healthy = pool.healthy_count();
        if healthy == 0 {
            not_ready.push(format!("upstream `{}` has no healthy target", pool.name));
        }
        pools.insert(
            pool.name.clone(),
            json!({ "healthy": healthy, "targets": pool.targets.len() }),
        );
    }
    let mut issuers = serde_json::Map::new();
    for issuer in &generation.auth.issuers {
        let keys = issuer.keys();
        if keys.is_none() {
            not_ready.push(format!("issuer `{}` has no keys yet", issuer.name));
        }
        issuers.insert(
            issuer.name.clone(),
            json!({
                "keys": keys.as_ref().map_or(0, |k| k.len()),
                "stale": issuer.is_stale(),
                "age_seconds": keys.map(|k| k.loaded_at.elapsed().map_or(0, |d| d.as_secs())),
            }),
        );
    }
    let ready = not_ready.is_empty();
    (
        ready,
        json!({
            "ready": ready,
            "generation": generation.number,
            "upstreams": pools,
            "issuers": issuers,
            "not_ready": not_ready,
        }),
    )
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        // Admin requests carry no body worth reading; drain it so keep-alive stays correct.
        let _ = session.drain_request_body().await;
        match (path.as_str(), method) {
            ("/metrics", Method::GET) => respond(StatusCode::OK, "text/plain; version=0.0.4", {
                self.reloader.current().auth.observe();
                crate::metrics::render().into_bytes()
            }),
            ("/healthz", Method::GET) => json_response(StatusCode::OK, json!({"status": "ok"})),
            ("/readyz", Method::GET) => {
                let (ready, body) = readiness(&self.reloader.current());
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_response(status, body)
            }
            ("/reload", Method::POST) => {
                let reloader = Arc::clone(&self.reloader);
                let result = tokio::task::spawn_blocking(move || reloader.reload("admin")).await;
                match result {
                    Ok(Ok(generation)) => json_response(
                        StatusCode::OK,
                        json!({ "reloaded": true, "generation": generation }),
                    ),
                    Ok(Err(ReloadError::Config(e))) => {
                        let issues: Vec<String> =
                            e.issues().iter().map(|i| i.to_string()).collect();
                        let message = if issues.is_empty() {
                            e.to_string()
                        } else {
                            "invalid config".into()
                        };
                        json_response(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            json!({ "reloaded": false, "error": message, "issues": issues }),
                        )
                    }
                    Err(_) => json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({ "reloaded": false, "error": "reload task failed" }),
                    ),
                }
            }
            ("/metrics" | "/healthz" | "/readyz" | "/reload", _) => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed"}),
            ),
            _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        }
    }
}
