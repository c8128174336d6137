//! Cluster-wide limits: every node keeps local buckets and, every `sync_interval`, reports
//! its admissions to Redis in one atomic script and takes back the cluster's view of each
//! bucket. No request waits on Redis.
//!
//! Over-admission is bounded: between two syncs a node knows only its own traffic, so the
//! cluster admits at most `(nodes - 1) x (burst + rate x sync_interval)` more than the limit.
//! When Redis is down or slow each node falls back to its share of the limit (rate and burst
//! divided by the last known node count), logs it, shows it in metrics, and goes back to
//! shared limits by itself when Redis answers again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::gcra::now_ns;
use super::Limiter;
use crate::config::ClusterConfig;
use crate::metrics::METRICS;

/// Adds each key's admissions to its shared TAT (microseconds on Redis's clock) and returns
/// how far ahead of now each TAT is. Keys expire once their bucket would be full again.
const SYNC: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[i + 1])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  tat = tat + n * emission
  redis.call('SET', key, tat, 'PX', math.floor((tat - now) / 1000) + 1000)
  out[i] = tat - now
end
return out
"#;

/// Registers this node and counts the nodes seen within the last few intervals.
const NODES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"#;

/// Keys sent to Redis in one script call.
const BATCH: usize = 256;

/// What cluster sync needs of the serving generation: the `cluster:` settings and the
/// cluster-scoped limiters.
#[derive(Default)]
pub struct ClusterPart {
    /// `cluster:`; `None`: nothing to sync.
    pub cluster: Option<ClusterConfig>,
    /// The limiters with `scope: cluster`.
    pub limiters: Vec<Arc<Limiter>>,
}

/// The background service that syncs cluster-scoped buckets.
pub struct ClusterSync {
    part: Arc<arc_swap::ArcSwap<ClusterPart>>,
    node: String,
}

impl ClusterSync {
    /// Sync the limiters of `part`, as each reload publishes it.
    pub fn new(part: Arc<arc_swap::ArcSwap<ClusterPart>>) -> Self {
        Self {
            part,
            node: format!("{:016x}", fastrand::u64(..)),
        }
    }
}

fn redis_key(l: &Limiter, key: u128) -> String {
    format!("portcullis:rl:{}:{}:{key:032x}", l.route, l.kind.name())
}

struct Connection {
    url: String,
    manager: redis::aio::ConnectionManager,
}

async fn connect(url: &str, timeout: Duration) -> Result<Connection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1);
    let manager = tokio::time::timeout(
        timeout * 2,
        redis::aio::ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| "timed out connecting".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(Connection {
        url: url.to_string(),
        manager,
    })
}

fn set_connected(limiters: &[Arc<Limiter>], up: bool, nodes: Option<u64>) {
    for l in limiters {
        if let Some(c) = &l.cluster {
            c.connected.store(up, Ordering::Relaxed);
            if !up {
                // Nothing to report while Redis is away: keep the list from growing.
                let dirty = std::mem::take(&mut *c.dirty.lock().unwrap_or_else(|p| p.into_inner()));
                for key in dirty {
                    l.with_bucket(key, |b| b.pending.store(0, Ordering::Relaxed));
                }
            }
            if let Some(n) = nodes {
                c.nodes.store(n.max(1), Ordering::Relaxed);
            }
        }
    }
}

/// One sync round over `limiters`.
async fn sync_once(
    conn: &mut redis::aio::ConnectionManager,
    node: &str,
    interval: Duration,
    limiters: &[Arc<Limiter>],
) -> Result<u64, redis::RedisError> {
    let window_ms = (interval.as_millis() as u64 * 5).max(1000);
    let nodes: u64 = redis::Script::new(NODES)
        .key("portcullis:nodes")
        .arg(node)
        .arg(window_ms)
        .invoke_async(conn)
        .await?;
    let script = redis::Script::new(SYNC);
    for limiter in limiters {
        let Some(share) = &limiter.cluster else {
            continue;
        };
        let dirty = std::mem::take(&mut *share.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        let emission_us = (limiter.configured_shape().emission_ns / 1000).max(1);
        for (i, chunk) in dirty.chunks(BATCH).enumerate() {
            let mut call = script.prepare_invoke();
            call.arg(emission_us);
            for key in chunk {
                // Counted from here on belongs to the next round. A bucket dropped since
                // (full again) has nothing to report.
                let n = limiter
                    .with_bucket(*key, |b| b.pending.swap(0, Ordering::Relaxed))
                    .unwrap_or(0);
                call.key(redis_key(limiter, *key)).arg(n);
            }
            let ahead: Vec<i64> = match call.invoke_async(conn).await {
                Ok(v) => v,
                Err(e) => {
                    // The node falls back to its local share; what it admitted meanwhile is
                    // not replayed into Redis later.
                    for key in &dirty[i * BATCH..] {
                        limiter.with_bucket(*key, |b| b.pending.store(0, Ordering::Relaxed));
                    }
                    return Err(e);
                }
            };
            let now = now_ns();
            let emission = limiter.configured_shape().emission_ns;
            for (key, ahead_us) in chunk.iter().zip(ahead) {
                let ahead_ns = u64::try_from(ahead_us).unwrap_or(0).saturating_mul(1000);
                limiter.with_bucket(*key, |bucket| {
                    // Admissions since the script ran are not in Redis's answer yet.
                    let since = u64::from(bucket.pending.load(Ordering::Relaxed));
                    bucket.set_ahead(now, ahead_ns.saturating_add(since.saturating_mul(emission)));
                });
            }
        }
    }
    Ok(nodes)
}

#[async_trait]
impl BackgroundService for ClusterSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut conn: Option<Connection> = None;
        let mut up = false;
        loop {
            let part = self.part.load_full();
            let Some(cluster) = part.cluster.clone() else {
                drop(part);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            let interval = cluster.sync_interval.0;
            let limiters = part.limiters.clone();
            drop(part);
            let timeout = interval.max(Duration::from_millis(250));
            if conn.as_ref().is_none_or(|c| c.url != cluster.redis) {
                conn = match connect(&cluster.redis, timeout).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        if up || METRICS.cluster_up.get() != 0 {
                            tracing::error!(error = %e, "Redis unreachable: cluster limits fall back to each node's share");
                        }
                        None
                    }
                };
            }
            let result = match conn.as_mut() {
                Some(c) => tokio::time::timeout(
                    timeout * 2,
                    sync_once(&mut c.manager, &self.node, interval, &limiters),
                )
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
                None => Err("not connected".to_string()),
            };
            match result {
                Ok(nodes) => {
                    if !up {
                        tracing::info!(nodes, "Redis reachable: cluster limits shared again");
                    }
                    up = true;
                    set_connected(&limiters, true, Some(nodes));
                    METRICS.cluster_up.set(1);
                    METRICS
                        .cluster_nodes
                        .set(i64::try_from(nodes).unwrap_or(i64::MAX));
                }
                Err(e) => {
                    if up {
                        tracing::error!(error = %e, "Redis sync failed: cluster limits fall back to each node's share");
                    }
                    up = false;
                    set_connected(&limiters, false, None);
                    METRICS.cluster_up.set(0);
                    METRICS.cluster_sync_errors.inc();
                    if conn.is_some() && e == "timed out" {
                        conn = None;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
