//! Tests that need root or an external tool: they skip loudly on a developer's machine and fail
//! under CI (`CI=true`), where a skipped test would hide a missing install step.

use std::path::Path;

/// Whether a program is on PATH.
pub fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(name);
            p.is_file() && is_executable(&p)
        })
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when the test can run: root, and every tool present. Otherwise prints a loud SKIPPED
/// line and returns false, or panics when `CI=true`.
pub fn require(test: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".to_string());
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun".to_string());
    }
    for t in tools {
        if !have_tool(t) {
            missing.push(format!("the tool `{t}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    unmet(test, &missing.join(", "))
}

/// A need `require` cannot check (a particular flavour of a tool, say): prints a loud SKIPPED
/// line and returns false, or panics when `CI=true`.
pub fn unmet(test: &str, need: &str) -> bool {
    let msg = format!("{test} needs {need}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; under CI=true this is a failure, not a skip (does .ci/run install it?)");
    }
    eprintln!("\n******** SKIPPED: {msg} ********\n");
    false
}
