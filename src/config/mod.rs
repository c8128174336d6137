//! The YAML config file, exactly as the operator writes it.
//!
//! These serde structs mirror the file field for field (`deny_unknown_fields` everywhere) and
//! do no work of their own: turning them into ready-to-serve routes and pools is
//! [`crate::generation`]'s job. Parsing reports every error it can find at once, each with the
//! field path and the line, so that `portcullis check` is useful on a broken file.

pub mod access_log;
pub mod cache;
pub mod cors;
pub mod edits;
pub mod forwarding;
pub mod limits;
mod lines;
pub mod matching;
pub mod schema;
pub mod session;
mod shape;
pub mod targets;
pub mod tracing;
pub mod types;
pub mod upstream;
pub mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use access_log::*;
pub use cache::CacheConfig;
pub use cors::CorsConfig;
pub use edits::{HeaderEditsConfig, RedirectConfig, RewriteConfig};
pub use forwarding::*;
pub use limits::*;
pub use lines::LineIndex;
pub use matching::{HeaderMatchConfig, QueryMatchConfig};
pub use session::*;
pub use shape::Shaped;
pub use targets::{DnsConfig, TargetConfig};
pub use tracing::TracingConfig;
pub use types::*;
pub use upstream::*;
pub use values::*;

/// The whole config file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the proxy accepts client traffic.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// The admin endpoint: metrics, health, reload.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// What `/readyz` waits for besides a loaded config.
    #[serde(default)]
    pub readiness: ReadinessConfig,
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where the access log goes (`stdout` by default) and which claims it records (none).
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Upstream pools.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, matched by host, longest path prefix and method.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Identity providers whose tokens routes accept.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// The verified-token cache.
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
    /// Redis, for limits shared by a fleet.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Finding the client address behind trusted proxies.
    #[serde(default)]
    pub client_ip: ClientIpConfig,
    /// Browser sessions: OpenID Connect login, refresh and logout at the edge.
    #[serde(default)]
    pub sessions: Vec<SessionConfig>,
    /// Spans to an OpenTelemetry receiver; absent, none are made.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// Request headers every route changes, before the route's own edits.
    #[serde(default)]
    pub request_headers: Option<HeaderEditsConfig>,
    /// Response headers every route changes, before the route's own edits.
    #[serde(default)]
    pub response_headers: Option<HeaderEditsConfig>,
    /// `Server` on responses: absent, removed (with `X-Powered-By`); `upstream`, the
    /// upstream's kept; any other text, sent as `Server`.
    #[serde(default)]
    pub server_header: Option<String>,
    /// Client addresses and CIDRs allowed on every route; empty: all (see `deny_ips`).
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// Client addresses and CIDRs refused on every route (403 `ip_denied`), before routing.
    #[serde(default)]
    pub deny_ips: Vec<String>,
    /// The largest request body a route takes unless it says otherwise, in bytes; `0`: no
    /// limit. 10 MiB by default.
    #[serde(default = "matching::default_max_body_bytes")]
    pub max_body_bytes: u64,
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Field path, such as `routes[2].match.host`; empty for the whole document.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong, in lowercase.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.path.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.path, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; every issue found is listed.
    #[error("{}", list_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The issues found, empty for a read error.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(issues) => issues,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn list_issues(issues: &[ConfigIssue]) -> String {
    let mut out = format!(
        "invalid config ({} error{})",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for issue in issues {
        out.push_str("\n  ");
        out.push_str(&issue.to_string());
    }
    out
}

/// Collects issues with their lines while a config is parsed and compiled.
pub struct Issues<'a> {
    index: &'a LineIndex,
    found: Vec<ConfigIssue>,
}

impl<'a> Issues<'a> {
    /// Start an empty list over `index`.
    pub fn new(index: &'a LineIndex) -> Self {
        Self {
            index,
            found: Vec::new(),
        }
    }

    /// Record that `path` is wrong.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = self.index.line_of(&path);
        self.found.push(ConfigIssue {
            path,
            line,
            message: message.into(),
        });
    }

    /// How many were found.
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// `Ok(value)` when nothing was found, else every issue.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with the issues in file order.
    pub fn finish<T>(mut self, value: T) -> Result<T, ConfigError> {
        if self.found.is_empty() {
            Ok(value)
        } else {
            self.found.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
            Err(ConfigError::Invalid(self.found))
        }
    }
}

/// A parsed config with the line index kept for errors found while compiling it.
pub struct Parsed {
    /// The config.
    pub config: Config,
    /// Where each field stands in the text.
    pub index: LineIndex,
}

impl Config {
    /// Parse a config from YAML text: what tests call. A file is read by
    /// [`crate::reload::Reloader::from_file`] and `portcullis check`, which parse it with
    /// [`Config::parse_shaped`] (through `Generation::compile`) to report shape and meaning
    /// errors together.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every field that is malformed, each with path and line.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Ok(Self::parse(text)?.config)
    }

    /// Parse `text`, read from `path`: relative file paths in it (TLS files, the access log)
    /// are resolved against the file's folder, so a config and its files can move together.
    ///
    /// # Errors
    /// As [`Config::from_yaml`].
    pub fn parse_file(text: &str, path: &Path) -> Result<Parsed, ConfigError> {
        let mut parsed = Self::parse(text)?;
        if let Some(base) = path.parent() {
            parsed.config.resolve_paths(base);
        }
        Ok(parsed)
    }

    /// Make relative file paths absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for listener in &mut self.listeners {
            if let Some(tls) = &mut listener.tls {
                fix(&mut tls.cert);
                fix(&mut tls.key);
            }
        }
        if let AccessLogOutput::File(p) = &mut self.access_log.output {
            fix(p);
        }
        for issuer in &mut self.issuers {
            for p in [&mut issuer.jwks_file, &mut issuer.ca_file]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        for tls in self.upstreams.iter_mut().filter_map(|u| u.tls.as_mut()) {
            for p in [&mut tls.ca_file, &mut tls.client_cert, &mut tls.client_key]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
    }

    /// Parse, keeping the line index for later errors.
    ///
    /// # Errors
    /// As [`Config::from_yaml`].
    pub fn parse(text: &str) -> Result<Parsed, ConfigError> {
        let shaped = Self::parse_shaped(text)?;
        if shaped.is_clean() {
            Ok(shaped.parsed)
        } else {
            let mut issues = shaped.issues;
            issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
            Err(ConfigError::Invalid(issues))
        }
    }
}

/// Read a config file to a string.
///
/// # Errors
/// [`ConfigError::Read`].
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_error_with_path_and_line() {
        let text = "\
upstreams:
  - name: a
    targets: [\"127.0.0.1:1\"]
    balance: fastest
routes:
  - name: r
    match: { hots: x }
    upstream: a
  - name: s
    upstream: a
    retries: 3
";
        let err = Config::from_yaml(text).unwrap_err();
        let issues = err.issues();
        assert_eq!(issues.len(), 3, "{err}");
        assert_eq!(issues[0].path, "upstreams[0].balance");
        assert_eq!(issues[0].line, Some(4));
        assert!(issues[0].message.contains("unknown variant `fastest`"));
        assert_eq!(issues[1].path, "routes[0].match.hots");
        assert_eq!(issues[1].line, Some(7));
        assert_eq!(issues[2].path, "routes[1].retries");
        assert_eq!(issues[2].line, Some(11));
        assert!(err
            .to_string()
            .contains("line 11: routes[1].retries: unknown field `retries`"));
    }

    #[test]
    fn syntax_error_has_a_line() {
        // The mapping value on line 3 is the error; lines before and after it are valid.
        let text = "routes:\n  - name: ok\n    upstream: a: b\nupstreams: []\n";
        let err = Config::from_yaml(text).unwrap_err();
        assert_eq!(err.issues().len(), 1, "{err}");
        assert_eq!(err.issues()[0].line, Some(3), "{err}");
        assert!(err.to_string().contains("\n  line 3: "), "{err}");
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        let config = Config::from_yaml("").unwrap();
        assert!(config.routes.is_empty());
    }

    #[test]
    fn unknown_section_is_an_error() {
        let err = Config::from_yaml("route: []\n").unwrap_err();
        assert_eq!(err.issues()[0].path, "route");
        assert_eq!(err.issues()[0].line, Some(1));
    }

    #[test]
    fn headers_with_underscores_is_drop_unless_allowed() {
        let config = Config::from_yaml("").unwrap();
        assert_eq!(
            config.server.headers_with_underscores,
            HeadersWithUnderscores::Drop
        );
        let config = Config::from_yaml("server:\n  headers_with_underscores: allow\n").unwrap();
        assert_eq!(
            config.server.headers_with_underscores,
            HeadersWithUnderscores::Allow
        );
        let err = Config::from_yaml("server:\n  headers_with_underscores: keep\n").unwrap_err();
        assert_eq!(err.issues()[0].path, "server.headers_with_underscores");
    }

    #[test]
    fn method_override_headers_are_stripped_unless_honoured() {
        assert_eq!(
            Config::from_yaml("")
                .unwrap()
                .server
                .method_override_headers,
            MethodOverrideHeaders::Strip
        );
        let honor = Config::from_yaml("server:\n  method_override_headers: honor\n").unwrap();
        assert_eq!(
            honor.server.method_override_headers,
            MethodOverrideHeaders::Honor
        );
        let err = Config::from_yaml("server:\n  method_override_headers: keep\n").unwrap_err();
        assert!(err.issues()[0].path.starts_with("server"), "{err}");
    }
}
