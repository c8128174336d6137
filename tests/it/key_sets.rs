//! Where key sets may come from and which of their keys verify, end to end: the real binary
//! fetching from real key servers, one of them at a non-loopback address in a network
//! namespace of the test's own ([`NetnsServer`]).
//!
//! - A redirect is followed only to where the configured URL itself could point (https, or
//!   plain http to loopback), never from https down to http, and for a few hops at most; a
//!   refused hop is a failed fetch and the last good keys keep serving.
//! - Keys listed under one `kid` are each tried, up to four, and so are the keys a token
//!   without `kid` could be signed with.

use std::time::Duration;

use portcullis::auth::tools::{generate_es256, mint};
use serde_json::{json, Value};

use crate::support::jwks::{key_set, JwksServer, DISCOVERY_PATH, JWKS_PATH};
use crate::support::keys::{AUD, EC256, ISS, RSA};
use crate::support::netns::NetnsServer;
use crate::support::{client, eventually, pool, Proxy, Upstream};

const FETCHES: &str = "portcullis_jwks_fetches_total";
const STALE: &str = "portcullis_jwks_stale";

/// A token for `iss` and [`AUD`] signed by `pem`, naming `kid` when given, for user `sub`.
fn token_for(iss: &str, pem: &str, kid: Option<&str>, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": iss, "aud": AUD, "sub": sub, "iat": now, "exp": now + 600});
    mint(pem, &claims.to_string(), None, kid).unwrap()
}

/// [`token_for`] the suites' issuer [`ISS`].
fn token(pem: &str, kid: Option<&str>, sub: &str) -> String {
    token_for(ISS, pem, kid, sub)
}

/// The YAML of issuer `name` for tokens of `iss`: `source` is its key source line, `refresh`
/// its `jwks_refresh`.
fn issuer(name: &str, iss: &str, source: &str, refresh: &str) -> String {
    format!(
        "  - name: {name}\n    issuer: \"{iss}\"\n    {source}\n    audiences: [{AUD}]\n    fetch_timeout: 500ms\n    jwks_refresh: {refresh}\n    jwks_min_refresh: 100ms\n"
    )
}

/// Pool `app` on `up`, `issuers`, and route `/{name}` on each issuer of `names`.
fn config(up: &Upstream, issuers: &str, names: &[&str]) -> String {
    let routes: String = names
        .iter()
        .map(|n| {
            format!(
                "  - name: {n}\n    match: {{ path_prefix: /{n} }}\n    upstream: app\n    auth: {{ issuers: [{n}], forward_claims: {{ sub: X-User-Id }} }}\n"
            )
        })
        .collect();
    format!(
        "upstreams:\n{}issuers:\n{issuers}routes:\n{routes}",
        pool("app", &[up.addr().to_string()], &[])
    )
}

/// GET `url` with `token`: status and body.
async fn get(url: &str, token: &str) -> (u16, String) {
    let resp = client()
        .get(url)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Wait until `GET url` with `token` is answered with `status`.
async fn wait_status(url: &str, token: &str, status: u16) {
    eventually(
        &format!("{status} from {url}"),
        Duration::from_secs(10),
        || async {
            let (got, body) = get(url, token).await;
            if got == status {
                Ok(())
            } else {
                Err(format!("{got}: {body}"))
            }
        },
    )
    .await;
}

/// Wait until fetches of issuer `name` with `outcome` exceed `than`; gives the count.
async fn wait_fetches_over(proxy: &Proxy, name: &str, outcome: &str, than: f64) -> f64 {
    eventually(
        &format!("a fetch for `{name}` with outcome {outcome}"),
        Duration::from_secs(10),
        || async {
            let got = proxy
                .metric(FETCHES, &[("issuer", name), ("result", outcome)])
                .await;
            if got > than {
                Ok(got)
            } else {
                Err(format!("reads {got}"))
            }
        },
    )
    .await
}

/// Wait until issuer `name` finished a first fetch, whatever its outcome.
async fn wait_first_fetch(proxy: &Proxy, name: &str) {
    eventually(
        &format!("a first fetch for `{name}`"),
        Duration::from_secs(10),
        || async {
            let m = proxy.metrics().await;
            let done = ["success", "error"]
                .iter()
                .filter_map(|o| m.get(FETCHES, &[("issuer", name), ("result", o)]))
                .sum::<f64>();
            if done > 0.0 {
                Ok(())
            } else {
                Err("none yet".into())
            }
        },
    )
    .await;
}

/// The `sub`s the upstream received.
fn subs(up: &Upstream) -> Vec<String> {
    up.received()
        .iter()
        .filter_map(|e| e.header("x-user-id"))
        .collect()
}

/// The proxy's log lines that say a key set fetch failed.
fn failed_fetch_lines(proxy: &Proxy) -> Vec<String> {
    proxy
        .stderr()
        .lines()
        .filter(|l| l.contains("key set fetch failed"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_redirected_to_another_host_is_refused_and_the_last_good_keys_kept() {
    // The attacker's key set, on plain http at a non-loopback address.
    let attacker =
        NetnsServer::start(&[("/jwks.json", &key_set(&[(EC256, "evil")]).to_string())]).await;
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(RSA, "good")])).await;
    jwks.set_redirect(JWKS_PATH, Some(&attacker.url("/jwks.json")));
    let source = format!("jwks_uri: \"{}\"", jwks.jwks_url());
    let proxy = Proxy::start(&config(
        &up,
        &issuer("corp", ISS, &source, "300ms"),
        &["corp"],
    ))
    .await;
    let url = proxy.url("/corp");
    wait_first_fetch(&proxy, "corp").await;

    // The redirect is refused: no keys, so the attacker's token meets a 503, and nothing
    // reached the attacker's host or the upstream.
    let evil = token(EC256, Some("evil"), "mallory");
    let (status, body) = get(&url, &evil).await;
    assert_eq!(status, 503, "the attacker's token: {body}");
    assert_eq!(up.hits(), 0);
    assert_eq!(attacker.requests(), 0);
    wait_fetches_over(&proxy, "corp", "error", 0.0).await;
    let lines = failed_fetch_lines(&proxy);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("redirect to") && l.contains("refused")),
        "no log line says the redirect was refused: {lines:?}"
    );

    // The provider serves its keys again: they load.
    jwks.set_redirect(JWKS_PATH, None);
    wait_status(&url, &token(RSA, Some("good"), "alice"), 200).await;

    // It redirects again: each background refresh fails, the last good keys keep serving,
    // and a token of the attacker's key (an unknown kid, so a fetch) is refused.
    let errors = proxy
        .metric(FETCHES, &[("issuer", "corp"), ("result", "error")])
        .await;
    jwks.set_redirect(JWKS_PATH, Some(&attacker.url("/jwks.json")));
    wait_fetches_over(&proxy, "corp", "error", errors).await;
    proxy.wait_metric(STALE, &[("issuer", "corp")], 1.0).await;
    let (status, body) = get(&url, &token(EC256, Some("evil"), "mallory-2")).await;
    assert_eq!(status, 401, "the attacker's token: {body}");
    let (status, body) = get(&url, &token(RSA, Some("good"), "bob")).await;
    assert_eq!(status, 200, "a good token on the last good keys: {body}");
    assert_eq!(attacker.requests(), 0);
    assert_eq!(subs(&up), ["alice", "bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_document_redirected_to_another_host_is_refused() {
    let up = Upstream::start("app").await;
    // The provider, whose discovery document redirects to the attacker's host; that document
    // names the issuer and a key set of the attacker's on a URL that would itself pass.
    let idp = JwksServer::start(key_set(&[(RSA, "good")])).await;
    let evil_keys = JwksServer::start(key_set(&[(EC256, "evil")])).await;
    let doc = json!({"issuer": idp.base_url(), "jwks_uri": evil_keys.jwks_url()});
    let attacker = NetnsServer::start(&[(DISCOVERY_PATH, &doc.to_string())]).await;
    idp.set_redirect(DISCOVERY_PATH, Some(&attacker.url(DISCOVERY_PATH)));
    let proxy = Proxy::start(&config(
        &up,
        &issuer("corp", &idp.base_url(), "discovery: true", "60s"),
        &["corp"],
    ))
    .await;
    let url = proxy.url("/corp");
    wait_first_fetch(&proxy, "corp").await;

    let evil = token_for(&idp.base_url(), EC256, Some("evil"), "mallory");
    let (status, body) = get(&url, &evil).await;
    assert_eq!(status, 503, "the attacker's token: {body}");
    assert_eq!(attacker.requests(), 0);
    assert_eq!(evil_keys.jwks_fetches(), 0);
    assert_eq!(up.hits(), 0);
    wait_fetches_over(&proxy, "corp", "error", 0.0).await;

    // A redirect that stays where the configured URL could point is followed: the provider
    // moved its document to another loopback server.
    let moved = JwksServer::start(key_set(&[(RSA, "good")])).await;
    moved.set_discovery_issuer(&idp.base_url());
    idp.set_redirect(
        DISCOVERY_PATH,
        Some(&format!("{}{DISCOVERY_PATH}", moved.base_url())),
    );
    let good = token_for(&idp.base_url(), RSA, Some("good"), "alice");
    wait_status(&url, &good, 200).await;
    assert_eq!(moved.jwks_fetches(), 1);
    assert_eq!(attacker.requests(), 0);
    assert_eq!(subs(&up), ["alice"]);
}

/// `n` fresh P-256 keys, each listed under `kid`: their PEMs and their JWKS.
fn keys_under(kid: &str, n: usize) -> (Vec<String>, Vec<Value>) {
    (0..n).map(|_| generate_es256(kid).unwrap()).unzip()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sharing_a_kid_are_each_tried_up_to_four() {
    let up = Upstream::start("app").await;
    // A rotation in progress: K1 and K2 under one kid (next to an RSA key of another kid).
    let (pems, mut listed) = keys_under("k", 3);
    let third = pems[2].clone();
    listed.truncate(2);
    listed.push(crate::support::jwks::jwk(RSA, "rsa"));
    let pair = JwksServer::start(json!({ "keys": listed })).await;
    // Six keys under one kid: only the first four are ever tried.
    let (wide_pems, wide_keys) = keys_under("k", 6);
    let wide = JwksServer::start(json!({ "keys": wide_keys })).await;
    const WIDE: &str = "https://wide.example.com/";
    let issuers = [
        issuer(
            "pair",
            ISS,
            &format!("jwks_uri: \"{}\"", pair.jwks_url()),
            "60s",
        ),
        issuer(
            "wide",
            WIDE,
            &format!("jwks_uri: \"{}\"", wide.jwks_url()),
            "60s",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config(&up, &issuers, &["pair", "wide"])).await;
    let (pair_url, wide_url) = (proxy.url("/pair"), proxy.url("/wide"));
    wait_status(&pair_url, &token(RSA, Some("rsa"), "ready"), 200).await;
    wait_fetches_over(&proxy, "wide", "success", 0.0).await;
    let fetched = (pair.jwks_fetches(), wide.jwks_fetches());

    // Tokens of either key of the pair pass, each of them twice (the second from the cache).
    for (i, pem) in pems[..2].iter().enumerate() {
        let t = token(pem, Some("k"), &format!("k{}", i + 1));
        for _ in 0..2 {
            let (status, body) = get(&pair_url, &t).await;
            assert_eq!(status, 200, "a token of K{}: {body}", i + 1);
        }
    }
    // A third key under the same kid is not in the set.
    let (status, body) = get(&pair_url, &token(&third, Some("k"), "k3")).await;
    assert_eq!(status, 401, "a token of K3: {body}");
    assert!(body.contains("the token signature is invalid"), "{body}");

    // Without a kid the keys of the token's algorithm are tried the same way.
    let (status, body) = get(&pair_url, &token(&pems[1], None, "k2-no-kid")).await;
    assert_eq!(status, 200, "a token of K2 without kid: {body}");

    // Of six keys under one kid, the first four verify and the others are never tried.
    for (i, pem) in wide_pems.iter().enumerate() {
        let sub = format!("wide-{}", i + 1);
        for kid in [Some("k"), None] {
            let (status, body) = get(&wide_url, &token_for(WIDE, pem, kid, &sub)).await;
            let want = if i < 4 { 200 } else { 401 };
            assert_eq!(status, want, "key {} of 6, kid {kid:?}: {body}", i + 1);
        }
    }
    // None of that needed a fetch: the kid was known.
    assert_eq!((pair.jwks_fetches(), wide.jwks_fetches()), fetched);
    let mut want = ["ready", "k1", "k1", "k2", "k2", "k2-no-kid"]
        .map(String::from)
        .to_vec();
    for i in 1..=4 {
        want.extend([format!("wide-{i}"), format!("wide-{i}")]);
    }
    assert_eq!(subs(&up), want);
}

/// Key sets over HTTPS from a server whose certificate a local CA issued: an issuer with that
/// CA as `ca_file` gets the keys; one without it (system roots only) is refused; and when the
/// server turns to a certificate the CA did not issue, the fetch is refused, counted, and the
/// last good keys keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_key_servers_are_trusted_by_ca_file() {
    use crate::support::tls::{Ca, TlsFront};
    let jwks = JwksServer::start(key_set(&[(EC256, "k1")])).await;
    let ca = Ca::new("identity CA");
    let front = TlsFront::start(jwks.addr(), ca.issue(&["127.0.0.1"]).server_config(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("idp-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let uri = format!("https://{}{JWKS_PATH}", front.addr());
    let (internal, public) = ("https://internal.test/", "https://public.test/");
    let issuers = format!(
        "{}{}",
        issuer(
            "internal",
            internal,
            &format!(
                "jwks_uri: \"{uri}\"\n    ca_file: \"{}\"",
                ca_file.display()
            ),
            "1s"
        ),
        issuer("public", public, &format!("jwks_uri: \"{uri}\""), "1s"),
    );
    let up = Upstream::start("app").await;
    let proxy = Proxy::start(&config(&up, &issuers, &["internal", "public"])).await;

    let good = token_for(internal, EC256, Some("k1"), "alice");
    wait_status(&proxy.url("/internal"), &good, 200).await;
    // Trusting the system's roots only, the same server is refused.
    wait_fetches_over(&proxy, "public", "error", 0.0).await;
    let (status, body) = get(
        &proxy.url("/public"),
        &token_for(public, EC256, Some("k1"), "bob"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        proxy
            .metric(FETCHES, &[("issuer", "public"), ("result", "success")])
            .await,
        0.0
    );
    assert!(
        proxy.stderr().contains("UnknownIssuer"),
        "the failed fetch says why:\n{}",
        proxy.stderr()
    );

    // A certificate from another CA: refused at the next refresh, last good keys kept.
    let errors = proxy
        .metric(FETCHES, &[("issuer", "internal"), ("result", "error")])
        .await;
    let stranger = Ca::new("stranger");
    front.set_config(stranger.issue(&["127.0.0.1"]).server_config(None));
    wait_fetches_over(&proxy, "internal", "error", errors).await;
    assert_eq!(proxy.metric(STALE, &[("issuer", "internal")]).await, 1.0);
    let (status, body) = get(&proxy.url("/internal"), &good).await;
    assert_eq!(status, 200, "{body}");

    // The CA file's content changes and a reload reads it: the rebuilt issuer keeps serving
    // the last keys while its fetches still fail (a third CA) ...
    let reload = || proxy.reload_ok();
    std::fs::write(&ca_file, Ca::new("third").pem).unwrap();
    let errors = proxy
        .metric(FETCHES, &[("issuer", "internal"), ("result", "error")])
        .await;
    reload().await;
    wait_fetches_over(&proxy, "internal", "error", errors).await;
    let (status, body) = get(&proxy.url("/internal"), &good).await;
    assert_eq!(status, 200, "{body}");
    // ... and fetches again once the file holds the CA the server's certificate comes from.
    std::fs::write(&ca_file, &stranger.pem).unwrap();
    let successes = proxy
        .metric(FETCHES, &[("issuer", "internal"), ("result", "success")])
        .await;
    reload().await;
    wait_fetches_over(&proxy, "internal", "success", successes).await;
    assert_eq!(proxy.metric(STALE, &[("issuer", "internal")]).await, 0.0);
}
