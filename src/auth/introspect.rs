//! Opaque access tokens: RFC 7662 token introspection at an issuer's introspection endpoint.
//!
//! A bearer token that is not a JWT ([`super::token::looks_like_jwt`]) on a route whose
//! issuers include one with `introspection:` is POSTed to that issuer's endpoint with the
//! client's credentials; the answer becomes an [`Identity`] of the same projection as a JWT's,
//! so the route's policies apply to it unchanged.
//!
//! - **Cache.** Answers are kept in a bounded [`Store`] by a keyed 128-bit hash of the token
//!   (never the token): an active one until the earlier of its `exp` and `cache_ttl`, a
//!   refusal for [`NEGATIVE_TTL_SECS`]. Past `max_tokens` the answers nearest their end go.
//! - **Single flight.** One call per token at a time: requests that meet a call in flight wait
//!   for its answer. If the request that made the call goes away, a waiting one takes over.
//! - **Failures.** An endpoint that cannot be reached, times out, answers other than 200 or
//!   sends something that is not an RFC 7662 answer is [`AuthError::IntrospectionUnavailable`]
//!   (503): never a pass, and never a 401 that would make a client drop a good token. A
//!   failure is not cached.
//!
//! The call carries the token and the client secret: it follows no redirect, and nothing here
//! logs either (nor the answer's claims).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use base64::Engine;
use http::HeaderValue;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::cache::unix_now;
use super::fetch::{redacted, without_url};
use super::identity::{Identity, Projection};
use super::issuer::Issuer;
use super::token::{audience_matches, numeric_date};
use super::{AuthError, TokenFault};
use crate::config::IntrospectionConfig;
use crate::metrics::METRICS;
use crate::store::{Expiring, Store};

/// How long a refusal (`active: false`, or an active token refused here) is remembered.
pub const NEGATIVE_TTL_SECS: u64 = 5;
/// Largest introspection answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How often the cache's shards are swept for ended answers, seconds.
const SWEEP_EVERY_SECS: u64 = 10;
/// Least time between two log lines about failed calls of one issuer, milliseconds.
const WARN_EVERY_MS: u64 = 10_000;

/// What the endpoint said of a token, as kept in the cache.
#[derive(Debug, Clone)]
enum Answer {
    /// Active, with its claims; it counts until `Identity::until`.
    Active(Identity),
    /// Refused for this reason (`inactive` for `active: false`), until then (seconds).
    Refused(TokenFault, u64),
}

impl Expiring for Answer {
    fn deadline(&self) -> u64 {
        match self {
            Answer::Active(identity) => identity.until(),
            Answer::Refused(_, until) => *until,
        }
    }
}

impl Answer {
    fn result(&self) -> Result<Identity, AuthError> {
        match self {
            Answer::Active(identity) => Ok(identity.clone()),
            Answer::Refused(fault, _) => Err(AuthError::InvalidToken(*fault)),
        }
    }
}

/// One call's outcome, shared by every request that waited for it.
type Outcome = Result<Answer, ()>;

/// The metric series of one introspecting issuer, made at the commit or at first use.
struct Series {
    active: prometheus::IntCounter,
    inactive: prometheus::IntCounter,
    error: prometheus::IntCounter,
    hit: prometheus::IntCounter,
    miss: prometheus::IntCounter,
}

/// Results of `portcullis_session_introspections_total`.
pub const CALL_RESULTS: [&str; 3] = ["active", "inactive", "error"];
/// Results of `portcullis_session_introspection_cache_requests_total`.
pub const CACHE_RESULTS: [&str; 2] = ["hit", "miss"];

/// Introspection for one issuer: its settings, its cache and its calls in flight.
pub struct Introspector {
    /// The issuer whose tokens it checks (for its endpoints, HTTP client, `iss`, audiences
    /// and leeway).
    pub issuer: Arc<Issuer>,
    /// The configured endpoint; `None`: the one discovery found.
    endpoint: Option<reqwest::Url>,
    /// `Basic ...` of the client id and secret, marked sensitive.
    authorization: HeaderValue,
    secret_fingerprint: u64,
    cache_ttl: u64,
    timeout: Duration,
    /// The settings it was built with.
    pub config: IntrospectionConfig,
    projection: Arc<Projection>,
    answers: Store<Answer>,
    low: ahash::RandomState,
    high: ahash::RandomState,
    in_flight: Mutex<HashMap<u128, Arc<OnceCell<Outcome>>>>,
    last_warn_ms: AtomicU64,
    series: OnceLock<Series>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.issuer.name)
            .field("endpoint", &self.endpoint.as_ref().map(redacted))
            .finish_non_exhaustive()
    }
}

/// An introspector is kept across a reload, with its cache, while its issuer is (every
/// setting of it unchanged, `introspection:` included), its secret is the same and the
/// routes read the same claims.
impl crate::carry::Carry for Introspector {
    type Key = (u64, u64, Arc<Projection>);

    fn carry_key(&self) -> Self::Key {
        (
            self.issuer.id,
            self.secret_fingerprint,
            Arc::clone(&self.projection),
        )
    }
}

/// A fingerprint of the client secret, to tell a changed secret on reload.
pub fn secret_fingerprint(secret: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    secret.hash(&mut h);
    h.finish()
}

/// RFC 6749 section 2.3.1: the client id and secret, each form-urlencoded, as HTTP Basic.
fn basic(client_id: &str, secret: &str) -> HeaderValue {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret));
    let text = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    // Base64 is always a valid header value.
    let mut value = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

impl Introspector {
    /// An introspector for `issuer` with `config` (already checked), `endpoint` (the checked
    /// configured one, if any) and the client `secret` read from the environment.
    pub fn new(
        issuer: Arc<Issuer>,
        config: &IntrospectionConfig,
        endpoint: Option<reqwest::Url>,
        secret: &str,
        projection: Arc<Projection>,
    ) -> Introspector {
        Introspector {
            issuer,
            endpoint,
            authorization: basic(&config.client_id, secret),
            secret_fingerprint: secret_fingerprint(secret),
            cache_ttl: config.cache_ttl.0.as_secs(),
            timeout: config.timeout.0,
            config: config.clone(),
            projection,
            answers: Store::new(config.max_tokens, SWEEP_EVERY_SECS),
            low: ahash::RandomState::new(),
            high: ahash::RandomState::new(),
            in_flight: Mutex::new(HashMap::new()),
            last_warn_ms: AtomicU64::new(0),
            series: OnceLock::new(),
        }
    }

    /// The carry key a new introspector for `issuer` with `secret` and `projection` has.
    pub fn carry_key_of(
        issuer: &Issuer,
        secret: &str,
        projection: &Arc<Projection>,
    ) -> (u64, u64, Arc<Projection>) {
        (
            issuer.id,
            secret_fingerprint(secret),
            Arc::clone(projection),
        )
    }

    fn series(&self) -> &Series {
        self.series.get_or_init(|| {
            let m = &*METRICS;
            let name = self.issuer.name.as_str();
            let call = |r: &str| m.introspections.with_label_values(&[name, r]);
            let cache = |r: &str| m.introspection_cache.with_label_values(&[name, r]);
            Series {
                active: call("active"),
                inactive: call("inactive"),
                error: call("error"),
                hit: cache("hit"),
                miss: cache("miss"),
            }
        })
    }

    /// Make its series (at zero), at the commit of the generation that has it.
    pub fn register(&self) {
        let _ = self.series();
    }

    /// Drop the series of introspecting issuer `name`.
    pub fn forget(name: &str) {
        let m = &*METRICS;
        for r in CALL_RESULTS {
            let _ = m.introspections.remove_label_values(&[name, r]);
        }
        for r in CACHE_RESULTS {
            let _ = m.introspection_cache.remove_label_values(&[name, r]);
        }
        let _ = m.introspection_cache_entries.remove_label_values(&[name]);
    }

    /// Answers held (after a sweep of the shards due one).
    pub fn len(&self) -> usize {
        self.answers.sweep_due(unix_now());
        self.answers.len()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(&self, token: &str) -> u128 {
        (u128::from(self.high.hash_one(token)) << 64) | u128::from(self.low.hash_one(token))
    }

    fn cached(&self, key: u128) -> Option<Answer> {
        let now = unix_now();
        self.answers
            .get(key, |a| (a.deadline() > now).then(|| a.clone()))
            .flatten()
    }

    /// Check opaque `token` (well formed, within the size bound): from the cache, or by the
    /// one call in flight for it, or by a new call.
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`] when the endpoint says it is not active (`inactive`) or its
    /// claims fail the issuer's checks; [`AuthError::IntrospectionUnavailable`] when no answer
    /// could be had.
    pub async fn check(&self, token: &str) -> Result<Identity, AuthError> {
        let key = self.key(token);
        if let Some(answer) = self.cached(key) {
            self.series().hit.inc();
            return answer.result();
        }
        self.series().miss.inc();
        let cell = {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match in_flight.get(&key) {
                Some(cell) => Arc::clone(cell),
                None => {
                    // A call that ended between the look above and this lock has cached its
                    // answer before leaving the map: look again, under the lock.
                    if let Some(answer) = self.cached(key) {
                        return answer.result();
                    }
                    let cell = Arc::new(OnceCell::new());
                    in_flight.insert(key, Arc::clone(&cell));
                    cell
                }
            }
        };
        let waiting = Waiting {
            map: &self.in_flight,
            key,
            cell: Some(cell),
        };
        let cell = waiting
            .cell
            .as_ref()
            .ok_or(AuthError::IntrospectionUnavailable)?;
        let outcome = cell.get_or_init(|| self.call_and_keep(key, token)).await;
        match outcome {
            Ok(answer) => answer.result(),
            Err(()) => Err(AuthError::IntrospectionUnavailable),
        }
    }

    /// Make the call, count it, and cache its answer (before the call leaves the map, see
    /// [`Introspector::check`]).
    async fn call_and_keep(&self, key: u128, token: &str) -> Outcome {
        let series = self.series();
        match self.call(token).await {
            Ok(claims) => {
                let now = unix_now();
                let answer = match self.judge(&claims, now) {
                    Ok(answer) => answer,
                    Err(why) => {
                        series.error.inc();
                        self.warn(&why);
                        return Err(());
                    }
                };
                match &answer {
                    Answer::Active(_) => series.active.inc(),
                    Answer::Refused(..) => series.inactive.inc(),
                }
                if answer.deadline() > now {
                    self.answers.insert(key, answer.clone(), now);
                }
                Ok(answer)
            }
            Err(why) => {
                series.error.inc();
                self.warn(&why);
                Err(())
            }
        }
    }

    /// Log a failed call, at most once per [`WARN_EVERY_MS`] for this issuer.
    fn warn(&self, why: &str) {
        let now = unix_now().saturating_mul(1000);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(issuer = %self.issuer.name, error = %why, "token introspection failed");
        }
    }

    /// The endpoint: the configured one, or the one discovery found.
    fn endpoint(&self) -> Result<reqwest::Url, String> {
        if let Some(url) = &self.endpoint {
            return Ok(url.clone());
        }
        match self.issuer.endpoints() {
            None => Err("the issuer's discovery document has not been read yet".into()),
            Some(found) => found.introspection.clone().ok_or_else(|| {
                "the discovery document names no usable introspection_endpoint".into()
            }),
        }
    }

    /// POST the token; the answer's JSON object, or why there is none. The error text names
    /// the endpoint without user, password or query, and never the token.
    async fn call(&self, token: &str) -> Result<Map<String, Value>, String> {
        let url = self.endpoint()?;
        let shown = redacted(&url);
        let client = self
            .issuer
            .client_without_redirects()
            .ok_or("HTTP client unavailable")?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let call = async {
            let mut resp = client
                .post(url)
                .header(http::header::AUTHORIZATION, self.authorization.clone())
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header(http::header::ACCEPT, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| format!("POST {shown}: {}", without_url(&e)))?;
            if resp.status() != reqwest::StatusCode::OK {
                return Err(format!("POST {shown}: status {}", resp.status()));
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("POST {shown}: {}", without_url(&e)))?
            {
                if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!(
                        "POST {shown}: answer larger than {MAX_ANSWER_BYTES} bytes"
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
            serde_json::from_slice::<Map<String, Value>>(&bytes)
                .map_err(|_| format!("POST {shown}: the answer is not a JSON object"))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("POST {shown}: timed out after {:?}", self.timeout))?
    }

    /// What an answer means. `Err` for an answer that is not RFC 7662's (`active` not a
    /// boolean, a date not a number): the endpoint is broken, which is not the token's fault.
    fn judge(&self, claims: &Map<String, Value>, now: u64) -> Result<Answer, String> {
        let refused_until = now.saturating_add(NEGATIVE_TTL_SECS.min(self.cache_ttl));
        let refused = |fault| Ok(Answer::Refused(fault, refused_until));
        match claims.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return refused(TokenFault::Inactive),
            _ => return Err("the answer has no boolean `active`".into()),
        }
        // Only access tokens: a refresh token (which some providers introspect as active,
        // with its own `token_type`) is not a bearer credential.
        if let Some(kind) = claims.get("token_type").and_then(Value::as_str) {
            if !kind.eq_ignore_ascii_case("bearer") && !kind.eq_ignore_ascii_case("access_token") {
                return refused(TokenFault::Inactive);
            }
        }
        let issuer = &self.issuer;
        if let Some(iss) = claims.get("iss") {
            if iss.as_str() != Some(issuer.iss.as_str()) {
                return refused(TokenFault::UntrustedIssuer);
            }
        }
        let date = |name: &str| -> Result<Option<u64>, String> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => numeric_date(v)
                    .map(Some)
                    .ok_or_else(|| format!("the answer's `{name}` is not a date")),
            }
        };
        let exp = date("exp")?;
        if exp.is_some_and(|exp| exp < now.saturating_sub(issuer.leeway)) {
            return refused(TokenFault::Expired);
        }
        if date("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(issuer.leeway)) {
            return refused(TokenFault::NotYetValid);
        }
        let audiences = &issuer.config.audiences;
        if !audiences.is_empty() {
            match claims
                .get("aud")
                .and_then(|a| audience_matches(a, audiences))
            {
                None => return refused(TokenFault::MissingClaim),
                Some(false) => return refused(TokenFault::BadAudience),
                Some(true) => {}
            }
        }
        let until = now
            .saturating_add(self.cache_ttl)
            .min(exp.unwrap_or(u64::MAX));
        Ok(Answer::Active(Identity::project(
            claims,
            &self.projection,
            issuer.id,
            0,
            until,
        )))
    }
}

/// A request's place among those waiting for one call: when it leaves (answered, or gone with
/// its client), the call leaves the map once it has answered or nobody else waits for it.
struct Waiting<'a> {
    map: &'a Mutex<HashMap<u128, Arc<OnceCell<Outcome>>>>,
    key: u128,
    cell: Option<Arc<OnceCell<Outcome>>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(cell) = self.cell.take() else { return };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's reference and this one: nobody else waits. Counted and dropped under the
        // lock, which every new waiter takes to join.
        let alone = Arc::strong_count(&cell) <= 2;
        if (cell.initialized() || alone)
            && map.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            map.remove(&self.key);
        }
        drop(cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_are_form_encoded_then_basic() {
        // RFC 6749 section 2.3.1: `a b:c` encodes as `a+b%3Ac` before base64.
        let value = basic("a b:c", "s&=%");
        assert!(value.is_sensitive());
        let text = value.to_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"a+b%3Ac:s%26%3D%25");
    }

    /// An endpoint on loopback that counts calls and answers each, after `delay`, with an
    /// active token of `sub` alice.
    async fn slow_endpoint(delay: Duration) -> (reqwest::Url, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/introspect", listener.local_addr().unwrap());
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !String::from_utf8_lossy(&seen).contains("token_type_hint") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let body = r#"{"active":true,"sub":"alice"}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        (reqwest::Url::parse(&url).unwrap(), calls)
    }

    fn introspector(endpoint: reqwest::Url) -> Introspector {
        let issuer: crate::config::IssuerConfig =
            serde_yaml::from_str("{name: idp, issuer: idp, jwks_uri: 'https://idp.example/k'}")
                .unwrap();
        let issuer = Issuer::new(
            &issuer,
            super::super::KeySource::Uri("https://idp.example/k".into()),
            super::super::issuer::ASYMMETRIC.to_vec(),
            None,
            super::super::fetch::Trust::default(),
        )
        .unwrap();
        let config: IntrospectionConfig =
            serde_yaml::from_str("{client_id: edge, client_secret_env: UNUSED}").unwrap();
        let mut projection = Projection::default();
        let sub = projection.slot_for("sub");
        assert_eq!(sub, 0);
        Introspector::new(
            Arc::new(issuer),
            &config,
            Some(endpoint),
            "secret",
            Arc::new(projection),
        )
    }

    async fn wait_for(calls: &std::sync::atomic::AtomicUsize, n: usize) {
        while calls.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn in_flight(x: &Introspector) -> usize {
        x.in_flight.lock().unwrap().len()
    }

    /// The request that made the call goes away (its client hung up): a request waiting for
    /// the same token makes the call in its place and gets the answer; nothing stays behind
    /// in the map of calls in flight, whoever leaves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_request_takes_over_a_call_whose_request_went_away() {
        let (url, calls) = slow_endpoint(Duration::from_millis(300)).await;
        let x = Arc::new(introspector(url));
        let first = tokio::spawn({
            let x = Arc::clone(&x);
            async move { x.check("tok").await }
        });
        wait_for(&calls, 1).await;
        let second = tokio::spawn({
            let x = Arc::clone(&x);
            async move { x.check("tok").await }
        });
        // The second joins the call in flight (it does not make its own).
        while Arc::strong_count(x.in_flight.lock().unwrap().get(&x.key("tok")).unwrap()) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        first.abort();
        let identity = second.await.unwrap().unwrap();
        assert_eq!(identity.claim(0), Some("alice"));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the waiting request called again"
        );
        assert_eq!(in_flight(&x), 0);
        assert_eq!(x.len(), 1);
        // A request alone that goes away leaves nothing behind either.
        let alone = tokio::spawn({
            let x = Arc::clone(&x);
            async move { x.check("other").await }
        });
        wait_for(&calls, 3).await;
        alone.abort();
        let _ = alone.await;
        assert_eq!(in_flight(&x), 0);
        // And the cached token makes no call.
        assert!(x.check("tok").await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn jwt_shape() {
        use super::super::token::looks_like_jwt;
        assert!(looks_like_jwt(b"a.b.c"));
        assert!(looks_like_jwt(b".."));
        for opaque in [&b"abc"[..], b"a.b", b"a.b.c.d", b"2YotnFZFEjr1zCsicMWpAA"] {
            assert!(!looks_like_jwt(opaque));
        }
    }
}
