//! The session's cookies: reading them from a request (joined again when split), writing
//! them (split past [`MAX_COOKIE_VALUE`] into `NAME.1`, `NAME.2` …), clearing them, and
//! taking them out of the `Cookie` header the upstream gets.

use std::borrow::Cow;

use http::{HeaderMap, HeaderValue};

use crate::config::CookieConfig;

/// The longest value one cookie carries: browsers keep 4096 bytes per cookie, name and
/// attributes included.
pub const MAX_COOKIE_VALUE: usize = 3800;
/// Most numbered parts of one session cookie (about 30 kB in all).
pub const MAX_PARTS: usize = 8;

/// Every `name=value` pair of the request's `Cookie` headers, as bytes: no text check of
/// the whole header (a session cookie is kilobytes long; what is read from it is checked
/// where it is used: base64url, then AEAD).
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| split_pairs(v.as_bytes()))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = memchr::memchr(b'=', pair)?;
            let value = pair[eq + 1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            Some((pair[..eq].trim_ascii(), value))
        })
}

/// The `;`-separated parts of one `Cookie` header, found with a vectorised search.
fn split_pairs(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b';', bytes).chain(std::iter::once(bytes.len()));
    std::iter::from_fn(move || {
        let end = ends.next()?;
        let part = bytes.get(start..end)?;
        start = end + 1;
        Some(part)
    })
}

/// Which part of the cookie `name` a cookie named `cookie` is: `Some(0)` for `name` itself,
/// `Some(n)` for `name.n`.
fn part_of(cookie: &[u8], name: &str) -> Option<usize> {
    let rest = cookie.strip_prefix(name.as_bytes())?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix(b".")?;
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (1..=MAX_PARTS).contains(&n).then_some(n)
}

/// The value of the cookie `name`: the cookie itself (borrowed from the request), or its
/// numbered parts joined in order (all of `1..=n` present, none twice). `None` when absent
/// or when the parts do not fit. The count of parts the request carried is given too, to
/// clear leftovers.
pub fn read<'h>(headers: &'h HeaderMap, name: &str) -> (Option<Cow<'h, [u8]>>, usize) {
    let mut whole: Option<&[u8]> = None;
    let mut parts: [Option<&[u8]>; MAX_PARTS] = [None; MAX_PARTS];
    let mut count = 0;
    let mut doubled = false;
    for (k, v) in pairs(headers) {
        match part_of(k, name) {
            Some(0) => {
                doubled |= whole.is_some();
                whole = Some(v);
            }
            Some(n) => {
                count += 1;
                doubled |= parts[n - 1].is_some();
                parts[n - 1] = Some(v);
            }
            None => {}
        }
    }
    if doubled {
        // Two cookies of one name (say, set for two paths): neither can be trusted to be
        // the current one.
        return (None, count);
    }
    if let Some(v) = whole.filter(|v| !v.is_empty()) {
        return (Some(Cow::Borrowed(v)), count);
    }
    let held = parts.iter().take_while(|p| p.is_some()).count();
    if held == 0 || held != count {
        return (None, count);
    }
    (
        Some(Cow::Owned(
            parts
                .iter()
                .flatten()
                .flat_map(|p| p.iter().copied())
                .collect(),
        )),
        count,
    )
}

/// The attributes every cookie of the session gets.
fn attributes(cookie: &CookieConfig, max_age: Option<u64>) -> String {
    let mut a = String::from("; Path=/; HttpOnly; SameSite=");
    a.push_str(cookie.same_site.as_str());
    if cookie.secure {
        a.push_str("; Secure");
    }
    if let Some(age) = max_age {
        a.push_str("; Max-Age=");
        a.push_str(&age.to_string());
    }
    a
}

fn header(text: String) -> Option<HeaderValue> {
    HeaderValue::from_str(&text).ok()
}

/// `Set-Cookie` values that store `value` under `name` for `max_age` seconds: one cookie, or
/// numbered parts when it is too long; parts the browser holds beyond those (`held`, from
/// [`read`]) and the unnumbered cookie when parts are used are cleared. `None` when the
/// value needs more than [`MAX_PARTS`] parts.
pub fn set(
    cookie: &CookieConfig,
    name: &str,
    value: &str,
    max_age: u64,
    held: usize,
) -> Option<Vec<HeaderValue>> {
    let attrs = attributes(cookie, Some(max_age));
    let clear = attributes(cookie, Some(0));
    let mut out = Vec::new();
    if value.len() <= MAX_COOKIE_VALUE {
        out.push(header(format!("{name}={value}{attrs}"))?);
        for n in 1..=held.min(MAX_PARTS) {
            out.push(header(format!("{name}.{n}={clear}"))?);
        }
        return Some(out);
    }
    let chunks: Vec<&[u8]> = value.as_bytes().chunks(MAX_COOKIE_VALUE).collect();
    if chunks.len() > MAX_PARTS {
        return None;
    }
    out.push(header(format!("{name}={clear}"))?);
    for (i, chunk) in chunks.iter().enumerate() {
        let chunk = std::str::from_utf8(chunk).ok()?;
        out.push(header(format!("{name}.{}={chunk}{attrs}", i + 1))?);
    }
    for n in chunks.len() + 1..=held.min(MAX_PARTS) {
        out.push(header(format!("{name}.{n}={clear}"))?);
    }
    Some(out)
}

/// `Set-Cookie` values that delete the cookie `name` and its `held` parts.
pub fn clear(cookie: &CookieConfig, name: &str, held: usize) -> Vec<HeaderValue> {
    let clear = attributes(cookie, Some(0));
    std::iter::once(format!("{name}={clear}"))
        .chain((1..=held.min(MAX_PARTS)).map(|n| format!("{name}.{n}={clear}")))
        .filter_map(header)
        .collect()
}

/// Remove from `headers`' `Cookie` every cookie `owned` says is Portcullis's; a header left
/// empty is removed. Nothing is rebuilt when none is there.
pub fn strip(headers: &mut HeaderMap, owned: impl Fn(&[u8]) -> bool) {
    let (mut ours, mut theirs) = (false, false);
    for (k, _) in pairs(headers) {
        if owned(k) {
            ours = true;
        } else {
            theirs = true;
        }
    }
    if !ours {
        return;
    }
    let kept: Vec<u8> = if theirs {
        let mut kept = Vec::new();
        for pair in headers
            .get_all(http::header::COOKIE)
            .iter()
            .flat_map(|v| split_pairs(v.as_bytes()))
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty())
        {
            let name = memchr::memchr(b'=', pair).map_or(pair, |eq| pair[..eq].trim_ascii());
            if !owned(name) {
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(pair);
            }
        }
        kept
    } else {
        Vec::new()
    };
    headers.remove(http::header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            headers.insert(http::header::COOKIE, v);
        }
    }
}

/// Whether `cookie` is the session cookie `name`, one of its parts, or one of its login
/// cookies (`NAME-login-…`).
pub fn is_session_cookie(cookie: &[u8], name: &str) -> bool {
    part_of(cookie, name).is_some()
        || cookie
            .strip_prefix(name.as_bytes())
            .is_some_and(|rest| rest.starts_with(b"-login-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(http::header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    fn values(set: &[HeaderValue]) -> Vec<String> {
        set.iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_long_value_is_split_and_joined_again() {
        let cookie = CookieConfig::default();
        let value = "x".repeat(MAX_COOKIE_VALUE * 2 + 10);
        let set = values(&set(&cookie, "s", &value, 60, 0).unwrap());
        assert_eq!(set.len(), 4, "{set:?}");
        assert!(set[0].starts_with("s=; ") && set[0].contains("Max-Age=0"));
        let sent: Vec<String> = set[1..]
            .iter()
            .map(|s| s.split(';').next().unwrap().to_string())
            .collect();
        let h = headers(&[&sent.join("; ")]);
        let (read_back, parts) = read(&h, "s");
        assert_eq!((read_back.as_deref(), parts), (Some(value.as_bytes()), 3));
        for s in &set[1..] {
            assert!(
                s.contains("; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"),
                "{s}"
            );
        }
    }

    #[test]
    fn a_short_value_clears_parts_left_from_a_longer_one() {
        let set = values(&set(&CookieConfig::default(), "s", "abc", 60, 3).unwrap());
        assert_eq!(set[0].split(';').next(), Some("s=abc"));
        assert_eq!(set.len(), 4);
        assert!(set[3].starts_with("s.3=; ") && set[3].contains("Max-Age=0"));
    }

    #[test]
    fn missing_or_doubled_parts_read_as_nothing() {
        assert_eq!(read(&headers(&["s.1=a; s.3=c"]), "s").0, None);
        assert_eq!(read(&headers(&["s=a", "s=b"]), "s").0, None);
        let h = headers(&["other=a; s.1=a; s.2=b"]);
        assert_eq!(read(&h, "s").0.as_deref(), Some(&b"ab"[..]));
        let h = headers(&["a=1;s=\"q\" ; b=2"]);
        assert_eq!(read(&h, "s").0.as_deref(), Some(&b"q"[..]));
        assert_eq!(read(&headers(&["sx=a; s.0=b; s.9=c"]), "s").0, None);
        assert!(set(
            &CookieConfig::default(),
            "s",
            &"x".repeat(MAX_COOKIE_VALUE * 9),
            1,
            0
        )
        .is_none());
    }

    #[test]
    fn session_cookies_are_stripped_and_others_kept() {
        let mut h = headers(&["a=1; sess=x; sess.1=y", "sess-login-abcd=z; b=2"]);
        strip(&mut h, |k| is_session_cookie(k, "sess"));
        assert_eq!(
            values(&h.get_all("cookie").iter().cloned().collect::<Vec<_>>()),
            ["a=1; b=2"]
        );
        let mut only = headers(&["sess=x"]);
        strip(&mut only, |k| is_session_cookie(k, "sess"));
        assert!(only.get("cookie").is_none());
        assert!(!is_session_cookie(b"session", "sess"));
        assert!(!is_session_cookie(b"sess.x", "sess"));
    }
}
