//! The command line as a person meets it: shell completion (the generated bash script sourced
//! into a real bash and asked what follows a partly typed word, after a subcommand too), and
//! help text for every argument of every command.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use suidao_lab::suidao::bin_path;

/// What bash offers for the last of `words` with `program`'s completion script loaded.
fn offers(program: &str, words: &[&str]) -> Vec<String> {
    let script = Command::new(bin_path(program).unwrap())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let dir = suidao_lab::suidao::TempDir::new().unwrap();
    let path = dir.path().join("completion.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let function = format!("_{}", program.replace('-', "__"));
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cur = words.last().unwrap();
    let prev = words[words.len() - 2];
    let run = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; {function} {program} '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display(),
        quoted.join(" "),
        words.len() - 1
    );
    let out = Command::new("bash").args(["-c", &run]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_options_after_a_subcommand() {
    if !suidao_lab::require::have_tool("bash") {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "bash is missing under CI=true"
        );
        eprintln!("\n******** SKIPPED: completion needs bash ********\n");
        return;
    }
    for (program, words, expected) in [
        (
            "suidao-server",
            vec!["suidao-server", "add-client", "--e"],
            "--endpoint",
        ),
        ("suidao-server", vec!["suidao-server", "st"], "status"),
        (
            "suidao-server",
            vec!["suidao-server", "up", "--c"],
            "--config",
        ),
        (
            "suidao-client",
            vec!["suidao-client", "status", "--j"],
            "--json",
        ),
    ] {
        let got = offers(program, &words);
        assert!(
            got.iter().any(|w| w == expected),
            "{} <TAB>: {got:?}, not {expected}",
            words.join(" ")
        );
    }
}

/// `--help` of every command of both binaries: each argument and option says what it is.
#[test]
fn every_argument_has_help_text() {
    for program in ["suidao-server", "suidao-client"] {
        let top = Command::new(bin_path(program).unwrap())
            .arg("--help")
            .output()
            .unwrap();
        let top = String::from_utf8_lossy(&top.stdout).to_string();
        let commands: Vec<String> = top
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect();
        assert!(commands.len() >= 10, "{top}");
        for c in &commands {
            let out = Command::new(bin_path(program).unwrap())
                .args([c.as_str(), "--help"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            for line in text.lines() {
                let t = line.trim_start();
                let is_arg = line.starts_with("  ")
                    && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['));
                if !is_arg {
                    continue;
                }
                // `  -c, --config <FILE>  The configuration file` : a name, two spaces, text.
                let described = t
                    .split_once("  ")
                    .is_some_and(|(_, d)| !d.trim().is_empty());
                assert!(described, "{program} {c}: no help for `{t}`\n{text}");
            }
        }
    }
}

/// `genpsk` as `wg genpsk`; `genkey > file` into a file others can read warns as `wg genkey`
/// does, into a private file or a pipe it does not.
#[test]
fn genpsk_and_the_genkey_umask_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = suidao_lab::suidao::TempDir::new().unwrap();
    for (mode, warns) in [(0o644, true), (0o600, false)] {
        let path = dir.path().join(format!("key-{mode:o}"));
        let file = std::fs::File::create(&path).unwrap();
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .unwrap();
        let out = Command::new(bin_path("suidao-server").unwrap())
            .arg("genkey")
            .stdout(file)
            .output()
            .unwrap();
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.contains("Warning: writing to world accessible file."),
            warns,
            "mode {mode:o}: {err:?}"
        );
        let key = std::fs::read_to_string(&path).unwrap();
        assert!(key.trim().parse::<suidao_proto::keys::PrivateKey>().is_ok());
    }
    let out = Command::new(bin_path("suidao-client").unwrap())
        .arg("genpsk")
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty());
    let psk = String::from_utf8_lossy(&out.stdout);
    assert!(psk
        .trim()
        .parse::<suidao_proto::keys::PresharedKey>()
        .is_ok_and(|k| !k.is_zero()));
}

/// `status` as a user who may not open the control socket: says so, rather than asking whether
/// the interface is up.
#[test]
fn status_as_a_user_says_permission_denied() {
    if !suidao_lab::require("status as a user", &["setpriv"]) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let vpn = suidao_tests::vpn::P2pVpn::start(false).unwrap();
    // A copy of the binary that the user can reach whatever folder this checkout is in.
    let dir = std::env::temp_dir().join(suidao_lab::unique("sdbin"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("suidao-server");
    std::fs::copy(bin_path("suidao-server").unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["status", &vpn.server.ifname])
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run this as root") && !err.contains("is the interface up"),
        "{err}"
    );
}

/// The man page describes every command itself (no references to per-command pages that are
/// never installed) and the configuration keys.
#[test]
fn the_man_page_holds_every_command_and_the_config_keys() {
    for program in ["suidao-server", "suidao-client"] {
        let out = Command::new(bin_path(program).unwrap())
            .arg("man")
            .output()
            .unwrap();
        assert!(out.status.success());
        let page = String::from_utf8_lossy(&out.stdout);
        let escaped = program.replace('-', "\\-");
        assert!(!page.contains(&format!("{escaped}\\-up(1)")), "{page}");
        for command in ["up", "check", "status", "reload", "import", "genpsk"] {
            assert!(
                page.contains(&format!(".SS \"{escaped} {command}\"")),
                "{program}: no section for {command}"
            );
        }
        assert!(page.contains(".SH CONFIGURATION") && page.contains("private_key_file"));
        assert!(
            page.contains("\\fB\\-c\\fR, \\fB\\-\\-config\\fR \\fIFILE\\fR"),
            "{page}"
        );
    }
    let server = Command::new(bin_path("suidao-server").unwrap())
        .arg("man")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&server.stdout).contains(".SS \"suidao\\-server add\\-client\"")
    );
}
