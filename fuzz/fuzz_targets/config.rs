//! The config loader: any bytes give a config or errors, never a panic.
//!
//! The text goes through `Config::from_yaml` (the YAML parse, the serde structs, the
//! per-section error collection) and, when it parses, through `Generation::build`, which
//! compiles it (durations, addresses, issuers, policies, route tables, limits). A config
//! naming files (TLS, JWKS, access log) is not compiled: the fuzzer must not read or
//! create files anywhere on the machine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::{AccessLogOutput, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(parsed) => {
            let c = &parsed.config;
            let names_files = c.listeners.iter().any(|l| l.tls.is_some())
                || matches!(c.access_log.output, AccessLogOutput::File(_))
                || c.issuers.iter().any(|i| i.jwks_file.is_some());
            if !names_files {
                if let Err(e) = portcullis::generation::Generation::build(&parsed, None, 1) {
                    assert!(!e.issues().is_empty() || !e.to_string().is_empty());
                }
            }
        }
        Err(e) => {
            // Errors name something: a refused config always says why.
            assert!(!e.to_string().is_empty());
        }
    }
});
