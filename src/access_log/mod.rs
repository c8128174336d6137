//! The JSON access log: one line per request, buffered as nginx buffers its access log.
//!
//! Each worker thread formats its lines straight into a buffer of its own ([`line`]: no
//! allocation, no serde, no message per line across threads). A full buffer is handed whole
//! to the flusher thread, which also takes every thread's partial buffer on a short timer
//! ([`FLUSH_EVERY`]), so lines appear within that time at low load and in 64 KiB writes at
//! high load. The number of full buffers waiting for the flusher is bounded: when it falls
//! that far behind, lines are dropped and counted, never queued without end and never allowed
//! to stall a request. SIGUSR1 makes the flusher reopen the file (after logrotate renamed it).
//!
//! A line holds no header value but the `Host` and the `User-Agent`: no Authorization, no
//! cookie, no token; the path without its query string; of the identity only the claims the
//! config lists.

mod line;

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::AccessLogOutput;
use crate::metrics::access_log::{ReopenResult, ACCESS_LOG};
use crate::metrics::METRICS;

pub use line::MAX_HEADER_TEXT;

/// A thread's buffer is handed to the flusher once it holds this much.
const BUFFER: usize = 64 * 1024;
/// Full buffers that may wait for the flusher (4 MiB of lines); past that, lines are dropped.
const PENDING: usize = 64;
/// How often the flusher takes the threads' partial buffers.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// What one access line records.
pub struct AccessRecord<'a> {
    /// The request id sent to the client and upstream.
    pub request_id: &'a str,
    /// The W3C trace id of the request's span, once tracing makes one.
    pub trace_id: Option<&'a str>,
    /// The client address.
    pub client: Option<IpAddr>,
    /// The host asked for (`Host`, or the HTTP/2 `:authority`).
    pub host: &'a str,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// The client connection's TLS version (`TLSv1.3`), `None` for plain TCP.
    pub tls_version: Option<&'a str>,
    /// The route name, empty when none matched.
    pub route: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path, without the query.
    pub path: &'a str,
    /// Status sent, 0 when none.
    pub status: u16,
    /// The target that served it.
    pub upstream: Option<&'a str>,
    /// The status the last attempt's target answered, if it answered.
    pub upstream_status: Option<u16>,
    /// How long the last attempt took, start to end, if one was made.
    pub upstream_time: Option<Duration>,
    /// Time from request to end.
    pub duration: Duration,
    /// Response body bytes sent.
    pub bytes_sent: usize,
    /// Request body bytes read.
    pub bytes_received: usize,
    /// The client's `User-Agent`, as sent (cut at [`MAX_HEADER_TEXT`] bytes).
    pub user_agent: Option<&'a [u8]>,
    /// The claims the config lists, when the request has a verified identity.
    pub claims: Option<&'a dyn Claims>,
    /// Why Portcullis answered itself, when it did.
    pub reason: Option<&'static str>,
    /// What the edge cache did (`hit`, `miss`, `stale`, `expired`, `bypass`), on a cache route.
    pub cache: Option<&'static str>,
}

/// The claims a line records, without building a list per request.
pub trait Claims {
    /// Call `f` with each listed claim's name and value (`None` when the token lacks it).
    fn each(&self, f: &mut dyn FnMut(&str, Option<&str>));
}

/// The protocol's name for the `protocol` field.
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// rustls names versions `TLSv1_3`; the log says `TLSv1.3`, as nginx and OpenSSL do.
pub fn tls_version_name(rustls: &str) -> &str {
    match rustls {
        "TLSv1_3" => "TLSv1.3",
        "TLSv1_2" => "TLSv1.2",
        other => other,
    }
}

/// A handle to the access log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
}

/// One thread's buffer.
#[derive(Default)]
struct Slot {
    buf: Mutex<Vec<u8>>,
}

/// What the writing threads and the flusher share.
struct Shared {
    /// Tells this log's thread buffers from another's (tests start several logs).
    id: u64,
    /// Every thread's buffer, for the timer to take.
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Full buffers handed over, and emptied ones back for reuse.
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Flushes asked for, and done (the flusher sets it to what was asked when it started).
    flush_asked: AtomicU64,
    flushed: Mutex<u64>,
    flush_done: Condvar,
    reopen: AtomicBool,
}

#[derive(Default)]
struct Queue {
    full: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

/// The thread's buffer for the log of id `.0`, and its clock.
struct Local {
    log: u64,
    slot: Arc<Slot>,
    clock: line::Clock,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a buffer leaves a buffer of whole lines: keep using it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the flusher writes.
enum Out {
    Stdout,
    Stderr,
    File(std::fs::File, PathBuf),
}

impl Out {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Stdout => std::io::stdout().lock().write_all(bytes),
            Out::Stderr => std::io::stderr().lock().write_all(bytes),
            Out::File(f, _) => f.write_all(bytes),
        }
    }
}

fn open(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl AccessLog {
    /// Start the flusher for `output`.
    ///
    /// # Errors
    /// When the log file cannot be opened.
    pub fn start(output: &AccessLogOutput) -> std::io::Result<AccessLog> {
        ACCESS_LOG.init();
        let out = match output {
            AccessLogOutput::Off => return Ok(AccessLog { shared: None }),
            AccessLogOutput::Stdout => Out::Stdout,
            AccessLogOutput::Stderr => Out::Stderr,
            AccessLogOutput::File(path) => Out::File(open(path)?, path.clone()),
        };
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            slots: Mutex::default(),
            queue: Mutex::default(),
            wake: Condvar::new(),
            flush_asked: AtomicU64::new(0),
            flushed: Mutex::new(0),
            flush_done: Condvar::new(),
            reopen: AtomicBool::new(false),
        });
        let flusher = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || flusher.run(out))?;
        Ok(AccessLog {
            shared: Some(shared),
        })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Wait up to `timeout` for every line written so far to reach the output.
    pub fn flush(&self, timeout: Duration) {
        let Some(shared) = &self.shared else { return };
        let asked = shared.flush_asked.fetch_add(1, Ordering::SeqCst) + 1;
        shared.wake.notify_one();
        let deadline = Instant::now() + timeout;
        let mut flushed = lock(&shared.flushed);
        while *flushed < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            flushed = match shared.flush_done.wait_timeout(flushed, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Ask the flusher to reopen the file (what SIGUSR1 does): lines already buffered go to
    /// the file that was open, the next ones to the file now at the path.
    pub fn reopen(&self) {
        if let Some(shared) = &self.shared {
            shared.reopen.store(true, Ordering::SeqCst);
            shared.wake.notify_one();
        }
    }

    /// Reopen on every SIGUSR1, from a thread of its own; the handler is in place when this
    /// returns, so a SIGUSR1 (whose default action ends the process) never kills it.
    ///
    /// # Errors
    /// When the handler cannot be installed.
    pub fn reopen_on_sigusr1(&self) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut signal = rt.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        })?;
        let log = self.clone();
        std::thread::Builder::new()
            .name("access-log-sigusr1".into())
            .spawn(move || {
                rt.block_on(async {
                    while signal.recv().await.is_some() {
                        if log.enabled() {
                            log.reopen();
                        } else {
                            tracing::info!("SIGUSR1: the access log is off, nothing to reopen");
                        }
                    }
                });
            })?;
        Ok(())
    }

    /// Add one line to this thread's buffer.
    pub fn write(&self, r: &AccessRecord<'_>) {
        let Some(shared) = &self.shared else { return };
        // `try_with`: a thread that is exiting has no buffer any more; its line is lost.
        let _ = LOCAL.try_with(|local| {
            let Ok(mut local) = local.try_borrow_mut() else {
                return;
            };
            let local = match &mut *local {
                Some(l) if l.log == shared.id => l,
                other => other.insert(shared.register()),
            };
            let mut buf = lock(&local.slot.buf);
            if buf.len() >= BUFFER && !shared.hand_over(&mut buf) {
                // The flusher has not taken the full buffers yet: drop, do not wait.
                METRICS.access_log_dropped.inc();
                return;
            }
            line::write(&mut buf, &mut local.clock, r);
            if buf.len() >= BUFFER {
                shared.hand_over(&mut buf);
            }
        });
    }
}

impl Shared {
    fn register(&self) -> Local {
        let slot = Arc::new(Slot::default());
        lock(&self.slots).push(Arc::clone(&slot));
        Local {
            log: self.id,
            slot,
            clock: line::Clock::default(),
        }
    }

    /// Give the full `buf` to the flusher and put an empty one in its place; false when
    /// [`PENDING`] buffers already wait.
    fn hand_over(&self, buf: &mut Vec<u8>) -> bool {
        let mut q = lock(&self.queue);
        if q.full.len() >= PENDING {
            return false;
        }
        let empty = q
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER + 4096));
        q.full.push(std::mem::replace(buf, empty));
        drop(q);
        self.wake.notify_one();
        true
    }

    /// The flusher: write what the threads hand over, take their partial buffers every
    /// [`FLUSH_EVERY`] and when a flush is asked for, reopen when asked.
    fn run(&self, mut out: Out) {
        let mut full = Vec::new();
        let mut last_sweep = Instant::now();
        loop {
            let asked = {
                let mut q = lock(&self.queue);
                loop {
                    let asked = self.flush_asked.load(Ordering::SeqCst);
                    let waiting = asked > *lock(&self.flushed)
                        || !q.full.is_empty()
                        || self.reopen.load(Ordering::SeqCst)
                        || last_sweep.elapsed() >= FLUSH_EVERY;
                    if waiting {
                        std::mem::swap(&mut full, &mut q.full);
                        break asked;
                    }
                    let left = FLUSH_EVERY.saturating_sub(last_sweep.elapsed());
                    q = match self.wake.wait_timeout(q, left) {
                        Ok((g, _)) => g,
                        Err(e) => e.into_inner().0,
                    };
                }
            };
            let sweep = asked > *lock(&self.flushed)
                || self.reopen.load(Ordering::SeqCst)
                || last_sweep.elapsed() >= FLUSH_EVERY;
            if sweep {
                last_sweep = Instant::now();
                let slots = lock(&self.slots).clone();
                for slot in slots {
                    let mut buf = lock(&slot.buf);
                    if !buf.is_empty() {
                        let empty = lock(&self.queue).spare.pop().unwrap_or_default();
                        full.push(std::mem::replace(&mut *buf, empty));
                    }
                }
            }
            for buf in &full {
                if let Err(e) = out.write_all(buf) {
                    tracing::error!(error = %e, "cannot write the access log");
                }
            }
            {
                let mut q = lock(&self.queue);
                for mut buf in full.drain(..) {
                    if q.spare.len() < PENDING {
                        buf.clear();
                        q.spare.push(buf);
                    }
                }
            }
            if self.reopen.swap(false, Ordering::SeqCst) {
                reopen(&mut out);
            }
            let mut flushed = lock(&self.flushed);
            if asked > *flushed {
                *flushed = asked;
                self.flush_done.notify_all();
            }
        }
    }
}

/// Open the file at the path again, in place of the one open (logrotate renamed it); on a
/// failure keep writing to the old one.
fn reopen(out: &mut Out) {
    let Out::File(file, path) = out else {
        return;
    };
    match open(path) {
        Ok(new) => {
            *file = new;
            ACCESS_LOG.reopens(ReopenResult::Success);
            tracing::info!(path = %path.display(), "access log reopened");
        }
        Err(e) => {
            ACCESS_LOG.reopens(ReopenResult::Failure);
            tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log; still writing to the file open before");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> AccessRecord<'_> {
        AccessRecord {
            request_id: id,
            trace_id: None,
            client: None,
            host: "h",
            protocol: "HTTP/1.1",
            tls_version: None,
            route: "r",
            method: "GET",
            path: "/",
            status: 200,
            upstream: None,
            upstream_status: None,
            upstream_time: None,
            duration: Duration::ZERO,
            bytes_sent: 0,
            bytes_received: 0,
            user_agent: None,
            claims: None,
            reason: None,
            cache: None,
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_reopen_moves_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let log = AccessLog::start(&AccessLogOutput::File(path.clone())).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = log.clone();
                s.spawn(move || {
                    for i in 0..5000 {
                        log.write(&record(&format!("t{t}-{i}")));
                    }
                });
            }
        });
        log.flush(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 20_000);
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
        log.write(&record("before-reopen"));
        log.reopen();
        log.flush(Duration::from_secs(5));
        log.write(&record("after-reopen"));
        log.flush(Duration::from_secs(5));
        let old = std::fs::read_to_string(dir.path().join("a.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("before-reopen") && !new.contains("before-reopen"));
        assert_eq!(new.lines().count(), 1, "{new}");
        assert!(new.contains("after-reopen"));
    }
}
