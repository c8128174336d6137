//! Key-set parsing: a JWKS document from an issuer or a file, against every algorithm.
//!
//! Whatever the document, `KeySet::from_jwks` gives a set or an error; a set holds at most
//! `MAX_KEYS` keys, each usable with at least one allowed algorithm, findable by its `kid`,
//! and its prepared verifiers refuse a signature the fuzzer wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::auth::issuer::{ASYMMETRIC, HMAC};
use portcullis::auth::keys::{KeySet, MAX_CANDIDATES, MAX_KEYS};

fuzz_target!(|data: &[u8]| {
    let Some((&which, doc)) = data.split_first() else {
        return;
    };
    portcullis::auth::crypto::install();
    // Mostly every asymmetric algorithm; sometimes a narrower list, sometimes HMAC.
    let allowed: Vec<_> = match which % 4 {
        0 | 1 => ASYMMETRIC.to_vec(),
        2 => ASYMMETRIC
            .iter()
            .copied()
            .skip(usize::from(which >> 4) % 9)
            .take(2)
            .collect(),
        _ => HMAC.to_vec(),
    };
    let Ok((set, _skipped)) = KeySet::from_jwks(doc, &allowed) else {
        return;
    };
    assert!(!set.is_empty() && set.len() <= MAX_KEYS);
    for &alg in &allowed {
        let keys = set.candidates(None, alg).count();
        assert!(keys <= MAX_CANDIDATES, "{keys} candidates for {alg:?}");
        for (key, _) in set.candidates(None, alg) {
            assert!(key.allows(alg));
        }
    }
    let json: serde_json::Value = serde_json::from_slice(doc).expect("a parsed set is JSON");
    for jwk in json["keys"]
        .as_array()
        .expect("a parsed set has keys")
        .iter()
    {
        let Some(kid) = jwk.get("kid").and_then(|k| k.as_str()) else {
            continue;
        };
        if !set.has_kid(kid) {
            continue;
        }
        for &alg in &ASYMMETRIC {
            for (key, verifier) in set.candidates(Some(kid), alg) {
                assert_eq!(key.kid.as_deref(), Some(kid));
                assert!(allowed.contains(&alg), "{alg:?} prepared but not allowed");
                assert!(
                    !verifier.verify(b"header.claims", doc),
                    "a forged signature verified"
                );
            }
        }
    }
});
