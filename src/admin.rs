//! The admin endpoint, on its own listener: the status page (`/`, `/status.json`),
//! `/metrics`, `/healthz`, `/readyz`, `POST /reload`, `POST /revoke`, `POST /cache/purge`.
//!
//! It reads the serving config and the metrics registry, can ask for a reload and can revoke
//! (through the process's [`Revocations`]); it never serves client traffic and never shows a
//! secret.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::generation::Generation;
use crate::reload::{ReloadError, Reloader};
use crate::revocation::{Kind, Revocation, Revocations};
use crate::status::{page, Status};

/// The admin HTTP app.
pub struct Admin {
    reloader: Arc<Reloader>,
    revocations: Arc<Revocations>,
    /// When the process started serving, for the status page's uptime.
    started: Instant,
}

impl Admin {
    /// Serve admin requests about `reloader`'s config; `POST /revoke` adds to `revocations`.
    pub fn new(reloader: Arc<Reloader>, revocations: Arc<Revocations>) -> Self {
        Self {
            reloader,
            revocations,
            started: Instant::now(),
        }
    }

    /// What the status page and `/status.json` show now.
    fn status(&self) -> Status {
        Status::of(
            &self.reloader.current(),
            self.reloader.history(),
            self.started.elapsed(),
        )
    }
}

/// The status page, with its policy: nothing but its own inline style and script, fetches
/// to this listener, no framing, no sniffing.
fn status_page(status: &Status) -> Response<Vec<u8>> {
    let mut resp = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page::render(status).into_bytes(),
    );
    for (name, value) in [
        ("content-security-policy", page::CSP.as_str()),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// The largest `POST /revoke` body read; a larger one is refused with 413 unread.
pub const MAX_REVOKE_BODY: usize = 4096;

/// What `POST /revoke` accepts: exactly one of the fields, a non-empty string.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    sub: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
}

const REVOKE_SHAPE: &str =
    "the body must be a JSON object with exactly one of `sub`, `sid` or `jti`, a string";

/// The revocation a `POST /revoke` body asks for, or what is wrong with it (a fixed text that
/// never echoes the body).
fn parse_revocation(body: &[u8]) -> Result<Revocation, String> {
    let body: RevokeBody = serde_json::from_slice(body).map_err(|_| REVOKE_SHAPE.to_string())?;
    let given: Vec<(Kind, String)> = [
        (Kind::Sub, body.sub),
        (Kind::Sid, body.sid),
        (Kind::Jti, body.jti),
    ]
    .into_iter()
    .filter_map(|(kind, value)| value.map(|v| (kind, v)))
    .collect();
    let [(kind, value)] =
        <[(Kind, String); 1]>::try_from(given).map_err(|_| REVOKE_SHAPE.to_string())?;
    let revocation = Revocation::new(kind, value);
    revocation
        .check()
        .map_err(|e| format!("`{}`: {e}", kind.label()))?;
    Ok(revocation)
}

/// Read a request body of at most `max` bytes; `Err` with the status and reason to answer
/// when it is larger or cannot be read (each endpoint words its own answer).
async fn read_body(
    session: &mut ServerSession,
    max: usize,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes"),
        )
    };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        // The body stays unread: the connection cannot be reused.
        session.set_keepalive(None);
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) if body.len() + chunk.len() > max => {
                session.set_keepalive(None);
                return Err(too_large());
            }
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return Ok(body),
            Err(_) => {
                session.set_keepalive(None);
                return Err((
                    StatusCode::BAD_REQUEST,
                    "the body could not be read".to_string(),
                ));
            }
        }
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

impl Admin {
    /// `POST /revoke`: applied on this node before the answer, shared with the fleet by the
    /// revocation sync service.
    async fn revoke(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = match read_body(session, MAX_REVOKE_BODY).await {
            Ok(body) => body,
            Err((status, error)) => {
                return json_response(status, json!({ "revoked": false, "error": error }))
            }
        };
        let revocation = match parse_revocation(&body) {
            Ok(r) => r,
            Err(error) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "revoked": false, "error": error }),
                )
            }
        };
        let kind = revocation.kind();
        match self.revocations.revoke(revocation) {
            Ok(at) => json_response(
                StatusCode::OK,
                json!({ "revoked": true, "kind": kind.label(), "revoked_at": at }),
            ),
            Err(e) => json_response(
                StatusCode::BAD_REQUEST,
                json!({ "revoked": false, "error": format!("`{}`: {e}", kind.label()) }),
            ),
        }
    }
}

/// What `POST /cache/purge` accepts: exactly one of `url` (that URL's stored responses, every
/// `Vary` variant) or `prefix` (every stored URL starting with it), each `http://` or
/// `https://`, host and path (and query); the scheme and a port do not count.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    url: Option<String>,
    prefix: Option<String>,
}

const PURGE_SHAPE: &str = "the body must be a JSON object with exactly one of `url` or `prefix`, \
                           an `http://` or `https://` URL";

impl Admin {
    /// `POST /cache/purge`: removes the named objects from every cache route of this node.
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = match read_body(session, MAX_REVOKE_BODY).await {
            Ok(body) => body,
            Err((status, error)) => return json_response(status, json!({ "error": error })),
        };
        let refused = || json_response(StatusCode::BAD_REQUEST, json!({ "error": PURGE_SHAPE }));
        let Ok(body) = serde_json::from_slice::<PurgeBody>(&body) else {
            return refused();
        };
        let (url, prefix) = match (&body.url, &body.prefix) {
            (Some(url), None) => (url.as_str(), false),
            (None, Some(prefix)) => (prefix.as_str(), true),
            _ => return refused(),
        };
        if crate::cache::purge_key(url).is_none() {
            return refused();
        }
        let generation = self.reloader.current();
        let purged = crate::cache::purge(
            generation.cache_tiers(),
            &crate::cache::Purge { url, prefix },
        );
        json_response(StatusCode::OK, json!({ "purged": purged }))
    }
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
        if (path.as_str(), &method) == ("/revoke", &Method::POST) {
            return self.revoke(session).await;
        }
        if (path.as_str(), &method) == ("/cache/purge", &Method::POST) {
            return self.purge(session).await;
        }
        // Other admin requests carry no body worth reading; drain it so keep-alive stays
        // correct.
        let _ = session.drain_request_body().await;
        match (path.as_str(), method) {
            ("/", Method::GET) => status_page(&self.status()),
            ("/status.json", Method::GET) => {
                let mut resp = respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec(&self.status()).unwrap_or_default(),
                );
                if let Ok(v) = http::HeaderValue::from_str("default-src 'none'") {
                    resp.headers_mut().insert("content-security-policy", v);
                }
                resp
            }
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
            (
                "/" | "/status.json" | "/metrics" | "/healthz" | "/readyz" | "/reload" | "/revoke",
                _,
            ) => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed"}),
            ),
            _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_body_names_exactly_one_id() {
        let ok = |body: &str| parse_revocation(body.as_bytes()).unwrap();
        assert_eq!(ok(r#"{"sub":"alice"}"#), Revocation::Sub("alice".into()));
        assert_eq!(ok(r#"{"sid":"s-1"}"#), Revocation::Sid("s-1".into()));
        assert_eq!(ok(r#" {"jti": "t:1"} "#), Revocation::Jti("t:1".into()));
        for bad in [
            "",
            "sub=alice",
            "[]",
            "\"alice\"",
            "{}",
            r#"{"sub":null}"#,
            r#"{"sub":"a","sid":"b"}"#,
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"sub":5}"#,
            r#"{"user":"alice"}"#,
            r#"{"sub":"alice","extra":1}"#,
        ] {
            let error = parse_revocation(bad.as_bytes()).unwrap_err();
            assert_eq!(error, REVOKE_SHAPE, "{bad}");
        }
        assert_eq!(
            parse_revocation(br#"{"sub":""}"#).unwrap_err(),
            "`sub`: the value is empty"
        );
        let long = format!(r#"{{"jti":"{}"}}"#, "x".repeat(2000));
        assert!(parse_revocation(long.as_bytes())
            .unwrap_err()
            .contains("longer than"));
    }
}
