//! Routing: which route takes a request, by host, longest path prefix, method, and the
//! header and query conditions of `match:`.
//!
//! [`table`] is the lookup (built once per config, never allocating), [`target`] decides
//! which request targets may be routed at all and the path form matched on, [`methods`] the
//! method sets and [`conditions`] the header and query conditions. It does not know what a
//! route does; it hands back the route's index.

pub mod conditions;
mod methods;
mod table;
mod target;

pub use conditions::{Conditions, RequestFacts};
pub use methods::Methods;
pub use table::{RouteMatch, RouteTable};
pub(crate) use target::decode_once;
pub use target::{host_key, match_path, request_target, BadPath, Target};

/// Compile a route's `match:`: host (exact or `*.domain`), path prefix, methods, and the
/// header and query conditions.
pub fn compile_match(
    rc: &crate::config::RouteConfig,
    path: &str,
    issues: &mut crate::config::Issues<'_>,
) -> Option<RouteMatch> {
    let mut ok = true;
    let host = match rc.matcher.host.as_deref() {
        None => None,
        Some(h) => {
            let lower = h.trim().to_ascii_lowercase();
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            let valid = !bare.is_empty()
                && !bare.contains('*')
                && !bare.contains(':')
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                issues.push(
                    format!("{path}.match.host"),
                    format!("`{h}` is not a host name or `*.domain` pattern"),
                );
                ok = false;
            }
            Some(lower)
        }
    };
    let prefix = rc.matcher.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !prefix.starts_with('/') {
        issues.push(format!("{path}.match.path_prefix"), "must start with `/`");
        ok = false;
    }
    let methods = match rc.matcher.methods.as_deref() {
        None => Methods::ANY,
        Some([]) => {
            issues.push(
                format!("{path}.match.methods"),
                "leave it out to allow every method",
            );
            ok = false;
            Methods::ANY
        }
        Some(list) => Methods::parse(list).unwrap_or_else(|e| {
            issues.push(format!("{path}.match.methods"), e);
            ok = false;
            Methods::ANY
        }),
    };
    let conditions = conditions::compile(&rc.matcher, path, issues);
    ok.then_some(RouteMatch {
        host,
        path_prefix: prefix,
        methods,
        conditions: conditions?,
    })
}

#[cfg(test)]
mod tests;
