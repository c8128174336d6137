//! Calls to the provider (RFC 6749 token endpoint for codes and refresh tokens, RFC 7009
//! revocation) and the ID token check of OpenID Connect Core 1.0 section 3.1.3.7.
//!
//! Each call has the session's `provider_timeout`, reads at most [`MAX_ANSWER_BYTES`], is
//! counted in `portcullis_session_provider_calls_total`, and logs only the provider's
//! `error` code: never a token, a code or the secret.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Client;
use crate::auth::token::verify_signed;
use crate::metrics::{SessionMetrics, SESSION_METRICS};

/// The largest answer read from the provider.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A token endpoint's answer (RFC 6749 section 5.1).
#[derive(Deserialize)]
pub struct Tokens {
    /// The access token.
    pub access_token: String,
    /// Its lifetime in seconds.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// A refresh token (a new one when the provider rotates them).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// The ID token.
    #[serde(default)]
    pub id_token: Option<String>,
    /// The scopes granted, when they differ from those asked.
    #[serde(default)]
    pub scope: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

/// Why a call to the provider did not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// `invalid_grant`: the code or refresh token is not (or no longer) good.
    InvalidGrant,
    /// Another OAuth error code from the provider.
    Refused(String),
    /// The provider could not be reached, timed out or answered nonsense.
    Unavailable(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::InvalidGrant => f.write_str("invalid_grant"),
            CallError::Refused(code) => write!(f, "refused: {code}"),
            CallError::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 appendix B).
pub fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Client {
    /// POST `form` to the endpoint `url` with the client's authentication; the answer's
    /// body when it is a success.
    async fn post(
        &self,
        url: &reqwest::Url,
        form: &[(&str, &str)],
        call: &str,
    ) -> Result<Vec<u8>, CallError> {
        let result = self.post_unmetered(url, form).await;
        let outcome = match &result {
            Ok(_) | Err(CallError::InvalidGrant | CallError::Refused(_)) => "success",
            Err(CallError::Unavailable(_)) => "error",
        };
        SESSION_METRICS
            .provider_calls
            .with_label_values(&[self.name(), call, outcome])
            .inc();
        result
    }

    async fn post_unmetered(
        &self,
        url: &reqwest::Url,
        form: &[(&str, &str)],
    ) -> Result<Vec<u8>, CallError> {
        let http = self
            .issuer
            .client()
            .ok_or_else(|| CallError::Unavailable("HTTP client unavailable".into()))?;
        let mut body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
        let mut request = http
            .post(url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        match &self.secret {
            // RFC 6749 section 2.3.1: both parts form-encoded, then Basic.
            Some(secret) => {
                let pair = format!(
                    "{}:{}",
                    form_encode(&self.config.client_id),
                    form_encode(secret)
                );
                let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                request = request.header("authorization", format!("Basic {basic}"));
            }
            None => body.push(format!("client_id={}", form_encode(&self.config.client_id))),
        }
        let timeout: Duration = self.config.provider_timeout.0;
        let call = async {
            let mut resp = request
                .body(body.join("&"))
                .send()
                .await
                .map_err(|e| CallError::Unavailable(crate::auth::fetch::describe(&e)))?;
            let status = resp.status();
            let mut answer = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| CallError::Unavailable(crate::auth::fetch::describe(&e)))?
            {
                if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(CallError::Unavailable("answer too large".into()));
                }
                answer.extend_from_slice(&chunk);
            }
            if status.is_success() {
                return Ok(answer);
            }
            // RFC 6749 section 5.2: an error code in JSON; a 5xx or anything else is the
            // provider being unwell, not an answer.
            let code = serde_json::from_slice::<Value>(&answer)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string));
            match code {
                Some(code) if code == "invalid_grant" => Err(CallError::InvalidGrant),
                Some(code) if status.is_client_error() => Err(CallError::Refused(
                    code.chars()
                        .filter(|c| c.is_ascii_graphic())
                        .take(64)
                        .collect(),
                )),
                _ => Err(CallError::Unavailable(format!("status {status}"))),
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| CallError::Unavailable(format!("timed out after {timeout:?}")))?
    }

    /// The token endpoint, from discovery.
    fn token_endpoint(&self) -> Result<reqwest::Url, CallError> {
        self.issuer
            .endpoints()
            .and_then(|e| e.token.clone())
            .ok_or_else(|| CallError::Unavailable("no token endpoint discovered yet".into()))
    }

    /// Redeem an authorization code.
    ///
    /// # Errors
    /// [`CallError`].
    pub async fn redeem_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Tokens, CallError> {
        let url = self.token_endpoint()?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let body = self.post(&url, &form, "token").await?;
        parse_tokens(&body)
    }

    /// Redeem a refresh token.
    ///
    /// # Errors
    /// [`CallError`].
    pub async fn redeem_refresh(&self, refresh_token: &str) -> Result<Tokens, CallError> {
        let url = self.token_endpoint()?;
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let body = self.post(&url, &form, "refresh").await?;
        parse_tokens(&body)
    }

    /// Revoke a refresh token at the provider (RFC 7009), when it has a revocation endpoint.
    /// Failures are logged, never shown: the session ends here either way.
    pub async fn revoke(&self, refresh_token: &str) {
        let Some(url) = self.issuer.endpoints().and_then(|e| e.revocation.clone()) else {
            return;
        };
        let form = [
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
        ];
        if let Err(e) = self.post(&url, &form, "revocation").await {
            tracing::warn!(session = %self.name(), error = %e, "refresh token revocation failed");
        }
    }

    /// Check an ID token (signature with the issuer's keys, `iss`, `aud` = client id, `exp`,
    /// `azp` when several audiences, and `nonce` when one is expected) and give its claims.
    ///
    /// # Errors
    /// A short reason, safe to log.
    pub async fn check_id_token(
        &self,
        id_token: &str,
        nonce: Option<&str>,
    ) -> Result<Map<String, Value>, String> {
        let audiences = [self.config.client_id.clone()];
        let issuers = [std::sync::Arc::clone(&self.issuer)];
        let verified = verify_signed(id_token, &issuers, Some(&audiences))
            .await
            .map_err(|e| format!("ID token refused: {}", e.reason()))?;
        let claims = verified.claims;
        if let Some(Value::Array(aud)) = claims.get("aud") {
            if aud.len() > 1
                && claims.get("azp").and_then(Value::as_str) != Some(&self.config.client_id)
            {
                return Err("ID token refused: azp is not the client id".into());
            }
        }
        if let Some(expected) = nonce {
            let got = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
            if !super::seal::same(got.as_bytes(), expected.as_bytes()) {
                return Err("ID token refused: nonce does not match".into());
            }
        }
        if claims
            .get("sub")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err("ID token refused: no sub".into());
        }
        Ok(claims)
    }

    /// The claims a session keeps: the ID token's, overlaid with the access token's when it
    /// is a JWT this issuer signed for its audiences (it then carries the scopes), else with
    /// the `scope` the token endpoint granted.
    pub async fn session_claims(
        &self,
        id_claims: Map<String, Value>,
        tokens: &Tokens,
    ) -> Map<String, Value> {
        let mut claims = id_claims;
        let issuers = [std::sync::Arc::clone(&self.issuer)];
        match verify_signed(&tokens.access_token, &issuers, None).await {
            Ok(verified) => claims.extend(verified.claims),
            Err(_) => {
                if let Some(scope) = &tokens.scope {
                    claims.insert("scope".into(), Value::String(scope.clone()));
                }
            }
        }
        for gone in ["nonce", "at_hash", "c_hash", "s_hash", "nbf", "jti"] {
            claims.remove(gone);
        }
        claims
    }
}

fn parse_tokens(body: &[u8]) -> Result<Tokens, CallError> {
    let tokens: Tokens = serde_json::from_slice(body)
        .map_err(|_| CallError::Unavailable("token answer is not the expected JSON".into()))?;
    if tokens.access_token.is_empty() {
        return Err(CallError::Unavailable(
            "token answer has no access token".into(),
        ));
    }
    Ok(tokens)
}

/// Count a login's result.
pub fn count_login(client: &Client, result: &str) {
    SessionMetrics::count(&SESSION_METRICS.logins, client.name(), result);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::{refresh::Refreshes, seal::Sealer, Client, Purposes, Shared, SharedKey};
    use crate::auth::fetch::Trust;
    use crate::auth::issuer::ASYMMETRIC;
    use crate::auth::tools::{generate_es256, mint};
    use crate::auth::{Issuer, KeySource};

    const ISS: &str = "https://id.test";

    /// A client of an issuer whose key set is a file holding `jwk`.
    fn client(dir: &tempfile::TempDir, jwk: serde_json::Value) -> Client {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({ "keys": [jwk] }).to_string()).unwrap();
        let ic = serde_yaml::from_str(&format!(
            "{{name: idp, issuer: '{ISS}', jwks_file: '{}'}}",
            path.display()
        ))
        .unwrap();
        let issuer = Issuer::new(
            &ic,
            KeySource::File(path),
            ASYMMETRIC.to_vec(),
            None,
            Trust::default(),
        )
        .unwrap();
        let config: crate::config::SessionConfig = serde_yaml::from_str(
            "{name: web, issuer: idp, client_id: web-app, cookie_keys_env: K}",
        )
        .unwrap();
        let sealer = Sealer::from_text("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY").unwrap();
        let shared = Shared {
            cache: crate::store::Store::new(10, 10),
            refreshes: Refreshes::new(10),
            redis: None,
            hash: ahash::RandomState::new(),
            key: SharedKey {
                name: "web".into(),
                store: config.store,
                redis: None,
                cache_sessions: 10,
                seal: sealer.fingerprint,
                issuer_id: issuer.id,
                projection: Arc::default(),
            },
        };
        Client {
            purposes: Purposes::of("web"),
            config,
            issuer: Arc::new(issuer),
            secret: None,
            sealer,
            projection: Arc::default(),
            shared: Arc::new(shared),
        }
    }

    #[tokio::test]
    async fn id_tokens_are_checked_as_openid_connect_says() {
        let dir = tempfile::tempdir().unwrap();
        let (key, jwk) = generate_es256("k1").unwrap();
        let (other_key, _) = generate_es256("k1").unwrap();
        let c = client(&dir, jwk);
        let now = crate::auth::cache::unix_now();
        let good = json!({"iss": ISS, "aud": "web-app", "sub": "alice", "nonce": "n-1",
                          "iat": now, "exp": now + 300});
        let token = |claims: &serde_json::Value, key: &str| {
            mint(key, &claims.to_string(), None, Some("k1")).unwrap()
        };
        let claims = c
            .check_id_token(&token(&good, &key), Some("n-1"))
            .await
            .unwrap();
        assert_eq!(claims["sub"], "alice");
        // A refreshed ID token carries no nonce to compare.
        assert!(c.check_id_token(&token(&good, &key), None).await.is_ok());
        let with = |field: &str, value: serde_json::Value| {
            let mut claims = good.clone();
            claims[field] = value;
            claims
        };
        let without = |field: &str| {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove(field);
            claims
        };
        for (why, claims, signer) in [
            ("another nonce", with("nonce", json!("n-2")), &key),
            ("no nonce", without("nonce"), &key),
            ("another audience", with("aud", json!("other-app")), &key),
            ("no audience", without("aud"), &key),
            (
                "another issuer",
                with("iss", json!("https://evil.test")),
                &key,
            ),
            ("expired", with("exp", json!(now - 3600)), &key),
            ("no sub", without("sub"), &key),
            (
                "several audiences, no azp",
                with("aud", json!(["web-app", "other"])),
                &key,
            ),
            ("signed by another key", good.clone(), &other_key),
        ] {
            let result = c.check_id_token(&token(&claims, signer), Some("n-1")).await;
            assert!(result.is_err(), "{why} passed");
        }
        let mut azp = with("aud", json!(["web-app", "other"]));
        azp["azp"] = json!("web-app");
        assert!(c
            .check_id_token(&token(&azp, &key), Some("n-1"))
            .await
            .is_ok());
    }
}
