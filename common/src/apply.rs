//! The one way the peers of a running interface change: `reload` (and SIGHUP) from the config
//! file, and the userspace API's `set=1` (`wg set`, `wg setconf`, `wg syncconf`, ...).
//!
//! Each of them says what the whole peer set should be (`PeerSpec`s). `plan` compares that with
//! what the device actually has — not with what a file said last time, so changes made through
//! another door are seen — and checks everything that can be checked before anything changes.
//! The engine then adds the routes the new set needs (the one step that can still fail; it
//! takes back what it added if one fails), and only then `apply_to_device` changes the device,
//! which cannot fail once planned. So a refused change leaves the device, its sessions and its
//! routes exactly as they were.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;
use suidao_proto::allowed_ips::Cidr;
use suidao_proto::keys::{PresharedKey, PublicKey};
use suidao_proto::{Device, PeerConfig, PeerId};

/// A peer as it should be.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerSpec {
    pub public_key: PublicKey,
    pub name: Option<String>,
    pub preshared_key: Option<PresharedKey>,
    /// Set the endpoint to this; `None` leaves the one the device has (for a peer that roams,
    /// its latest address).
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<Duration>,
    pub allowed_ips: Vec<Cidr>,
}

impl PeerSpec {
    pub fn new(public_key: PublicKey) -> Self {
        PeerSpec {
            public_key,
            name: None,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            allowed_ips: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("peer {0} is listed twice")]
    Duplicate(PublicKey),
    #[error("peer {0} is this interface's own public key")]
    OwnKey(PublicKey),
    #[error("{cidr} is claimed by two peers ({first} and {second})")]
    Claimed {
        cidr: Cidr,
        first: PublicKey,
        second: PublicKey,
    },
}

/// What changes for a peer the device keeps.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    pub preshared_key: Option<Option<PresharedKey>>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<Option<Duration>>,
    pub allowed_ips: Option<Vec<Cidr>>,
}

impl Change {
    fn is_empty(&self) -> bool {
        *self == Change::default()
    }
}

/// The difference between the device and the desired peer set, checked.
#[derive(Debug, Default)]
pub struct Plan {
    pub remove: Vec<PublicKey>,
    pub add: Vec<PeerSpec>,
    pub change: Vec<(PeerId, Change)>,
    /// Every allowed-IPs prefix of the desired set: what the routes should be.
    pub prefixes: Vec<Cidr>,
    /// Names of the desired set.
    pub names: HashMap<PublicKey, String>,
    /// Peers kept as they are but for their name.
    pub renamed: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty() && self.change.is_empty()
    }

    /// For a person: `N peer(s) added, N removed, N changed`.
    pub fn summary(&self) -> String {
        format!(
            "{} peer(s) added, {} removed, {} changed",
            self.add.len(),
            self.remove.len(),
            self.change.len() + self.renamed
        )
    }
}

/// The device's peers as specs (endpoints left as they are).
pub fn current(device: &Device, names: &HashMap<PublicKey, String>) -> Vec<PeerSpec> {
    device
        .peer_ids()
        .into_iter()
        .filter_map(|id| device.peer_info(id))
        .map(|p| PeerSpec {
            name: names.get(&p.public_key).cloned(),
            public_key: p.public_key,
            preshared_key: p.preshared_key,
            endpoint: None,
            persistent_keepalive: p.persistent_keepalive,
            allowed_ips: p.allowed_ips,
        })
        .collect()
}

fn sorted(v: &[Cidr]) -> Vec<Cidr> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// Compares `desired` with what `device` has (and its peers' `names`), and refuses a set that
/// cannot be applied whole.
pub fn plan(
    device: &Device,
    names: &HashMap<PublicKey, String>,
    desired: &[PeerSpec],
) -> Result<Plan, ApplyError> {
    let own = device.public_key();
    let mut seen = HashSet::new();
    let mut claimed: HashMap<Cidr, PublicKey> = HashMap::new();
    for p in desired {
        if p.public_key == own {
            return Err(ApplyError::OwnKey(p.public_key));
        }
        if !seen.insert(p.public_key) {
            return Err(ApplyError::Duplicate(p.public_key));
        }
        for c in &p.allowed_ips {
            if let Some(first) = claimed.insert(*c, p.public_key) {
                if first != p.public_key {
                    return Err(ApplyError::Claimed {
                        cidr: *c,
                        first,
                        second: p.public_key,
                    });
                }
            }
        }
    }
    let mut plan = Plan::default();
    for id in device.peer_ids() {
        if let Some(info) = device.peer_info(id) {
            if !seen.contains(&info.public_key) {
                plan.remove.push(info.public_key);
            }
        }
    }
    for p in desired {
        let Some(id) = device.peer_id(&p.public_key) else {
            plan.add.push(p.clone());
            continue;
        };
        let Some(have) = device.peer_info(id) else {
            plan.add.push(p.clone());
            continue;
        };
        let mut c = Change::default();
        if have.preshared_key != p.preshared_key {
            c.preshared_key = Some(p.preshared_key.clone());
        }
        if p.endpoint.is_some() && p.endpoint != have.endpoint {
            c.endpoint = p.endpoint;
        }
        if have.persistent_keepalive != p.persistent_keepalive {
            c.persistent_keepalive = Some(p.persistent_keepalive);
        }
        if sorted(&have.allowed_ips) != sorted(&p.allowed_ips) {
            c.allowed_ips = Some(p.allowed_ips.clone());
        }
        if !c.is_empty() {
            plan.change.push((id, c));
        } else if names.get(&p.public_key) != p.name.as_ref() {
            plan.renamed += 1;
        }
    }
    plan.prefixes = sorted(
        &desired
            .iter()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .collect::<Vec<_>>(),
    );
    plan.names = desired
        .iter()
        .filter_map(|p| p.name.clone().map(|n| (p.public_key, n)))
        .collect();
    Ok(plan)
}

/// Changes the device as planned. Removals come last, so that an allowed IP moving from a
/// removed peer to another one always routes somewhere.
pub fn apply_to_device(device: &Device, plan: &Plan) {
    // `plan` checked what could fail (own key, duplicates) against this very device, and the
    // caller holds the apply lock, so these errors cannot happen; they are ignored rather
    // than leaving the device half-changed.
    for (id, c) in &plan.change {
        if let Some(psk) = &c.preshared_key {
            let _ = device.set_preshared_key(*id, psk.clone());
        }
        if let Some(e) = c.endpoint {
            let _ = device.set_endpoint(*id, Some(e), false);
        }
        if let Some(k) = c.persistent_keepalive {
            let _ = device.set_persistent_keepalive(*id, k);
        }
        if let Some(ips) = &c.allowed_ips {
            let _ = device.set_allowed_ips(*id, ips);
        }
    }
    for p in &plan.add {
        let mut pc = PeerConfig::new(p.public_key);
        pc.preshared_key = p.preshared_key.clone();
        pc.endpoint = p.endpoint;
        pc.persistent_keepalive = p.persistent_keepalive;
        pc.allowed_ips = p.allowed_ips.clone();
        let _ = device.add_peer(pc);
    }
    for key in &plan.remove {
        let _ = device.remove_peer(key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand_core::OsRng;
    use suidao_proto::keys::PrivateKey;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn spec(key: PublicKey, ips: &[&str]) -> PeerSpec {
        let mut p = PeerSpec::new(key);
        p.allowed_ips = ips.iter().map(|s| cidr(s)).collect();
        p
    }

    #[test]
    fn plan_is_the_difference_with_the_device() {
        let dev = Device::new(PrivateKey::generate(&mut OsRng), OsRng);
        let (a, b, c) = (
            PrivateKey::generate(&mut OsRng).public_key(),
            PrivateKey::generate(&mut OsRng).public_key(),
            PrivateKey::generate(&mut OsRng).public_key(),
        );
        let now = [spec(a, &["10.0.0.2/32"]), spec(b, &["10.0.0.3/32"])];
        let p = plan(&dev, &HashMap::new(), &now).unwrap();
        assert_eq!((p.add.len(), p.remove.len(), p.change.len()), (2, 0, 0));
        apply_to_device(&dev, &p);
        // Same set again: nothing to do.
        assert!(plan(&dev, &HashMap::new(), &now).unwrap().is_empty());
        // b gone, c new, a's allowed IPs changed.
        let next = [
            spec(a, &["10.0.0.2/32", "10.0.1.0/24"]),
            spec(c, &["10.0.0.3/32"]),
        ];
        let p = plan(&dev, &HashMap::new(), &next).unwrap();
        assert_eq!(p.remove, vec![b]);
        assert_eq!(p.add.len(), 1);
        assert_eq!(p.change.len(), 1);
        apply_to_device(&dev, &p);
        assert!(plan(&dev, &HashMap::new(), &next).unwrap().is_empty());
        let ip = "10.0.0.3".parse().unwrap();
        assert_eq!(dev.route(ip), dev.peer_id(&c), "b's address moved to c");
        assert!(dev.peer_id(&b).is_none());
    }

    #[test]
    fn a_set_that_cannot_be_applied_whole_is_refused_before_anything_changes() {
        let dev = Device::new(PrivateKey::generate(&mut OsRng), OsRng);
        let (a, b) = (
            PrivateKey::generate(&mut OsRng).public_key(),
            PrivateKey::generate(&mut OsRng).public_key(),
        );
        let own = dev.public_key();
        assert_eq!(
            plan(&dev, &HashMap::new(), &[spec(a, &[]), spec(own, &[])]).err(),
            Some(ApplyError::OwnKey(own))
        );
        assert_eq!(
            plan(&dev, &HashMap::new(), &[spec(a, &[]), spec(a, &[])]).err(),
            Some(ApplyError::Duplicate(a))
        );
        assert!(matches!(
            plan(
                &dev,
                &HashMap::new(),
                &[spec(a, &["10.0.0.0/24"]), spec(b, &["10.0.0.0/24"])]
            ),
            Err(ApplyError::Claimed { .. })
        ));
        assert!(dev.peer_ids().is_empty());
    }
}
