//! The build script of the binaries that carry a tunnel (suidao-server, suidao-client,
//! suidao-wg): links them with `hot-path.ld`, which packs the data path's code together (see
//! that file). Only where the linker reads such a script: Linux with GNU ld or LLD.

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let script = std::path::Path::new(&manifest).join("../build/hot-path.ld");
    println!("cargo::rerun-if-changed={}", script.display());
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux {
        println!("cargo::rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
}
