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

/// The readiness report. A node is ready when a config is loaded and its listeners are bound
/// (both hold once this endpoint answers: the config is loaded before anything serves, and
/// `run` binds every listener before it starts). Pools and issuers count only when
/// `readiness:` names them: their state is the same on every node, so failing readiness for
/// them would only take every node out of the load balancer at once. `verbose` adds each
/// pool's healthy targets and each issuer's keys, required or not.
pub fn readiness(generation: &Generation, verbose: bool) -> (bool, serde_json::Value) {
    let required = &generation.config.readiness;
    let mut not_ready = Vec::new();
    let mut pools = serde_json::Map::new();
    for pool in &generation.pools {
        let healthy = pool.healthy_count();
        let is_required = required.require_pools.contains(&pool.name);
        if is_required && healthy == 0 {
            not_ready.push(format!("upstream `{}` has no healthy target", pool.name));
        }
        pools.insert(
            pool.name.clone(),
            json!({
                "healthy": healthy,
                "targets": pool.target_count(),
                "required": is_required,
            }),
        );
    }
    let mut issuers = serde_json::Map::new();
    for issuer in &generation.auth.issuers {
        let keys = issuer.keys();
        let is_required = required.require_issuers.contains(&issuer.name);
        if is_required && keys.is_none() {
            not_ready.push(format!("issuer `{}` has no keys yet", issuer.name));
        }
        issuers.insert(
            issuer.name.clone(),
            json!({
                "keys": keys.as_ref().map_or(0, |k| k.len()),
                "stale": issuer.is_stale(),
                "age_seconds": keys.map(|k| k.loaded_at.elapsed().map_or(0, |d| d.as_secs())),
                "required": is_required,
            }),
        );
    }
    let ready = not_ready.is_empty();
    let body = if verbose {
        json!({
            "ready": ready,
            "generation": generation.number,
            "upstreams": pools,
            "issuers": issuers,
            "not_ready": not_ready,
        })
    } else {
        json!({ "ready": ready, "not_ready": not_ready })
    };
    (ready, body)
}

/// Whether a query string asks for `verbose` (`?verbose`, `?verbose=1`, `?verbose=true`).
fn wants_verbose(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|p| matches!(p, "verbose" | "verbose=1" | "verbose=true"))
    })
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let verbose = wants_verbose(session.req_header().uri.query());
        // Admin requests carry no body worth reading; drain it so keep-alive stays correct.
        let _ = session.drain_request_body().await;
        match (path.as_str(), method) {
            ("/metrics", Method::GET) => respond(StatusCode::OK, "text/plain; version=0.0.4", {
                let generation = self.reloader.current();
                generation.auth.observe();
                crate::upstream::observe(&generation.pools);
                crate::metrics::render().into_bytes()
            }),
            ("/healthz", Method::GET) => json_response(StatusCode::OK, json!({"status": "ok"})),
            ("/readyz", Method::GET) => {
                let (ready, body) = readiness(&self.reloader.current(), verbose);
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
