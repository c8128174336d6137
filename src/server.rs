//! Assembles and runs the Pingora server: the proxy on its listeners, the admin endpoint,
//! health checks, DNS refresh, revocation sync and the config watcher, with graceful
//! shutdown. It owns the process state that outlives every config generation (the
//! revocation list) and hands it to the services that use it.
//!
//! Nothing here handles a request; it wires the parts together once at start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::connections::Connections;
use crate::proxy::{self, Portcullis};
use crate::reload::{ConfigWatcher, Reloader};
use crate::revocation::sync::RevocationSync;
use crate::revocation::Revocations;
use crate::upstream::{DnsRefresher, HealthSupervisor};

/// The socket buffers of a plain-HTTP client connection. Pingora's default read buffer is
/// 64 KiB per connection, held as long as the connection is open, idle or not; its HTTP/1
/// code reads request headers and bodies into buffers of its own, so the L4 buffer only adds
/// a copy. Without it an idle connection costs a few KiB instead of ~70.
const PLAIN_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

/// The same for TLS: rustls reads whole records into its own buffer, so here too the L4
/// read buffer only saves system calls on large uploads.
const TLS_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The access log file could not be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(#[source] std::io::Error),
    /// A TLS listener's certificate or key could not be loaded.
    #[error("listener {address}: cannot load TLS certificate or key: {message}")]
    Tls {
        /// The listener.
        address: String,
        /// Pingora's reason.
        message: String,
    },
    /// The config has no listener.
    #[error("the config has no listeners")]
    NoListeners,
    /// A listener or the admin address cannot be bound (most often: already in use).
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Build the server around `reloader`'s config and run it until a shutdown signal.
/// `extra` may add services of its own (the demo adds its echo upstream).
///
/// # Errors
/// [`ServeError`] when something needed at start is missing; once running it only returns
/// after shutdown, by exiting the process.
pub fn serve(reloader: Arc<Reloader>, extra: impl FnOnce(&mut Server)) -> Result<(), ServeError> {
    let generation = reloader.current();
    let config = &generation.config;
    if config.listeners.is_empty() {
        return Err(ServeError::NoListeners);
    }
    check_addresses_free(config)?;
    let access_log = AccessLog::start(&config.access_log.output).map_err(ServeError::AccessLog)?;
    // Before any service starts: SIGUSR1's default action would end the process.
    access_log
        .reopen_on_sigusr1()
        .map_err(ServeError::AccessLog)?;
    let grace = config.server.grace_period.0;

    let conf = ServerConf {
        threads: config
            .server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        // Pingora sleeps this long after SIGTERM whatever is in flight; our own watch exits
        // as soon as requests drain, so this is only the backstop.
        grace_period_seconds: Some(grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    // Process state, not config: a reload never replaces it.
    let revocations = Arc::new(Revocations::new(Arc::clone(&reloader.parts().revocation)));
    let mut proxy = pingora::proxy::http_proxy(
        &server.configuration,
        Portcullis::new(
            Arc::clone(&reloader),
            access_log.clone(),
            Arc::clone(&revocations),
        ),
    );
    proxy.server_options = Some(http_options(config));
    let addresses: Vec<String> = config.listeners.iter().map(|l| l.address.clone()).collect();
    let h2c = config
        .listeners
        .iter()
        .filter(|l| l.h2c)
        .filter_map(|l| l.address.parse().ok())
        .collect();
    let connections = Connections::new(Arc::new(proxy), Arc::clone(&reloader.parts().connections))
        .with_h2c(h2c)
        .with_listeners(&addresses);
    let activity = connections.activity();
    let mut proxy_service = Service::new("portcullis proxy".into(), connections);
    for listener in &config.listeners {
        let endpoint = ListenerConfig::tcp(listener.address.clone());
        let endpoint = match &listener.tls {
            None => endpoint.l4_buffer(PLAIN_BUFFERS),
            Some(tls) => {
                let cert = tls.cert.to_string_lossy();
                let key = tls.key.to_string_lossy();
                let tls_error = |message: String| ServeError::Tls {
                    address: listener.address.clone(),
                    message,
                };
                // The certificate comes from the serving generation at each handshake, so a
                // reload that replaced the files takes effect without a restart; the paths
                // given here are then never read by Pingora.
                let resolver = crate::tls::CertResolver::new(
                    &listener.address,
                    Arc::clone(&reloader.parts().listener_certs),
                )
                .ok_or_else(|| tls_error("no compiled certificate".into()))?;
                let mut settings =
                    TlsSettings::intermediate(&cert, &key).map_err(|e| tls_error(e.to_string()))?;
                settings.set_cert_resolver(Arc::new(resolver));
                settings.enable_h2();
                endpoint.tls(settings).l4_buffer(TLS_BUFFERS)
            }
        };
        proxy_service.add_listener(endpoint);
    }
    server.add_service(proxy_service);

    if let Some(admin) = &config.admin {
        let mut admin_service = Service::new(
            "portcullis admin".into(),
            Admin::new(Arc::clone(&reloader), Arc::clone(&revocations)),
        );
        admin_service.add_tcp(&admin.address);
        admin_service.threads = Some(1);
        server.add_service(admin_service);
    }
    let mut health = background_service(
        "health checks",
        HealthSupervisor::new(Arc::clone(&reloader.parts().pools)),
    );
    health.threads = Some(1);
    server.add_service(health);
    let mut dns = background_service(
        "dns refresh",
        DnsRefresher::new(
            Arc::clone(&reloader.parts().pools),
            Arc::clone(&reloader.parts().dns),
        ),
    );
    dns.threads = Some(1);
    server.add_service(dns);
    let mut keys = background_service(
        "key refresh",
        crate::auth::KeyRefresher::new(Arc::clone(&reloader.parts().issuers)),
    );
    keys.threads = Some(1);
    server.add_service(keys);
    // Idle (one check a second) unless the config has a `cluster:` section.
    let mut cluster = background_service(
        "cluster limit sync",
        crate::ratelimit::cluster::ClusterSync::new(Arc::clone(&reloader.parts().cluster)),
    );
    cluster.threads = Some(1);
    server.add_service(cluster);
    // Idle (a sweep a second) unless the config has `cluster.redis`.
    let mut revocation_sync = background_service(
        "revocation sync",
        RevocationSync::new(Arc::clone(&revocations)),
    );
    revocation_sync.threads = Some(1);
    server.add_service(revocation_sync);
    // Idle (a look a second) unless the config has `tracing:`.
    let mut trace_export = background_service(
        "trace export",
        crate::trace::TraceExporter::new(Arc::clone(&reloader.parts().tracing)),
    );
    trace_export.threads = Some(1);
    server.add_service(trace_export);
    install_sighup_handler();
    let mut watcher =
        background_service("config watcher", ConfigWatcher::new(Arc::clone(&reloader)));
    watcher.threads = Some(1);
    server.add_service(watcher);
    // Idle (a look every 5 s) unless the binary installed a release hook.
    let mut housekeeper = background_service(
        "memory housekeeping",
        crate::memory::Housekeeper::new(activity, proxy::requests_started),
    );
    housekeeper.threads = Some(1);
    server.add_service(housekeeper);
    extra(&mut server);

    tracing::info!(
        listeners = ?config.listeners.iter().map(|l| l.address.as_str()).collect::<Vec<_>>(),
        admin = config.admin.as_ref().map(|a| a.address.as_str()),
        generation = generation.number,
        "portcullis starting"
    );
    drop(generation);
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingShutdown { grace, access_log }),
    });
    Ok(())
}

/// Pingora's options for client connections, read once at start.
///
/// `h2c`: Pingora's HTTP/2 server takes a plaintext connection whose first bytes are the
/// HTTP/2 preface. Only [`Connections`] hands it such connections, and only from listeners
/// with `h2c: true`; every other plaintext connection stays HTTP/1.1.
///
/// `h2_idle_timeout`: an HTTP/2 connection (h2 by ALPN, or h2c) with no request in flight is
/// closed after `keepalive_timeout` (`request_header_timeout` when keep-alive is off), so an
/// idle one does not hold its place under `max_connections` for ever.
fn http_options(config: &crate::config::Config) -> pingora::apps::HttpServerOptions {
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = config.listeners.iter().any(|l| l.h2c);
    let keepalive = config.server.keepalive_timeout.0;
    options.h2_idle_timeout = Some(if keepalive.is_zero() {
        config.server.request_header_timeout.0
    } else {
        keepalive
    });
    options
}

/// Pingora binds in its service threads, retries a taken port for 30 s and then panics in
/// that thread only: the process would live on with a healthy admin endpoint and a proxy that
/// never listens. Try each address once here (with `SO_REUSEADDR`, as Pingora binds) so that
/// a taken port stops the start with a clear error instead.
fn check_addresses_free(config: &crate::config::Config) -> Result<(), ServeError> {
    let admin = config.admin.iter().map(|a| a.address.as_str());
    for address in config
        .listeners
        .iter()
        .map(|l| l.address.as_str())
        .chain(admin)
    {
        if let Err(source) = std::net::TcpListener::bind(address) {
            return Err(ServeError::Bind {
                address: address.to_string(),
                source,
            });
        }
    }
    Ok(())
}

/// SIGHUP's default action ends the process. Register tokio's handler before any service
/// starts, so a SIGHUP that arrives while the server boots is recorded, not fatal.
fn install_sighup_handler() {
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        rt.block_on(async {
            if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                tracing::error!(error = %e, "cannot install the SIGHUP handler");
            }
        });
    }
}

/// Pingora's signals, plus an early exit once a graceful shutdown has drained.
///
/// Pingora's graceful shutdown sleeps the whole grace period even when nothing is in flight
/// (a fixed `thread::sleep`); this watch exits as soon as in-flight requests reach zero.
struct DrainingShutdown {
    grace: Duration,
    access_log: AccessLog,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for shutdown signals");
            return std::future::pending().await;
        };
        let kind = tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        };
        if matches!(kind, ShutdownSignal::GracefulTerminate) {
            tracing::info!(grace = ?self.grace, in_flight = proxy::in_flight(), "SIGTERM: draining");
            let grace = self.grace;
            let log = self.access_log.clone();
            let _ = std::thread::Builder::new()
                .name("drain".into())
                .spawn(move || drain_then_exit(grace, log));
        }
        kind
    }
}

fn drain_then_exit(grace: Duration, log: AccessLog) {
    let start = Instant::now();
    // Let the listeners close and requests already being read reach the proxy.
    std::thread::sleep(Duration::from_millis(300));
    while proxy::in_flight() > 0 && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = proxy::in_flight();
    if left > 0 {
        tracing::warn!(left, "grace period over with requests in flight");
    } else {
        tracing::info!("drained; exiting");
    }
    log.flush(Duration::from_secs(2));
    std::process::exit(0);
}
