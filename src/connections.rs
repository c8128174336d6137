//! Client connections: how many may be open (in all and per client IP), how long an idle
//! keep-alive connection is kept, and how long a client may take to send its request headers.
//!
//! [`Connections`] wraps the Pingora proxy app. Pingora calls its `process_new` once per
//! connection (after the TLS handshake), which is where a connection is admitted or closed at
//! once, counted while open (an RAII [`Ticket`]), and where each HTTP/1 request on it is given
//! its time limit. It never reads or writes the connection itself and decides nothing about
//! requests: the proxy does that. It also tells the memory housekeeper ([`crate::memory`])
//! which runtime its connections run on and when they close.
//!
//! HTTP/2 connections (h2 by ALPN on TLS, and h2c by prior knowledge on a plaintext listener
//! with `h2c: true`, recognised here by the HTTP/2 preface among its first bytes) pass the
//! same admission and are counted until they close; the preface must arrive within
//! `request_header_timeout`, after which Pingora's HTTP/2 server runs the connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::time::Instant;
use tokio::io::AsyncReadExt;

use crate::memory::Activity;
use crate::metrics::METRICS;
pub use crate::settings::ConnectionLimits;

/// What is read of a request while the connection waits for it. A request this small (most
/// without cookies) is then parsed with no further read; a larger one takes one more. It is
/// held by every idle connection, so it stays small.
const FIRST_READ: usize = 1024;

/// Pingora's first header buffer (`INIT_HEADER_BUF_SIZE`), which the bytes read first become.
const HEADER_BUFFER: usize = 4096;

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a connection was closed as soon as it arrived: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// `server.max_connections` connections were open.
    MaxConnections,
    /// `server.max_connections_per_ip` connections from the same IP were open.
    MaxConnectionsPerIp,
}

impl Refused {
    /// Every reason, for metric series present at zero.
    pub const ALL: [Refused; 2] = [Refused::MaxConnections, Refused::MaxConnectionsPerIp];

    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// The connections open now, in all and per client IP.
///
/// Every connection is counted per IP whatever the limits say, so that a reload turning
/// `max_connections_per_ip` on finds the connections already open. The map holds one entry
/// per IP with a connection open, so it is bounded by the open connections.
#[derive(Debug, Default)]
pub struct Admission {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// Admit a connection from `ip` under `limits`, or say why not. The connection counts as
    /// open until the returned ticket is dropped.
    ///
    /// # Errors
    /// [`Refused`] when a limit is reached; nothing is counted then.
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        limits: &ConnectionLimits,
    ) -> Result<Ticket, Refused> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if limits.max.is_some_and(|max| before >= max) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::MaxConnections);
        }
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = map.entry(ip).or_insert(0);
            if limits.max_per_ip.is_some_and(|max| *count >= max) {
                if *count == 0 {
                    map.remove(&ip);
                }
                drop(map);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::MaxConnectionsPerIp);
            }
            *count += 1;
        }
        Ok(Ticket {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn release(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = map.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&ip);
                    // A burst of many clients would otherwise keep its table for good.
                    if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
                        map.shrink_to_fit();
                    }
                }
            }
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

tokio::task_local! {
    /// Set by the proxy once a request's headers are complete (see [`headers_received`]).
    static HEADERS_IN: std::cell::Cell<bool>;
}

/// Tell the connection the current request's headers are complete, so that
/// `request_header_timeout` no longer applies to it. Called by the proxy when a request
/// starts; a no-op outside a connection task (HTTP/2 streams run in tasks of their own).
pub fn headers_received() {
    let _ = HEADERS_IN.try_with(|h| h.set(true));
}

/// The proxy app with connection limits and timeouts around it.
pub struct Connections<A> {
    proxy: Arc<A>,
    limits: Arc<arc_swap::ArcSwap<ConnectionLimits>>,
    admission: Arc<Admission>,
    activity: Arc<Activity>,
    /// The addresses of the listeners with `h2c: true`.
    h2c: Vec<SocketAddr>,
    /// Each listener's address and connection series.
    listeners: Vec<(SocketAddr, ListenerSeries)>,
    /// The series of connections on no known listener (`listener="other"`); none expected.
    other: std::sync::OnceLock<ListenerSeries>,
}

/// A listener's `portcullis_connections_open` and `portcullis_connections_accepted_total`.
#[derive(Clone)]
struct ListenerSeries {
    open: prometheus::IntGauge,
    accepted: prometheus::IntCounter,
}

impl ListenerSeries {
    fn new(label: &str) -> ListenerSeries {
        ListenerSeries {
            open: METRICS.connections_open.with_label_values(&[label]),
            accepted: METRICS.connections_accepted.with_label_values(&[label]),
        }
    }
}

/// Counts a connection as open on its listener until dropped.
struct Open(prometheus::IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether a connection to `local` arrived on the listener bound to `listener`. A listener
/// bound to an unspecified address (`0.0.0.0:8080`) matches every local address on its port.
fn bound_to(listener: &SocketAddr, local: &SocketAddr) -> bool {
    listener.port() == local.port()
        && (listener.ip() == local.ip().to_canonical()
            || listener.ip() == local.ip()
            || listener.ip().is_unspecified())
}

impl<A> Connections<A> {
    /// Wrap `proxy`; `limits` are read for each new connection (and each request's
    /// keep-alive) as each reload publishes them, so they reload live.
    pub fn new(proxy: Arc<A>, limits: Arc<arc_swap::ArcSwap<ConnectionLimits>>) -> Connections<A> {
        // Both refusal series exist from the start, at zero.
        for refused in Refused::ALL {
            let _ = METRICS
                .connections_refused
                .with_label_values(&[refused.reason()]);
        }
        Connections {
            proxy,
            limits,
            admission: Arc::new(Admission::default()),
            activity: Arc::new(Activity::default()),
            h2c: Vec::new(),
            listeners: Vec::new(),
            other: std::sync::OnceLock::new(),
        }
    }

    /// Count connections per listener: `listeners` are the addresses of the config's
    /// listeners as written (the `listener` label), fixed at start as listeners are. Their
    /// series exist from now, at zero.
    pub fn with_listeners(mut self, listeners: &[String]) -> Connections<A> {
        self.listeners = listeners
            .iter()
            .filter_map(|a| Some((a.parse().ok()?, ListenerSeries::new(a))))
            .collect();
        self
    }

    /// The series of the listener `stream` arrived on.
    fn listener_of(&self, stream: &Stream) -> &ListenerSeries {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        local
            .and_then(|local| self.listeners.iter().find(|(l, _)| bound_to(l, &local)))
            .map_or_else(
                || self.other.get_or_init(|| ListenerSeries::new("other")),
                |(_, series)| series,
            )
    }

    /// Accept h2c by prior knowledge on the listeners bound to `listeners` (fixed at start,
    /// as listeners are). The proxy app must allow h2c in its `HttpServerOptions`: this
    /// wrapper finds the preface, Pingora's HTTP/2 server then runs the connection.
    pub fn with_h2c(mut self, listeners: Vec<SocketAddr>) -> Connections<A> {
        self.h2c = listeners;
        self
    }

    /// Whether `stream` arrived on a listener with `h2c: true`. A listener bound to an
    /// unspecified address (`0.0.0.0:8080`) matches every local address on its port.
    fn allows_h2c(&self, stream: &Stream) -> bool {
        if self.h2c.is_empty() || stream.get_ssl_digest().is_some() {
            return false;
        }
        let Some(local) = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
        else {
            return false;
        };
        self.h2c.iter().any(|l| bound_to(l, &local))
    }

    /// What the memory housekeeper watches: this app's runtime and its closed connections.
    pub fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.activity)
    }
}

/// Counts the connection as closed for the housekeeper when dropped.
struct Closing<'a>(&'a Activity);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// Whether `bytes` could be the start of the HTTP/2 preface (or all of it, and more).
fn may_be_preface(bytes: &[u8]) -> bool {
    let n = bytes.len().min(H2_PREFACE.len());
    bytes[..n] == H2_PREFACE[..n]
}

/// Put bytes already read back in front of the connection's next read, for Pingora's
/// HTTP/2 server to read the preface again. Only a plain TCP stream can (TLS streams never
/// come here); `None` when `stream` is something else, which then cannot be served.
fn rewind(stream: Stream, bytes: &[u8]) -> Option<Stream> {
    use pingora::protocols::l4::stream::Stream as L4;
    let mut l4 = stream.into_any().downcast::<L4>().ok()?;
    l4.rewind(bytes);
    Some(l4)
}

/// How a request's wait for its headers ended.
enum Outcome<T> {
    Done(T),
    HeaderTimeout,
}

/// Run one HTTP/1 request of the connection: `work` is the proxy reading and answering it.
/// Until the proxy says its headers are in, `deadline` applies; past it the request (and the
/// connection) is dropped. After that the request runs to its end with no time limit here.
async fn with_header_deadline<F: std::future::Future>(
    work: F,
    deadline: Instant,
) -> Outcome<F::Output> {
    HEADERS_IN
        .scope(std::cell::Cell::new(false), async move {
            tokio::pin!(work);
            tokio::select! {
                biased;
                out = &mut work => Outcome::Done(out),
                () = pingora::prelude::sleep(deadline.saturating_duration_since(Instant::now())) => {
                    if HEADERS_IN.with(std::cell::Cell::get) {
                        Outcome::Done(work.await)
                    } else {
                        Outcome::HeaderTimeout
                    }
                }
            }
        })
        .await
}

#[async_trait]
impl<A> ServerApp for Connections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let started = Instant::now();
        let limits = **self.limits.load();
        let ip = stream.get_socket_digest().and_then(|d| {
            d.peer_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_canonical())
        });
        let m = &*METRICS;
        let _ticket = match self.admission.admit(ip, &limits) {
            Ok(ticket) => ticket,
            Err(refused) => {
                m.connections_refused
                    .with_label_values(&[refused.reason()])
                    .inc();
                return None; // dropping the stream closes the connection
            }
        };
        let listener = self.listener_of(&stream);
        listener.accepted.inc();
        listener.open.inc();
        let _open = Open(listener.open.clone());
        self.activity.note_runtime();
        let _closing = Closing(&self.activity);

        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 streams run in tasks of their own: Pingora's connection loop as it is.
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        // Pingora's HTTP/1 connection loop (`apps/mod.rs`), with two changes. Each request's
        // first bytes are read here, and only then is Pingora's session made: Pingora
        // allocates its whole request future and a 4 KiB header buffer before it waits, and
        // holds them for as long as a kept-alive connection idles (most of its cost).
        // And the headers get a deadline: Pingora applies its keep-alive wait to every read
        // of them, so a client sending a byte now and then would never be cut.
        let mut stream = stream;
        let mut limits = limits;
        let mut persistent = None;
        let mut first = true;
        let mut wait_until = started + limits.request_header_timeout;
        let mut h2c = self.allows_h2c(&stream);
        loop {
            let mut head = [0u8; FIRST_READ];
            // Pingora's timer wheel, as Pingora's own reads use: far cheaper than tokio's.
            let wait = wait_until.saturating_duration_since(Instant::now());
            let read = pingora::prelude::timeout(wait, stream.read(&mut head)).await;
            let mut n = match read {
                Ok(Ok(n)) if n > 0 => n,
                // Closed by the client, or idle past `keepalive_timeout`.
                Ok(_) => return None,
                Err(_) => {
                    if first {
                        m.connections_header_timeouts.inc();
                    }
                    return None;
                }
            };
            if h2c {
                // Only a connection's first bytes can open HTTP/2.
                h2c = false;
                // The preface is 24 bytes: a client may send fewer in its first packet.
                while n < H2_PREFACE.len() && may_be_preface(&head[..n]) {
                    let wait = wait_until.saturating_duration_since(Instant::now());
                    match pingora::prelude::timeout(wait, stream.read(&mut head[n..])).await {
                        Ok(Ok(more)) if more > 0 => n += more,
                        Ok(_) => return None,
                        Err(_) => {
                            m.connections_header_timeouts.inc();
                            return None;
                        }
                    }
                }
                if n >= H2_PREFACE.len() && may_be_preface(&head[..n]) {
                    let stream = rewind(stream, &head[..n])?;
                    return ServerApp::process_new(&self.proxy, stream, shutdown).await;
                }
            }
            let deadline = if first {
                started + limits.request_header_timeout
            } else {
                Instant::now() + limits.request_header_timeout
            };
            let mut prefix = BytesMut::with_capacity(HEADER_BUFFER.max(n));
            prefix.extend_from_slice(&head[..n]);
            let mut session = ServerSession::new_http1(stream);
            if let Some(persistent) = persistent.take() {
                HttpPersistentSettings::apply_to_session(persistent, &mut session);
            }
            session.set_keepalive(if *shutdown.borrow() {
                None
            } else {
                limits.keepalive_secs
            });
            // Pingora's parser starts from these bytes, as from a pipelined request's.
            session.set_pipelined_prefix(prefix);
            let work = self.proxy.process_new_http(session, shutdown);
            let reused = match with_header_deadline(work, deadline).await {
                Outcome::Done(reused) => reused?,
                Outcome::HeaderTimeout => {
                    m.connections_header_timeouts.inc();
                    return None;
                }
            };
            (stream, persistent) = reused.consume();
            // The config serving now: a reload applies from the next request.
            limits = **self.limits.load();
            wait_until = Instant::now() + limits.keepalive;
            first = false;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max: Option<usize>, max_per_ip: Option<usize>) -> ConnectionLimits {
        ConnectionLimits {
            max,
            max_per_ip,
            keepalive: Duration::from_secs(60),
            keepalive_secs: Some(60),
            request_header_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_preface_and_its_beginnings() {
        assert!(may_be_preface(b"P"));
        assert!(may_be_preface(b"PRI * HTTP/2.0\r\n"));
        assert!(may_be_preface(H2_PREFACE));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert!(may_be_preface(&more));
        assert!(!may_be_preface(b"POST / HTTP/1.1\r\n"));
        assert!(!may_be_preface(b"GET / HTTP/1.1\r\n"));
        assert!(!may_be_preface(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"));
    }

    #[test]
    fn admits_up_to_the_limits_and_releases_on_drop() {
        let a = Arc::new(Admission::default());
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let two: IpAddr = "127.0.0.2".parse().unwrap();
        let l = limits(Some(3), Some(2));
        let t1 = a.admit(Some(one), &l).unwrap();
        let _t2 = a.admit(Some(one), &l).unwrap();
        assert_eq!(
            a.admit(Some(one), &l).unwrap_err(),
            Refused::MaxConnectionsPerIp
        );
        let _t3 = a.admit(Some(two), &l).unwrap();
        assert_eq!(a.admit(Some(two), &l).unwrap_err(), Refused::MaxConnections);
        assert_eq!(a.open(), 3);
        drop(t1);
        assert_eq!(a.open(), 2);
        let _t4 = a.admit(Some(one), &l).unwrap();
        assert_eq!(a.per_ip.lock().unwrap().get(&one), Some(&2));
    }

    #[test]
    fn counts_per_ip_without_a_limit_and_forgets_idle_ips() {
        let a = Arc::new(Admission::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = a.admit(Some(ip), &limits(None, None)).unwrap();
        assert_eq!(a.per_ip.lock().unwrap().get(&ip), Some(&1));
        // A reload turning the limit on sees the connection already open.
        assert_eq!(
            a.admit(Some(ip), &limits(None, Some(1))).unwrap_err(),
            Refused::MaxConnectionsPerIp
        );
        drop(t);
        assert!(a.per_ip.lock().unwrap().is_empty());
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn keepalive_rounds_up_to_whole_seconds_and_zero_turns_it_off() {
        let mut server = crate::config::ServerConfig::default();
        assert_eq!(
            ConnectionLimits::from_config(&server).keepalive_secs,
            Some(60)
        );
        server.keepalive_timeout = crate::config::Dur(Duration::from_millis(1500));
        assert_eq!(
            ConnectionLimits::from_config(&server).keepalive_secs,
            Some(2)
        );
        server.keepalive_timeout = crate::config::Dur(Duration::ZERO);
        assert_eq!(ConnectionLimits::from_config(&server).keepalive_secs, None);
    }
}
