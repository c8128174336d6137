//! The YAML of upstream targets (`upstreams[].targets`) and of the DNS resolver
//! (`server.dns`). Parsing only: nothing here resolves a name (see `crate::upstream::dns`).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The largest `weight` a target may have. Pingora's selectors expand weights: round robin
/// and random keep one slot per unit of weight, consistent hashing 160 ring points per unit,
/// and a host name's weight applies to each of its addresses; 100 keeps a large pool small
/// while still giving a 1% canary.
pub const MAX_WEIGHT: u32 = 100;

/// One `upstreams[].targets` entry: `"host:port"` (or `"ip:port"`), or
/// `{ address: "host:port", weight: N }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// `ip:port`, or `host:port` for a name resolved in the background.
    pub address: String,
    /// Relative share of the traffic, 1 to [`MAX_WEIGHT`]; default 1.
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFields {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TargetConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`host:port` or `{ address: host:port, weight: N }`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TargetConfig, E> {
                Ok(TargetConfig {
                    address: s.to_string(),
                    weight: default_weight(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TargetConfig, A::Error> {
                let t = TargetFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TargetConfig {
                    address: t.address,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `server.dns`: where host-name targets are looked up.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `ip:port` of each name server to ask, in order; empty (the default): the system's
    /// (`/etc/resolv.conf`, with its search domains and `ndots`).
    #[serde(default)]
    pub nameservers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_a_string_or_a_map() {
        let t: Vec<TargetConfig> = serde_yaml::from_str(
            "[\"a:1\", { address: \"b:2\" }, { address: \"c:3\", weight: 3 }]",
        )
        .unwrap();
        assert_eq!(
            t.iter()
                .map(|t| (t.address.as_str(), t.weight))
                .collect::<Vec<_>>(),
            [("a:1", 1), ("b:2", 1), ("c:3", 3)]
        );
        let err = serde_yaml::from_str::<Vec<TargetConfig>>("[{ address: a, wieght: 2 }]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `wieght`"), "{err}");
    }
}
