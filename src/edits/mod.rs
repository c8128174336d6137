//! What a route changes on the way through, compiled at reload: header edits in both
//! directions (top-level ones first, then the route's), `server_header`, the path and `Host`
//! sent upstream (`rewrite`), and the redirects Portcullis answers itself (a route's
//! `redirect`, a listener's `redirect_to_https`).
//!
//! Nothing here parses config text on the request path: values are templates
//! ([`template`]), redirect targets are pieces. A `Location` is built only from the config,
//! a request path already checked by the routing rules, and a host checked here; never from
//! a header taken as is.

pub mod compile;
mod location;
pub mod template;

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use location::{https_location, rewritten_path, BadRewrite};
use template::{Template, Vars};

/// One header edit.
#[derive(Debug, Clone)]
enum Op {
    Remove(HeaderName),
    Set(HeaderName, Template),
    Add(HeaderName, Template),
}

/// The header edits of one direction of a route: the top-level ones, then its own.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    ops: Box<[Op]>,
}

impl HeaderEdits {
    /// Apply to `map`, in order: a removal removes every value, a set replaces them, an add
    /// adds one. A set whose value has no value in this request (a claim the identity lacks)
    /// removes the header, so that a client's own cannot stand in; such an add adds nothing.
    pub fn apply(&self, map: &mut HeaderMap, vars: &Vars<'_>) {
        for op in &*self.ops {
            match op {
                Op::Remove(name) => {
                    map.remove(name);
                }
                Op::Set(name, template) => match template.render(vars) {
                    Some(value) => {
                        map.insert(name.clone(), value);
                    }
                    None => {
                        map.remove(name);
                    }
                },
                Op::Add(name, template) => {
                    if let Some(value) = template.render(vars) {
                        map.append(name.clone(), value);
                    }
                }
            }
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A route's edits.
#[derive(Debug, Clone, Default)]
pub struct RouteEdits {
    /// Request headers sent upstream.
    pub request: HeaderEdits,
    /// Response headers sent back.
    pub response: HeaderEdits,
    /// The path and `Host` sent upstream.
    pub rewrite: Option<Rewrite>,
    /// The redirect the route answers with, in place of forwarding.
    pub redirect: Option<Redirect>,
}

/// A compiled `rewrite:`.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The route's `match.path_prefix`, replaced.
    prefix: Box<str>,
    /// What replaces it (`""` for `strip_prefix`); `None` leaves the path alone.
    replacement: Option<Box<str>>,
    /// The `Host` sent upstream.
    pub host: Option<HeaderValue>,
}

/// A compiled `redirect:`.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// 301, 302, 307 or 308.
    pub status: u16,
    pieces: Box<[location::Piece]>,
}

/// What a route's `server_header` makes of the upstream's `Server` (and `X-Powered-By`).
#[derive(Debug, Clone, Default)]
pub enum ServerHeader {
    /// Both removed (the default: no backend fingerprint).
    #[default]
    Remove,
    /// Both kept as the upstream sent them (`server_header: upstream`).
    Upstream,
    /// `Server` set to this, `X-Powered-By` removed.
    Set(HeaderValue),
}

/// Response header names of [`ServerHeader`].
const POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

impl ServerHeader {
    /// Apply to a response from the upstream.
    pub fn apply(&self, map: &mut HeaderMap) {
        match self {
            ServerHeader::Remove => {
                map.remove(http::header::SERVER);
                map.remove(POWERED_BY);
            }
            ServerHeader::Upstream => {}
            ServerHeader::Set(value) => {
                map.insert(http::header::SERVER, value.clone());
                map.remove(POWERED_BY);
            }
        }
    }

    /// The `Server` of responses Portcullis writes itself (refusals, redirects).
    pub fn own(&self) -> Option<&HeaderValue> {
        match self {
            ServerHeader::Set(value) => Some(value),
            _ => None,
        }
    }
}

/// The top-level part: `server_header` and the listeners that redirect to https.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    /// `server_header`.
    pub server: ServerHeader,
    /// The addresses of the listeners with `redirect_to_https: true`.
    https_listeners: Vec<SocketAddr>,
    /// The port in the https `Location`: the one TLS listener's when it is not 443.
    https_port: Option<u16>,
}

impl Edits {
    /// The port an https redirect names: the one TLS listener's when it is not 443.
    pub fn https_port(&self) -> Option<u16> {
        self.https_port
    }

    /// Whether a request that arrived at `local` is to be sent to https.
    pub fn redirects_to_https(&self, local: Option<SocketAddr>) -> bool {
        let Some(local) = local else {
            return false;
        };
        self.https_listeners.iter().any(|l| {
            l.port() == local.port()
                && (l.ip() == local.ip().to_canonical()
                    || l.ip() == local.ip()
                    || l.ip().is_unspecified())
        })
    }
}

/// What the request path decided for one request: a redirect to answer, a path to send.
#[derive(Debug, Default)]
pub struct Planned {
    /// Status and `Location` of a redirect to answer with.
    pub redirect: Option<(u16, HeaderValue)>,
    /// The path and query to send upstream in place of the client's.
    pub path: Option<Box<[u8]>>,
}
