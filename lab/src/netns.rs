//! Named network namespaces, made the way `ip netns add` makes them (so `ip netns exec` and
//! `ip netns list` see them too), and removed when their guard drops.
//!
//! ```text
//! ip netns add NAME   ==  a thread unshare(CLONE_NEWNET)s and bind-mounts its
//!                         /proc/thread-self/ns/net onto /run/netns/NAME
//! ip netns exec NAME  ==  setns(open("/run/netns/NAME"), CLONE_NEWNET), then run
//! ip netns del NAME   ==  umount2(/run/netns/NAME, MNT_DETACH) and unlink it
//! ```

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    /// When false (see `keep`), drop leaves the namespace in place.
    owned: bool,
}

/// Makes /run/netns a shared mount point, as iproute2 does, so that a namespace unmounted in
/// one mount namespace goes away in all of them.
fn prepare_run_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
    let shared = || {
        mount(
            Some(""),
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared().is_ok() {
        return Ok(());
    }
    mount(
        Some(NETNS_DIR),
        NETNS_DIR,
        Some("none"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {NETNS_DIR} onto itself"))?;
    shared().with_context(|| format!("making {NETNS_DIR} a shared mount"))?;
    Ok(())
}

impl Netns {
    /// `ip netns add NAME`.
    pub fn create(name: &str) -> Result<Netns> {
        if name.is_empty() || name.contains('/') || name.len() > 64 {
            bail!("bad namespace name {name:?}");
        }
        prepare_run_dir()?;
        let path = Path::new(NETNS_DIR).join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| {
                format!(
                    "creating {} (does the namespace exist already?)",
                    path.display()
                )
            })?;
        let ns = Netns {
            name: name.to_string(),
            path: path.clone(),
            owned: true,
        };
        // A fresh thread, so that only it moves into the new namespace.
        let made = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting the new namespace on {}", path.display()))?;
            Ok(())
        })
        .join();
        match made {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("namespace thread panicked"),
        }
        // `lo` is down in a new namespace; bring it up, as every host has it.
        ns.netlink(|h| async move { Ok(crate::netlink::set_up(&h, "lo").await?) })?;
        Ok(ns)
    }

    /// An existing namespace, not owned: dropping it leaves the namespace alone.
    pub fn open(name: &str) -> Result<Netns> {
        let path = Path::new(NETNS_DIR).join(name);
        if !path.exists() {
            bail!("no network namespace {name}");
        }
        Ok(Netns {
            name: name.to_string(),
            path,
            owned: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leave the namespace in place when this guard drops (`suidao-lab --keep`).
    pub fn keep(&mut self) {
        self.owned = false;
    }

    /// Runs `f` on a thread that has joined this namespace. Sockets created there belong to
    /// the namespace for their whole life, whichever thread uses them later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering namespace {}", self.name))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| bail!("thread in namespace {} panicked", self.name))
        })
    }

    /// Runs an async netlink job against a connection opened inside this namespace.
    pub fn netlink<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce(rtnetlink::Handle) -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.run(|| -> Result<T> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .context("starting a tokio runtime for netlink")?;
            rt.block_on(async {
                let (conn, handle, _) =
                    rtnetlink::new_connection().context("opening a netlink socket")?;
                let task = tokio::spawn(conn);
                let r = f(handle).await;
                task.abort();
                r
            })
        })?
    }

    /// `ip netns exec NAME program ...`: a command that starts inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec and makes one system call,
        // setns, which is async-signal-safe; `file` stays open in the child until exec (CLOEXEC).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// `ip netns del NAME`, also for a name this process did not create (`suidao-lab down`).
    pub fn delete_path(path: &Path) -> Result<()> {
        // MNT_DETACH: processes still inside keep it alive until they exit, then it goes.
        let _ = umount2(path, MntFlags::MNT_DETACH);
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
    }

    /// Every namespace in /run/netns whose name starts with `prefix`.
    pub fn list(prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = Netns::delete_path(&self.path) {
                eprintln!(
                    "suidao-lab: could not remove namespace {}: {e:#}",
                    self.name
                );
            }
        }
    }
}
