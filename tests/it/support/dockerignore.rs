//! Docker's `.dockerignore` rules, as BuildKit applies them to a build context (moby's
//! `patternmatcher` and `dockerignore` packages): one pattern a line, `#` comments, each
//! pattern cleaned (`./a/` is `a`, a leading `/` dropped), `*` and `?` within one path
//! segment, `**` across any number of them, `[...]` classes, `\` escapes, `!` for an
//! exception. Every pattern is tried in order and the last that matches a path, or one of
//! its parent folders, decides. A folder that is left out is not walked unless an exception
//! pattern could name something inside it, as Docker does.

use std::path::{Path, PathBuf};

use regex::Regex;

struct Pattern {
    text: String,
    regex: Regex,
    exception: bool,
}

/// The patterns of one ignore file, in order.
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    /// Read the patterns of an ignore file's text.
    pub fn parse(text: &str) -> DockerIgnore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let mut text = clean(pattern);
            if text.len() > 1 {
                text = text.trim_start_matches('/').to_string();
            }
            let regex = Regex::new(&to_regex(&text)).unwrap();
            patterns.push(Pattern {
                text,
                regex,
                exception,
            });
        }
        DockerIgnore { patterns }
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rfind('/') {
            Some(cut) => path[..cut].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for p in &self.patterns {
            // An exclusion cannot change a path already left out, nor an exception one
            // that is in.
            if p.exception != matched {
                continue;
            }
            let mut hit = p.regex.is_match(path);
            for i in 0..parents.len() {
                if hit {
                    break;
                }
                hit = p.regex.is_match(&parents[..=i].join("/"));
            }
            if hit {
                matched = !p.exception;
            }
        }
        matched
    }

    /// The files of the context of `root`: every file not left out, relative to `root`.
    pub fn context_files(&self, root: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        self.walk(root, Path::new(""), &mut files);
        files.sort();
        files
    }

    fn walk(&self, root: &Path, rel: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(root.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let name = rel.to_str().unwrap().to_string();
            let kind = entry.file_type().unwrap();
            let excluded = self.excludes(&name);
            if kind.is_dir() {
                if excluded && !self.may_take_back_inside(&name) {
                    continue;
                }
                self.walk(root, &rel, files);
            } else if !excluded {
                files.push(rel);
            }
        }
    }

    /// Docker walks into a left-out folder only when an exception pattern starts with it.
    fn may_take_back_inside(&self, dir: &str) -> bool {
        let dir = format!("{dir}/");
        self.patterns
            .iter()
            .any(|p| p.exception && format!("{}/", p.text).starts_with(&dir))
    }
}

/// Go's `filepath.Clean` on a `/`-separated path.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// A pattern as the regular expression `patternmatcher` compiles it to.
fn to_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                // `**/` is `**`.
                while chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    out.push_str(".*");
                } else {
                    out.push_str("(.*/)?");
                }
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '\\' => {
                if let Some(next) = chars.get(i) {
                    out.push_str(&regex::escape(&next.to_string()));
                    i += 1;
                }
            }
            '.' | '$' | '+' | '(' | ')' | '|' | '{' | '}' | '^' => {
                out.push('\\');
                out.push(ch);
            }
            other => out.push(other),
        }
    }
    out.push('$');
    out
}

#[test]
fn docker_s_rules() {
    let ignore = DockerIgnore::parse(
        "# comment\n*\n!src/\n!./docs/**/*.md\nsrc/**/secret*\n!src/keep/secret.txt\n/target\n",
    );
    assert!(ignore.excludes("Cargo.toml"));
    assert!(!ignore.excludes("src"));
    assert!(!ignore.excludes("src/main.rs"));
    assert!(!ignore.excludes("src/a/b/c.rs"));
    // Later patterns win: left out again, then one taken back.
    assert!(ignore.excludes("src/a/secret.key"));
    assert!(ignore.excludes("src/secret.key"));
    assert!(!ignore.excludes("src/keep/secret.txt"));
    // `**` spans any number of folders, including none; `*` only one segment.
    assert!(!ignore.excludes("docs/a.md"));
    assert!(!ignore.excludes("docs/x/y/a.md"));
    assert!(ignore.excludes("docs/x/y/a.txt"));
    // A parent folder's match counts: `target` leaves out everything under it.
    let ignore = DockerIgnore::parse("target\nvendor/*/build\n");
    assert!(ignore.excludes("target/debug/portcullis"));
    assert!(ignore.excludes("vendor/ring/build/x.o"));
    assert!(!ignore.excludes("vendor/ring/src/lib.rs"));
    assert!(!ignore.excludes("vendor/build"));
    assert!(!ignore.excludes("targets.rs"));
    assert_eq!(clean("./a//b/../c/"), "a/c");
}
