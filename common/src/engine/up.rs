//! `up`: setup → run → undo. Everything it makes is recorded in one teardown list as it is
//! made (see `teardown`), and every way out after the first change, a panic in the main loop
//! included, goes through that list.

use super::control::{self, serve_api, Inbox, Signals};
use super::dataplane::{Engine, Options};
use super::endpoints::{hostnames, reresolve, EndpointMemory, RERESOLVE_RETRY};
use super::reload::{desired_peers, Live};
use super::setup::{self, socket_mark};
use super::teardown::{Teardown, Undo};
use super::{setup_error, EngineError};
use crate::config::Config;
use crate::uapi::{self, ApiState};
use crate::{apply, hooks, netlink, notify};
use rand_core::OsRng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU32};
use std::sync::{Arc, RwLock};
use suidao_proto::keys::PublicKey;
use suidao_proto::Device;
use tracing::{info, warn};

/// How an interface is configured while it runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Managed {
    /// By a suidao config file (`suidao-client`/`suidao-server up`): keys, peers, addresses,
    /// routes; `reload` re-reads it.
    ByFile,
    /// By the userspace API alone (`suidao-wg`, as wireguard-go under wg-quick): no key until
    /// one is set, no addresses or routes (whoever configures it adds those), no file.
    ByApi,
}

/// `up`: runs the interface until SIGINT or SIGTERM, then removes what it added.
pub fn up(config: Config) -> Result<(), EngineError> {
    start(config, Managed::ByFile, None)
}

/// `suidao-wg IFNAME`: makes the TUN interface `ifname` (MTU 1420, down) and its control
/// socket and nothing else; the key, the port, the mark and the peers come through the
/// userspace API (`wg setconf`), the addresses and routes from whoever runs it (wg-quick).
/// `ready` is called once both exist. Runs until SIGINT or SIGTERM or until the interface is
/// deleted, then removes the socket.
pub fn up_for_api(ifname: &str, ready: Box<dyn FnOnce() + Send>) -> Result<(), EngineError> {
    crate::config::check_ifname(ifname).map_err(setup_error)?;
    start(api_config(ifname), Managed::ByApi, Some(ready))
}

/// The config of an interface the API configures: a name and defaults. Its private key is a
/// placeholder that nothing reads: the device starts without one (`Device::without_key`).
fn api_config(ifname: &str) -> Config {
    use crate::config::{Hooks, Interface, Table, DEFAULT_MTU};
    Config {
        path: std::path::PathBuf::new(),
        interface: Interface {
            name: ifname.to_string(),
            private_key: suidao_proto::keys::PrivateKey::from_bytes([0; 32]),
            listen_port: None,
            addresses: Vec::new(),
            mtu: DEFAULT_MTU,
            workers: None,
            // Packets between peers go through the kernel, as with wireguard-go.
            hairpin: false,
            table: Table::Off,
            fwmark: None,
            dns: Default::default(),
            public_endpoint: None,
            hooks: Hooks::default(),
            l2: None,
        },
        peers: Vec::new(),
        warnings: Vec::new(),
    }
}

fn start(
    mut config: Config,
    managed: Managed,
    ready: Option<Box<dyn FnOnce() + Send>>,
) -> Result<(), EngineError> {
    for f in config.resolve() {
        warn!(
            "{f}: the peer has no endpoint until its name resolves (tried again every {} s)",
            RERESOLVE_RETRY.as_secs()
        );
    }
    let ifname = config.interface.name.clone();
    setup::claim_socket_path(&uapi::socket_path(&ifname), &ifname)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut signals = Signals::catch()?;
        let h = netlink::connect()?;
        let hooks = config.interface.hooks.clone();
        hooks::run("pre_up", &hooks.pre_up, &ifname).map_err(setup_error)?;
        let mut td = Teardown::default();
        td.push(Undo::Hook {
            stage: "post_down",
            commands: hooks.post_down.clone(),
            ifname: ifname.clone(),
        });
        let result = run(&h, config, managed, ready, &mut signals, &mut td).await;
        td.undo(&h).await;
        result
    })
}

/// Sets everything up, recording it in `td`, and runs until told to stop.
async fn run(
    h: &rtnetlink::Handle,
    config: Config,
    managed: Managed,
    ready: Option<Box<dyn FnOnce() + Send>>,
    signals: &mut Signals,
    td: &mut Teardown,
) -> Result<(), EngineError> {
    let ifname = config.interface.name.clone();
    // The control socket first: nothing is configured yet if it cannot be made.
    let sock_path = uapi::socket_path(&ifname);
    let listener = setup::control_socket(&sock_path)?;
    td.push(Undo::SocketFile(sock_path));
    let (mut engine, data) = data_path(h, &config, managed, td).await?;
    let (control, requests, moved) = control_plane(listener, &config, managed, &data)?;
    announce(&ifname, managed, &data);
    let mut inbox = Inbox {
        requests,
        moved,
        mtus: data.mtus,
    };
    post_up(&config, td)?;
    notify::notify(&format!("READY=1\nSTATUS={ifname} is up"));
    if let Some(ready) = ready {
        ready();
    }
    let mut live = Live {
        h,
        td,
        config,
        managed,
        listen_port: control.listen_port,
        fwmark: control.fwmark,
        device: data.device,
        switch: data.switch,
        names: data.names,
        memory: data.memory,
        hosts: control.hosts,
    };
    // A panic in the loop (a bug) still ends in the teardown.
    use futures_util::FutureExt;
    let looped =
        std::panic::AssertUnwindSafe(control::run(&mut engine, &mut live, signals, &mut inbox));
    let result = looped.catch_unwind().await.unwrap_or_else(|_| {
        Err(setup_error(
            "internal error (see the panic above): going down",
        ))
    });
    notify::notify("STOPPING=1");
    info!("{ifname} going down");
    engine.stop();
    result
}

/// The log's lines for an interface that is up.
fn announce(ifname: &str, managed: Managed, data: &DataPath) {
    match managed {
        Managed::ByFile => info!(
            "{ifname} is up: public key {}, UDP port {}, {} peer(s)",
            data.device.public_key(),
            data.listen_port,
            data.device.peer_ids().len()
        ),
        Managed::ByApi => info!(
            "{ifname} is ready: UDP port {}, no private key or peers until they are set through {}",
            data.listen_port,
            uapi::socket_path(ifname).display()
        ),
    }
    info!("{}", data.offloads);
}

/// The `post_up` hooks, and the `pre_down` ones recorded for the way down.
fn post_up(config: &Config, td: &mut Teardown) -> Result<(), EngineError> {
    let ifname = &config.interface.name;
    let hooks = config.interface.hooks.clone();
    hooks::run("post_up", &hooks.post_up, ifname).map_err(setup_error)?;
    td.push(Undo::Hook {
        stage: "pre_down",
        commands: hooks.pre_down,
        ifname: ifname.clone(),
    });
    Ok(())
}

/// What `data_path` made, besides the engine.
struct DataPath {
    device: Arc<Device>,
    /// Layer 2: the switch (None on layer 3).
    switch: Option<Arc<crate::switch::Switch>>,
    names: Arc<RwLock<HashMap<PublicKey, String>>>,
    listen_port: u16,
    /// A line for the log: workers and offloads.
    offloads: String,
    memory: Option<Arc<EndpointMemory>>,
    mtus: tokio::sync::mpsc::UnboundedReceiver<u32>,
}

/// The TUN queues and UDP sockets, the protocol device, the interface configured (addresses,
/// routes... for a config file; the MTU alone for the API), the engine started, the endpoint
/// memory.
async fn data_path(
    h: &rtnetlink::Handle,
    config: &Config,
    managed: Managed,
    td: &mut Teardown,
) -> Result<(Engine, DataPath), EngineError> {
    let ifname = &config.interface.name;
    let (queues, listen_port) = setup::open_queues(h, config).await?;
    let offloads = describe_offloads(&queues, config.interface.l2.is_some());
    // The MTU is the interface's: `ip link set IFACE mtu N` from outside takes effect too,
    // also after the interface was moved to another namespace (the TUN says which).
    let tun_fd = queues.first().and_then(|(d, _)| d.readiness_fd());
    let mtus = netlink::watch_mtu(ifname, tun_fd)?;
    let (device, names) = match managed {
        Managed::ByFile => new_device(config)?,
        Managed::ByApi => {
            let d = Arc::new(Device::without_key(OsRng));
            d.set_mtu(config.interface.mtu as usize);
            (d, HashMap::new())
        }
    };
    match managed {
        Managed::ByFile => setup::configure(h, config, td).await?,
        // As wireguard-go makes it: the MTU, and down until wg-quick (or a person) sets it up.
        Managed::ByApi => netlink::set_mtu(h, ifname, config.interface.mtu).await?,
    }
    let names = Arc::new(RwLock::new(names));
    let switch = super::layer2::switch(config, &device);
    let options = Options {
        hairpin: config.interface.hairpin,
        own_addrs: config.interface.addresses.iter().map(|a| a.addr).collect(),
        mtu: config.interface.mtu as usize,
        names: names.clone(),
        switch: switch.clone(),
    };
    let engine = Engine::start(device.clone(), queues, options)?;
    // (An interface the API configures remembers nothing across runs, as wireguard-go.)
    let memory = (managed == Managed::ByFile).then(|| {
        let m = Arc::new(EndpointMemory::new(ifname, device.clone(), config));
        td.push(Undo::Endpoints(m.clone()));
        m
    });
    let data = DataPath {
        device,
        switch,
        names,
        listen_port,
        offloads,
        memory,
        mtus,
    };
    Ok((engine, data))
}

type Requests = tokio::sync::mpsc::UnboundedReceiver<uapi::Control>;
type Moves = tokio::sync::mpsc::UnboundedReceiver<super::endpoints::Moved>;

/// What the control plane shares with the main loop.
struct Control {
    listen_port: Arc<AtomicU16>,
    fwmark: Arc<AtomicU32>,
    /// The re-resolving thread's list of host names.
    hosts: std::sync::mpsc::Sender<HashMap<PublicKey, String>>,
}

/// The API socket's thread and the re-resolving thread; what they send the main loop.
fn control_plane(
    listener: std::os::unix::net::UnixListener,
    config: &Config,
    managed: Managed,
    data: &DataPath,
) -> Result<(Control, Requests, Moves), EngineError> {
    let (control_tx, requests) = tokio::sync::mpsc::unbounded_channel();
    let listen_port = Arc::new(AtomicU16::new(data.listen_port));
    let fwmark = Arc::new(AtomicU32::new(socket_mark(config).unwrap_or(0)));
    let api = Arc::new(ApiState {
        ifname: config.interface.name.clone(),
        device: data.device.clone(),
        listen_port: listen_port.clone(),
        fwmark: fwmark.clone(),
        by_api: managed == Managed::ByApi,
        switch: data.switch.clone(),
        names: data.names.clone(),
        control: Some(control_tx),
        set_lock: Default::default(),
    });
    spawn("uapi", move || serve_api(listener, api))?;
    let (hosts, hosts_rx) = std::sync::mpsc::channel();
    let _ = hosts.send(hostnames(config));
    let (moved_tx, moved) = tokio::sync::mpsc::unbounded_channel();
    let d = data.device.clone();
    spawn("resolver", move || reresolve(d, hosts_rx, moved_tx))?;
    let control = Control {
        listen_port,
        fwmark,
        hosts,
    };
    Ok((control, requests, moved))
}

/// The protocol device with the config's peers (by the same path a reload takes, on an empty
/// device: all added), and the endpoints the last run remembered for peers without one.
fn new_device(config: &Config) -> Result<(Arc<Device>, HashMap<PublicKey, String>), EngineError> {
    let device = Arc::new(Device::new(config.interface.private_key.clone(), OsRng));
    device.set_mtu(config.interface.mtu as usize);
    let plan = apply::plan(&device, &HashMap::new(), &desired_peers(config, None))
        .map_err(|e| setup_error(e.to_string()))?;
    apply::apply_to_device(&device, &plan);
    let remembered = EndpointMemory::recall(&config.interface.name);
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
    Ok((device, plan.names))
}

fn describe_offloads(queues: &setup::Queues, layer2: bool) -> String {
    let Some((dev, transport)) = queues.first() else {
        return String::new();
    };
    let o = dev.offload();
    let on = |b: bool| if b { "on" } else { "off" };
    format!(
        "{} worker(s); offloads: {} segmentation {} (UDP {}), UDP GSO {} segments, UDP GRO {} segments",
        queues.len(),
        if layer2 { "TAP" } else { "TUN" },
        on(o.tcp),
        on(o.udp),
        transport.max_segments(),
        transport.gro_segments()
    )
}

/// A control-plane thread that lives as long as the process.
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), EngineError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| setup_error(format!("starting thread {name}: {e}")))
}
