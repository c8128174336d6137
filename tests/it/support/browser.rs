//! The browser side of the session tests without a browser: a real HTTP client with a cookie
//! jar that follows redirects one hop at a time, so a test sees every `Location` and
//! `Set-Cookie` on the way, and submits the self-submitting POST forms a browser's script
//! would (the OpenID provider's `form_post` pages and its logout confirmation).
//!
//! Cookies are kept per host, not per port (as browsers do): every server on 127.0.0.1 sees
//! the cookies of the others, so two proxies on two ports share one session, as two nodes
//! behind one name would. Loopback counts as a secure origin: `Secure` cookies are kept and
//! sent over plain HTTP to 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{HeaderMap, ACCEPT, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode, Url};

/// How many hops [`Browser::follow`] walks at most before it fails the test.
pub const MAX_HOPS: usize = 20;

/// One request and its answer.
#[derive(Debug, Clone)]
pub struct Hop {
    /// `GET`, or `POST` for a submitted form.
    pub method: Method,
    pub url: Url,
    pub status: StatusCode,
    /// Where a redirect points, resolved against `url`.
    pub location: Option<Url>,
    /// Each `Set-Cookie` header, as sent.
    pub set_cookies: Vec<String>,
    pub headers: HeaderMap,
    pub body: String,
}

impl Hop {
    /// The name and value of each cookie this hop set (attributes dropped).
    pub fn cookies_set(&self) -> Vec<(String, String)> {
        self.set_cookies
            .iter()
            .filter_map(|c| {
                let pair = c.split(';').next()?;
                let (name, value) = pair.split_once('=')?;
                Some((name.trim().to_string(), value.trim().to_string()))
            })
            .collect()
    }

    /// The `Set-Cookie` header of cookie `name`, if this hop set it.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies
            .iter()
            .find(|c| c.split('=').next().map(str::trim) == Some(name))
            .map(String::as_str)
    }

    /// Query parameter `name` of the redirect's location.
    pub fn location_param(&self, name: &str) -> Option<String> {
        let location = self.location.as_ref()?;
        location
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// A cookie-keeping HTTP client that follows nothing by itself.
#[derive(Clone)]
pub struct Browser {
    http: reqwest::Client,
    jar: Arc<Jar>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

impl Browser {
    /// A fresh browser: empty cookie jar, no redirects followed automatically, no system proxy.
    pub fn new() -> Browser {
        let jar = Arc::new(Jar::default());
        let http = reqwest::Client::builder()
            .no_proxy()
            .cookie_provider(Arc::clone(&jar))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Browser { http, jar }
    }

    /// The client underneath (same cookie jar, no redirects), for requests of other shapes.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The cookies the jar would send to `url`, as `(name, value)`.
    pub fn cookies(&self, url: &str) -> Vec<(String, String)> {
        let url = Url::parse(url).unwrap();
        let Some(header) = self.jar.cookies(&url) else {
            return Vec::new();
        };
        header
            .to_str()
            .unwrap()
            .split(';')
            .filter_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                Some((name.trim().to_string(), value.trim().to_string()))
            })
            .collect()
    }

    /// The value of cookie `name` the jar would send to `url`.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.cookies(url)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Put a cookie in the jar as if `url` had set it (`set_cookie` as in a `Set-Cookie` header).
    pub fn add_cookie(&self, set_cookie: &str, url: &str) {
        self.jar
            .add_cookie_str(set_cookie, &Url::parse(url).unwrap());
    }

    /// One navigation request (a GET accepting HTML, as a browser's), no redirect followed.
    pub async fn get(&self, url: &str) -> Hop {
        self.send(Method::GET, Url::parse(url).unwrap(), None).await
    }

    /// Navigate to `url` and follow redirects (and self-submitting forms) until a page that
    /// is neither, at most [`MAX_HOPS`] hops; every hop, the last one being that page.
    pub async fn follow(&self, url: &str) -> Vec<Hop> {
        self.follow_until(url, |_| false).await
    }

    /// As [`Browser::follow`], but stop before requesting a URL for which `stop` says true:
    /// the last hop is then the redirect pointing there (e.g. to a client's `redirect_uri`
    /// where nothing listens, to take the code from its `location`).
    pub async fn follow_until(&self, url: &str, stop: impl Fn(&Url) -> bool) -> Vec<Hop> {
        let mut hops: Vec<Hop> = Vec::new();
        let mut next = (Method::GET, Url::parse(url).unwrap(), None);
        loop {
            assert!(
                hops.len() < MAX_HOPS,
                "more than {MAX_HOPS} hops from {url}: {}",
                describe(&hops)
            );
            let hop = self.send(next.0, next.1, next.2).await;
            let after = if let Some(location) = hop.location.clone() {
                let method = if hop.status == StatusCode::TEMPORARY_REDIRECT
                    || hop.status == StatusCode::PERMANENT_REDIRECT
                {
                    hop.method.clone()
                } else {
                    Method::GET
                };
                Some((method, location, None))
            } else {
                self_submitting_form(&hop)
                    .map(|(action, fields)| (Method::POST, action, Some(fields)))
            };
            hops.push(hop);
            match after {
                Some(n) if !stop(&n.1) => next = n,
                _ => return hops,
            }
        }
    }

    async fn send(&self, method: Method, url: Url, form: Option<Vec<(String, String)>>) -> Hop {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .header(ACCEPT, "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8");
        if let Some(fields) = &form {
            request = request.form(fields);
        }
        let resp = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let location = headers
            .get(LOCATION)
            .filter(|_| status.is_redirection())
            .map(|l| url.join(l.to_str().unwrap()).unwrap());
        let set_cookies = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let body = resp.text().await.unwrap_or_default();
        Hop {
            method,
            url,
            status,
            location,
            set_cookies,
            headers,
            body,
        }
    }
}

/// Each hop as `METHOD url -> status [location]`, for failure messages.
pub fn describe(hops: &[Hop]) -> String {
    hops.iter()
        .map(|h| {
            format!(
                "{} {} -> {}{}",
                h.method,
                h.url,
                h.status.as_u16(),
                h.location
                    .as_ref()
                    .map(|l| format!(" {l}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// A page whose script submits its first form at once (`document.forms[0].submit()`), with
/// that form's action and hidden fields: what a browser would POST next.
fn self_submitting_form(hop: &Hop) -> Option<(Url, Vec<(String, String)>)> {
    if !hop.status.is_success() || !hop.body.contains("document.forms[0].submit()") {
        return None;
    }
    let form_at = hop.body.find("<form")?;
    let form = &hop.body[form_at..];
    let form_end = form.find("</form>")?;
    let form = &form[..form_end];
    let tag = &form[..form.find('>')?];
    if !attr(tag, "method").is_some_and(|m| m.eq_ignore_ascii_case("post")) {
        return None;
    }
    let action = hop.url.join(&unescape(&attr(tag, "action")?)).ok()?;
    let mut fields = Vec::new();
    let mut rest = form;
    while let Some(at) = rest.find("<input") {
        rest = &rest[at..];
        let end = rest.find('>')?;
        let input = &rest[..end];
        if let Some(name) = attr(input, "name") {
            fields.push((
                unescape(&name),
                unescape(&attr(input, "value").unwrap_or_default()),
            ));
        }
        rest = &rest[end..];
    }
    Some((action, fields))
}

/// The double-quoted attribute `name` of a tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_string())
}

/// HTML character references of the kinds the provider's pages use.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
