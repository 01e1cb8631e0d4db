//! Shell completion, as a person gets it: the generated bash script is sourced into a real
//! bash and asked what follows a partly typed word, after a subcommand too.
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
