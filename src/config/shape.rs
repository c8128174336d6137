//! Checking a config's shape one section and one list item at a time, so that one mistake
//! does not hide another, and keeping every part whose shape is valid so that its meaning can
//! be checked in the same run.
//!
//! Nothing here knows the list of sections: a section is checked by deserializing a whole
//! [`Config`] from a mapping that holds that section alone (every section has a default), and
//! a section is a list when an empty list deserializes. A section added to [`Config`] is
//! covered the day it is added. This module never decides what a config means; the compile
//! steps do, and [`Shaped::finish`] merges their errors with the shape errors.

use std::collections::{HashMap, HashSet};

use serde_yaml::{Mapping, Value};

use super::{strip_location, Config, ConfigError, ConfigIssue, LineIndex, Parsed};

/// Parts whose meaning depends on other sections (names they refer to), by path prefix: when
/// one of those is left out whole, the dependent part's meaning errors would be noise.
const DEPENDS_ON: &[(&str, &[&str])] = &[
    ("routes", &["upstreams", "issuers", "sessions", "cluster"]),
    ("sessions", &["issuers"]),
    ("readiness.require_pools", &["upstreams"]),
    ("readiness.require_issuers", &["issuers"]),
];

/// A config with its shape errors, made of every section and list item whose shape is valid.
pub struct Shaped {
    /// The well-formed part of the file, to compile.
    pub parsed: Parsed,
    /// Shape errors: the file does not fit the config's types there.
    pub issues: Vec<ConfigIssue>,
    /// Per list section, the index in the file of each item kept.
    kept: HashMap<String, Vec<usize>>,
    /// The `name:` of each list item left out, which other sections may refer to.
    dropped_names: HashSet<String>,
    /// Sections left out whole.
    dropped_sections: HashSet<String>,
    /// The whole file, to read the value an error's path points at.
    value: Value,
}

impl Config {
    /// Parse `text` section by section and item by item: every shape error, and the config
    /// made of the rest.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] only when the text is not YAML or not a mapping of sections.
    pub fn parse_shaped(text: &str) -> Result<Shaped, ConfigError> {
        let index = LineIndex::new(text);
        let value: Value = serde_yaml::from_str(text).map_err(|e| {
            ConfigError::Invalid(vec![ConfigIssue {
                path: String::new(),
                line: e.location().map(|l| l.line()),
                message: strip_location(&e.to_string()),
            }])
        })?;
        let value = match value {
            Value::Null => Value::Mapping(Mapping::new()),
            v => v,
        };
        let empty =
            serde_yaml::from_value::<Config>(Value::Mapping(Mapping::new())).map_err(|e| {
                ConfigError::Invalid(vec![ConfigIssue {
                    path: String::new(),
                    line: None,
                    message: strip_location(&e.to_string()),
                }])
            })?;
        let mut shaped = Shaped {
            parsed: Parsed {
                config: empty,
                index,
            },
            issues: Vec::new(),
            kept: HashMap::new(),
            dropped_names: HashSet::new(),
            dropped_sections: HashSet::new(),
            value: Value::Null,
        };
        if let Ok(config) = serde_yaml::from_value::<Config>(value.clone()) {
            shaped.parsed.config = config;
            shaped.value = value;
            return Ok(shaped);
        }
        let Some(map) = value.as_mapping() else {
            return Err(ConfigError::Invalid(vec![ConfigIssue {
                path: String::new(),
                line: Some(1),
                message: "the config must be a mapping of sections".into(),
            }]));
        };
        let mut repaired = Mapping::new();
        for (key, section) in map {
            let Some(name) = key.as_str() else {
                shaped.push("", "section names must be strings");
                continue;
            };
            match section.as_sequence() {
                Some(items) if is_list_section(name) => {
                    let mut kept_items = Vec::new();
                    let mut kept_at = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let alone = Value::Sequence(vec![item.clone()]);
                        match shape_error(name, &alone) {
                            None => {
                                kept_items.push(item.clone());
                                kept_at.push(i);
                            }
                            Some((path, message)) => {
                                let path = renumber(&path, name, 0, i);
                                shaped.push(path, message);
                                if let Some(n) = item.get("name").and_then(Value::as_str) {
                                    shaped.dropped_names.insert(n.to_string());
                                }
                            }
                        }
                    }
                    repaired.insert(key.clone(), Value::Sequence(kept_items));
                    shaped.kept.insert(name.to_string(), kept_at);
                }
                _ => match shape_error(name, section) {
                    None => {
                        repaired.insert(key.clone(), section.clone());
                    }
                    Some((path, message)) => {
                        shaped.push(path, message);
                        shaped.dropped_sections.insert(name.to_string());
                    }
                },
            }
        }
        match serde_yaml::from_value::<Config>(Value::Mapping(repaired)) {
            Ok(config) => shaped.parsed.config = config,
            // Each part fits alone but not together: report it rather than compile nothing
            // silently.
            Err(e) => shaped.push("", strip_location(&e.to_string())),
        }
        shaped.value = value;
        Ok(shaped)
    }
}

impl Shaped {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        self.issues.push(ConfigIssue {
            line: self.parsed.index.line_of(&path),
            path,
            message: message.into(),
        });
    }

    /// Whether the whole file had a valid shape.
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }

    /// Merge the result of compiling [`Shaped::parsed`] with the shape errors: `built` as it
    /// is when the shape was clean; otherwise every shape error and every meaning error of
    /// the parts kept, with paths and lines of the file (items left out shift the indices),
    /// less those that only follow from a part left out (a route naming an upstream whose
    /// item was malformed).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every issue, in file order.
    pub fn finish<T>(self, built: Result<T, ConfigError>) -> Result<T, ConfigError> {
        if self.is_clean() {
            return built;
        }
        let meaning = match built {
            Ok(_) => Vec::new(),
            Err(e) => e.issues().to_vec(),
        };
        let mut issues = self.issues.clone();
        for issue in meaning {
            let path = self.path_in_file(&issue.path);
            if self.follows_from_a_dropped_part(&path) {
                continue;
            }
            issues.push(ConfigIssue {
                line: self.parsed.index.line_of(&path).or(issue.line),
                path,
                message: issue.message,
            });
        }
        issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
        Err(ConfigError::Invalid(issues))
    }

    /// `routes[1].x` of the compiled config is `routes[3].x` of the file when two items
    /// before it were left out.
    fn path_in_file(&self, path: &str) -> String {
        for (section, kept) in &self.kept {
            let Some(rest) = path.strip_prefix(section.as_str()) else {
                continue;
            };
            let Some(rest) = rest.strip_prefix('[') else {
                continue;
            };
            let Some((n, tail)) = rest.split_once(']') else {
                continue;
            };
            if let Some(at) = n.parse::<usize>().ok().and_then(|n| kept.get(n)) {
                return format!("{section}[{at}]{tail}");
            }
        }
        path.to_string()
    }

    fn follows_from_a_dropped_part(&self, path: &str) -> bool {
        let within = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        let depends_on_a_dropped_section = DEPENDS_ON.iter().any(|(prefix, sections)| {
            within(prefix) && sections.iter().any(|s| self.dropped_sections.contains(*s))
        });
        if depends_on_a_dropped_section {
            return true;
        }
        let names = |v: &Value| match v {
            Value::String(s) => vec![s.clone()],
            Value::Sequence(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        value_at(&self.value, path)
            .map(names)
            .is_some_and(|n| n.iter().any(|n| self.dropped_names.contains(n)))
    }
}

/// Whether `section` holds a list: an empty list deserializes there.
fn is_list_section(section: &str) -> bool {
    shape_error(section, &Value::Sequence(Vec::new())).is_none()
}

/// The first shape error of `section` set to `value`, with its path and message.
fn shape_error(section: &str, value: &Value) -> Option<(String, String)> {
    let mut alone = Mapping::new();
    alone.insert(Value::String(section.to_string()), value.clone());
    let e = serde_path_to_error::deserialize::<_, Config>(Value::Mapping(alone)).err()?;
    let path = e.path().to_string();
    let path = if path.is_empty() || path == "." {
        section.to_string()
    } else {
        path
    };
    Some((path, strip_location(&e.into_inner().to_string())))
}

/// `section[from]...` as `section[to]...`.
fn renumber(path: &str, section: &str, from: usize, to: usize) -> String {
    let prefix = format!("{section}[{from}]");
    match path.strip_prefix(&prefix) {
        Some(rest) => format!("{section}[{to}]{rest}"),
        None => path.to_string(),
    }
}

/// The value at a path such as `routes[2].auth.issuers[0]`.
fn value_at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut here = value;
    for part in path.split('.') {
        let (key, indices) = match part.find('[') {
            Some(cut) => (&part[..cut], &part[cut..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            here = here.get(key)?;
        }
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            here = here.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_items_are_found_without_a_list() {
        assert!(is_list_section("routes"));
        assert!(is_list_section("upstreams"));
        assert!(!is_list_section("server"));
        assert!(!is_list_section("access_log"));
        assert!(!is_list_section("nonsense"));
    }

    #[test]
    fn value_at_walks_keys_and_indices() {
        let v: Value = serde_yaml::from_str("routes:\n  - auth: { issuers: [a, b] }\n").unwrap();
        assert_eq!(
            value_at(&v, "routes[0].auth.issuers[1]").and_then(Value::as_str),
            Some("b")
        );
        assert!(value_at(&v, "routes[1]").is_none());
    }

    #[test]
    fn items_left_out_keep_the_file_s_indices() {
        let text = "\
upstreams:
  - name: broken
    targets: [\"127.0.0.1:1\"]
    balance: fastest
  - name: good
    targets: [\"127.0.0.1:2\"]
routes:
  - name: bad
    upstream: broken
    retries: 3
  - name: a
    upstream: broken
  - name: b
    upstream: nowhere
";
        let shaped = Config::parse_shaped(text).unwrap();
        assert_eq!(shaped.parsed.config.upstreams.len(), 1);
        assert_eq!(shaped.parsed.config.routes.len(), 2);
        assert_eq!(
            shaped.path_in_file("routes[1].upstream"),
            "routes[2].upstream"
        );
        // `routes[1]` names the upstream whose item was malformed: not an error of its own.
        assert!(shaped.follows_from_a_dropped_part("routes[1].upstream"));
        assert!(!shaped.follows_from_a_dropped_part("routes[2].upstream"));
    }
}
