//! TLS to a pool's targets: `tls:` compiled into what Pingora's rustls connector takes per
//! peer (SNI, verification switches, a root list, a client certificate), and the reasons a
//! handshake fails, told apart for the metric and the log line.
//!
//! Trust. Without `ca_file` a pool sets no per-peer roots, so Pingora's connector uses the
//! roots it loaded once at start (`load_platform_certs_incl_env_into_store`: the system store,
//! or `SSL_CERT_FILE`/`SSL_CERT_DIR`). With `ca_file` the pool carries the system's roots plus
//! the file's, read at compile. Pingora builds a rustls `ClientConfig` (and a root store from
//! that list) on every new connection for a peer with its own roots or a client certificate,
//! so such pools pay that on each new connection; pooled connections do not.
//!
//! This module reads files at compile and nothing else: it registers no metric and opens no
//! connection.

use std::sync::Arc;

use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{CertKey, WrappedX509};

use crate::config::{Issues, UpstreamTlsConfig};
use crate::tls::{self as material, Stamp};

/// A pool's compiled `tls:`.
pub struct UpstreamTls {
    config: UpstreamTlsConfig,
    stamp: Stamp,
    /// Set as the peer's `group_key`: Pingora's connection reuse hash covers the address, SNI,
    /// client certificate and verify switches but not the per-peer roots, so without it a
    /// pool could reuse a connection another pool's (or an older) trust accepted.
    group: u64,
    /// The system's roots and `ca_file`'s, when `ca_file` is given.
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
}

impl crate::carry::Carry for UpstreamTls {
    type Key = (UpstreamTlsConfig, Stamp);

    fn carry_key(&self) -> Self::Key {
        (self.config.clone(), self.stamp.clone())
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Compile a pool's `tls:` at `path` (`upstreams[i].tls`); kept from `previous` when neither
/// the settings nor any file's content changed. `None` after pushing every problem found.
pub fn compile(
    config: &UpstreamTlsConfig,
    pool: &str,
    path: &str,
    previous: Option<&Arc<UpstreamTls>>,
    issues: &mut Issues<'_>,
) -> Option<Arc<UpstreamTls>> {
    let before = issues.len();
    if config.sni.as_deref().is_some_and(|s| s.trim().is_empty()) {
        issues.push(
            format!("{path}.sni"),
            "must not be empty (leave it out for the target's host)",
        );
    }
    let mut read = |field: &str, file: &Option<std::path::PathBuf>| {
        file.as_ref().and_then(|p| match material::read(p) {
            Ok(f) => Some(f),
            Err(e) => {
                issues.push(format!("{path}.{field}"), e);
                None
            }
        })
    };
    let ca_file = read("ca_file", &config.ca_file);
    let cert_file = read("client_cert", &config.client_cert);
    let key_file = read("client_key", &config.client_key);
    match (&config.client_cert, &config.client_key) {
        (Some(_), None) => issues.push(format!("{path}.client_key"), "needed with `client_cert`"),
        (None, Some(_)) => issues.push(format!("{path}.client_cert"), "needed with `client_key`"),
        _ => {}
    }
    if issues.len() != before {
        return None;
    }
    let stamp: Stamp = [&ca_file, &cert_file, &key_file]
        .into_iter()
        .flatten()
        .map(|f| f.stamp.clone())
        .collect();
    let key = (config.clone(), stamp);
    if let Some(kept) = crate::carry::kept(previous, &key) {
        return Some(kept);
    }

    let ca = match &ca_file {
        None => None,
        Some(file) => match material::certificates(file) {
            Ok(extra) => {
                let roots: Vec<WrappedX509> = material::system_roots()
                    .iter()
                    .chain(&extra)
                    .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
                    .collect();
                Some(Arc::from(roots.into_boxed_slice()))
            }
            Err(e) => {
                issues.push(format!("{path}.ca_file"), e);
                None
            }
        },
    };
    let client = match (
        &cert_file,
        &key_file,
        &config.client_cert,
        &config.client_key,
    ) {
        (Some(cert), Some(key), Some(cert_path), Some(key_path)) => {
            let pair = material::certificates(cert).and_then(|chain| {
                let k = material::private_key(key)?;
                material::certified_key(chain.clone(), &k, cert_path, key_path)?;
                Ok(CertKey::new(
                    chain.iter().map(|c| c.to_vec()).collect(),
                    k.secret_der().to_vec(),
                ))
            });
            match pair {
                Ok(pair) => Some(Arc::new(pair)),
                Err(e) => {
                    issues.push(format!("{path}.client_cert"), e);
                    None
                }
            }
        }
        _ => None,
    };
    if issues.len() != before {
        return None;
    }
    let group = {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        pool.hash(&mut h);
        format!("{:?}", key.0).hash(&mut h);
        key.1.hash(&mut h);
        h.finish()
    };
    Some(Arc::new(UpstreamTls {
        group,
        config: key.0,
        stamp: key.1,
        ca,
        client,
    }))
}

impl UpstreamTls {
    /// The commit step for pool `pool`, whose TLS was `old`: an operator who turned
    /// verification off hears about it once, when such settings start to serve.
    pub fn commit(&self, pool: &str, old: Option<&Arc<UpstreamTls>>) {
        let same = old.is_some_and(|o| std::ptr::eq(&**o, self));
        if !self.config.verify && !same {
            tracing::warn!(
                upstream = pool,
                "tls.verify is false: the targets' certificates and names are not checked"
            );
        }
    }

    /// A peer for the target at `addr`, written `label` in the config, over TLS.
    pub fn peer(&self, addr: std::net::SocketAddr, label: &str) -> HttpPeer {
        let sni = match &self.config.sni {
            Some(sni) => sni.clone(),
            None => default_sni(label, addr),
        };
        let mut peer = HttpPeer::new(addr, true, sni);
        peer.options.verify_cert = self.config.verify;
        peer.options.verify_hostname = self.config.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer.group_key = self.group;
        peer
    }
}

/// The name a target's certificate must carry: the host of the target as written, or its IP
/// address. Never empty: Pingora skips every check for a peer without SNI.
fn default_sni(label: &str, addr: std::net::SocketAddr) -> String {
    let host = match label.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => label,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        addr.ip().to_string()
    } else {
        host.to_string()
    }
}

/// Why a TLS connection to an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The certificate is not issued by a trusted CA.
    UnknownIssuer,
    /// The certificate is not valid for the name checked (`sni`, or the target's host).
    NameMismatch,
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
    /// The upstream refused our client certificate, or wanted one and got none.
    ClientCertRefused,
    /// Another handshake failure (protocol, cipher, a malformed certificate).
    Other,
}

impl TlsFailure {
    /// Every reason, for the metric's series.
    pub const ALL: [TlsFailure; 6] = [
        TlsFailure::UnknownIssuer,
        TlsFailure::NameMismatch,
        TlsFailure::Expired,
        TlsFailure::NotYetValid,
        TlsFailure::ClientCertRefused,
        TlsFailure::Other,
    ];

    /// Its label and what the log line says, together.
    fn meaning(self) -> (&'static str, &'static str) {
        match self {
            TlsFailure::UnknownIssuer => (
                "unknown_issuer",
                "the upstream's certificate is issued by an unknown issuer (not a trusted CA: add it with tls.ca_file)",
            ),
            TlsFailure::NameMismatch => (
                "name_mismatch",
                "the upstream's certificate name mismatch: it is not valid for the name checked (tls.sni or the target's host)",
            ),
            TlsFailure::Expired => ("expired", "the upstream's certificate has expired"),
            TlsFailure::NotYetValid => {
                ("not_yet_valid", "the upstream's certificate is not valid yet")
            }
            TlsFailure::ClientCertRefused => (
                "client_cert_refused",
                "the upstream refused the client certificate (bad client cert, or none given)",
            ),
            TlsFailure::Other => ("other", "the TLS handshake with the upstream failed"),
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        self.meaning().0
    }

    /// What the log line says.
    pub fn message(self) -> &'static str {
        self.meaning().1
    }

    /// Count it for `pool` and log why, with `target` and Pingora's error: one line.
    pub fn record(self, pool: &str, target: &str, e: &pingora::Error) {
        crate::metrics::METRICS
            .upstream_tls_failures
            .with_label_values(&[pool, self.label()])
            .inc();
        tracing::warn!(
            upstream = pool,
            target,
            reason = self.label(),
            error = %e,
            "upstream TLS failed: {}",
            self.message()
        );
    }

    /// The TLS failure `e` is, if it is one: a failed handshake (whatever the reason), or an
    /// alert about our certificate that came after it (with TLS 1.3 a server checks the
    /// client's certificate after the client has finished its handshake, so its refusal
    /// arrives on the first read).
    pub fn of(e: &pingora::Error) -> Option<TlsFailure> {
        use pingora::ErrorType;
        // Pingora keeps rustls's error only as text: its handshake turns the cause into the
        // context string ("TLS connect() failed: ... invalid peer certificate: UnknownIssuer").
        let text = e.to_string();
        match e.etype() {
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert => Some(classify(&text)),
            _ => (classify(&text) == TlsFailure::ClientCertRefused)
                .then_some(TlsFailure::ClientCertRefused),
        }
    }
}

/// The reason in rustls's description of a failed handshake (its `Display` of
/// `InvalidCertificate(..)` and `AlertReceived(..)`).
fn classify(text: &str) -> TlsFailure {
    const CLIENT_CERT_ALERTS: [&str; 7] = [
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "CertificateUnknown",
        "UnsupportedCertificate",
        "CertificateRevoked",
        "CertificateExpired",
    ];
    if let Some(alert) = text.split("received fatal alert: ").nth(1) {
        if CLIENT_CERT_ALERTS.iter().any(|a| alert.starts_with(a)) {
            return TlsFailure::ClientCertRefused;
        }
        return TlsFailure::Other;
    }
    let Some(cert) = text.split("invalid peer certificate: ").nth(1) else {
        return TlsFailure::Other;
    };
    if cert.starts_with("UnknownIssuer") {
        TlsFailure::UnknownIssuer
    } else if cert.starts_with("certificate not valid for name")
        || cert.starts_with("NotValidForName")
    {
        TlsFailure::NameMismatch
    } else if cert.starts_with("certificate expired") || cert.starts_with("Expired") {
        TlsFailure::Expired
    } else if cert.starts_with("certificate not valid yet") || cert.starts_with("NotValidYet") {
        TlsFailure::NotYetValid
    } else {
        TlsFailure::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::{Error, ErrorType};
    use rustls::{AlertDescription, CertificateError};

    /// A rustls error as it reaches the proxy: through tokio-rustls's `io::Error`, Pingora's
    /// `or_err` in the stream and the context string of its handshake.
    fn handshake_error(e: rustls::Error) -> Box<Error> {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let inner = Error::because(ErrorType::TLSHandshakeFailure, "tls connect error", io);
        let mut outer = Error::explain(
            ErrorType::TLSHandshakeFailure,
            format!("TLS connect() failed: {inner}, SNI: api.test"),
        );
        outer.esource = pingora::ErrorSource::Upstream;
        outer
    }

    #[test]
    fn each_reason_is_told_from_rustls_errors() {
        use rustls_pki_types::{ServerName, UnixTime};
        let at = |s| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s));
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                TlsFailure::UnknownIssuer,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                    expected: ServerName::try_from("other.test").unwrap(),
                    presented: vec!["DnsName(\"api.test\")".into()],
                }),
                TlsFailure::NameMismatch,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                TlsFailure::NameMismatch,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                    time: at(2000),
                    not_after: at(1000),
                }),
                TlsFailure::Expired,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                TlsFailure::Expired,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
                    time: at(1000),
                    not_before: at(2000),
                }),
                TlsFailure::NotYetValid,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                TlsFailure::ClientCertRefused,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::BadCertificate),
                TlsFailure::ClientCertRefused,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
                TlsFailure::Other,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::BadSignature),
                TlsFailure::Other,
            ),
        ];
        for (e, want) in cases {
            let shown = e.to_string();
            assert_eq!(TlsFailure::of(&handshake_error(e)), Some(want), "{shown}");
        }
        // After the handshake only a refused client certificate counts as a TLS failure.
        let read = |e: rustls::Error| {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            Error::because(ErrorType::ReadError, "while reading", io)
        };
        assert_eq!(
            TlsFailure::of(&read(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            ))),
            Some(TlsFailure::ClientCertRefused)
        );
        assert_eq!(
            TlsFailure::of(&read(rustls::Error::AlertReceived(
                AlertDescription::HandshakeFailure
            ))),
            None
        );
        let reset = Error::explain(ErrorType::ConnectionClosed, "closed");
        assert_eq!(TlsFailure::of(&reset), None);
        let mut labels: Vec<_> = TlsFailure::ALL.iter().map(|f| f.label()).collect();
        labels.dedup();
        assert_eq!(labels.len(), TlsFailure::ALL.len());
    }

    /// Unchanged settings and file contents keep the compiled material (and so the pooled
    /// connections); a new content at the same path does not.
    #[test]
    fn material_is_kept_while_the_files_are_unchanged() {
        use crate::generation::Generation;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let write = |name: &str| {
            let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            std::fs::write(&ca, c.cert.pem()).unwrap();
        };
        write("one.test");
        let yaml = format!(
            "upstreams:\n  - name: u\n    targets: [\"127.0.0.1:9\"]\n    tls: {{ ca_file: \"{}\" }}\nroutes:\n  - name: r\n    upstream: u\n",
            ca.display()
        );
        let parsed = crate::config::Config::parse(&yaml).unwrap();
        let first = Generation::build(&parsed, None, 1).unwrap();
        let tls = |g: &Generation| Arc::clone(g.pools[0].tls.as_ref().unwrap());
        let same = Generation::build(&parsed, Some(&first), 2).unwrap();
        assert!(Arc::ptr_eq(&tls(&first), &tls(&same)));
        write("two.test");
        let changed = Generation::build(&parsed, Some(&same), 3).unwrap();
        assert!(!Arc::ptr_eq(&tls(&same), &tls(&changed)));
        assert_ne!(tls(&same).group, tls(&changed).group);
        let peer = tls(&changed).peer("127.0.0.1:9".parse().unwrap(), "127.0.0.1:9");
        assert_eq!(peer.sni, "127.0.0.1");
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        assert_eq!(
            peer.options.ca.as_ref().unwrap().len(),
            super::material::system_roots().len() + 1
        );
    }

    #[test]
    fn default_sni_is_the_host_or_the_address() {
        let addr: std::net::SocketAddr = "10.0.0.7:443".parse().unwrap();
        assert_eq!(default_sni("api.internal:443", addr), "api.internal");
        assert_eq!(default_sni("10.0.0.7:443", addr), "10.0.0.7");
        assert_eq!(default_sni("[::1]:443", addr), "::1");
        assert_eq!(default_sni(":443", addr), "10.0.0.7");
    }
}
