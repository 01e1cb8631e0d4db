//! Layer 2 (`mode = "l2"`) at setup and reload: the switch made from the config, and the
//! peers' limits handed to it by the protocol's peer ids. The switching itself is `switch`;
//! the data path asks it per frame (`send`, `receive`).

use crate::config::Config;
use crate::switch::{PeerRules, Settings, Switch};
use std::collections::HashMap;
use std::sync::Arc;
use suidao_proto::{Device, PeerId};

/// The switch of a layer-2 interface (None on layer 3), with the peers' rules.
pub(super) fn switch(config: &Config, device: &Device) -> Option<Arc<Switch>> {
    let l2 = config.interface.l2.as_ref()?;
    let switch = Arc::new(Switch::new(Settings {
        mac_age: l2.mac_age,
        mac_table_size: l2.mac_table_size,
        default_rules: PeerRules {
            allowed_macs: Vec::new(),
            max_macs: l2.max_macs,
            flood_rate: l2.flood_rate,
        },
    }));
    switch.set_rules(rules(config, device, &switch));
    Some(switch)
}

/// Every peer's limits as the config says (a peer added through the API alone gets the
/// interface's defaults), by the device's ids.
pub(super) fn rules(
    config: &Config,
    device: &Device,
    switch: &Switch,
) -> HashMap<PeerId, PeerRules> {
    let d = &switch.settings().default_rules;
    device
        .peer_ids()
        .into_iter()
        .filter_map(|id| {
            let key = device.peer_info(id)?.public_key;
            let rules = match config.peers.iter().find(|p| p.public_key == key) {
                Some(p) => PeerRules {
                    allowed_macs: p.l2.allowed_macs.clone(),
                    max_macs: p.l2.max_macs.unwrap_or(d.max_macs),
                    flood_rate: p.l2.flood_rate.unwrap_or(d.flood_rate),
                },
                None => d.clone(),
            };
            Some((id, rules))
        })
        .collect()
}
