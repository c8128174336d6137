//! Requests: what each route answered and how long it took.

use super::METRICS;

/// `portcullis_requests_total{route,status_class}`: requests answered. Route `""` when none matched.
pub const REQUESTS_TOTAL: &str = "portcullis_requests_total";
/// `portcullis_request_duration_seconds{route}`: time from request to last byte.
pub const REQUEST_DURATION_SECONDS: &str = "portcullis_request_duration_seconds";

/// Status classes used as the `status_class` label, indexed by `status / 100`.
pub const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The status class index of a status code (`0` for no response).
pub fn status_class(status: u16) -> usize {
    usize::from(status / 100).min(5)
}

/// Per-route counters, resolved once so the request path does no label lookups.
///
/// Making one registers nothing: the series appear when the generation that holds the route
/// is committed ([`RouteMetrics::register`]) or at the route's first request, whichever
/// comes first, so a compile that is then refused leaves `/metrics` as it was.
pub struct RouteMetrics {
    name: String,
    authenticated: bool,
    series: std::sync::OnceLock<RouteSeries>,
}

struct RouteSeries {
    requests: [prometheus::IntCounter; 6],
    duration: prometheus::Histogram,
    /// Only for routes with a policy, so `auth: none` routes export no auth series.
    auth_allowed: Option<prometheus::IntCounter>,
}

impl RouteMetrics {
    /// The counters of route `name` (`""` for requests no route took); `authenticated` when
    /// the route checks tokens. Registers nothing yet.
    pub fn new(name: &str, authenticated: bool) -> RouteMetrics {
        RouteMetrics {
            name: name.to_string(),
            authenticated,
            series: std::sync::OnceLock::new(),
        }
    }

    /// Make the series exist (at zero when new).
    pub fn register(&self) {
        let _ = self.series();
    }

    fn series(&self) -> &RouteSeries {
        self.series.get_or_init(|| {
            let (m, name) = (&*METRICS, self.name.as_str());
            RouteSeries {
                requests: STATUS_CLASSES.map(|class| m.requests.with_label_values(&[name, class])),
                duration: m.request_duration.with_label_values(&[name]),
                auth_allowed: self
                    .authenticated
                    .then(|| m.auth_decisions.with_label_values(&[name, "allowed", "ok"])),
            }
        })
    }

    /// Count one token check: allowed, or denied for `reason`.
    pub fn auth_decision(&self, denied: Option<&str>) {
        match denied {
            None => {
                if let Some(c) = &self.series().auth_allowed {
                    c.inc();
                }
            }
            Some(reason) => METRICS
                .auth_decisions
                .with_label_values(&[&self.name, "denied", reason])
                .inc(),
        }
    }

    /// Count one request.
    pub fn observe(&self, status: u16, seconds: f64) {
        let series = self.series();
        series.requests[status_class(status)].inc();
        series.duration.observe(seconds);
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

/// Drop the series of a route that a reload removed, so dashboards do not show it forever:
/// `auth_reasons` are the denial reasons and `limits` the limit names its series may carry.
pub fn forget_route<'a>(
    name: &str,
    auth_reasons: impl IntoIterator<Item = &'a str>,
    limits: &[&str],
) {
    let m = &*METRICS;
    for class in STATUS_CLASSES {
        let _ = m.requests.remove_label_values(&[name, class]);
    }
    let _ = m.request_duration.remove_label_values(&[name]);
    forget_auth_decisions(name, auth_reasons);
    for limit in limits {
        for result in ["allowed", "denied"] {
            let _ = m
                .ratelimit_decisions
                .remove_label_values(&[name, limit, result]);
        }
    }
}
