//! `access_log:`, either the plain string (`stdout`, `stderr`, `off` or a file path) or the
//! object `{ path, claims }` that also names the claims each line records.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Where access log lines go, and what they hold beyond the fixed fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessLogConfig {
    /// Where the lines go. Read once at start: a reload that changes it warns.
    pub output: AccessLogOutput,
    /// Claims of the verified identity each line records, by name; none by default (opt-in).
    /// Reloads live.
    pub claims: Vec<String>,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogOutput {
    /// One JSON line per request on standard output.
    #[default]
    Stdout,
    /// On standard error.
    Stderr,
    /// Appended to a file (reopened on SIGUSR1).
    File(PathBuf),
    /// No access log.
    Off,
}

impl AccessLogOutput {
    fn parse<E: de::Error>(s: &str) -> Result<Self, E> {
        Ok(match s {
            "stdout" => Self::Stdout,
            "stderr" => Self::Stderr,
            "off" => Self::Off,
            "" => {
                return Err(E::custom(
                    "expected `stdout`, `stderr`, `off` or a file path",
                ))
            }
            path => Self::File(PathBuf::from(path)),
        })
    }
}

/// The object form, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    claims: Vec<String>,
}

impl<'de> Deserialize<'de> for AccessLogConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AccessLogConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`stdout`, `stderr`, `off`, a file path, or `{ path, claims: [...] }`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AccessLogConfig, E> {
                Ok(AccessLogConfig {
                    output: AccessLogOutput::parse(s)?,
                    claims: Vec::new(),
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<AccessLogConfig, A::Error> {
                let fields = Fields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let output = match fields.path {
                    Some(path) => AccessLogOutput::parse(&path)?,
                    None => AccessLogOutput::default(),
                };
                for (i, claim) in fields.claims.iter().enumerate() {
                    if claim.is_empty() {
                        return Err(de::Error::custom(format!(
                            "claims[{i}]: a claim name must not be empty"
                        )));
                    }
                    if fields.claims[..i].contains(claim) {
                        return Err(de::Error::custom(format!(
                            "claims[{i}]: claim `{claim}` is listed twice"
                        )));
                    }
                }
                Ok(AccessLogConfig {
                    output,
                    claims: fields.claims,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AccessLogConfig, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn string_and_object_forms() {
        assert_eq!(parse("stdout").unwrap(), AccessLogConfig::default());
        assert_eq!(parse("off").unwrap().output, AccessLogOutput::Off);
        assert_eq!(
            parse("/var/log/a.log").unwrap().output,
            AccessLogOutput::File("/var/log/a.log".into())
        );
        let c = parse("{ path: a.log, claims: [sub, tenant] }").unwrap();
        assert_eq!(c.output, AccessLogOutput::File("a.log".into()));
        assert_eq!(c.claims, ["sub", "tenant"]);
        // No path in the object form: standard output, as the string form's default.
        assert_eq!(
            parse("{ claims: [sub] }").unwrap().output,
            AccessLogOutput::Stdout
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = parse("{ path: a.log, claim: [sub] }").unwrap_err();
        assert!(e.contains("unknown field `claim`"), "{e}");
        let e = parse("{ path: a.log, claims: [sub, sub] }").unwrap_err();
        assert!(e.contains("`sub` is listed twice"), "{e}");
        let e = parse("{ claims: [\"\"] }").unwrap_err();
        assert!(e.contains("must not be empty"), "{e}");
        let e = parse("\"\"").unwrap_err();
        assert!(e.contains("or a file path"), "{e}");
        let e = parse("[a]").unwrap_err();
        assert!(e.contains("{ path, claims"), "{e}");
    }
}
