//! TLS material read from files: certificate chains, private keys and CA bundles, each checked
//! when the config compiles, so that a bad file is a config error naming its path and never a
//! panic in Pingora's connector or listener; the system's trust store; and the listeners'
//! certificates, which a reload replaces without a restart.
//!
//! Compiling only reads files here: no socket, no metric, no task. Files are read again at
//! every compile and hashed; material whose files hash the same is kept from the serving
//! generation (a [`Stamp`] is part of each carry key), so a reload that did not touch a file
//! does not parse it again, and one that replaced its content picks up the new content.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, Issues};

/// Which files some material came from, and a hash of each one's content when it was read.
pub type Stamp = Vec<(PathBuf, u64)>;

/// A file's bytes, with its entry in a [`Stamp`].
pub struct FileBytes {
    /// The content.
    pub bytes: Vec<u8>,
    /// Its path and content hash.
    pub stamp: (PathBuf, u64),
}

/// Read `path`.
///
/// # Errors
/// A message naming the path.
pub fn read(path: &Path) -> Result<FileBytes, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Ok(FileBytes {
        stamp: (path.to_path_buf(), h.finish()),
        bytes,
    })
}

/// The PEM certificates in `file`, each one parsed as Pingora will parse it.
///
/// # Errors
/// A message naming the path: no certificate, or one that does not parse.
pub fn certificates(file: &FileBytes) -> Result<Vec<CertificateDer<'static>>, String> {
    let path = file.stamp.0.display();
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&file.bytes) {
        let cert = item.map_err(|e| format!("`{path}` is not valid PEM: {e}"))?;
        usable(&cert).map_err(|e| format!("`{path}` holds a certificate that {e}"))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(format!("`{path}` holds no PEM certificate"));
    }
    Ok(certs)
}

/// Whether Pingora can take `cert`: its `WrappedX509` panics on what x509-parser refuses, and
/// its connector fails every connection of a peer whose root list holds one that rustls cannot
/// make a trust anchor of.
fn usable(cert: &CertificateDer<'_>) -> Result<(), String> {
    x509_parser::parse_x509_certificate(cert).map_err(|e| format!("does not parse: {e}"))?;
    rustls::RootCertStore::empty()
        .add(cert.clone().into_owned())
        .map_err(|e| format!("cannot be a trust anchor: {e}"))
}

/// The PEM private key in `file`.
///
/// # Errors
/// A message naming the path when it holds no usable key.
pub fn private_key(file: &FileBytes) -> Result<PrivateKeyDer<'static>, String> {
    let path = file.stamp.0.display();
    let key = PrivateKeyDer::from_pem_slice(&file.bytes)
        .map_err(|e| format!("`{path}` holds no PEM private key: {e}"))?;
    // Pingora's connector turns the key's DER back into a key with an `unwrap()`.
    PrivateKeyDer::try_from(key.secret_der().to_vec())
        .map_err(|e| format!("`{path}`: unrecognised private key: {e}"))?;
    Ok(key)
}

/// A certificate chain with its key, checked to belong together.
///
/// # Errors
/// A message naming both files when the key is not usable or not the certificate's.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, String> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("`{}`: unusable private key: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(format!(
            "`{}` and `{}` are not a certificate and its key: {e}",
            cert_path.display(),
            key_path.display()
        )),
    }
}

/// The operating system's trusted CA certificates (rustls-native-certs: the system bundle,
/// or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), read once per process: the same list
/// Pingora's connector loads at start for pools without `ca_file`.
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
        let roots: Vec<_> = match pingora::tls::load_native_certs() {
            // One odd certificate in the store must not fail every connection.
            Ok(certs) => certs.into_iter().filter(|c| usable(c).is_ok()).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the system's trusted certificates");
                Vec::new()
            }
        };
        if roots.is_empty() {
            tracing::warn!(
                "the system trusts no CA (install ca-certificates, or set SSL_CERT_FILE): \
                 only `ca_file` CAs are trusted by key fetches and TLS upstreams"
            );
        }
        roots
    });
    &ROOTS
}

/// A TLS listener's certificate and key, compiled.
pub struct ListenerCert {
    /// The listener's address as written.
    pub address: String,
    /// What the handshake presents.
    pub key: Arc<CertifiedKey>,
    /// The notAfter of the leaf certificate, in Unix seconds.
    pub not_after: i64,
    stamp: Stamp,
}

impl ListenerCert {
    /// The commit step: publish the expiry of the certificate served (a reload that replaced
    /// it sets the new one). A listener is never removed by a reload, so neither is its series.
    pub fn commit(&self) {
        crate::metrics::METRICS
            .tls_certificate_expiry
            .with_label_values(&[&self.address])
            .set(self.not_after);
    }
}

/// The notAfter of `cert`, in Unix seconds (0 if it does not parse, which [`certificates`]
/// has already refused).
fn not_after(cert: &CertificateDer<'_>) -> i64 {
    x509_parser::parse_x509_certificate(cert).map_or(0, |(_, c)| c.validity().not_after.timestamp())
}

impl crate::carry::Carry for ListenerCert {
    type Key = (String, Stamp);

    fn carry_key(&self) -> Self::Key {
        (self.address.clone(), self.stamp.clone())
    }
}

/// Compile the certificate of every TLS listener: read, parsed and checked as a pair, or kept
/// from `previous` when neither file changed.
pub fn compile_listeners(
    config: &Config,
    previous: &[Arc<ListenerCert>],
    issues: &mut Issues<'_>,
) -> Vec<Arc<ListenerCert>> {
    let mut out = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let mut files = Vec::with_capacity(2);
        for (field, path) in [("cert", &tls.cert), ("key", &tls.key)] {
            match read(path) {
                Ok(f) => files.push(f),
                Err(e) => issues.push(format!("listeners[{i}].tls.{field}"), e),
            }
        }
        let [cert, key] = files.as_slice() else {
            continue;
        };
        let stamp = vec![cert.stamp.clone(), key.stamp.clone()];
        let carry = (l.address.clone(), stamp);
        if let Some(kept) = crate::carry::kept(previous, &carry) {
            out.push(kept);
            continue;
        }
        let compiled = certificates(cert).and_then(|chain| {
            let k = private_key(key)?;
            let expiry = chain.first().map_or(0, not_after);
            Ok((certified_key(chain, &k, &tls.cert, &tls.key)?, expiry))
        });
        match compiled {
            Ok((certified, not_after)) => out.push(Arc::new(ListenerCert {
                address: l.address.clone(),
                key: Arc::new(certified),
                not_after,
                stamp: carry.1,
            })),
            Err(e) => issues.push(format!("listeners[{i}].tls"), e),
        }
    }
    out
}

/// Gives a TLS listener's handshakes the certificate of the serving generation, so that a
/// reload that replaced the files takes effect for new connections without a restart.
/// Pingora 0.9.1's rustls `TlsSettings::set_cert_resolver` takes it.
#[derive(Debug)]
pub struct CertResolver {
    address: String,
    certs: Arc<ArcSwap<Vec<Arc<ListenerCert>>>>,
    /// The certificate at start: served if a reload removed this listener's TLS (which only
    /// a restart applies).
    first: Arc<CertifiedKey>,
}

impl std::fmt::Debug for ListenerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCert")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// The resolver of the listener at `address`, reading the certificates `certs` publishes;
    /// `None` when it has none now.
    pub fn new(address: &str, certs: Arc<ArcSwap<Vec<Arc<ListenerCert>>>>) -> Option<Self> {
        let first = certs
            .load()
            .iter()
            .find(|c| c.address == address)
            .map(|c| Arc::clone(&c.key))?;
        Some(CertResolver {
            address: address.to_string(),
            certs,
            first,
        })
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        Some(
            certs
                .iter()
                .find(|c| c.address == self.address)
                .map_or_else(|| Arc::clone(&self.first), |c| Arc::clone(&c.key)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> FileBytes {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        read(&p).unwrap()
    }

    #[test]
    fn bad_material_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let cert = write(dir.path(), "a.crt", &a.cert.pem());
        let key = write(dir.path(), "a.key", &a.signing_key.serialize_pem());
        let other = write(dir.path(), "b.key", &b.signing_key.serialize_pem());
        let junk = write(dir.path(), "junk.pem", "not pem\n");
        let chain = certificates(&cert).unwrap();
        let k = private_key(&key).unwrap();
        certified_key(chain.clone(), &k, &cert.stamp.0, &key.stamp.0).unwrap();
        let wrong = private_key(&other).unwrap();
        let e = certified_key(chain, &wrong, &cert.stamp.0, &other.stamp.0)
            .err()
            .unwrap();
        assert!(e.contains("b.key") && e.contains("a.crt"), "{e}");
        assert!(certificates(&junk).unwrap_err().contains("junk.pem"));
        assert!(private_key(&junk).unwrap_err().contains("junk.pem"));
        assert!(certificates(&key)
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(read(&dir.path().join("missing"))
            .err()
            .unwrap()
            .contains("missing"));
        // The same bytes hash the same; new bytes at the same path do not.
        let again = read(&cert.stamp.0).unwrap();
        assert_eq!(again.stamp, cert.stamp);
        let changed = write(dir.path(), "a.crt", &b.cert.pem());
        assert_ne!(changed.stamp, cert.stamp);
    }
}
