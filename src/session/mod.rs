//! Browser sessions at the edge: OpenID Connect login (authorization code with PKCE),
//! sessions sealed into a cookie or kept in Redis behind an in-process cache, refresh that
//! redeems each refresh token once across a fleet, logout and back-channel logout.
//!
//! The proxy asks [`Sessions::endpoint`] whether a request is for one of the session
//! paths (callback, logout, back-channel logout) and, on a route that takes a session,
//! [`Client::authenticate`] for the identity. Neither logs a token, a code, a cookie value
//! or a secret.
//!
//! - [`seal`]: AEAD for every value that leaves the process (cookies, Redis records).
//! - [`cookie`]: reading, splitting and clearing the cookies.
//! - [`oidc`]: the calls to the provider (code, refresh, revocation) and the ID token check.
//! - [`flow`]: the login redirect and the callback: the answers Portcullis writes.
//! - [`serve`]: the session of each request (cache, store, timeouts, refresh).
//! - [`logout`]: logout and back-channel logout.
//! - [`refresh`]: one redemption per refresh token: in process, across nodes (a Redis lock
//!   with a renewed lease) and after the fact (a grace record of the result).
//! - [`redis`]: the Redis side of the store.

pub mod compile;
pub mod cookie;
pub mod flow;
pub mod logout;
pub mod oidc;
pub mod redis;
pub mod refresh;
pub mod seal;
pub mod serve;

use std::sync::Arc;

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::{Identity, Issuer, Projection};
use crate::config::{SessionConfig, SessionStore};
use crate::store::{Expiring, Store};

pub use flow::{Outcome, Reply};

/// One session, as sealed into the cookie or kept in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionData {
    /// The user (`sub` of the ID token).
    #[serde(rename = "s")]
    pub sub: String,
    /// The provider's session id (`sid` of the ID token), for back-channel logout.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The access token.
    #[serde(rename = "a")]
    pub access_token: String,
    /// When the access token expires, seconds since the epoch.
    #[serde(rename = "e")]
    pub access_exp: u64,
    /// The refresh token, when the provider gave one.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The ID token, for `id_token_hint` at logout.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The claims policies read: the ID token's, under the access token's when that is a
    /// JWT of the issuer.
    #[serde(rename = "c")]
    pub claims: Map<String, Value>,
    /// When the user logged in (the absolute timeout counts from here).
    #[serde(rename = "t")]
    pub created: u64,
    /// When the session was last used (the idle timeout counts from here), to a minute.
    #[serde(rename = "u")]
    pub last_used: u64,
}

/// A session decoded and checked, as the in-process cache holds it.
#[derive(Debug)]
pub struct Live {
    /// The session.
    pub data: SessionData,
    /// Its claims, reduced to the config's projection.
    pub identity: Identity,
    /// `Bearer <access token>`, for `forward_access_token`.
    pub bearer: Option<HeaderValue>,
    /// The store's id of the session (Redis), or `None` (cookie).
    pub id: Option<[u8; 32]>,
    /// Until when the cache may serve it without a look at the store or the provider: the
    /// time it is due for a refresh, or sooner.
    pub fresh_until: u64,
    /// When the session ends (idle or absolute timeout): the cache keeps it until then, to
    /// serve from when Redis is away.
    pub hard_until: u64,
}

impl Expiring for Arc<Live> {
    fn deadline(&self) -> u64 {
        self.hard_until
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    crate::auth::cache::unix_now()
}

/// What survives a reload of an unchanged session client: its cache of decoded sessions,
/// the refreshes under way and their recent results, its Redis connection.
pub struct Shared {
    /// Decoded sessions by a keyed hash of the cookie value (cookie store) or the id (Redis).
    pub cache: Store<Arc<Live>>,
    /// Refreshes in flight and recent results, by a hash of the refresh token redeemed.
    pub refreshes: refresh::Refreshes,
    /// Redis, for `store: redis` and the cross-node lock and grace records.
    pub redis: Option<redis::Redis>,
    hash: ahash::RandomState,
    key: SharedKey,
}

/// What a [`Shared`] depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedKey {
    name: String,
    store: SessionStore,
    redis: Option<String>,
    cache_sessions: usize,
    seal: [u8; 8],
    issuer_id: u64,
    projection: Arc<Projection>,
}

impl crate::carry::Carry for Shared {
    type Key = SharedKey;

    fn carry_key(&self) -> SharedKey {
        self.key.clone()
    }
}

impl Shared {
    /// The cache key of a cookie value or an id: a keyed hash of the whole value, and a
    /// second one of its last 32 bytes (a sealed value ends with its AEAD tag, an id is
    /// 43 bytes). 128 bits from one pass over a cookie of kilobytes.
    pub fn key(&self, bytes: &[u8]) -> u128 {
        let high = self.hash.hash_one(bytes);
        let tail = &bytes[bytes.len().saturating_sub(32)..];
        let low = self.hash.hash_one((bytes.len(), tail));
        (u128::from(high) << 64) | u128::from(low)
    }
}

/// A session client, compiled: one entry of `sessions:`.
pub struct Client {
    /// Its settings.
    pub config: SessionConfig,
    /// The issuer it logs in with (its endpoints and keys).
    pub issuer: Arc<Issuer>,
    /// The client secret, from `client_secret_env`.
    secret: Option<String>,
    /// Its cookie keys.
    pub sealer: seal::Sealer,
    /// The claims its identities hold.
    pub projection: Arc<Projection>,
    /// State kept across reloads.
    pub shared: Arc<Shared>,
    /// `session:NAME`, `login:NAME`, `redis:NAME`, `grace:NAME`: the associated data of each
    /// kind of sealed value.
    purposes: Purposes,
}

struct Purposes {
    session: Vec<u8>,
    login: Vec<u8>,
    record: Vec<u8>,
    grace: Vec<u8>,
}

impl Purposes {
    fn of(name: &str) -> Purposes {
        let p = |kind: &str| format!("{kind}:{name}").into_bytes();
        Purposes {
            session: p("session"),
            login: p("login"),
            record: p("redis"),
            grace: p("grace"),
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.config.name)
            .field("issuer", &self.issuer.name)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether `cookie` (a name) is one of this client's: never forwarded upstream.
    pub fn owns_cookie(&self, cookie: &[u8]) -> bool {
        cookie::is_session_cookie(cookie, &self.config.cookie.name)
    }
}

/// Every session client of a generation, and the paths they answer.
#[derive(Default)]
pub struct Sessions {
    /// In config order.
    pub clients: Vec<Arc<Client>>,
}

impl Sessions {
    /// The client named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Client>> {
        self.clients.iter().find(|c| c.config.name == name)
    }

    /// Whether any session client exists.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Remove every session cookie from the `Cookie` header the upstream gets.
    pub fn strip_cookies(&self, headers: &mut http::HeaderMap) {
        if self.clients.is_empty() {
            return;
        }
        cookie::strip(headers, |name| {
            self.clients.iter().any(|c| c.owns_cookie(name))
        });
    }

    /// The commit step of a reload: the session metrics' series of the clients it has.
    pub fn commit(&self, old: Option<&Sessions>) {
        let m = &*crate::metrics::SESSION_METRICS;
        for client in &self.clients {
            m.register(client.name());
        }
        for gone in old
            .into_iter()
            .flat_map(|o| o.clients.iter())
            .filter(|o| self.get(o.name()).is_none())
        {
            m.forget(gone.name());
        }
    }
}
