//! Tells the crate which commit it is built from, for `portcullis_build_info{commit}`:
//! `PORTCULLIS_COMMIT` when set (builds without `.git`, such as the Docker build's context),
//! else `git rev-parse` of the checkout, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_COMMIT");
    let commit = match std::env::var("PORTCULLIS_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Build again when HEAD moves: HEAD itself, the branch it points at, packed refs.
            for path in [
                Some("HEAD".to_string()),
                git(&["symbolic-ref", "-q", "HEAD"]),
            ]
            .into_iter()
            .flatten()
            .chain(["packed-refs".to_string()])
            {
                if let Some(p) = git(&["rev-parse", "--git-path", &path]) {
                    if std::path::Path::new(&p).exists() {
                        println!("cargo:rerun-if-changed={p}");
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    // Only what a label may hold, and short.
    let commit: String = commit
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    let commit = if commit.is_empty() {
        "unknown".into()
    } else {
        commit
    };
    println!("cargo:rustc-env=PORTCULLIS_COMMIT={commit}");
}
