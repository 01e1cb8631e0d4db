//! The commands both binaries share (`up`, `check`, `status`, `genkey`, `pubkey`), so that
//! `suidao-client` and `suidao-server` stay thin: parse, load, hand to the engine.

use crate::config::Config;
use crate::{engine, keys, status};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum Common {
    /// Bring the interface up and run in the foreground until SIGINT or SIGTERM, then remove
    /// everything that was added (addresses, routes, the control socket).
    Up {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration and print what `up` would do: interface, addresses, MTU,
    /// routes, peers. Changes nothing.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show running interfaces: peers, latest handshakes, transfer, drops by reason.
    Status {
        /// Interface name (default: every interface with a control socket).
        name: Option<String>,
        /// Take the interface name from this configuration file.
        #[arg(short, long, value_name = "FILE", conflicts_with = "name")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Read a private key on standard input and print its public key, like `wg pubkey`.
    Pubkey,
}

/// Logs to standard error; the level comes from RUST_LOG (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn fail(program: &str, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{program}: {msg}");
    ExitCode::FAILURE
}

pub fn run(program: &str, cmd: Common) -> ExitCode {
    match cmd {
        Common::Genkey => {
            println!("{}", *keys::genkey_text());
            ExitCode::SUCCESS
        }
        Common::Pubkey => match keys::pubkey_text(std::io::stdin().lock()) {
            Ok(public) => {
                println!("{public}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(program, format!("pubkey: {e}")),
        },
        Common::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", engine::describe(&c));
                ExitCode::SUCCESS
            }
            Err(e) => fail(program, e),
        },
        Common::Up { config } => {
            init_logging();
            let c = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(program, e),
            };
            match engine::up(c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(program, e),
            }
        }
        Common::Status { name, config, json } => {
            let names = match (name, config) {
                (Some(n), _) => vec![n],
                (None, Some(path)) => match Config::load(&path) {
                    Ok(c) => vec![c.interface.name],
                    Err(e) => return fail(program, e),
                },
                (None, None) => status::interfaces(),
            };
            if names.is_empty() {
                return fail(program, "no interface is up");
            }
            let mut all = Vec::new();
            for n in &names {
                match status::query(n) {
                    Ok(v) => all.push(v),
                    Err(e) => return fail(program, e),
                }
            }
            if json {
                let v = if all.len() == 1 {
                    all.remove(0)
                } else {
                    serde_json::Value::Array(all)
                };
                println!("{}", status::json(&v));
            } else {
                let texts: Vec<String> = all.iter().map(status::render).collect();
                print!("{}", texts.join("\n"));
            }
            ExitCode::SUCCESS
        }
    }
}
