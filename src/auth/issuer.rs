//! Issuers at run time: where their keys come from, the keys now in use, and fetching them.
//!
//! Only the [`KeyRefresher`] background service fetches. Requests that meet an unknown `kid`
//! ask it for a refresh (at most one per `jwks_min_refresh` per issuer) and wait on the same
//! fetch; they never start their own. A failed fetch keeps the last good keys serving.
//!
//! Every URL a fetch touches passes [`check_fetch_url`]'s rule: the configured one, each
//! redirect hop (at most [`MAX_REDIRECTS`], never from https down to plain http) and the
//! `jwks_uri` a discovery document names. A hop that breaks it fails the fetch.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use jsonwebtoken::Algorithm;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{watch, Notify};

use super::fetch::{check_fetch_url, check_hop, get, Trust};
use super::keys::{KeySet, MAX_JWKS_BYTES};
use crate::config::IssuerConfig;
use crate::metrics::METRICS;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Wakes the refresher when a request asks for keys.
static KICK: LazyLock<Notify> = LazyLock::new(Notify::new);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Every asymmetric algorithm jsonwebtoken and ring support.
pub const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
/// The HMAC algorithms, only for issuers with a secret.
pub const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// OIDC discovery from the issuer URL, then its `jwks_uri`.
    Discovery(String),
    /// A fixed JWKS URL.
    Uri(String),
    /// A JWKS file, re-read every `jwks_refresh`.
    File(PathBuf),
    /// An HMAC secret from the environment.
    Secret,
}

impl KeySource {
    fn fetches(&self) -> bool {
        !matches!(self, KeySource::Secret)
    }
}

struct FetchState {
    fetching: AtomicBool,
    requested: AtomicBool,
    next_due_ms: AtomicU64,
    /// When an unknown `kid` last caused a fetch; 0 for never.
    last_kid_fetch_ms: AtomicU64,
    failures: AtomicU32,
    last_ok: AtomicBool,
    /// What discovery found last.
    discovered: ArcSwapOption<Endpoints>,
    /// Bumped after every fetch, so waiters see that one finished.
    done: watch::Sender<u64>,
}

/// An issuer, with its keys.
pub struct Issuer {
    /// Unique per instance: cached tokens remember which issuer instance verified them.
    pub id: u64,
    /// Its name in the config.
    pub name: String,
    /// The `iss` its tokens carry.
    pub iss: String,
    /// The config it was built from, to tell on reload whether it changed.
    pub config: IssuerConfig,
    secret_fingerprint: Option<u64>,
    /// Where its keys come from.
    pub source: KeySource,
    /// Algorithms allowed at all.
    pub allowed: Vec<Algorithm>,
    /// Clock skew in seconds.
    pub leeway: u64,
    keys: ArcSwapOption<KeySet>,
    fetch: FetchState,
    /// Whom its fetches trust.
    trust: Trust,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("iss", &self.iss)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Parse an algorithm name from the config.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    ASYMMETRIC
        .iter()
        .chain(HMAC.iter())
        .copied()
        .find(|a| format!("{a:?}").eq_ignore_ascii_case(name))
}

fn secret_fingerprint(secret: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    secret.hash(&mut h);
    h.finish()
}

impl Issuer {
    /// Build an issuer. Static keys (file, secret) are loaded now; remote keys arrive from
    /// the [`KeyRefresher`].
    ///
    /// `secret` is the HMAC secret already read from the environment; `trust`, its `ca_file`
    /// already loaded.
    ///
    /// # Errors
    /// A message naming what is wrong (file unreadable, no usable key).
    pub fn new(
        config: &IssuerConfig,
        source: KeySource,
        allowed: Vec<Algorithm>,
        secret: Option<&[u8]>,
        trust: Trust,
    ) -> Result<Issuer, String> {
        let leeway = config.leeway.0.as_secs();
        let (done, _) = watch::channel(0);
        let issuer = Issuer {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: config.name.clone(),
            iss: config.issuer.clone(),
            config: config.clone(),
            secret_fingerprint: secret.map(secret_fingerprint),
            source,
            allowed,
            leeway,
            keys: ArcSwapOption::empty(),
            fetch: FetchState {
                fetching: AtomicBool::new(false),
                requested: AtomicBool::new(false),
                next_due_ms: AtomicU64::new(0),
                last_kid_fetch_ms: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                last_ok: AtomicBool::new(false),
                discovered: ArcSwapOption::empty(),
                done,
            },
            trust,
        };
        match (&issuer.source, secret) {
            (KeySource::Secret, Some(secret)) => {
                let set =
                    KeySet::from_secret(secret, &issuer.allowed).map_err(|e| e.to_string())?;
                issuer.install(set);
            }
            (KeySource::File(path), _) => {
                let set = read_file(path, &issuer.allowed)?;
                issuer.install(set);
                issuer.schedule(config.jwks_refresh.0);
            }
            _ => {}
        }
        Ok(issuer)
    }

    /// The [`crate::carry::Carry`] key a new issuer built from `config`, `secret` and
    /// `trust` has.
    pub fn carry_key_of(
        config: &IssuerConfig,
        secret: Option<&[u8]>,
        trust: &Trust,
    ) -> (IssuerConfig, Option<u64>, crate::tls::Stamp) {
        (
            config.clone(),
            secret.map(secret_fingerprint),
            trust.stamp.clone(),
        )
    }

    /// Serve `old`'s keys (and the endpoints its discovery found) until this issuer's first
    /// fetch: for an issuer rebuilt only because its `ca_file`'s content or its
    /// `introspection` settings changed, so that tokens keep passing while it fetches again
    /// (at once: nothing is scheduled).
    pub fn start_with_keys_of(&self, old: &Issuer) {
        let keys_from = |c: &IssuerConfig| IssuerConfig {
            introspection: None,
            ..c.clone()
        };
        if self.source.fetches() && keys_from(&self.config) == keys_from(&old.config) {
            if let Some(keys) = old.keys.load_full() {
                self.keys.store(Some(keys));
            }
            if let Some(found) = old.fetch.discovered.load_full() {
                self.fetch.discovered.store(Some(found));
            }
        }
    }

    /// The keys now in use; `None` until the first fetch succeeds.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// The endpoints its discovery document named; `None` before the first discovery (or
    /// for an issuer without `discovery: true`).
    pub fn endpoints(&self) -> Option<Arc<Endpoints>> {
        self.fetch.discovered.load_full()
    }

    /// Its HTTP client (the system's CAs and its `ca_file`), for calls to its endpoints.
    pub fn client(&self) -> Option<&reqwest::Client> {
        self.trust.client()
    }

    /// [`Issuer::client`]'s trust, following no redirect: for calls that carry a credential
    /// (a token, the client secret), which go to the endpoint named and nowhere else.
    pub fn client_without_redirects(&self) -> Option<&reqwest::Client> {
        self.trust.poster()
    }

    /// Whether a key with this fingerprint is in the set now (no reference counting: this is
    /// on every cached request).
    pub fn has_key(&self, fingerprint: u64) -> bool {
        self.keys
            .load()
            .as_ref()
            .is_some_and(|k| k.contains(fingerprint))
    }

    /// Whether the last fetch failed while older keys keep serving.
    pub fn is_stale(&self) -> bool {
        self.source.fetches()
            && self.keys.load().is_some()
            && !self.fetch.last_ok.load(Ordering::Relaxed)
    }

    /// Serve `set`. Its size reaches `/metrics` at the next scrape ([`super::Auth::observe`]):
    /// a key file is read while a config compiles, which must leave no series behind.
    fn install(&self, set: KeySet) {
        self.keys.store(Some(Arc::new(set)));
        self.fetch.last_ok.store(true, Ordering::Relaxed);
    }

    fn schedule(&self, after: Duration) {
        self.fetch
            .next_due_ms
            .store(now_ms().saturating_add(ms(after)), Ordering::Relaxed);
    }

    /// A token named a `kid` we do not have: ask for one refresh (unless one ran within
    /// `jwks_min_refresh`) and wait for the fetch asked for or under way to finish. Returns
    /// whether a fetch finished while waiting. A fetch may also have finished just before
    /// the call: callers load the keys again either way.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        if !self.source.fetches() {
            return false;
        }
        let mut done = self.fetch.done.subscribe();
        let seen = *done.borrow_and_update();
        if !self.fetch.fetching.load(Ordering::Acquire) {
            let now = now_ms();
            let last = self.fetch.last_kid_fetch_ms.load(Ordering::Acquire);
            let floor = ms(self.config.jwks_min_refresh.0);
            if last != 0 && now.saturating_sub(last) < floor {
                // Within the floor a fetch was asked for. If the refresher has not started
                // it yet, it is still the fetch this request needs: wait for it like those
                // that come while it runs, instead of refusing a token whose key is about to
                // arrive. (Only a request landing between the asker's two stores below
                // returns early; the caller loads the keys again anyway.)
                if !self.fetch.requested.load(Ordering::Acquire)
                    && !self.fetch.fetching.load(Ordering::Acquire)
                {
                    return false;
                }
            } else if self
                .fetch
                .last_kid_fetch_ms
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // One request wins the right to ask; the others just wait for the same fetch.
                self.fetch.requested.store(true, Ordering::Release);
                KICK.notify_one();
            }
        }
        let wait = self.config.fetch_timeout.0 * 2 + Duration::from_millis(500);
        let finished = tokio::time::timeout(wait, done.wait_for(|v| *v != seen)).await;
        matches!(finished, Ok(Ok(_)))
    }

    fn due(&self) -> bool {
        self.source.fetches()
            && (self.fetch.requested.load(Ordering::Acquire)
                || now_ms() >= self.fetch.next_due_ms.load(Ordering::Relaxed))
    }

    /// Fetch (or read) the key set once and install it; on failure keep the old one.
    async fn refresh(self: Arc<Self>) {
        let result = match &self.source {
            KeySource::Discovery(_) | KeySource::Uri(_) => self.fetch_remote().await,
            KeySource::File(path) => {
                let path = path.clone();
                let allowed = self.allowed.clone();
                match tokio::task::spawn_blocking(move || read_file(&path, &allowed)).await {
                    Ok(r) => r.map(|set| (set, None)),
                    Err(_) => Err("file read task failed".into()),
                }
            }
            KeySource::Secret => Err("an HMAC secret is not fetched".into()),
        };
        let cfg = &self.config;
        match result {
            Ok((set, max_age)) => {
                let keys = set.len();
                self.install(set);
                self.fetch.failures.store(0, Ordering::Relaxed);
                let next = max_age.unwrap_or(cfg.jwks_refresh.0).clamp(
                    cfg.jwks_min_refresh.0.min(cfg.jwks_refresh.0),
                    cfg.jwks_refresh.0,
                );
                self.schedule(next);
                METRICS
                    .jwks_fetches
                    .with_label_values(&[&self.name, "success"])
                    .inc();
                tracing::info!(issuer = %self.name, keys, next_refresh = ?next, "key set loaded");
            }
            Err(error) => {
                let failures = self.fetch.failures.fetch_add(1, Ordering::Relaxed) + 1;
                self.fetch.last_ok.store(false, Ordering::Relaxed);
                let have_keys = self.keys.load().is_some();
                // Without keys, routes answer 503: try again soon. With keys, back off.
                let base = if have_keys {
                    cfg.jwks_min_refresh.0
                } else {
                    cfg.jwks_min_refresh.0.min(Duration::from_secs(2))
                };
                let cap = if have_keys {
                    cfg.jwks_refresh.0
                } else {
                    Duration::from_secs(30)
                };
                let backoff = base
                    .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
                    .min(cap.max(base));
                self.schedule(backoff);
                METRICS
                    .jwks_fetches
                    .with_label_values(&[&self.name, "error"])
                    .inc();
                tracing::warn!(
                    issuer = %self.name, %error, serving_last_good_keys = have_keys,
                    retry_in = ?backoff, "key set fetch failed"
                );
            }
        }
        self.fetch.requested.store(false, Ordering::Release);
        self.fetch.fetching.store(false, Ordering::Release);
        self.fetch.done.send_modify(|v| *v += 1);
    }

    async fn fetch_remote(&self) -> Result<(KeySet, Option<Duration>), String> {
        let timeout = self.config.fetch_timeout.0;
        let uri = match &self.source {
            KeySource::Uri(uri) => uri.clone(),
            KeySource::Discovery(issuer) => match self.discover(issuer, timeout).await {
                Ok(uri) => uri,
                Err(e) => {
                    // Keep using a jwks_uri found before, if any.
                    let known = self.fetch.discovered.load_full();
                    known.map(|d| d.jwks_uri.clone()).ok_or(e)?
                }
            },
            _ => return Err("not a remote key source".into()),
        };
        let (body, max_age, _) = get(&self.trust, &uri, timeout).await?;
        let (set, skipped) = KeySet::from_jwks(&body, &self.allowed).map_err(|e| e.to_string())?;
        for why in skipped {
            tracing::warn!(issuer = %self.name, key = %why, "key skipped");
        }
        Ok((set, max_age))
    }

    async fn discover(&self, issuer: &str, timeout: Duration) -> Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let (body, _, fetched_from) = get(&self.trust, &url, timeout).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("discovery document: {e}"))?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name the same issuer.
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.iss.as_str()) {
            return Err("discovery document names another issuer".into());
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or("discovery document has no jwks_uri")?;
        check_fetch_url(uri)?;
        // Read over https, it may not send us to plain http.
        let parsed = reqwest::Url::parse(uri).map_err(|e| format!("invalid jwks_uri: {e}"))?;
        check_hop(std::slice::from_ref(&fetched_from), &parsed)
            .map_err(|why| format!("jwks_uri {why}"))?;
        // The other endpoints serve browser sessions and introspection; one that breaks the
        // rule is left out (what needs it then says so), not a reason to refuse the keys.
        let endpoint = |name: &str| -> Option<reqwest::Url> {
            let value = doc.get(name)?.as_str()?;
            let checked = reqwest::Url::parse(value)
                .map_err(|e| e.to_string())
                .and_then(|url| check_hop(std::slice::from_ref(&fetched_from), &url).map(|()| url));
            match checked {
                Ok(url) => Some(url),
                Err(why) => {
                    tracing::warn!(issuer = %self.name, endpoint = name, %why, "discovery endpoint left out");
                    None
                }
            }
        };
        let endpoints = Endpoints {
            jwks_uri: uri.to_string(),
            authorization: endpoint("authorization_endpoint"),
            token: endpoint("token_endpoint"),
            end_session: endpoint("end_session_endpoint"),
            revocation: endpoint("revocation_endpoint"),
            introspection: endpoint("introspection_endpoint"),
        };
        self.fetch.discovered.store(Some(Arc::new(endpoints)));
        Ok(uri.to_string())
    }
}

/// The endpoints an issuer's discovery document names (OpenID Connect Discovery 1.0, RFC
/// 8414), each checked as a fetched URL is: https, or plain http to loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Its key set.
    pub jwks_uri: String,
    /// Where a browser is sent to log in.
    pub authorization: Option<reqwest::Url>,
    /// Where codes and refresh tokens are redeemed.
    pub token: Option<reqwest::Url>,
    /// RP-initiated logout.
    pub end_session: Option<reqwest::Url>,
    /// RFC 7009 token revocation.
    pub revocation: Option<reqwest::Url>,
    /// RFC 7662 token introspection.
    pub introspection: Option<reqwest::Url>,
}

/// A `jwks_file`, read no further than one byte past [`MAX_JWKS_BYTES`] (a wrong path such
/// as a log file or `/dev/zero` must not be read whole), so that `from_jwks` refuses it.
fn read_file(path: &std::path::Path, allowed: &[Algorithm]) -> Result<KeySet, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read `{}`: {e}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    let (set, skipped) =
        KeySet::from_jwks(&bytes, allowed).map_err(|e| format!("`{}`: {e}", path.display()))?;
    for why in skipped {
        tracing::warn!(file = %path.display(), key = %why, "key skipped");
    }
    Ok(set)
}

/// An issuer, with its keys, is kept across a reload when every setting of it and its
/// secret are unchanged.
impl crate::carry::Carry for Issuer {
    type Key = (IssuerConfig, Option<u64>, crate::tls::Stamp);

    fn carry_key(&self) -> Self::Key {
        (
            self.config.clone(),
            self.secret_fingerprint,
            self.trust.stamp.clone(),
        )
    }
}

/// The background service that keeps every issuer's keys fresh.
pub struct KeyRefresher {
    issuers: Arc<arc_swap::ArcSwap<Vec<Arc<Issuer>>>>,
}

impl KeyRefresher {
    /// Keep the keys of `issuers` fresh, as each reload publishes them.
    pub fn new(issuers: Arc<arc_swap::ArcSwap<Vec<Arc<Issuer>>>>) -> Self {
        Self { issuers }
    }

    fn start_due_fetches(&self) {
        let issuers = self.issuers.load();
        for issuer in issuers.iter() {
            if !issuer.due() {
                continue;
            }
            if issuer
                .fetch
                .fetching
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                tokio::spawn(Arc::clone(issuer).refresh());
            }
        }
    }
}

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = KICK.notified() => self.start_due_fetches(),
                _ = ticker.tick() => self.start_due_fetches(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::fetch::*;

    /// A `jwks_file` pointing at an endless file is refused after one byte past the bound,
    /// not read until memory runs out.
    #[test]
    fn an_endless_jwks_file_is_refused_not_read_whole() {
        let refused = |path: &str| match read_file(std::path::Path::new(path), &ASYMMETRIC) {
            Ok(_) => panic!("{path} gave a key set"),
            Err(e) => e,
        };
        let err = refused("/dev/zero");
        assert!(err.contains("larger than"), "{err}");
        let err = refused("/nonexistent/jwks.json");
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn fetch_urls() {
        assert!(check_fetch_url("https://id.example.com/keys").is_ok());
        assert!(check_fetch_url("http://127.0.0.1:8080/keys").is_ok());
        assert!(check_fetch_url("http://localhost/keys").is_ok());
        assert!(check_fetch_url("http://id.example.com/keys").is_err());
        assert!(check_fetch_url("file:///etc/passwd").is_err());
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn each_hop_passes_the_rule_of_the_configured_url() {
        let https = url("https://id.example.com/keys");
        let local = url("http://127.0.0.1:8080/keys");
        assert!(check_hop(std::slice::from_ref(&local), &url("http://localhost:9/k")).is_ok());
        assert!(check_hop(std::slice::from_ref(&local), &https).is_ok());
        assert!(check_hop(
            std::slice::from_ref(&https),
            &url("https://cdn.example.net/k")
        )
        .is_ok());
        for (from, to) in [
            (&local, "http://198.18.0.2:8000/jwks.json"),
            (&local, "http://id.example.com/keys"),
            (&local, "file:///etc/passwd"),
            (&https, "http://id.example.com/keys"),
            // Plain http to loopback passes alone, but not after https.
            (&https, "http://127.0.0.1:8080/keys"),
        ] {
            assert!(
                check_hop(std::slice::from_ref(from), &url(to)).is_err(),
                "{from} -> {to}"
            );
        }
        // Anywhere after https in the chain, not only the hop just before.
        assert!(check_hop(&[https.clone(), local.clone()], &local).is_err());
        // The message shows no credentials or query a server put in the location.
        let why = check_hop(&[local], &url("http://user:pw@10.0.0.1/k?token=abc")).unwrap_err();
        assert!(why.contains("http://10.0.0.1/k"), "{why}");
        assert!(!why.contains("pw") && !why.contains("abc"), "{why}");
    }

    /// A loopback server where `/hop/N` redirects to `/hop/N-1` and `/hop/0` answers 200.
    async fn redirect_chain() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let n: u32 = path.trim_start_matches("/hop/").parse().unwrap_or(0);
                let answer = if n == 0 {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".into()
                } else {
                    format!(
                        "HTTP/1.1 302 Found\r\nlocation: /hop/{}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        n - 1
                    )
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_fetch_follows_at_most_max_redirects() {
        let addr = redirect_chain().await;
        let timeout = Duration::from_secs(5);
        let start = format!("http://{addr}/hop/{MAX_REDIRECTS}");
        let trust = Trust::default();
        let (body, _, from) = get(&trust, &start, timeout).await.unwrap();
        assert_eq!(body, b"{}");
        assert_eq!(from.path(), "/hop/0");
        let start = format!("http://{addr}/hop/{}", MAX_REDIRECTS + 1);
        let why = get(&trust, &start, timeout).await.unwrap_err();
        assert!(why.contains("more than 3 redirects"), "{why}");
    }

    #[tokio::test]
    async fn discovery_keeps_the_endpoints_that_pass_the_fetch_rule() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let iss = format!("http://{}", listener.local_addr().unwrap());
        let body = serde_json::json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}/jwks"),
            "authorization_endpoint": format!("{iss}/auth"),
            "token_endpoint": "https://id.example.com/token",
            // Plain http away from loopback, and not http at all: left out, the rest kept.
            "end_session_endpoint": "http://id.example.com/logout",
            "revocation_endpoint": "file:///etc/passwd",
        })
        .to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.read(&mut [0u8; 4096]).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        let config: IssuerConfig =
            serde_yaml::from_str(&format!("{{name: idp, issuer: '{iss}', discovery: true}}"))
                .unwrap();
        let issuer = Issuer::new(
            &config,
            KeySource::Discovery(iss.clone()),
            ASYMMETRIC.to_vec(),
            None,
            Trust::default(),
        )
        .unwrap();
        assert!(issuer.endpoints().is_none());
        let jwks = issuer.discover(&iss, Duration::from_secs(5)).await.unwrap();
        assert_eq!(jwks, format!("{iss}/jwks"));
        let found = issuer.endpoints().unwrap();
        assert_eq!(found.jwks_uri, jwks);
        assert_eq!(found.authorization, Some(url(&format!("{iss}/auth"))));
        assert_eq!(found.token, Some(url("https://id.example.com/token")));
        assert_eq!((&found.end_session, &found.revocation), (&None, &None));
        assert_eq!(found.introspection, None);
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), None);
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(parse_algorithm("rs256"), Some(Algorithm::RS256));
        assert_eq!(parse_algorithm("EdDSA"), Some(Algorithm::EdDSA));
        assert_eq!(parse_algorithm("none"), None);
    }
}
