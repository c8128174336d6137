//! The status page as HTML: one document with its CSS and a small script inline, nothing
//! fetched from elsewhere. The script fetches the page again every [`REFRESH`] and swaps the
//! `<main>` element for the new one, so the page keeps its scroll and does not flash; the
//! [`CSP`] allows exactly that style, that script, and fetches to the admin listener itself.
//!
//! Every text taken from the config or the live state goes through [`escape`]: route names,
//! hosts, paths and error texts are whatever the file says.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;

use super::{IssuerStatus, PoolStatus, RouteStatus, Status};
use crate::reload::ReloadRecord;

/// How often the page redraws itself.
pub const REFRESH: Duration = Duration::from_secs(2);

const STYLE: &str = r#"
body{font:13px/1.35 Helvetica,Arial,sans-serif;margin:0;background:#f4f4f0;color:#111}
header{background:#20406a;color:#fff;padding:8px 14px;display:flex;flex-wrap:wrap;gap:4px 22px;align-items:baseline}
header h1{font-size:18px;margin:0 12px 0 0}
header .k{color:#b8c8e0}
body.offline header{background:#8a1c1c}
body.offline header::after{content:"admin endpoint unreachable: showing the last answer";font-weight:bold}
main{padding:6px 14px 18px}
h2{font-size:15px;margin:16px 0 4px;color:#20406a}
table{border-collapse:collapse;background:#fff;margin:0 0 10px;min-width:40%}
th,td{border:1px solid #b8b8b8;padding:2px 7px;text-align:left;vertical-align:top}
th{background:#20a0ff;color:#fff;font-weight:bold}
tr.px th{background:#b00040;text-align:left;font-size:13px}
tr.px th span{font-weight:normal;color:#ffe0ea;margin-left:12px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px/1.3 ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
td b{white-space:nowrap}
table.pool{min-width:600px}
.up{background:#c0ffc0}
.down{background:#ff9090}
.ejected{background:#ffd070}
.stale{background:#ffd070}
.nokeys{background:#ff9090}
.fresh{background:#c0ffc0}
.ok{background:#c0ffc0}
.fail{background:#ff9090}
.none{color:#777}
.err{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;max-width:60em;word-break:break-word}
"#;

const SCRIPT: &str = r#"
(function () {
  var body = document.body, requested = 0, drawn = 0;
  var period = Number(body.dataset.refreshMs) || 2000;
  function tick() {
    requested += 1;
    body.dataset.requested = requested;
    fetch(location.pathname, { cache: "no-store", credentials: "omit" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (text) {
        var next = new DOMParser().parseFromString(text, "text/html").querySelector("main");
        var now = document.querySelector("main");
        if (!next || !now) { throw new Error("no main"); }
        now.replaceWith(document.adoptNode(next));
        drawn += 1;
        body.dataset.drawn = drawn;
        body.classList.remove("offline");
      })
      .catch(function () { body.classList.add("offline"); })
      .then(function () { setTimeout(tick, period); });
  }
  setTimeout(tick, period);
})();
"#;

fn sha256_source(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The page's `Content-Security-Policy`: its own inline style and script by hash, fetches
/// to its own origin, and nothing else (no image, font, frame, form or base URL).
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; style-src {}; script-src {}; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256_source(STYLE),
        sha256_source(SCRIPT)
    )
});

/// `text` made safe for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time_text(unix: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn age_text(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// A list as `a, b, c`, or a grey `-` when empty.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "<span class=none>-</span>".into()
    } else {
        escape(&items.join(", "))
    }
}

/// Items one to a line, or a grey `-` when empty.
fn lines(items: &[String]) -> String {
    if items.is_empty() {
        "<span class=none>-</span>".into()
    } else {
        let escaped: Vec<String> = items.iter().map(|i| escape(i)).collect();
        escaped.join("<br>")
    }
}

/// The whole page for `status`.
pub fn render(status: &Status) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\">\
         <title>Portcullis status</title><style>{STYLE}</style></head>\
         <body data-refresh-ms={}>",
        REFRESH.as_millis()
    );
    out.push_str(&main(status));
    let _ = writeln!(out, "<script>{SCRIPT}</script></body></html>");
    out
}

/// The `<main>` element: everything that changes.
fn main(s: &Status) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<main><header><h1>Portcullis</h1>\
         <span><span class=k>version</span> {}</span>\
         <span><span class=k>generation</span> <b id=generation>{}</b></span>\
         <span><span class=k>uptime</span> {}</span>\
         <span><span class=k>updated</span> {}</span>\
         <span><span class=k>refresh</span> every {}</span></header>",
        escape(s.version),
        s.generation,
        age_text(s.uptime_seconds),
        time_text(s.now),
        age_text(REFRESH.as_secs()),
    );
    routes(&mut out, &s.routes);
    pools(&mut out, &s.pools);
    issuers(&mut out, &s.issuers);
    reloads(&mut out, &s.reloads);
    out.push_str("</main>");
    out
}

fn routes(out: &mut String, routes: &[RouteStatus]) {
    out.push_str(
        "<h2>Routes</h2><table id=routes><tr><th>Route</th><th>Host</th><th>Path prefix</th>\
         <th>Methods</th><th>Upstream</th><th>Auth</th><th>Issuers</th><th>Audiences</th>\
         <th>Scopes</th><th>Claims</th><th>Rate limits</th></tr>",
    );
    for r in routes {
        let limits: Vec<String> = r
            .limits
            .iter()
            .map(|l| {
                format!(
                    "{} {} burst {}{} ({} keys)",
                    l.kind,
                    l.rate,
                    l.burst,
                    if l.scope == "cluster" { " cluster" } else { "" },
                    l.keys
                )
            })
            .collect();
        let auth = match &r.auth.session {
            Some(session) => format!("{} ({})", r.auth.kind, session),
            None => r.auth.kind.clone(),
        };
        let _ = write!(
            out,
            "<tr data-route=\"{name}\"><td><b>{name}</b></td><td>{host}</td><td><code>{prefix}</code></td>\
             <td>{methods}</td><td>{upstream}</td><td>{auth}</td><td>{issuers}</td>\
             <td>{audiences}</td><td>{scopes}</td><td>{claims}</td><td>{limits}</td></tr>",
            name = escape(&r.name),
            host = r
                .host
                .as_deref()
                .map_or_else(|| "<span class=none>any</span>".into(), escape),
            prefix = escape(&r.path_prefix),
            methods = if r.methods.is_empty() {
                "<span class=none>any</span>".into()
            } else {
                escape(&r.methods.join(" "))
            },
            upstream = escape(&r.upstream),
            auth = escape(&auth),
            issuers = list(&r.auth.issuers),
            audiences = list(&r.auth.audiences),
            scopes = list(&r.auth.scopes),
            claims = lines(&r.auth.claims),
            limits = lines(&limits),
        );
    }
    out.push_str("</table>");
}

fn pools(out: &mut String, pools: &[PoolStatus]) {
    out.push_str("<h2>Upstream pools</h2>");
    for p in pools {
        let mut facts = vec![
            p.balance.to_string(),
            p.protocol.to_string(),
            if p.tls { "tls" } else { "plaintext" }.to_string(),
            p.health_check
                .clone()
                .unwrap_or_else(|| "no health check".into()),
            format!("{}/{} up", p.healthy, p.targets.len()),
            format!("{} in flight", p.in_flight),
        ];
        if let Some(cap) = &p.concurrency {
            facts.push(format!(
                "cap {} ({} held{})",
                cap.limit,
                cap.in_flight,
                if cap.adaptive { ", adaptive" } else { "" }
            ));
        }
        let _ = write!(
            out,
            "<table class=pool data-pool=\"{name}\"><tr class=px><th colspan=5>{name}<span>{facts}</span></th></tr>\
             <tr><th>Target</th><th>State</th><th>Probe</th><th>Ejected for</th><th>Ejections</th></tr>",
            name = escape(&p.name),
            facts = escape(&facts.join(" · ")),
        );
        for t in &p.targets {
            let _ = write!(
                out,
                "<tr class={state} data-target=\"{label}\" data-state={state}><td><code>{label}</code></td>\
                 <td><b>{state_text}</b></td><td>{probe}</td><td class=num>{ejected}</td>\
                 <td class=num>{ejections}</td></tr>",
                state = t.state,
                state_text = t.state.to_uppercase(),
                label = escape(&t.label),
                probe = if p.health_check.is_none() {
                    "-"
                } else if t.probe_healthy {
                    "passing"
                } else {
                    "failing"
                },
                ejected = t.ejected_seconds.map_or_else(|| "-".into(), age_text),
                ejections = t.ejections,
            );
        }
        if p.targets.is_empty() {
            out.push_str("<tr class=down><td colspan=5>no target has an address yet</td></tr>");
        }
        out.push_str("</table>");
    }
}

fn issuers(out: &mut String, issuers: &[IssuerStatus]) {
    out.push_str(
        "<h2>Issuers</h2><table id=issuers><tr><th>Issuer</th><th>iss</th><th>Keys from</th>\
         <th>Audiences</th><th>Key ids</th><th>Key age</th><th>State</th><th>Introspection</th></tr>",
    );
    for i in issuers {
        let (class, state) = match (i.key_age_seconds, i.stale) {
            (None, _) => ("nokeys", "no keys"),
            (Some(_), true) => ("stale", "stale"),
            (Some(_), false) => ("fresh", "fresh"),
        };
        let _ = write!(
            out,
            "<tr data-issuer=\"{name}\"><td><b>{name}</b></td><td><code>{iss}</code></td>\
             <td>{source}</td><td>{audiences}</td><td><code>{kids}</code></td>\
             <td class=num>{age}</td><td class={class}>{state}</td><td>{introspection}</td></tr>",
            name = escape(&i.name),
            iss = escape(&i.iss),
            source = escape(&i.source),
            audiences = list(&i.audiences),
            kids = list(&i.key_ids),
            age = i.key_age_seconds.map_or_else(|| "-".into(), age_text),
            introspection = if i.introspection { "yes" } else { "no" },
        );
    }
    if issuers.is_empty() {
        out.push_str("<tr><td colspan=8 class=none>no issuer configured</td></tr>");
    }
    out.push_str("</table>");
}

fn reloads(out: &mut String, reloads: &[ReloadRecord]) {
    out.push_str(
        "<h2>Last reloads</h2><table id=reloads><tr><th>Time</th><th>Trigger</th>\
         <th>Result</th><th>Generation</th><th>Error</th></tr>",
    );
    for r in reloads {
        let _ = write!(
            out,
            "<tr><td>{at}</td><td>{trigger}</td><td class={class}>{result}</td>\
             <td class=num>{generation}</td><td class=err>{error}</td></tr>",
            at = time_text(r.at),
            trigger = escape(&r.trigger),
            class = if r.ok { "ok" } else { "fail" },
            result = if r.ok { "applied" } else { "refused" },
            generation = r.generation,
            error = r.error.as_deref().map_or_else(|| "-".into(), escape),
        );
    }
    out.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_would_read() {
        assert_eq!(
            escape(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn the_policy_names_the_inline_style_and_script_by_hash() {
        assert!(CSP.starts_with("default-src 'none'; style-src 'sha256-"));
        assert_eq!(CSP.matches("'sha256-").count(), 2);
        assert!(!CSP.contains("unsafe"));
    }
}
