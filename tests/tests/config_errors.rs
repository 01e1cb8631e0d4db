//! Every kind of bad configuration: a non-zero exit and one clear line naming the file, the
//! line where the parser knows it, and the key.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand_core::OsRng;
use std::path::Path;
use std::process::Command;
use suidao_lab::suidao::{bin_path, write_secret, TempDir};
use suidao_proto::keys::PrivateKey;

/// Runs `suidao-server <cmd> -c FILE` and returns its single stderr line (asserting failure).
fn one_line_error(cmd: &str, config: &Path) -> String {
    let out = Command::new(bin_path("suidao-server").unwrap())
        .args([cmd, "-c"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{cmd} accepted {}", config.display());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "exactly one line: {err:?}");
    assert!(err.starts_with("suidao-server: "), "{err}");
    err.trim().to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_configs_fail_with_one_clear_line() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let key = PrivateKey::generate(&mut OsRng).to_base64().to_string();
    let pk1 = PrivateKey::generate(&mut OsRng).public_key().to_string();
    let pk2 = PrivateKey::generate(&mut OsRng).public_key().to_string();
    let head =
        format!("[interface]\nname = \"sdbad\"\nprivate_key = \"{key}\"\nlisten_port = 51820\n");

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unknown.toml", format!("{head}colour = \"blue\"\n"), vec!["unknown.toml:5", "colour"]),
        (
            "workers.toml",
            format!("{head}workers = 0\n"),
            vec!["workers.toml:5", "interface.workers", "out of range"],
        ),
        (
            "base64.toml",
            "[interface]\nname = \"sdbad\"\nprivate_key = \"not base64!\"\n".into(),
            vec!["base64.toml:3", "interface.private_key", "base64"],
        ),
        (
            "length.toml",
            format!("{head}\n[[peer]]\npublic_key = \"AAAA\"\n"),
            vec!["length.toml:7", "peer[0].public_key", "32 bytes"],
        ),
        (
            "cidr.toml",
            format!("{head}\n[[peer]]\npublic_key = \"{pk1}\"\nallowed_ips = [\"10.0.0.0/40\"]\n"),
            vec!["cidr.toml:8", "peer[0].allowed_ips", "prefix length"],
        ),
        (
            "twice.toml",
            format!("{head}\n[[peer]]\npublic_key = \"{pk1}\"\n\n[[peer]]\npublic_key = \"{pk1}\"\n"),
            vec!["twice.toml:10", "peer[1].public_key", "same public key as peer[0]"],
        ),
        (
            "claimed.toml",
            format!(
                "{head}\n[[peer]]\npublic_key = \"{pk1}\"\nallowed_ips = [\"10.9.0.0/16\"]\n\n[[peer]]\npublic_key = \"{pk2}\"\nallowed_ips = [\"10.9.0.0/16\"]\n"
            ),
            vec!["claimed.toml:12", "peer[1].allowed_ips", "already claimed by peer[0]"],
        ),
        (
            "keyfile.toml",
            "[interface]\nname = \"sdbad\"\nprivate_key_file = \"open.key\"\n".into(),
            vec!["keyfile.toml:3", "private_key_file", "readable by others", "chmod 600"],
        ),
        (
            "nokey.toml",
            "[interface]\nname = \"sdbad\"\nprivate_key_file = \"missing.key\"\n".into(),
            vec!["nokey.toml:3", "missing.key"],
        ),
        (
            "endpoint.toml",
            format!("{head}\n[[peer]]\npublic_key = \"{pk1}\"\nendpoint = \"198.18.0.1\"\n"),
            vec!["endpoint.toml:8", "peer[0].endpoint", "host:port"],
        ),
        (
            "syntax.toml",
            format!("{head}[[peer]\n"),
            vec!["syntax.toml:5"],
        ),
        // Type and range errors name the key too.
        (
            "port-range.toml",
            format!("[interface]\nname = \"sdbad\"\nprivate_key = \"{key}\"\nlisten_port = 70000\n"),
            vec!["port-range.toml:4", "interface.listen_port", "70000 is out of range"],
        ),
        (
            "port-type.toml",
            format!("[interface]\nname = \"sdbad\"\nprivate_key = \"{key}\"\nlisten_port = \"51820\"\n"),
            vec!["port-type.toml:4", "interface.listen_port", "without quotes"],
        ),
        (
            "keepalive-range.toml",
            format!("{head}\n[[peer]]\npublic_key = \"{pk1}\"\npersistent_keepalive = 70000\n"),
            vec!["keepalive-range.toml:8", "peer[0].persistent_keepalive", "out of range"],
        ),
        (
            "address-type.toml",
            format!("{head}address = \"10.77.0.1/24\"\n"),
            vec!["address-type.toml:5", "interface.address", "a list is expected"],
        ),
        (
            "duplicate.toml",
            format!("{head}mtu = 1420\nmtu = 1400\n"),
            vec!["duplicate.toml:6", "interface.mtu", "given twice"],
        ),
        (
            "no-public-key.toml",
            format!("{head}\n[[peer]]\nallowed_ips = [\"10.9.0.0/16\"]\n"),
            vec!["no-public-key.toml:6", "peer[0]", "public_key is required"],
        ),
        (
            "host-bits.toml",
            format!("{head}\n[[peer]]\npublic_key = \"{pk1}\"\nallowed_ips = [\"10.77.0.5/24\"]\n"),
            vec!["host-bits.toml:8", "peer[0].allowed_ips", "host bits", "10.77.0.0/24", "10.77.0.5/32"],
        ),
        (
            "table-word.toml",
            format!("{head}table = \"vpn\"\n"),
            vec!["table-word.toml:5", "interface.table", "a table number"],
        ),
        (
            "table-zero.toml",
            format!("{head}table = 0\n"),
            vec!["table-zero.toml:5", "interface.table", "not a table"],
        ),
        (
            "dns-line.toml",
            format!("{head}dns = [\"10.99.0.1\", \"corp.example\\nnameserver 198.18.0.66\"]\n"),
            vec!["dns-line.toml:5", "interface.dns", "neither an IP address"],
        ),
        (
            "fwmark-type.toml",
            format!("{head}fwmark = \"0x1234\"\n"),
            vec!["fwmark-type.toml:5", "interface.fwmark", "without quotes"],
        ),
        (
            "port-zero.toml",
            format!("{head}\n[[peer]]\npublic_key = \"{pk1}\"\nendpoint = \"198.18.0.1:0\"\n"),
            vec!["port-zero.toml:8", "peer[0].endpoint", "port 0"],
        ),
    ];
    std::fs::write(d.join("open.key"), format!("{key}\n")).unwrap();
    for (name, text, expected) in &cases {
        let path = write(d, name, text);
        for cmd in ["check", "up"] {
            let err = one_line_error(cmd, &path);
            for e in expected {
                assert!(
                    err.contains(e),
                    "{cmd} {name}: {err:?} should mention {e:?}"
                );
            }
        }
    }
    let err = one_line_error("check", &d.join("absent.toml"));
    assert!(
        err.contains("absent.toml") && err.contains("cannot read"),
        "{err}"
    );

    // An inline private key in a file others can read: accepted, with a warning naming it.
    let open = write(
        d,
        "inline-open.toml",
        &format!("[interface]\nname = \"sdopen\"\nprivate_key = \"{key}\"\n"),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = Command::new(bin_path("suidao-server").unwrap())
        .args(["check", "-c"])
        .arg(&open)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("inline-open.toml:3: interface.private_key: warning")
            && err.contains("chmod 600"),
        "{err}"
    );

    // And a good one passes `check`, which prints what `up` would do.
    write_secret(&d.join("good.key"), &key).unwrap();
    let good = write(
        d,
        "good.toml",
        &format!(
            "[interface]\nname = \"sdgood\"\nprivate_key_file = \"good.key\"\naddress = [\"10.99.0.1/24\"]\ndns = [\"10.99.0.53\", \"fd99::53\", \"corp.example\"]\npost_up = [\"nft list ruleset\", \"echo %i\"]\n\n[[peer]]\nname = \"alice\"\npublic_key = \"{pk1}\"\nallowed_ips = [\"10.99.0.2/32\"]\n"
        ),
    );
    let out = Command::new(bin_path("suidao-server").unwrap())
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for e in [
        "interface sdgood",
        "address      10.99.0.1/24",
        "route        10.99.0.2/32 dev sdgood",
        "peer alice",
        "mtu          1420",
        "post_up      nft list ruleset",
        "post_up      echo %i",
        "dns          10.99.0.53, fd99::53",
        "search       corp.example",
    ] {
        assert!(text.contains(e), "check output lacks {e:?}:\n{text}");
    }
    assert!(
        !text.contains("hairpin"),
        "one peer: no hairpin line\n{text}"
    );
}

#[test]
fn a_port_in_use_fails_with_one_clear_line() {
    if !suidao_lab::require("a_port_in_use_fails_with_one_clear_line", &[]) {
        return;
    }
    let ns = suidao_lab::Netns::create(&suidao_lab::unique(suidao_lab::PREFIX)).unwrap();
    let dir = TempDir::new().unwrap();
    let key = PrivateKey::generate(&mut OsRng).to_base64().to_string();
    // The port held by a plain socket; and by another suidao's worker sockets (SO_REUSEPORT,
    // which would let a second group of the same user share the port if asked naively).
    // A port of its own each time: a socket just closed may still be held for a moment by a
    // child another test thread forked (its copy of the descriptor goes at exec).
    for (workers, port) in [(1, 51820u16), (2, 51821)] {
        let cfg = write(
            dir.path(),
            "port.toml",
            &format!(
                "[interface]\nname = \"sdport\"\nprivate_key = \"{key}\"\nlisten_port = {port}\nworkers = {workers}\n"
            ),
        );
        {
            // It holds a private key: owner only (else `up` warns first).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let _holder: Box<dyn std::any::Any> = if workers == 1 {
            Box::new(
                ns.run(move || std::net::UdpSocket::bind(("::", port)))
                    .unwrap()
                    .unwrap(),
            )
        } else {
            Box::new(
                ns.run(move || suidao_common::udp::Udp::bind_group(Some(port), 2))
                    .unwrap()
                    .unwrap(),
            )
        };
        let out = ns
            .command(bin_path("suidao-server").unwrap())
            .unwrap()
            .args(["up", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "workers = {workers}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains(&format!("UDP port {port} is already in use")),
            "{err}"
        );
    }
}

#[test]
fn the_example_configs_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("config");
    for (bin, file) in [
        ("suidao-server", "server.toml"),
        ("suidao-client", "client.toml"),
    ] {
        let out = Command::new(bin_path(bin).unwrap())
            .args(["check", "-c"])
            .arg(root.join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The interface name belongs to a link of another kind: one line that says which.
#[test]
fn a_name_taken_by_another_kind_of_link_is_named() {
    if !suidao_lab::require("a_name_taken_by_another_kind_of_link_is_named", &[]) {
        return;
    }
    let ns = suidao_lab::Netns::create(&suidao_lab::unique(suidao_lab::PREFIX)).unwrap();
    ns.netlink(|h| async move { suidao_lab::netlink::add_veth(&h, "sdtaken", "sdtaken-p").await })
        .unwrap();
    let dir = TempDir::new().unwrap();
    let key = PrivateKey::generate(&mut OsRng).to_base64().to_string();
    write_secret(&dir.path().join("k"), &key).unwrap();
    let cfg = write(
        dir.path(),
        "taken.toml",
        "[interface]\nname = \"sdtaken\"\nprivate_key_file = \"k\"\n",
    );
    let out = ns
        .command(bin_path("suidao-server").unwrap())
        .unwrap()
        .args(["up", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("sdtaken exists already, and it is a veth, not a TUN"),
        "{err}"
    );
}

/// A host name that does not resolve now is a warning for `check` and nothing for `export`
/// (which does not use the address); `up` resolves it. Run in a namespace of its own with no
/// way out, so the lookup asks nobody.
#[test]
fn an_unresolvable_endpoint_name_is_a_warning_for_check_and_export() {
    if !suidao_lab::require("unresolvable endpoint name", &[]) {
        return;
    }
    let ns = suidao_lab::Netns::create(&suidao_lab::unique(suidao_lab::PREFIX)).unwrap();
    let dir = TempDir::new().unwrap();
    let key = PrivateKey::generate(&mut OsRng).to_base64().to_string();
    write_secret(&dir.path().join("k"), &key).unwrap();
    let pk = PrivateKey::generate(&mut OsRng).public_key().to_string();
    let cfg = write(
        dir.path(),
        "named.toml",
        &format!(
            "[interface]\nname = \"sdnamed\"\nprivate_key_file = \"k\"\n\n[[peer]]\npublic_key = \"{pk}\"\nendpoint = \"vpn.nowhere.invalid:51820\"\nallowed_ips = [\"10.9.0.0/16\"]\n"
        ),
    );
    for (cmd, warns) in [("check", true), ("export", false)] {
        let out = ns
            .command(bin_path("suidao-server").unwrap())
            .unwrap()
            .args([cmd, "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd}: {err}");
        assert_eq!(
            err.contains("warning") && err.contains("cannot resolve"),
            warns,
            "{cmd}: {err}"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("vpn.nowhere.invalid:51820"), "{cmd}: {text}");
    }
}

/// `up` as a user with CAP_NET_ADMIN but not root: the interface could be made, the control
/// socket cannot; one line says what is needed, and nothing is left behind.
#[test]
fn up_with_cap_net_admin_but_not_root_says_what_it_needs() {
    if !suidao_lab::require("up with CAP_NET_ADMIN only", &["setpriv", "ip"]) {
        return;
    }
    use std::os::unix::fs::{chown, PermissionsExt};
    let ns = suidao_lab::Netns::create(&suidao_lab::unique(suidao_lab::PREFIX)).unwrap();
    // A folder the user can reach, whatever folder this checkout is in, with a copy of the
    // binary and a config (and key) of the user's own.
    let dir = std::env::temp_dir().join(suidao_lab::unique("sdcap"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("suidao-client");
    std::fs::copy(bin_path("suidao-client").unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = dir.join("k");
    std::fs::write(&key, PrivateKey::generate(&mut OsRng).to_base64().as_str()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ifname = suidao_lab::unique("sdcap");
    let cfg = dir.join("cap.toml");
    std::fs::write(
        &cfg,
        format!("[interface]\nname = \"{ifname}\"\nprivate_key_file = \"k\"\naddress = [\"10.99.0.2/24\"]\n"),
    )
    .unwrap();
    for f in [&key, &cfg] {
        chown(f, Some(65534), Some(65534)).unwrap();
    }
    let before = suidao_lab::netlink::snapshot_of(&ns).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "setpriv"])
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+net_admin",
            "--ambient-caps=+net_admin",
        ])
        .arg(&bin)
        .args(["up", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains("CAP_NET_ADMIN alone does not give that"),
        "{err}"
    );
    assert_eq!(
        suidao_lab::netlink::snapshot_of(&ns).unwrap(),
        before,
        "nothing left behind"
    );
    assert!(!suidao_common::uapi::socket_path(&ifname).exists());
}
