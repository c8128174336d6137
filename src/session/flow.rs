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
use super::{now, Client, Live, SessionData};

/// How long a login may take, from the redirect to the callback.
pub const LOGIN_TTL: u64 = 600;

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
    pub(super) fn redirect(location: &str, cookies: Vec<HeaderValue>) -> Reply {
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
    pub(super) fn page(
        status: StatusCode,
        title: &str,
        text: &str,
        cookies: Vec<HeaderValue>,
    ) -> Reply {
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

    pub(super) fn json(status: StatusCode, error: &str) -> Reply {
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

pub(super) fn b64(bytes: &[u8]) -> String {
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
pub(super) fn origin(req: &RequestHeader, https: bool) -> Option<String> {
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
    pub(super) fn cookie_name(&self) -> &str {
        &self.config.cookie.name
    }

    fn login_cookie_name(&self, state: &str) -> String {
        let tag: String = state.chars().take(8).collect();
        format!("{}-login-{tag}", self.cookie_name())
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
            .and_then(|s| self.sealer.open(&self.purposes.login, &s))
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
