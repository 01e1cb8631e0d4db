//! Measurements inside namespaces: ping round-trip times and iperf3 runs.

use crate::{Netns, Process};
use anyhow::{bail, Context, Result};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `ping -c COUNT -i INTERVAL`: the average round trip in milliseconds, or None when a reply
/// was missing.
pub fn ping_rtt(ns: &Netns, target: &str, count: u32, interval: &str) -> Result<Option<f64>> {
    let out = ns
        .command("ping")?
        .args([
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "2",
            "-q",
            target,
        ])
        .output()
        .context("running ping")?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "rtt min/avg/max/mdev = 0.021/0.034/0.051/0.011 ms"
    let avg = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse::<f64>().ok());
    Ok(avg)
}

/// Runs an iperf3 server in `server_ns` on `addr` and a client from `client_ns` with `args`;
/// the client's JSON report.
pub fn iperf3(
    server_ns: &Netns,
    client_ns: &Netns,
    addr: &str,
    args: &[&str],
) -> Result<serde_json::Value> {
    let mut server = Process::new(
        "iperf3 -s",
        server_ns
            .command("iperf3")?
            .args(["-s", "-B", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    // Wait until it listens on its control port: looked up in the namespace's socket table,
    // not by connecting (iperf3 takes a connection that closes at once for a test that
    // failed, and now and then resets the real client's control connection after it).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server_ns.run(|| listening_on(5201))? {
        if Instant::now() > deadline || !server.is_running() {
            bail!("iperf3 server on {addr} did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = client_ns
        .command("iperf3")?
        .args(["-c", addr, "--json"])
        .args(args)
        .output()
        .context("running iperf3 -c")?;
    server.stop();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() {
        bail!(
            "iperf3 -c {addr} {} failed: {}",
            args.join(" "),
            report["error"]
        );
    }
    Ok(report)
}

/// Whether a TCP socket of this thread's network namespace listens on `port` (its
/// `/proc/thread-self/net/tcp` and `tcp6`: local address `ADDR:PORT` in hex, state 0A).
fn listening_on(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|t| {
        std::fs::read_to_string(format!("/proc/thread-self/net/{t}")).is_ok_and(|table| {
            table.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
            })
        })
    })
}

/// Received TCP throughput of an iperf3 report, in bits per second.
pub fn tcp_bps(report: &serde_json::Value) -> f64 {
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}

/// Delivered UDP packets per second of an iperf3 `-u` report (sent less lost).
pub fn udp_pps(report: &serde_json::Value) -> f64 {
    let sum = &report["end"]["sum"];
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().unwrap_or(0.0);
    if seconds > 0.0 {
        (packets - lost).max(0.0) / seconds
    } else {
        0.0
    }
}

/// CPU time (user + system, all threads) that processes have used so far, in seconds.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which is in parentheses and may hold spaces):
            // utime and stime are the 12th and 13th of them.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / ticks_per_second
}

/// Context switches of every thread of `pids` so far (voluntary and not): each is a thread
/// going to sleep or being put aside, so over an idle spell they count the wake-ups.
pub fn context_switches(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The median of some numbers (NaN-free), or 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Two series measured side by side (element `i` of each in the same round): the median of
/// their ratios round by round, `a[i] / b[i]`, over the rounds where both are finite and `b`
/// is positive. None without such a round. Drift over the run (the machine's load, which moves
/// a round trip by a tenth and more within minutes) cancels within a round, so this is a
/// steadier comparison than the ratio of the two medians.
pub fn paired_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite() && **y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    (!ratios.is_empty()).then(|| median(&ratios))
}

/// Resident memory of a process, in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A counter of the namespace's UDP statistics (/proc/net/snmp: read through
/// /proc/thread-self, since /proc/net follows the process, not the thread; e.g. "InDatagrams",
/// "RcvbufErrors"), read from a thread inside the namespace.
pub fn udp_counter(ns: &Netns, name: &str) -> Result<u64> {
    let name = name.to_string();
    ns.run(move || -> Result<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(head), Some(values)) = (lines.next(), lines.next()) else {
            bail!("no Udp lines in /proc/net/snmp");
        };
        let i = head
            .split_whitespace()
            .position(|h| h == name)
            .with_context(|| format!("no UDP counter {name}"))?;
        Ok(values.split_whitespace().nth(i).unwrap_or("0").parse()?)
    })?
}

/// A `ping` running in the background (`-D`: each reply line carries its time), whose replies
/// a test counts, waits for and reads back. Stopped on drop.
pub struct Pinger {
    process: Process,
    out: std::path::PathBuf,
}

impl Pinger {
    /// `ping -i INTERVAL -W 1 -D TARGET` in `ns`, its output in `out`.
    pub fn start(
        ns: &Netns,
        target: &str,
        interval: &str,
        out: &std::path::Path,
    ) -> Result<Pinger> {
        let child = ns
            .command("ping")?
            .args(["-i", interval, "-W", "1", "-D", target])
            .stdout(std::fs::File::create(out)?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting ping")?;
        Ok(Pinger {
            process: Process::new("ping", child),
            out: out.to_path_buf(),
        })
    }

    /// The times (Unix seconds) of the replies so far.
    pub fn replies(&self) -> Vec<f64> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect()
    }

    /// Waits until `n` more replies than now have come (true), or `within` passes (false).
    pub fn wait_replies(&self, n: usize, within: Duration) -> bool {
        let target = self.replies().len() + n;
        let deadline = Instant::now() + within;
        while self.replies().len() < target {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Stops it (SIGINT, so it prints its summary) and returns (transmitted, received).
    pub fn stop(&mut self) -> (u64, u64) {
        let _ = self.process.signal(nix::sys::signal::Signal::SIGINT);
        self.process.wait_timeout(Duration::from_secs(5));
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let numbers: Vec<u64> = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("")
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|x| x.parse().ok())
            .collect();
        (
            numbers.first().copied().unwrap_or(0),
            numbers.get(1).copied().unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(super::median(&[]), 0.0);
    }

    /// Round by round: a round where both were slow counts by its ratio alone (2.0 against
    /// 2.5: 0.8), not by how slow it was; a round where one figure is missing is left out.
    #[test]
    fn paired_ratio_compares_round_by_round() {
        let a = [1.0, 2.0, 0.9, f64::NAN];
        let b = [1.0, 2.5, 1.0, 1.0];
        assert_eq!(super::paired_ratio(&a, &b), Some(0.9));
        assert_eq!(super::paired_ratio(&[1.0], &[0.0]), None);
        assert_eq!(super::paired_ratio(&[], &[]), None);
    }
}
