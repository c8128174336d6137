//! The Grafana dashboard (`deploy/grafana/portcullis.json`) and the Prometheus alerts
//! (`deploy/prometheus/alerts.yaml`): the rules pass `promtool check rules`, their unit tests
//! (`alerts_test.yaml`) pass `promtool test rules` and cover every alert firing and not
//! firing, every dashboard query is valid PromQL, and every metric either names is one the
//! real binary's `/metrics` exposes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis::auth::tools::mint;
use serde_json::{json, Value};

use crate::support::jwks::{key_set, JwksServer};
use crate::support::keys::{AUD, EC384, ISS};
use crate::support::{client_builder, pool, Proxy, Upstream};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/portcullis.json"
);
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yaml");
const ALERT_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/alerts_test.yaml"
);

/// Families the dashboard or the alerts may name that the proxy started here cannot expose,
/// each with the reason. Keep it short: configure the subsystem in
/// [`dashboards_and_alerts_name_only_exposed_metrics`] instead when it can be.
const NOT_STARTED_HERE: &[(&str, &str)] = &[];

/// promtool, from Debian's `prometheus` package (`make deps` installs it).
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("promtool not found: `make deps` installs it (Debian package `prometheus`)")
    })
}

fn run_promtool(args: &[&str], dir: &Path) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every alert rule of alerts.yaml: (name, expression).
fn alerts() -> Vec<(String, String)> {
    let doc = yaml(ALERTS);
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            if let Some(name) = rule["alert"].as_str() {
                out.push((name.to_string(), rule["expr"].as_str().unwrap().to_string()));
            }
        }
    }
    out
}

/// Every `expr` in the dashboard, with the metric of each templating `label_values(...)`.
fn dashboard_queries() -> (Vec<String>, Vec<String>) {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    fn walk(v: &Value, exprs: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => exprs.push(e.clone()),
                        _ => walk(v, exprs),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, exprs)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dash["panels"], &mut exprs);
    let mut variables = Vec::new();
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .unwrap_or_else(|| panic!("templating query {q} is not label_values(..)"));
            variables.push(inner.rsplit_once(',').unwrap().0.to_string());
        }
    }
    (exprs, variables)
}

/// Grafana's variables replaced by what Prometheus would be sent.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

/// The metric names a PromQL expression selects: identifiers outside strings, label
/// matchers, ranges and grouping clauses, that are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Operators, and the aggregations, which may be followed by `by (...)` before their `(`.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    // Strings, then what lies between braces and brackets, become spaces.
    let mut plain = String::new();
    let mut chars = expr.chars().peekable();
    let mut closing: Option<char> = None;
    while let Some(c) = chars.next() {
        match (closing, c) {
            (None, '"' | '\'' | '`') => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                plain.push(' ');
            }
            (None, '{') => closing = Some('}'),
            (None, '[') => closing = Some(']'),
            (Some(end), c) if c == end => {
                closing = None;
                plain.push(' ');
            }
            (Some(_), _) => {}
            (None, c) => plain.push(c),
        }
    }
    let mut names = BTreeSet::new();
    let bytes = plain.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    let mut skip_group = false;
    while i < bytes.len() {
        let b = bytes[i];
        if skip_group && b == b'(' {
            // The label list of `by (...)`, `on (...)`, ...
            while i < bytes.len() && bytes[i] != b')' {
                i += 1;
            }
            skip_group = false;
            i += 1;
            continue;
        }
        let starts = (b.is_ascii_alphabetic() || b == b'_' || b == b':')
            && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b'.' || bytes[i - 1] == b'$'));
        if !starts {
            if !b.is_ascii_whitespace() {
                skip_group = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let word = &plain[start..i];
        let next = plain[i..].trim_start().chars().next();
        if matches!(
            word,
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        ) {
            skip_group = true;
        } else if next != Some('(') && !KEYWORDS.contains(&word) {
            names.insert(word.to_string());
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{code=~"5..", x="b c"}[5m])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("(x - time()) < 14 * 86400 and on (job) y offset 5m > bool 1e3"),
        ["x", "y"]
    );
    assert_eq!(
        names("sum without (instance) (rate(a[$__rate_interval])) / ignoring(code) group_left b"),
        ["a", "b"]
    );
}

#[test]
fn alert_rules_and_their_unit_tests_pass_promtool() {
    let dir = Path::new(ALERTS).parent().unwrap();
    run_promtool(&["check", "rules", "alerts.yaml"], dir);
    run_promtool(&["test", "rules", "alerts_test.yaml"], dir);

    // Every alert is tested both firing and not firing.
    let tests = yaml(ALERT_TESTS);
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in tests["tests"].as_sequence().unwrap() {
        for case in test["alert_rule_test"].as_sequence().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_string();
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected == 0 {
                quiet.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    for (alert, _) in alerts() {
        assert!(firing.contains(&alert), "no test shows {alert} firing");
        assert!(quiet.contains(&alert), "no test shows {alert} not firing");
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let (exprs, _) = dashboard_queries();
    assert!(exprs.len() > 20, "{} queries", exprs.len());
    // promtool checks PromQL in rule files: each query becomes a recording rule.
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| json!({ "record": format!("dashboard:query_{i}"), "expr": as_promql(e) }))
        .collect();
    let file = json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dashboard.yaml"),
        serde_yaml::to_string(&file).unwrap(),
    )
    .unwrap();
    run_promtool(&["check", "rules", "dashboard.yaml"], dir.path());
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_name_only_exposed_metrics() {
    // A proxy with every subsystem the dashboard and the alerts watch that is cheap to start:
    // a TLS listener, an issuer with a key server, a route with a token check and limits, a
    // pool with a health check and an in-flight cap, the access log (to a file), tracing (to
    // a loopback port nothing listens on: its series exist from the commit all the same).
    let up = Upstream::start("app").await;
    let jwks = JwksServer::start(key_set(&[(EC384, "ec384")])).await;
    let body = format!(
        "tracing:\n  otlp_endpoint: \"http://127.0.0.1:{}/v1/traces\"\nupstreams:\n{}issuers:\n  - name: corp\n    issuer: \"{ISS}\"\n    jwks_uri: \"{}\"\n    audiences: [{AUD}]\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: app\n    auth: {{ issuers: [corp] }}\n    rate_limit: {{ per_ip: {{ rate: 100/s, burst: 100 }} }}\n",
        crate::support::free_port(),
        pool(
            "app",
            &[up.addr().to_string()],
            &[
                "health_check: { tcp: {}, interval: 200ms }",
                "concurrency: { limit: 10 }",
                "retries: 1",
            ]
        ),
        jwks.jwks_url(),
    );
    let proxy = Proxy::builder(&body).tls().start().await;
    proxy
        .wait_metric(
            "portcullis_jwks_fetches_total",
            &[("issuer", "corp"), ("result", "success")],
            1.0,
        )
        .await;
    let http = client_builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let claims = json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now() + 600});
    let token = mint(EC384, &claims.to_string(), None, Some("ec384")).unwrap();
    for _ in 0..2 {
        let resp = http
            .get(proxy.url("/api/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = http.get(proxy.url("/api/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let m = proxy.metrics().await;
    let mut exposed: BTreeSet<String> = m.names().map(str::to_string).collect();
    for line in m.text().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            exposed.insert(rest.split(' ').next().unwrap().to_string());
        }
    }

    let (exprs, variables) = dashboard_queries();
    let mut named: Vec<(String, String)> = Vec::new();
    for e in &exprs {
        named.extend(
            metric_names(e)
                .into_iter()
                .map(|n| (n, "the dashboard".into())),
        );
    }
    for v in &variables {
        named.extend(
            metric_names(v)
                .into_iter()
                .map(|n| (n, "a dashboard variable".into())),
        );
    }
    for (alert, e) in alerts() {
        named.extend(
            metric_names(&e)
                .into_iter()
                .map(|n| (n, format!("alert {alert}"))),
        );
    }
    // Not vacuous: the parse found the families both are about.
    let all: BTreeSet<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    for family in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_jwks_stale",
        "portcullis_tls_certificate_expiry_timestamp_seconds",
        "portcullis_build_info",
    ] {
        assert!(all.contains(family), "{family} not found in {all:?}");
    }
    let missing: Vec<String> = named
        .iter()
        .filter(|(n, _)| !exposed.contains(n.as_str()))
        .filter(|(n, _)| !NOT_STARTED_HERE.iter().any(|(f, _)| f == n))
        .map(|(n, by)| format!("{n} (named by {by})"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        missing.is_empty(),
        "named but not exposed by /metrics:\n  {}\n\nexposed:\n{}",
        missing.join("\n  "),
        exposed.into_iter().collect::<Vec<_>>().join("\n")
    );
    // The README's table lists every family exposed.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("\n## Metrics\n").unwrap();
    let end = start
        + readme[start..]
            .find("\n## Dashboards and alerts\n")
            .unwrap();
    let section = &readme[start..end];
    let unlisted: Vec<&str> = m
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|family| !section.contains(&format!("`{family}`")))
        .collect();
    assert!(
        unlisted.is_empty(),
        "README.md's Metrics section does not list {unlisted:?}"
    );
    // An exemption that is exposed after all is stale: remove it.
    for (family, _) in NOT_STARTED_HERE {
        assert!(
            !exposed.contains(*family),
            "{family} is exposed now: drop it from NOT_STARTED_HERE"
        );
    }
}
