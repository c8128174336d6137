//! W3C Trace Context (`traceparent`, `tracestate`): reading what a client sent and writing
//! what goes upstream. Nothing here allocates but the header value written.

use http::HeaderValue;

/// `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// A valid incoming `traceparent`: its trace, the client's span and its sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// Trace id, never 0.
    pub trace_id: u128,
    /// The caller's span id, never 0.
    pub span_id: u64,
    /// The `sampled` flag.
    pub sampled: bool,
}

/// Read a `traceparent` value (W3C Trace Context level 1, section 3.2). `None` for anything
/// malformed: an unknown version's longer form is accepted as the spec asks, version `ff`,
/// upper-case hex, all-zero ids and wrong lengths are not.
pub fn parse(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_u8(&value[0..2])?;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if version != 0 && value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex(&value[3..35])?;
    let span_id = u64::try_from(hex(&value[36..52])?).ok()?;
    let flags = hex_u8(&value[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn hex(digits: &[u8]) -> Option<u128> {
    let mut n: u128 = 0;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u128::from(v);
    }
    Some(n)
}

fn hex_u8(digits: &[u8]) -> Option<u8> {
    hex(digits).and_then(|n| u8::try_from(n).ok())
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], mut n: u128) {
    for slot in out.iter_mut().rev() {
        // The low nibble, always < 16.
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// `trace_id` as 32 lower-case hex digits, in `buf`.
pub fn trace_id_hex(trace_id: u128, buf: &mut [u8; 32]) -> &str {
    put_hex(buf, trace_id);
    std::str::from_utf8(buf).unwrap_or("")
}

/// The `traceparent` sent upstream: this trace, `span_id` (the upstream attempt's span) as
/// the parent, the sampled flag as decided.
pub fn format(trace_id: u128, span_id: u64, sampled: bool) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut out[3..35], trace_id);
    put_hex(&mut out[36..52], u128::from(span_id));
    if sampled {
        out[54] = b'1';
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_a_valid_traceparent_and_writes_it_back() {
        let p = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        assert_eq!(format(p.trace_id, p.span_id, true), GOOD);
        let unsampled = format(p.trace_id, p.span_id, false);
        assert!(unsampled.to_str().unwrap().ends_with("-00"));
        assert!(!parse(unsampled.as_bytes()).unwrap().sampled);
        let mut buf = [0; 32];
        assert_eq!(
            trace_id_hex(p.trace_id, &mut buf),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn refuses_malformed_ones() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
        // A later version may add fields after a dash.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(parse(later.as_bytes()).is_some());
    }
}
