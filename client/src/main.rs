//! suidao-client: parses the command line and hands the work to `suidao_common`.

use clap::{CommandFactory, Parser};
use std::process::ExitCode;
use suidao_common::cli::{self, Common};

#[derive(Parser)]
#[command(
    name = "suidao-client",
    version,
    about = "suidao client: a TUN-based layer-3 VPN speaking the WireGuard protocol",
    long_about = "suidao client: a TUN-based layer-3 VPN speaking the WireGuard protocol.\n\nRun `up -c FILE` as root to bring a tunnel up (it needs CAP_NET_ADMIN, and write access to /var/run/wireguard for its control socket); `check -c FILE` shows what it would do. The standard `wg show` works against a running interface."
)]
struct Cli {
    #[command(subcommand)]
    command: Common,
}

fn main() -> ExitCode {
    cli::run("suidao-client", Cli::parse().command, Cli::command)
}
