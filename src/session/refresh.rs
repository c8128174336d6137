//! Refresh without logouts: each refresh token is redeemed once, however many requests,
//! tabs or nodes find the access token due at the same moment.
//!
//! Providers that rotate refresh tokens and detect reuse (Keycloak, Okta, Auth0, Dex,
//! `oidc-provider`) revoke the whole grant when a redeemed refresh token comes back, and
//! the user is logged out. So, keyed by a hash of the refresh token being redeemed:
//!
//! 1. **In this process**, one redemption at a time: the first request redeems, the others
//!    wait for its result ([`Refreshes`]).
//! 2. **Across nodes**, a Redis lock (`SET NX PX`) whose lease is renewed every third of
//!    [`LEASE`] while the provider call runs, so a slow provider never lets it lapse (the
//!    fixed-TTL lock of oauth2-proxy can): a node that does not get it waits for the
//!    holder's result.
//! 3. **After the fact**, the result is kept sealed for `refresh_grace` (here and in Redis)
//!    under the same hash: a racing node, a second tab or a stale cookie that still holds
//!    the old refresh token gets the new tokens instead of redeeming the old one again.
//!
//! Redis down: steps 2 and 3 are skipped across nodes, and each node still redeems once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::oidc::CallError;
use super::redis::{digest_hex, Down};
use super::{now, Client, SessionData};
use crate::metrics::{SessionMetrics, SESSION_METRICS};
use crate::store::{Expiring, Store};

/// The lease of the cross-node lock; renewed every third of it while the call runs.
pub const LEASE: Duration = Duration::from_secs(3);
/// How often a node waiting for another's refresh looks for its result.
const POLL: Duration = Duration::from_millis(50);
/// Most refreshes in flight at once on a node (more wait for none and fail as unavailable).
const MAX_IN_FLIGHT: usize = 10_000;

/// Why a session could not be refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    /// The provider refused the refresh token (`invalid_grant`): the session is over.
    Ended,
    /// The provider (or the node holding the lock) did not answer in time.
    Unavailable,
}

type Outcome = Result<Arc<SessionData>, RefreshError>;

/// A recent result, kept for `refresh_grace`: the refreshed session, or that the provider
/// ended it (so that requests still holding the dead refresh token do not ask again).
struct Recent {
    outcome: Outcome,
    until: u64,
}

impl Expiring for Recent {
    fn deadline(&self) -> u64 {
        self.until
    }
}

/// This node's refreshes: those in flight and the recent results.
pub struct Refreshes {
    in_flight: Mutex<HashMap<u128, watch::Receiver<Option<Outcome>>>>,
    recent: Store<Recent>,
}

impl Refreshes {
    /// Room for `max` recent results.
    pub fn new(max: u64) -> Refreshes {
        Refreshes {
            in_flight: Mutex::new(HashMap::new()),
            recent: Store::new(max, 10),
        }
    }

    fn recent(&self, key: u128) -> Option<Outcome> {
        let now = now();
        self.recent
            .get(key, |r| (r.until > now).then(|| r.outcome.clone()))
            .flatten()
    }
}

/// Removes the in-flight entry when the leader is done, or dropped mid-way (its request
/// cancelled): the waiters then see the channel closed and fail as unavailable.
struct Leading<'a> {
    refreshes: &'a Refreshes,
    key: u128,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.refreshes
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

enum Role {
    Lead(watch::Sender<Option<Outcome>>),
    Wait(watch::Receiver<Option<Outcome>>),
}

impl Client {
    fn count_refresh(&self, result: &str) {
        SessionMetrics::count(&SESSION_METRICS.refreshes, self.name(), result);
    }

    /// The session `old` with fresh tokens, redeeming its refresh token at most once across
    /// this node and (with Redis) the fleet.
    ///
    /// # Errors
    /// [`RefreshError`].
    pub async fn refresh(&self, old: &SessionData) -> Outcome {
        let Some(token) = old.refresh_token.as_deref() else {
            return Err(RefreshError::Ended);
        };
        let refreshes = &self.shared.refreshes;
        let key = self.shared.key(token.as_bytes());
        if let Some(done) = refreshes.recent(key) {
            if done.is_ok() {
                self.count_refresh("shared");
            }
            return done;
        }
        let role = {
            let mut in_flight = refreshes
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match in_flight.get(&key) {
                Some(rx) => Role::Wait(rx.clone()),
                None if in_flight.len() >= MAX_IN_FLIGHT => return Err(RefreshError::Unavailable),
                None => {
                    let (tx, rx) = watch::channel(None);
                    in_flight.insert(key, rx);
                    Role::Lead(tx)
                }
            }
        };
        match role {
            Role::Wait(mut rx) => {
                let wait = self.config.provider_timeout.0 * 2 + LEASE;
                let result = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
                let outcome = match result {
                    Ok(Ok(outcome)) => outcome.clone().unwrap_or(Err(RefreshError::Unavailable)),
                    _ => Err(RefreshError::Unavailable),
                };
                if outcome.is_ok() {
                    self.count_refresh("shared");
                }
                outcome
            }
            Role::Lead(tx) => {
                let _leading = Leading { refreshes, key };
                let outcome = self.lead(old, token).await;
                if !matches!(outcome, Err(RefreshError::Unavailable)) {
                    let until = now().saturating_add(self.config.refresh_grace.0.as_secs());
                    let recent = Recent {
                        outcome: outcome.clone(),
                        until,
                    };
                    refreshes.recent.insert(key, recent, now());
                }
                let _ = tx.send(Some(outcome.clone()));
                outcome
            }
        }
    }

    /// The leader's part: the fleet's grace record, the lock, the redemption.
    async fn lead(&self, old: &SessionData, token: &str) -> Outcome {
        let Some(redis) = &self.shared.redis else {
            return self.redeem(old, token).await;
        };
        let hash = digest_hex(token.as_bytes());
        let grace_key = format!("portcullis:session:grace:{}:{hash}", self.name());
        let lock_key = format!("portcullis:session:lock:{}:{hash}", self.name());
        let holder = match super::seal::random::<16>() {
            Some(bytes) => digest_hex(&bytes),
            None => return Err(RefreshError::Unavailable),
        };
        let deadline = Instant::now() + self.config.provider_timeout.0 * 2 + LEASE;
        loop {
            match self.grace_record(redis, &grace_key).await {
                Ok(Some(session)) => {
                    self.count_refresh("shared");
                    return Ok(Arc::new(session));
                }
                Ok(None) => {}
                // Redis is away: this node refreshes once on its own.
                Err(Down) => return self.redeem(old, token).await,
            }
            match redis.lock(&lock_key, &holder, LEASE).await {
                Ok(true) => break,
                Ok(false) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(false) => return Err(RefreshError::Unavailable),
                Err(Down) => return self.redeem(old, token).await,
            }
        }
        // Another node may have finished between our look and our lock.
        if let Ok(Some(session)) = self.grace_record(redis, &grace_key).await {
            redis.unlock(&lock_key, &holder).await;
            self.count_refresh("shared");
            return Ok(Arc::new(session));
        }
        let renew = async {
            loop {
                tokio::time::sleep(LEASE / 3).await;
                if !matches!(redis.renew(&lock_key, &holder, LEASE).await, Ok(true)) {
                    // Lost (Redis away, or expired): keep going; the grace record still
                    // tells late comers, and the provider call is already under way.
                    std::future::pending::<()>().await;
                }
            }
        };
        let outcome = tokio::select! {
            outcome = self.redeem(old, token) => outcome,
            () = renew => Err(RefreshError::Unavailable),
        };
        if let Ok(session) = &outcome {
            if let Ok(json) = serde_json::to_vec(&**session) {
                if let Some(sealed) = self.sealer.seal(&self.purposes.grace, &json) {
                    let _ = redis
                        .set(&grace_key, sealed.as_bytes(), self.config.refresh_grace.0)
                        .await;
                }
            }
        }
        redis.unlock(&lock_key, &holder).await;
        outcome
    }

    async fn grace_record(
        &self,
        redis: &super::redis::Redis,
        key: &str,
    ) -> Result<Option<SessionData>, Down> {
        Ok(redis.get(key).await?.and_then(|sealed| {
            let json = self.sealer.open(&self.purposes.grace, &sealed)?;
            serde_json::from_slice(&json).ok()
        }))
    }

    /// Redeem the refresh token at the provider and build the refreshed session.
    async fn redeem(&self, old: &SessionData, token: &str) -> Outcome {
        let tokens = match self.redeem_refresh(token).await {
            Ok(tokens) => tokens,
            Err(CallError::InvalidGrant) => {
                self.count_refresh("invalid_grant");
                tracing::info!(session = %self.name(), "refresh token refused (invalid_grant): session ended");
                return Err(RefreshError::Ended);
            }
            Err(e) => {
                self.count_refresh("error");
                tracing::warn!(session = %self.name(), error = %e, "session refresh failed");
                return Err(RefreshError::Unavailable);
            }
        };
        let id_claims = match &tokens.id_token {
            Some(id_token) => match self.check_id_token(id_token, None).await {
                // OpenID Connect Core 12.2: the same user.
                Ok(claims) if claims.get("sub").and_then(|s| s.as_str()) == Some(&old.sub) => {
                    claims
                }
                Ok(_) => {
                    self.count_refresh("error");
                    tracing::warn!(session = %self.name(), "refreshed ID token names another user");
                    return Err(RefreshError::Ended);
                }
                Err(why) => {
                    self.count_refresh("error");
                    tracing::warn!(session = %self.name(), %why, "refreshed ID token refused");
                    return Err(RefreshError::Unavailable);
                }
            },
            None => old.claims.clone(),
        };
        let claims = self.session_claims(id_claims, &tokens).await;
        self.count_refresh("success");
        Ok(Arc::new(SessionData {
            sub: old.sub.clone(),
            sid: old.sid.clone(),
            access_exp: access_expiry(&tokens, &claims),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token.or_else(|| old.refresh_token.clone()),
            id_token: tokens.id_token.or_else(|| old.id_token.clone()),
            claims,
            created: old.created,
            last_used: now(),
        }))
    }
}

/// When an access token expires: `expires_in` from now, else the JWT's `exp` (in `claims`
/// when it was one), else five minutes.
pub fn access_expiry(
    tokens: &super::oidc::Tokens,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> u64 {
    match tokens.expires_in {
        Some(secs) => now().saturating_add(secs),
        None => claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| now().saturating_add(300)),
    }
}
