//! `sessions:`: browser sessions, each an OpenID Connect client of one issuer.

use std::time::Duration;

use serde::Deserialize;

use super::values::Dur;

/// One browser-session client: how Portcullis logs a browser in with an issuer and keeps it
/// logged in.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// What routes call it (`auth: { session: NAME }`) and the `session` metric label.
    pub name: String,
    /// The issuer (by name, from `issuers:`), which must have `discovery: true`: the
    /// authorization, token, end-session, revocation and introspection endpoints come from
    /// its discovery document, and its keys verify the ID tokens.
    pub issuer: String,
    /// The client id registered with the provider.
    pub client_id: String,
    /// Environment variable holding the client secret; absent: a public client (PKCE only).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Scopes asked for; `offline_access` for refresh tokens.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Where the provider sends the browser back with a code.
    #[serde(default = "default_callback_path")]
    pub callback_path: String,
    /// Where a browser ends its session.
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    /// Where the provider sends the browser after logging out (a path on the same host, or
    /// an absolute URL registered with the provider).
    #[serde(default)]
    pub post_logout_redirect: Option<String>,
    /// The session cookie.
    #[serde(default)]
    pub cookie: CookieConfig,
    /// Where sessions live.
    #[serde(default)]
    pub store: SessionStore,
    /// Environment variable holding one or more 32-byte keys (base64, base64url or 64 hex
    /// digits), comma-separated: the first seals, every one opens.
    pub cookie_keys_env: String,
    /// Refresh when the access token expires within this.
    #[serde(default = "default_refresh_before")]
    pub refresh_before: Dur,
    /// How long the result of one refresh is kept for racing requests that still hold the
    /// refresh token it redeemed.
    #[serde(default = "default_refresh_grace")]
    pub refresh_grace: Dur,
    /// A session not used for this long ends.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// A session ends this long after its login, used or not.
    #[serde(default = "default_absolute_timeout")]
    pub absolute_timeout: Dur,
    /// Time one call to the provider (code, refresh, revocation) may take.
    #[serde(default = "default_provider_timeout")]
    pub provider_timeout: Dur,
    /// Most sessions held decoded in this process (the in-memory layer in front of the store).
    #[serde(default = "default_cache_sessions")]
    pub cache_sessions: usize,
}

/// The session cookie's attributes.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CookieConfig {
    /// Its name; numbered `NAME.1`, `NAME.2` … past 4 KB.
    #[serde(default = "default_cookie_name")]
    pub name: String,
    /// `SameSite`.
    #[serde(default)]
    pub same_site: SameSite,
    /// `Secure`: sent by browsers only over https.
    #[serde(default = "default_true")]
    pub secure: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: default_cookie_name(),
            same_site: SameSite::default(),
            secure: true,
        }
    }
}

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// Sent on top-level navigations from other sites, not on their subrequests.
    #[default]
    Lax,
    /// Never sent from other sites (a login through the provider then needs a second click).
    Strict,
    /// Always sent (needs `secure`).
    None,
}

impl SameSite {
    /// The attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// Where sessions are kept.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionStore {
    /// Sealed into the cookie itself.
    #[default]
    Cookie,
    /// In `cluster.redis`; the cookie holds a random id.
    Redis,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into()]
}
fn default_callback_path() -> String {
    "/.portcullis/callback".into()
}
fn default_logout_path() -> String {
    "/.portcullis/logout".into()
}
fn default_cookie_name() -> String {
    "__Host-portcullis".into()
}
fn default_true() -> bool {
    true
}
fn default_refresh_before() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_refresh_grace() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(8 * 3600))
}
fn default_absolute_timeout() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
fn default_provider_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_cache_sessions() -> usize {
    100_000
}
