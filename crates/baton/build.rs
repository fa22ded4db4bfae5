//! Packs the binary's relative relocations (`DT_RELR`, glibc 2.36 and GNU
//! ld 2.38 or newer: Debian 12's). A position-independent binary carries
//! one 24-byte entry per pointer to patch at start-up, 350 kB here, which
//! the loader reads once and which then stays in every agent's resident
//! set; packed, they take a few kilobytes.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
