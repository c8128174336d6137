//! Sharing revocations across the fleet through `cluster.redis`.
//!
//! Each node keeps a subscription to the channel [`CHANNEL`] and a connection for commands.
//! A revocation made on a node is applied there first ([`super::Revocations::revoke`]), then
//! this service runs one script that keeps it in the sorted set [`KEY`] (member
//! `kind:id`, score the time it took effect) and publishes it on the channel, so every
//! subscribed node applies it within a round trip. The set is trimmed to
//! `server.revocation_ttl` and `server.max_revocations` and expires `revocation_ttl` after its
//! last write, so it never outlives what it protects against.
//!
//! On every (re)connection the node subscribes first, then sends what waited while Redis was
//! away, writes back every entry it holds (so a Redis that lost its data gets the fleet's
//! list again) and loads the whole set: a node that was down, or starts later, refuses what
//! was revoked meanwhile. A Redis that does not answer a ping within [`TIMEOUT`] counts as
//! down; the node keeps its own list, keeps revoking locally, and retries every second.
//!
//! Nothing here runs on the request path; no revoked id is logged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;

use super::{Kind, Revocation, Revocations};
use crate::metrics::METRICS;

/// The sorted set of revocations.
pub const KEY: &str = "portcullis:revocations";
/// The channel revocations are published on.
pub const CHANNEL: &str = "portcullis:revocations";
/// Longest wait for a connection, a command or a ping.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Revocations written in one script call.
const BATCH: usize = 256;

/// Keeps each `(member, at)` with the later time, publishes the message of each that has
/// one, then drops what is past the TTL or over the cap and sets the set's expiry.
/// ARGV: ttl, now, max, channel, then (member, at, message) triples.
const PERSIST: &str = r#"
local key = KEYS[1]
local ttl, now, max, channel = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local i = 5
while i + 2 <= #ARGV do
  local member, at, message = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local held = redis.call('ZSCORE', key, member)
  if not held or tonumber(held) < at then
    redis.call('ZADD', key, at, member)
  end
  if message ~= '' then
    redis.call('PUBLISH', channel, message)
  end
  i = i + 3
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - ttl)
redis.call('ZREMRANGEBYRANK', key, 0, -(max + 1))
if redis.call('EXISTS', key) == 1 then
  redis.call('EXPIRE', key, ttl)
end
return redis.call('ZCARD', key)
"#;

/// The background service.
pub struct RevocationSync {
    revocations: Arc<Revocations>,
    /// Whether the last attempt failed, so an outage is logged once.
    failing: std::sync::atomic::AtomicBool,
}

impl RevocationSync {
    /// Share `revocations` through the Redis its settings name, as each reload publishes them.
    pub fn new(revocations: Arc<Revocations>) -> Self {
        Self {
            revocations,
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Why a connected spell ended without an error.
enum Ended {
    Shutdown,
    /// `cluster.redis` changed (or went): connect again.
    Changed,
}

async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

/// A revocation as it travels: `kind:id` in the set, JSON on the channel.
fn member(kind: Kind, value: &str) -> String {
    format!("{}:{value}", kind.label())
}

fn parse_member(member: &str) -> Option<(Kind, &str)> {
    let (kind, value) = member.split_once(':')?;
    let kind = Kind::from_label(kind)?;
    Revocation::new(kind, value).check().ok()?;
    Some((kind, value))
}

fn message(kind: Kind, value: &str, at: u64) -> String {
    json!({ "kind": kind.label(), "value": value, "at": at }).to_string()
}

fn parse_message(payload: &[u8]) -> Option<(Kind, Arc<str>, u64)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let kind = Kind::from_label(v.get("kind")?.as_str()?)?;
    let value = v.get("value")?.as_str()?;
    Revocation::new(kind, value).check().ok()?;
    Some((kind, Arc::from(value), v.get("at")?.as_u64()?))
}

impl RevocationSync {
    /// Write `entries` (`kind`, id, time, whether to publish) to the set, in batches.
    async fn persist(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        entries: &[(Kind, Arc<str>, u64, bool)],
    ) -> Result<(), String> {
        let part = self.revocations.part();
        let script = redis::Script::new(PERSIST);
        for chunk in entries.chunks(BATCH) {
            let mut call = script.prepare_invoke();
            call.key(KEY)
                .arg(part.ttl.as_secs().max(1))
                .arg(super::unix_now())
                .arg(part.max_entries.max(1))
                .arg(CHANNEL);
            for (kind, value, at, publish) in chunk {
                call.arg(member(*kind, value)).arg(*at).arg(if *publish {
                    message(*kind, value, *at)
                } else {
                    String::new()
                });
            }
            within("write revocations", call.invoke_async::<u64>(conn)).await?;
        }
        Ok(())
    }

    /// Send what was revoked here and Redis has not taken yet.
    async fn flush(&self, conn: &mut redis::aio::MultiplexedConnection) -> Result<(), String> {
        loop {
            let batch = self.revocations.outgoing(BATCH);
            let Some(last) = batch.last().map(|o| o.seq) else {
                return Ok(());
            };
            let entries: Vec<_> = batch
                .into_iter()
                .map(|o| (o.kind, o.value, o.at, true))
                .collect();
            self.persist(conn, &entries).await?;
            self.revocations.sent(last);
        }
    }

    /// After a (re)connection: send what waited, write back what this node holds, and take
    /// the whole set.
    async fn merge(&self, conn: &mut redis::aio::MultiplexedConnection) -> Result<usize, String> {
        self.flush(conn).await?;
        let held: Vec<_> = self
            .revocations
            .entries()
            .into_iter()
            .map(|(kind, value, at)| (kind, value, at, false))
            .collect();
        self.persist(conn, &held).await?;
        let floor = super::unix_now().saturating_sub(self.revocations.part().ttl.as_secs());
        let set: Vec<(String, f64)> = within(
            "load revocations",
            redis::cmd("ZRANGEBYSCORE")
                .arg(KEY)
                .arg(format!("({floor}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .query_async(conn),
        )
        .await?;
        let entries = set.iter().filter_map(|(m, at)| {
            let (kind, value) = parse_member(m)?;
            // Scores are whole seconds written by nodes; a fraction would be a foreign write.
            Some((kind, Arc::from(value), at.max(0.0) as u64))
        });
        Ok(self.revocations.apply(entries.collect::<Vec<_>>()))
    }

    /// One spell connected to `url`, until it fails, the settings change or shutdown.
    async fn connected(&self, url: &str, shutdown: &mut ShutdownWatch) -> Result<Ended, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut conn = within(
            "connect",
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let (mut sink, mut stream) = within("connect", client.get_async_pubsub()).await?.split();
        within("subscribe", sink.subscribe(CHANNEL)).await?;
        // Subscribed before loading: nothing published from here on is missed.
        let loaded = self.merge(&mut conn).await?;
        METRICS.session_revocation_sync_up.set(1);
        self.failing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            loaded,
            held = self.revocations.len(),
            "revocations shared through Redis"
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(Ended::Shutdown),
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Err("the subscription was closed".into());
                    };
                    match parse_message(msg.get_payload_bytes()) {
                        Some(entry) => {
                            self.revocations.apply([entry]);
                        }
                        None => tracing::warn!("a message on the revocation channel was not a revocation; ignored"),
                    }
                }
                _ = self.revocations.outbox_ready.notified() => self.flush(&mut conn).await?,
                _ = tick.tick() => {
                    self.revocations.sweep();
                    if self.revocations.part().redis.as_deref() != Some(url) {
                        return Ok(Ended::Changed);
                    }
                    within("ping", sink.ping::<redis::Value>()).await?;
                    self.flush(&mut conn).await?;
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for RevocationSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.revocations.sweep();
            let Some(url) = self.revocations.part().redis.clone() else {
                // No Redis to send them to: revocations are this node's alone.
                self.revocations.discard_outgoing();
                METRICS.session_revocation_sync_up.set(0);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            match self.connected(&url, &mut shutdown).await {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::Changed) => {
                    METRICS.session_revocation_sync_up.set(0);
                    continue;
                }
                Err(error) => {
                    METRICS.session_revocation_sync_up.set(0);
                    METRICS.session_revocation_sync_errors.inc();
                    if !self
                        .failing
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::error!(
                            %error,
                            "revocations not shared: Redis unreachable; this node still applies \
                             its own and sends them when Redis answers"
                        );
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_messages_round_trip() {
        assert_eq!(member(Kind::Sid, "a:b"), "sid:a:b");
        assert_eq!(parse_member("sid:a:b"), Some((Kind::Sid, "a:b")));
        assert_eq!(parse_member("nope:a"), None);
        assert_eq!(parse_member("sub:"), None, "an empty id is no revocation");
        let m = message(Kind::Jti, "t-1", 42);
        let (kind, value, at) = parse_message(m.as_bytes()).unwrap();
        assert_eq!((kind, &*value, at), (Kind::Jti, "t-1", 42));
        assert!(parse_message(b"{\"kind\":\"sub\",\"value\":\"x\"}").is_none());
        assert!(parse_message(b"not json").is_none());
    }
}
