//! The demo's development identity provider: discovery, a key set, and just enough of OpenID
//! Connect for a browser session: an authorization endpoint whose page logs `alice` in with
//! one click, a token endpoint (authorization code with PKCE S256, refresh tokens that
//! rotate), revocation and end-session. Every token is signed with a key made at start that
//! lives only in this process. For a laptop, never for production: it asks no password.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::admin::respond;

/// Lifetime of the access and ID tokens it issues (short, so that a refresh shows).
pub const TOKEN_SECONDS: u64 = 300;
/// Most codes and refresh tokens it holds at once.
const MAX_GRANTS: usize = 10_000;
/// Largest form body it reads.
const MAX_BODY: usize = 16 * 1024;
/// How long a code may wait for its redemption.
const CODE_TTL: Duration = Duration::from_secs(120);

/// What a code or a refresh token stands for.
#[derive(Clone)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: Option<String>,
    scope: String,
    sid: String,
    made: Instant,
}

/// The development issuer.
pub struct DevIssuer {
    /// Its issuer URL, `http://<addr>/`.
    pub issuer: String,
    /// The public key set it publishes.
    pub jwks: serde_json::Value,
    key: String,
    kid: String,
    codes: Mutex<HashMap<String, Grant>>,
    refresh_tokens: Mutex<HashMap<String, Grant>>,
}

fn random_text() -> String {
    let bytes = crate::session::seal::random::<24>().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn redirect(location: &str) -> Response<Vec<u8>> {
    let mut resp = respond(StatusCode::FOUND, "text/plain", Vec::new());
    if let Ok(v) = http::HeaderValue::from_str(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

fn oauth_error(code: &str) -> Response<Vec<u8>> {
    let body = json!({ "error": code }).to_string().into_bytes();
    respond(StatusCode::BAD_REQUEST, "application/json", body)
}

/// Insert into a bounded map: when full, the oldest entries go first.
fn hold(map: &Mutex<HashMap<String, Grant>>, key: String, grant: Grant) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_GRANTS {
        let cutoff = Instant::now().checked_sub(CODE_TTL);
        map.retain(|_, g| cutoff.is_none_or(|c| g.made > c));
        if map.len() >= MAX_GRANTS {
            map.clear();
        }
    }
    map.insert(key, grant);
}

fn take(map: &Mutex<HashMap<String, Grant>>, key: &str) -> Option<Grant> {
    map.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
}

impl DevIssuer {
    /// An issuer at `issuer` signing with `key` (PEM) under `kid`, publishing `jwks`.
    pub fn new(issuer: String, key: String, kid: &str, jwks: serde_json::Value) -> DevIssuer {
        DevIssuer {
            issuer,
            jwks,
            key,
            kid: kid.to_string(),
            codes: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
        }
    }

    fn sign(&self, claims: &serde_json::Value) -> Option<String> {
        crate::auth::tools::mint(&self.key, &claims.to_string(), None, Some(&self.kid)).ok()
    }

    fn discovery(&self) -> serde_json::Value {
        let at = |path: &str| format!("{}{path}", self.issuer);
        json!({
            "issuer": self.issuer,
            "jwks_uri": at("jwks.json"),
            "authorization_endpoint": at("authorize"),
            "token_endpoint": at("token"),
            "revocation_endpoint": at("revoke"),
            "end_session_endpoint": at("logout"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "subject_types_supported": ["public"],
        })
    }

    /// The login page: one button that logs `alice` in.
    fn authorize(&self, query: &HashMap<String, String>) -> Response<Vec<u8>> {
        let ok = query.get("response_type").map(String::as_str) == Some("code")
            && query.contains_key("client_id")
            && query.contains_key("redirect_uri")
            && query.get("code_challenge_method").map(String::as_str) == Some("S256");
        if !ok {
            let page = "<!doctype html><p>This development issuer takes the code flow with PKCE S256 only.</p>";
            return respond(
                StatusCode::BAD_REQUEST,
                "text/html; charset=utf-8",
                page.into(),
            );
        }
        let hidden: String = query
            .iter()
            .map(|(k, v)| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    escape(k),
                    escape(v)
                )
            })
            .collect();
        let page = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Development issuer</title></head>\
             <body><h1>Development issuer</h1><p>No password here: this issuer is for the demo only.</p>\
             <form method=\"get\" action=\"/authorize/approve\">{hidden}\
             <button id=\"login\" type=\"submit\">Log in as alice</button></form></body></html>\n"
        );
        respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page.into_bytes(),
        )
    }

    /// The button: a code for the client's redirect URI.
    fn approve(&self, query: &HashMap<String, String>) -> Response<Vec<u8>> {
        let (Some(client_id), Some(redirect_uri)) =
            (query.get("client_id"), query.get("redirect_uri"))
        else {
            return oauth_error("invalid_request");
        };
        let Ok(mut target) = url::Url::parse(redirect_uri) else {
            return oauth_error("invalid_request");
        };
        let code = random_text();
        let grant = Grant {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            nonce: query.get("nonce").cloned(),
            challenge: query.get("code_challenge").cloned(),
            scope: query.get("scope").cloned().unwrap_or_default(),
            sid: random_text(),
            made: Instant::now(),
        };
        hold(&self.codes, code.clone(), grant);
        {
            let mut q = target.query_pairs_mut();
            q.append_pair("code", &code);
            if let Some(state) = query.get("state") {
                q.append_pair("state", state);
            }
        }
        redirect(target.as_str())
    }

    /// Tokens for `grant`: an access token for the `demo` audience and an ID token for the
    /// client; a new refresh token when `offline_access` was asked.
    fn tokens(&self, grant: &Grant, with_nonce: bool) -> Response<Vec<u8>> {
        let now = crate::auth::cache::unix_now();
        let scope = format!("{} demo:read", grant.scope);
        let access = self.sign(&json!({
            "iss": self.issuer, "aud": "demo", "sub": "alice", "scope": scope.trim(),
            "client_id": grant.client_id, "iat": now, "exp": now + TOKEN_SECONDS,
            "jti": random_text(),
        }));
        let mut id = json!({
            "iss": self.issuer, "aud": grant.client_id, "sub": "alice", "name": "Alice",
            "email": "alice@example.com", "sid": grant.sid, "iat": now,
            "exp": now + TOKEN_SECONDS,
        });
        if let (true, Some(nonce)) = (with_nonce, &grant.nonce) {
            id["nonce"] = json!(nonce);
        }
        let (Some(access), Some(id)) = (access, self.sign(&id)) else {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                Vec::new(),
            );
        };
        let mut answer = json!({
            "access_token": access, "token_type": "Bearer", "expires_in": TOKEN_SECONDS,
            "id_token": id, "scope": scope.trim(),
        });
        if grant.scope.split(' ').any(|s| s == "offline_access") {
            let refresh = random_text();
            let next = Grant {
                made: Instant::now(),
                ..grant.clone()
            };
            hold(&self.refresh_tokens, refresh.clone(), next);
            answer["refresh_token"] = json!(refresh);
        }
        respond(
            StatusCode::OK,
            "application/json",
            answer.to_string().into_bytes(),
        )
    }

    fn token(&self, form: &HashMap<String, String>) -> Response<Vec<u8>> {
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
        match field("grant_type") {
            "authorization_code" => {
                let Some(grant) = take(&self.codes, field("code")) else {
                    return oauth_error("invalid_grant");
                };
                let challenge = {
                    let digest = ring::digest::digest(
                        &ring::digest::SHA256,
                        field("code_verifier").as_bytes(),
                    );
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
                };
                if grant.made.elapsed() > CODE_TTL
                    || grant.redirect_uri != field("redirect_uri")
                    || grant.challenge.as_deref() != Some(challenge.as_str())
                {
                    return oauth_error("invalid_grant");
                }
                self.tokens(&grant, true)
            }
            // Rotation: each refresh token works once.
            "refresh_token" => match take(&self.refresh_tokens, field("refresh_token")) {
                Some(grant) => self.tokens(&grant, false),
                None => oauth_error("invalid_grant"),
            },
            _ => oauth_error("unsupported_grant_type"),
        }
    }
}

fn pairs(text: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

#[async_trait]
impl ServeHttp for DevIssuer {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let query = pairs(session.req_header().uri.query().unwrap_or(""));
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > MAX_BODY {
                return oauth_error("invalid_request");
            }
            body.extend_from_slice(&chunk);
        }
        let form = pairs(&String::from_utf8_lossy(&body));
        let json_ok = |v: serde_json::Value| {
            respond(
                StatusCode::OK,
                "application/json",
                v.to_string().into_bytes(),
            )
        };
        match path.as_str() {
            "/.well-known/openid-configuration" => json_ok(self.discovery()),
            "/jwks.json" => json_ok(self.jwks.clone()),
            "/authorize" => self.authorize(&query),
            "/authorize/approve" => self.approve(&query),
            "/token" => self.token(&form),
            "/revoke" => {
                take(
                    &self.refresh_tokens,
                    form.get("token").map_or("", String::as_str),
                );
                respond(StatusCode::OK, "application/json", b"{}".to_vec())
            }
            "/logout" => match query.get("post_logout_redirect_uri") {
                Some(to) => redirect(to),
                None => respond(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    b"<!doctype html><p>Logged out of the development issuer.</p>".to_vec(),
                ),
            },
            _ => respond(
                StatusCode::NOT_FOUND,
                "application/json",
                b"{\"error\":\"not found\"}".to_vec(),
            ),
        }
    }
}
