//! A real, certified OpenID provider: Node's `oidc-provider` (`tests/oidc/provider.mjs`,
//! pinned by `tests/oidc/package-lock.json`, installed by `make node`), a child process on a
//! port of 127.0.0.1, killed on drop.
//!
//! It does PKCE (S256, required), rotates refresh tokens and revokes the whole grant when a
//! rotated one comes back, issues RS256 JWT access tokens (or opaque ones, per client),
//! introspection, revocation, end-session and back-channel logout, and logs a test user in
//! without a form. Its `/_test/…` hooks give counters ([`Stats`]), send real back-channel
//! logout tokens, pick who logs in next and slow the token endpoint down.
//!
//! [`Rp`] plays the relying party (what Portcullis does) for tests of the provider itself and
//! for tests that need real tokens: [`Provider::login`] runs the whole code flow through a
//! [`Browser`].

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::browser::{describe, Browser, Hop};

/// The default resource indicator, and the `aud` of every access token.
pub const RESOURCE: &str = "urn:portcullis:api";

/// The directory of the provider's script and its `node_modules`.
fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// The node binary: `PORTCULLIS_TEST_NODE` (the Makefile sets it after checking its version),
/// or `node` on the PATH.
fn node() -> PathBuf {
    std::env::var_os("PORTCULLIS_TEST_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

/// A running provider. Dropping it kills it.
pub struct Provider {
    child: Option<Child>,
    /// Held open: the script exits when its stdin closes, so it dies with the test process
    /// even when `Drop` never runs.
    _stdin: Option<ChildStdin>,
    issuer: String,
    port: u16,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
}

/// Counters the provider keeps since it started (or since [`Provider::reset_stats`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Requests the authorization endpoint answered.
    pub authorizations: u64,
    /// Interactions that logged an account in.
    pub logins: u64,
    /// Interactions refused because of [`Provider::deny_logins`].
    pub denied: u64,
    /// Successful `authorization_code` grants.
    pub code_grants: u64,
    /// Successful `refresh_token` grants.
    pub refresh_grants: u64,
    /// `refresh_token` grants answered `invalid_grant`, whatever the cause.
    pub refresh_invalid_grant: u64,
    /// Of those: a rotated refresh token presented again (the whole grant was revoked).
    pub refresh_reuse_detected: u64,
    pub client_credentials_grants: u64,
    /// Token endpoint errors of any grant type.
    pub token_errors: u64,
    /// Grants revoked (refresh reuse, revocation of a refresh token, logout).
    pub grants_revoked: u64,
    /// Successful calls of the revocation endpoint.
    pub revocations: u64,
    /// Successful calls of the introspection endpoint, and how many said `active: true`.
    pub introspections: u64,
    pub introspections_active: u64,
    pub userinfo: u64,
    /// Completed RP-initiated logouts (end_session confirmations).
    pub end_session: u64,
    /// Each back-channel logout sent, triggered or from an end-session, in order.
    pub backchannel_logouts: Vec<BackchannelLogout>,
}

/// One back-channel logout token the provider POSTed, and how it went.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BackchannelLogout {
    pub client_id: String,
    pub sub: String,
    pub sid: Option<String>,
    /// The client's `backchannel_logout_uri`.
    pub url: String,
    /// The client answered 200 or 204.
    pub ok: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl Provider {
    /// Start one on a free port with `config` (the JSON object `tests/oidc/provider.mjs`
    /// documents: `clients`, `access_token_ttl`, `refresh_token_ttl`, ...), and wait until it
    /// listens.
    pub async fn start(config: Value) -> Provider {
        Provider::start_on(0, config).await
    }

    /// As [`Provider::start`], on `port` (0: a free one): for tests whose proxies must know
    /// the issuer's URL before the provider can know theirs (redirect URIs). Panics when it
    /// does not start; [`Provider::try_start_on`] says why instead.
    pub async fn start_on(port: u16, config: Value) -> Provider {
        Provider::try_start_on(port, config)
            .await
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// As [`Provider::start_on`]; `Err` says why it did not start (a port picked as free may
    /// have been taken since: the message then holds `EADDRINUSE`).
    pub async fn try_start_on(port: u16, config: Value) -> Result<Provider, String> {
        let module = dir().join("node_modules/oidc-provider/package.json");
        assert!(
            module.exists(),
            "{} is missing: the OpenID provider of the tests is not installed; `make node` installs it",
            module.display()
        );
        let mut child = Command::new(node())
            .arg(dir().join("provider.mjs"))
            .arg(port.to_string())
            .arg(config.to_string())
            .current_dir(dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; the OpenID provider of the tests needs Node.js 20.18 or later (`make node` checks)",
                    node().display()
                )
            });
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = child.stderr.take().unwrap();
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        {
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                for line in lines.by_ref() {
                    let Ok(line) = line else { break };
                    if let Some(issuer) = line.strip_prefix("READY ") {
                        let _ = tx.send(issuer.to_string());
                        break;
                    }
                }
                // Keep draining so that the provider never blocks on a full pipe.
                for _ in lines {}
            });
        }
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
            .await
            .unwrap();
        let issuer = match ready {
            Ok(issuer) => issuer,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                let version = Command::new(node())
                    .arg("--version")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_else(|e| e.to_string());
                return Err(format!(
                    "the OpenID provider did not start (node {version}; it needs 20.18 or later): {}",
                    stderr.lock().unwrap()
                ));
            }
        };
        let port = issuer.rsplit(':').next().unwrap().parse().unwrap();
        Ok(Provider {
            child: Some(child),
            _stdin: stdin,
            issuer,
            port,
            stderr,
            http: super::client(),
        })
    }

    /// The issuer, `http://127.0.0.1:PORT` (or the config's `host`; no trailing slash), as its
    /// tokens name it.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `path` on the provider.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// What it wrote on stderr so far (warnings, errors).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Kill it now (an unreachable provider); the port then refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its discovery document.
    pub async fn discovery(&self) -> Value {
        self.get_json("/.well-known/openid-configuration").await
    }

    /// Its key set (one RSA key, RS256, fresh on each start).
    pub async fn jwks(&self) -> Value {
        let uri = self.discovery().await["jwks_uri"]
            .as_str()
            .unwrap()
            .to_string();
        self.http
            .get(uri)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Its counters.
    pub async fn stats(&self) -> Stats {
        serde_json::from_value(self.get_json("/_test/stats").await).unwrap()
    }

    /// Zero its counters.
    pub async fn reset_stats(&self) {
        self.post_hook("/_test/reset", json!({})).await;
    }

    /// Who the next interactions log in (unless the request names a `login_hint`, or the
    /// browser has a `test_account` cookie for the provider); `None`: the default, `alice`.
    pub async fn set_login(&self, account: Option<&str>) {
        self.post_hook("/_test/login", json!({ "account": account }))
            .await;
    }

    /// Make the next interactions fail with `error` (e.g. `access_denied`): the client gets
    /// `error=...` at its redirect URI. [`Provider::set_login`] undoes it.
    pub async fn deny_logins(&self, error: &str) {
        self.post_hook("/_test/login", json!({ "deny": error }))
            .await;
    }

    /// Hold each token request for `delay` before answering it (a slow provider).
    pub async fn set_token_delay(&self, delay: Duration) {
        self.post_hook(
            "/_test/delay",
            json!({ "token_ms": u64::try_from(delay.as_millis()).unwrap() }),
        )
        .await;
    }

    /// Have the provider sign a logout token for `sub` (and `sid`, which the client's
    /// `backchannel_logout_session_required`, true by default, puts in it) and POST it to the
    /// `backchannel_logout_uri` of `client_id`; what happened. It ends no session at the
    /// provider: it is the message alone.
    pub async fn trigger_backchannel(
        &self,
        client_id: &str,
        sub: &str,
        sid: Option<&str>,
    ) -> BackchannelLogout {
        let answer = self
            .post_hook(
                "/_test/backchannel_logout",
                json!({ "client_id": client_id, "sub": sub, "sid": sid }),
            )
            .await;
        serde_json::from_value(answer).unwrap()
    }

    /// The authorization request URL for `rp`, asking for `scope`.
    pub fn authorize_url(&self, rp: &Rp, scope: &str, flow: &Flow) -> String {
        let mut url = reqwest::Url::parse(&self.url("/auth")).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", &rp.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &rp.redirect_uri)
            .append_pair("scope", scope)
            .append_pair("state", &flow.state)
            .append_pair("nonce", &flow.nonce)
            .append_pair("code_challenge", &flow.challenge())
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    }

    /// The whole code flow as a relying party would run it: the browser goes to the
    /// authorization endpoint, the provider logs the user in without a form, the code comes
    /// back at `rp.redirect_uri` (not requested: nothing needs to listen there), `state` is
    /// checked and the code redeemed with the PKCE verifier.
    pub async fn login(&self, browser: &Browser, rp: &Rp, scope: &str) -> Login {
        let flow = Flow::new();
        let hops = browser
            .follow_until(&self.authorize_url(rp, scope, &flow), |u| {
                u.as_str().starts_with(&rp.redirect_uri)
            })
            .await;
        let last = hops.last().unwrap();
        let code = last
            .location_param("code")
            .unwrap_or_else(|| panic!("no code came back:\n  {}", describe(&hops)));
        assert_eq!(
            last.location_param("state").as_deref(),
            Some(flow.state.as_str()),
            "state"
        );
        let tokens = self
            .redeem(rp, &code, &flow.verifier)
            .await
            .unwrap_or_else(|e| panic!("code redemption: {e:?}"));
        Login { flow, hops, tokens }
    }

    /// Redeem an authorization code.
    ///
    /// # Errors
    /// The provider's error answer.
    pub async fn redeem(&self, rp: &Rp, code: &str, verifier: &str) -> Result<Tokens, TokenError> {
        self.token(
            rp,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &rp.redirect_uri),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    /// Redeem a refresh token.
    ///
    /// # Errors
    /// The provider's error answer (`invalid_grant` for a used, revoked or expired one).
    pub async fn refresh(&self, rp: &Rp, refresh_token: &str) -> Result<Tokens, TokenError> {
        self.token(
            rp,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    /// Introspect `token` as client `client_id` with `secret` (RFC 7662); the answer.
    pub async fn introspect(&self, client_id: &str, secret: &str, token: &str) -> Value {
        let uri = self.discovery().await["introspection_endpoint"]
            .as_str()
            .unwrap()
            .to_string();
        let resp = self
            .http
            .post(uri)
            .basic_auth(client_id, Some(secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "introspection");
        resp.json().await.unwrap()
    }

    /// Revoke `token` (RFC 7009) as `rp`; the status.
    pub async fn revoke(&self, rp: &Rp, token: &str) -> u16 {
        let uri = self.discovery().await["revocation_endpoint"]
            .as_str()
            .unwrap()
            .to_string();
        let mut form = vec![("token", token.to_string())];
        let mut req = self.http.post(uri);
        match &rp.client_secret {
            Some(secret) => req = req.basic_auth(&rp.client_id, Some(secret)),
            None => form.push(("client_id", rp.client_id.clone())),
        }
        req.form(&form).send().await.unwrap().status().as_u16()
    }

    /// Verify an RS256 JWT (ID token, JWT access token, logout token) with the provider's
    /// JWKS, by ring alone; its claims. Panics when the signature does not verify.
    pub async fn verify_jwt(&self, token: &str) -> Value {
        let jwks = self.jwks().await;
        let (header, claims) = decode_jwt(token);
        assert_eq!(header["alg"], "RS256", "{header}");
        let key = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .unwrap_or_else(|| panic!("no key {} in {jwks}", header["kid"]));
        let b64 = |field: &str| {
            URL_SAFE_NO_PAD
                .decode(key[field].as_str().unwrap())
                .unwrap()
        };
        let (n, e) = (b64("n"), b64("e"));
        let (signed, signature) = token.rsplit_once('.').unwrap();
        ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                signed.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap(),
            )
            .unwrap_or_else(|_| panic!("the signature of a token does not verify"));
        claims
    }

    async fn token(&self, rp: &Rp, form: &[(&str, &str)]) -> Result<Tokens, TokenError> {
        let mut form: Vec<(&str, &str)> = form.to_vec();
        let mut req = self.http.post(self.url("/token"));
        match (&rp.client_secret, rp.secret_in_body) {
            (Some(secret), false) => req = req.basic_auth(&rp.client_id, Some(secret)),
            (Some(secret), true) => {
                form.push(("client_id", &rp.client_id));
                form.push(("client_secret", secret));
            }
            (None, _) => form.push(("client_id", &rp.client_id)),
        }
        let resp = req.form(&form).send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        if status == 200 {
            Ok(Tokens::from_json(body))
        } else {
            Err(TokenError {
                status,
                error: body["error"].as_str().unwrap_or_default().to_string(),
                description: body["error_description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            })
        }
    }

    async fn get_json(&self, path: &str) -> Value {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    async fn post_hook(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "POST {path}: {answer}");
        answer
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client of the provider as a test plays it (the part Portcullis plays in session tests).
#[derive(Debug, Clone)]
pub struct Rp {
    pub client_id: String,
    /// `None`: a public client (PKCE only).
    pub client_secret: Option<String>,
    pub redirect_uri: String,
    /// Send the secret in the form (`client_secret_post`) rather than by basic auth.
    pub secret_in_body: bool,
}

impl Rp {
    /// A public client.
    pub fn public(client_id: &str, redirect_uri: &str) -> Rp {
        Rp {
            client_id: client_id.to_string(),
            client_secret: None,
            redirect_uri: redirect_uri.to_string(),
            secret_in_body: false,
        }
    }

    /// A confidential client authenticating with basic auth (`client_secret_basic`).
    pub fn confidential(client_id: &str, secret: &str, redirect_uri: &str) -> Rp {
        Rp {
            client_secret: Some(secret.to_string()),
            ..Rp::public(client_id, redirect_uri)
        }
    }
}

/// The per-login values a relying party keeps: `state`, `nonce` and the PKCE verifier.
#[derive(Debug, Clone)]
pub struct Flow {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

impl Flow {
    /// Fresh random values.
    pub fn new() -> Flow {
        Flow {
            state: random(),
            nonce: random(),
            verifier: random() + &random(),
        }
    }

    /// The S256 code challenge of the verifier.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            self.verifier.as_bytes(),
        ))
    }
}

impl Default for Flow {
    fn default() -> Self {
        Flow::new()
    }
}

/// What [`Provider::login`] went through and got.
#[derive(Debug)]
pub struct Login {
    pub flow: Flow,
    /// Every hop from the authorization request to the redirect to the client.
    pub hops: Vec<Hop>,
    pub tokens: Tokens,
}

/// A token endpoint answer.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: u64,
    pub scope: String,
    /// The whole answer.
    pub json: Value,
}

impl Tokens {
    fn from_json(json: Value) -> Tokens {
        let s = |k: &str| json[k].as_str().map(str::to_string);
        Tokens {
            access_token: s("access_token").unwrap(),
            id_token: s("id_token"),
            refresh_token: s("refresh_token"),
            expires_in: json["expires_in"].as_u64().unwrap_or_default(),
            scope: s("scope").unwrap_or_default(),
            json,
        }
    }
}

/// A token endpoint error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub status: u16,
    pub error: String,
    pub description: String,
}

/// The header and claims of a JWT, unverified.
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = || -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap()
    };
    let header = part();
    let claims = part();
    (header, claims)
}

fn random() -> String {
    let bytes: [u8; 24] = std::array::from_fn(|_| fastrand::u8(..));
    URL_SAFE_NO_PAD.encode(bytes)
}
