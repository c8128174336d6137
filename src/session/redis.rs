//! The Redis side of sessions: session records (`store: redis`), the refresh lock and the
//! refresh grace records. Keys are `portcullis:session:…` with a SHA-256 of the id or of the
//! refresh token, never the value itself.
//!
//! One connection per session client, made on first use and again at most every
//! [`RETRY_EVERY`] after a failure; every command has [`TIMEOUT`]. A Redis that is down
//! makes each call fail fast: callers fall back (a refresh goes on in this node alone, a
//! session held in the process keeps serving).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

/// Time one command (or the connection) may take.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connection, the next try comes no sooner than this.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Renew a lock only while this node holds it.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Release a lock only while this node holds it.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";

/// A lazily connected Redis.
pub struct Redis {
    url: String,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// When the last failed connection was tried, in ms since `epoch` (0: never).
    failed_at: AtomicU64,
    epoch: Instant,
}

/// A Redis call failed (down, slow, or an error answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down;

impl Redis {
    /// A Redis at `url`, not connected yet.
    pub fn new(url: &str) -> Redis {
        Redis {
            url: url.to_string(),
            conn: tokio::sync::Mutex::new(None),
            failed_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    async fn connection(&self) -> Result<ConnectionManager, Down> {
        let failed = self.failed_at.load(Ordering::Relaxed);
        if failed != 0 && self.since_epoch().saturating_sub(failed) < RETRY_EVERY.as_millis() as u64
        {
            return Err(Down);
        }
        let mut held = self.conn.lock().await;
        if let Some(conn) = &*held {
            return Ok(conn.clone());
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|_| Down)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1);
        match tokio::time::timeout(
            TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(conn)) => {
                self.failed_at.store(0, Ordering::Relaxed);
                *held = Some(conn.clone());
                Ok(conn)
            }
            _ => {
                self.failed_at.store(self.since_epoch(), Ordering::Relaxed);
                Err(Down)
            }
        }
    }

    /// Run `cmd`, bounded by [`TIMEOUT`].
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Down> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            _ => {
                self.failed_at.store(self.since_epoch(), Ordering::Relaxed);
                Err(Down)
            }
        }
    }

    /// The value of `key`.
    ///
    /// # Errors
    /// [`Down`].
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Down> {
        self.run(redis::cmd("GET").arg(key)).await
    }

    /// Set `key` to `value` for `ttl`.
    ///
    /// # Errors
    /// [`Down`].
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Down> {
        let ms = ttl.as_millis().max(1) as u64;
        self.run(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ms))
            .await
    }

    /// Delete `key`.
    ///
    /// # Errors
    /// [`Down`].
    pub async fn delete(&self, key: &str) -> Result<(), Down> {
        self.run::<i64>(redis::cmd("DEL").arg(key))
            .await
            .map(|_| ())
    }

    /// Take the lock `key` for `lease`, as `holder`: whether this call got it.
    ///
    /// # Errors
    /// [`Down`].
    pub async fn lock(&self, key: &str, holder: &str, lease: Duration) -> Result<bool, Down> {
        let ms = lease.as_millis().max(1) as u64;
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(key)
                    .arg(holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Extend the lock `key` by `lease` if `holder` still has it: whether it did.
    ///
    /// # Errors
    /// [`Down`].
    pub async fn renew(&self, key: &str, holder: &str, lease: Duration) -> Result<bool, Down> {
        let ms = lease.as_millis().max(1) as u64;
        let renewed: i64 = self
            .run(
                redis::cmd("EVAL")
                    .arg(RENEW)
                    .arg(1)
                    .arg(key)
                    .arg(holder)
                    .arg(ms),
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Release the lock `key` if `holder` still has it.
    pub async fn unlock(&self, key: &str, holder: &str) {
        let _ = self
            .run::<i64>(redis::cmd("EVAL").arg(RELEASE).arg(1).arg(key).arg(holder))
            .await;
    }
}

/// Hex of SHA-256 of `bytes`, for a Redis key that does not hold the value it stands for.
pub fn digest_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
