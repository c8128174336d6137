//! Header value templates: a value from the config is split at reload into literal pieces
//! and variables, so that a request only copies pieces and looks variables up; it never
//! parses. A value without variables is a ready [`HeaderValue`], cloned by reference count.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::HeaderValue;

use crate::auth::Identity;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text sent as written.
    Literal(Box<str>),
    /// The client address after trusted proxies.
    ClientIp,
    /// The request's `X-Request-Id`.
    RequestId,
    /// The route's name.
    Route,
    /// A claim of the verified identity, by its projection slot.
    Claim(usize),
}

/// A compiled header value.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Box<[Piece]>,
    /// The whole value when it has no variable.
    fixed: Option<HeaderValue>,
}

/// What a template's variables stand for, in one request.
pub struct Vars<'a> {
    /// `{client_ip}`.
    pub client_ip: Option<IpAddr>,
    /// `{request_id}`.
    pub request_id: &'a HeaderValue,
    /// `{route}`.
    pub route: &'a str,
    /// The identity `{claim.NAME}` reads; `None` on a route without authentication.
    pub identity: Option<&'a Identity>,
}

/// The variables a value may hold, for error messages.
pub const VARIABLES: &str = "`{client_ip}`, `{request_id}`, `{route}`, `{claim.NAME}`";

impl Template {
    /// Compile `text`: `{client_ip}`, `{request_id}`, `{route}` and `{claim.NAME}` are
    /// variables, `{{` and `}}` a literal brace. `claim_slot` gives a claim's projection
    /// slot (`None` when the claim is not projected).
    ///
    /// # Errors
    /// A message saying what is wrong: an unknown variable, an unclosed `{`, a lone `}`,
    /// or a character a header value cannot hold.
    pub fn compile(
        text: &str,
        claim_slot: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let tail = &rest[at..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err("a lone `}`: write `}}` for a literal brace".into());
            }
            let end = tail
                .find('}')
                .ok_or("an unclosed `{`: write `{{` for a literal brace")?;
            let name = &tail[1..end];
            let piece = match name {
                "client_ip" => Piece::ClientIp,
                "request_id" => Piece::RequestId,
                "route" => Piece::Route,
                _ => match name.strip_prefix("claim.") {
                    Some(claim) if !claim.is_empty() => Piece::Claim(
                        claim_slot(claim).ok_or_else(|| format!("claim `{claim}` is unknown"))?,
                    ),
                    _ => {
                        return Err(format!(
                            "unknown variable `{{{name}}}`; a value may use {VARIABLES}"
                        ))
                    }
                },
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal).into()));
            }
            pieces.push(piece);
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal.into()));
        }
        for piece in &pieces {
            if let Piece::Literal(text) = piece {
                if HeaderValue::from_str(text).is_err() {
                    return Err(format!(
                        "`{text}` is not a valid header value (control characters or non-ASCII)"
                    ));
                }
            }
        }
        let fixed = match pieces.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Piece::Literal(text)] => HeaderValue::from_str(text).ok(),
            _ => None,
        };
        Ok(Template {
            pieces: pieces.into(),
            fixed,
        })
    }

    /// The value for one request; `None` when a variable has no value (no client address,
    /// a claim the identity lacks, no identity) or the result cannot be a header value.
    pub fn render(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        if let Some(fixed) = &self.fixed {
            return Some(fixed.clone());
        }
        if let [Piece::RequestId] = *self.pieces {
            return Some(vars.request_id.clone());
        }
        let mut out = String::with_capacity(64);
        for piece in &*self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::ClientIp => {
                    let _ = write!(out, "{}", vars.client_ip?);
                }
                Piece::RequestId => out.push_str(vars.request_id.to_str().ok()?),
                Piece::Route => out.push_str(vars.route),
                Piece::Claim(slot) => out.push_str(vars.identity?.claim(*slot)?),
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(name: &str) -> Option<usize> {
        ["sub", "org.tier"].iter().position(|c| *c == name)
    }

    fn pieces(text: &str) -> Vec<Piece> {
        Template::compile(text, &slots).unwrap().pieces.to_vec()
    }

    #[test]
    fn splits_literals_and_variables() {
        assert_eq!(pieces(""), []);
        assert_eq!(pieces("plain"), [Piece::Literal("plain".into())]);
        assert_eq!(
            pieces("ip={client_ip}; id={request_id}; r={route}; u={claim.sub}/{claim.org.tier}"),
            [
                Piece::Literal("ip=".into()),
                Piece::ClientIp,
                Piece::Literal("; id=".into()),
                Piece::RequestId,
                Piece::Literal("; r=".into()),
                Piece::Route,
                Piece::Literal("; u=".into()),
                Piece::Claim(0),
                Piece::Literal("/".into()),
                Piece::Claim(1),
            ]
        );
        assert_eq!(pieces("{{x}}"), [Piece::Literal("{x}".into())]);
        assert_eq!(
            pieces("a{{{route}}}b"),
            [
                Piece::Literal("a{".into()),
                Piece::Route,
                Piece::Literal("}b".into())
            ]
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let err = |text: &str| Template::compile(text, &slots).unwrap_err();
        assert!(err("{host}").contains("unknown variable `{host}`"));
        assert!(err("{claim.}").contains("unknown variable"));
        assert!(err("{claim.email}").contains("claim `email` is unknown"));
        assert!(err("a{route").contains("unclosed"));
        assert!(err("a}b").contains("lone"));
        assert!(err("bad\nvalue").contains("not a valid header value"));
    }

    #[test]
    fn renders_each_variable() {
        let id = HeaderValue::from_static("req-1");
        let vars = Vars {
            client_ip: Some("192.0.2.7".parse().unwrap()),
            request_id: &id,
            route: "orders",
            identity: None,
        };
        let render = |text: &str| Template::compile(text, &slots).unwrap().render(&vars);
        assert_eq!(render("fixed").unwrap(), "fixed");
        assert_eq!(render("{request_id}").unwrap(), "req-1");
        assert_eq!(
            render("{client_ip} {route} {request_id}").unwrap(),
            "192.0.2.7 orders req-1"
        );
        // No identity: a claim has no value, and the whole value none.
        assert_eq!(render("u={claim.sub}"), None);
        let no_ip = Vars {
            client_ip: None,
            ..vars
        };
        assert_eq!(
            Template::compile("{client_ip}", &slots)
                .unwrap()
                .render(&no_ip),
            None
        );
    }
}
