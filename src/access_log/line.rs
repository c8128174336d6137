//! One access line as JSON, written straight into a buffer: no allocation, no serde, numbers
//! by `itoa`, strings escaped by hand, and the time's text made once a second per thread.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::AccessRecord;

/// The longest `User-Agent` or `Host` a line keeps, in bytes; longer ones are cut.
pub const MAX_HEADER_TEXT: usize = 256;

/// The time's text up to the second (`2025-11-28T17:50:48.`), for the second it was made in.
#[derive(Default)]
pub struct Clock {
    second: u64,
    prefix: [u8; 20],
}

impl Clock {
    /// `"time":"…Z"` for now, RFC 3339 in UTC with milliseconds.
    fn write(&mut self, out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if second != self.second || self.prefix[0] == 0 {
            // `2025-11-28T17:50:48Z`: 20 bytes; the `Z` gives way to the milliseconds.
            let text = humantime::format_rfc3339_seconds(now).to_string();
            if let Some(head) = text.as_bytes().get(..19) {
                self.prefix[..19].copy_from_slice(head);
                self.prefix[19] = b'.';
                self.second = second;
            }
        }
        out.extend_from_slice(b"\"time\":\"");
        out.extend_from_slice(&self.prefix);
        let millis = since.subsec_millis();
        out.extend_from_slice(&[
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
            b'Z',
            b'"',
        ]);
    }
}

/// Append `r` as one JSON line (with its `\n`) to `out`.
pub fn write(out: &mut Vec<u8>, clock: &mut Clock, r: &AccessRecord<'_>) {
    out.reserve(512);
    out.push(b'{');
    clock.write(out);
    text(out, b",\"request_id\":", Some(r.request_id));
    text(out, b",\"trace_id\":", r.trace_id);
    out.extend_from_slice(b",\"client\":");
    match r.client {
        Some(ip) => ip_text(out, ip),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"host\":");
    string(out, cap(r.host.as_bytes()));
    text(out, b",\"protocol\":", Some(r.protocol));
    text(out, b",\"tls_version\":", r.tls_version);
    text(out, b",\"method\":", Some(r.method));
    text(out, b",\"path\":", Some(r.path));
    text(out, b",\"route\":", Some(r.route));
    number(out, b",\"status\":", Some(u64::from(r.status)));
    text(out, b",\"upstream\":", r.upstream);
    number(
        out,
        b",\"upstream_status\":",
        r.upstream_status.map(u64::from),
    );
    number(out, b",\"upstream_time_us\":", r.upstream_time.map(micros));
    number(out, b",\"duration_us\":", Some(micros(r.duration)));
    number(out, b",\"bytes_sent\":", Some(r.bytes_sent as u64));
    number(out, b",\"bytes_received\":", Some(r.bytes_received as u64));
    out.extend_from_slice(b",\"user_agent\":");
    match r.user_agent {
        Some(ua) => string(out, cap(ua)),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(claims) = r.claims {
        out.extend_from_slice(b",\"claims\":{");
        let mut first = true;
        claims.each(&mut |name, value| {
            if !first {
                out.push(b',');
            }
            first = false;
            escaped(out, name.as_bytes());
            out.push(b':');
            match value {
                Some(v) => escaped(out, v.as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
        });
        out.push(b'}');
    }
    if let Some(reason) = r.reason {
        text(out, b",\"reason\":", Some(reason));
    }
    if let Some(cache) = r.cache {
        text(out, b",\"cache\":", Some(cache));
    }
    out.extend_from_slice(b"}\n");
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// At most [`MAX_HEADER_TEXT`] bytes (a cut UTF-8 character becomes U+FFFD when escaped).
fn cap(bytes: &[u8]) -> &[u8] {
    bytes.get(..MAX_HEADER_TEXT).unwrap_or(bytes)
}

fn number(out: &mut Vec<u8>, key: &[u8], n: Option<u64>) {
    out.extend_from_slice(key);
    match n {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A key and a string that is UTF-8 already (or `null`).
fn text(out: &mut Vec<u8>, key: &[u8], s: Option<&str>) {
    out.extend_from_slice(key);
    match s {
        Some(s) => escaped(out, s.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

fn ip_text(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(buf.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

/// `bytes` (a header value) as a JSON string, with bytes that are not UTF-8 replaced by
/// U+FFFD, so that every line is valid JSON whatever a client sent.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => escaped(out, s.as_bytes()),
        Err(_) => escaped(out, String::from_utf8_lossy(bytes).as_bytes()),
    }
}

/// Bytes a JSON string cannot hold as they are: control characters, `"`, `\` (and DEL).
static ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
};

/// UTF-8 `bytes` as a JSON string: `"` and `\` escaped, control characters as `\u00XX`.
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    // Almost every string needs no escape: one look-up per byte, one copy.
    if !bytes.iter().any(|&b| ESCAPE[usize::from(b)]) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::Claims;

    struct Two;
    impl Claims for Two {
        fn each(&self, f: &mut dyn FnMut(&str, Option<&str>)) {
            f("sub", Some("alice \"a\""));
            f("tenant", None);
        }
    }

    fn record<'a>() -> AccessRecord<'a> {
        AccessRecord {
            request_id: "id-1",
            trace_id: None,
            client: Some("10.1.2.3".parse().unwrap()),
            host: "api.example.com",
            protocol: "HTTP/2",
            tls_version: Some("TLSv1.3"),
            route: "api",
            method: "GET",
            path: "/a\"b\\c\n",
            status: 200,
            upstream: Some("127.0.0.1:8080"),
            upstream_status: Some(201),
            upstream_time: Some(Duration::from_micros(1234)),
            duration: Duration::from_nanos(2_345_678),
            bytes_sent: 10,
            bytes_received: 0,
            user_agent: Some(b"curl/8 \x01\xff"),
            claims: None,
            reason: None,
            cache: None,
        }
    }

    #[test]
    fn a_line_is_json_with_every_field() {
        let mut out = Vec::new();
        let mut r = record();
        r.claims = Some(&Two);
        write(&mut out, &mut Clock::default(), &r);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\n");
        assert_eq!(v["client"], "10.1.2.3");
        assert_eq!(v["protocol"], "HTTP/2");
        assert_eq!(v["upstream_status"], 201);
        assert_eq!(v["upstream_time_us"], 1234);
        assert_eq!(v["duration_us"], 2345);
        assert_eq!(v["trace_id"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "curl/8 \u{1}\u{fffd}");
        assert_eq!(v["claims"]["sub"], "alice \"a\"");
        assert_eq!(v["claims"]["tenant"], serde_json::Value::Null);
        assert!(v.get("reason").is_none());
        assert!(v.get("duration_ms").is_none());
        let time = v["time"].as_str().unwrap();
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    }

    #[test]
    fn long_headers_are_cut_and_ipv6_is_written() {
        let mut out = Vec::new();
        let mut r = record();
        let ua = "é".repeat(500);
        r.user_agent = Some(ua.as_bytes());
        r.client = Some("::1".parse().unwrap());
        write(&mut out, &mut Clock::default(), &r);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["user_agent"].as_str().unwrap().len() <= MAX_HEADER_TEXT + 3);
        assert_eq!(v["client"], "::1");
    }
}
