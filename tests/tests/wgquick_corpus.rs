//! Real-world wg-quick files (`tests/corpus/wg-quick/`: a commercial provider's client with DNS
//! and both address families, a server with many named peers and iptables hooks, Table = off
//! with FwMark, CRLF line endings with `;` comments, IPv6-literal and host-name endpoints):
//! each imports (what suidao leaves out is a warning with its line, not a refusal), passes
//! `check`, exports, and imports again to the same TOML. `check` runs in a namespace of its
//! own with no way out, so the host names it tries to resolve ask nobody.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use suidao_lab::suidao::{bin_path, TempDir};
use suidao_lab::Netns;

fn server(ns: Option<&Netns>, args: &[&str]) -> (String, String) {
    let mut cmd = match ns {
        Some(ns) => ns.command(bin_path("suidao-server").unwrap()).unwrap(),
        None => std::process::Command::new(bin_path("suidao-server").unwrap()),
    };
    let out = cmd.args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "suidao-server {args:?}: {stderr}");
    (stdout, stderr)
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/wg-quick");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    files
}

#[test]
fn real_wg_quick_files_import_check_export_and_import_again() {
    if !suidao_lab::require("wg-quick corpus", &[]) {
        return;
    }
    let ns = Netns::create(&suidao_lab::unique(suidao_lab::PREFIX)).unwrap();
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let files = corpus();
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let stem = file.file_stem().unwrap().to_str().unwrap();
        let toml = a.path().join(format!("{stem}.toml"));
        let (_, warnings) = server(
            None,
            &[
                "import",
                file.to_str().unwrap(),
                "-o",
                toml.to_str().unwrap(),
            ],
        );
        let imported = std::fs::read_to_string(&toml).unwrap();
        server(Some(&ns), &["check", "-c", toml.to_str().unwrap()]);
        let (exported, _) = server(None, &["export", "-c", toml.to_str().unwrap()]);
        let again = b.path().join(format!("{stem}.conf"));
        std::fs::write(&again, &exported).unwrap();
        let (reimported, _) = server(None, &["import", again.to_str().unwrap()]);
        assert_eq!(
            imported, reimported,
            "{name}: import(export(import(x))) == import(x)"
        );
        match stem {
            "provider" => {
                assert!(warnings.is_empty(), "{warnings}");
                assert!(
                    imported.contains(
                        "dns = [\"10.64.0.1\", \"fc00:bbbb:bbbb:bb01::1\", \"corp.example.com\"]"
                    ),
                    "{imported}"
                );
                assert!(
                    exported
                        .contains("DNS = 10.64.0.1, fc00:bbbb:bbbb:bb01::1, corp.example.com\n"),
                    "{exported}"
                );
                assert!(imported.contains("endpoint = \"se-got-wg-001.relays.example.net:51820\""));
                assert!(imported.contains("\"::/0\"") || imported.contains("\"::0/0\""));
            }
            "server-many" => {
                assert!(warnings.contains("SaveConfig") && warnings.contains("never rewrites"));
                assert_eq!(imported.matches("[[peer]]").count(), 12);
                assert!(imported.contains("name = \"laptop-13\""), "{imported}");
                assert!(imported.contains("-i %i -j ACCEPT; iptables"), "{imported}");
            }
            "table-off" => {
                assert!(warnings.is_empty(), "{warnings}");
                assert!(
                    imported.contains("table = \"off\"\nfwmark = 0x1234\n"),
                    "{imported}"
                );
            }
            "crlf" => {
                assert!(warnings.is_empty(), "{warnings}");
                assert!(imported.contains("mtu = 1380") && !imported.contains('\r'));
            }
            "ipv6-endpoint" => {
                assert!(imported.contains("endpoint = \"[2001:db8:30::1]:51820\""));
            }
            other => panic!("a corpus file without expectations: {other}"),
        }
    }
}
