//! A session on each request: found in the process's cache, or opened from the cookie or
//! read from Redis, checked against its timeouts and revocations, refreshed when its access
//! token is due, and written back (a new cookie, the Redis record) when it changed.

use std::sync::Arc;

use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;

use super::cookie;
use super::flow::{b64, Outcome};
use super::redis::digest_hex;
use super::refresh::RefreshError;
use super::{now, Client, Live, SessionData};
use crate::auth::Identity;
use crate::config::SessionStore;
use crate::metrics::{SessionMetrics, SESSION_METRICS};

/// A Redis session read from the store is served from the process for at most this long
/// before it is read again (a logout on another node reaches this one by then at the latest).
pub const REDIS_RECHECK: u64 = 30;

impl Client {
    /// Seconds a session may still live from `now`: its idle and absolute limits.
    pub(super) fn lifetime(&self, data: &SessionData, now: u64) -> u64 {
        let idle = data
            .last_used
            .saturating_add(self.config.idle_timeout.0.as_secs());
        let absolute = data
            .created
            .saturating_add(self.config.absolute_timeout.0.as_secs());
        idle.min(absolute).saturating_sub(now)
    }

    /// How often a session's `last_used` is written again (idle timeout): a tenth of the
    /// idle timeout, between 1 s and a minute.
    fn touch_every(&self) -> u64 {
        (self.config.idle_timeout.0.as_secs() / 10).clamp(1, 60)
    }

    /// Store `data` (under `id` for Redis, a new one when `None`) and give the cookies
    /// that carry it; `held` parts of an older cookie are cleared. `None` when it cannot be
    /// stored (Redis down, too large for the cookies).
    pub(super) async fn save(
        &self,
        data: &SessionData,
        id: Option<[u8; 32]>,
        held: usize,
    ) -> Option<Vec<HeaderValue>> {
        let now = now();
        let max_age = self.lifetime(data, now);
        let json = serde_json::to_vec(data).ok()?;
        let mut stored_id = None;
        let value = match self.config.store {
            SessionStore::Cookie => self.sealer.seal(&self.purposes.session, &json)?,
            SessionStore::Redis => {
                let id = match id {
                    Some(id) => id,
                    None => super::seal::random::<32>()?,
                };
                stored_id = Some(id);
                let sealed = self.sealer.seal(&self.purposes.record, &json)?;
                let redis = self.shared.redis.as_ref()?;
                let ttl = std::time::Duration::from_secs(max_age.max(1));
                redis
                    .set(&self.record_key(&id), sealed.as_bytes(), ttl)
                    .await
                    .ok()?;
                b64(&id)
            }
        };
        let cookies = cookie::set(
            &self.config.cookie,
            self.cookie_name(),
            &value,
            max_age,
            held,
        );
        if cookies.is_none() {
            tracing::warn!(session = %self.name(), bytes = value.len(), "session too large for its cookies: use `store: redis`");
        }
        // The browser's next request, with this cookie, is served from the process.
        let live = self.live(data.clone(), stored_id, now);
        self.shared
            .cache
            .insert(self.shared.key(value.as_bytes()), live, now);
        cookies
    }

    fn record_key(&self, id: &[u8; 32]) -> String {
        format!("portcullis:session:{}:{}", self.name(), digest_hex(id))
    }

    fn live(&self, data: SessionData, id: Option<[u8; 32]>, now: u64) -> Arc<Live> {
        let identity = Identity::project(
            &data.claims,
            &self.projection,
            self.issuer.id,
            0,
            data.access_exp,
        );
        let bearer = HeaderValue::from_str(&format!("Bearer {}", data.access_token)).ok();
        let due = data
            .access_exp
            .saturating_sub(self.config.refresh_before.0.as_secs());
        let mut fresh_until = due.min(data.last_used.saturating_add(self.touch_every()));
        if id.is_some() {
            fresh_until = fresh_until.min(now.saturating_add(REDIS_RECHECK));
        }
        Arc::new(Live {
            identity,
            bearer,
            id,
            fresh_until,
            hard_until: now.saturating_add(self.lifetime(&data, now)),
            data,
        })
    }

    /// The session of this request, refreshed when its access token is due.
    /// `revoked` says whether a session was revoked (by `sub`, `sid`, before a time).
    pub async fn authenticate(
        &self,
        req: &RequestHeader,
        revoked: &(dyn Fn(&SessionData) -> bool + Sync),
    ) -> Outcome {
        let (value, held) = cookie::read(&req.headers, self.cookie_name());
        let Some(value) = value else {
            let cookies = if held > 0 {
                cookie::clear(&self.config.cookie, self.cookie_name(), held)
            } else {
                Vec::new()
            };
            return Outcome::None { cookies };
        };
        let shared = &self.shared;
        let key = shared.key(&value);
        let now = now();
        let cached = shared.cache.get(key, Arc::clone);
        if let Some(live) = cached
            .as_ref()
            .filter(|l| l.fresh_until > now && l.hard_until > now)
        {
            SessionMetrics::count(&SESSION_METRICS.cache, self.name(), "hit");
            if revoked(&live.data) {
                shared.cache.remove(key);
                return self.ended(held, "revoked");
            }
            return Outcome::Pass {
                live: Arc::clone(live),
                cookies: Vec::new(),
            };
        }
        SessionMetrics::count(&SESSION_METRICS.cache, self.name(), "miss");
        // The store's copy; with Redis away, the one this process holds.
        let (data, id) = match self.load(&value).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                shared.cache.remove(key);
                return self.ended(held, "unknown");
            }
            Err(()) => match cached {
                Some(live) if live.hard_until > now => (live.data.clone(), live.id),
                _ => return Outcome::Unavailable,
            },
        };
        if self.lifetime(&data, now) == 0 {
            shared.cache.remove(key);
            SessionMetrics::count(&SESSION_METRICS.logouts, self.name(), "expired");
            return self.ended(held, "expired");
        }
        if revoked(&data) {
            shared.cache.remove(key);
            return self.ended(held, "revoked");
        }
        let due = data.access_exp <= now.saturating_add(self.config.refresh_before.0.as_secs());
        let mut data = data;
        let mut changed = false;
        if due {
            match self.refresh(&data).await {
                Ok(fresh) => {
                    data = SessionData {
                        last_used: now,
                        ..(*fresh).clone()
                    };
                    changed = true;
                }
                Err(RefreshError::Ended) => {
                    shared.cache.remove(key);
                    self.forget(&data, id).await;
                    return self.ended(held, "refresh refused");
                }
                // The old access token still works: serve it, refresh on a later request.
                Err(RefreshError::Unavailable) if data.access_exp > now => {}
                Err(RefreshError::Unavailable) => return Outcome::Unavailable,
            }
        }
        if now.saturating_sub(data.last_used) >= self.touch_every() {
            data.last_used = now;
            changed = true;
        }
        let mut cookies = Vec::new();
        if changed {
            match self.config.store {
                SessionStore::Cookie => {
                    if let Some(set) = self.save(&data, None, held).await {
                        cookies = set;
                    }
                }
                // Written back; with Redis away the process keeps the new tokens.
                SessionStore::Redis => {
                    if let Some(id) = id {
                        let _ = self.save(&data, Some(id), held).await;
                    }
                }
            }
        }
        let live = self.live(data, id, now);
        shared.cache.insert(key, Arc::clone(&live), now);
        Outcome::Pass { live, cookies }
    }

    /// The session a cookie value stands for: `Ok(None)` when there is none (a cookie that
    /// does not open, an id Redis does not hold), `Err` when Redis cannot be read.
    pub(super) async fn load(
        &self,
        value: &[u8],
    ) -> Result<Option<(SessionData, Option<[u8; 32]>)>, ()> {
        match self.config.store {
            SessionStore::Cookie => Ok(self
                .sealer
                .open(&self.purposes.session, value)
                .and_then(|json| serde_json::from_slice(&json).ok())
                .map(|data| (data, None))),
            SessionStore::Redis => {
                let Some(id) = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(value)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                else {
                    return Ok(None);
                };
                let redis = self.shared.redis.as_ref().ok_or(())?;
                let sealed = redis.get(&self.record_key(&id)).await.map_err(|_| ())?;
                Ok(sealed
                    .and_then(|s| self.sealer.open(&self.purposes.record, &s))
                    .and_then(|json| serde_json::from_slice(&json).ok())
                    .map(|data| (data, Some(id))))
            }
        }
    }

    fn ended(&self, held: usize, why: &str) -> Outcome {
        tracing::debug!(session = %self.name(), why, "no usable session");
        Outcome::None {
            cookies: cookie::clear(&self.config.cookie, self.cookie_name(), held),
        }
    }

    /// Drop a session from the store.
    pub(super) async fn forget(&self, _data: &SessionData, id: Option<[u8; 32]>) {
        if let (Some(id), Some(redis)) = (id, &self.shared.redis) {
            let _ = redis.delete(&self.record_key(&id)).await;
        }
    }
}
