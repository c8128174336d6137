//! Requests: what each route answered, by method and status code, and how long it took.
//!
//! The label values are bounded: `method` is one of [`METHODS`] (`OTHER` for the rest) and
//! `code` a three-digit status (`0` when no response was sent). The request path resolves its
//! series through tables built once per route, so counting a request allocates nothing after
//! the first request of a (method, code).

use std::sync::{Mutex, OnceLock};

use prometheus::{Histogram, IntCounter};

use super::METRICS;

/// `portcullis_requests_total{route,method,code}`: requests answered. Route `""` when none
/// matched; `code` `0` when no response was sent (the client went away first).
pub const REQUESTS_TOTAL: &str = "portcullis_requests_total";
/// `portcullis_request_duration_seconds{route,method}`: time from request to last byte.
pub const REQUEST_DURATION_SECONDS: &str = "portcullis_request_duration_seconds";

/// The values of the `method` label: the standard methods, then `OTHER` for any other.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];

/// The index in [`METHODS`] of a request's method: the one numbering of methods, which route
/// method sets (`routing::Methods`) use for their bits too.
pub fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        http::Method::TRACE => 7,
        http::Method::CONNECT => 8,
        _ => 9,
    }
}

/// The codes whose counters a route keeps at hand; others are found by label (and allocate
/// their label once, at their first request).
const KNOWN_CODES: [&str; 31] = [
    "0", "200", "201", "202", "204", "206", "301", "302", "303", "304", "307", "308", "400", "401",
    "403", "404", "405", "408", "409", "410", "413", "414", "415", "422", "429", "431", "500",
    "501", "502", "503", "504",
];

/// The codes every route's series start with, at zero: a success and every status Portcullis
/// itself answers with (bad request, no route, its refusals, an upstream that failed, was
/// unavailable or timed out), so that `rate()` sees the first of each and ratios are never
/// empty. Other codes appear at their first request.
pub const ZERO_CODES: [u16; 10] = [200, 400, 401, 403, 404, 429, 500, 502, 503, 504];

/// The methods a route's series start with when its `match.methods` does not name any.
pub const ZERO_METHODS: [&str; 2] = ["GET", "POST"];

/// [`KNOWN_CODES`] as numbers.
const KNOWN_NUMBERS: [u16; KNOWN_CODES.len()] = [
    0, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409,
    410, 413, 414, 415, 422, 429, 431, 500, 501, 502, 503, 504,
];

fn known_index(code: u16) -> Option<usize> {
    KNOWN_NUMBERS.binary_search(&code).ok()
}

/// A status code as its label, written into `buf` (codes are 0 or 100..=999).
fn code_label(code: u16, buf: &mut [u8; 3]) -> &str {
    if code == 0 || code > 999 {
        return "0";
    }
    let digits = [code / 100, code / 10 % 10, code % 10];
    for (b, d) in buf.iter_mut().zip(digits) {
        // Each digit is below 10: the cast cannot truncate.
        *b = b'0' + d as u8;
    }
    std::str::from_utf8(buf).unwrap_or("0")
}

/// Per-route series, resolved once so the request path does no label lookups.
///
/// Making one registers nothing: the series appear when the generation that holds the route
/// is committed ([`RouteMetrics::register`]) or at the route's first request, whichever
/// comes first, so a compile that is then refused leaves `/metrics` as it was.
pub struct RouteMetrics {
    name: String,
    authenticated: bool,
    /// Indexes in [`METHODS`] of the methods whose series start at zero.
    zero_methods: Vec<usize>,
    methods: [MethodSeries; METHODS.len()],
    /// Only for routes with a policy, so `auth: none` routes export no auth series.
    auth_allowed: OnceLock<IntCounter>,
    /// Series of codes not in [`KNOWN_CODES`]: (method index, code, counter).
    others: Mutex<Vec<(usize, u16, IntCounter)>>,
}

#[derive(Default)]
struct MethodSeries {
    duration: OnceLock<Histogram>,
    codes: [OnceLock<IntCounter>; KNOWN_CODES.len()],
}

impl RouteMetrics {
    /// The series of route `name` (`""` for requests no route took); `authenticated` when
    /// the route checks tokens; `methods` the route's `match.methods` (empty: every method).
    /// Registers nothing yet.
    pub fn new(name: &str, authenticated: bool, methods: &[&str]) -> RouteMetrics {
        let zero = if methods.is_empty() {
            &ZERO_METHODS[..]
        } else {
            methods
        };
        RouteMetrics {
            name: name.to_string(),
            authenticated,
            zero_methods: zero
                .iter()
                .filter_map(|m| METHODS.iter().position(|k| k.eq_ignore_ascii_case(m)))
                .collect(),
            methods: Default::default(),
            auth_allowed: OnceLock::new(),
            others: Mutex::new(Vec::new()),
        }
    }

    /// Make the route's known series exist (at zero when new): every code of [`ZERO_CODES`]
    /// for each of its methods (or [`ZERO_METHODS`]), and for a route that checks tokens
    /// every token-check result, each denial `reason` among them.
    pub fn register<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        for &method in &self.zero_methods {
            let _ = self.duration(method);
            for code in ZERO_CODES {
                let _ = self.counter(method, code);
            }
        }
        if self.authenticated {
            let _ = self.allowed();
            for reason in reasons {
                METRICS
                    .auth_decisions
                    .with_label_values(&[&self.name, "denied", reason]);
            }
        }
    }

    fn allowed(&self) -> &IntCounter {
        self.auth_allowed.get_or_init(|| {
            METRICS
                .auth_decisions
                .with_label_values(&[&self.name, "allowed", "ok"])
        })
    }

    fn duration(&self, method: usize) -> &Histogram {
        self.methods[method].duration.get_or_init(|| {
            METRICS
                .request_duration
                .with_label_values(&[&self.name, METHODS[method]])
        })
    }

    /// The counter of (method, [`KNOWN_CODES`]`[i]`), resolved at its first use.
    fn known(&self, method: usize, i: usize) -> &IntCounter {
        self.methods[method].codes[i].get_or_init(|| {
            METRICS
                .requests
                .with_label_values(&[&self.name, METHODS[method], KNOWN_CODES[i]])
        })
    }

    /// The counter of (method, code): from the table for a known code, else from the route's
    /// list of other codes (a lock, taken only for codes outside the table), made at the
    /// code's first request.
    fn counter(&self, method: usize, code: u16) -> IntCounter {
        if let Some(i) = known_index(code) {
            return self.known(method, i).clone();
        }
        let make = || {
            let mut buf = [0u8; 3];
            METRICS.requests.with_label_values(&[
                self.name.as_str(),
                METHODS[method],
                code_label(code, &mut buf),
            ])
        };
        let Ok(mut others) = self.others.lock() else {
            return make();
        };
        if let Some((_, _, c)) = others.iter().find(|(m, c, _)| *m == method && *c == code) {
            return c.clone();
        }
        let counter = make();
        others.push((method, code, counter.clone()));
        counter
    }

    /// Count one token check: allowed, or denied for `reason`.
    pub fn auth_decision(&self, denied: Option<&str>) {
        match denied {
            None => {
                if self.authenticated {
                    self.allowed().inc();
                }
            }
            Some(reason) => METRICS
                .auth_decisions
                .with_label_values(&[&self.name, "denied", reason])
                .inc(),
        }
    }

    /// Count one request of `method` answered with `status` (0: none) after `seconds`.
    pub fn observe(&self, method: &http::Method, status: u16, seconds: f64) {
        let method = method_index(method);
        match known_index(status) {
            Some(i) => self.known(method, i).inc(),
            None => self.counter(method, status).inc(),
        }
        self.duration(method).observe(seconds);
    }

    /// Drop every request and token-check series of this route (a reload removed it):
    /// `auth_reasons` are the denial reasons and `limits` the limit names its series may carry.
    pub fn forget<'a>(&self, auth_reasons: impl IntoIterator<Item = &'a str>, limits: &[&str]) {
        let m = &*METRICS;
        let name = self.name.as_str();
        for method in METHODS {
            let _ = m.request_duration.remove_label_values(&[name, method]);
            for code in KNOWN_CODES {
                let _ = m.requests.remove_label_values(&[name, method, code]);
            }
        }
        if let Ok(others) = self.others.lock() {
            for (method, code, _) in others.iter() {
                let mut buf = [0u8; 3];
                let _ = m.requests.remove_label_values(&[
                    name,
                    METHODS[*method],
                    code_label(*code, &mut buf),
                ]);
            }
        }
        forget_auth_decisions(name, auth_reasons);
        for limit in limits {
            for result in ["allowed", "denied"] {
                let _ = m
                    .ratelimit_decisions
                    .remove_label_values(&[name, limit, result]);
            }
        }
    }
}

/// Drop the token-check series of route `name`: it was removed, or no longer checks tokens.
pub fn forget_auth_decisions<'a>(name: &str, reasons: impl IntoIterator<Item = &'a str>) {
    let m = &*METRICS;
    let _ = m
        .auth_decisions
        .remove_label_values(&[name, "allowed", "ok"]);
    for reason in reasons {
        let _ = m
            .auth_decisions
            .remove_label_values(&[name, "denied", reason]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_three_digits_or_zero() {
        let mut buf = [0u8; 3];
        assert_eq!(code_label(0, &mut buf), "0");
        assert_eq!(code_label(418, &mut buf), "418");
        assert_eq!(code_label(101, &mut buf), "101");
        assert_eq!(known_index(0), Some(0));
        assert_eq!(known_index(504).map(|i| KNOWN_CODES[i]), Some("504"));
        assert!(known_index(418).is_none());
    }

    #[test]
    fn every_zero_code_is_known() {
        assert!(ZERO_CODES.iter().all(|c| known_index(*c).is_some()));
        for (n, s) in KNOWN_NUMBERS.iter().zip(KNOWN_CODES) {
            assert_eq!(n.to_string(), s);
        }
        assert!(KNOWN_NUMBERS.windows(2).all(|w| w[0] < w[1]));
    }
}
