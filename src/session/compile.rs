//! Compiling `sessions:`: every setting checked, secrets and cookie keys read from the
//! environment, and the state of an unchanged client (its session cache, its refreshes,
//! its Redis connection) carried over. Nothing is connected or fetched here.

use std::collections::HashSet;
use std::sync::Arc;

use super::refresh::Refreshes;
use super::seal::Sealer;
use super::{Client, Purposes, Sessions, Shared, SharedKey};
use crate::auth::Auth;
use crate::config::{Config, Issues, SameSite, SessionConfig, SessionStore};

/// Recent refresh results held per client, at most.
const RECENT_REFRESHES: u64 = 100_000;

fn check_path(path: &str, field: String, issues: &mut Issues<'_>) {
    if !super::flow::is_local_path(path) || path.contains(['?', '#']) {
        issues.push(
            field,
            format!("`{path}` must be a path starting with `/`, without query"),
        );
    }
}

fn env(var: &str, field: String, issues: &mut Issues<'_>) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            issues.push(field, format!("environment variable `{var}` is not set"));
            None
        }
    }
}

/// Whether `name` can be a cookie name (RFC 6265's token).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Sessions {
    /// Build the session clients of `config`, over `auth`'s issuers and projection.
    pub fn build(
        config: &Config,
        auth: &Auth,
        previous: Option<&Sessions>,
        issues: &mut Issues<'_>,
    ) -> Sessions {
        let mut clients = Vec::new();
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        let mut cookies = HashSet::new();
        for (i, sc) in config.sessions.iter().enumerate() {
            let path = format!("sessions[{i}]");
            let before = issues.len();
            if sc.name.is_empty() || !names.insert(sc.name.as_str()) {
                issues.push(
                    format!("{path}.name"),
                    format!("session name `{}` is empty or used twice", sc.name),
                );
            }
            let issuer = auth.issuers.iter().find(|x| x.name == sc.issuer);
            match (issuer, config.issuers.iter().find(|x| x.name == sc.issuer)) {
                (Some(_), Some(ic)) if !ic.discovery => issues.push(
                    format!("{path}.issuer"),
                    format!(
                        "issuer `{}` needs `discovery: true`: its endpoints come from discovery",
                        sc.issuer
                    ),
                ),
                (Some(_), _) => {}
                // An issuer with errors of its own has them reported already.
                (None, Some(_)) => {}
                (None, None) => issues.push(
                    format!("{path}.issuer"),
                    format!("no issuer named `{}`", sc.issuer),
                ),
            }
            if sc.client_id.is_empty() {
                issues.push(format!("{path}.client_id"), "must not be empty");
            }
            if !sc.scopes.iter().any(|s| s == "openid") {
                issues.push(format!("{path}.scopes"), "must include `openid`");
            }
            for (j, scope) in sc.scopes.iter().enumerate() {
                if scope.is_empty() || scope.contains(char::is_whitespace) || scope.contains('"') {
                    issues.push(
                        format!("{path}.scopes[{j}]"),
                        format!("`{scope}` is not a scope"),
                    );
                }
            }
            for (field, p) in [
                ("callback_path", &sc.callback_path),
                ("logout_path", &sc.logout_path),
            ] {
                check_path(p, format!("{path}.{field}"), issues);
                if p == super::logout::BACKCHANNEL_PATH || !paths.insert(p.as_str()) {
                    issues.push(
                        format!("{path}.{field}"),
                        format!("`{p}` is already the path of another session endpoint"),
                    );
                }
            }
            if let Some(to) = &sc.post_logout_redirect {
                let absolute = url::Url::parse(to)
                    .is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
                if !absolute && !super::flow::is_local_path(to) {
                    issues.push(
                        format!("{path}.post_logout_redirect"),
                        "must be a path on this host (`/bye`) or an http(s) URL",
                    );
                }
            }
            check_cookie(sc, &path, issues);
            if !cookies.insert(sc.cookie.name.as_str()) {
                issues.push(
                    format!("{path}.cookie.name"),
                    format!("cookie `{}` is already another session's", sc.cookie.name),
                );
            }
            if sc.store == SessionStore::Redis && config.cluster.is_none() {
                issues.push(
                    format!("{path}.store"),
                    "`store: redis` keeps sessions in `cluster.redis`: add a `cluster:` section",
                );
            }
            for (field, d) in [
                ("idle_timeout", sc.idle_timeout),
                ("absolute_timeout", sc.absolute_timeout),
                ("provider_timeout", sc.provider_timeout),
                ("refresh_grace", sc.refresh_grace),
            ] {
                if d.0.is_zero() {
                    issues.push(format!("{path}.{field}"), "must be more than zero");
                }
            }
            if sc.cache_sessions == 0 {
                issues.push(format!("{path}.cache_sessions"), "must be at least 1");
            }
            let secret = sc
                .client_secret_env
                .as_deref()
                .and_then(|var| env(var, format!("{path}.client_secret_env"), issues));
            let sealer = env(
                &sc.cookie_keys_env,
                format!("{path}.cookie_keys_env"),
                issues,
            )
            .and_then(|keys| {
                Sealer::from_text(&keys)
                    .map_err(|e| {
                        issues.push(
                            format!("{path}.cookie_keys_env"),
                            format!("`{}`: {e}", sc.cookie_keys_env),
                        )
                    })
                    .ok()
            });
            let (Some(issuer), Some(sealer)) = (issuer, sealer) else {
                continue;
            };
            if issues.len() != before {
                continue;
            }
            let redis_url = config.cluster.as_ref().map(|c| c.redis.clone());
            let key = SharedKey {
                name: sc.name.clone(),
                store: sc.store,
                redis: redis_url.clone(),
                cache_sessions: sc.cache_sessions,
                seal: sealer.fingerprint,
                issuer_id: issuer.id,
                projection: Arc::clone(&auth.projection),
            };
            let old = previous
                .into_iter()
                .flat_map(|p| p.clients.iter().map(|c| &c.shared));
            let shared = crate::carry::kept(old, &key).unwrap_or_else(|| {
                Arc::new(Shared {
                    cache: crate::store::Store::new(sc.cache_sessions as u64, 10),
                    refreshes: Refreshes::new(RECENT_REFRESHES),
                    redis: redis_url.as_deref().map(super::redis::Redis::new),
                    hash: ahash::RandomState::new(),
                    key,
                })
            });
            clients.push(Arc::new(Client {
                config: sc.clone(),
                issuer: Arc::clone(issuer),
                secret,
                sealer,
                projection: Arc::clone(&auth.projection),
                shared,
                purposes: Purposes::of(&sc.name),
            }));
        }
        Sessions { clients }
    }
}

fn check_cookie(sc: &SessionConfig, path: &str, issues: &mut Issues<'_>) {
    let cookie = &sc.cookie;
    if !is_cookie_name(&cookie.name) || cookie.name.contains('.') {
        issues.push(
            format!("{path}.cookie.name"),
            format!(
                "`{}` is not a cookie name (letters, digits, `-`, `_`; no `.`)",
                cookie.name
            ),
        );
    }
    // RFC 6265bis section 4.1.3: browsers drop a `__Host-` or `__Secure-` cookie set
    // without `Secure`, and every login would loop.
    if !cookie.secure {
        for prefix in ["__Host-", "__Secure-"] {
            if cookie.name.starts_with(prefix) {
                issues.push(
                    format!("{path}.cookie.secure"),
                    format!(
                        "a `{prefix}` cookie must be `secure`: rename it or set `secure: true`"
                    ),
                );
            }
        }
        if cookie.same_site == SameSite::None {
            issues.push(
                format!("{path}.cookie.same_site"),
                "`none` needs `secure: true` (browsers refuse it otherwise)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::generation::Generation;

    #[test]
    fn config_errors_for_sessions() {
        // A name only this test uses: set once, read by every compile below.
        std::env::set_var(
            "PORTCULLIS_TEST_SESSION_KEYS",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY",
        );
        std::env::set_var("PORTCULLIS_TEST_SHORT_KEY", "c2hvcnQ");
        let yaml = "
upstreams:
  - name: u
    targets: [\"127.0.0.1:9\"]
issuers:
  - name: idp
    issuer: \"https://id.example.com\"
    discovery: true
  - name: files
    issuer: files
    jwks_file: config/keys/example-jwks.json
sessions:
  - name: web
    issuer: files
    client_id: \"\"
    scopes: [profile]
    cookie: { name: __Host-x, secure: false, same_site: none }
    store: redis
    cookie_keys_env: PORTCULLIS_TEST_UNSET_KEYS
    client_secret_env: PORTCULLIS_TEST_UNSET_SECRET
    callback_path: \"//evil\"
  - name: web
    issuer: nobody
    client_id: b
    cookie: { name: __Host-x }
    cookie_keys_env: PORTCULLIS_TEST_SHORT_KEY
    logout_path: /.portcullis/backchannel-logout
    post_logout_redirect: \"javascript:alert(1)\"
  - name: ok
    issuer: idp
    client_id: c
    cookie: { name: other }
    callback_path: /ok/callback
    logout_path: /ok/logout
    cookie_keys_env: PORTCULLIS_TEST_SESSION_KEYS
routes:
  - name: r
    match: { path_prefix: / }
    upstream: u
    auth: { session: missing }
  - name: s
    match: { path_prefix: /s }
    upstream: u
    auth: { issuers: [idp], forward_access_token: true }
  - name: t
    match: { path_prefix: /t }
    upstream: u
    auth: { require_scopes: [a] }
";
        let err = Generation::from_yaml(yaml).unwrap_err().to_string();
        for expected in [
            "sessions[0].issuer: issuer `files` needs `discovery: true`",
            "sessions[0].client_id: must not be empty",
            "sessions[0].scopes: must include `openid`",
            "sessions[0].callback_path: `//evil` must be a path",
            "sessions[0].cookie.secure: a `__Host-` cookie must be `secure`",
            "sessions[0].cookie.same_site: `none` needs `secure: true`",
            "sessions[0].store: `store: redis` keeps sessions in `cluster.redis`",
            "sessions[0].client_secret_env: environment variable `PORTCULLIS_TEST_UNSET_SECRET` is not set",
            "sessions[0].cookie_keys_env: environment variable `PORTCULLIS_TEST_UNSET_KEYS` is not set",
            "sessions[1].name: session name `web` is empty or used twice",
            "sessions[1].issuer: no issuer named `nobody`",
            "sessions[1].logout_path: `/.portcullis/backchannel-logout` is already the path of another session endpoint",
            "sessions[1].post_logout_redirect: must be a path on this host",
            "sessions[1].cookie.name: cookie `__Host-x` is already another session's",
            "sessions[1].cookie_keys_env: `PORTCULLIS_TEST_SHORT_KEY`: key 1 is not 32 bytes",
            "routes[0].auth.session: no session named `missing`",
            "routes[1].auth.forward_access_token: forwards a session's access token: it needs `session`",
            "routes[2].auth.issuers: name at least one issuer, or a `session`",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
        }
        assert!(!err.contains("sessions[2]"), "{err}");
    }
}
