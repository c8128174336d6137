//! Request targets: which may be routed at all (bytes RFC 3986 allows, an accepted form),
//! the path form used for matching, and the other readings common backends make of a path.
//! Those readings allocate, and are made only for paths holding `%`, `;` or `\`.

/// Normalise a `Host` value for lookup: no port, lowercase. Borrowed when already clean.
pub fn host_key(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Why a request target is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// Neither origin form (`/...`), nor absolute form with an `http` or `https` scheme and
    /// a host, nor `*` on `OPTIONS`.
    NotAbsolute,
    /// A byte RFC 3986 does not allow in a request target: controls, space, `"` `<` `>` `\`
    /// `^` `` ` `` `{` `|` `}` or anything above ASCII. Backends read them differently
    /// (`\` is `/` to Windows servers and many frameworks), so routing on them is a guess.
    IllegalByte,
    /// A `.` or `..` segment, raw, percent-encoded or left when a backend drops `;`
    /// parameters (`..;`): it could make a path that matched one route mean another path to
    /// the upstream.
    DotSegment,
    /// `%2F` or `%5C`: one segment to the proxy, two to the many servers that decode them
    /// before splitting the path, so the route would not be the one the upstream serves.
    EncodedSeparator,
    /// A percent-encoded control character (`%00`-`%1F`, `%7F`): a C backend ends the path
    /// at `%00`, and none is a path anyone means.
    EncodedControl,
    /// A reading common among backends (decoded once, `;` parameters dropped) lands on
    /// another route than the path does here.
    Ambiguous,
}

/// Bytes a request target may hold as the client sent them (RFC 3986 §2: unreserved,
/// reserved and `%`). `[` and `]` are reserved for IPv6 hosts but stay allowed: clients send
/// them raw in queries (`a[]=1`), and no server reads them as a separator.
static TARGET_BYTE: [bool; 256] = target_bytes();

const fn target_bytes() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        table[b] = true;
        b += 1;
    }
    let illegal = b"\"<>\\^`{|}";
    let mut i = 0;
    while i < illegal.len() {
        table[illegal[i] as usize] = false;
        i += 1;
    }
    table
}

/// A request target, checked and split for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The authority of an absolute-form target (`http://app.test:8080/x` gives
    /// `app.test:8080`); `None` for origin form.
    pub authority: Option<&'a str>,
    /// The path, without the query: `/`-rooted, or `*` for `OPTIONS *`.
    pub path: &'a str,
    /// The query, without the `?`; empty when there is none.
    pub query: &'a str,
}

/// Check a request target as the client sent it (path and query; Pingora's
/// `RequestHeader::raw_path`) and split off the path to route on.
///
/// Accepted: origin form (`/x?q`), absolute form with an `http` or `https` scheme and a
/// host without user info (RFC 9112 §3.2.2; `http://app.test` is the path `/`), and `*` on
/// `OPTIONS`. Every byte must be one RFC 3986 allows.
///
/// # Errors
/// [`BadPath::IllegalByte`] or [`BadPath::NotAbsolute`].
pub fn request_target<'a>(raw: &'a [u8], method: &http::Method) -> Result<Target<'a>, BadPath> {
    if !raw.iter().all(|&b| TARGET_BYTE[usize::from(b)]) {
        return Err(BadPath::IllegalByte);
    }
    // Only ASCII is left, which is UTF-8.
    let raw = std::str::from_utf8(raw).map_err(|_| BadPath::IllegalByte)?;
    let split = |authority, pq: &'a str| {
        let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
        Target {
            authority,
            path: if path.is_empty() { "/" } else { path },
            query,
        }
    };
    if raw.starts_with('/') {
        return Ok(split(None, raw));
    }
    if raw == "*" && method == http::Method::OPTIONS {
        return Ok(split(None, raw));
    }
    let (scheme, rest) = raw.split_once("://").ok_or(BadPath::NotAbsolute)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(BadPath::NotAbsolute);
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(BadPath::NotAbsolute);
    }
    Ok(split(Some(authority), path_and_query))
}

/// Check a request path and give the form used for matching, which is how upstream servers
/// read it: percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2, so `/%61dmin`
/// is `/admin`) and runs of `/` merged into one. Borrowed when already clean.
///
/// This alone does not make a path safe to route: [`super::RouteTable::route`] also checks that
/// the other common readings of a path with `%` or `;` land on the same route.
///
/// # Errors
/// [`BadPath`] for paths that must not be routed.
pub fn match_path(path: &str) -> Result<std::borrow::Cow<'_, str>, BadPath> {
    if !path.starts_with('/') {
        return if path == "*" {
            Ok(std::borrow::Cow::Borrowed(path))
        } else {
            Err(BadPath::NotAbsolute)
        };
    }
    let path = if path.contains('%') {
        decode_unreserved(path)?
    } else {
        std::borrow::Cow::Borrowed(path)
    };
    for segment in path.split('/') {
        if is_dot_segment(segment) {
            return Err(BadPath::DotSegment);
        }
    }
    if !path.contains("//") {
        return Ok(path);
    }
    Ok(std::borrow::Cow::Owned(merge_slashes(&path)))
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut last_slash = false;
    for c in path.chars() {
        if c == '/' && last_slash {
            continue;
        }
        last_slash = c == '/';
        out.push(c);
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The byte `%XX` at `i` stands for, if it is a well-formed escape.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(b'%'), Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h * 16 + l),
        _ => None,
    }
}

/// Decode `%XX` where it stands for an unreserved character; keep every other escape as
/// written; refuse encoded path separators and controls.
fn decode_unreserved(path: &str) -> Result<std::borrow::Cow<'_, str>, BadPath> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i) {
            Some(b'/' | b'\\') => return Err(BadPath::EncodedSeparator),
            Some(c) if c < 0x20 || c == 0x7f => return Err(BadPath::EncodedControl),
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(c));
                changed = true;
                i += 3;
            }
            _ => {
                // Not an escape of an unreserved character: copy up to the next `%`.
                // Searched in bytes: `i + 1` may fall inside a multi-byte character.
                let next = bytes[i + 1..]
                    .iter()
                    .position(|&b| b == b'%')
                    .map_or(bytes.len(), |n| i + 1 + n);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Ok(if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(path)
    })
}

/// Every well-formed `%XX` decoded, once, as a server that decodes the path before using
/// it does. Bytes that are not UTF-8 afterwards become U+FFFD: such a path matches no
/// prefix that the original did not.
pub(crate) fn decode_once(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escape_at(bytes, i) {
            Some(c) => {
                out.push(c);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Each segment without its `;` parameters, as Tomcat, Jetty and Spring read it:
/// `/a;x=1/..;/b` is `/a/../b`.
fn drop_params(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    out
}

/// The other ways common backends read a path that holds `%` or `;`, beside the
/// canonical form [`match_path`] gives: decoded once, `;` parameters dropped before or
/// after decoding, and, for a decoding server that splits the query off afterwards, cut at
/// a decoded `?` or `#`. Each with `\` read as `/` and runs of `/` merged.
///
/// # Errors
/// [`BadPath::DotSegment`] when a reading has a `.` or `..` segment: the backend would
/// resolve it, and a path that means a different path there is not routed.
pub(super) fn readings(path: &str, canonical: &str) -> Result<Vec<String>, BadPath> {
    let decoded = decode_once(path);
    let mut decoded = vec![
        drop_params(&decoded),
        decode_once(&drop_params(path)),
        decoded,
    ];
    let cut: Vec<String> = decoded
        .iter()
        .filter_map(|r| r.find(['?', '#']).map(|at| r[..at].to_string()))
        .collect();
    decoded.extend(cut);
    decoded.push(drop_params(canonical));
    decoded
        .into_iter()
        .map(|reading| {
            let reading = if reading.contains('\\') {
                reading.replace('\\', "/")
            } else {
                reading
            };
            if reading.split('/').any(|s| s == "." || s == "..") {
                return Err(BadPath::DotSegment);
            }
            Ok(merge_slashes(&reading))
        })
        .collect()
}

fn is_dot_segment(segment: &str) -> bool {
    // `.`, `..`, and their percent-encoded spellings (`%2e`, `.%2E`, ...).
    let mut dots = 0;
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            i += 1;
        } else if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1] == b'2'
            && (bytes[i + 2] == b'e' || bytes[i + 2] == b'E')
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}
