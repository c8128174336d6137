//! The harness of the session tests, tested on its own: the real OpenID provider
//! (`support::oidc`), the cookie-jar browser (`support::browser`) and headless Chromium
//! (`support::chromium`). Nothing here goes through Portcullis: these prove that what the
//! session tests stand on does what they assume (PKCE required, refresh tokens rotated with
//! reuse revoking the chain, JWT access tokens verifiable with the JWKS, opaque tokens that
//! introspect, real back-channel logout tokens to loopback, a browser that lands on a page).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::browser::{describe, Browser};
use crate::support::chromium;
use crate::support::oidc::{decode_jwt, Flow, Provider, Rp, RESOURCE};
use crate::support::upstream::Fault;
use crate::support::Upstream;

/// A redirect URI where nothing needs to listen: the tests stop before following it.
const CALLBACK: &str = "http://127.0.0.1:9/callback";
const SCOPE: &str = "openid offline_access profile email api:read";

fn web_client(extra: Value) -> Value {
    let mut client = json!({
        "client_id": "web",
        "client_secret": "web-secret",
        "redirect_uris": [CALLBACK],
        "post_logout_redirect_uris": ["http://127.0.0.1:9/signed-out"],
    });
    client
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    client
}

fn web_rp() -> Rp {
    Rp::confidential("web", "web-secret", CALLBACK)
}

#[tokio::test]
async fn discovery_names_every_endpoint_sessions_use() {
    let provider = Provider::start(json!({ "clients": [web_client(json!({}))] })).await;
    let d = provider.discovery().await;
    assert_eq!(d["issuer"], provider.issuer());
    assert_eq!(
        provider.issuer(),
        format!("http://127.0.0.1:{}", provider.port())
    );
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "end_session_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "jwks_uri",
        "userinfo_endpoint",
    ] {
        let url = d[endpoint]
            .as_str()
            .unwrap_or_else(|| panic!("{endpoint}: {d}"));
        assert!(url.starts_with(provider.issuer()), "{endpoint}: {url}");
    }
    assert_eq!(d["backchannel_logout_supported"], true, "{d}");
    assert_eq!(d["backchannel_logout_session_supported"], true, "{d}");
    assert_eq!(
        d["code_challenge_methods_supported"],
        json!(["S256"]),
        "{d}"
    );
    let scopes = d["scopes_supported"].as_array().unwrap();
    for scope in ["openid", "offline_access", "profile", "email", "api:read"] {
        assert!(scopes.contains(&json!(scope)), "{scope}: {d}");
    }
    let keys = provider.jwks().await;
    assert_eq!(keys["keys"][0]["kty"], "RSA", "{keys}");

    // On another loopback address, its cookies stay apart from the servers' on 127.0.0.1.
    let apart = Provider::start(json!({ "host": "127.0.0.2" })).await;
    assert_eq!(apart.issuer(), format!("http://127.0.0.2:{}", apart.port()));
    assert_eq!(apart.discovery().await["issuer"], apart.issuer());
}

#[tokio::test]
async fn code_flow_with_pkce_then_refresh_rotation_and_reuse_revoking_the_chain() {
    let provider = Provider::start(json!({
        "clients": [web_client(json!({}))],
        "access_token_ttl": 30,
    }))
    .await;
    let browser = Browser::new();
    let login = provider.login(&browser, &web_rp(), SCOPE).await;

    // No form anywhere: the authorization endpoint, the interaction, the resumed authorization,
    // then the client's redirect URI with the code.
    let paths: Vec<&str> = login.hops.iter().map(|h| h.url.path()).collect();
    assert_eq!(paths.len(), 3, "{}", describe(&login.hops));
    assert_eq!(paths[0], "/auth");
    assert!(paths[1].starts_with("/interaction/"), "{paths:?}");
    assert!(login.hops.iter().all(|h| h.status.is_redirection()));
    let set_on_the_way: Vec<String> = login
        .hops
        .iter()
        .flat_map(|h| h.cookies_set().into_iter().map(|(name, _)| name))
        .collect();
    assert!(
        login
            .hops
            .iter()
            .any(|h| h.set_cookie("_session").is_some()),
        "{set_on_the_way:?}"
    );
    assert!(
        browser.cookie(provider.issuer(), "_session").is_some(),
        "the provider's session cookie is in the jar"
    );

    // The access token is an RS256 JWT that the JWKS verifies, for the API, with the
    // account's claims and the session id.
    let tokens = &login.tokens;
    let at = provider.verify_jwt(&tokens.access_token).await;
    assert_eq!(at["iss"], provider.issuer(), "{at}");
    assert_eq!(at["aud"], RESOURCE, "{at}");
    assert_eq!(at["sub"], "alice", "{at}");
    assert_eq!(at["client_id"], "web", "{at}");
    assert_eq!(at["email"], "alice@example.test", "{at}");
    assert!(at["scope"].as_str().unwrap().contains("api:read"), "{at}");
    assert_eq!(
        at["exp"].as_u64().unwrap() - at["iat"].as_u64().unwrap(),
        30,
        "access_token_ttl: {at}"
    );
    assert_eq!(tokens.expires_in, 30);
    assert_eq!(tokens.json["token_type"], "Bearer");
    assert!(
        tokens.scope.split(' ').any(|s| s == "offline_access"),
        "{}",
        tokens.scope
    );
    assert_eq!(decode_jwt(&tokens.access_token).0["typ"], "at+jwt");

    let id = provider
        .verify_jwt(tokens.id_token.as_deref().unwrap())
        .await;
    assert_eq!(
        id["nonce"].as_str(),
        Some(login.flow.nonce.as_str()),
        "{id}"
    );
    assert_eq!(id["aud"], "web", "{id}");
    assert_eq!(id["sub"], "alice", "{id}");
    assert_eq!(id["email"], "alice@example.test", "{id}");
    let sid = id["sid"].as_str().unwrap();
    assert_eq!(at["sid"], sid, "the access token names the same session");

    let stats = provider.stats().await;
    assert_eq!((stats.logins, stats.code_grants), (1, 1), "{stats:?}");

    // Refresh: a new access token and a new refresh token (rotation).
    let rt1 = tokens
        .refresh_token
        .clone()
        .expect("offline_access gives a refresh token");
    let second = provider.refresh(&web_rp(), &rt1).await.unwrap();
    let rt2 = second.refresh_token.clone().unwrap();
    assert_ne!(rt1, rt2, "the refresh token rotates");
    assert_ne!(second.access_token, tokens.access_token);
    let at2 = provider.verify_jwt(&second.access_token).await;
    assert_eq!(
        (at2["sub"].clone(), at2["sid"].clone()),
        (json!("alice"), json!(sid))
    );
    assert_eq!(provider.stats().await.refresh_grants, 1);

    // The rotated-out token again: refused, and the whole grant with it.
    let reuse = provider.refresh(&web_rp(), &rt1).await.unwrap_err();
    assert_eq!(
        (reuse.status, reuse.error.as_str()),
        (400, "invalid_grant"),
        "{reuse:?}"
    );
    let dead = provider.refresh(&web_rp(), &rt2).await.unwrap_err();
    assert_eq!(
        dead.error, "invalid_grant",
        "the newest token of the chain is revoked too"
    );

    let stats = provider.stats().await;
    assert_eq!(stats.refresh_grants, 1, "{stats:?}");
    assert_eq!(stats.refresh_invalid_grant, 2, "{stats:?}");
    assert_eq!(stats.refresh_reuse_detected, 1, "{stats:?}");
    assert!(stats.grants_revoked >= 1, "{stats:?}");

    provider.reset_stats().await;
    let stats = provider.stats().await;
    assert_eq!(
        (
            stats.logins,
            stats.refresh_grants,
            stats.refresh_invalid_grant
        ),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn a_slowed_token_endpoint_holds_the_answer_back() {
    let provider = Provider::start(json!({ "clients": [web_client(json!({}))] })).await;
    let login = provider.login(&Browser::new(), &web_rp(), SCOPE).await;
    let rt = login.tokens.refresh_token.unwrap();
    // Far longer than the client waits: the answer cannot come in time, whatever the machine.
    provider.set_token_delay(Duration::from_secs(60)).await;
    let held = tokio::time::timeout(Duration::from_secs(1), provider.refresh(&web_rp(), &rt)).await;
    assert!(held.is_err(), "answered despite the delay: {held:?}");
    assert_eq!(provider.stats().await.refresh_grants, 0);
}

#[tokio::test]
async fn pkce_is_required_and_a_public_client_uses_it_alone() {
    let provider = Provider::start(json!({
        "clients": [
            web_client(json!({})),
            { "client_id": "spa", "redirect_uris": [CALLBACK] },
            {
                "client_id": "post",
                "client_secret": "post-secret",
                "token_endpoint_auth_method": "client_secret_post",
                "redirect_uris": [CALLBACK],
            },
        ],
    }))
    .await;

    // Without a code challenge the provider sends the browser back with an error, for a
    // confidential client too.
    let flow = Flow::new();
    let url = provider.authorize_url(&web_rp(), "openid", &flow);
    let without: String = url
        .split('&')
        .filter(|p| !p.starts_with("code_challenge"))
        .collect::<Vec<_>>()
        .join("&");
    let hops = Browser::new()
        .follow_until(&without, |u| u.as_str().starts_with(CALLBACK))
        .await;
    let last = hops.last().unwrap();
    assert_eq!(
        last.location_param("error").as_deref(),
        Some("invalid_request"),
        "{}",
        describe(&hops)
    );
    assert!(last.location_param("code").is_none());

    // A client sending its secret in the form (client_secret_post) logs in too.
    let post = Rp {
        secret_in_body: true,
        ..Rp::confidential("post", "post-secret", CALLBACK)
    };
    let login = provider.login(&Browser::new(), &post, "openid").await;
    assert_eq!(
        decode_jwt(&login.tokens.access_token).1["client_id"],
        "post"
    );

    // A public client logs in and refreshes with PKCE and no secret.
    let spa = Rp::public("spa", CALLBACK);
    let login = provider
        .login(&Browser::new(), &spa, "openid offline_access")
        .await;
    let refreshed = provider
        .refresh(&spa, login.tokens.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
    assert!(refreshed.refresh_token.is_some());
}

#[tokio::test]
async fn the_test_chooses_who_logs_in_or_that_login_fails() {
    let provider = Provider::start(json!({
        "clients": [web_client(json!({}))],
        "accounts": { "carol": { "email": "carol@corp.test", "roles": ["auditor"] } },
    }))
    .await;
    let id_sub = |login: &crate::support::oidc::Login| {
        decode_jwt(login.tokens.id_token.as_deref().unwrap()).1["sub"].clone()
    };

    provider.set_login(Some("bob")).await;
    let bob = provider.login(&Browser::new(), &web_rp(), "openid").await;
    assert_eq!(id_sub(&bob), "bob");

    // A cookie on the provider picks the account too (what a browser test can set).
    let browser = Browser::new();
    browser.add_cookie("test_account=carol; Path=/", provider.issuer());
    let carol = provider
        .login(&browser, &web_rp(), "openid email profile")
        .await;
    let id = decode_jwt(carol.tokens.id_token.as_deref().unwrap()).1;
    assert_eq!(
        id["roles"],
        json!(["auditor"]),
        "an account's own claims: {id}"
    );
    let at = decode_jwt(&carol.tokens.access_token).1;
    assert_eq!(at["roles"], json!(["auditor"]), "{at}");
    assert_eq!(
        (id["sub"].clone(), id["email"].clone()),
        (json!("carol"), json!("carol@corp.test"))
    );

    provider.deny_logins("access_denied").await;
    let flow = Flow::new();
    let hops = Browser::new()
        .follow_until(&provider.authorize_url(&web_rp(), "openid", &flow), |u| {
            u.as_str().starts_with(CALLBACK)
        })
        .await;
    let last = hops.last().unwrap();
    assert_eq!(
        last.location_param("error").as_deref(),
        Some("access_denied"),
        "{}",
        describe(&hops)
    );
    assert_eq!(
        last.location_param("state").as_deref(),
        Some(flow.state.as_str())
    );

    provider.set_login(None).await;
    let alice = provider.login(&Browser::new(), &web_rp(), "openid").await;
    assert_eq!(id_sub(&alice), "alice");
    let stats = provider.stats().await;
    assert_eq!((stats.logins, stats.denied), (3, 1), "{stats:?}");
}

#[tokio::test]
async fn opaque_access_tokens_introspect_and_revoke() {
    let provider = Provider::start(json!({
        "clients": [
            web_client(json!({ "access_token_format": "opaque" })),
            { "client_id": "gateway", "client_secret": "gateway-secret", "grant_types": [] },
        ],
    }))
    .await;
    let login = provider.login(&Browser::new(), &web_rp(), SCOPE).await;
    let token = login.tokens.access_token.clone();
    assert_eq!(token.matches('.').count(), 0, "opaque, not a JWT: {token}");

    let answer = provider
        .introspect("gateway", "gateway-secret", &token)
        .await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sub"], "alice", "{answer}");
    assert_eq!(answer["client_id"], "web", "{answer}");
    assert_eq!(answer["aud"], RESOURCE, "{answer}");
    assert_eq!(answer["iss"], provider.issuer(), "{answer}");
    assert_eq!(answer["email"], "alice@example.test", "{answer}");
    assert!(
        answer["scope"].as_str().unwrap().contains("api:read"),
        "{answer}"
    );
    assert!(answer["exp"].as_u64().is_some(), "{answer}");

    assert_eq!(provider.revoke(&web_rp(), &token).await, 200);
    let after = provider
        .introspect("gateway", "gateway-secret", &token)
        .await;
    assert_eq!(after, json!({ "active": false }));

    let stats = provider.stats().await;
    assert_eq!(
        (
            stats.introspections,
            stats.introspections_active,
            stats.revocations
        ),
        (2, 1, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn backchannel_logout_tokens_reach_a_loopback_listener() {
    let receiver = Upstream::start("rp").await;
    let bcl = format!("http://{}/backchannel-logout", receiver.addr());
    let provider = Provider::start(json!({
        "clients": [web_client(json!({ "backchannel_logout_uri": bcl }))],
    }))
    .await;
    let browser = Browser::new();
    let login = provider.login(&browser, &web_rp(), "openid").await;
    let id_token = login.tokens.id_token.clone().unwrap();
    let sid = decode_jwt(&id_token).1["sid"].as_str().unwrap().to_string();

    // Triggered by the test: a real, signed logout token POSTed to the client.
    let sent = provider
        .trigger_backchannel("web", "alice", Some(&sid))
        .await;
    assert!(sent.ok, "{sent:?}\n{}", provider.stderr());
    assert_eq!((sent.status, sent.url.as_str()), (Some(200), bcl.as_str()));
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].path, "/backchannel-logout");
    let logout_token = received[0]
        .body
        .strip_prefix("logout_token=")
        .unwrap_or_else(|| panic!("{:?}", received[0].body));
    let claims = provider.verify_jwt(logout_token).await;
    assert_eq!(claims["iss"], provider.issuer(), "{claims}");
    assert_eq!(claims["aud"], "web", "{claims}");
    assert_eq!(
        (claims["sub"].as_str(), claims["sid"].as_str()),
        (Some("alice"), Some(sid.as_str()))
    );
    assert!(
        claims["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object(),
        "{claims}"
    );
    assert!(
        claims["nonce"].is_null() && claims["jti"].is_string(),
        "{claims}"
    );

    // RP-initiated logout: the provider's confirmation submits itself, the provider sends the
    // client a logout token of its own and the browser lands on the post-logout URI.
    let end_session = provider.discovery().await["end_session_endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let logout_url = format!(
        "{end_session}?id_token_hint={id_token}&post_logout_redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fsigned-out&state=bye"
    );
    let hops = browser
        .follow_until(&logout_url, |u| {
            u.as_str().starts_with("http://127.0.0.1:9/")
        })
        .await;
    let last = hops.last().unwrap();
    assert_eq!(
        last.location.as_ref().map(|l| l.as_str()),
        Some("http://127.0.0.1:9/signed-out?state=bye"),
        "{}",
        describe(&hops)
    );
    assert_eq!(
        receiver.received().len(),
        2,
        "the end-session sent a logout token too"
    );

    let stats = provider.stats().await;
    assert_eq!(stats.end_session, 1, "{stats:?}");
    assert_eq!(stats.backchannel_logouts.len(), 2, "{stats:?}");
    assert!(stats
        .backchannel_logouts
        .iter()
        .all(|b| b.ok && b.sid.as_deref() == Some(sid.as_str())));

    // For a subject alone (every session of it), to a client that answers 500: the token has
    // no sid, and the failure is reported.
    receiver.set_fault(Fault::Status(500));
    let failed = provider.trigger_backchannel("web", "alice", None).await;
    assert_eq!((failed.ok, failed.status), (false, Some(500)), "{failed:?}");
    let body = receiver.received().last().unwrap().body.clone();
    let claims = provider
        .verify_jwt(body.strip_prefix("logout_token=").unwrap())
        .await;
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert!(claims["sid"].is_null(), "{claims}");
    let stats = provider.stats().await;
    assert_eq!(stats.backchannel_logouts.last(), Some(&failed));
}

/// A tiny HTML server: `/redirect?to=PATH` answers 302 to PATH and sets a `__Host-` cookie
/// with `Secure` (as Portcullis' session cookie is); any other path a page whose script writes
/// the request's path and query into `#where`, and which shows the `Cookie` header it got in
/// `#cookies`.
async fn page_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                let target = head.split(' ').nth(1).unwrap_or("/").to_string();
                let cookies = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("cookie")
                            .then(|| value.trim().to_string())
                    })
                    .unwrap_or_default();
                let response = if let Some(to) = target.strip_prefix("/redirect?to=") {
                    format!(
                        "HTTP/1.1 302 Found\r\nlocation: {to}\r\n\
                         set-cookie: __Host-test=kept; Path=/; Secure; HttpOnly; SameSite=Lax\r\n\
                         content-length: 0\r\nconnection: close\r\n\r\n"
                    )
                } else {
                    let body = format!(
                        "<!DOCTYPE html><html><head><title>landed</title></head><body><p id=\"where\"></p>\
                         <p id=\"cookies\">{}</p>\
                         <script>document.getElementById('where').textContent = 'script ran at ' + {};</script></body></html>",
                        cookies.replace('<', "&lt;"),
                        serde_json::to_string(&target).unwrap()
                    );
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn chromium_follows_a_redirect_and_dumps_the_page_it_lands_on() {
    let pages = page_server().await;
    let start = format!("http://{pages}/redirect?to=/landing");
    let dom = chromium::dump_dom(&start).await;
    assert!(dom.contains("script ran at /landing"), "{dom}");
    // Loopback counts as a secure origin: a `Secure`, `__Host-` cookie set over plain HTTP on
    // 127.0.0.1 is kept and sent back (what session tests with `cookie.secure: true` rely on).
    assert!(
        dom.contains("<p id=\"cookies\">__Host-test=kept</p>"),
        "{dom}"
    );

    // The cookie-jar browser sees the same hops one by one, and follows nothing by itself.
    let browser = Browser::new();
    let one = browser.get(&start).await;
    assert_eq!(one.status, 302);
    assert_eq!(one.location.as_ref().map(|l| l.path()), Some("/landing"));
    let xhr = browser
        .http()
        .get(&start)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(xhr.status(), 302);
    let hops = browser.follow(&start).await;
    assert_eq!(hops.len(), 2, "{}", describe(&hops));
    let page = hops.last().unwrap();
    assert_eq!((page.status.as_u16(), page.url.path()), (200, "/landing"));
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        page.body.contains("<p id=\"cookies\">__Host-test=kept</p>"),
        "{}",
        page.body
    );
    assert_eq!(
        browser.cookie(&start, "__Host-test").as_deref(),
        Some("kept")
    );
}

#[tokio::test]
async fn chromium_logs_in_at_the_provider_without_a_form() {
    let pages = page_server().await;
    let callback = format!("http://{pages}/callback");
    let provider = Provider::start(json!({
        "clients": [{ "client_id": "web", "client_secret": "web-secret", "redirect_uris": [callback] }],
    }))
    .await;
    let rp = Rp::confidential("web", "web-secret", &callback);
    let flow = Flow::new();
    let dom = chromium::dump_dom(&provider.authorize_url(&rp, "openid", &flow)).await;
    let landed = "script ran at /callback?code=";
    assert!(dom.contains(landed), "{dom}\n{}", provider.stderr());
    assert!(dom.contains(&format!("state={}", flow.state)), "{dom}");
    let stats = provider.stats().await;
    assert_eq!((stats.authorizations, stats.logins), (1, 1), "{stats:?}");
}
