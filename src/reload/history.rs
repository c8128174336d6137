//! The last reloads: when, why, what came of them. The reloader records one entry for the
//! config loaded at start and one for each reload tried, once it committed or refused it; the
//! status page shows them. Bounded: the oldest entry goes when a new one would pass
//! [`KEPT`].
//!
//! An entry holds the config's own error text (paths, lines, the values the file wrote),
//! never a secret: secrets live in the environment, and no config error names their value.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::ConfigError;

/// How many reloads are kept.
pub const KEPT: usize = 10;

/// The longest error summary kept, in bytes: one line of the page, not the whole report.
pub const MAX_ERROR: usize = 300;

/// One reload (or the load at start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadRecord {
    /// When it finished, in Unix seconds.
    pub at: u64,
    /// What asked for it: `start`, `SIGHUP`, `file change`, `admin`.
    pub trigger: String,
    /// Whether the new config serves now.
    pub ok: bool,
    /// The generation serving after it: the new one, or for a refused reload the one that
    /// kept serving.
    pub generation: u64,
    /// Why it was refused: the first problem, and how many there were.
    pub error: Option<String>,
}

/// The last [`KEPT`] reloads, oldest first.
#[derive(Debug, Default)]
pub struct History {
    entries: Mutex<VecDeque<ReloadRecord>>,
}

impl History {
    /// Record a reload that finished now.
    pub fn push(&self, trigger: &str, generation: u64, error: Option<&ConfigError>) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = ReloadRecord {
            at,
            trigger: trigger.to_string(),
            ok: error.is_none(),
            generation,
            error: error.map(summary),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back(record);
    }

    /// The entries now, oldest first.
    pub fn recent(&self) -> Vec<ReloadRecord> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().cloned().collect()
    }
}

/// One line for a refused reload: its first problem, and how many more there were.
pub fn summary(error: &ConfigError) -> String {
    let issues = error.issues();
    let text = match issues {
        [] => error.to_string(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    };
    let line = text.lines().next().unwrap_or_default();
    if line.len() <= MAX_ERROR {
        return line.to_string();
    }
    let mut end = MAX_ERROR;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_ten_oldest_first() {
        let history = History::default();
        for n in 1..=13 {
            history.push("SIGHUP", n, None);
        }
        let recent = history.recent();
        assert_eq!(recent.len(), KEPT);
        let numbers: Vec<u64> = recent.iter().map(|r| r.generation).collect();
        assert_eq!(numbers, (4..=13).collect::<Vec<_>>());
        assert!(recent.iter().all(|r| r.ok && r.error.is_none()));
    }

    #[test]
    fn a_refusal_keeps_its_first_problem_and_their_count() {
        let error = crate::generation::Generation::from_yaml(
            "upstreams:\n  - name: a\n    targets: [\"nowhere\"]\nroutes:\n  - name: r\n    upstream: b\n",
        )
        .unwrap_err();
        let history = History::default();
        history.push("admin", 4, Some(&error));
        let [record] = &history.recent()[..] else {
            panic!("one entry")
        };
        assert!(!record.ok);
        assert_eq!(record.generation, 4);
        let text = record.error.as_deref().unwrap();
        assert!(text.contains("upstreams[0].targets[0]"), "{text}");
        assert!(text.ends_with("(and 1 more)"), "{text}");

        let long = ConfigError::Invalid(vec![crate::config::ConfigIssue {
            path: "routes[0].name".into(),
            line: None,
            message: "é".repeat(400),
        }]);
        let text = summary(&long);
        assert!(text.len() <= MAX_ERROR + '…'.len_utf8(), "{}", text.len());
        assert!(text.ends_with('…'));
    }
}
