//! The `portcullis` command: parses the command line, sets up logging, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::reload::Reloader;

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
    /// Validate a config file: exit 0 when valid, else 1 with every error (field path and line).
    Check {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a self-contained demo: an echo upstream behind a generated config.
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
    },
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
    match cli.command {
        Command::Check { config } => match Reloader::from_file(&config) {
            Ok(reloader) => {
                let rt = reloader.current();
                println!(
                    "{}: ok ({} listeners, {} upstreams, {} routes)",
                    config.display(),
                    rt.config.listeners.len(),
                    rt.pools.len(),
                    rt.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            init_logging();
            let reloader = match Reloader::from_file(&config) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            match portcullis::server::serve(reloader, |_| {}) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            listen,
            admin,
            echo,
        } => {
            init_logging();
            let ports = portcullis::demo::DemoPorts {
                listen,
                admin,
                echo,
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
