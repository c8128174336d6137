//! The JSON access log: one line per request.
//!
//! Lines are built on the request path and handed to a writer thread through a bounded
//! channel; when the writer falls behind, lines are dropped and counted, never queued without
//! end and never allowed to stall a request. A line holds no header values: no
//! Authorization, no cookie, no token, and the path without its query string.

use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::AccessLogConfig;
use crate::metrics::METRICS;

/// Lines that may wait for the writer.
const QUEUE: usize = 16 * 1024;

/// What one access line records.
pub struct AccessRecord<'a> {
    /// The request id sent to the client and upstream.
    pub request_id: &'a str,
    /// The client address.
    pub client: Option<IpAddr>,
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
    /// Time from request to end.
    pub duration: Duration,
    /// Response body bytes sent.
    pub bytes_sent: usize,
    /// Request body bytes read.
    pub bytes_received: usize,
    /// Why Portcullis answered itself, when it did.
    pub reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    client: Option<IpAddr>,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    upstream: Option<&'a str>,
    duration_ms: f64,
    bytes_sent: usize,
    bytes_received: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// A handle to the access log writer; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Msg>>,
}

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

impl AccessLog {
    /// Start the writer for `config`.
    ///
    /// # Errors
    /// When the log file cannot be opened.
    pub fn start(config: &AccessLogConfig) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match config {
            AccessLogConfig::Off => return Ok(AccessLog { tx: None }),
            AccessLogConfig::Stdout => Box::new(std::io::stdout()),
            AccessLogConfig::Stderr => Box::new(std::io::stderr()),
            AccessLogConfig::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                let mut acks = Vec::new();
                while let Ok(msg) = rx.recv() {
                    let mut next = Some(msg);
                    // Write all that is queued, then flush: lines appear promptly at low load
                    // and in batches at high load.
                    while let Some(msg) = next {
                        match msg {
                            Msg::Line(line) => {
                                let _ = out.write_all(&line);
                            }
                            Msg::Flush(ack) => acks.push(ack),
                        }
                        next = rx.try_recv().ok();
                    }
                    let _ = out.flush();
                    for ack in acks.drain(..) {
                        let _ = ack.send(());
                    }
                }
            })?;
        Ok(AccessLog { tx: Some(tx) })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Wait up to `timeout` for every queued line to be written out.
    pub fn flush(&self, timeout: Duration) {
        let Some(tx) = &self.tx else { return };
        let (ack, done) = sync_channel(1);
        if tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(timeout);
        }
    }

    /// Queue one line.
    pub fn write(&self, r: &AccessRecord<'_>) {
        let Some(tx) = &self.tx else { return };
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            request_id: r.request_id,
            client: r.client,
            route: r.route,
            method: r.method,
            path: r.path,
            status: r.status,
            upstream: r.upstream,
            duration_ms: r.duration.as_secs_f64() * 1000.0,
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            reason: r.reason,
        };
        let mut buf = Vec::with_capacity(256);
        if serde_json::to_writer(&mut buf, &line).is_err() {
            return;
        }
        buf.push(b'\n');
        if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Line(buf)) {
            METRICS.access_log_dropped.inc();
        }
    }
}
