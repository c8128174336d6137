//! Browser sessions and revocations.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, IntCounterVec};

/// `portcullis_session_revocations_total{kind}`: revocations made on this node (`POST /revoke`,
/// a session logout), by `kind` (`sub`, `sid`, `jti`); every kind from zero.
pub const SESSION_REVOCATIONS_TOTAL: &str = "portcullis_session_revocations_total";
/// `portcullis_session_revocation_entries`: revocations held now (made here or on other nodes).
pub const SESSION_REVOCATION_ENTRIES: &str = "portcullis_session_revocation_entries";
/// `portcullis_session_revocations_evicted_total`: revocations dropped before
/// `server.revocation_ttl` because the list was at `server.max_revocations`.
pub const SESSION_REVOCATIONS_EVICTED_TOTAL: &str = "portcullis_session_revocations_evicted_total";
/// `portcullis_session_revocations_unpublished`: revocations made here that Redis has not
/// taken yet (it was unreachable).
pub const SESSION_REVOCATIONS_UNPUBLISHED: &str = "portcullis_session_revocations_unpublished";
/// `portcullis_session_revocation_sync_up`: 1 while this node is subscribed to the fleet's
/// revocations in Redis.
pub const SESSION_REVOCATION_SYNC_UP: &str = "portcullis_session_revocation_sync_up";
/// `portcullis_session_revocation_sync_errors_total`: failed attempts to reach Redis for
/// revocations, and subscriptions lost.
pub const SESSION_REVOCATION_SYNC_ERRORS_TOTAL: &str =
    "portcullis_session_revocation_sync_errors_total";
/// `portcullis_session_logins_total{session,result}`: logins finished at the callback:
/// `success`, `denied` (the provider said no), `invalid` (state, code or ID token refused),
/// `error` (the provider could not be reached).
pub const SESSION_LOGINS_TOTAL: &str = "portcullis_session_logins_total";
/// `portcullis_session_refreshes_total{session,result}`: sessions refreshed: `success` (a
/// refresh token redeemed), `shared` (the result of another request's or node's redemption),
/// `invalid_grant` (the provider ended the session), `error` (unreachable, refused).
pub const SESSION_REFRESHES_TOTAL: &str = "portcullis_session_refreshes_total";
/// `portcullis_session_logouts_total{session,kind}`: sessions ended: `user` (the logout
/// path), `backchannel` (the provider's logout token), `expired` (idle or absolute timeout).
pub const SESSION_LOGOUTS_TOTAL: &str = "portcullis_session_logouts_total";
/// `portcullis_session_cache_requests_total{session,result}`: the in-process session cache,
/// `hit` or `miss` (a miss opens the cookie or reads Redis).
pub const SESSION_CACHE_REQUESTS_TOTAL: &str = "portcullis_session_cache_requests_total";
/// `portcullis_session_provider_calls_total{session,call,result}`: calls to the provider
/// (`token`, `refresh`, `revocation`), `success` or `error`; each has `provider_timeout`.
pub const SESSION_PROVIDER_CALLS_TOTAL: &str = "portcullis_session_provider_calls_total";

/// The browser-session metrics (registered with the others, kept apart for their labels).
pub struct SessionMetrics {
    /// See [`SESSION_LOGINS_TOTAL`].
    pub logins: IntCounterVec,
    /// See [`SESSION_REFRESHES_TOTAL`].
    pub refreshes: IntCounterVec,
    /// See [`SESSION_LOGOUTS_TOTAL`].
    pub logouts: IntCounterVec,
    /// See [`SESSION_CACHE_REQUESTS_TOTAL`].
    pub cache: IntCounterVec,
    /// See [`SESSION_PROVIDER_CALLS_TOTAL`].
    pub provider_calls: IntCounterVec,
}

/// Label values of each session family but the provider calls, every one present from zero.
const SESSION_LABELS: [&[&str]; 4] = [
    &["success", "denied", "invalid", "error"],
    &["success", "shared", "invalid_grant", "error"],
    &["user", "backchannel", "expired"],
    &["hit", "miss"],
];
/// The provider calls counted.
const SESSION_CALLS: [&str; 3] = ["token", "refresh", "revocation"];

/// The browser-session metrics.
pub static SESSION_METRICS: LazyLock<SessionMetrics> = LazyLock::new(|| {
    #[allow(clippy::expect_used)] // Names are constants: a clash is a bug found by any test.
    let counter = |name: &str, help: &str, labels: &[&str]| {
        register_int_counter_vec!(name, help, labels).expect("register session metric")
    };
    SessionMetrics {
        logins: counter(
            SESSION_LOGINS_TOTAL,
            "Logins finished at the callback, by session and result.",
            &["session", "result"],
        ),
        refreshes: counter(
            SESSION_REFRESHES_TOTAL,
            "Session refreshes, by session and result.",
            &["session", "result"],
        ),
        logouts: counter(
            SESSION_LOGOUTS_TOTAL,
            "Sessions ended, by session and kind.",
            &["session", "kind"],
        ),
        cache: counter(
            SESSION_CACHE_REQUESTS_TOTAL,
            "Lookups in the in-process session cache, by session and result.",
            &["session", "result"],
        ),
        provider_calls: counter(
            SESSION_PROVIDER_CALLS_TOTAL,
            "Calls to the identity provider, by session, call and result.",
            &["session", "call", "result"],
        ),
    }
});

impl SessionMetrics {
    fn families(&self) -> [&IntCounterVec; 4] {
        [&self.logins, &self.refreshes, &self.logouts, &self.cache]
    }

    /// Make every series of session client `name` exist, at zero.
    pub fn register(&self, name: &str) {
        for (family, values) in self.families().into_iter().zip(SESSION_LABELS) {
            for value in values {
                family.with_label_values(&[name, value]);
            }
        }
        for call in SESSION_CALLS {
            for result in ["success", "error"] {
                self.provider_calls.with_label_values(&[name, call, result]);
            }
        }
    }

    /// Drop every series of session client `name`.
    pub fn forget(&self, name: &str) {
        for (family, values) in self.families().into_iter().zip(SESSION_LABELS) {
            for value in values {
                let _ = family.remove_label_values(&[name, value]);
            }
        }
        for call in SESSION_CALLS {
            for result in ["success", "error"] {
                let _ = self
                    .provider_calls
                    .remove_label_values(&[name, call, result]);
            }
        }
    }

    /// Count one event of session client `name` in `family`.
    pub fn count(family: &IntCounterVec, name: &str, value: &str) {
        family.with_label_values(&[name, value]).inc();
    }
}
