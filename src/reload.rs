//! Live reload: the `ArcSwap` that holds the serving [`Generation`], and the triggers that
//! replace it (SIGHUP, a change of the file, `POST /reload`).
//!
//! A new config is read, parsed, validated and fully built before the swap; a broken one is
//! refused and changes nothing. Requests hold their own snapshot, so nothing in flight sees
//! a half-applied config and no connection is touched. Listeners, the admin address, the
//! thread count and the access log destination are bound at start: a reload that changes
//! them applies everything else and logs that those need a restart.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{self, Config, ConfigError};
use crate::generation::{Generation, Parts};
use crate::metrics::METRICS;

pub mod history;

pub use history::{History, ReloadRecord};

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new config is invalid; the old one keeps serving.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

struct State {
    generation: u64,
    /// Hash of the text last loaded or tried, so the file watcher retries only on a change.
    seen: u64,
}

/// Holds the config now serving and replaces it on reload.
pub struct Reloader {
    path: PathBuf,
    current: ArcSwap<Generation>,
    /// What the background services read, published after each swap.
    parts: Parts,
    state: Mutex<State>,
    /// The last reloads, for the status page.
    history: History,
}

fn hash_of(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Reloader {
    /// Load the config at `path` as generation 1.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid config.
    pub fn from_file(path: &Path) -> Result<Reloader, ConfigError> {
        let text = config::read(path)?;
        let generation = Generation::compile(&text, Some(path), None, 1)?;
        METRICS.generation.set(1);
        for result in ["success", "failure"] {
            METRICS.reloads.with_label_values(&[result]);
        }
        generation.commit(None);
        let history = History::default();
        history.push("start", 1, None);
        Ok(Reloader {
            history,
            path: path.to_path_buf(),
            parts: Parts::of(&generation),
            current: ArcSwap::from_pointee(generation),
            state: Mutex::new(State {
                generation: 1,
                seen: hash_of(&text),
            }),
        })
    }

    /// The config now serving. A request keeps the `Arc` for its whole life.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The parts of the serving generation that background services watch.
    pub fn parts(&self) -> &Parts {
        &self.parts
    }

    /// The last reloads (the load at start first, while it is among them), oldest first.
    pub fn history(&self) -> Vec<ReloadRecord> {
        self.history.recent()
    }

    /// Reload from the file now; `trigger` names the cause in the log.
    ///
    /// # Errors
    /// [`ReloadError`]; the config serving before keeps serving.
    pub fn reload(&self, trigger: &str) -> Result<u64, ReloadError> {
        let result = config::read(&self.path).and_then(|text| self.apply(&text));
        self.record(trigger, result)
    }

    /// Reload only if the file's content changed since the last load or attempt.
    pub fn reload_if_changed(&self) -> Option<Result<u64, ReloadError>> {
        // A file that cannot be read right now (being replaced) is tried again next time.
        let text = std::fs::read_to_string(&self.path).ok()?;
        if self.lock().seen == hash_of(&text) {
            return None;
        }
        let result = self.apply(&text);
        Some(self.record("file change", result))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, text: &str) -> Result<u64, ConfigError> {
        let mut state = self.lock();
        state.seen = hash_of(text);
        let old = self.current.load_full();
        let next = Generation::compile(text, Some(&self.path), Some(&old), state.generation + 1)?;
        warn_restart_needed(&old.config, &next.config);
        let generation = next.number;
        let next = Arc::new(next);
        self.current.store(Arc::clone(&next));
        self.parts.publish(&next);
        next.commit(Some(&old));
        state.generation = generation;
        Ok(generation)
    }

    fn record(&self, trigger: &str, result: Result<u64, ConfigError>) -> Result<u64, ReloadError> {
        match result {
            Ok(generation) => {
                METRICS.reloads.with_label_values(&["success"]).inc();
                METRICS
                    .generation
                    .set(i64::try_from(generation).unwrap_or(i64::MAX));
                tracing::info!(trigger, generation, "config reloaded");
                self.history.push(trigger, generation, None);
                Ok(generation)
            }
            Err(e) => {
                METRICS.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(trigger, error = %e, "config reload refused; the previous config keeps serving");
                self.history.push(trigger, self.current().number, Some(&e));
                Err(e.into())
            }
        }
    }
}

fn warn_restart_needed(old: &Config, new: &Config) {
    let mut fixed = Vec::new();
    // A listener's certificate files are read again at each reload (crate::tls); its
    // address, and whether it serves TLS at all, are bound at start.
    let bound = |c: &Config| -> Vec<(String, bool)> {
        c.listeners
            .iter()
            .map(|l| (l.address.clone(), l.tls.is_some()))
            .collect()
    };
    if bound(old) != bound(new) {
        fixed.push("listeners");
    }
    if old.admin != new.admin {
        fixed.push("admin");
    }
    if old.server.threads != new.server.threads
        || old.server.grace_period != new.server.grace_period
    {
        fixed.push("server.threads/grace_period");
    }
    if old.access_log.output != new.access_log.output {
        fixed.push("access_log.path");
    }
    if !fixed.is_empty() {
        tracing::warn!(
            fields = ?fixed,
            "these settings changed but take effect only after a restart"
        );
    }
}

/// Reloads on SIGHUP and when the config file changes (polled every second, by content, so
/// that atomic renames and symlink swaps such as Kubernetes ConfigMaps are seen).
pub struct ConfigWatcher {
    reloader: Arc<Reloader>,
    poll: Duration,
}

impl ConfigWatcher {
    /// Watch for `reloader`'s file.
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self {
            reloader,
            poll: Duration::from_secs(1),
        }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload by file or admin only");
                None
            }
        };
        let mut ticker = tokio::time::interval(self.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sighup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup => {
                    let _ = self.reloader.reload("SIGHUP");
                }
                _ = ticker.tick() => {
                    let _ = self.reloader.reload_if_changed();
                }
            }
        }
    }
}
