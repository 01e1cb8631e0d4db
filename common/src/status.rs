//! `status`: what a running interface says through its API socket, for a person (like
//! `wg show`, plus drop counters by reason) or as JSON.

use crate::uapi;
use serde_json::{json, Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Interfaces with an API socket (suidao's or anyone's).
pub fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(uapi::SOCKET_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".sock").map(str::to_string))
        .collect();
    names.sort();
    names
}

fn hex_to_base64(hex: &str) -> String {
    use base64::Engine;
    match suidao_proto::keys::from_hex(hex) {
        Ok(b) => base64::engine::general_purpose::STANDARD.encode(*b),
        Err(_) => hex.to_string(),
    }
}

/// The status of `ifname` as a JSON value.
pub fn query(ifname: &str) -> std::io::Result<Value> {
    let pairs = uapi::request(ifname, "suidao_status=1")?;
    let mut iface = Map::new();
    let mut drops = Map::new();
    let mut peers: Vec<Map<String, Value>> = Vec::new();
    for (k, v) in pairs {
        let num = || v.parse::<u64>().map(Value::from).unwrap_or(Value::Null);
        if k == "public_key" {
            let mut p = Map::new();
            p.insert("public_key".into(), hex_to_base64(&v).into());
            p.insert("allowed_ips".into(), Value::Array(Vec::new()));
            peers.push(p);
            continue;
        }
        match peers.last_mut() {
            None => match k.strip_prefix("drop_") {
                Some(reason) => {
                    drops.insert(reason.to_string(), num());
                }
                None if k == "listen_port" || k == "mac_moves" => {
                    iface.insert(k, num());
                }
                None if k == "mac" => push_mac(&mut iface, &v),
                None => {
                    iface.insert(k, v.into());
                }
            },
            Some(p) => match k.as_str() {
                "allowed_ip" => {
                    if let Some(Value::Array(a)) = p.get_mut("allowed_ips") {
                        a.push(v.into());
                    }
                }
                "name" | "endpoint" => {
                    p.insert(k, v.into());
                }
                "last_handshake_time_sec" => {
                    p.insert("latest_handshake".into(), num());
                }
                "tx_bytes" | "rx_bytes" | "persistent_keepalive_interval" => {
                    p.insert(k, num());
                }
                "mac" => push_mac(p, &v),
                _ => {}
            },
        }
    }
    if let Some(Value::String(k)) = iface.remove("interface_public_key") {
        iface.insert("public_key".into(), hex_to_base64(&k).into());
    }
    iface.insert("drops".into(), Value::Object(drops));
    iface.insert(
        "peers".into(),
        Value::Array(peers.into_iter().map(Value::Object).collect()),
    );
    Ok(Value::Object(iface))
}

/// A learned MAC (`MAC/AGE`) into `macs`: `{"mac": ..., "age": seconds}`.
fn push_mac(into: &mut Map<String, Value>, v: &str) {
    let (mac, age) = v.split_once('/').unwrap_or((v, ""));
    let entry = json!({"mac": mac, "age": age.parse::<u64>().ok()});
    match into.get_mut("macs") {
        Some(Value::Array(a)) => a.push(entry),
        _ => {
            into.insert("macs".into(), Value::Array(vec![entry]));
        }
    }
}

/// `aa:bb:cc:dd:ee:ff (12 s), ...` for the human form.
fn macs(v: &Value) -> Option<String> {
    let list: Vec<String> = v
        .get("macs")?
        .as_array()?
        .iter()
        .map(|m| {
            let mac = m.get("mac").and_then(Value::as_str).unwrap_or("?");
            match m.get("age").and_then(Value::as_u64) {
                Some(a) => format!("{mac} ({a} s)"),
                None => mac.to_string(),
            }
        })
        .collect();
    Some(list.join(", "))
}

fn ago(secs: u64) -> String {
    if secs == 0 {
        return "never".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{} seconds ago", now.saturating_sub(secs))
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The human form, close to `wg show`.
pub fn render(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    // (An interface configured through the API has no key until one is set.)
    let key = v
        .get("public_key")
        .and_then(Value::as_str)
        .unwrap_or("(none)");
    let mut out = format!(
        "interface: {}\n  public key: {key}\n  listening port: {}\n",
        s("interface"),
        v.get("listen_port").and_then(Value::as_u64).unwrap_or(0)
    );
    if v.get("mode").and_then(Value::as_str) == Some("l2") {
        out.push_str(&format!(
            "  mode: l2 (Ethernet frames); MACs moved between ports: {}\n  learned here: {}\n",
            v.get("mac_moves").and_then(Value::as_u64).unwrap_or(0),
            macs(v).unwrap_or_else(|| "(none)".into())
        ));
    }
    if let Some(Value::Object(d)) = v.get("drops") {
        let nonzero: Vec<String> = d
            .iter()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!(
            "  dropped: {}\n",
            if nonzero.is_empty() {
                "nothing".into()
            } else {
                nonzero.join(", ")
            }
        ));
    }
    for p in v
        .get("peers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let g = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
        let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!("\npeer: {}", g("public_key").unwrap_or_default()));
        if let Some(name) = g("name") {
            out.push_str(&format!(" ({name})"));
        }
        out.push('\n');
        if let Some(e) = g("endpoint") {
            out.push_str(&format!("  endpoint: {e}\n"));
        }
        let ips: Vec<&str> = p
            .get("allowed_ips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if v.get("mode").and_then(Value::as_str) == Some("l2") {
            out.push_str(&format!(
                "  learned macs: {}\n",
                macs(p).unwrap_or_else(|| "(none)".into())
            ));
        } else {
            out.push_str(&format!(
                "  allowed ips: {}\n",
                if ips.is_empty() {
                    "(none)".into()
                } else {
                    ips.join(", ")
                }
            ));
        }
        out.push_str(&format!(
            "  latest handshake: {}\n",
            ago(n("latest_handshake"))
        ));
        out.push_str(&format!(
            "  transfer: {} received, {} sent\n",
            bytes(n("rx_bytes")),
            bytes(n("tx_bytes"))
        ));
        if n("persistent_keepalive_interval") > 0 {
            out.push_str(&format!(
                "  persistent keepalive: every {} seconds\n",
                n("persistent_keepalive_interval")
            ));
        }
    }
    out
}

pub fn json(v: &Value) -> String {
    json!(v).to_string()
}
