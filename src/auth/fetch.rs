//! Fetching an issuer's documents (discovery and key sets): which URLs may be fetched, at
//! every redirect hop; the HTTP clients and whom they trust; errors and log lines without
//! URLs' secrets; and `Cache-Control: max-age`.
//!
//! Trust: the system's CA store (as upstreams use it), plus an issuer's `ca_file` when given.
//! Issuers without `ca_file` share one client, made on first use; an issuer with one gets its
//! own, made when the config compiles (reading the file; nothing is connected), and kept
//! across reloads while the file's content stays the same.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::keys::MAX_JWKS_BYTES;

/// Most redirects one fetch follows.
pub const MAX_REDIRECTS: usize = 3;

/// Key sets are fetched over HTTPS; plain HTTP only to a loopback address (tests, sidecars).
///
/// # Errors
/// A message when the URL is not allowed.
pub fn check_fetch_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL `{url}`: {e}"))?;
    check_url(&parsed).map_err(|why| format!("`{url}` {why}"))
}

/// [`check_fetch_url`] on a parsed URL; the reason does not name the URL.
pub(super) fn check_url(url: &reqwest::Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err("must use https (plain http only to loopback)".into())
            }
        }
        other => Err(format!("has unsupported scheme `{other}`")),
    }
}

/// Whether a fetch that has been at `previous` (the URL asked for first) may go on to `next`:
/// `next` passes [`check_fetch_url`]'s rule, and after https never plain http.
pub(super) fn check_hop(previous: &[reqwest::Url], next: &reqwest::Url) -> Result<(), String> {
    let shown = redacted(next);
    check_url(next).map_err(|why| format!("`{shown}` refused: {why}"))?;
    if next.scheme() != "https" && previous.iter().any(|u| u.scheme() == "https") {
        return Err(format!(
            "`{shown}` refused: no step down from https to plain http"
        ));
    }
    Ok(())
}

/// `url` without user, password, query or fragment: what a log may show of a URL that a
/// server chose.
pub(super) fn redacted(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Follow a redirect only as far as [`MAX_REDIRECTS`] hops, each passing [`check_hop`].
pub(super) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        // `previous` holds every URL requested so far, the first one included.
        let verdict = if attempt.previous().len() > MAX_REDIRECTS {
            Err(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            check_hop(attempt.previous(), attempt.url()).map_err(|why| format!("redirect to {why}"))
        };
        match verdict {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(why),
        }
    })
}

/// A client trusting the system's CAs and `extra`, following redirects by `redirects`.
fn build_client(
    extra: &[rustls_pki_types::CertificateDer<'static>],
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    // One odd certificate in the system store must not take every fetch down.
    roots.add_parsable_certificates(crate::tls::system_roots().iter().cloned());
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .redirect(redirects)
        .referer(false)
        .build()
        .map_err(|e| e.to_string())
}

/// The client of issuers without `ca_file`.
static CLIENT: LazyLock<Option<reqwest::Client>> =
    LazyLock::new(|| build_client(&[], redirect_policy()).ok());
/// The same for calls that send a credential (introspection): no redirect is followed.
static POSTER: LazyLock<Option<reqwest::Client>> =
    LazyLock::new(|| build_client(&[], reqwest::redirect::Policy::none()).ok());

/// Whom an issuer's fetches trust: the system's CAs, and its `ca_file`'s.
#[derive(Default)]
pub struct Trust {
    /// The `ca_file` and a hash of its content, when given (part of the issuer's carry key).
    pub stamp: crate::tls::Stamp,
    client: Option<reqwest::Client>,
    /// The same trust, following no redirect: for calls that carry a token and the client
    /// secret, which must reach the configured endpoint and nowhere else.
    poster: Option<reqwest::Client>,
}

impl Trust {
    /// The trust `ca_file` gives (the system's CAs alone without one), read now.
    ///
    /// # Errors
    /// A message naming the file when it cannot be read or holds no usable CA certificate.
    pub fn load(ca_file: Option<&Path>) -> Result<Trust, String> {
        let Some(path) = ca_file else {
            return Ok(Trust::default());
        };
        let file = crate::tls::read(path)?;
        let certs = crate::tls::certificates(&file)?;
        let built = |redirects| {
            build_client(&certs, redirects).map_err(|e| format!("`{}`: {e}", path.display()))
        };
        Ok(Trust {
            stamp: vec![file.stamp],
            client: Some(built(redirect_policy())?),
            poster: Some(built(reqwest::redirect::Policy::none())?),
        })
    }

    pub(crate) fn client(&self) -> Option<&reqwest::Client> {
        self.client.as_ref().or(CLIENT.as_ref())
    }

    /// The client with this trust that follows no redirect.
    pub(crate) fn poster(&self) -> Option<&reqwest::Client> {
        self.poster.as_ref().or(POSTER.as_ref())
    }
}

/// GET a small document with `trust`'s client, bounded in time and size, following redirects
/// as [`redirect_policy`] allows. Gives the body, any `max-age` and the URL it came from.
pub(super) async fn get(
    trust: &Trust,
    url: &str,
    timeout: Duration,
) -> Result<(Vec<u8>, Option<Duration>, reqwest::Url), String> {
    let client = trust.client().ok_or("HTTP client unavailable")?;
    let fetch = async {
        let mut resp = client
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", without_url(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let fetched_from = resp.url().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {}", without_url(&e)))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "GET {url}: document larger than {MAX_JWKS_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age, fetched_from))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("GET {url}: timed out after {timeout:?}"))?
}

/// A reqwest error as a log may show it: without the URL (which may carry a query).
pub fn describe(e: &reqwest::Error) -> String {
    without_url(e)
}

pub(super) fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(&format!(" for url ({url})"), "");
        s = s.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

pub(super) fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if name.trim().eq_ignore_ascii_case("max-age") {
            value
                .trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        } else {
            None
        }
    })
}
