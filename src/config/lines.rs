//! Maps a field path such as `routes[1].match.host` to the line it stands on in the YAML text.
//!
//! serde_yaml forgets positions once a value is parsed, so errors found after parsing (a route
//! naming an upstream that does not exist, a bad address) would otherwise have no line. This
//! walks the YAML event stream once and remembers where every key and list item starts. It
//! never decides whether the config is valid.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of every path in one YAML document.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Index `text`. A document that does not parse gives an empty index: serde_yaml reports the
    /// syntax error with its own position.
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self {
            lines: builder.lines,
        }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { next: usize },
}

#[derive(Default)]
struct Builder {
    lines: HashMap<String, usize>,
    stack: Vec<(Frame, String)>,
}

impl Builder {
    /// The path of the value about to start, advancing the parent's position.
    fn enter_value(&mut self, line: usize) -> Option<String> {
        let (frame, path) = self.stack.last_mut()?;
        let child = match frame {
            Frame::Map { key } => {
                let key = key.take()?;
                join(path, &key)
            }
            Frame::Seq { next } => {
                let child = format!("{path}[{next}]");
                *next += 1;
                child
            }
        };
        self.lines.entry(child.clone()).or_insert(line);
        Some(child)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                let expecting_key =
                    matches!(self.stack.last(), Some((Frame::Map { key: None }, _)));
                if expecting_key {
                    if let Some((Frame::Map { key }, path)) = self.stack.last_mut() {
                        let full = join(path, &value);
                        self.lines.entry(full).or_insert(line);
                        *key = Some(value);
                    }
                } else {
                    self.enter_value(line);
                }
            }
            Event::Alias(_) => {
                self.enter_value(line);
            }
            Event::MappingStart(..) => {
                let path = if self.stack.is_empty() {
                    Some(String::new())
                } else {
                    self.enter_value(line)
                };
                self.stack
                    .push((Frame::Map { key: None }, path.unwrap_or_default()));
            }
            Event::SequenceStart(..) => {
                let path = if self.stack.is_empty() {
                    Some(String::new())
                } else {
                    self.enter_value(line)
                };
                self.stack
                    .push((Frame::Seq { next: 0 }, path.unwrap_or_default()));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_items_and_flow_mappings() {
        let text = "listeners:\n  - address: \"0.0.0.0:8080\"\nroutes:\n  - name: a\n    match: { host: x, path_prefix: /a }\n  - name: b\n    upstream: u\n";
        let index = LineIndex::new(text);
        assert_eq!(index.line_of("listeners[0].address"), Some(2));
        assert_eq!(index.line_of("routes[0].match.path_prefix"), Some(5));
        assert_eq!(index.line_of("routes[1]"), Some(6));
        assert_eq!(index.line_of("routes[1].upstream"), Some(7));
        // A path that does not exist falls back to its nearest ancestor.
        assert_eq!(index.line_of("routes[1].auth.issuers"), Some(6));
    }
}
