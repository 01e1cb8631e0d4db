//! Helpers shared by the end-to-end tests.

pub mod attack;
pub mod badnet;
pub mod core_peer;
pub mod daemon;
pub mod etc;
pub mod icmp;
pub mod transfer;
pub mod vpn;

use std::time::{Duration, Instant};

/// Waits up to `within` for `cond` (checked every 50 ms); whether it came true.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The veth end in `ns` (a lab host's underlay link).
pub fn veth(ns: &suidao_lab::Netns) -> anyhow::Result<String> {
    let links = suidao_lab::suidao::run(ns, "ip", &["-o", "link", "show", "type", "veth"])?;
    let name = links.split(": ").nth(1).unwrap_or_default();
    match name.split('@').next() {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => anyhow::bail!("no veth in {}", ns.name()),
    }
}

/// Runs `suidao-lab ARGS` to its end as a person would, output captured: its pid (the lab
/// names its namespaces after it) and what it printed.
pub fn run_lab(args: &[&str]) -> anyhow::Result<(u32, std::process::Output)> {
    use std::process::{Command, Stdio};
    let child = Command::new(suidao_lab::suidao::bin_path("suidao-lab")?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    Ok((pid, child.wait_with_output()?))
}
