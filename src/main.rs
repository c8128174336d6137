//! The `portcullis` command: parses the command line, sets up logging, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::reload::Reloader;

/// mimalloc (2.x) as the process's allocator. Pingora allocates and frees several buffers, a
/// boxed session future and header maps per request, mostly above the sizes glibc's
/// per-thread cache serves; with glibc's `malloc` that was 13-14% of the proxy's CPU time.
/// mimalloc takes about 2 µs (7-9%) off the CPU time of every request and keeps the memory
/// targets (benches/results/profiling.md, "The allocator").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own C API, from the library the `mimalloc` crate links. Declared here rather
// than through `libmimalloc-sys`, whose declaration needs its `extended` feature and a new
// dependency (`cty`) for this one function.
extern "C" {
    fn mi_collect(force: bool);
}

/// Hand the memory the calling thread freed (and mimalloc's empty arenas) back to the
/// system now instead of on this thread's next allocations: the release hook of
/// `portcullis::memory`, run on each proxy worker once traffic stops after connections closed.
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: `void mi_collect(bool force)` takes no pointers and may be called from any
    // thread at any time; it only walks the calling thread's heap and the shared arenas.
    unsafe { mi_collect(true) }
}

/// An authenticating edge proxy on Pingora.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file. Reloads on SIGHUP, on a change of the file and on
    /// `POST /reload` at the admin endpoint.
    Run {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print every error at once, each with its field path and line:
    /// the shape errors of every section and list item, and the meaning errors of every part
    /// whose shape is valid. Warnings (such as no listeners) are printed but pass.
    #[command(
        after_help = "Exit status: 0 the config is valid (warnings may be printed), \
1 the config is invalid or cannot be read, 2 a usage error (such as no file given).",
        group(clap::ArgGroup::new("input").required(true).args(["config", "file"]))
    )]
    Check {
        /// The YAML config file (or give it as FILE).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The YAML config file, instead of `--config`.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Print the config's JSON Schema (draft 2020-12), as committed in
    /// config/portcullis.schema.json: `portcullis schema > config/portcullis.schema.json`.
    Schema,
    /// Developer tools for tokens: mint a test token, inspect one, publish a key as a JWKS.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Run a self-contained demo: an echo upstream and a development issuer behind a
    /// generated config.
    Demo {
        /// Proxy listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// The built-in echo upstream.
        #[arg(long, default_value = "127.0.0.1:8081")]
        echo: String,
        /// The built-in development issuer (discovery and JWKS).
        #[arg(long, default_value = "127.0.0.1:8082")]
        issuer: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a test token. `iat` and `exp` (now + 1h) are added unless the claims have them.
    Mint {
        /// PEM private key (PKCS#8 RSA/EC/Ed25519, or PKCS#1 RSA).
        #[arg(long, required_unless_present = "secret_env")]
        key: Option<PathBuf>,
        /// Environment variable holding an HMAC secret, instead of a key file.
        #[arg(long, conflicts_with = "key")]
        secret_env: Option<String>,
        /// The claims, a JSON object.
        #[arg(long)]
        claims: String,
        /// Algorithm; default: the key's (RS256, ES256, ES384, EdDSA; HS256 for a secret).
        #[arg(long)]
        alg: Option<String>,
        /// Key id for the header.
        #[arg(long)]
        kid: Option<String>,
    },
    /// Decode a token's header and claims. Never verifies, never uses the network.
    Inspect {
        /// The token; read from standard input when absent.
        token: Option<String>,
    },
    /// Print the public JWKS of a private key, for `jwks_file` or a test JWKS server.
    Jwks {
        /// PEM private key.
        #[arg(long)]
        key: PathBuf,
        /// Key id.
        #[arg(long)]
        kid: String,
    },
}

fn token_command(action: TokenCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    use portcullis::auth::{issuer::parse_algorithm, tools};
    match action {
        TokenCommand::Mint {
            key,
            secret_env,
            claims,
            alg,
            kid,
        } => {
            let alg = match alg.as_deref() {
                Some(name) => Some(
                    parse_algorithm(name).with_context(|| format!("unknown algorithm `{name}`"))?,
                ),
                None => None,
            };
            let token = match (key, secret_env) {
                (Some(path), _) => {
                    let pem = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    tools::mint(&pem, &claims, alg, kid.as_deref())?
                }
                (None, Some(var)) => {
                    let secret =
                        std::env::var(&var).with_context(|| format!("`{var}` is not set"))?;
                    let alg = alg.unwrap_or(jsonwebtoken::Algorithm::HS256);
                    tools::mint_hmac(secret.as_bytes(), &claims, alg, kid.as_deref())?
                }
                (None, None) => anyhow::bail!("give --key or --secret-env"),
            };
            println!("{token}");
        }
        TokenCommand::Inspect { token } => {
            let token = match token {
                Some(t) => t,
                None => {
                    std::io::read_to_string(std::io::stdin()).context("reading standard input")?
                }
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&tools::inspect(token.trim())?)?
            );
        }
        TokenCommand::Jwks { key, kid } => {
            let pem = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            let jwk = tools::public_jwk(&pem, &kid, true)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "keys": [jwk] }))?
            );
        }
    }
    Ok(())
}

/// Why `run` refuses a config without listeners, which `check` only warns about.
const NO_LISTENERS: &str =
    "no listeners: the config has no `listeners:`, so `run` would serve nothing";

/// `portcullis check`: every error at once on standard error; exit 0 valid, 1 invalid.
fn check(path: &std::path::Path) -> ExitCode {
    let compiled = portcullis::config::read(path)
        .and_then(|text| portcullis::generation::Generation::compile(&text, Some(path), None, 1));
    match compiled {
        Ok(generation) => {
            if generation.config.listeners.is_empty() {
                eprintln!("{}: warning: {NO_LISTENERS}", path.display());
            }
            println!(
                "{}: ok ({} listeners, {} upstreams, {} routes)",
                path.display(),
                generation.config.listeners.len(),
                generation.pools.len(),
                generation.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Pingora's debug and trace lines print whole request headers (Authorization, cookies)
    // and URIs with their query: whatever RUST_LOG asks, its crates stop at info.
    let no_pingora_debug = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO || !meta.target().starts_with("pingora")
    });
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .finish()
        .with(no_pingora_debug)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    portcullis::memory::set_release(release_freed_memory);
    match cli.command {
        Command::Check { config, file } => {
            let Some(config) = config.or(file) else {
                // clap requires one of them.
                return ExitCode::from(2);
            };
            check(&config)
        }
        Command::Run { config } => {
            init_logging();
            let reloader = match Reloader::from_file(&config) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            if reloader.current().config.listeners.is_empty() {
                eprintln!("{}: {NO_LISTENERS}", config.display());
                return ExitCode::FAILURE;
            }
            match portcullis::server::serve(reloader, |_| {}) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Schema => {
            print!("{}", portcullis::config::schema::json());
            ExitCode::SUCCESS
        }
        Command::Token { action } => match token_command(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis token: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo {
            listen,
            admin,
            echo,
            issuer,
        } => {
            init_logging();
            let ports = portcullis::demo::DemoPorts {
                listen,
                admin,
                echo,
                issuer,
            };
            match portcullis::demo::run(ports) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
