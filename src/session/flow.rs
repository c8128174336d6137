//! What a browser meets: the login redirect, the callback, the session on each request,
//! logout and the provider's back-channel logout.
//!
//! A login, step by step:
//! 1. A navigation (GET or HEAD that accepts `text/html`, and not a `Sec-Fetch-Mode` other
//!    than `navigate`) without a session is sent (302) to the provider's authorization
//!    endpoint: code flow, PKCE S256, fresh `state` and `nonce`. They, the PKCE verifier,
//!    the redirect URI and the URL asked for go into a sealed login cookie of 10 minutes,
//!    named after the state (`NAME-login-XXXXXXXX`) so that logins in several tabs do not
//!    overwrite each other. Anything else (XHR, API, gRPC) gets 401 as before.
//! 2. The provider sends the browser to `callback_path` with `code` and `state`. The login
//!    cookie for that state is opened and its state compared in constant time; the code is
//!    redeemed with the verifier; the ID token is checked (signature with the issuer's
//!    keys, `iss`, `aud` = client id, `exp`, `nonce`).
//! 3. The session is made (sealed into the cookie, or kept in Redis under a random id that
//!    is all the cookie holds) and the browser is sent back to the URL it asked for: always
//!    a path on the same host.

use std::sync::Arc;

use base64::Engine;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};

use super::cookie;
use super::oidc::{count_login, CallError};
use super::redis::digest_hex;
use super::refresh::RefreshError;
use super::{now, Client, Live, SessionData};
use crate::auth::{Identity, Issuer};
use crate::config::SessionStore;
use crate::metrics::{SessionMetrics, SESSION_METRICS};

/// How long a login may take, from the redirect to the callback.
pub const LOGIN_TTL: u64 = 600;
/// A Redis session read from the store is served from the process for at most this long
/// before it is read again (a logout on another node reaches this one by then at the latest).
pub const REDIS_RECHECK: u64 = 30;
/// Where the provider POSTs its logout tokens (OpenID Connect Back-Channel Logout 1.0).
pub const BACKCHANNEL_PATH: &str = "/.portcullis/backchannel-logout";
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A whole response Portcullis writes itself.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers (`Set-Cookie`, `Location`, ...). `Cache-Control: no-store` is added.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Its body.
    pub body: Vec<u8>,
}

impl Reply {
    fn redirect(location: &str, cookies: Vec<HeaderValue>) -> Reply {
        let mut headers: Vec<(HeaderName, HeaderValue)> = cookies
            .into_iter()
            .map(|c| (http::header::SET_COOKIE, c))
            .collect();
        if let Ok(v) = HeaderValue::from_str(location) {
            headers.push((http::header::LOCATION, v));
        }
        Reply {
            status: StatusCode::FOUND,
            headers,
            body: Vec::new(),
        }
    }

    /// A small HTML page: `title` and `text` are escaped.
    fn page(status: StatusCode, title: &str, text: &str, cookies: Vec<HeaderValue>) -> Reply {
        let mut headers: Vec<(HeaderName, HeaderValue)> = cookies
            .into_iter()
            .map(|c| (http::header::SET_COOKIE, c))
            .collect();
        headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ));
        let body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body><h1>{t}</h1><p>{x}</p></body></html>\n",
            t = escape(title),
            x = escape(text)
        );
        Reply {
            status,
            headers,
            body: body.into_bytes(),
        }
    }

    fn json(status: StatusCode, error: &str) -> Reply {
        Reply {
            status,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body: serde_json::json!({ "error": error })
                .to_string()
                .into_bytes(),
        }
    }
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// What [`Client::authenticate`] decided.
pub enum Outcome {
    /// A live session; `cookies` go on the response (a refreshed or touched cookie).
    Pass {
        /// The session.
        live: Arc<Live>,
        /// `Set-Cookie` values for the response.
        cookies: Vec<HeaderValue>,
    },
    /// No usable session (none, ended, expired, revoked); `cookies` clear a dead one.
    None {
        /// `Set-Cookie` values that clear what the browser holds.
        cookies: Vec<HeaderValue>,
    },
    /// The store or the provider could not be reached and the session cannot be served.
    Unavailable,
}

/// What a login cookie holds.
#[derive(Serialize, Deserialize)]
struct LoginState {
    #[serde(rename = "s")]
    state: String,
    #[serde(rename = "n")]
    nonce: String,
    #[serde(rename = "v")]
    verifier: String,
    #[serde(rename = "u")]
    redirect_uri: String,
    #[serde(rename = "r")]
    return_to: String,
    #[serde(rename = "t")]
    created: u64,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random_text() -> Option<String> {
    super::seal::random::<32>().map(|b| b64(&b))
}

/// Whether `req` is a browser navigation, which may be sent to log in: GET or HEAD,
/// accepting HTML, and not a fetch whose `Sec-Fetch-Mode` says otherwise.
pub fn is_navigation(req: &RequestHeader) -> bool {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return false;
    }
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let mode = header("sec-fetch-mode");
    if !mode.is_empty() && !mode.eq_ignore_ascii_case("navigate") {
        return false;
    }
    header("accept")
        .split(',')
        .any(|t| t.trim().to_ascii_lowercase().starts_with("text/html"))
}

/// Whether `target` may be sent back to: a path on this host (`/...`, not `//host` nor
/// `/\host`, which browsers take for another host), without control characters.
pub fn is_local_path(target: &str) -> bool {
    target.starts_with('/')
        && !target.starts_with("//")
        && !target.starts_with("/\\")
        && !target.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

/// `scheme://host` of the request, for the redirect URI.
fn origin(req: &RequestHeader, https: bool) -> Option<String> {
    let host = crate::headers::request_host(req);
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_control() || b == b'/' || b == b'@')
    {
        return None;
    }
    Some(format!("{}://{host}", if https { "https" } else { "http" }))
}

fn query_pairs(req: &RequestHeader) -> Vec<(String, String)> {
    req.uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

impl Client {
    fn cookie_name(&self) -> &str {
        &self.config.cookie.name
    }

    fn login_cookie_name(&self, state: &str) -> String {
        let tag: String = state.chars().take(8).collect();
        format!("{}-login-{tag}", self.cookie_name())
    }

    /// Seconds a session may still live from `now`: its idle and absolute limits.
    fn lifetime(&self, data: &SessionData, now: u64) -> u64 {
        let idle = data
            .last_used
            .saturating_add(self.config.idle_timeout.0.as_secs());
        let absolute = data
            .created
            .saturating_add(self.config.absolute_timeout.0.as_secs());
        idle.min(absolute).saturating_sub(now)
    }

    /// How often a session's `last_used` is written again (idle timeout): a tenth of the
    /// idle timeout, between 1 s and a minute.
    fn touch_every(&self) -> u64 {
        (self.config.idle_timeout.0.as_secs() / 10).clamp(1, 60)
    }

    /// Send the browser to the provider to log in, remembering the URL it asked for.
    pub fn login(&self, req: &RequestHeader, https: bool) -> Reply {
        let unavailable = || {
            Reply::page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Login unavailable",
                "The identity provider cannot be reached right now. Try again in a moment.",
                Vec::new(),
            )
        };
        let Some(endpoint) = self
            .issuer
            .endpoints()
            .and_then(|e| e.authorization.clone())
        else {
            return unavailable();
        };
        let (Some(origin), Some(state), Some(nonce), Some(verifier)) = (
            origin(req, https),
            random_text(),
            random_text(),
            random_text(),
        ) else {
            return unavailable();
        };
        let return_to = req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let return_to = if is_local_path(&return_to) {
            return_to
        } else {
            "/".to_string()
        };
        let redirect_uri = format!("{origin}{}", self.config.callback_path);
        let challenge =
            b64(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
        let login = LoginState {
            state: state.clone(),
            nonce: nonce.clone(),
            verifier,
            redirect_uri: redirect_uri.clone(),
            return_to,
            created: now(),
        };
        let Some(sealed) = serde_json::to_vec(&login)
            .ok()
            .and_then(|json| self.sealer.seal(&self.purposes.login, &json))
        else {
            return unavailable();
        };
        let Some(cookies) = cookie::set(
            &self.config.cookie,
            &self.login_cookie_name(&state),
            &sealed,
            LOGIN_TTL,
            0,
        ) else {
            return unavailable();
        };
        let mut url = endpoint;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Reply::redirect(url.as_str(), cookies)
    }

    /// The provider sent the browser back: finish the login.
    pub async fn callback(&self, req: &RequestHeader) -> Reply {
        let params = query_pairs(req);
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let state = param("state").unwrap_or("");
        let login_cookie = self.login_cookie_name(state);
        let (sealed, _) = cookie::read(&req.headers, &login_cookie);
        let login = sealed
            .and_then(|s| self.sealer.open(&self.purposes.login, s.as_bytes()))
            .and_then(|json| serde_json::from_slice::<LoginState>(&json).ok())
            .filter(|l| {
                super::seal::same(l.state.as_bytes(), state.as_bytes())
                    && now().saturating_sub(l.created) <= LOGIN_TTL
            });
        // The login cookie goes only with its own state: a forged callback link must not
        // end the login under way.
        let clear_login = if login.is_some() {
            cookie::clear(&self.config.cookie, &login_cookie, 0)
        } else {
            Vec::new()
        };
        let failed = |status: StatusCode, result: &str, text: &str, cookies: Vec<HeaderValue>| {
            count_login(self, result);
            Reply::page(status, "Login failed", text, cookies)
        };
        if let Some(error) = param("error") {
            // The provider's own refusal (`access_denied`, `login_required`, ...): a page,
            // never another redirect to it, which would loop.
            let error: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            tracing::info!(session = %self.name(), %error, "login refused by the provider");
            return failed(
                StatusCode::FORBIDDEN,
                "denied",
                &format!("The identity provider did not log you in ({error})."),
                clear_login,
            );
        }
        let Some(login) = login else {
            tracing::info!(session = %self.name(), "callback without a matching login state");
            return failed(
                StatusCode::BAD_REQUEST,
                "invalid",
                "This login link is not valid any more. Go back to the page you wanted and try again.",
                clear_login,
            );
        };
        let Some(code) = param("code").filter(|c| !c.is_empty()) else {
            return failed(
                StatusCode::BAD_REQUEST,
                "invalid",
                "The provider sent no code.",
                clear_login,
            );
        };
        let tokens = match self
            .redeem_code(code, &login.redirect_uri, &login.verifier)
            .await
        {
            Ok(tokens) => tokens,
            Err(e) => {
                tracing::warn!(session = %self.name(), error = %e, "code redemption failed");
                let (status, result) = match e {
                    CallError::Unavailable(_) => (StatusCode::BAD_GATEWAY, "error"),
                    _ => (StatusCode::BAD_REQUEST, "invalid"),
                };
                return failed(
                    status,
                    result,
                    "The identity provider did not accept this login. Try again.",
                    clear_login,
                );
            }
        };
        let Some(id_token) = tokens.id_token.as_deref() else {
            return failed(
                StatusCode::BAD_GATEWAY,
                "invalid",
                "The provider sent no ID token.",
                clear_login,
            );
        };
        let id_claims = match self.check_id_token(id_token, Some(&login.nonce)).await {
            Ok(claims) => claims,
            Err(why) => {
                tracing::warn!(session = %self.name(), %why, "login refused");
                return failed(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "The login could not be verified.",
                    clear_login,
                );
            }
        };
        let str_claim = |name: &str| {
            id_claims
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let (sub, sid) = (str_claim("sub").unwrap_or_default(), str_claim("sid"));
        let claims = self.session_claims(id_claims, &tokens).await;
        let now = now();
        let data = SessionData {
            sub,
            sid,
            access_exp: super::refresh::access_expiry(&tokens, &claims),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            id_token: tokens.id_token,
            claims,
            created: now,
            last_used: now,
        };
        let (_, held) = cookie::read(&req.headers, self.cookie_name());
        let Some(mut cookies) = self.save(&data, None, held).await else {
            return failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "error",
                "The session could not be stored. Try again in a moment.",
                clear_login,
            );
        };
        cookies.extend(clear_login);
        count_login(self, "success");
        tracing::info!(session = %self.name(), "login");
        Reply::redirect(&login.return_to, cookies)
    }

    /// Store `data` (under `id` for Redis, a new one when `None`) and give the cookies
    /// that carry it; `held` parts of an older cookie are cleared. `None` when it cannot be
    /// stored (Redis down, too large for the cookies).
    async fn save(
        &self,
        data: &SessionData,
        id: Option<[u8; 32]>,
        held: usize,
    ) -> Option<Vec<HeaderValue>> {
        let now = now();
        let max_age = self.lifetime(data, now);
        let json = serde_json::to_vec(data).ok()?;
        let mut stored_id = None;
        let value = match self.config.store {
            SessionStore::Cookie => self.sealer.seal(&self.purposes.session, &json)?,
            SessionStore::Redis => {
                let id = match id {
                    Some(id) => id,
                    None => super::seal::random::<32>()?,
                };
                stored_id = Some(id);
                let sealed = self.sealer.seal(&self.purposes.record, &json)?;
                let redis = self.shared.redis.as_ref()?;
                let ttl = std::time::Duration::from_secs(max_age.max(1));
                redis
                    .set(&self.record_key(&id), sealed.as_bytes(), ttl)
                    .await
                    .ok()?;
                b64(&id)
            }
        };
        let cookies = cookie::set(
            &self.config.cookie,
            self.cookie_name(),
            &value,
            max_age,
            held,
        );
        if cookies.is_none() {
            tracing::warn!(session = %self.name(), bytes = value.len(), "session too large for its cookies: use `store: redis`");
        }
        // The browser's next request, with this cookie, is served from the process.
        let live = self.live(data.clone(), stored_id, now);
        self.shared
            .cache
            .insert(self.shared.key(value.as_bytes()), live, now);
        cookies
    }

    fn record_key(&self, id: &[u8; 32]) -> String {
        format!("portcullis:session:{}:{}", self.name(), digest_hex(id))
    }

    fn live(&self, data: SessionData, id: Option<[u8; 32]>, now: u64) -> Arc<Live> {
        let identity = Identity::project(
            &data.claims,
            &self.projection,
            self.issuer.id,
            0,
            data.access_exp,
        );
        let bearer = HeaderValue::from_str(&format!("Bearer {}", data.access_token)).ok();
        let due = data
            .access_exp
            .saturating_sub(self.config.refresh_before.0.as_secs());
        let mut fresh_until = due.min(data.last_used.saturating_add(self.touch_every()));
        if id.is_some() {
            fresh_until = fresh_until.min(now.saturating_add(REDIS_RECHECK));
        }
        Arc::new(Live {
            identity,
            bearer,
            id,
            fresh_until,
            hard_until: now.saturating_add(self.lifetime(&data, now)),
            data,
        })
    }

    /// The session of this request, refreshed when its access token is due.
    /// `revoked` says whether a session was revoked (by `sub`, `sid`, before a time).
    pub async fn authenticate(
        &self,
        req: &RequestHeader,
        revoked: &(dyn Fn(&SessionData) -> bool + Sync),
    ) -> Outcome {
        let (value, held) = cookie::read(&req.headers, self.cookie_name());
        let Some(value) = value else {
            let cookies = if held > 0 {
                cookie::clear(&self.config.cookie, self.cookie_name(), held)
            } else {
                Vec::new()
            };
            return Outcome::None { cookies };
        };
        let shared = &self.shared;
        let key = shared.key(value.as_bytes());
        let now = now();
        let cached = shared.cache.get(key, Arc::clone);
        if let Some(live) = cached
            .as_ref()
            .filter(|l| l.fresh_until > now && l.hard_until > now)
        {
            SessionMetrics::count(&SESSION_METRICS.cache, self.name(), "hit");
            if revoked(&live.data) {
                shared.cache.remove(key);
                return self.ended(held, "revoked");
            }
            return Outcome::Pass {
                live: Arc::clone(live),
                cookies: Vec::new(),
            };
        }
        SessionMetrics::count(&SESSION_METRICS.cache, self.name(), "miss");
        // The store's copy; with Redis away, the one this process holds.
        let (data, id) = match self.load(&value).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                shared.cache.remove(key);
                return self.ended(held, "unknown");
            }
            Err(()) => match cached {
                Some(live) if live.hard_until > now => (live.data.clone(), live.id),
                _ => return Outcome::Unavailable,
            },
        };
        if self.lifetime(&data, now) == 0 {
            shared.cache.remove(key);
            SessionMetrics::count(&SESSION_METRICS.logouts, self.name(), "expired");
            return self.ended(held, "expired");
        }
        if revoked(&data) {
            shared.cache.remove(key);
            return self.ended(held, "revoked");
        }
        let due = data.access_exp <= now.saturating_add(self.config.refresh_before.0.as_secs());
        let mut data = data;
        let mut changed = false;
        if due {
            match self.refresh(&data).await {
                Ok(fresh) => {
                    data = SessionData {
                        last_used: now,
                        ..(*fresh).clone()
                    };
                    changed = true;
                }
                Err(RefreshError::Ended) => {
                    shared.cache.remove(key);
                    self.forget(&data, id).await;
                    return self.ended(held, "refresh refused");
                }
                // The old access token still works: serve it, refresh on a later request.
                Err(RefreshError::Unavailable) if data.access_exp > now => {}
                Err(RefreshError::Unavailable) => return Outcome::Unavailable,
            }
        }
        if now.saturating_sub(data.last_used) >= self.touch_every() {
            data.last_used = now;
            changed = true;
        }
        let mut cookies = Vec::new();
        if changed {
            match self.config.store {
                SessionStore::Cookie => {
                    if let Some(set) = self.save(&data, None, held).await {
                        cookies = set;
                    }
                }
                // Written back; with Redis away the process keeps the new tokens.
                SessionStore::Redis => {
                    if let Some(id) = id {
                        let _ = self.save(&data, Some(id), held).await;
                    }
                }
            }
        }
        let live = self.live(data, id, now);
        shared.cache.insert(key, Arc::clone(&live), now);
        Outcome::Pass { live, cookies }
    }

    /// The session a cookie value stands for: `Ok(None)` when there is none (a cookie that
    /// does not open, an id Redis does not hold), `Err` when Redis cannot be read.
    async fn load(&self, value: &str) -> Result<Option<(SessionData, Option<[u8; 32]>)>, ()> {
        match self.config.store {
            SessionStore::Cookie => Ok(self
                .sealer
                .open(&self.purposes.session, value.as_bytes())
                .and_then(|json| serde_json::from_slice(&json).ok())
                .map(|data| (data, None))),
            SessionStore::Redis => {
                let Some(id) = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(value)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                else {
                    return Ok(None);
                };
                let redis = self.shared.redis.as_ref().ok_or(())?;
                let sealed = redis.get(&self.record_key(&id)).await.map_err(|_| ())?;
                Ok(sealed
                    .and_then(|s| self.sealer.open(&self.purposes.record, &s))
                    .and_then(|json| serde_json::from_slice(&json).ok())
                    .map(|data| (data, Some(id))))
            }
        }
    }

    fn ended(&self, held: usize, why: &str) -> Outcome {
        tracing::debug!(session = %self.name(), why, "no usable session");
        Outcome::None {
            cookies: cookie::clear(&self.config.cookie, self.cookie_name(), held),
        }
    }

    /// Drop a session from the store.
    async fn forget(&self, _data: &SessionData, id: Option<[u8; 32]>) {
        if let (Some(id), Some(redis)) = (id, &self.shared.redis) {
            let _ = redis.delete(&self.record_key(&id)).await;
        }
    }

    /// End this request's session: store, cookies, the refresh token at the provider; then
    /// send the browser to the provider's end-session endpoint (or `post_logout_redirect`).
    pub async fn logout(&self, req: &RequestHeader, https: bool) -> Reply {
        let (value, held) = cookie::read(&req.headers, self.cookie_name());
        let mut id_token = None;
        if let Some(value) = value {
            let key = self.shared.key(value.as_bytes());
            let cached = self.shared.cache.get(key, |l| (l.data.clone(), l.id));
            self.shared.cache.remove(key);
            let found = match self.load(&value).await {
                Ok(Some(found)) => Some(found),
                _ => cached,
            };
            if let Some((data, id)) = found {
                self.forget(&data, id).await;
                if let Some(refresh) = &data.refresh_token {
                    self.revoke(refresh).await;
                }
                id_token = data.id_token;
                SessionMetrics::count(&SESSION_METRICS.logouts, self.name(), "user");
                tracing::info!(session = %self.name(), "logout");
            }
        }
        let cookies = cookie::clear(&self.config.cookie, self.cookie_name(), held);
        let after = self.config.post_logout_redirect.as_deref().and_then(|to| {
            if is_local_path(to) {
                origin(req, https).map(|o| format!("{o}{to}"))
            } else {
                Some(to.to_string())
            }
        });
        let end_session = self.issuer.endpoints().and_then(|e| e.end_session.clone());
        match end_session {
            Some(mut url) => {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("client_id", &self.config.client_id);
                    if let Some(hint) = &id_token {
                        q.append_pair("id_token_hint", hint);
                    }
                    if let Some(after) = &after {
                        q.append_pair("post_logout_redirect_uri", after);
                    }
                }
                Reply::redirect(url.as_str(), cookies)
            }
            None => match &self.config.post_logout_redirect {
                Some(to) => Reply::redirect(to, cookies),
                None => Reply::page(StatusCode::OK, "Logged out", "You are logged out.", cookies),
            },
        }
    }
}

/// A verified back-channel logout: whom it logs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutOf {
    /// The client it came for.
    pub session: String,
    /// `sub`, when the token names one.
    pub sub: Option<String>,
    /// `sid`, when the token names one.
    pub sid: Option<String>,
}

/// Check a logout token POSTed to [`BACKCHANNEL_PATH`] (OpenID Connect Back-Channel Logout
/// 1.0 section 2.6): signed by the issuer of one of `clients`, for its client id, with the
/// logout event, no `nonce`, and a `sid` or a `sub`. Returns whom it logs out.
///
/// # Errors
/// A reply for the provider (400 with an OAuth error code).
pub async fn check_logout_token(clients: &[Arc<Client>], body: &[u8]) -> Result<LogoutOf, Reply> {
    let bad = || Reply::json(StatusCode::BAD_REQUEST, "invalid_request");
    let token = url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(bad)?;
    for client in clients {
        let issuers: [Arc<Issuer>; 1] = [Arc::clone(&client.issuer)];
        let audiences = [client.config.client_id.clone()];
        let Ok(verified) = crate::auth::token::verify_logout(&token, &issuers, &audiences).await
        else {
            continue;
        };
        let claims = verified.claims;
        let has_event = claims
            .get("events")
            .and_then(|e| e.as_object())
            .is_some_and(|e| e.contains_key(BACKCHANNEL_EVENT));
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let (sub, sid) = (text("sub"), text("sid"));
        if !has_event || claims.contains_key("nonce") || (sub.is_none() && sid.is_none()) {
            return Err(bad());
        }
        return Ok(LogoutOf {
            session: client.name().to_string(),
            sub,
            sid,
        });
    }
    Err(bad())
}

/// The reply to a back-channel logout the proxy acted on.
pub fn logged_out() -> Reply {
    Reply {
        status: StatusCode::OK,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/app?x=1", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn only_navigations_are_sent_to_log_in() {
        let html = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        assert!(is_navigation(&req("GET", &[html])));
        assert!(is_navigation(&req(
            "HEAD",
            &[html, ("sec-fetch-mode", "navigate")]
        )));
        assert!(!is_navigation(&req("POST", &[html])));
        assert!(!is_navigation(&req(
            "GET",
            &[("accept", "application/json")]
        )));
        assert!(!is_navigation(&req("GET", &[])));
        assert!(!is_navigation(&req(
            "GET",
            &[html, ("sec-fetch-mode", "cors")]
        )));
    }

    #[test]
    fn only_local_paths_are_returned_to() {
        for good in ["/", "/app?x=1", "/a/b#c"] {
            assert!(is_local_path(good), "{good}");
        }
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "evil",
            "/a\r\nb",
            "",
        ] {
            assert!(!is_local_path(bad), "{bad}");
        }
    }

    #[test]
    fn pages_escape_what_they_show() {
        let page = Reply::page(StatusCode::FORBIDDEN, "t", "<script>x</script>", Vec::new());
        let body = String::from_utf8(page.body).unwrap();
        assert!(body.contains("&lt;script&gt;") && !body.contains("<script>"));
    }
}
