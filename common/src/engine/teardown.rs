//! What `up` did, in order, so that the way down undoes exactly that in reverse: the netlink
//! changes (addresses, routes, rules, a sysctl), the name servers, the control socket file,
//! the endpoint memory's last write and the hooks. Every way out of `up` after its first
//! change goes through `undo`.

use super::endpoints::EndpointMemory;
use crate::netlink::{self, Added};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::warn;

/// One thing to undo.
pub(super) enum Undo {
    /// A netlink change.
    Net(Added),
    /// Name servers set through resolvconf or resolvectl.
    Dns(crate::dns::Undo),
    /// The control socket's file.
    SocketFile(PathBuf),
    /// The endpoint memory, written a last time.
    Endpoints(Arc<EndpointMemory>),
    /// Hook commands to run (`pre_down` first of all, `post_down` last of all).
    Hook {
        stage: &'static str,
        commands: Vec<String>,
        ifname: String,
    },
}

#[derive(Default)]
pub(super) struct Teardown {
    steps: Vec<Undo>,
}

impl Teardown {
    pub(super) fn push(&mut self, u: Undo) {
        self.steps.push(u);
    }

    /// Records a netlink change, if it changed anything.
    pub(super) fn net(&mut self, a: Option<Added>) {
        if let Some(a) = a {
            self.steps.push(Undo::Net(a));
        }
    }

    /// The netlink changes recorded so far.
    pub(super) fn net_items(&self) -> impl Iterator<Item = &Added> {
        self.steps.iter().filter_map(|u| match u {
            Undo::Net(a) => Some(a),
            _ => None,
        })
    }

    /// Stops tracking a netlink change (it is being undone now).
    pub(super) fn forget(&mut self, a: &Added) {
        if let Some(i) = self
            .steps
            .iter()
            .position(|u| matches!(u, Undo::Net(x) if x == a))
        {
            self.steps.remove(i);
        }
    }

    /// Undoes everything, last first; goes on past failures, each logged.
    pub(super) async fn undo(&mut self, h: &rtnetlink::Handle) {
        while let Some(step) = self.steps.pop() {
            let r = match step {
                Undo::Net(a) => netlink::remove(h, &a).await.map_err(|e| e.to_string()),
                Undo::Dns(d) => d
                    .run()
                    .map_err(|e| format!("taking back the name servers: {e}")),
                Undo::SocketFile(p) => match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("removing {}: {e}", p.display()))
                    }
                    _ => Ok(()),
                },
                Undo::Endpoints(m) => {
                    m.save();
                    Ok(())
                }
                Undo::Hook {
                    stage,
                    commands,
                    ifname,
                } => crate::hooks::run(stage, &commands, &ifname),
            };
            if let Err(e) = r {
                warn!("teardown: {e}");
            }
        }
    }
}
