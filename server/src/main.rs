//! suidao-server: parses the command line and hands the work to `suidao_common` (the engine
//! for `up`, the provisioning module for the client commands).

use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use suidao_common::cli::{self, Common};
use suidao_common::provision;

#[derive(Parser)]
#[command(
    name = "suidao-server",
    version,
    about = "suidao server: a TUN-based layer-3 VPN speaking the WireGuard protocol",
    long_about = "suidao server: a TUN-based layer-3 VPN speaking the WireGuard protocol.\n\nRun `up -c FILE` as root to bring a tunnel up (it needs CAP_NET_ADMIN, and write access to /var/run/wireguard for its control socket); `check -c FILE` shows what it would do; `add-client NAME -c FILE` provisions a client (then `reload`). The standard `wg show` works against a running interface."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Common(Common),
    /// Provision a client: keys, a pre-shared key, the next free addresses; appends a [[peer]]
    /// to the server's config and writes NAME.toml (suidao-client) and NAME.conf (wg-quick,
    /// the WireGuard apps). Then run `reload`.
    AddClient {
        /// The client's name: a label in the server's config, and the stem of NAME.toml and
        /// NAME.conf.
        name: String,
        /// The server's configuration file (TOML), which gains the client's [[peer]].
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// How clients reach this server (default: public_endpoint in [interface]).
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
        /// Where to write NAME.toml and NAME.conf (default: beside the server's config).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// The client's interface name in NAME.toml.
        #[arg(long, default_value = "sd0")]
        ifname: String,
        /// Also print NAME.conf as a QR code, for the WireGuard phone apps.
        #[arg(long)]
        qr: bool,
    },
    /// Remove a client's [[peer]] from the server's config. Then run `reload`.
    RemoveClient {
        /// The client's name, as `list-clients` shows it.
        name: String,
        /// The server's configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// List the server's clients: name, public key, addresses.
    ListClients {
        /// The server's configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

const PROGRAM: &str = "suidao-server";

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Common(c) => cli::run(PROGRAM, c, Cli::command),
        Command::AddClient {
            name,
            config,
            endpoint,
            out_dir,
            ifname,
            qr,
        } => {
            let req = provision::AddClient {
                server_config: &config,
                name: &name,
                endpoint: endpoint.as_deref(),
                out_dir: out_dir.as_deref(),
                ifname: Some(&ifname),
            };
            match provision::add_client(&req) {
                Ok(added) => {
                    let addrs: Vec<String> =
                        added.addresses.iter().map(|a| a.to_string()).collect();
                    println!("added client {name} ({})", addrs.join(", "));
                    println!("  {}  (suidao-client up -c ...)", added.toml_path.display());
                    println!(
                        "  {}  (wg-quick, WireGuard apps)",
                        added.conf_path.display()
                    );
                    if qr {
                        match provision::qr(&added.conf_text) {
                            Ok(code) => println!("{code}"),
                            Err(e) => return cli::fail(PROGRAM, e),
                        }
                    }
                    println!(
                        "run `{PROGRAM} reload -c {}` to let it in",
                        config.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => cli::fail(PROGRAM, e),
            }
        }
        Command::RemoveClient { name, config } => match provision::remove_client(&config, &name) {
            Ok(()) => {
                println!(
                    "removed client {name}; run `{PROGRAM} reload -c {}` to apply",
                    config.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => cli::fail(PROGRAM, e),
        },
        Command::ListClients { config } => match provision::list_clients(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => cli::fail(PROGRAM, e),
        },
    }
}
