//! suidao-server. The VPN itself (`up`, `status`, `check`) arrives with the engine; for now
//! this binary handles keys, interchangeably with `wg genkey` / `wg pubkey`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "suidao-server",
    version,
    about = "suidao server: a layer-3 VPN speaking the WireGuard protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new private key (base64), like `wg genkey`.
    Genkey,
    /// Read a private key on standard input and print its public key, like `wg pubkey`.
    Pubkey,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Genkey => {
            println!("{}", *suidao_common::keys::genkey_text());
            ExitCode::SUCCESS
        }
        Command::Pubkey => match suidao_common::keys::pubkey_text(std::io::stdin().lock()) {
            Ok(public) => {
                println!("{public}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("suidao-server pubkey: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
