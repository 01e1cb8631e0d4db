//! The engine: moves packets between the TUN interface and the UDP socket through the protocol
//! core, and runs the control plane around it.
//!
//! ```text
//!  per worker (`workers`; each has a TUN queue and a UDP socket on the listen port):
//!  thread tun→udp    TUN read → Device::encapsulate (in place) → UDP send
//!  thread udp→tun    UDP read → transport data: Device::receive (in place) → TUN write,
//!                                or straight back out to another peer (hairpin)
//!                              → handshake messages: bounded queue → handshake thread
//!  shared:
//!  thread handshake  Device::receive of initiations, responses, cookie replies: the costly
//!                    Diffie-Hellman work never stalls the data path. A backed-up queue
//!                    puts the device "under load" (cookies and rate limits).
//!  thread uapi       the WireGuard userspace API socket (`wg show`, `wg set`, `status`)
//!  main (tokio)      netlink setup and teardown, timers, signals
//! ```
//!
//! On SIGINT/SIGTERM the routes and addresses `up` added are removed in reverse order, the API
//! socket file is removed, and the process exits (the TUN interface goes with it).

use crate::config::{Config, InterfaceAddress, Table};
use crate::gro::Coalescer;
use crate::netlink::{self, Added, NetlinkError, Teardown};
use crate::tun::{Tun, IDEAL_BATCH_SIZE, MAX_READ};
use crate::uapi::{self, ApiState};
use crate::udp::{SendError, Udp};
use crate::{apply, clock, hooks, notify};
use quinn_udp::RecvMeta;
use rand_core::OsRng;
use std::collections::{HashMap, HashSet};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use suidao_proto::constants::{TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD};
use suidao_proto::keys::PublicKey;
use suidao_proto::messages::Message;
use suidao_proto::{ip, Device, DropReason, Endpoint, Outgoing, Received, Sent};
use tracing::{debug, info, warn};

/// Handshake messages waiting for the handshake thread, at most.
const HANDSHAKE_QUEUE: usize = 4096;
/// Past this many waiting, the device is under load (wireguard-go uses an eighth too).
const UNDER_LOAD_AT: usize = HANDSHAKE_QUEUE / 8;
/// How often the endpoint memory is compared with the peers' endpoints (and written when
/// different): often, so that a server killed right after a client connected still knows it.
const ENDPOINT_SAVE_EVERY: Duration = Duration::from_millis(250);
/// A peer whose endpoint is a host name gets it resolved again when it has had no handshake
/// for this long (or none at all), as WireGuard's `reresolve-dns.sh` does from cron...
const RERESOLVE_AFTER: Duration = Duration::from_secs(135);
/// ...at most this often.
const RERESOLVE_RETRY: Duration = Duration::from_secs(10);
/// Where the server remembers its peers' endpoints across restarts.
pub const STATE_DIR: &str = "/run/suidao";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn setup(msg: impl Into<String>) -> EngineError {
    EngineError::Setup(msg.into())
}

/// One data-path worker: a queue of the TUN interface, a UDP socket on the listen port, and a
/// thread per direction. Flows are spread over workers by the kernel: outgoing by the TUN's
/// per-flow queue choice, incoming by SO_REUSEPORT's per-sender socket choice, so the packets
/// of one flow (or one peer) always go through one worker, in order.
struct Worker {
    tun: Tun,
    udp: Udp,
    /// The outgoing path's buffers (see `TxState`).
    tx: std::sync::Mutex<TxState>,
}

/// What every thread shares.
struct Shared {
    device: Arc<Device>,
    workers: Vec<Worker>,
    hairpin: bool,
    own_addrs: Vec<IpAddr>,
    names: Arc<RwLock<HashMap<PublicKey, String>>>,
    /// Peers whose endpoint the config gives (not remembered across restarts).
    configured_endpoints: RwLock<HashSet<PublicKey>>,
    /// Peers whose endpoint is a host name, with it (`reresolve`).
    hostnames: RwLock<HashMap<PublicKey, String>>,
    handshakes: SyncSender<(Endpoint, Vec<u8>)>,
    queued_handshakes: AtomicUsize,
    stopping: AtomicBool,
    /// A thread died: go down.
    failed: Arc<AtomicBool>,
    /// Causes of failed sends and writes already logged (each is logged once, then counted).
    logged: std::sync::Mutex<HashSet<(DropReason, Option<i32>)>>,
}

impl Shared {
    /// Sends what the protocol asked for (handshakes, keepalives, cookie replies) from the
    /// first worker's socket: every worker's socket has the listen port.
    fn send_all(&self, out: &mut Vec<Outgoing>) {
        let Some(w) = self.workers.first() else {
            out.clear();
            return;
        };
        for o in out.drain(..) {
            if let Err(e) = w.udp.send_to(&o.bytes, o.to) {
                self.send_failed(o.to, &e);
            }
        }
    }

    /// Counts a failed send by its reason; each cause (reason and error number) is logged the
    /// first time, later ones only at debug level.
    fn send_failed(&self, to: Endpoint, e: &SendError) {
        let reason = if e.too_big() {
            DropReason::PacketTooBig
        } else {
            DropReason::SendError
        };
        self.device.count_engine_drop(reason, e.lost as u64);
        self.log_once(reason, e.error.raw_os_error(), || {
            format!("sending to {to}: {e}")
        });
    }

    fn tun_write_failed(&self, w: &Worker, e: &std::io::Error) {
        self.device.count_engine_drop(DropReason::TunWriteError, 1);
        self.log_once(DropReason::TunWriteError, e.raw_os_error(), || {
            format!("writing to {}: {e}", w.tun.name())
        });
    }

    fn log_once(&self, reason: DropReason, errno: Option<i32>, what: impl FnOnce() -> String) {
        let first = self
            .logged
            .lock()
            .map(|mut l| l.insert((reason, errno)))
            .unwrap_or(false);
        if first {
            warn!(
                "{} (counted as {}; further ones are not logged)",
                what(),
                reason.name()
            );
        } else {
            debug!("{}", what());
        }
    }

    fn peer_name(&self, id: suidao_proto::PeerId) -> String {
        let Some(info) = self.device.peer_info(id) else {
            return format!("peer {id}");
        };
        let names = self
            .names
            .read()
            .map(|n| n.get(&info.public_key).cloned())
            .ok()
            .flatten();
        names.unwrap_or_else(|| {
            let k = info.public_key.to_base64();
            format!("{}…", &k[..8])
        })
    }
}

/// A socket file that answers belongs to a running interface; one that does not is a leftover
/// of a killed process and is removed.
fn claim_socket_path(path: &Path, ifname: &str) -> Result<(), EngineError> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(setup(format!(
            "{ifname} is already up ({} answers); stop it first",
            path.display()
        )));
    }
    std::fs::remove_file(path)
        .map_err(|e| setup(format!("removing stale {}: {e}", path.display())))?;
    Ok(())
}

fn state_path(ifname: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{ifname}.endpoints"))
}

/// Endpoints remembered by an earlier run of this interface: `base64-key endpoint` lines.
fn load_endpoints(ifname: &str) -> HashMap<String, SocketAddr> {
    let text = std::fs::read_to_string(state_path(ifname)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, e) = l.split_once(' ')?;
            Some((k.to_string(), e.parse().ok()?))
        })
        .collect()
}

/// The endpoints worth remembering: those of peers with no endpoint in the config (roaming
/// clients, as a server sees them).
fn endpoints_text(device: &Device, configured: &HashSet<PublicKey>) -> String {
    device
        .peer_ids()
        .iter()
        .filter_map(|id| device.peer_info(*id))
        .filter(|p| !configured.contains(&p.public_key))
        .filter_map(|p| {
            p.endpoint
                .map(|e| format!("{} {e}\n", p.public_key.to_base64()))
        })
        .collect()
}

/// Writes the endpoint memory atomically; with nothing to remember, removes it.
fn save_endpoints(ifname: &str, text: &str) -> std::io::Result<()> {
    save_endpoints_in(Path::new(STATE_DIR), ifname, text)
}

fn save_endpoints_in(dir: &Path, ifname: &str, text: &str) -> std::io::Result<()> {
    let path = dir.join(format!("{ifname}.endpoints"));
    if text.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    write_private(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// Writes a new file readable by its owner only (it names peers' keys and addresses), from
/// its first byte: an old file in the way is removed, not reused with its mode.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Which of the peers' prefixes become routes through the interface, as `table` says: in the
/// main table every one but the default routes (`0.0.0.0/0`, `::/0`), which make a full
/// tunnel instead (see `full_tunnel`); in a table of the config's every one; with `off` none.
fn routed(
    table: Table,
    prefixes: &[suidao_proto::allowed_ips::Cidr],
) -> Vec<suidao_proto::allowed_ips::Cidr> {
    match table {
        Table::Off => Vec::new(),
        Table::Auto => prefixes
            .iter()
            .filter(|c| c.prefix_len() > 0)
            .copied()
            .collect(),
        Table::Id(_) => prefixes.to_vec(),
    }
}

/// The routing table the peers' routes go in (None: none are made).
fn route_table(table: Table) -> Option<u32> {
    match table {
        Table::Off => None,
        Table::Auto => Some(netlink::MAIN_TABLE),
        Table::Id(n) => Some(n),
    }
}

/// Routes `up` adds (see `routed`).
pub fn planned_routes(config: &Config) -> Vec<suidao_proto::allowed_ips::Cidr> {
    let all: Vec<_> = config
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter())
        .copied()
        .collect();
    routed(config.interface.table, &all)
}

/// The mark on suidao's own UDP packets: the config's `fwmark`, else, for a full tunnel, the
/// full tunnel's table number (as wg-quick does).
fn socket_mark(config: &Config) -> Option<u32> {
    config
        .interface
        .fwmark
        .or_else(|| (full_tunnel(config) != (false, false)).then_some(netlink::FULL_TUNNEL_TABLE))
}

/// Adds a route to `c` through `dev` in `table`; what to undo, if it was not there already.
async fn add_peer_route(
    h: &rtnetlink::Handle,
    c: &suidao_proto::allowed_ips::Cidr,
    dev: &str,
    table: u32,
) -> Result<Option<Added>, NetlinkError> {
    let (dst, len, dev) = (c.addr(), c.prefix_len(), dev.to_string());
    if table == netlink::MAIN_TABLE {
        let added = netlink::add_route(h, dst, len, &dev).await?;
        return Ok(added.then_some(Added::Route { dev, dst, len }));
    }
    let added = netlink::add_table_route(h, dst, len, &dev, table).await?;
    Ok(added.then_some(Added::TableRoute {
        dev,
        dst,
        len,
        table,
    }))
}

/// Which families are tunnelled in full (some peer's allowed IPs hold the default route, and
/// the routes go in the main table): (IPv4, IPv6).
pub fn full_tunnel(config: &Config) -> (bool, bool) {
    if config.interface.table != Table::Auto {
        return (false, false);
    }
    let all = config.peers.iter().flat_map(|p| p.allowed_ips.iter());
    let (mut v4, mut v6) = (false, false);
    for c in all.filter(|c| c.prefix_len() == 0) {
        if c.is_ipv4() {
            v4 = true;
        } else {
            v6 = true;
        }
    }
    (v4, v6)
}

/// A full tunnel, as wg-quick makes it: the default route goes into a table of its own,
/// which everything but suidao's own (marked) UDP packets looks up, while the main table still
/// wins for everything but its default route.
async fn configure_full_tunnel(
    h: &rtnetlink::Handle,
    config: &Config,
    td: &mut Teardown,
) -> Result<(), EngineError> {
    let name = &config.interface.name;
    let (v4, v6) = full_tunnel(config);
    for (on, v6, dst) in [
        (v4, false, IpAddr::from([0u8; 4])),
        (v6, true, IpAddr::from([0u8; 16])),
    ] {
        if !on {
            continue;
        }
        if netlink::add_table_route(h, dst, 0, name, netlink::FULL_TUNNEL_TABLE).await? {
            td.push(Added::TableRoute {
                dev: name.clone(),
                dst,
                len: 0,
                table: netlink::FULL_TUNNEL_TABLE,
            });
        }
        // Rules there already were left by a run that was killed (SIGKILL skips the teardown).
        let mark = socket_mark(config).unwrap_or(netlink::FULL_TUNNEL_TABLE);
        let left = netlink::del_leftover_rules(h, v6, mark).await?;
        if left > 0 {
            info!("full tunnel: removed {left} policy rule(s) left by an earlier run");
        }
        for rule in [
            netlink::FullTunnelRule::NotMarked(mark),
            netlink::FullTunnelRule::MainWithoutDefault,
        ] {
            if netlink::add_rule(h, v6, rule).await? {
                td.push(Added::Rule { v6, rule });
            }
        }
        if !v6 {
            // Reverse-path filtering must take the mark into account (wg-quick does the same).
            let path = "/proc/sys/net/ipv4/conf/all/src_valid_mark".to_string();
            if let Ok(old) = std::fs::read_to_string(&path) {
                if old.trim() != "1" && std::fs::write(&path, "1").is_ok() {
                    td.push(Added::Sysctl { path, old });
                }
            }
        }
        info!(
            "full tunnel for {}: default route in table {}",
            if v6 { "IPv6" } else { "IPv4" },
            netlink::FULL_TUNNEL_TABLE
        );
    }
    Ok(())
}

async fn configure(
    h: &rtnetlink::Handle,
    config: &Config,
    td: &mut Teardown,
) -> Result<(), EngineError> {
    let name = &config.interface.name;
    netlink::set_mtu(h, name, config.interface.mtu).await?;
    for InterfaceAddress { addr, prefix_len } in &config.interface.addresses {
        if netlink::add_addr(h, name, *addr, *prefix_len).await? {
            td.push(Added::Address {
                dev: name.clone(),
                addr: *addr,
                len: *prefix_len,
            });
        }
    }
    netlink::set_up(h, name).await?;
    if let Some(table) = route_table(config.interface.table) {
        for c in planned_routes(config) {
            if let Some(a) = add_peer_route(h, &c, name, table).await? {
                td.push(a);
            }
        }
    }
    configure_full_tunnel(h, config, td).await?;
    let dns = &config.interface.dns;
    if !dns.is_empty() {
        let undo = crate::dns::set(name, dns).map_err(setup)?;
        info!(
            "name servers for {name}: {} ({})",
            dns.entries().join(", "),
            undo.describe()
        );
        td.push(Added::Dns(undo));
    }
    Ok(())
}

/// `up`: runs the interface until SIGINT or SIGTERM, then removes what it added.
pub fn up(mut config: Config) -> Result<(), EngineError> {
    for f in config.resolve() {
        warn!(
            "{f}: the peer has no endpoint until its name resolves (tried again every {} s)",
            RERESOLVE_RETRY.as_secs()
        );
    }
    let ifname = config.interface.name.clone();
    let sock_path = uapi::socket_path(&ifname);
    claim_socket_path(&sock_path, &ifname)?;
    let hooks = config.interface.hooks.clone();
    hooks::run("pre_up", &hooks.pre_up, &ifname).map_err(setup)?;

    let worker_count = config
        .interface
        .workers
        .unwrap_or_else(crate::config::default_workers);
    let sockets = Udp::bind_group(config.interface.listen_port, worker_count)?;
    let listen_port = sockets[0].local_port()?;
    if let Some(mark) = socket_mark(&config) {
        for udp in &sockets {
            udp.set_mark(mark)
                .map_err(|e| setup(format!("marking the UDP sockets with {mark}: {e}")))?;
        }
    }
    let queues = Tun::create_queues(&ifname, worker_count).map_err(|e| name_taken(&ifname, e))?;
    let mut workers = Vec::with_capacity(worker_count);
    for (tun, udp) in queues.into_iter().zip(sockets) {
        tun.set_nonblocking()?;
        let tx = TxState::new(config.interface.mtu as usize, tun.offload());
        workers.push(Worker {
            tun,
            udp,
            tx: std::sync::Mutex::new(tx),
        });
    }

    let device = Arc::new(Device::new(config.interface.private_key.clone(), OsRng));
    device.set_mtu(config.interface.mtu as usize);
    // The config's peers go in by the same path a reload takes (on an empty device: all added).
    let plan = apply::plan(&device, &HashMap::new(), &desired_peers(&config, None))
        .map_err(|e| setup(e.to_string()))?;
    apply::apply_to_device(&device, &plan);
    let remembered = load_endpoints(&ifname);
    for p in config.peers.iter().filter(|p| p.endpoint.is_none()) {
        if let (Some(e), Some(id)) = (
            remembered.get(&p.public_key.to_base64()),
            device.peer_id(&p.public_key),
        ) {
            // A restarted server tells its clients at once that their sessions are gone.
            info!("{}: last seen at {e}, starting a handshake", p.label());
            let _ = device.set_endpoint(id, Some(*e), true);
        }
    }
    let names = plan.names;
    let names = Arc::new(RwLock::new(names));

    let (hs_tx, hs_rx) = sync_channel(HANDSHAKE_QUEUE);
    let shared = Arc::new(Shared {
        device: device.clone(),
        workers,
        hairpin: config.interface.hairpin,
        own_addrs: config.interface.addresses.iter().map(|a| a.addr).collect(),
        names: names.clone(),
        configured_endpoints: RwLock::new(configured_endpoints(&config)),
        hostnames: RwLock::new(hostnames(&config)),
        handshakes: hs_tx,
        queued_handshakes: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        failed: Arc::new(AtomicBool::new(false)),
        logged: Default::default(),
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let h = netlink::connect()?;
        // The control socket first: nothing is configured yet if it cannot be made.
        // CAP_NET_ADMIN makes the interface; the control socket needs a folder this user may
        // write to, which only root has by default: say so rather than a bare EACCES.
        let needs_root = |e: &std::io::Error| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!(
                    " (run as root, or make {} writable for this user: CAP_NET_ADMIN alone does not give that)",
                    uapi::SOCKET_DIR
                )
            } else {
                String::new()
            }
        };
        std::fs::create_dir_all(uapi::SOCKET_DIR).map_err(|e| {
            setup(format!(
                "creating {} (where the control socket goes): {e}{}",
                uapi::SOCKET_DIR,
                needs_root(&e)
            ))
        })?;
        let listener = {
            // The socket carries the private key (`get=1`): owner only.
            let old = set_umask(0o077);
            let l = UnixListener::bind(&sock_path);
            set_umask(old);
            l.map_err(|e| {
                setup(format!(
                    "creating {}: {e}{}",
                    sock_path.display(),
                    needs_root(&e)
                ))
            })?
        };
        let mut td = Teardown::default();
        if let Err(e) = configure(&h, &config, &mut td).await {
            td.undo(&h).await;
            let _ = std::fs::remove_file(&sock_path);
            return Err(e);
        }

        let (control_tx, mut control_rx) = tokio::sync::mpsc::unbounded_channel();
        let api = Arc::new(ApiState {
            ifname: ifname.clone(),
            device: device.clone(),
            listen_port,
            fwmark: socket_mark(&config),
            names: names.clone(),
            control: Some(control_tx),
            set_lock: Default::default(),
        });
        let failed = &shared.failed;
        spawn("uapi", failed, move || serve_api(listener, api))?;
        for i in 0..shared.workers.len() {
            let s = shared.clone();
            spawn("tun-to-udp", failed, move || tun_to_udp(&s, &s.workers[i]))?;
            let s = shared.clone();
            spawn("udp-to-tun", failed, move || udp_to_tun(&s, &s.workers[i]))?;
        }
        let s = shared.clone();
        spawn("handshakes", failed, move || handshakes(&s, hs_rx))?;
        let s = shared.clone();
        spawn("resolver", failed, move || reresolve(&s))?;

        info!(
            "{ifname} is up: public key {}, UDP port {listen_port}, {} peer(s)",
            device.public_key(),
            device.peer_ids().len()
        );
        let w0 = &shared.workers[0];
        info!(
            "{} worker(s); offloads: TUN segmentation {} (UDP {}), UDP GSO {} segments, UDP GRO {} segments",
            shared.workers.len(),
            if w0.tun.offload() { "on" } else { "off" },
            if w0.tun.udp_offload() { "on" } else { "off" },
            w0.udp.max_gso_segments(),
            w0.udp.gro_segments()
        );
        let mut live = Live {
            h: &h,
            td: &mut td,
            config,
            listen_port,
        };
        let result = match hooks::run("post_up", &hooks.post_up, &ifname) {
            Ok(()) => {
                notify::notify(&format!("READY=1\nSTATUS={ifname} is up"));
                // A panic in the loop (a bug) still ends in the teardown below.
                use futures_util::FutureExt;
                std::panic::AssertUnwindSafe(control_loop(
                    &shared,
                    &ifname,
                    &mut live,
                    &mut control_rx,
                ))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(setup("internal error (see the panic above): going down")))
            }
            Err(e) => Err(setup(e)),
        };

        notify::notify("STOPPING=1");
        shared.stopping.store(true, Ordering::Relaxed);
        info!("{ifname} going down");
        if let Err(e) = hooks::run("pre_down", &hooks.pre_down, &ifname) {
            warn!("{e}");
        }
        let _ = save_endpoints(
            &ifname,
            &endpoints_text(&device, &read_lock(&shared.configured_endpoints)),
        );
        for e in td.undo(&h).await {
            warn!("teardown: {e}");
        }
        let _ = std::fs::remove_file(&sock_path);
        if let Err(e) = hooks::run("post_down", &hooks.post_down, &ifname) {
            warn!("{e}");
        }
        result
    })
}

/// A TUN that cannot be made because a link of another kind has the name (the kernel says only
/// EINVAL): say which kind.
fn name_taken(ifname: &str, e: std::io::Error) -> EngineError {
    // (`Tun` words the error itself, keeping only its kind: EINVAL is InvalidInput.)
    if e.kind() != std::io::ErrorKind::InvalidInput {
        return e.into();
    }
    let kind = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|rt| {
            rt.block_on(async {
                let h = netlink::connect().ok()?;
                netlink::link_kind(&h, ifname).await.ok().flatten()
            })
        });
    match kind {
        Some(kind) if kind != "tun" => setup(format!(
            "an interface named {ifname} exists already, and it is a {kind}, not a TUN: choose another name, or remove it (ip link del {ifname})"
        )),
        _ => e.into(),
    }
}

/// What a reload needs: the netlink connection, what `up` added, and the config in force.
struct Live<'a> {
    h: &'a rtnetlink::Handle,
    td: &'a mut Teardown,
    config: Config,
    listen_port: u16,
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn hostnames(config: &Config) -> HashMap<PublicKey, String> {
    config
        .peers
        .iter()
        .filter_map(|p| p.endpoint_host().map(|h| (p.public_key, h.to_string())))
        .collect()
}

/// Resolves a peer's endpoint host name again while its handshakes fail (none for
/// RERESOLVE_AFTER, or never), at most every RERESOLVE_RETRY: a server whose name moved to
/// another address is reached there without a restart (what WireGuard users run
/// `reresolve-dns.sh` from cron for). Its own thread: a lookup may take seconds.
fn reresolve(s: &Shared) {
    let mut tried: HashMap<PublicKey, Instant> = HashMap::new();
    while !s.stopping.load(Ordering::Relaxed) {
        std::thread::sleep(clock::real(Duration::from_secs(1)));
        let hosts = read_lock(&s.hostnames).clone();
        tried.retain(|k, _| hosts.contains_key(k));
        for (key, host) in hosts {
            let now = clock::now();
            let Some((id, info)) = s
                .device
                .peer_id(&key)
                .and_then(|id| Some((id, s.device.peer_info(id)?)))
            else {
                continue;
            };
            let stale = info
                .last_handshake
                .is_none_or(|t| now.since_epoch.saturating_sub(t) >= RERESOLVE_AFTER);
            if !stale
                || tried
                    .get(&key)
                    .is_some_and(|t| now.since(*t) < RERESOLVE_RETRY)
            {
                continue;
            }
            tried.insert(key, now.instant);
            match crate::config::resolve_endpoint(&host) {
                Ok(a) if info.endpoint != Some(a) => {
                    info!(
                        "{}: {host} resolves to {a} now (was {}): trying there",
                        s.peer_name(id),
                        info.endpoint.map_or("none".into(), |e| e.to_string())
                    );
                    let _ = s.device.set_endpoint(id, Some(a), true);
                }
                Ok(_) => {}
                Err(e) => debug!("{}: {e}", s.peer_name(id)),
            }
        }
    }
}

fn configured_endpoints(config: &Config) -> HashSet<PublicKey> {
    config
        .peers
        .iter()
        .filter(|p| p.endpoint_text.is_some())
        .map(|p| p.public_key)
        .collect()
}

/// The peers' routes `up` (or an earlier change) added through the interface in `table`,
/// each with its teardown entry.
fn our_routes(live: &Live<'_>, table: u32) -> Vec<(suidao_proto::allowed_ips::Cidr, Added)> {
    let dev = &live.config.interface.name;
    live.td
        .items()
        .iter()
        .filter_map(|a| {
            let (d, dst, len) = match a {
                Added::Route { dev, dst, len } if table == netlink::MAIN_TABLE => (dev, dst, len),
                Added::TableRoute {
                    dev,
                    dst,
                    len,
                    table: t,
                } if *t == table => (dev, dst, len),
                _ => return None,
            };
            if d != dev {
                return None;
            }
            Some((suidao_proto::allowed_ips::Cidr::new(*dst, *len)?, a.clone()))
        })
        .collect()
}

/// Removes a peer route `add_peer_route` added.
async fn del_peer_route(h: &rtnetlink::Handle, a: &Added) -> Result<(), NetlinkError> {
    match a {
        Added::Route { dev, dst, len } => netlink::del_route(h, *dst, *len, dev).await,
        Added::TableRoute {
            dev,
            dst,
            len,
            table,
        } => netlink::del_table_route(h, *dst, *len, dev, *table).await,
        _ => Ok(()),
    }
}

/// Debug builds only: `SUIDAO_TEST_FAIL_ROUTE=PREFIX` makes adding a route to PREFIX fail, so
/// the tests can see a change refused at its last step and taken back whole.
fn injected_route_failure(c: &suidao_proto::allowed_ips::Cidr) -> Option<String> {
    #[cfg(debug_assertions)]
    {
        let bad = std::env::var("SUIDAO_TEST_FAIL_ROUTE").ok()?;
        (bad == c.to_string())
            .then(|| format!("adding a route to {c}: refused (SUIDAO_TEST_FAIL_ROUTE)"))
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = c;
        None
    }
}

/// Makes the interface's peers `desired` (see `apply`): checks everything first, adds the
/// routes the new set needs (taking them back if one fails), then changes the device, then
/// removes the routes no longer needed. Refused: nothing changed.
async fn apply_peers(
    shared: &Arc<Shared>,
    live: &mut Live<'_>,
    desired: &[apply::PeerSpec],
) -> Result<String, String> {
    let plan = apply::plan(&shared.device, &read_lock(&shared.names), desired)
        .map_err(|e| e.to_string())?;
    let dev = live.config.interface.name.clone();
    // `table = "off"`: the person routes; the device alone changes.
    let Some(table) = route_table(live.config.interface.table) else {
        apply::apply_to_device(&shared.device, &plan);
        *write_lock(&shared.names) = plan.names.clone();
        return Ok(plan.summary());
    };
    let have = our_routes(live, table);
    // (In the main table, default routes make a full tunnel, set up by `up` only.)
    let want = routed(live.config.interface.table, &plan.prefixes);
    let missing: Vec<_> = want
        .iter()
        .filter(|c| !have.iter().any(|(h, _)| h == *c))
        .copied()
        .collect();
    // A prefix the main table already routes through another interface would not reach the
    // tunnel (and adding ours would be refused): refuse the change before anything moves.
    if !missing.is_empty() && table == netlink::MAIN_TABLE {
        let elsewhere = netlink::main_routes_elsewhere(live.h, &dev)
            .await
            .map_err(|e| e.to_string())?;
        for c in &missing {
            if let Some((_, _, i)) = elsewhere
                .iter()
                .find(|(d, l, _)| *d == c.addr() && *l == c.prefix_len())
            {
                return Err(format!(
                    "{c} is already routed through another interface (index {i}), not {dev}"
                ));
            }
        }
    }
    let mut added = Vec::new();
    for c in &missing {
        let r = match injected_route_failure(c) {
            Some(e) => Err(e),
            None => add_peer_route(live.h, c, &dev, table)
                .await
                .map_err(|e| e.to_string()),
        };
        match r {
            Ok(Some(a)) => added.push(a),
            Ok(None) => {}
            Err(e) => {
                for a in added.iter().rev() {
                    if let Err(e) = del_peer_route(live.h, a).await {
                        warn!("taking back a route: {e}");
                    }
                }
                return Err(e);
            }
        }
    }
    for a in added {
        live.td.push(a);
    }
    apply::apply_to_device(&shared.device, &plan);
    *write_lock(&shared.names) = plan.names.clone();
    for (c, a) in have.iter().filter(|(c, _)| !want.contains(c)) {
        live.td.forget(a);
        // The device no longer routes there; a route that cannot be removed now goes with
        // the interface at exit.
        if let Err(e) = del_peer_route(live.h, a).await {
            warn!("removing the route to {c}: {e}");
        }
    }
    Ok(plan.summary())
}

/// The peer set `config` asks for. With `previous` (the config in force), a peer's endpoint is
/// set only where the file changed it (or the peer is new to it): a peer that roamed keeps its
/// latest address across reloads that do not touch it.
fn desired_peers(config: &Config, previous: Option<&Config>) -> Vec<apply::PeerSpec> {
    config
        .peers
        .iter()
        .map(|p| {
            let old = previous.and_then(|c| c.peers.iter().find(|o| o.public_key == p.public_key));
            apply::PeerSpec {
                public_key: p.public_key,
                name: p.name.clone(),
                preshared_key: p.preshared_key.clone(),
                endpoint: match old {
                    Some(o) if o.endpoint_text == p.endpoint_text => None,
                    _ => p.endpoint,
                },
                persistent_keepalive: p.persistent_keepalive,
                allowed_ips: p.allowed_ips.clone(),
            }
        })
        .collect()
}

/// SIGHUP / `reload`: re-reads the config and makes the peers what it says. Peers added,
/// removed or changed take effect; unchanged peers are not touched, so their sessions go on.
async fn reload(shared: &Arc<Shared>, live: &mut Live<'_>) -> Result<String, String> {
    // Debug builds only: the tests make sure a panic still ends in the teardown.
    #[cfg(debug_assertions)]
    if std::env::var_os("SUIDAO_TEST_PANIC_ON_RELOAD").is_some() {
        panic!("SUIDAO_TEST_PANIC_ON_RELOAD");
    }
    notify::notify("RELOADING=1");
    let result = apply_reload(shared, live).await;
    match &result {
        Ok(m) => info!("reload: {m}"),
        Err(e) => warn!("reload refused: {e}"),
    }
    notify::notify("READY=1");
    result
}

async fn apply_reload(shared: &Arc<Shared>, live: &mut Live<'_>) -> Result<String, String> {
    let mut new = Config::load(&live.config.path).map_err(|e| e.to_string())?;
    for f in new.resolve() {
        warn!("reload: {f}: the peer has no endpoint until its name resolves");
    }
    let (old_i, new_i) = (&live.config.interface, &new.interface);
    if new_i.name != old_i.name {
        return Err("the interface name cannot change on reload (restart instead)".into());
    }
    if new_i.private_key.public_key() != old_i.private_key.public_key() {
        return Err("the private key cannot change on reload (restart instead)".into());
    }
    if new_i.listen_port.is_some_and(|p| p != live.listen_port) {
        return Err("the listen port cannot change on reload (restart instead)".into());
    }
    if new_i.addresses != old_i.addresses
        || new_i.mtu != old_i.mtu
        || new_i.hairpin != old_i.hairpin
        || full_tunnel(&new) != full_tunnel(&live.config)
        || new_i.table != old_i.table
        || new_i.fwmark != old_i.fwmark
        || new_i.dns != old_i.dns
    {
        warn!("reload: changes to address, mtu, hairpin, table, fwmark, dns or a full tunnel take effect at the next restart");
    }
    let desired = desired_peers(&new, Some(&live.config));
    let message = apply_peers(shared, live, &desired).await?;
    *write_lock(&shared.configured_endpoints) = configured_endpoints(&new);
    *write_lock(&shared.hostnames) = hostnames(&new);
    live.config = new;
    Ok(message)
}

/// umask(2) around the socket bind, so that the socket file is never group/world accessible
/// even for an instant.
fn set_umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask has no failure mode and touches only the process's file mode mask.
    unsafe { libc::umask(mask) }
}

/// Starts a thread; if it ever panics, the interface goes down (with its teardown) and `up`
/// fails, rather than running on with a dead half.
fn spawn(
    name: &str,
    failed: &Arc<AtomicBool>,
    f: impl FnOnce() + Send + 'static,
) -> Result<(), EngineError> {
    let failed = failed.clone();
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                tracing::error!("thread {thread_name} failed: taking the interface down");
                failed.store(true, Ordering::Relaxed);
            }
        })
        .map(|_| ())
        .map_err(|e| setup(format!("starting thread {name}: {e}")))
}

/// Timers, endpoint memory and signals, until SIGINT or SIGTERM.
async fn control_loop(
    shared: &Arc<Shared>,
    ifname: &str,
    live: &mut Live<'_>,
    requests: &mut tokio::sync::mpsc::UnboundedReceiver<uapi::Control>,
) -> Result<(), EngineError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut out = Vec::new();
    let mut saved = String::new();
    let mut last_save = Instant::now();
    loop {
        if shared.failed.load(Ordering::Relaxed) {
            return Err(setup("an internal thread failed (see the log above)"));
        }
        shared.device.update_timers(clock::now(), &mut out);
        shared.send_all(&mut out);
        if last_save.elapsed() >= ENDPOINT_SAVE_EVERY {
            last_save = Instant::now();
            let text = endpoints_text(&shared.device, &read_lock(&shared.configured_endpoints));
            if text != saved {
                match save_endpoints(ifname, &text) {
                    Ok(()) => saved = text,
                    Err(e) => debug!("saving endpoints: {e}"),
                }
            }
        }
        // Wake for the next timer (deadlines are in protocol time: see `clock`), but at least
        // every 100 ms.
        let proto_now = clock::now().instant;
        let until_due = shared
            .device
            .next_deadline()
            .map_or(Duration::MAX, |d| d.saturating_duration_since(proto_now));
        let nap = clock::real(until_due).min(Duration::from_millis(100));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = sighup.recv() => {
                let _ = reload(shared, live).await;
            }
            Some(request) = requests.recv() => match request {
                uapi::Control::Reload(meant, reply) => {
                    let started = &live.config.path;
                    let same = |p: &Path| {
                        std::fs::canonicalize(p).ok() == std::fs::canonicalize(started).ok()
                    };
                    let r = match meant {
                        Some(m) if !same(&m) => Err(format!(
                            "{ifname} was started with {}, which is what reload re-reads; to use {} instead, restart with it",
                            started.display(),
                            m.display()
                        )),
                        _ => reload(shared, live).await,
                    };
                    let _ = reply.send(r);
                }
                uapi::Control::Set(request, reply) => {
                    let names = read_lock(&shared.names).clone();
                    let desired = request.desired(apply::current(&shared.device, &names));
                    let r = apply_peers(shared, live, &desired).await;
                    if let Err(e) = &r {
                        warn!("set refused: {e}");
                    }
                    let _ = reply.send(r);
                }
            }
        }
    }
}

fn serve_api(listener: UnixListener, api: Arc<ApiState>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let api = api.clone();
                // One thread per client: `wg` connects, asks once and leaves.
                let _ = std::thread::Builder::new()
                    .name("uapi-conn".into())
                    .spawn(move || {
                        if let Err(e) = uapi::serve_connection(&api, stream) {
                            debug!("api connection: {e}");
                        }
                    });
            }
            Err(e) => debug!("api accept: {e}"),
        }
    }
}

/// Datagrams received per recvmmsg call, each up to 64 KB (GRO).
const RX_MESSAGES: usize = 16;
const RX_SLOT: usize = 65536;
/// Opened packets are written to the TUN (coalesced) once this many wait, at the end of a
/// received message: a whole receive batch at once (up to a thousand small datagrams) would
/// overflow the receiving socket's buffer behind the TUN, where a few smaller bursts do not.
const TUN_WRITE_BATCH: usize = IDEAL_BATCH_SIZE;

/// Packet slots of the outgoing path: two batches, so reading goes on while a whole
/// super-packet's split still fits.
const TX_SLOTS: usize = 2 * IDEAL_BATCH_SIZE;

/// The outgoing path's buffers. Behind a mutex in `Worker` so that whichever thread reads the
/// TUN holds it for the whole read-seal-send of a batch: packets leave in the order they were
/// read, whichever thread does the work.
struct TxState {
    scratch: Vec<u8>,
    /// `TX_SLOTS` slots of `stride` bytes, back to back. Packet i is read at
    /// `data[i * stride + 16..]` (room for the transport header) and sealed in place (padding
    /// and tag after it). With offload the stride is exactly a full-size sealed packet, so a run
    /// of full-size packets is already one contiguous GSO buffer: no copy before sending.
    data: Vec<u8>,
    stride: usize,
    sizes: Vec<usize>,
    ready: Vec<(usize, Endpoint, usize)>,
    /// Runs that are not contiguous in `data` (shorter packets) are gathered here for GSO.
    gso: Vec<u8>,
    out: Vec<Outgoing>,
}

impl TxState {
    fn new(mtu: usize, offload: bool) -> TxState {
        // With offload, the TUN hands over super-packets split to at most the MTU, so a slot
        // of header + MTU + tag holds any packet (padding never goes past the MTU). Without
        // it, each read is one packet straight into a slot: leave room for an MTU raised
        // behind our back rather than read a truncated packet.
        let stride = if offload {
            TRANSPORT_OVERHEAD + mtu
        } else {
            TRANSPORT_OVERHEAD + mtu.max(1500) + 64
        };
        TxState {
            scratch: vec![0u8; MAX_READ],
            data: vec![0u8; TX_SLOTS * stride],
            stride,
            sizes: vec![0usize; TX_SLOTS],
            ready: Vec::with_capacity(TX_SLOTS),
            gso: Vec::with_capacity(65536),
            out: Vec::new(),
        }
    }
}

/// Outgoing: TUN → seal in place → UDP, a batch at a time. A super-packet read from the TUN is
/// split into MTU-sized packets; runs of sealed datagrams of one size to one endpoint leave in
/// one GSO system call.
fn tun_to_udp(s: &Shared, w: &Worker) {
    while !s.stopping.load(Ordering::Relaxed) {
        let sent = match w.tx.lock() {
            Ok(mut tx) => drain_tun(s, w, &mut tx),
            Err(poisoned) => drain_tun(s, w, &mut poisoned.into_inner()),
        };
        if sent == 0 {
            if let Err(e) = w.tun.wait_readable(Duration::from_millis(200)) {
                debug!("waiting for {}: {e}", w.tun.name());
            }
        }
    }
}

/// Reads the TUN until it has nothing more (or the batch is full), then seals and sends it all:
/// many small packets leave in few system calls too. Returns how many packets were read.
fn drain_tun(s: &Shared, w: &Worker, tx: &mut TxState) -> usize {
    let TxState {
        scratch,
        data,
        stride,
        sizes,
        ready,
        gso,
        out,
    } = tx;
    let stride = *stride;
    let mut filled = 0;
    {
        let mut chunks = data.chunks_mut(stride);
        let mut slots: [&mut [u8]; TX_SLOTS] =
            std::array::from_fn(|_| chunks.next().unwrap_or_default());
        while TX_SLOTS - filled >= IDEAL_BATCH_SIZE {
            match w.tun.recv_batch(
                scratch,
                &mut slots[filled..],
                &mut sizes[filled..],
                TRANSPORT_HEADER_LEN,
            ) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        debug!("reading {}: {e}", w.tun.name());
                    }
                    break;
                }
            }
        }
        if filled == 0 {
            return 0;
        }
        let now = clock::now();
        ready.clear();
        for (i, slot) in slots.iter_mut().enumerate().take(filled) {
            if let Sent::Ready { to, len } = s.device.encapsulate(slot, sizes[i], now, out) {
                ready.push((i, to, len));
            }
        }
    }
    let max_segments = w.udp.max_gso_segments().clamp(1, 64);
    send_runs(
        &w.udp,
        data,
        stride,
        ready,
        gso,
        max_segments,
        &mut |to, e| s.send_failed(to, e),
    );
    s.send_all(out);
    filled
}

/// A run of sealed datagrams to one endpoint: all `seg` bytes long but the last.
struct Run {
    to: Endpoint,
    seg: usize,
    count: usize,
    first: usize,
    last: usize,
    bytes: usize,
    /// Still back to back in the slots (else gathered in the GSO buffer).
    in_place: bool,
}

/// Sends sealed datagrams, grouping consecutive ones to the same endpoint with the same length
/// (the last of a run may be shorter) into one GSO send: straight from the slots when they are
/// back to back (full-size packets), else gathered into `gso` first.
fn send_runs(
    udp: &Udp,
    data: &[u8],
    stride: usize,
    ready: &[(usize, Endpoint, usize)],
    gso: &mut Vec<u8>,
    max_segments: usize,
    failed: &mut impl FnMut(Endpoint, &SendError),
) {
    let packet = |i: usize, len: usize| &data[i * stride..i * stride + len];
    let mut flush = |gso: &mut Vec<u8>, r: &Run| {
        let result = if r.count == 1 {
            udp.send(packet(r.first, r.bytes), r.to, None)
        } else if r.in_place {
            udp.send(
                &data[r.first * stride..r.first * stride + r.bytes],
                r.to,
                Some(r.seg),
            )
        } else {
            udp.send(gso, r.to, Some(r.seg))
        };
        if let Err(e) = result {
            failed(r.to, &e);
        }
        gso.clear();
    };
    let mut run: Option<Run> = None;
    for &(i, to, len) in ready {
        if let Some(r) = &mut run {
            let joins =
                r.to == to && len <= r.seg && r.count < max_segments && r.bytes + len <= 65535;
            if joins {
                if r.in_place && !(r.seg == stride && i == r.last + 1) {
                    // Not back to back: gather what the run holds so far.
                    gso.extend_from_slice(&data[r.first * stride..r.first * stride + r.seg]);
                    r.in_place = false;
                }
                if !r.in_place {
                    gso.extend_from_slice(packet(i, len));
                }
                r.count += 1;
                r.last = i;
                r.bytes += len;
                if len < r.seg {
                    flush(gso, r);
                    run = None;
                }
                continue;
            }
            flush(gso, r);
        }
        run = Some(Run {
            to,
            seg: len,
            count: 1,
            first: i,
            last: i,
            bytes: len,
            in_place: true,
        });
    }
    if let Some(r) = &run {
        flush(gso, r);
    }
}

/// Incoming: UDP → open in place → TUN, a batch at a time. One receive may carry many
/// datagrams (recvmmsg, and GRO runs of one size); the opened packets stay where they are and
/// are written to the TUN together, consecutive segments of one flow as one super-packet
/// (`gro`): no copy in between.
fn udp_to_tun(s: &Shared, w: &Worker) {
    let mut rx = vec![0u8; RX_MESSAGES * RX_SLOT];
    let mut meta = [RecvMeta::default(); RX_MESSAGES];
    let mut gro = Coalescer::new(w.tun.offload(), w.tun.udp_offload());
    let mut out = Vec::new();
    let mut relay = vec![0u8; RX_SLOT + 64];
    while !s.stopping.load(Ordering::Relaxed) {
        let n = {
            let mut chunks = rx.chunks_mut(RX_SLOT);
            let mut iovs: [IoSliceMut<'_>; RX_MESSAGES] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            match w.udp.recv(&mut iovs, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Err(e) = w.udp.wait_readable(Duration::from_millis(200)) {
                        debug!("waiting for the socket: {e}");
                    }
                    continue;
                }
                Err(e) => {
                    debug!("receiving: {e}");
                    continue;
                }
            }
        };
        let now = clock::now();
        for (k, m) in meta.iter().enumerate().take(n) {
            let base = k * RX_SLOT;
            let end = base + m.len.min(RX_SLOT);
            let stride = if m.stride == 0 {
                (end - base).max(1)
            } else {
                m.stride
            };
            let mut at = base;
            while at < end {
                let next = (at + stride).min(end);
                let datagram = &mut rx[at..next];
                let from = Endpoint {
                    addr: m.addr,
                    local: m.dst_ip,
                };
                if let Some(range) = receive_one(s, w, from, datagram, now, &mut out, &mut relay) {
                    gro.push(&rx, at + range.start, range.len());
                    if gro.is_full() {
                        write_tun(s, w, &mut gro, &mut rx);
                    }
                }
                at = next;
            }
            // Between messages (one message is usually one run the sender sent in one go,
            // such as one TCP super-packet's segments), so that a group is not cut in two.
            if gro.len() >= TUN_WRITE_BATCH {
                write_tun(s, w, &mut gro, &mut rx);
            }
        }
        let wrote = !gro.is_empty();
        write_tun(s, w, &mut gro, &mut rx);
        s.send_all(&mut out);
        // Writing to the TUN often makes the kernel answer at once (a ping's reply, a TCP ack),
        // and the answer is already waiting in the TUN: send it from here, saving the other
        // thread's wake-up, unless that thread is already at it.
        if wrote {
            if let Ok(mut tx) = w.tx.try_lock() {
                drain_tun(s, w, &mut tx);
            }
        }
    }
}

/// One datagram: handshake messages to the handshake thread; transport data opened (or
/// relayed to another peer). Returns where in `datagram` an opened packet for the TUN lies.
fn receive_one(
    s: &Shared,
    w: &Worker,
    from: Endpoint,
    datagram: &mut [u8],
    now: suidao_proto::Time,
    out: &mut Vec<Outgoing>,
    relay: &mut [u8],
) -> Option<std::ops::Range<usize>> {
    // Well-formed handshake messages go to the handshake thread; transport data and
    // malformed datagrams (dropped and counted at once) are handled here.
    if matches!(
        Message::parse(datagram),
        Ok(Message::Initiation(_) | Message::Response(_) | Message::CookieReply(_))
    ) {
        queue_handshake(s, from, datagram, now, out);
        return None;
    }
    match s.device.receive(from, datagram, now, out) {
        Received::Packet { peer, range } => {
            let packet = &datagram[range.clone()];
            if s.hairpin && hairpin(s, peer, packet) {
                // For another peer: seal it again (in a buffer of its own, with room for the
                // header, padding and tag) and send it on.
                let len = packet.len();
                relay[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len].copy_from_slice(packet);
                if let Sent::Ready { to, len } = s.device.encapsulate(relay, len, now, out) {
                    if let Err(e) = w.udp.send(&relay[..len], to, None) {
                        s.send_failed(to, &e);
                    }
                }
                None
            } else {
                // The transport header in front of it is free now: room for the virtio
                // header the TUN write needs.
                Some(range)
            }
        }
        Received::Dropped(reason) => {
            debug!("dropped a datagram from {from}: {}", reason.name());
            None
        }
        _ => None,
    }
}

/// Writes what `gro` holds; every failed write is counted (and its cause logged once).
fn write_tun(s: &Shared, w: &Worker, gro: &mut Coalescer, rx: &mut [u8]) {
    let _ = gro.flush(rx, |iov| {
        let r = w.tun.write_vectored(iov);
        if let Err(e) = &r {
            s.tun_write_failed(w, e);
        }
        r
    });
}

/// Whether an opened packet is for another peer (relay it) rather than for this host.
fn hairpin(s: &Shared, from_peer: suidao_proto::PeerId, packet: &[u8]) -> bool {
    let Some(dst) = ip::destination(packet) else {
        return false;
    };
    if s.own_addrs.contains(&dst) {
        return false;
    }
    matches!(s.device.route(dst), Some(to) if to != from_peer)
}

/// A handshake message: the cheap checks here (mac1; under load, mac2 with a cookie reply and
/// the per-source rate limit), the costly rest in the handshake thread. Under a flood, then,
/// the queue holds only messages that proved their source address, and a real client's retry
/// is not lost behind the attacker's.
fn queue_handshake(
    s: &Shared,
    from: Endpoint,
    datagram: &[u8],
    now: suidao_proto::Time,
    out: &mut Vec<Outgoing>,
) {
    if let Some(verdict) = s.device.triage_handshake(from, datagram, now, out) {
        if let Received::Dropped(reason) = verdict {
            debug!("dropped a handshake message from {from}: {}", reason.name());
        }
        return;
    }
    // Counted before it is sent, so the handshake thread never counts below zero.
    let queued = s.queued_handshakes.fetch_add(1, Ordering::Relaxed) + 1;
    if queued >= UNDER_LOAD_AT {
        s.device.handshake_queue_backed_up(now.instant);
    }
    if let Err(e) = s.handshakes.try_send((from, datagram.to_vec())) {
        s.queued_handshakes.fetch_sub(1, Ordering::Relaxed);
        if let TrySendError::Full(_) = e {
            s.device
                .count_engine_drop(DropReason::HandshakeQueueFull, 1);
            debug!("handshake queue full: dropped one from {from}");
        }
    }
}

fn handshakes(s: &Shared, rx: Receiver<(Endpoint, Vec<u8>)>) {
    let mut out = Vec::new();
    while let Ok((from, mut datagram)) = rx.recv() {
        s.queued_handshakes.fetch_sub(1, Ordering::Relaxed);
        let kind = datagram.first().copied();
        match s
            .device
            .receive_checked(from, &mut datagram, clock::now(), &mut out)
        {
            Received::Handshake { peer } => match kind {
                Some(1) => info!(
                    "handshake initiation from {} at {from}: answered",
                    s.peer_name(peer)
                ),
                _ => info!("handshake with {} at {from}: complete", s.peer_name(peer)),
            },
            Received::Cookie { peer } => debug!("cookie reply from {}", s.peer_name(peer)),
            Received::Dropped(reason) => {
                debug!("dropped a handshake message from {from}: {}", reason.name())
            }
            _ => {}
        }
        s.send_all(&mut out);
    }
}

/// `check`: what `up` would do, for a person to read.
pub fn describe(config: &Config) -> String {
    let i = &config.interface;
    let mut s = format!(
        "interface {}\n  public key   {}\n  listen port  {}\n  mtu          {}\n",
        i.name,
        i.private_key.public_key(),
        i.listen_port
            .map_or("random".to_string(), |p| p.to_string()),
        i.mtu
    );
    match i.workers {
        Some(n) => s.push_str(&format!("  workers      {n}\n")),
        None => s.push_str(&format!(
            "  workers      {} (one per two CPUs)\n",
            crate::config::default_workers()
        )),
    }
    for a in &i.addresses {
        s.push_str(&format!("  address      {a}\n"));
    }
    let table = match i.table {
        Table::Id(n) if n != netlink::MAIN_TABLE => format!(" table {n}"),
        _ => String::new(),
    };
    if i.table == Table::Off {
        s.push_str("  routes       none (table = \"off\")\n");
    }
    for r in planned_routes(config) {
        s.push_str(&format!("  route        {r} dev {}{table}\n", i.name));
    }
    if let Some(m) = i.fwmark {
        s.push_str(&format!(
            "  fwmark       {m} (0x{m:x}) on the UDP sockets\n"
        ));
    }
    let (v4, v6) = full_tunnel(config);
    for (on, family) in [(v4, "IPv4"), (v6, "IPv6")] {
        if on {
            s.push_str(&format!(
                "  full tunnel  {family}: default route dev {} in table {t}, rules `not fwmark {m}` and `main suppress_prefixlength 0`\n",
                i.name,
                t = netlink::FULL_TUNNEL_TABLE,
                m = socket_mark(config).unwrap_or(netlink::FULL_TUNNEL_TABLE)
            ));
        }
    }
    if !i.dns.is_empty() {
        if !i.dns.servers.is_empty() {
            let servers: Vec<String> = i.dns.servers.iter().map(|s| s.to_string()).collect();
            s.push_str(&format!("  dns          {}\n", servers.join(", ")));
        }
        if !i.dns.search.is_empty() {
            s.push_str(&format!("  search       {}\n", i.dns.search.join(" ")));
        }
    }
    // Relaying between peers needs two of them.
    if config.peers.len() > 1 {
        s.push_str(&format!(
            "  hairpin      {}\n",
            if i.hairpin {
                "on (peers reach each other through this host)"
            } else {
                "off"
            }
        ));
    }
    // Hooks run as root: show every command.
    for (when, commands) in [
        ("pre_up", &i.hooks.pre_up),
        ("post_up", &i.hooks.post_up),
        ("pre_down", &i.hooks.pre_down),
        ("post_down", &i.hooks.post_down),
    ] {
        for c in commands {
            s.push_str(&format!("  {when:<12} {c}\n"));
        }
    }
    for p in &config.peers {
        s.push_str(&format!(
            "peer {}\n  public key   {}\n",
            p.label(),
            p.public_key
        ));
        if let Some(e) = &p.endpoint_text {
            s.push_str(&format!("  endpoint     {e}"));
            if let Some(a) = p.endpoint {
                if a.to_string() != *e {
                    s.push_str(&format!(" ({a})"));
                }
            }
            s.push('\n');
        }
        let ips: Vec<String> = p.allowed_ips.iter().map(|c| c.to_string()).collect();
        s.push_str(&format!(
            "  allowed ips  {}\n",
            if ips.is_empty() {
                "(none)".into()
            } else {
                ips.join(", ")
            }
        ));
        if p.preshared_key.is_some() {
            s.push_str("  preshared key  yes\n");
        }
        if let Some(k) = p.persistent_keepalive {
            s.push_str(&format!("  keepalive    every {} s\n", k.as_secs()));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The endpoint memory names peers' keys and addresses: owner only, also when an older
    /// file (written with a laxer mode) is replaced.
    #[test]
    fn endpoint_memory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("suidao-endpoints-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sd9.endpoints");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(dir.join("sd9.tmp"), "stale").unwrap();
        std::fs::set_permissions(dir.join("sd9.tmp"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        save_endpoints_in(&dir, "sd9", "key 198.18.0.2:51820\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(text, "key 198.18.0.2:51820\n");
    }

    /// Runs of sealed packets leave as the same datagrams, in order, whether they go straight
    /// from the slots (full-size, back to back) or are gathered first (shorter, or with a gap
    /// where a packet was dropped), over loopback.
    #[test]
    fn send_runs_sends_every_datagram_in_order() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other_to = other.local_addr().unwrap();
        let udp = Udp::bind(None).unwrap();
        let stride = 64;
        let mut data = vec![0u8; 16 * stride];
        for (i, slot) in data.chunks_mut(stride).enumerate() {
            slot.fill(i as u8 + 1);
        }
        // (slot, destination, length)
        let (to, other_to) = (Endpoint::from(to), Endpoint::from(other_to));
        let ready = [
            (0, to, 64), // full-size, back to back: in place
            (1, to, 64),
            (2, to, 64),
            (3, to, 40),       // shorter: ends the run
            (4, to, 64),       // a new run...
            (6, to, 64),       // ...with a gap (slot 5 dropped): gathered
            (7, to, 64),       //
            (8, other_to, 64), // another endpoint
            (9, to, 30),       // short packets, one size: gathered
            (10, to, 30),
            (11, to, 30),
            (12, to, 64), // longer than the run's size: a new run
        ];
        let mut gso = Vec::new();
        send_runs(&udp, &data, stride, &ready, &mut gso, 64, &mut |to, e| {
            panic!("sending to {to}: {e}")
        });
        let mut buf = [0u8; 256];
        for &(slot, dest, len) in ready.iter().filter(|r| r.1 == to) {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(n, len, "slot {slot} ({dest})");
            assert!(buf[..n].iter().all(|b| *b == slot as u8 + 1), "slot {slot}");
        }
        let (n, _) = other.recv_from(&mut buf).unwrap();
        assert_eq!((n, buf[0]), (64, 9));
    }
}
