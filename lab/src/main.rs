//! suidao-lab: the Linux virtual-network classics (network namespaces, veth pairs, bridges,
//! TUN devices) as one command, with a suidao tunnel shown working across them.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use suidao_lab::topology::Spec;
use suidao_lab::{bench, demo, demo_l2, down, interrupt};

#[derive(Parser)]
#[command(
    name = "suidao-lab",
    version,
    about = "Network namespaces, veth pairs and bridges as one command, and a suidao tunnel across them",
    long_about = "Network namespaces, veth pairs and bridges as one command, and a suidao tunnel across them.\n\n\
Everything the lab creates is named sdlab-* and is removed when it ends (also on Ctrl-C or a failed \
step), unless --keep is given; `suidao-lab down` removes leftovers. Needs root."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a topology, run suidao across it, ping every pair, print a summary and PASS/FAIL,
    /// then tear everything down.
    Demo {
        /// p2p (two hosts, one veth pair), hub (a server and clients on a bridge), site (two
        /// LANs joined by the tunnel), nat (a client behind NAT that roams), l2 (one Ethernet
        /// segment at two sites: suidao's layer-2 mode, with ARP, broadcast, IPv6 neighbour
        /// discovery and DHCP across) or vxlan (the same segment as VXLAN over a layer-3 tunnel
        /// to wireguard-go).
        #[arg(default_value = "hub")]
        topology: String,
        /// Clients of the hub topology.
        #[arg(long, default_value_t = 3)]
        clients: usize,
        /// Load the topology from a TOML file instead (same fields as the built-in ones).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Print each step as the equivalent `ip` command before doing it.
        #[arg(long)]
        explain: bool,
        /// Leave the topology and the tunnel up, and print how to explore them.
        #[arg(long)]
        keep: bool,
    },
    /// Remove everything the lab made: sdlab-* namespaces and the processes in them, stale
    /// control sockets, temporary configs.
    Down,
    /// Measure the raw veth link, suidao and wireguard-go side by side on p2p.
    Bench {
        /// Repetitions (medians are reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// suidao's data-path workers at both ends (`workers` in the config; default: the
        /// config's default, one per two CPUs).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
        workers: Option<u32>,
        /// Another build of suidao (a folder with its suidao-client and suidao-server),
        /// measured beside this one as "suidao before": a change's effect in one run.
        #[arg(long, value_name = "DIR")]
        before: Option<std::path::PathBuf>,
        /// Only the hub row (client → server beside client → client).
        #[arg(long)]
        hub_only: bool,
        /// l3 (the default: suidao beside the raw link and the other implementations, then
        /// the hub) or l2 (a layer-2 suidao pair beside the layer-3 one and the raw link).
        #[arg(long, value_parser = ["l3", "l2"], default_value = "l3")]
        mode: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !suidao_lab::require::is_root() {
        eprintln!(
            "suidao-lab: needs root (it creates network namespaces and interfaces); try sudo"
        );
        return ExitCode::FAILURE;
    }
    if let Err(e) = interrupt::install() {
        eprintln!("suidao-lab: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Demo {
            topology,
            clients,
            file,
            explain,
            keep,
        } => {
            let run = match (file, topology.as_str()) {
                (None, "l2") => demo_l2::run(explain, keep),
                (None, "vxlan") => demo_l2::run_vxlan(explain, keep),
                (file, _) => match file {
                    Some(f) => Spec::load(&f),
                    None => Spec::builtin(&topology, clients),
                }
                .and_then(|spec| {
                    demo::run(demo::Options {
                        spec,
                        explain,
                        keep,
                    })
                }),
            };
            run.map(|pass| {
                if pass {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
        }
        Command::Down => down::down().map(|removed| {
            if removed.is_empty() {
                println!("nothing of the lab's is left");
            }
            for r in removed {
                println!("{r}");
            }
            ExitCode::SUCCESS
        }),
        Command::Bench {
            reps,
            seconds,
            json,
            workers,
            before,
            hub_only,
            mode,
        } => bench::run(bench::Options {
            reps: reps.max(1),
            seconds: seconds.max(1),
            json,
            workers,
            before,
            hub_only,
            l2: mode == "l2",
        })
        .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("suidao-lab: {e:#}");
            if interrupt::interrupted() {
                eprintln!("suidao-lab: everything it had built was removed");
            }
            ExitCode::FAILURE
        }
    }
}
