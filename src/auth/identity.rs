//! What a verified token says, kept small: only the claims the config uses.
//!
//! The config's routes name a fixed set of claim paths (forwarded, required, limited on);
//! that set is the [`Projection`], and an [`Identity`] holds the values of just those paths,
//! by slot. This keeps cached tokens small (millions fit in bounded memory) and makes the
//! per-request checks index lookups instead of JSON walks.

use http::HeaderValue;
use serde_json::{Map, Value};

/// The claim paths the config uses; a path's slot is its position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    paths: Vec<String>,
}

impl Projection {
    /// Add `path` if new and give its slot.
    pub fn slot_for(&mut self, path: &str) -> usize {
        match self.paths.iter().position(|p| p == path) {
            Some(i) => i,
            None => {
                self.paths.push(path.to_string());
                self.paths.len() - 1
            }
        }
    }

    /// The slot of `path`, if the config uses it.
    pub fn slot(&self, path: &str) -> Option<usize> {
        self.paths.iter().position(|p| p == path)
    }

    /// How many paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether no path is used.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// One claim's value.
#[derive(Debug, Clone)]
pub struct ClaimValue {
    /// Its values as text: one for a scalar, one per element for an array.
    pub items: Box<[Box<str>]>,
    /// The value as a header: the string, the JSON text of other scalars and objects, array
    /// elements joined by `,`. `None` when it cannot be a header value.
    pub header: Option<HeaderValue>,
}

impl ClaimValue {
    fn from_json(value: &Value) -> Option<ClaimValue> {
        fn text(v: &Value) -> String {
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        }
        let items: Vec<Box<str>> = match value {
            Value::Null => return None,
            Value::Array(list) => list.iter().map(|v| text(v).into_boxed_str()).collect(),
            other => vec![text(other).into_boxed_str()],
        };
        let joined = items.join(",");
        Some(ClaimValue {
            header: HeaderValue::from_str(&joined).ok(),
            items: items.into_boxed_slice(),
        })
    }

    /// Whether any of its values is one of `accepted`.
    pub fn matches_any(&self, accepted: &[Box<str>]) -> bool {
        self.items.iter().any(|v| accepted.contains(v))
    }
}

/// A verified token, reduced to what the config needs.
#[derive(Debug)]
pub struct Identity {
    /// The issuer instance that verified it.
    pub issuer_id: u64,
    /// The key that verified it.
    pub key_fingerprint: u64,
    /// `exp`, in seconds since the epoch.
    pub exp: u64,
    /// From `scope` (space separated) or `scp` (array or string).
    pub scopes: Box<[Box<str>]>,
    /// Values by projection slot.
    pub claims: Box<[Option<ClaimValue>]>,
}

/// Find `path` in `claims`: a top-level key of that exact name first, then a walk through
/// nested objects by `.`.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut at = claims.get(parts.next()?)?;
    for part in parts {
        at = at.as_object()?.get(part)?;
    }
    Some(at)
}

impl Identity {
    /// Reduce verified `claims` to `projection`.
    pub fn project(
        claims: &Map<String, Value>,
        projection: &Projection,
        issuer_id: u64,
        key_fingerprint: u64,
        exp: u64,
    ) -> Identity {
        let scopes: Vec<Box<str>> = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => {
                s.split_whitespace().map(Into::into).collect()
            }
            (_, Some(Value::Array(list))) => list
                .iter()
                .filter_map(|v| v.as_str())
                .map(Into::into)
                .collect(),
            _ => Vec::new(),
        };
        let values = projection
            .paths
            .iter()
            .map(|p| lookup(claims, p).and_then(ClaimValue::from_json))
            .collect();
        Identity {
            issuer_id,
            key_fingerprint,
            exp,
            scopes: scopes.into_boxed_slice(),
            claims: values,
        }
    }

    /// The value in `slot`.
    pub fn claim(&self, slot: usize) -> Option<&ClaimValue> {
        self.claims.get(slot).and_then(Option::as_ref)
    }

    /// Whether the token holds every scope in `required`.
    pub fn has_scopes(&self, required: &[Box<str>]) -> bool {
        required.iter().all(|r| self.scopes.contains(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projects_dotted_paths_scopes_and_arrays() {
        let claims = json!({
            "sub": "alice", "scope": "orders:read orders:write",
            "org": {"tier": "gold"}, "groups": ["a", "b"], "n": 7, "odd": "bad\nvalue"
        });
        let claims = claims.as_object().unwrap();
        let mut p = Projection::default();
        let sub = p.slot_for("sub");
        let tier = p.slot_for("org.tier");
        let groups = p.slot_for("groups");
        let n = p.slot_for("n");
        let odd = p.slot_for("odd");
        let missing = p.slot_for("nope");
        let id = Identity::project(claims, &p, 1, 2, 3);
        assert_eq!(id.claim(sub).unwrap().header.as_ref().unwrap(), "alice");
        assert!(id
            .claim(tier)
            .unwrap()
            .matches_any(&["silver".into(), "gold".into()]));
        assert_eq!(id.claim(groups).unwrap().header.as_ref().unwrap(), "a,b");
        assert!(id.claim(groups).unwrap().matches_any(&["b".into()]));
        assert_eq!(id.claim(n).unwrap().header.as_ref().unwrap(), "7");
        assert!(id.claim(odd).unwrap().header.is_none());
        assert!(id.claim(missing).is_none());
        assert!(id.has_scopes(&["orders:read".into()]));
        assert!(!id.has_scopes(&["orders:admin".into()]));
    }

    #[test]
    fn scp_array() {
        let claims = json!({"scp": ["a", "b"]});
        let id = Identity::project(claims.as_object().unwrap(), &Projection::default(), 1, 2, 3);
        assert!(id.has_scopes(&["a".into(), "b".into()]));
    }
}
