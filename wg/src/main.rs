//! suidao-wg: suidao's data path behind wireguard-go's command line, so that wg-quick (and
//! anything else that runs a userspace WireGuard) drives it unchanged:
//!
//! ```text
//! WG_QUICK_USERSPACE_IMPLEMENTATION=suidao-wg wg-quick up wg0
//! ```
//!
//! It makes the TUN interface and its control socket (`/var/run/wireguard/IFACE.sock`) and
//! nothing else; the key, the port, the mark and the peers come through the userspace API (`wg
//! setconf`, `wg set`), the addresses, MTU and routes from whoever runs it. Without
//! `--foreground` it goes to the background once both exist: it starts itself again in a
//! session of its own with `--foreground`, and the first process waits for the second to say
//! "ready" (or why not) on a pipe, then exits 0 (or 1, with the reason).

use clap::Parser;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use suidao_common::{cli, engine};

#[derive(Parser)]
#[command(
    name = "suidao-wg",
    version,
    about = "suidao's data path with wireguard-go's command line: a drop-in userspace WireGuard for wg-quick",
    long_about = "suidao's data path with wireguard-go's command line: a drop-in userspace WireGuard for wg-quick.\n\n\
It creates the TUN interface INTERFACE and its control socket /var/run/wireguard/INTERFACE.sock, and nothing else: \
configure it with `wg setconf`/`wg set` and `ip`, or let wg-quick do both:\n\n  \
WG_QUICK_USERSPACE_IMPLEMENTATION=suidao-wg wg-quick up wg0\n\n\
It runs until the interface is deleted (`ip link del INTERFACE`, as `wg-quick down` does) or it gets SIGINT or SIGTERM, \
then removes its socket. Logging: LOG_LEVEL=verbose|debug|error|silent as wireguard-go reads it (RUST_LOG, if set, wins; \
default: info). In the background the log goes nowhere unless LOG_LEVEL or RUST_LOG is set."
)]
struct Cli {
    /// Stay in the foreground (default: go to the background once the interface and its
    /// control socket exist). WG_PROCESS_FOREGROUND=1 does the same, as for wireguard-go.
    #[arg(short, long)]
    foreground: bool,
    /// The interface to create, e.g. wg0.
    interface: String,
}

const PROGRAM: &str = "suidao-wg";
/// The background process's end of the pipe the first process waits on.
const READY_FD: &str = "SUIDAO_WG_READY_FD";
/// What the background process writes on it once the interface and its socket exist.
const READY: &str = "ready\n";
/// How long the first process waits for that (setting up takes milliseconds).
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let foreground =
        cli.foreground || std::env::var("WG_PROCESS_FOREGROUND").is_ok_and(|v| v == "1");
    if !foreground {
        return match to_background(&cli.interface) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => cli::fail(PROGRAM, e),
        };
    }
    let Some(level) = log_level() else {
        return run(&cli.interface, take_ready_pipe());
    };
    cli::init_logging_or(level);
    run(&cli.interface, take_ready_pipe())
}

/// RUST_LOG's default from LOG_LEVEL (wireguard-go's words); None: log nothing.
fn log_level() -> Option<&'static str> {
    match std::env::var("LOG_LEVEL").as_deref() {
        Ok("verbose") | Ok("debug") => Some("debug"),
        Ok("error") => Some("error"),
        Ok("silent") if std::env::var_os("RUST_LOG").is_none() => None,
        _ => Some("info"),
    }
}

/// Runs the interface; tells the first process (if there is one) when it is ready, or why it
/// could not be made.
fn run(ifname: &str, pipe: Option<File>) -> ExitCode {
    let pipe = Arc::new(Mutex::new(pipe));
    let on_ready = pipe.clone();
    let ready = Box::new(move || {
        // Written once, then closed: the first process reads to the end.
        if let Some(mut f) = on_ready.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = f.write_all(READY.as_bytes());
        }
    });
    match engine::up_for_api(ifname, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(mut f) = pipe.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = write!(f, "{e}");
            }
            cli::fail(PROGRAM, e)
        }
    }
}

/// The pipe the first process gave (`SUIDAO_WG_READY_FD`), closed on exec from now on so that
/// nothing this process starts holds it open.
fn take_ready_pipe() -> Option<File> {
    let fd: RawFd = std::env::var(READY_FD).ok()?.parse().ok()?;
    std::env::remove_var(READY_FD);
    // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags; a descriptor that is
    // not open fails F_GETFD and is not used.
    unsafe {
        if fd < 3 || libc::fcntl(fd, libc::F_GETFD) < 0 {
            return None;
        }
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        // SAFETY: the descriptor is open, was given to this process for this alone, and is
        // owned by the File from here on.
        Some(File::from_raw_fd(fd))
    }
}

/// Whether `f` has something to read (or its writers are gone) within `within`.
fn readable_within(f: &File, within: std::time::Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut fds = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(within.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: one pollfd, valid for the call; the descriptor is open while `f` is.
        let n = unsafe { libc::poll(&mut fds, 1, ms) };
        if n >= 0 {
            return n > 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return true;
        }
    }
}

/// Starts this program again with `--foreground` in a session of its own, and waits until it
/// says the interface is ready (Ok) or why it is not (Err), or ends without saying.
fn to_background(ifname: &str) -> Result<(), String> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just made and are owned by these Files alone.
    let (mut reader, writer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let logs = std::env::var_os("LOG_LEVEL").is_some_and(|l| l != "silent")
        || std::env::var_os("RUST_LOG").is_some();
    let out = || {
        if logs {
            Stdio::inherit()
        } else {
            Stdio::null()
        }
    };
    let w = fds[1];
    let mut cmd = Command::new(exe);
    cmd.arg("--foreground")
        .arg(ifname)
        .env(READY_FD, w.to_string())
        .env_remove("WG_PROCESS_FOREGROUND")
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out());
    // SAFETY: between fork and exec only async-signal-safe calls: setsid (a session of its own,
    // away from the terminal and its signals) and fcntl (the pipe's write end stays open
    // across exec in the child alone).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::fcntl(w, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the background process: {e}"))?;
    drop(writer);
    // Read until the background process closes its end: after "ready", or after saying why
    // not, or by ending. One that neither answers nor ends within READY_WITHIN is stopped.
    let mut said = String::new();
    if !readable_within(&reader, READY_WITHIN) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "the background process did not make {ifname} within {} s: stopped; run with --foreground to see why",
            READY_WITHIN.as_secs()
        ));
    }
    let _ = reader.read_to_string(&mut said);
    if said == READY {
        return Ok(());
    }
    if !said.is_empty() {
        return Err(said);
    }
    let status = child
        .wait()
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    Err(format!(
        "the background process ended before {ifname} was ready ({status}); run with --foreground to see why"
    ))
}
