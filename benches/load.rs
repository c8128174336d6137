//! The load benchmark: Portcullis against a bare Pingora proxy (`examples/bare.rs`) and
//! HAProxy, each driven by wrk through a fast upstream (`examples/upstream.rs`).
//!
//! `cargo bench --bench load` (what `make bench` runs, after building the release binary and
//! the examples: this bench never runs cargo) writes `benches/results/latest.md` and
//! `latest.svg`. Under `cargo test --all-targets` it is a smoke run instead: every case once
//! for about a second against every system, the report in a temp dir, and a failure when a
//! system errors (non-2xx answers, a crash, no requests) or a tool is missing under `CI`.
//!
//! The proxy under test runs on CPU 0, wrk and the upstream on CPU 1 (`taskset`), one worker
//! thread each. The figure that is fair on a shared two-core machine is the proxy's own CPU time
//! per request (`/proc/<pid>/stat` utime + stime, before and after each run); requests/s and
//! latency are shown beside it. Each round runs every 64-connection case against every system
//! (A B C, case after case), the 5,000-connection case's rounds come after them all, and every
//! figure is the median of the rounds.
//!
//! Knobs (environment): `LOAD_SECONDS` (8), `LOAD_ROUNDS` (5), `LOAD_WARMUP` (2 s),
//! `LOAD_TOKENS` (300,000 pre-minted RS256 tokens for the new-token case), `LOAD_CASES`
//! (comma-separated case ids; a filtered run never overwrites `benches/results/`),
//! `LOAD_OUT` (another report folder), `LOAD_MEMORY_TABLE` (a file holding the output of
//! `cargo bench --bench memory`, embedded in the report; `make bench` sets it).
//!
//! The session cases (`session-cookie`, `session-redis`) run on Portcullis alone: a route
//! with `auth: { session: web, forward_access_token: true }`, every request carrying one
//! session's cookie that the bench seals itself as a login would (for the Redis store it also
//! starts a `redis-server` and writes the record). Every Portcullis run's metrics are read
//! after it: a request not answered 2xx by the upstream, or in a session case not served by the
//! session, fails the run.
//!
//! The idle-connections case (id `idle`, so `LOAD_CASES=idle` runs it alone) opens
//! `LOAD_IDLE_CONNS` (2,000) keep-alive connections that each made one request, and reads the
//! proxy's resident memory before, with them open, and `LOAD_IDLE_SETTLE` (60) seconds after
//! they close: Portcullis on a plain and a TLS listener, bare Pingora, HAProxy plain and TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use portcullis::auth::tools;
use ring::signature::{self as sig, KeyPair};

const ISS: &str = "https://id.example.com/";
const AUD: &str = "api";
const RSA_PEM: &str = include_str!("../tests/keys/rsa2048.pem");
const EC_PEM: &str = include_str!("../tests/keys/ec256.pem");
/// Every case asks for this path: the deepest host-less route of the 10,000-route table, and
/// under the catch-all of the one-route table.
const PATH: &str = "/api/v1/svc09990/items/42";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// The connection count of every case but the many-connections one.
const CONNS: u32 = 64;
/// The most connections a case opens in the smoke run of `cargo test`.
const SMOKE_MAX_CONNS: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Settings, tools, machine
// ---------------------------------------------------------------------------------------------

struct Settings {
    /// `cargo bench` (true) or the smoke run of `cargo test` (false).
    full: bool,
    seconds: u64,
    rounds: usize,
    warmup: u64,
    new_tokens: usize,
    cases: Option<Vec<String>>,
    ci: bool,
    out: PathBuf,
    memory_table: Option<PathBuf>,
    idle_conns: usize,
    idle_settle: u64,
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn settings() -> Settings {
    let full = std::env::args().any(|a| a == "--bench");
    let cases = std::env::var("LOAD_CASES").ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
    });
    let out = match std::env::var_os("LOAD_OUT") {
        Some(dir) => PathBuf::from(dir),
        None if full && cases.is_none() => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results")
        }
        None if full => std::env::temp_dir().join("portcullis-load"),
        None => std::env::temp_dir().join("portcullis-load-smoke"),
    };
    Settings {
        full,
        seconds: if full { env_num("LOAD_SECONDS", 8) } else { 1 },
        rounds: if full { env_num("LOAD_ROUNDS", 5) } else { 1 },
        warmup: if full { env_num("LOAD_WARMUP", 2) } else { 0 },
        new_tokens: if full {
            env_num("LOAD_TOKENS", 300_000)
        } else {
            200
        },
        cases,
        ci: std::env::var_os("CI").is_some(),
        out,
        memory_table: std::env::var_os("LOAD_MEMORY_TABLE").map(PathBuf::from),
        idle_conns: if full {
            env_num("LOAD_IDLE_CONNS", 2_000)
        } else {
            100
        },
        idle_settle: if full {
            env_num("LOAD_IDLE_SETTLE", 60)
        } else {
            1
        },
    }
}

struct Tools {
    portcullis: PathBuf,
    bare: PathBuf,
    upstream: PathBuf,
    wrk: PathBuf,
    haproxy: Option<PathBuf>,
    /// For the `session-redis` case.
    redis_server: Option<PathBuf>,
    /// CPU lists for the proxy and for wrk + upstream, when `taskset` and two CPUs exist.
    pin: Option<(&'static str, &'static str)>,
    clk_tck: f64,
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(text)
}

/// Find everything the bench needs. `None` with `failures` empty means "skip" (no wrk, not CI).
fn tools(s: &Settings, failures: &mut Vec<String>) -> Option<Tools> {
    let portcullis = PathBuf::from(env!("CARGO_BIN_EXE_portcullis"));
    let examples = portcullis.parent().unwrap().join("examples");
    let bare = examples.join("bare");
    let upstream = examples.join("upstream");
    for p in [&bare, &upstream] {
        if !p.is_file() {
            let profile = if s.full { "--release " } else { "" };
            failures.push(format!(
                "{} is missing: build the examples first (`cargo build {profile}--examples`; \
                 `make bench` and `make test` do)",
                p.display()
            ));
        }
    }
    let wrk = find_program("wrk");
    let haproxy = find_program("haproxy");
    let missing = |what: &str, why: &str| {
        format!("{what} is not installed ({why}); `make deps` installs it with apt-get")
    };
    match (&wrk, s.ci) {
        (None, true) => failures.push(missing("wrk", "it drives every case")),
        (None, false) => eprintln!(
            "load: {}: skipping the load benchmark (set CI to make this a failure)",
            missing("wrk", "it drives every case")
        ),
        _ => {}
    }
    match (&haproxy, s.ci) {
        (None, true) => failures.push(missing("haproxy", "a system under test")),
        (None, false) => eprintln!(
            "load: {}: HAProxy left out (set CI to make this a failure)",
            missing("haproxy", "a system under test")
        ),
        _ => {}
    }
    let redis_server = find_program("redis-server");
    match (&redis_server, s.ci) {
        (None, true) => failures.push(missing("redis-server", "the session-redis case")),
        (None, false) => eprintln!(
            "load: {}: the session-redis case left out (set CI to make this a failure)",
            missing("redis-server", "the session-redis case")
        ),
        _ => {}
    }
    if !failures.is_empty() {
        return None;
    }
    let wrk = wrk?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = (find_program("taskset").is_some() && cpus >= 2).then_some(("0", "1"));
    if pin.is_none() {
        eprintln!("load: no taskset or fewer than two CPUs: running unpinned");
    }
    let clk_tck = command_output("getconf", &["CLK_TCK"])
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0);
    Some(Tools {
        portcullis,
        bare,
        upstream,
        wrk,
        haproxy,
        redis_server,
        pin,
        clk_tck,
    })
}

/// What the report says about the machine.
fn machine(t: &Tools) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(
            || "unknown".into(),
            |kb| format!("{:.0} GiB", kb / 1048576.0),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let first_line = |text: Option<String>| {
        text.and_then(|t| t.lines().next().map(str::to_string))
            .unwrap_or_default()
    };
    let mut rows = vec![
        ("CPU".into(), format!("{model}, {cores} logical CPUs")),
        ("memory".into(), mem),
        ("kernel".into(), format!("Linux {kernel} ({os})")),
        ("rustc".into(), first_line(command_output("rustc", &["-V"]))),
        (
            "wrk".into(),
            first_line(command_output(&t.wrk.to_string_lossy(), &["-v"])),
        ),
    ];
    if let Some(h) = &t.haproxy {
        rows.push((
            "HAProxy".into(),
            first_line(command_output(&h.to_string_lossy(), &["-v"])),
        ));
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// Cases and systems
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Portcullis,
    Bare,
    Haproxy,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Portcullis => "Portcullis",
            System::Bare => "bare Pingora",
            System::Haproxy => "HAProxy",
        }
    }
    fn colour(self) -> &'static str {
        match self {
            System::Portcullis => "#c2410c",
            System::Bare => "#1d4ed8",
            System::Haproxy => "#15803d",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

struct Case {
    id: &'static str,
    title: &'static str,
    /// The token policy, if any.
    auth: Option<Alg>,
    /// Every request carries a token not seen before (from the pre-minted file).
    fresh_tokens: bool,
    /// Per-IP and per-user limits on the route.
    limits: bool,
    routes: usize,
    connections: u32,
    /// How the proxies reach the upstream.
    wire: Wire,
    /// A browser-session route instead of a token one: every request carries the session
    /// cookie of this store. Portcullis only (the others have no sessions).
    session: Option<Store>,
    /// The access-log pair (issue 17), Portcullis only: `Some(false)` with `access_log: off`,
    /// `Some(true)` with the log written to a file. `None`: every other case, log off.
    log: Option<bool>,
    /// The route has `cache:` (issue 18) and every request is a hit: the upstream's answer has
    /// no freshness, so `default_ttl` keeps it. Portcullis only.
    cache: bool,
    /// Issue 18: every route but the catch-all has header conditions (`match.headers`) and
    /// every request meets those of the deepest route. Portcullis only.
    match_headers: bool,
}

/// Where the session of a session case lives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// Sealed into the cookie (`store: cookie`).
    Cookie,
    /// In a real `redis-server` the bench starts (`store: redis`); the cookie holds its id.
    Redis,
}

impl Case {
    /// Whether `system` runs this case: a session case is Portcullis's alone.
    fn runs_on(&self, system: System) -> bool {
        (self.session.is_none() && self.log.is_none() && !self.cache && !self.match_headers)
            || system == System::Portcullis
    }
}

/// How a proxy reaches the upstream in a case (wrk speaks HTTP/1.1 to the proxy in every case).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// HTTP/1.1 over plain TCP.
    Plain,
    /// HTTP/1.1 over TLS, the upstream's certificate checked against a CA of the bench's own.
    Tls,
    /// HTTP/2 by prior knowledge over plain TCP (h2c), up to 100 streams a connection.
    H2c,
}

fn cases() -> Vec<Case> {
    let case = |id, title, auth, fresh_tokens, limits, routes, connections| Case {
        id,
        title,
        auth,
        fresh_tokens,
        limits,
        routes,
        connections,
        wire: Wire::Plain,
        session: None,
        log: None,
        cache: false,
        match_headers: false,
    };
    // Cases compared with each other run next to each other: a target comparing two cases
    // (10,000 routes against one, limits on against off) pairs runs seconds apart.
    vec![
        case(
            "passthrough",
            "passthrough (`auth: none`), 1 route",
            None,
            false,
            false,
            1,
            CONNS,
        ),
        // Issue 18: a cache hit against passthrough, side by side.
        Case {
            cache: true,
            ..case(
                "cache-hit",
                "edge cache hit (`auth: none`, `cache:`), 1 route",
                None,
                false,
                false,
                1,
                CONNS,
            )
        },
        Case {
            wire: Wire::Tls,
            ..case(
                "https-upstream",
                "passthrough to an HTTPS upstream (TLS 1.3, verified)",
                None,
                false,
                false,
                1,
                CONNS,
            )
        },
        Case {
            wire: Wire::H2c,
            ..case(
                "h2",
                "passthrough to an HTTP/2 upstream (h2c, prior knowledge)",
                None,
                false,
                false,
                1,
                CONNS,
            )
        },
        // The access-log pair: the default config but for where the log goes, back to back.
        Case {
            log: Some(false),
            ..case(
                "log-off",
                "passthrough, `access_log: off`",
                None,
                false,
                false,
                1,
                CONNS,
            )
        },
        Case {
            log: Some(true),
            ..case(
                "log-file",
                "passthrough, access log to a file",
                None,
                false,
                false,
                1,
                CONNS,
            )
        },
        case(
            "routes-10k",
            "passthrough, 10,000 routes",
            None,
            false,
            false,
            10_000,
            CONNS,
        ),
        Case {
            match_headers: true,
            ..case(
                "routes-10k-headers",
                "passthrough, 10,000 routes with header matching (+100 that miss)",
                None,
                false,
                false,
                10_000,
                CONNS,
            )
        },
        // The session cases just before the cached-token case they are compared with.
        Case {
            session: Some(Store::Cookie),
            ..case(
                "session-cookie",
                "browser session, cookie store, cached",
                None,
                false,
                false,
                1,
                CONNS,
            )
        },
        Case {
            session: Some(Store::Redis),
            ..case(
                "session-redis",
                "browser session, Redis store, cached",
                None,
                false,
                false,
                1,
                CONNS,
            )
        },
        case(
            "rs256",
            "RS256 token reused over keep-alive",
            Some(Alg::Rs256),
            false,
            false,
            1,
            CONNS,
        ),
        case(
            "limits",
            "RS256 reused + per-IP and per-user limits",
            Some(Alg::Rs256),
            false,
            true,
            1,
            CONNS,
        ),
        case(
            "es256",
            "ES256 token reused over keep-alive",
            Some(Alg::Es256),
            false,
            false,
            1,
            CONNS,
        ),
        case(
            "rs256-new",
            "RS256, every request a new token",
            Some(Alg::Rs256),
            true,
            false,
            1,
            CONNS,
        ),
        case(
            "conns-5000",
            "passthrough, 5,000 connections",
            None,
            false,
            false,
            1,
            5_000,
        ),
    ]
}

/// What each system does in a case, for the report.
fn what_it_does(case: &Case, system: System) -> String {
    let it = what_it_does_downstream(case, system);
    match case.wire {
        Wire::Plain => it,
        Wire::Tls => format!("{it}, TLS to the upstream"),
        Wire::H2c => format!("{it}, h2c to the upstream"),
    }
}

fn what_it_does_downstream(case: &Case, system: System) -> String {
    match system {
        System::Bare => "forwards".into(),
        System::Portcullis => {
            let mut s = match (case.session, case.auth) {
                (Some(Store::Cookie), _) => {
                    "session sealed in the cookie, from its cache".to_string()
                }
                (Some(Store::Redis), _) => "session in Redis, from its cache".to_string(),
                (None, None) => "`auth: none`".to_string(),
                (None, Some(alg)) if case.fresh_tokens => {
                    format!("verifies {} (cache misses)", alg.name())
                }
                (None, Some(alg)) => format!("{} from its cache", alg.name()),
            };
            if case.limits {
                s.push_str(" + limits");
            }
            if case.routes > 1 {
                let _ = write!(s, ", {} routes", thousands(case.routes as f64));
            }
            if case.cache {
                s.push_str(", edge cache hits");
            }
            match case.log {
                Some(true) => s.push_str(", access log to a file"),
                Some(false) => s.push_str(", `access_log: off`"),
                None => {}
            }
            s
        }
        System::Haproxy => match case.auth {
            None => "forwards".into(),
            Some(alg) => {
                let mut s = format!("`jwt_verify` {} + exp/iss/aud", alg.name());
                if case.limits {
                    s.push_str(" + stick tables");
                }
                s
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Keys, tokens, configs
// ---------------------------------------------------------------------------------------------

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
        .split_whitespace()
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A SubjectPublicKeyInfo PEM: what HAProxy's `jwt_verify` needs (a certificate fails with -5).
fn public_key_pem(algorithm: &[u8], key: &[u8]) -> String {
    let bits = [&[0u8][..], key].concat();
    let spki = der(0x30, &[der(0x30, algorithm), der(0x03, &bits)].concat());
    let body = base64::engine::general_purpose::STANDARD.encode(spki);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

fn rsa_key() -> sig::RsaKeyPair {
    sig::RsaKeyPair::from_pkcs8(&pem_der(RSA_PEM)).expect("tests/keys/rsa2048.pem")
}

fn rsa_public_pem() -> String {
    // rsaEncryption, NULL parameters; the key is the PKCS#1 RSAPublicKey ring hands out.
    let alg = [
        &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
        ][..],
        &[0x05, 0x00],
    ]
    .concat();
    public_key_pem(&alg, rsa_key().public().as_ref())
}

fn ec_public_pem() -> String {
    let rng = ring::rand::SystemRandom::new();
    let pair = sig::EcdsaKeyPair::from_pkcs8(
        &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
        &pem_der(EC_PEM),
        &rng,
    )
    .expect("tests/keys/ec256.pem");
    // id-ecPublicKey, prime256v1; the key is the uncompressed point.
    let alg = [
        &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01][..],
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
    ]
    .concat();
    public_key_pem(&alg, pair.public_key().as_ref())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, exp: u64) -> String {
    serde_json::json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": unix_now(), "exp": exp})
        .to_string()
}

/// `n` RS256 tokens, each for another user, signed with ring directly on every core (the
/// library's `mint` parses the key for each token, which would double the cost of 300,000).
fn mint_rs256_many(n: usize, exp: u64) -> Vec<String> {
    let key = rsa_key();
    let header = B64.encode(r#"{"alg":"RS256","typ":"JWT","kid":"rsa"}"#);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (key, header) = (&key, &header);
                scope.spawn(move || {
                    let rng = ring::rand::SystemRandom::new();
                    let mut out = Vec::with_capacity(per);
                    let mut signature = vec![0u8; key.public().modulus_len()];
                    for i in (t * per)..((t + 1) * per).min(n) {
                        let payload = B64.encode(claims(&format!("user-{i:07}"), exp));
                        let message = format!("{header}.{payload}");
                        key.sign(
                            &sig::RSA_PKCS1_SHA256,
                            &rng,
                            message.as_bytes(),
                            &mut signature,
                        )
                        .expect("RSA signing");
                        out.push(format!("{message}.{}", B64.encode(&signature)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// The file of fresh tokens. Under `cargo bench` it is kept beside the binaries and reused
/// while its tokens stay valid for another day, since minting 300,000 takes a minute.
fn fresh_token_file(s: &Settings, t: &Tools, work: &Path) -> PathBuf {
    let n = s.new_tokens;
    if !s.full {
        let path = work.join("tokens-rs256.txt");
        let tokens = mint_rs256_many(n, unix_now() + 3600);
        std::fs::write(&path, tokens.join("\n") + "\n").unwrap();
        return path;
    }
    let dir = t.portcullis.parent().unwrap().join("load-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("tokens-rs256-{n}-");
    let now = unix_now();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let exp = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".txt"))
            .and_then(|e| e.parse::<u64>().ok());
        match exp {
            Some(exp) if exp > now + 86_400 => return entry.path(),
            _ if name.starts_with("tokens-rs256-") => {
                let _ = std::fs::remove_file(entry.path());
            }
            _ => {}
        }
    }
    let exp = now + 7 * 86_400;
    eprintln!(
        "load: minting {n} RS256 tokens (kept in {} for a week)",
        dir.display()
    );
    let started = Instant::now();
    let tokens = mint_rs256_many(n, exp);
    let path = dir.join(format!("{prefix}{exp}.txt"));
    let partial = dir.join("partial.txt");
    std::fs::write(&partial, tokens.join("\n") + "\n").unwrap();
    std::fs::rename(&partial, &path).unwrap();
    eprintln!("load: minted in {:.0?}", started.elapsed());
    path
}

/// Files every run shares: keys, the JWKS, tokens, wrk scripts.
struct Work {
    dir: PathBuf,
    rs256_token: String,
    es256_token: String,
    fresh_tokens: PathBuf,
    fresh_count: usize,
    upstream: SocketAddr,
    /// The upstream's TLS port, and the CA that issued its certificate (for `localhost`).
    tls_upstream: SocketAddr,
    ca_file: PathBuf,
    /// The upstream's HTTP/2 (h2c) port.
    h2c_upstream: SocketAddr,
    /// The session cases' identity provider (discovery and keys only).
    idp: SocketAddr,
    /// The sessions' cookies, their keys and the Redis the Redis store uses.
    sessions: Sessions,
}

/// The key set of the bench's issuers: the RSA and the EC key, `kid` `rsa` and `ec`.
fn jwks() -> String {
    serde_json::json!({"keys": [
        tools::public_jwk(RSA_PEM, "rsa", true).unwrap(),
        tools::public_jwk(EC_PEM, "ec", true).unwrap(),
    ]})
    .to_string()
}

#[allow(clippy::too_many_arguments)]
fn prepare(
    s: &Settings,
    t: &Tools,
    dir: &Path,
    upstream: SocketAddr,
    tls_upstream: SocketAddr,
    h2c_upstream: SocketAddr,
    idp: SocketAddr,
    redis: Option<SocketAddr>,
) -> Result<Work, String> {
    std::fs::write(dir.join("jwks.json"), jwks()).unwrap();
    std::fs::write(dir.join("rsa.pub.pem"), rsa_public_pem()).unwrap();
    std::fs::write(dir.join("ec.pub.pem"), ec_public_pem()).unwrap();
    let exp = unix_now() + 86_400;
    let rs256_token = tools::mint(RSA_PEM, &claims("user-reused", exp), None, Some("rsa")).unwrap();
    let es256_token = tools::mint(EC_PEM, &claims("user-reused", exp), None, Some("ec")).unwrap();
    let fresh_tokens = fresh_token_file(s, t, dir);
    let fresh_count = std::fs::read_to_string(&fresh_tokens)
        .unwrap()
        .lines()
        .count();
    let sessions = sessions(idp, redis)?;
    Ok(Work {
        dir: dir.to_path_buf(),
        rs256_token,
        es256_token,
        fresh_tokens,
        fresh_count,
        upstream,
        tls_upstream,
        ca_file: dir.join("upstream-ca.pem"),
        h2c_upstream,
        idp,
        sessions,
    })
}

/// A CA, and a certificate for `localhost` it issued, for the upstream's TLS port:
/// `upstream-ca.pem`, `upstream.crt` and `upstream.key` in `dir`.
fn upstream_certificates(dir: &Path) -> (PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    // Names of their own: OpenSSL (HAProxy) takes a leaf whose issuer is its own subject for
    // self-signed.
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "load bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(
        dir.join("upstream-ca.pem"),
        ca.self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("upstream.crt"), dir.join("upstream.key"));
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

impl Work {
    /// The upstream's address for `wire`.
    fn upstream_for(&self, wire: Wire) -> SocketAddr {
        match wire {
            Wire::Plain => self.upstream,
            Wire::Tls => self.tls_upstream,
            Wire::H2c => self.h2c_upstream,
        }
    }

    /// The header a case's requests carry, name and value: a bearer token (the fresh-token
    /// case warms up with the reused one), a session cookie, or none.
    fn header(&self, case: &Case) -> Option<(&'static str, String)> {
        let bearer = |t: &str| Some(("Authorization", format!("Bearer {t}")));
        if case.match_headers {
            return Some((TENANT_HEADER, TENANT.into()));
        }
        match (case.session, case.auth) {
            (Some(Store::Cookie), _) => Some(("Cookie", self.sessions.cookie.clone())),
            (Some(Store::Redis), _) => Some(("Cookie", self.sessions.redis_cookie.clone())),
            (None, None) => None,
            (None, Some(Alg::Rs256)) => bearer(&self.rs256_token),
            (None, Some(Alg::Es256)) => bearer(&self.es256_token),
        }
    }
}

/// The header the `routes-10k-headers` case's routes match on, and the value its requests
/// carry (that of every route: the deepest prefix decides, as in `routes-10k`).
const TENANT_HEADER: &str = "X-Tenant";
const TENANT: &str = "acme";

/// Where the `log-file` case writes its access log (removed after each run).
fn access_log_file(w: &Work, case: &Case) -> PathBuf {
    w.dir.join(format!("{}-access.log", case.id))
}

fn portcullis_config(case: &Case, w: &Work, listen: SocketAddr, admin: SocketAddr) -> String {
    let mut c = format!(
        r#"# portcullis load bench: {id}
listeners:
  - address: "{listen}"
admin:
  address: "{admin}"
server:
  threads: 1
  grace_period: 1s
access_log: {log}
issuers:
  - name: bench
    issuer: "{ISS}"
    jwks_file: "{jwks}"
    audiences: [{AUD}]
    algorithms: [RS256, ES256]
{sessions}upstreams:
  - name: up
    targets: ["{up}"]
{wire}routes:
"#,
        id = case.id,
        log = match case.log {
            Some(true) => format!("\"{}\"", access_log_file(w, case).display()),
            _ => "\"off\"".into(),
        },
        sessions = case
            .session
            .map_or(String::new(), |store| session_config(store, w)),
        jwks = w.dir.join("jwks.json").display(),
        up = w.upstream_for(case.wire),
        wire = match case.wire {
            Wire::Plain => String::new(),
            Wire::Tls => format!(
                "    tls: {{ sni: localhost, ca_file: \"{}\" }}\n",
                w.ca_file.display()
            ),
            Wire::H2c => "    protocol: h2c\n".into(),
        },
    );
    let auth = if case.session.is_some() {
        "{ session: web, forward_access_token: true }"
    } else if case.auth.is_some() {
        "{ issuers: [bench] }"
    } else {
        "none"
    };
    // Shaped like the routing criterion bench: `/api/v1/svcNNNNN/items`, one route in ten on
    // an exact host and one in ten on a wildcard; wrk's Host matches none of them.
    // With header matching, every route but the catch-all holds a header condition the
    // requests meet; and one host-less prefix in a hundred (the requests' among them) has a second
    // route before it, with that condition and a `present: true` one the requests do not
    // meet, so that a lookup checks a route's conditions and passes over it.
    for i in 0..case.routes.saturating_sub(1) {
        let mut host = match i % 10 {
            1 => format!("host: \"svc{i:05}.example.com\", "),
            2 => format!("host: \"*.w{i:05}.example.com\", "),
            _ => String::new(),
        };
        if case.match_headers && i % 100 == 90 {
            let _ = writeln!(
                c,
                "  - {{ name: b{i:05}, match: {{ {host}path_prefix: /api/v1/svc{i:05}/items, headers: {{ {TENANT_HEADER}: {TENANT}, x-beta: {{ present: true }} }} }}, upstream: up, auth: {auth} }}"
            );
        }
        if case.match_headers {
            host.push_str(&format!("headers: {{ {TENANT_HEADER}: {TENANT} }}, "));
        }
        let _ = writeln!(
            c,
            "  - {{ name: r{i:05}, match: {{ {host}path_prefix: /api/v1/svc{i:05}/items }}, upstream: up, auth: {auth} }}"
        );
    }
    let _ = writeln!(
        c,
        "  - name: all\n    match: {{ path_prefix: / }}\n    upstream: up\n    auth: {auth}"
    );
    if case.cache {
        c.push_str("    cache: { max_bytes: 1048576, max_object_bytes: 65536, default_ttl: 1h }\n");
    }
    if case.limits {
        c.push_str(
            "    rate_limit:\n      per_ip: { rate: 1000000/s, burst: 1000000 }\n      per_user: { rate: 1000000/s, burst: 1000000, claim: sub }\n",
        );
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Browser sessions
// ---------------------------------------------------------------------------------------------

/// The session client's name in the session cases.
const SESSION: &str = "web";
/// Its cookie: plain http (wrk), so neither `Secure` nor a `__Host-` name.
const COOKIE: &str = "portcullis-bench";
/// The environment variable its cookie key is in.
const KEYS_ENV: &str = "PORTCULLIS_BENCH_COOKIE_KEYS";
/// Its client id at the provider.
const CLIENT_ID: &str = "bench-web";
/// How long the bench's Redis keeps the session record (longer than any bench).
const RECORD_TTL: u64 = 86_400;

/// The session cases' cookies, made once: one session, as a login would have left it.
struct Sessions {
    /// The cookie key (base64 of 32 random bytes), for [`KEYS_ENV`].
    keys: String,
    /// `Cookie` of the cookie store: the session sealed into it.
    cookie: String,
    /// `Cookie` of the Redis store: the id of the record written into `redis`.
    redis_cookie: String,
    /// The bench's `redis-server`, when a Redis case runs.
    redis: Option<SocketAddr>,
}

/// One session, sealed as Portcullis seals it (`src/session/serve.rs`, `save`): for the
/// cookie store `Sealer::seal("session:NAME", json)` is the cookie; for Redis the cookie is
/// the base64url of a random 32-byte id and the record `Sealer::seal("redis:NAME", json)`
/// sits under `portcullis:session:NAME:<sha-256 of the id, hex>`. Its access token is valid
/// for 30 days, so no request refreshes it; it is an RS256 JWT of the shape the `rs256`
/// case sends, which `forward_access_token` puts in the upstream request as that case does.
fn sessions(idp: SocketAddr, redis: Option<SocketAddr>) -> Result<Sessions, String> {
    use portcullis::session::{seal, SessionData};
    let key: [u8; 32] = seal::random().ok_or("no random bytes")?;
    let keys = base64::engine::general_purpose::STANDARD.encode(key);
    let sealer = seal::Sealer::from_text(&keys)?;
    let now = unix_now();
    let exp = now + 30 * 86_400;
    let iss = format!("http://{idp}/");
    let sid = "bench-sid-0123456789abcdef";
    let access = serde_json::json!({
        "iss": iss, "aud": AUD, "sub": "user-reused", "iat": now, "exp": exp
    });
    let access_token = tools::mint(RSA_PEM, &access.to_string(), None, Some("rsa"))
        .map_err(|e| format!("minting the access token: {e}"))?;
    let id = serde_json::json!({
        "iss": iss, "aud": CLIENT_ID, "sub": "user-reused", "sid": sid, "iat": now,
        "exp": now + 3600, "auth_time": now, "nonce": B64.encode([7u8; 32])
    });
    let id_token = tools::mint(RSA_PEM, &id.to_string(), None, Some("rsa"))
        .map_err(|e| format!("minting the ID token: {e}"))?;
    // The claims a login keeps: the ID token's, under the access token's.
    let mut claims = id.as_object().cloned().unwrap_or_default();
    claims.extend(access.as_object().cloned().unwrap_or_default());
    let data = SessionData {
        sub: "user-reused".into(),
        sid: Some(sid.into()),
        access_token,
        access_exp: exp,
        refresh_token: Some(B64.encode(seal::random::<32>().ok_or("no random bytes")?)),
        id_token: Some(id_token),
        claims,
        created: now,
        last_used: now,
    };
    let json = serde_json::to_vec(&data).map_err(|e| e.to_string())?;
    let seal = |purpose: &str| {
        sealer
            .seal(format!("{purpose}:{SESSION}").as_bytes(), &json)
            .ok_or("sealing failed")
    };
    let sealed = seal("session")?;
    if sealed.len() > portcullis::session::cookie::MAX_COOKIE_VALUE {
        return Err(format!(
            "the session cookie is {} bytes: split",
            sealed.len()
        ));
    }
    let record_id: [u8; 32] = seal::random().ok_or("no random bytes")?;
    if let Some(addr) = redis {
        let key = format!(
            "portcullis:session:{SESSION}:{}",
            portcullis::session::redis::digest_hex(&record_id)
        );
        let record = seal("redis")?;
        let ttl = RECORD_TTL.to_string();
        let args: [&[u8]; 5] = [
            b"SET",
            key.as_bytes(),
            record.as_bytes(),
            b"EX",
            ttl.as_bytes(),
        ];
        match redis_command(addr, &args)?.as_str() {
            "+OK" => {}
            other => return Err(format!("Redis answered {other} to SET")),
        }
    }
    Ok(Sessions {
        keys,
        cookie: format!("{COOKIE}={sealed}"),
        redis_cookie: format!("{COOKIE}={}", B64.encode(record_id)),
        redis,
    })
}

/// The config lines of a session case: the provider's issuer (at the end of `issuers:`),
/// `sessions:`, and `cluster:` for the Redis store.
fn session_config(store: Store, w: &Work) -> String {
    let mut c = format!(
        r#"  - name: idp
    issuer: "http://{idp}/"
    discovery: true
    audiences: [{AUD}]
sessions:
  - name: {SESSION}
    issuer: idp
    client_id: {CLIENT_ID}
    scopes: [openid, offline_access]
    cookie: {{ name: {COOKIE}, secure: false }}
    store: {store}
    cookie_keys_env: {KEYS_ENV}
"#,
        idp = w.idp,
        store = match store {
            Store::Cookie => "cookie",
            Store::Redis => "redis",
        }
    );
    if let (Store::Redis, Some(redis)) = (store, w.sessions.redis) {
        let _ = writeln!(c, "cluster:\n  redis: \"redis://{redis}\"");
    }
    c
}

/// The session cases' identity provider: its discovery document and key set over plain
/// HTTP on loopback (the fetch rule allows it), a connection at a time on a thread of the
/// bench. Portcullis reads them when it starts; no request of a run reaches it (the access
/// token is far from due, so nothing is refreshed).
fn serve_idp() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let discovery = serde_json::json!({
        "issuer": format!("{base}/"),
        "jwks_uri": format!("{base}/jwks.json"),
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
    .to_string();
    let jwks = jwks();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut chunk = [0u8; 2048];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16_384 {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/.well-known/openid-configuration" => ("200 OK", discovery.as_str()),
                "/jwks.json" => ("200 OK", jwks.as_str()),
                _ => ("404 Not Found", "{}"),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// A `redis-server` on a free loopback port, without persistence, on the client's CPU; its
/// address once it answers `PING`.
fn start_redis(t: &Tools, program: &Path, dir: &Path) -> Result<(Proc, SocketAddr), String> {
    let mut last = String::new();
    // A port picked as free may be taken before redis-server binds it: try others.
    for attempt in 0..4 {
        let addr = free_addr();
        let data = dir.join(format!("redis-{attempt}"));
        std::fs::create_dir_all(&data).unwrap();
        let args = [
            "--port".to_string(),
            addr.port().to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            data.display().to_string(),
        ];
        let mut proc = spawn(
            pinned(t.pin.map(|p| p.1), program, &args),
            dir.join(format!("redis-{attempt}.log")),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(why) = proc.exited() {
                last = format!("exited: {why}");
                break;
            }
            if redis_command(addr, &[b"PING"]).is_ok_and(|r| r == "+PONG") {
                return Ok((proc, addr));
            }
            if Instant::now() > deadline {
                last = format!("no answer to PING on {addr} after 10 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(format!("redis-server did not start: {last}"))
}

/// Send one command to Redis (RESP) and read the first line of its answer.
fn redis_command(addr: SocketAddr, args: &[&[u8]]) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("Redis at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        cmd.extend_from_slice(a);
        cmd.extend_from_slice(b"\r\n");
    }
    s.write_all(&cmd).map_err(|e| format!("Redis: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => break,
            Err(e) => return Err(format!("Redis: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// The body of `GET path` (HTTP/1.0: no chunks).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    // A debug build under a smoke run takes seconds to write the metrics of 10,000 routes.
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// The sum of a Prometheus counter's series that carry every label of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels.iter().all(|(k, v)| {
                    let pair = format!("{k}=\"{v}\"");
                    rest.split(',').any(|p| p.trim_end_matches('}') == pair)
                })
        })
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// `portcullis_requests_total` summed over the codes of `class` (`'2'`: 2xx), every route and
/// method.
fn requests_in_class(text: &str, class: char) -> f64 {
    let prefix = format!("code=\"{class}");
    text.lines()
        .filter(|l| l.starts_with("portcullis_requests_total{") && l.contains(&prefix))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// What Portcullis answered in a run, from its metrics: every request 2xx (none 3xx, 4xx or
/// 5xx: a session case whose session does not pass gets 401s, which would measure refusals),
/// every one the upstream's 200, and in a session case every request served by the session
/// (from its cache but for a few).
fn check_answers(
    admin: SocketAddr,
    case: &Case,
    r: &WrkResult,
    connections: u32,
) -> Result<(), String> {
    let requests = r.requests as f64;
    // The last answers wrk counted may be a moment ahead of the metrics.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = http_get(admin, "/metrics").ok_or("cannot read Portcullis's /metrics")?;
        let m = |name: &str, labels: &[(&str, &str)]| metric_sum(&text, name, labels);
        let ok = requests_in_class(&text, '2');
        let redirects = requests_in_class(&text, '3');
        let errors = requests_in_class(&text, '4') + requests_in_class(&text, '5');
        let upstream_ok = m("portcullis_upstream_responses_total", &[("code", "200")]);
        let cache = "portcullis_session_cache_requests_total";
        let hits = m(cache, &[("session", SESSION), ("result", "hit")]);
        let misses = m(cache, &[("session", SESSION), ("result", "miss")]);
        let mut why = Vec::new();
        // wrk takes a 3xx for a success: none may be there (a login redirect). A request in
        // flight when wrk stops (one per connection at most) may be logged as an error that
        // no client saw (seen with h2c upstreams); wrk itself fails the run on any 4xx or 5xx
        // it read.
        let tolerated = f64::from(connections) + r.socket_errors as f64;
        if redirects > 0.0 || errors > tolerated {
            why.push(format!("{redirects} answers were 3xx, {errors} 4xx or 5xx"));
        }
        let cache_hits = m(
            "portcullis_cache_lookups_total",
            &[("route", "all"), ("result", "hit")],
        );
        if case.cache && cache_hits < requests {
            why.push(format!(
                "{requests} requests in wrk, {cache_hits} cache hits: not the cached path"
            ));
        }
        if ok < requests || (!case.cache && upstream_ok < requests) {
            why.push(format!(
                "{requests} requests in wrk, {ok} answered 2xx, {upstream_ok} upstream 200s"
            ));
        }
        if case.match_headers {
            let deepest = format!("r{:05}", case.routes - 10);
            let taken = m("portcullis_requests_total", &[("route", &deepest)]);
            if taken < requests {
                why.push(format!(
                    "{requests} requests, {taken} taken by the header-matched route {deepest}"
                ));
            }
        }
        if case.session.is_some() {
            if hits + misses < requests {
                why.push(format!(
                    "{requests} requests, {hits} session cache hits and {misses} misses"
                ));
            }
            if misses > (requests / 100.0).max(f64::from(CONNS)) {
                why.push(format!(
                    "{misses} session cache misses in {requests} requests: not the cached path"
                ));
            }
        }
        if why.is_empty() {
            return Ok(());
        }
        if redirects > 0.0 || errors > tolerated || Instant::now() > deadline {
            return Err(format!("Portcullis's metrics: {}", why.join("; ")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn haproxy_config(case: &Case, w: &Work, listen: SocketAddr) -> String {
    let mut c = format!(
        "# portcullis load bench: {id}
global
    nbthread 1
    maxconn 8000

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend bench
    bind {listen}
    maxconn 8000
",
        id = case.id
    );
    if let Some(alg) = case.auth {
        if case.limits {
            c.push_str(
                "    http-request track-sc0 src table per_ip
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000 }
",
            );
        }
        let key = match alg {
            Alg::Rs256 => w.dir.join("rsa.pub.pem"),
            Alg::Es256 => w.dir.join("ec.pub.pem"),
        };
        let _ = write!(
            c,
            "    http-request set-var(txn.bearer) http_auth_bearer
    http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_header_query('$.alg') -m str {alg} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {ISS} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {AUD} }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify({alg},\"{key}\") -m int 1 }}
",
            alg = alg.name(),
            key = key.display()
        );
        if case.limits {
            c.push_str(
                "    http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('$.sub')
    http-request track-sc1 var(txn.sub) table per_user
    http-request deny deny_status 429 if { sc_http_req_rate(1) gt 1000000 }
",
            );
        }
    }
    let _ = write!(
        c,
        "    default_backend up

backend up
    server up {up}
",
        up = match case.wire {
            Wire::Plain => w.upstream.to_string(),
            Wire::Tls => format!(
                "{} ssl verify required ca-file {} sni str(localhost)",
                w.tls_upstream,
                w.ca_file.display()
            ),
            Wire::H2c => format!("{} proto h2", w.h2c_upstream),
        }
    );
    if case.limits {
        c.push_str(
            "
backend per_ip
    stick-table type ip size 1m expire 60s store http_req_rate(1s)

backend per_user
    stick-table type string len 64 size 1m expire 60s store http_req_rate(1s)
",
        );
    }
    c
}

const LUA_DONE: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d status=%d connect=%d read=%d write=%d timeout=%d p50_us=%.1f p99_us=%.1f\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// A wrk script with a fixed request (headers set once, so wrk stays fast).
fn lua_fixed(header: Option<&(&str, String)>) -> String {
    let mut s = String::from("wrk.method = \"GET\"\n");
    if let Some((name, value)) = header {
        let _ = writeln!(s, "wrk.headers[\"{name}\"] = \"{value}\"");
    }
    s + LUA_DONE
}

/// A wrk script that sends the tokens of a file in turn, one per request, from the start.
/// The requests are formatted once, before the run, so that the client's core spends its time
/// sending them rather than building them (it shares that core with the upstream).
fn lua_fresh() -> String {
    String::from(
        r#"wrk.method = "GET"
local requests = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. line })
  end
end
request = function()
  i = i + 1
  if i > #requests then i = 1 end
  return requests[i]
end
"#,
    ) + LUA_DONE
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child that is killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{status}; log: {}", tail(&self.log))),
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// The bare Pingora proxy on `addr`, one worker thread, forwarding to the upstream over
/// `wire`: over TLS to `localhost`, trusting the bench's CA (as its system store: Pingora's
/// default trust reads `SSL_CERT_FILE`); h2c with the stream cap Portcullis sets.
fn bare(t: &Tools, cpu: Option<&str>, addr: SocketAddr, w: &Work, wire: Wire) -> Command {
    let mut args = vec![
        "--listen".into(),
        addr.to_string(),
        "--upstream".into(),
        w.upstream_for(wire).to_string(),
        "--threads".into(),
        "1".into(),
    ];
    match wire {
        Wire::Plain => {}
        Wire::Tls => args.extend(["--upstream-tls".into(), "localhost".into()]),
        Wire::H2c => args.push("--upstream-h2c".into()),
    }
    let mut cmd = pinned(cpu, &t.bare, &args);
    if wire == Wire::Tls {
        cmd.env("SSL_CERT_FILE", &w.ca_file);
    }
    cmd
}

/// `program args` under `bash` with the open-file limit raised (5,000 connections need it)
/// and pinned to `cpu`. Both `bash` and `taskset` exec, so the child's pid is the program's.
fn pinned(cpu: Option<&str>, program: &Path, args: &[String]) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@""#)
        .arg("bash");
    if let Some(cpu) = cpu {
        c.args(["taskset", "-c", cpu]);
    }
    c.arg(program).args(args);
    c
}

fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn");
    Proc { child, log }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The status of one `GET PATH` with `Connection: close`.
fn http_status(addr: SocketAddr, header: Option<&(&str, String)>) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let extra = header.map_or(String::new(), |(name, value)| {
        format!("{name}: {value}\r\n")
    });
    write!(
        s,
        "GET {PATH} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Wait until the system answers 200 to the case's request.
fn wait_ready(
    p: &mut Proc,
    addr: SocketAddr,
    header: Option<&(&str, String)>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(why) = p.exited() {
            return Err(format!("exited at start: {why}"));
        }
        last = http_status(addr, header);
        if last == Some(200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "not ready after 60 s (last status {last:?}); log: {}",
        tail(&p.log)
    ))
}

/// utime and stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// Busy ticks of CPU 0 (steal included: time the hypervisor gave to someone else).
fn cpu0_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu0 "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?)
}

/// Peak resident memory (VmHWM) in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Default, Clone)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    status_errors: u64,
    socket_errors: u64,
    p50_us: f64,
    p99_us: f64,
}

fn wrk(
    t: &Tools,
    addr: SocketAddr,
    conns: u32,
    seconds: u64,
    script: &Path,
    script_args: &[String],
) -> Result<WrkResult, String> {
    let mut args = vec![
        "-t1".to_string(),
        format!("-c{conns}"),
        format!("-d{seconds}s"),
        "--timeout".into(),
        "10s".into(),
        "-s".into(),
        script.display().to_string(),
        format!("http://{addr}{PATH}"),
    ];
    if !script_args.is_empty() {
        args.push("--".into());
        args.extend_from_slice(script_args);
    }
    let mut child = pinned(t.pin.map(|p| p.1), &t.wrk, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start wrk: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("wrk did not stop in time".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .ok_or_else(|| {
            format!(
                "wrk printed no result ({}): {} {}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    let mut r = WrkResult::default();
    for kv in line.split_whitespace() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let n: f64 = v.parse().unwrap_or(0.0);
        match k {
            "requests" => r.requests = n as u64,
            "duration_us" => r.duration_us = n as u64,
            "status" => r.status_errors = n as u64,
            "connect" | "read" | "write" | "timeout" => r.socket_errors += n as u64,
            "p50_us" => r.p50_us = n,
            "p99_us" => r.p99_us = n,
            _ => {}
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Run {
    case: &'static str,
    system: System,
    round: usize,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    /// The part of `cpu_us` spent in user space (the rest is the kernel's, for the proxy).
    user_us: f64,
    rss_kib: u64,
    requests: u64,
    socket_errors: u64,
    /// Share of CPU 0 that other processes (and the hypervisor) took during the run.
    others_cpu0: f64,
    /// Share of the run the proxy was on a CPU (near 100%: the proxy was the bottleneck).
    busy: f64,
}

fn run_one(
    s: &Settings,
    t: &Tools,
    w: &Work,
    case: &Case,
    system: System,
    round: usize,
) -> Result<Run, String> {
    let addr = free_addr();
    let tag = format!("{}-{}-{round}", case.id, system.name().replace(' ', "-"));
    let log = w.dir.join(format!("{tag}.log"));
    let cpu = t.pin.map(|p| p.0);
    // Portcullis's admin listener: its metrics say, after the run, what it answered.
    let admin = free_addr();
    let cmd = match system {
        System::Portcullis => {
            let path = w.dir.join(format!("{tag}.yaml"));
            std::fs::write(&path, portcullis_config(case, w, addr, admin)).unwrap();
            let args = ["run".into(), "--config".into(), path.display().to_string()];
            let mut cmd = pinned(cpu, &t.portcullis, &args);
            cmd.env(KEYS_ENV, &w.sessions.keys);
            cmd
        }
        System::Bare => bare(t, cpu, addr, w, case.wire),
        System::Haproxy => {
            let path = w.dir.join(format!("{tag}.cfg"));
            std::fs::write(&path, haproxy_config(case, w, addr)).unwrap();
            let args = ["-db".into(), "-f".into(), path.display().to_string()];
            pinned(cpu, t.haproxy.as_ref().unwrap(), &args)
        }
    };
    let mut proc = spawn(cmd, log);
    let header = w.header(case);
    wait_ready(&mut proc, addr, header.as_ref())?;

    // The smoke run checks that each system answers, in a second on a machine that may be
    // busy building: thousands of connections opened in that second can leave a one-thread
    // proxy no time to answer any, so it opens at most a few hundred.
    let connections = if s.full {
        case.connections
    } else {
        case.connections.min(SMOKE_MAX_CONNS)
    };
    let fixed = w.dir.join(format!("{}-fixed.lua", case.id));
    std::fs::write(&fixed, lua_fixed(header.as_ref())).unwrap();
    if s.warmup > 0 {
        wrk(t, addr, connections, s.warmup, &fixed, &[])?;
    }
    let (script, args) = if case.fresh_tokens {
        let path = w.dir.join("fresh.lua");
        std::fs::write(&path, lua_fresh()).unwrap();
        (path, vec![w.fresh_tokens.display().to_string()])
    } else {
        (fixed, Vec::new())
    };
    let pid = proc.pid();
    let cpu_before = cpu_ticks(pid).ok_or("cannot read /proc/<pid>/stat")?;
    let cpu0_before = cpu0_busy_ticks().unwrap_or(0);
    let started = Instant::now();
    let result = wrk(t, addr, connections, s.seconds, &script, &args);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_ticks(pid);
    let cpu0_after = cpu0_busy_ticks().unwrap_or(0);
    let rss_kib = peak_rss_kib(pid);
    if let Some(why) = proc.exited() {
        return Err(format!("crashed during the run: {why}"));
    }
    let r = result?;
    let (user_after, system_after) = cpu_after.ok_or("cannot read /proc/<pid>/stat")?;
    let user_ticks = user_after - cpu_before.0;
    let cpu_ticks = user_ticks + (system_after - cpu_before.1);
    if r.requests == 0 {
        return Err("no request completed".into());
    }
    if system == System::Portcullis {
        check_answers(admin, case, &r, connections)?;
    }
    if case.log == Some(true) {
        let checked = check_access_log(&access_log_file(w, case), r.requests);
        let _ = std::fs::remove_file(access_log_file(w, case));
        checked?;
    }
    drop(proc);
    if r.status_errors > 0 {
        return Err(format!(
            "{} of {} answers were not 2xx/3xx",
            r.status_errors, r.requests
        ));
    }
    // wrk's socket errors: a few reads cut at the end of a 5,000-connection run are normal,
    // more than 1% means the system could not keep its connections.
    if r.socket_errors * 100 > r.requests {
        return Err(format!(
            "{} socket errors for {} requests",
            r.socket_errors, r.requests
        ));
    }
    let proxy_seconds = cpu_ticks as f64 / t.clk_tck;
    let others = (cpu0_after.saturating_sub(cpu0_before) as f64 / t.clk_tck - proxy_seconds)
        .max(0.0)
        / elapsed;
    Ok(Run {
        case: case.id,
        system,
        round,
        rps: r.requests as f64 / (r.duration_us as f64 / 1e6),
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        cpu_us: proxy_seconds * 1e6 / r.requests as f64,
        user_us: user_ticks as f64 / t.clk_tck * 1e6 / r.requests as f64,
        rss_kib,
        requests: r.requests,
        socket_errors: r.socket_errors,
        others_cpu0: if t.pin.is_some() { others } else { f64::NAN },
        // Over the time wrk sent requests: its `init` (the new-token case formats 300,000
        // requests there) runs before that, while the proxy idles. Connection set-up and
        // teardown fall just outside wrk's clock, hence the cap.
        busy: (proxy_seconds / (r.duration_us as f64 / 1e6)).min(1.0),
    })
}

/// The `log-file` case must have logged: at least one line per request wrk completed (the
/// warm-up's lines come on top), each whole. A log that dropped lines is not the cost measured.
fn check_access_log(path: &Path, requests: u64) -> Result<(), String> {
    // The last lines reach the file on the flusher's next round (100 ms).
    let deadline = Instant::now() + Duration::from_secs(3);
    let (text, lines) = loop {
        let mut text = std::fs::read_to_string(path)
            .map_err(|e| format!("the access log {}: {e}", path.display()))?;
        // Whole lines only: the flusher may be writing the next ones.
        text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        let lines = text.lines().count() as u64;
        if lines >= requests || Instant::now() > deadline {
            break (text, lines);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if lines < requests {
        return Err(format!(
            "the access log holds {lines} lines for {requests} requests"
        ));
    }
    if let Some(bad) = text
        .lines()
        .find(|l| !(l.starts_with("{\"time\":") && l.ends_with('}')))
    {
        return Err(format!("a torn access log line: {bad}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Idle connections: resident memory per keep-alive connection
// ---------------------------------------------------------------------------------------------

/// The id of the idle-connections case in `LOAD_CASES`.
const IDLE: &str = "idle";

struct IdleRun {
    system: System,
    tls: bool,
    conns: usize,
    before_kib: u64,
    open_kib: u64,
    after_kib: u64,
    /// After that, a few more requests: the allocator gives freed pages back only when the
    /// thread that freed them allocates again.
    traffic_kib: u64,
}

impl IdleRun {
    /// Bytes of resident memory per idle connection.
    fn per_conn_bytes(&self) -> f64 {
        self.open_kib.saturating_sub(self.before_kib) as f64 * 1024.0 / self.conns as f64
    }
}

/// Resident memory (VmRSS) in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM, certificate DER).
fn idle_certificate() -> (String, String, Vec<u8>) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (
        key.cert.pem(),
        key.signing_key.serialize_pem(),
        key.cert.der().to_vec(),
    )
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Open a connection, send one keep-alive `GET PATH`, read the whole answer; the connection
/// stays open.
async fn idle_connection(
    addr: SocketAddr,
    tls: Option<&pingora::tls::TlsConnector>,
) -> Result<Box<dyn Io>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(c) => {
            let name = pingora::tls::ServerName::try_from("localhost").unwrap();
            Box::new(
                c.connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?,
            )
        }
    };
    stream
        .write_all(format!("GET {PATH} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(format!("answer: {}", head.lines().next().unwrap_or("")));
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("no content-length")?;
        if buf.len() >= end + 4 + len {
            return Ok(stream);
        }
    }
}

fn idle_run(
    s: &Settings,
    t: &Tools,
    w: &Work,
    system: System,
    tls: bool,
) -> Result<IdleRun, String> {
    let addr = free_addr();
    let tag = format!(
        "idle-{}-{}",
        system.name().replace(' ', "-"),
        if tls { "tls" } else { "plain" }
    );
    let log = w.dir.join(format!("{tag}.log"));
    let (cert_pem, key_pem, cert_der) = idle_certificate();
    let cert = w.dir.join(format!("{tag}.crt"));
    let key = w.dir.join(format!("{tag}.key"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    let cpu = t.pin.map(|p| p.0);
    let cmd = match system {
        System::Portcullis => {
            let path = w.dir.join(format!("{tag}.yaml"));
            let tls_line = if tls {
                format!(
                    "\n    tls: {{ cert: \"{}\", key: \"{}\" }}",
                    cert.display(),
                    key.display()
                )
            } else {
                String::new()
            };
            // Keep-alive longer than the run, as for HAProxy below.
            let config = format!(
                "listeners:\n  - address: \"{addr}\"{tls_line}\nserver:\n  threads: 1\n  \
                 grace_period: 1s\n  keepalive_timeout: 300s\naccess_log: \"off\"\n\
                 upstreams:\n  - name: up\n    targets: [\"{}\"]\nroutes:\n  - name: all\n    \
                 match: {{ path_prefix: / }}\n    upstream: up\n    auth: none\n",
                w.upstream
            );
            std::fs::write(&path, config).unwrap();
            let args = ["run".into(), "--config".into(), path.display().to_string()];
            pinned(cpu, &t.portcullis, &args)
        }
        System::Bare => {
            assert!(!tls, "bare Pingora serves plain HTTP only");
            bare(t, cpu, addr, w, Wire::Plain)
        }
        System::Haproxy => {
            let path = w.dir.join(format!("{tag}.cfg"));
            let pem = w.dir.join(format!("{tag}.pem"));
            std::fs::write(&pem, format!("{cert_pem}{key_pem}")).unwrap();
            let ssl = if tls {
                format!(" ssl crt {} alpn http/1.1", pem.display())
            } else {
                String::new()
            };
            let config = format!(
                "global\n    nbthread 1\n    maxconn 8000\n\ndefaults\n    mode http\n    \
                 option http-keep-alive\n    timeout connect 5s\n    timeout client 300s\n    \
                 timeout server 60s\n    timeout http-keep-alive 300s\n\nfrontend idle\n    \
                 bind {addr}{ssl}\n    maxconn 8000\n    default_backend up\n\nbackend up\n    \
                 server up {}\n",
                w.upstream
            );
            std::fs::write(&path, config).unwrap();
            let args = ["-db".into(), "-f".into(), path.display().to_string()];
            pinned(cpu, t.haproxy.as_ref().unwrap(), &args)
        }
    };
    let mut proc = spawn(cmd, log);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connector = tls.then(|| {
        pingora::tls::install_default_crypto_provider();
        let mut roots = pingora::tls::RootCertStore::empty();
        roots
            .add(pingora::tls::CertificateDer::from(cert_der.clone()))
            .unwrap();
        let config = pingora::tls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        pingora::tls::TlsConnector::from(std::sync::Arc::new(config))
    });
    // Ready: one answer through the listener under test.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(why) = proc.exited() {
            return Err(format!("exited at start: {why}"));
        }
        match rt.block_on(idle_connection(addr, connector.as_ref())) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(format!("not ready: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let pid = proc.pid();
    let before_kib = rss_kib(pid);
    let n = s.idle_conns;
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        match rt.block_on(idle_connection(addr, connector.as_ref())) {
            Ok(c) => open.push(c),
            Err(e) => return Err(format!("connection {i} of {n}: {e}")),
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let open_kib = rss_kib(pid);
    if let Some(why) = proc.exited() {
        return Err(format!("crashed with the connections open: {why}"));
    }
    drop(open);
    std::thread::sleep(Duration::from_secs(s.idle_settle));
    let after_kib = rss_kib(pid);
    for i in 0..100 {
        if let Err(e) = rt.block_on(idle_connection(addr, connector.as_ref())) {
            return Err(format!("request {i} after the connections closed: {e}"));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let traffic_kib = rss_kib(pid);
    if let Some(why) = proc.exited() {
        return Err(format!("crashed after the connections closed: {why}"));
    }
    Ok(IdleRun {
        system,
        tls,
        conns: n,
        before_kib,
        open_kib,
        after_kib,
        traffic_kib,
    })
}

/// The idle-connections table of the report.
fn idle_table(s: &Settings, runs: &[IdleRun]) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "{} keep-alive connections opened one after another, each after one `GET {PATH}` \
         answered in full, then left idle; the proxy's resident memory (VmRSS) read 1 s after \
         start-up (before), 2 s after the last one opened (open), and {} s after they all \
         closed (after; with no traffic in between, Portcullis's memory housekeeper must hand \
         the freed pages back, as mimalloc by itself purges them only when the thread that \
         freed them allocates again), then 1 s after 100 more requests on new connections \
         (after + traffic). Per connection: (open − before) / connections, in kB of 1,000 bytes. One worker \
         thread each, pinned as above; keep-alive 300 s for Portcullis and HAProxy, Pingora's \
         fixed 60 s for the bare proxy.\n",
        thousands(s.idle_conns as f64),
        s.idle_settle
    );
    let _ = writeln!(
        r,
        "| system | listener | before | open | **per idle connection** | after | **after / before** | after + traffic | after + traffic / before |"
    );
    let _ = writeln!(r, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for run in runs {
        let _ = writeln!(
            r,
            "| {} | {} | {:.1} MiB | {:.1} MiB | **{:.1} kB** | {:.1} MiB | **{:.2}×** | {:.1} MiB | {:.2}× |",
            run.system.name(),
            if run.tls { "TLS" } else { "plain" },
            run.before_kib as f64 / 1024.0,
            run.open_kib as f64 / 1024.0,
            run.per_conn_bytes() / 1000.0,
            run.after_kib as f64 / 1024.0,
            run.after_kib as f64 / run.before_kib.max(1) as f64,
            run.traffic_kib as f64 / 1024.0,
            run.traffic_kib as f64 / run.before_kib.max(1) as f64
        );
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[derive(Clone, Copy)]
struct Summary {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    user_us: f64,
    rss_mib: f64,
    others_cpu0: f64,
    runs: usize,
}

fn summarise(runs: &[Run], case: &str, system: System) -> Option<Summary> {
    let mine: Vec<&Run> = runs
        .iter()
        .filter(|r| r.case == case && r.system == system)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let m = |f: fn(&Run) -> f64| median(mine.iter().map(|r| f(r)).collect());
    Some(Summary {
        rps: m(|r| r.rps),
        p50_us: m(|r| r.p50_us),
        p99_us: m(|r| r.p99_us),
        cpu_us: m(|r| r.cpu_us),
        user_us: m(|r| r.user_us),
        rss_mib: m(|r| r.rss_kib as f64 / 1024.0),
        others_cpu0: m(|r| r.others_cpu0),
        runs: mine.len(),
    })
}

fn thousands(n: f64) -> String {
    if !n.is_finite() {
        return "–".into();
    }
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn latency(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

struct Target {
    what: String,
    figures: String,
    ratio: f64,
    /// For a throughput target: the same ratio from CPU per request (requests one core of
    /// proxy CPU can serve), which a busy client core does not distort.
    by_cpu: Option<f64>,
    /// The ratio must be at most (true) or at least (false) `limit`.
    at_most: bool,
    limit: f64,
    /// The same ratio within each round (runs of one round are minutes apart at most, of one
    /// case seconds apart): how far the machine's drift moves it.
    rounds: Vec<f64>,
}

impl Target {
    fn holds(&self, ratio: f64) -> Option<bool> {
        let holds = (self.at_most && ratio <= self.limit) || (!self.at_most && ratio >= self.limit);
        ratio.is_finite().then_some(holds)
    }

    fn ratio_text(&self) -> String {
        match (self.ratio.is_finite(), self.by_cpu) {
            (false, _) => "–".into(),
            (true, Some(c)) if c.is_finite() => format!("{:.2}× (by CPU/req {c:.2}×)", self.ratio),
            (true, _) => format!("{:.2}×", self.ratio),
        }
    }

    /// The lowest and highest of the per-round ratios, when there are two rounds or more.
    fn spread(&self) -> Option<(f64, f64)> {
        let r: Vec<f64> = self
            .rounds
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        (r.len() >= 2).then(|| {
            let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        })
    }

    fn spread_text(&self) -> String {
        self.spread()
            .map_or_else(|| "–".into(), |(lo, hi)| format!("{lo:.2}–{hi:.2}×"))
    }

    /// "holds" or "missed" by the median; "at the limit" when the rounds disagree about it
    /// (the median's verdict follows in brackets): on this machine such a ratio is not decided
    /// by one run.
    fn verdict(&self) -> String {
        let word = |h: bool| if h { "holds" } else { "missed" };
        let Some(median) = self.holds(self.ratio) else {
            return "not measured".into();
        };
        let split = self
            .spread()
            .is_some_and(|(lo, hi)| self.holds(lo) != self.holds(hi));
        let by_cpu = self
            .by_cpu
            .and_then(|c| self.holds(c))
            .filter(|c| *c != median)
            .map(|c| format!(" (by CPU/req: {})", word(c)))
            .unwrap_or_default();
        if split {
            format!("**at the limit** (median: {}){by_cpu}", word(median))
        } else {
            format!("**{}**{by_cpu}", word(median))
        }
    }
}

/// What a target compares.
#[derive(Clone, Copy)]
enum Figure {
    Rps,
    Cpu,
}

impl Figure {
    fn of_run(self, r: &Run) -> f64 {
        match self {
            Figure::Rps => r.rps,
            Figure::Cpu => r.cpu_us,
        }
    }

    fn of_summary(self, s: &Summary) -> f64 {
        match self {
            Figure::Rps => s.rps,
            Figure::Cpu => s.cpu_us,
        }
    }
}

/// `figure(a) / figure(b)` within each round both were measured in.
fn per_round(runs: &[Run], a: (&str, System), b: (&str, System), figure: Figure) -> Vec<f64> {
    let pick = |(case, system): (&str, System), round: usize| {
        runs.iter()
            .find(|r| r.case == case && r.system == system && r.round == round)
            .map(|r| figure.of_run(r))
    };
    let rounds = runs.iter().map(|r| r.round).max().map_or(0, |m| m + 1);
    (0..rounds)
        .filter_map(|round| Some(pick(a, round)? / pick(b, round)?))
        .collect()
}

fn targets(runs: &[Run], memory: Option<&str>) -> Vec<Target> {
    let get = |case: &str, system| summarise(runs, case, system);
    let mut out = Vec::new();
    let mut ratio = |what: &str,
                     a: (&str, System),
                     b: (&str, System),
                     figure: Figure,
                     unit: &str,
                     at_most: bool,
                     limit: f64| {
        let (x, y) = (get(a.0, a.1), get(b.0, b.1));
        let (fx, fy) = (
            x.map_or(f64::NAN, |s| figure.of_summary(&s)),
            y.map_or(f64::NAN, |s| figure.of_summary(&s)),
        );
        let show = |v: f64| {
            if unit == "req/s" {
                format!("{} req/s", thousands(v))
            } else {
                format!("{v:.1} {unit}")
            }
        };
        out.push(Target {
            what: what.into(),
            figures: format!(
                "{} {}: {} / {} {}: {}",
                a.1.name(),
                a.0,
                show(fx),
                b.1.name(),
                b.0,
                show(fy)
            ),
            ratio: fx / fy,
            // Throughput a / b is capacity a / b, which CPU per request gives as b / a.
            by_cpu: (unit == "req/s").then(|| {
                let cpu = |s: Option<Summary>| s.map_or(f64::NAN, |s| s.cpu_us);
                cpu(y) / cpu(x)
            }),
            at_most,
            limit,
            rounds: per_round(runs, a, b, figure),
        });
    };
    use System::{Bare, Haproxy, Portcullis};
    let (rps, cpu) = (Figure::Rps, Figure::Cpu);
    ratio(
        "RS256 reused: throughput ≥ 1.5× HAProxy `jwt_verify`",
        ("rs256", Portcullis),
        ("rs256", Haproxy),
        rps,
        "req/s",
        false,
        1.5,
    );
    ratio(
        "ES256 reused: throughput ≥ 2.5× HAProxy `jwt_verify`",
        ("es256", Portcullis),
        ("es256", Haproxy),
        rps,
        "req/s",
        false,
        2.5,
    );
    ratio(
        "cached token (RS256): CPU/request ≤ 1.15× bare Pingora",
        ("rs256", Portcullis),
        ("rs256", Bare),
        cpu,
        "µs",
        true,
        1.15,
    );
    ratio(
        "cached token (ES256): CPU/request ≤ 1.15× bare Pingora",
        ("es256", Portcullis),
        ("es256", Bare),
        cpu,
        "µs",
        true,
        1.15,
    );
    // Issue 16: a request on a session route, the session in the process's cache, against
    // one with a cached bearer token (the access token it forwards is of that token's shape).
    ratio(
        "session (cookie store, cached): CPU/request ≤ 1.2× cached bearer token (issue 16)",
        ("session-cookie", Portcullis),
        ("rs256", Portcullis),
        cpu,
        "µs",
        true,
        1.2,
    );
    ratio(
        "session (Redis store, cached): CPU/request ≤ 1.2× cached bearer token (issue 16)",
        ("session-redis", Portcullis),
        ("rs256", Portcullis),
        cpu,
        "µs",
        true,
        1.2,
    );
    ratio(
        "every token new (RS256): CPU/request ≤ 1.1× HAProxy",
        ("rs256-new", Portcullis),
        ("rs256-new", Haproxy),
        cpu,
        "µs",
        true,
        1.1,
    );
    ratio(
        "passthrough: CPU/request ≤ 1.1× bare Pingora",
        ("passthrough", Portcullis),
        ("passthrough", Bare),
        cpu,
        "µs",
        true,
        1.1,
    );
    ratio(
        "HTTPS upstream: CPU/request ≤ 1.1× bare Pingora",
        ("https-upstream", Portcullis),
        ("https-upstream", Bare),
        cpu,
        "µs",
        true,
        1.1,
    );
    ratio(
        "HTTP/2 (h2c) upstream: CPU/request ≤ 1.1× bare Pingora",
        ("h2", Portcullis),
        ("h2", Bare),
        cpu,
        "µs",
        true,
        1.1,
    );
    // Issue 18: a cache hit against passthrough, side by side.
    ratio(
        "cache hit: CPU/request ≤ 1.0× passthrough (issue 18)",
        ("cache-hit", Portcullis),
        ("passthrough", Portcullis),
        cpu,
        "µs",
        true,
        1.0,
    );
    // Issue 17: the access log written to a file against none, side by side.
    ratio(
        "access log to a file: CPU/request ≤ 1.1× `access_log: off` (issue 17)",
        ("log-file", Portcullis),
        ("log-off", Portcullis),
        cpu,
        "µs",
        true,
        1.1,
    );
    ratio(
        "10,000 routes within 3% of 1 route (CPU/request)",
        ("routes-10k", Portcullis),
        ("passthrough", Portcullis),
        cpu,
        "µs",
        true,
        1.03,
    );
    ratio(
        "10,000 routes with header matching within 3% of 1 route (CPU/request, issue 18)",
        ("routes-10k-headers", Portcullis),
        ("passthrough", Portcullis),
        cpu,
        "µs",
        true,
        1.03,
    );
    ratio(
        "limits on within 5% of limits off (CPU/request)",
        ("limits", Portcullis),
        ("rs256", Portcullis),
        cpu,
        "µs",
        true,
        1.05,
    );
    ratio(
        "limits on: throughput ≥ 95% of limits off (issue 4)",
        ("limits", Portcullis),
        ("rs256", Portcullis),
        rps,
        "req/s",
        false,
        0.95,
    );
    ratio(
        "authenticated route: throughput ≥ 90% of `auth: none` (issue 3)",
        ("rs256", Portcullis),
        ("passthrough", Portcullis),
        rps,
        "req/s",
        false,
        0.90,
    );
    ratio(
        "the reach: passthrough CPU/request at HAProxy's level (≤ 1.1×)",
        ("passthrough", Portcullis),
        ("passthrough", Haproxy),
        cpu,
        "µs",
        true,
        1.1,
    );
    // Memory: rows of `cargo bench --bench memory`, `| what | entries | 12.3 MiB | ... |`.
    for (what, row) in [
        (
            "1M cached tokens under 150 MB (the larger row)",
            "cached tokens",
        ),
        ("1M rate-limit keys under 150 MB", "rate-limit buckets"),
    ] {
        // Of several rows (tokens with short and long claims), the largest decides.
        let parsed = |l: &str| -> (f64, f64) {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let entries = cells.get(2).and_then(|c| c.parse().ok());
            let mib = cells
                .get(3)
                .and_then(|c| c.trim_end_matches("MiB").trim().parse().ok());
            (entries.unwrap_or(f64::NAN), mib.unwrap_or(f64::NAN))
        };
        let line = memory.and_then(|m| {
            m.lines()
                .filter(|l| l.contains(row))
                .max_by(|a, b| parsed(a).1.total_cmp(&parsed(b).1))
        });
        let (entries, mib) = line.map_or((f64::NAN, f64::NAN), parsed);
        let mb = mib * 1.048_576;
        let full = entries >= 1_000_000.0;
        out.push(Target {
            what: what.into(),
            figures: if line.is_some() {
                format!("{} entries: {mb:.0} MB ({mib:.1} MiB)", thousands(entries))
            } else {
                "memory bench not run (`make bench` runs it)".into()
            },
            ratio: if full { mb / 150.0 } else { f64::NAN },
            by_cpu: None,
            at_most: true,
            limit: 1.0,
            rounds: Vec::new(),
        });
    }
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "")
}

/// A horizontal bar chart of CPU µs per request, one group of bars per case.
fn svg(cases: &[&Case], systems: &[System], runs: &[Run]) -> String {
    let (left, right, top, bar, gap, group_gap) = (300.0, 90.0, 56.0, 14.0, 2.0, 16.0);
    let width = 950.0;
    let plot = width - left - right;
    let max = runs
        .iter()
        .map(|r| r.cpu_us)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let step = [1.0, 2.0, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 200.0, 500.0]
        .into_iter()
        .find(|s| max / s <= 8.0)
        .unwrap_or(1000.0);
    let axis_max = (max / step).ceil() * step;
    let group_h = systems.len() as f64 * (bar + gap) + group_gap;
    let height = top + cases.len() as f64 * group_h + 30.0;
    let x = |v: f64| left + v / axis_max * plot;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="18" font-size="14" font-weight="bold">Proxy CPU time per request (µs, median; shorter is better)</text>
"#
    );
    for (i, sys) in systems.iter().enumerate() {
        let lx = left + i as f64 * 150.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="28" width="12" height="12" fill="{}"/><text x="{}" y="38">{}</text>"#,
            sys.colour(),
            lx + 16.0,
            sys.name()
        );
    }
    let mut v = 0.0;
    while v <= axis_max + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle" fill="#555">{v}</text>"##,
            x(v),
            height - 26.0,
            height - 12.0
        );
        v += step;
    }
    for (ci, case) in cases.iter().enumerate() {
        let y0 = top + ci as f64 * group_h;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y0 + systems.len() as f64 * (bar + gap) / 2.0 + 4.0,
            xml(case.title)
        );
        for (si, sys) in systems.iter().enumerate() {
            let y = y0 + si as f64 * (bar + gap);
            let Some(sum) = summarise(runs, case.id, *sys) else {
                continue;
            };
            let _ = writeln!(
                s,
                r##"<rect x="{left}" y="{y:.1}" width="{:.1}" height="{bar}" fill="{}"/><text x="{:.1}" y="{:.1}" fill="#333">{:.1}</text>"##,
                (x(sum.cpu_us) - left).max(0.5),
                sys.colour(),
                x(sum.cpu_us) + 4.0,
                y + bar - 3.0,
                sum.cpu_us
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[allow(clippy::too_many_arguments)]
fn report(
    s: &Settings,
    t: &Tools,
    w: &Work,
    cases: &[&Case],
    systems: &[System],
    runs: &[Run],
    idle_runs: &[IdleRun],
    failures: &[String],
    started: &str,
    took: Duration,
) -> String {
    let mut r = String::new();
    let mode = if s.full {
        "`cargo bench --bench load` (`make bench`)"
    } else {
        "smoke run (`cargo test --all-targets`): one short round, not a measurement"
    };
    let _ = writeln!(r, "# Load benchmark\n");
    let _ = writeln!(
        r,
        "{started}, {mode}; took {:.0} min. Commit `{}`.\n",
        took.as_secs_f64() / 60.0,
        command_output(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty"
            ]
        )
        .unwrap_or_default()
        .trim()
    );
    let _ = writeln!(r, "## Machine\n");
    for (k, v) in machine(t) {
        let _ = writeln!(r, "- {k}: {v}");
    }
    let others = median(runs.iter().map(|r| r.others_cpu0).collect());
    let _ = writeln!(r, "\n## Method\n");
    let pin = match t.pin {
        Some((p, c)) => format!(
            "The proxy under test is pinned to CPU {p}; wrk and the upstream to CPU {c} (`taskset`)."
        ),
        None => "Nothing is pinned (no `taskset` or fewer than two CPUs).".into(),
    };
    let _ = writeln!(
        r,
        "- {pin} One worker thread each: Portcullis `server.threads: 1`, bare Pingora \
         `threads = 1`, HAProxy `nbthread 1`, `wrk -t1`, a single-threaded tokio upstream \
         (`examples/upstream.rs`: keep-alive, a fixed 2-byte `200`).
- **CPU/req** is the proxy process's utime + stime from `/proc/<pid>/stat` over the run, \
         divided by the requests wrk completed: the fair figure when client, upstream and proxy \
         share two cores. **Of which user** is the utime part: the proxy's own code; the rest \
         is the kernel working for it (its socket calls, loopback TCP, wake-ups). Requests/s and p50/p99 (wrk, through a Lua `done` hook) follow from it \
         and from the client. **RSS** is the proxy's peak resident memory (VmHWM).
- Each round runs every 64-connection case against each system in turn (Portcullis, bare \
         Pingora, HAProxy), cases compared with each other next to each other; the \
         5,000-connection case runs its rounds after all of them. {} round(s) of {} s runs \
         after a {} s warm-up, each run on a freshly started proxy; every figure is the median \
         of the rounds. {} connections unless the case says otherwise; \
         every request `GET {PATH}`.
- Portcullis: `access_log: \"off\"`, one issuer from a `jwks_file` (RS256 + ES256 keys), \
         `audiences: [api]`, the token cache at its defaults; the route says `auth: none` or \
         `{{ issuers: [bench] }}`. Limits: `per_ip` and `per_user` at 1,000,000/s (never refuse). \
         10,000 routes: `/api/v1/svcNNNNN/items` prefixes, one in ten on an exact host and one \
         in ten on a wildcard, the request taking the deepest host-less one. With header \
         matching (`routes-10k-headers`, Portcullis only): every one of those routes also \
         holds `match.headers: {{ X-Tenant: acme }}`, which the requests carry, and one \
         host-less prefix in a hundred (the requests' among them) has a route before it that also \
         needs `x-beta: {{ present: true }}`, which they lack: the lookup checks it and passes on.
- HAProxy: plain forwarding (`http-reuse always`, no logging) for the cases without a \
         token; with one, `http_auth_bearer`, `jwt_header_query` for the algorithm, \
         `jwt_payload_query` for `iss`, `aud` and `exp`, and `jwt_verify` against a public-key \
         PEM compared with `-m int 1` (the same checks as Portcullis). Limits: stick tables \
         on `src` and on the token's `sub`.
- Bare Pingora (`examples/bare.rs`): Pingora's defaults, forwards every request to the \
         upstream whatever it carries; it is the floor the framework allows. It runs on the \
         allocator Portcullis runs on (mimalloc 2.x), so the two differ in what they do, not \
         in how they allocate.
- The upstream's wire: HTTP/1.1 over plain TCP, except in two cases. `https-upstream`: \
         TLS 1.3 to a certificate from the bench's own CA, verified by each system (Portcullis \
         `tls: {{ sni: localhost, ca_file }}`, bare Pingora through `SSL_CERT_FILE`, HAProxy \
         `ssl verify required ca-file`). `h2`: HTTP/2 by prior knowledge (h2c) to the \
         upstream's HTTP/2 port (the `h2` crate's server, the same `200 ok`): Portcullis \
         `protocol: h2c`, bare Pingora the same peer settings (ALPN h2 only, up to 100 streams \
         a connection), HAProxy `proto h2`. wrk speaks HTTP/1.1 to the proxies in every case.
- Every token new: wrk sends the tokens of a file of {} pre-minted RS256 tokens (one user \
         each) in turn; a system that completes more requests than that in a run sees tokens \
         again (marked below).
- Browser sessions (`session-cookie`, `session-redis`; Portcullis only, next to `rs256`, \
         their baseline): the route says `auth: {{ session: web, forward_access_token: true }}` \
         and every request carries one session's cookie, made by the bench as a login leaves \
         it (an RS256 access token valid for 30 days, so nothing is refreshed, an ID token, a \
         refresh token, the claims). `store: cookie`: the session sealed into the cookie \
         (AES-256-GCM). `store: redis`: the cookie holds the session's id, the record sits in \
         a `redis-server` on CPU 1 (`cluster.redis`). Both are served from the in-process \
         session cache after the first request, as a hot session is; the provider (discovery \
         and keys from a thread of the bench) is read at start-up only. After every \
         Portcullis run its `/metrics` must show every request answered 2xx by the upstream \
         and, in a session case, taken through the session cache: a session that does not \
         pass fails the case instead of measuring 401s.",
        s.rounds,
        s.seconds,
        s.warmup,
        CONNS,
        thousands(w.fresh_count as f64)
    );
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = writeln!(
        r,
        "- The 5,000-connection case opens every connection at the start of each run (listen \
         backlogs are capped by `net.core.somaxconn` = {somaxconn}), so its p99 is mostly \
         connection set-up; its CPU/req includes the accepts."
    );
    if others.is_finite() {
        let _ = writeln!(
            r,
            "- **Noise**: during the runs other processes (and the hypervisor) used a median \
             {:.0}% of CPU 0, which the proxy was meant to have to itself (per run below). \
             Other load on the machine lowers requests/s and raises latency directly, CPU per \
             request much less.",
            others * 100.0
        );
    }
    // Bare Pingora does the same work in every 64-connection case to a plain HTTP/1.1
    // upstream: its spread is the noise floor of CPU per request in this run.
    let floor: Vec<f64> = cases
        .iter()
        .filter(|c| c.connections == CONNS && c.wire == Wire::Plain)
        .filter_map(|c| summarise(runs, c.id, System::Bare).map(|m| m.cpu_us))
        .collect();
    if floor.len() > 1 {
        let (lo, hi) = floor
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let _ = writeln!(
            r,
            "- **Noise floor**: bare Pingora forwards the same way in all {} 64-connection cases \
             to a plain HTTP/1.1 upstream (requests with or without a token); its median CPU/req ranged {lo:.1}–{hi:.1} µs, \
             a {:.0}% spread. Ratios closer to their limit than that are not decided by this run.",
            floor.len(),
            (hi / lo - 1.0) * 100.0
        );
    }

    let _ = writeln!(r, "\n## Results (medians)\n");
    let _ = writeln!(
        r,
        "| case | system | what it does | req/s | p50 | p99 | CPU/req | of which user | peak RSS | others on CPU 0 | runs |"
    );
    let _ = writeln!(r, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for case in cases {
        let conns = if case.connections == CONNS {
            String::new()
        } else {
            format!(" ({} conns)", thousands(case.connections as f64))
        };
        for sys in systems.iter().filter(|sys| case.runs_on(**sys)) {
            let Some(m) = summarise(runs, case.id, *sys) else {
                let _ = writeln!(
                    r,
                    "| {}{conns} | {} | {} | failed | | | | | | | 0 |",
                    case.id,
                    sys.name(),
                    what_it_does(case, *sys)
                );
                continue;
            };
            let wrapped = case.fresh_tokens
                && *sys != System::Bare
                && runs.iter().any(|x| {
                    x.case == case.id && x.system == *sys && x.requests > w.fresh_count as u64
                });
            let _ = writeln!(
                r,
                "| {}{conns} | {} | {} | {}{} | {} | {} | **{:.1} µs** | {:.1} µs | {:.0} MiB | {:.0}% | {} |",
                case.id,
                sys.name(),
                what_it_does(case, *sys),
                thousands(m.rps),
                if wrapped { " (tokens repeated)" } else { "" },
                latency(m.p50_us),
                latency(m.p99_us),
                m.cpu_us,
                m.user_us,
                m.rss_mib,
                m.others_cpu0 * 100.0,
                m.runs
            );
        }
    }
    let _ = writeln!(r, "\n![CPU per request](latest.svg)\n");

    let memory = s
        .memory_table
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .filter(|m| m.contains('|'));
    let _ = writeln!(r, "## Targets (issue 5), from this run\n");
    if !s.full {
        let _ = writeln!(
            r,
            "Smoke run: debug builds and one second per case, so these verdicts mean nothing.\n"
        );
    }
    let _ = writeln!(
        r,
        "Throughput targets also give the ratio from CPU per request (the requests one core of \
         proxy CPU serves): other load on the client's core lowers requests/s for reasons \
         outside the proxy, CPU per request much less. Where the two disagree, both verdicts \
         are shown.\n"
    );
    let _ = writeln!(
        r,
        "\"Per round\" is the same ratio within each round (the runs it compares are seconds \
         apart): when the rounds fall on both sides of the limit the verdict reads **at the \
         limit**, with the median's verdict beside it; one run of this machine does not decide \
         such a target.\n"
    );
    let _ = writeln!(r, "| target | figures | ratio | per round | |");
    let _ = writeln!(r, "|---|---|---:|---:|---|");
    for tg in targets(runs, memory.as_deref()) {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} |",
            tg.what,
            tg.figures,
            tg.ratio_text(),
            tg.spread_text(),
            tg.verdict()
        );
    }
    let _ = writeln!(
        r,
        "\nFor scale, issue 5 measured on one core: HAProxy passthrough about 13 µs/request, \
         RS256 `jwt_verify` about 36 µs, ES256 about 73 µs, bare Pingora about 22 µs; raw \
         RSA-2048 verify about 13 µs, P-256 about 42 µs."
    );
    if let (Some(a), Some(b)) = (
        summarise(runs, "conns-5000", System::Portcullis),
        summarise(runs, "passthrough", System::Portcullis),
    ) {
        let _ = writeln!(
            r,
            "5,000 vs 64 connections (Portcullis, no target): CPU/request {:.2}×, \
             requests/s {:.2}×.",
            a.cpu_us / b.cpu_us,
            a.rps / b.rps
        );
    }

    let _ = writeln!(
        r,
        "\nThe profiling pass behind these figures, with instruction counts before and after \
         each change: [profiling.md](profiling.md)."
    );

    if !idle_runs.is_empty() {
        let _ = writeln!(r, "\n## Idle connections (case `{IDLE}`)\n");
        r.push_str(&idle_table(s, idle_runs));
    }

    let _ = writeln!(r, "\n## Memory (`cargo bench --bench memory`)\n");
    match &memory {
        Some(m) => {
            let _ = writeln!(
                r,
                "Filled through the library API, each case in a process of its own, resident \
                 memory read before and after.\n\n{}",
                m.trim()
            );
        }
        None => {
            let _ = writeln!(
                r,
                "Not run in this invocation (`make bench` runs it first)."
            );
        }
    }

    if !failures.is_empty() {
        let _ = writeln!(r, "\n## Failures\n");
        for f in failures {
            let _ = writeln!(r, "- {}", f.replace('|', "\\|"));
        }
    }

    let _ = writeln!(
        r,
        "\n<details><summary>Every run</summary>\n\n| case | system | round | req/s | p50 | p99 | CPU/req | RSS | requests | socket errors | proxy busy | others on CPU 0 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} | {} | {:.1} µs | {:.0} MiB | {} | {} | {:.0}% | {:.0}% |",
            run.case,
            run.system.name(),
            run.round + 1,
            thousands(run.rps),
            latency(run.p50_us),
            latency(run.p99_us),
            run.cpu_us,
            run.rss_kib as f64 / 1024.0,
            thousands(run.requests as f64),
            run.socket_errors,
            run.busy * 100.0,
            run.others_cpu0 * 100.0
        );
    }
    let _ = writeln!(r, "\n</details>");
    r
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

/// The verdict rules, checked on every run (the smoke run has one round, so its own report
/// never shows "at the limit").
fn check_verdicts() {
    let target = |ratio: f64, rounds: &[f64]| Target {
        what: String::new(),
        figures: String::new(),
        ratio,
        by_cpu: None,
        at_most: true,
        limit: 1.1,
        rounds: rounds.to_vec(),
    };
    for (ratio, rounds, expect) in [
        (1.05, &[1.03, 1.05, 1.08][..], "**holds**"),
        (1.15, &[1.12, 1.15, 1.2][..], "**missed**"),
        (
            1.05,
            &[1.03, 1.05, 1.17][..],
            "**at the limit** (median: holds)",
        ),
        (
            1.12,
            &[1.03, 1.12, 1.17][..],
            "**at the limit** (median: missed)",
        ),
        (1.05, &[1.05][..], "**holds**"),
        (f64::NAN, &[][..], "not measured"),
    ] {
        let got = target(ratio, rounds).verdict();
        assert_eq!(got, expect, "verdict of {ratio} with rounds {rounds:?}");
    }
    let mut throughput = target(1.6, &[1.45, 1.6]);
    throughput.at_most = false;
    throughput.limit = 1.5;
    throughput.by_cpu = Some(1.4);
    assert_eq!(
        throughput.verdict(),
        "**at the limit** (median: holds) (by CPU/req: missed)"
    );
    assert_eq!(throughput.spread_text(), "1.45–1.60×");
}

fn main() {
    let started = Instant::now();
    check_verdicts();
    let s = settings();
    let mut failures = Vec::new();
    let Some(t) = tools(&s, &mut failures) else {
        if failures.is_empty() {
            return; // wrk missing outside CI: skipped, said why.
        }
        for f in &failures {
            eprintln!("load: {f}");
        }
        std::process::exit(1);
    };
    let when = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let work = tempfile::tempdir().unwrap();

    // The upstream: on the client's CPU, port chosen by itself and read from its first line.
    // It serves the same over TLS on a second port, for the HTTPS-upstream case, and over
    // HTTP/2 by prior knowledge (h2c) on a third, for the h2 case.
    let up_log = work.path().join("upstream.log");
    let (up_cert, up_key) = upstream_certificates(work.path());
    let mut upstream = spawn(
        pinned(
            t.pin.map(|p| p.1),
            &t.upstream,
            &[
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--tls-listen".into(),
                "127.0.0.1:0".into(),
                "--tls-cert".into(),
                up_cert.display().to_string(),
                "--tls-key".into(),
                up_key.display().to_string(),
                "--h2c-listen".into(),
                "127.0.0.1:0".into(),
            ],
        ),
        up_log.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let (up_addr, tls_up_addr, h2c_up_addr) = loop {
        let text = std::fs::read_to_string(&up_log).unwrap_or_default();
        let addr = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
        };
        if let (Some(a), Some(b), Some(c)) = (
            addr("listening on "),
            addr("tls listening on "),
            addr("h2c listening on "),
        ) {
            break (a, b, c);
        }
        if let Some(why) = upstream.exited() {
            eprintln!("load: the upstream exited: {why}");
            std::process::exit(1);
        }
        assert!(Instant::now() < deadline, "the upstream did not start");
        std::thread::sleep(Duration::from_millis(20));
    };

    let all = cases();
    let mut cases: Vec<&Case> = all
        .iter()
        .filter(|c| {
            s.cases
                .as_ref()
                .is_none_or(|l| l.iter().any(|id| id == c.id))
        })
        .collect();
    // The session cases' provider, and the Redis of the Redis store, which holds the
    // session's record from before the first run to after the last.
    let idp = serve_idp();
    let mut redis = None;
    if cases.iter().any(|c| c.session == Some(Store::Redis)) {
        if let Some(program) = &t.redis_server {
            match start_redis(&t, program, work.path()) {
                Ok(started) => redis = Some(started),
                Err(e) => failures.push(format!("session-redis: {e}")),
            }
        }
    }
    if redis.is_none() {
        cases.retain(|c| c.session != Some(Store::Redis));
    }
    let w = match prepare(
        &s,
        &t,
        work.path(),
        up_addr,
        tls_up_addr,
        h2c_up_addr,
        idp,
        redis.as_ref().map(|r| r.1),
    ) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("load: cannot prepare the sessions: {e}");
            std::process::exit(1);
        }
    };
    let mut systems = vec![System::Portcullis, System::Bare];
    if t.haproxy.is_some() {
        systems.push(System::Haproxy);
    }
    let total = cases
        .iter()
        .map(|c| systems.iter().filter(|sys| c.runs_on(**sys)).count())
        .sum::<usize>()
        * s.rounds;
    let mut runs = Vec::new();
    let mut n = 0;
    // Round by round, every 64-connection case in each: the drift of the machine over a run
    // then shows as a difference between rounds, which the per-round ratios see, not between
    // cases. The 5,000-connection case runs all its rounds after them: the kernel is still
    // tearing down its thousands of sockets when the next run starts, and charges that work to
    // whichever proxy runs then (in the one full run that put it inside the rounds, the
    // Portcullis passthrough runs that followed it read 35-38 µs, ~30 µs in runs before).
    let (steady, crowd): (Vec<&Case>, Vec<&Case>) =
        cases.iter().copied().partition(|c| c.connections == CONNS);
    let order = (0..s.rounds)
        .flat_map(|round| steady.iter().map(move |c| (round, *c)))
        .chain(
            crowd
                .iter()
                .flat_map(|c| (0..s.rounds).map(move |round| (round, *c))),
        );
    for (round, case) in order {
        for sys in systems.iter().filter(|sys| case.runs_on(**sys)) {
            n += 1;
            match run_one(&s, &t, &w, case, *sys, round) {
                Ok(run) => {
                    eprintln!(
                        "load [{n}/{total}] {} / {} / round {}: {} req/s, p99 {}, {:.1} µs CPU/req, {:.0} MiB",
                        case.id,
                        sys.name(),
                        round + 1,
                        thousands(run.rps),
                        latency(run.p99_us),
                        run.cpu_us,
                        run.rss_kib as f64 / 1024.0
                    );
                    runs.push(run);
                }
                Err(e) => {
                    let f = format!("{} / {} / round {}: {e}", case.id, sys.name(), round + 1);
                    eprintln!("load [{n}/{total}] FAILED {f}");
                    failures.push(f);
                }
            }
        }
    }
    let idle_selected = s
        .cases
        .as_ref()
        .is_none_or(|l| l.iter().any(|id| id == IDLE));
    let mut idle_runs = Vec::new();
    if idle_selected {
        let mut plan = vec![
            (System::Portcullis, false),
            (System::Portcullis, true),
            (System::Bare, false),
        ];
        if t.haproxy.is_some() {
            plan.extend([(System::Haproxy, false), (System::Haproxy, true)]);
        }
        for (sys, tls) in plan {
            let listener = if tls { "TLS" } else { "plain" };
            match idle_run(&s, &t, &w, sys, tls) {
                Ok(run) => {
                    eprintln!(
                        "load idle / {} / {listener}: {:.1} kB per idle connection, RSS {:.1} -> {:.1} -> {:.1} -> {:.1} MiB",
                        sys.name(),
                        run.per_conn_bytes() / 1000.0,
                        run.before_kib as f64 / 1024.0,
                        run.open_kib as f64 / 1024.0,
                        run.after_kib as f64 / 1024.0,
                        run.traffic_kib as f64 / 1024.0
                    );
                    idle_runs.push(run);
                }
                Err(e) => {
                    let f = format!("{IDLE} / {} / {listener}: {e}", sys.name());
                    eprintln!("load FAILED {f}");
                    failures.push(f);
                }
            }
        }
    }
    if let Some(why) = upstream.exited() {
        failures.push(format!("the upstream exited: {why}"));
    }
    drop(upstream);
    if let Some((mut proc, _)) = redis {
        if let Some(why) = proc.exited() {
            failures.push(format!("redis-server exited: {why}"));
        }
    }

    let text = report(
        &s,
        &t,
        &w,
        &cases,
        &systems,
        &runs,
        &idle_runs,
        &failures,
        &when,
        started.elapsed(),
    );
    std::fs::create_dir_all(&s.out).unwrap();
    std::fs::write(s.out.join("latest.md"), &text).unwrap();
    std::fs::write(s.out.join("latest.svg"), svg(&cases, &systems, &runs)).unwrap();
    eprintln!(
        "load: report in {} ({:.0} s)",
        s.out.join("latest.md").display(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        eprintln!("load: {} failure(s):", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}
