//! The data path's code lies where `build/hot-path.ld` puts it: in each binary that carries a
//! tunnel, a `.text.hot` section, and in it at least one function for every pattern of the
//! script's first list (the functions a lone packet runs through). A function renamed or moved
//! to another module stops matching its pattern without any other sign (the program works,
//! only slower after a quiet spell); this test is that sign. The same for the statics of the
//! script's `.data.hot` block.
// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use suidao_lab::suidao::bin_path;

/// The function patterns (without the `.text.` of the section name) of the script's first
/// list, up to the comment that starts the rest of the modules; file patterns left out.
fn first_patterns() -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../build/hot-path.ld");
    let text = std::fs::read_to_string(script).unwrap();
    let first = text.split("Then the rest").next().unwrap();
    first
        .lines()
        .filter_map(|l| l.trim().strip_prefix("*(.text.")?.strip_suffix(')'))
        .map(str::to_string)
        .collect()
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = parts.split_first().unwrap();
    let Some(mut left) = name.strip_prefix(first) else {
        return false;
    };
    for (i, part) in rest.iter().enumerate() {
        if i == rest.len() - 1 {
            return left.ends_with(part);
        }
        match left.find(part) {
            Some(at) => left = &left[at + part.len()..],
            None => return false,
        }
    }
    left.is_empty()
}

#[test]
fn glob_matches_as_the_linker_does() {
    assert!(glob("_ZN4ring4aead*", "_ZN4ring4aead9algorithm4openE"));
    assert!(glob(
        "*Udp*Transport*4recv*",
        "_ZN79_$LT$x..Udp$u20$as$u20$x..Transport$GT$4recv17hE"
    ));
    assert!(!glob(
        "*Udp*Transport*4recv*",
        "_ZN79_$LT$x..Udp$u20$as$u20$x..Transport$GT$4send17hE"
    ));
    assert!(glob("exact", "exact"));
    assert!(!glob("exact", "exactly"));
    assert!(glob("a*b*a", "abba"));
}

/// The symbols of one kind (`F` functions, `O` objects) in `section` of the binary at `path`,
/// from `objdump -t`.
fn symbols_in(path: &std::path::Path, kind: &str, section: &str) -> Vec<String> {
    let out = Command::new("objdump")
        .arg("-t")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "objdump -t {}", path.display());
    let (kind, section) = (format!(" {kind} "), format!("{section}\t"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "0000000000012d000 l     F .text.hot	0000000000000123 name"
            let (head, name) = l.rsplit_once(' ')?;
            (head.contains(&kind) && head.contains(&section)).then(|| name.to_string())
        })
        .collect()
}

/// The symbol patterns of the script's `.data.hot` block (the statics a packet reads), without
/// their section's prefix (`.data.`, `.bss.`).
fn data_patterns() -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../build/hot-path.ld");
    let text = std::fs::read_to_string(script).unwrap();
    let block = text.split(".data.hot :").nth(1).unwrap();
    let block = block.split('}').next().unwrap();
    block
        .lines()
        .filter_map(|l| {
            let section = l.trim().strip_prefix("*(")?.strip_suffix(')')?;
            let (_, symbol) = section.trim_start_matches('.').split_once('.')?;
            Some(symbol.to_string())
        })
        .collect()
}

/// Whether objdump is there; where not, says so (and fails under CI, as `require` does).
fn have_objdump() -> bool {
    let there = suidao_lab::require::have_tool("objdump");
    if !there {
        suidao_lab::require::unmet("the hot-path layout test", "objdump (binutils)");
    }
    there
}

/// Asserts that in each binary that carries a tunnel, `section` holds a symbol of `kind` (`F`
/// functions, `O` objects) for every one of `patterns`.
fn each_binary_holds(patterns: &[String], kind: &str, section: &str) {
    for program in ["suidao-server", "suidao-client", "suidao-wg"] {
        let there = symbols_in(&bin_path(program).unwrap(), kind, section);
        assert!(!there.is_empty(), "{program} has no {section} section");
        let unmatched: Vec<&String> = patterns
            .iter()
            .filter(|p| !there.iter().any(|name| glob(p, name)))
            .collect();
        assert!(
            unmatched.is_empty(),
            "{program}: no symbol in {section} matches {unmatched:?} (renamed or moved? \
             mend build/hot-path.ld)"
        );
    }
}

#[test]
fn the_packet_path_lies_in_the_hot_section_of_each_binary() {
    if !have_objdump() {
        return;
    }
    let patterns = first_patterns();
    assert!(
        patterns.len() >= 20,
        "the script's first list: {patterns:?}"
    );
    each_binary_holds(&patterns, "F", ".text.hot");
}

#[test]
fn the_statics_a_packet_reads_lie_in_the_hot_data_section_of_each_binary() {
    if !have_objdump() {
        return;
    }
    let patterns = data_patterns();
    assert_eq!(
        patterns.len(),
        3,
        "the script's .data.hot block: {patterns:?}"
    );
    each_binary_holds(&patterns, "O", ".data.hot");
}
