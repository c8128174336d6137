//! The serde structs of what a route (or the whole config) changes on the way through:
//! `request_headers` / `response_headers`, `server_header`, `rewrite`, `redirect`, and a
//! listener's `redirect_to_https`. What they mean is compiled in `crate::edits`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Header edits in one direction: removed first, then set (replacing any value), then
/// added (beside any value). Values may hold `{client_ip}`, `{request_id}`, `{route}` and
/// `{claim.NAME}`; `{{` and `}}` stand for `{` and `}`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsConfig {
    /// Headers set, replacing what was there: `name: value`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers added beside what is there: `name: value`.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Header names removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderEditsConfig {
    /// The claims its values name (`{claim.NAME}` gives `NAME`).
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.set
            .values()
            .chain(self.add.values())
            .flat_map(|v| v.match_indices("{claim.").map(move |(at, _)| &v[at + 7..]))
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
            .filter(|name| !name.is_empty())
    }
}

/// How the path and `Host` sent upstream are changed (`rewrite:`).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Remove the route's `match.path_prefix` from the path (leaving at least `/`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Put this in place of the route's `match.path_prefix`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The `Host` sent upstream (`X-Forwarded-Host` keeps the client's).
    #[serde(default)]
    pub host: Option<String>,
}

/// A route answered by Portcullis with a redirect (`redirect:`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// An absolute `http(s)://` URL or a path starting with `/`; `{path}` is the request's
    /// path, `{query}` its query with its `?` (nothing when it has none).
    pub to: String,
    /// 301, 302, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

/// 302, as Traefik and nginx's `rewrite ... redirect`: a redirect is not permanent until
/// its author says so.
pub fn default_redirect_status() -> u16 {
    302
}

/// The claims every header edit of `config` names, for the token projection.
pub fn header_claims(config: &super::Config) -> impl Iterator<Item = &str> {
    let route_edits = config
        .routes
        .iter()
        .flat_map(|r| r.request_headers.iter().chain(r.response_headers.iter()));
    config
        .request_headers
        .iter()
        .chain(config.response_headers.iter())
        .chain(route_edits)
        .flat_map(HeaderEditsConfig::claims)
}
