//! Ending sessions: the logout path (store, cookies, the refresh token revoked at the
//! provider, then the provider's end-session endpoint) and OpenID Connect Back-Channel
//! Logout 1.0 (a logout token from the provider that ends a `sid` or a `sub` everywhere).

use std::sync::Arc;

use http::StatusCode;
use pingora::http::RequestHeader;

use super::cookie;
use super::flow::{is_local_path, origin, Reply};
use super::Client;
use crate::auth::Issuer;
use crate::metrics::{SessionMetrics, SESSION_METRICS};

/// Where the provider POSTs its logout tokens (OpenID Connect Back-Channel Logout 1.0).
pub const BACKCHANNEL_PATH: &str = "/.portcullis/backchannel-logout";
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

impl Client {
    /// End this request's session: store, cookies, the refresh token at the provider; then
    /// send the browser to the provider's end-session endpoint (or `post_logout_redirect`).
    /// `ended` is told the provider session (`sid`) of the session it ended, so that it can be
    /// revoked on every node (a copy of the cookie, another node's cached session).
    pub async fn logout(
        &self,
        req: &RequestHeader,
        https: bool,
        ended: &(dyn Fn(&LogoutOf) + Sync),
    ) -> Reply {
        let (value, held) = cookie::read(&req.headers, self.cookie_name());
        let mut id_token = None;
        if let Some(value) = value {
            let key = self.shared.key(&value);
            let cached = self.shared.cache.get(key, |l| (l.data.clone(), l.id));
            self.shared.cache.remove(key);
            let found = match self.load(&value).await {
                Ok(Some(found)) => Some(found),
                _ => cached,
            };
            if let Some((data, id)) = found {
                self.forget(&data, id).await;
                if data.sid.is_some() {
                    // Only this provider session: the user's other devices stay logged in.
                    ended(&LogoutOf {
                        session: self.name().to_string(),
                        sub: None,
                        sid: data.sid.clone(),
                    });
                }
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
        SessionMetrics::count(&SESSION_METRICS.logouts, client.name(), "backchannel");
        tracing::info!(session = %client.name(), "back-channel logout");
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
