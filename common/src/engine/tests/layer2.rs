//! Layer 2 in the engine: a hub and two spokes switching frames (flooding with split horizon,
//! learned unicast to one port, relaying between spokes), and a mismatched pair.

use super::*;
use crate::switch::{PeerRules, Settings, Switch};

const MAC_HUB: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_ALICE: [u8; 6] = [2, 0, 0, 0, 0, 2];
const MAC_BOB: [u8; 6] = [2, 0, 0, 0, 0, 3];
const BROADCAST: [u8; 6] = [0xff; 6];

fn switch() -> Option<Arc<Switch>> {
    Some(Arc::new(Switch::new(Settings {
        mac_age: Duration::from_secs(300),
        mac_table_size: 64,
        default_rules: PeerRules {
            allowed_macs: Vec::new(),
            max_macs: 8,
            flood_rate: 1000,
        },
    })))
}

fn frame(dst: [u8; 6], src: [u8; 6], tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![tag; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// A hub (relaying between its peers) and two spokes that know where it is, all layer 2.
fn hub_and_spokes(net: &Arc<MemoryNet>) -> (Node, Node, Node) {
    let keys: Vec<PrivateKey> = (0..3).map(|_| PrivateKey::generate(&mut OsRng)).collect();
    let spec = |addr: &'static str| {
        let mut s = Spec::new(addr, SERVER);
        s.switch = switch();
        s
    };
    let peer = |k: &PrivateKey| PeerConfig::new(k.public_key());
    let hub = start_with_key(
        net,
        spec("198.18.0.1:51820"),
        keys[0].clone(),
        vec![peer(&keys[1]), peer(&keys[2])],
    );
    let to_hub = hub.as_peer(&[], true);
    let alice = start_with_key(
        net,
        spec("198.18.0.2:40000"),
        keys[1].clone(),
        vec![to_hub.clone()],
    );
    let bob = start_with_key(net, spec("198.18.0.3:40000"), keys[2].clone(), vec![to_hub]);
    (hub, alice, bob)
}

/// A broadcast reaches the hub and the other spoke, never its sender; once MACs are learned,
/// unicast goes to one port only: spoke to spoke through the hub's relay (not into the hub's
/// own TAP), the hub to one spoke.
#[test]
fn a_hub_switches_frames_between_its_spokes_with_split_horizon() {
    let net = MemoryNet::new();
    let (hub, alice, bob) = hub_and_spokes(&net);
    // Bob speaks first so that the hub knows where he is (a spoke is reached once it spoke).
    bob.devs[0].inject(&frame(BROADCAST, MAC_BOB, 1, 60));
    assert_eq!(hub.written(1, WAIT), vec![frame(BROADCAST, MAC_BOB, 1, 60)]);
    // ...which the hub floods to alice once she has a session: she says hello first.
    alice.devs[0].inject(&frame(BROADCAST, MAC_ALICE, 2, 60));
    assert_eq!(
        hub.written(1, WAIT),
        vec![frame(BROADCAST, MAC_ALICE, 2, 60)]
    );
    assert_eq!(
        bob.written(1, WAIT),
        vec![frame(BROADCAST, MAC_ALICE, 2, 60)]
    );
    assert!(
        alice.written(1, Duration::from_millis(300)).is_empty(),
        "not back to alice"
    );
    // Alice to bob: relayed by the hub, not written to the hub's TAP.
    let to_bob = frame(MAC_BOB, MAC_ALICE, 3, 1000);
    alice.devs[0].inject(&to_bob);
    assert_eq!(bob.written(1, WAIT), vec![to_bob]);
    // The hub's own frame to alice: alice only.
    hub.devs[0].inject(&frame(MAC_ALICE, MAC_HUB, 4, 100));
    assert_eq!(
        alice.written(1, WAIT),
        vec![frame(MAC_ALICE, MAC_HUB, 4, 100)]
    );
    assert!(
        hub.written(1, Duration::from_millis(300)).is_empty(),
        "nothing for the hub"
    );
    assert!(
        bob.written(1, Duration::from_millis(100)).is_empty(),
        "nothing for bob"
    );
    // Bob answers the hub: for the hub's TAP only.
    bob.devs[0].inject(&frame(MAC_HUB, MAC_BOB, 5, 100));
    assert_eq!(hub.written(1, WAIT), vec![frame(MAC_HUB, MAC_BOB, 5, 100)]);
    assert!(alice.written(1, Duration::from_millis(300)).is_empty());
}

/// A layer-2 engine and a layer-3 one with each other as peers: the handshake completes,
/// nothing is delivered either way, and both count the mismatch.
#[test]
fn a_layer_2_engine_and_a_layer_3_one_refuse_each_others_packets() {
    let net = MemoryNet::new();
    let mut l2 = server_spec();
    l2.switch = switch();
    let (server, alice) = pair(&net, l2, alice_spec());
    alice.devs[0].inject(&packet(ALICE, SERVER, 100, 0, 10));
    let mismatch = |n: &Node| n.engine.device().drop_count(DropReason::LayerMismatch);
    let deadline = Instant::now() + WAIT;
    while mismatch(&server) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(mismatch(&server), 1);
    assert!(server.written(1, Duration::from_millis(200)).is_empty());
    server.devs[0].inject(&frame(BROADCAST, MAC_HUB, 1, 60));
    let deadline = Instant::now() + WAIT;
    while mismatch(&alice) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(mismatch(&alice), 1);
    assert!(alice.written(1, Duration::from_millis(200)).is_empty());
}
