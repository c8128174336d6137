//! The config loader: any bytes give a config or errors, never a panic.
//!
//! The text goes through `Config::parse_shaped` (the YAML parse, the serde structs, the
//! per-section and per-item error collection, the config of the well-formed parts) and that
//! config through `Generation::build`, which compiles it (durations, addresses, issuers,
//! policies, route tables, limits), then `Shaped::finish`, which merges both errors as
//! `portcullis check` and a reload do. A config
//! naming files (TLS, JWKS, access log) is not compiled: the fuzzer must not read or
//! create files anywhere on the machine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::{AccessLogOutput, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse_shaped(text) {
        Ok(shaped) => {
            let c = &shaped.parsed.config;
            let names_files = c.listeners.iter().any(|l| l.tls.is_some())
                || matches!(c.access_log.output, AccessLogOutput::File(_))
                || c.issuers.iter().any(|i| i.jwks_file.is_some());
            if !names_files {
                let clean = shaped.is_clean();
                let built = portcullis::generation::Generation::build(&shaped.parsed, None, 1);
                if let Err(e) = shaped.finish(built) {
                    assert!(!e.issues().is_empty() || !e.to_string().is_empty());
                } else {
                    assert!(clean, "a config with shape errors compiled");
                }
            }
        }
        Err(e) => {
            // Errors name something: a refused config always says why.
            assert!(!e.to_string().is_empty());
        }
    }
});
