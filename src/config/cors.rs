//! The serde structs of a route's CORS answer (`cors:`). What they mean, and every check of
//! the values, is [`crate::cors`]'s.

use serde::Deserialize;

use super::values::Dur;

/// `cors:` of a route: Portcullis answers its preflights and puts the CORS headers on its
/// responses, in place of the upstream's.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed: exact (`https://app.example.com`, `http://localhost:3000`), every
    /// subdomain of a domain (`https://*.example.com`, not the domain itself), or `*` alone
    /// (any origin, answered `*`; not with `allow_credentials`).
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for; `*` alone: any. Default `GET`, `HEAD`, `POST`.
    #[serde(default)]
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for (any case); `*` alone: any but
    /// `Authorization`, which must be listed. Default none.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the page's script may read besides the safelisted ones; `*` alone:
    /// all (not with `allow_credentials`).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Let the page send cookies and `Authorization` and read the answer
    /// (`Access-Control-Allow-Credentials: true`). Default false.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may keep a preflight's answer (`Access-Control-Max-Age`, whole
    /// seconds); absent: not sent (browsers then keep it 5 s).
    #[serde(default)]
    pub max_age: Option<Dur>,
}
