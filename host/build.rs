//! Builds the standard guest component (guest/standard, the guest library under a policy that
//! allows every push) for wasm32-wasip2 and hands it to the host to embed, so a plain
//! `cargo build` produces a working `ocipush`.
//!
//! The nested cargo gets its own target directory: sharing the outer one deadlocks on its lock.

use std::path::PathBuf;
use std::process::Command;

use sha2::Digest as _;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf();
    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "guest/standard",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "ocipush-standard-guest",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        // The outer build's flags are for the host target, not the guest's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        // A coverage run (scripts/coverage.sh, cargo-llvm-cov) instruments workspace crates
        // through these wrappers, and an instrumented wasm32 guest fails to link: there is no
        // profiler runtime (profiler_builtins) for wasm32-wasip2. The guest is measured natively.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        // simd128 lets sha256 in the guest run about 1.5x faster; the remaps keep build paths
        // out of the component, so the same source builds the same bytes anywhere.
        // scripts/guest-digest.sh rebuilds it the same way (scripts/lib.sh build_component), for
        // auditors and for the tests.
        .env(
            "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
            format!(
                "-C target-feature=+simd128 --remap-path-prefix={}=/ocipush --remap-path-prefix={}=/cargo",
                root.display(),
                cargo_home().display()
            ),
        )
        .status()
        .expect("running cargo to build the guest");
    if !status.success() {
        panic!(
            "building the guest failed; is the target installed? (rustup target add wasm32-wasip2)"
        );
    }
    let wasm = target_dir.join("wasm32-wasip2/release/ocipush_standard_guest.wasm");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("ocipush_guest.wasm");
    std::fs::copy(&wasm, &out).unwrap_or_else(|e| panic!("copying {}: {e}", wasm.display()));
    // `ocipush --version` names the embedded guest and the contract without hashing anything
    // at run time.
    let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("reading {}: {e}", out.display()));
    println!(
        "cargo:rustc-env=OCIPUSH_GUEST_SHA256={}",
        hex::encode(sha2::Sha256::digest(&bytes))
    );
    println!(
        "cargo:rustc-env=OCIPUSH_WIT_VERSION={}",
        wit_version(&root.join("wit/ocipush.wit"))
    );
}

/// The version in the contract's `package ocipush:core@VERSION;` line.
fn wit_version(path: &std::path::Path) -> String {
    let wit =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    wit.lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("package ocipush:core@")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .unwrap_or_else(|| {
            panic!(
                "{} has no `package ocipush:core@VERSION;` line",
                path.display()
            )
        })
}

/// Where cargo keeps dependency sources, whose paths would otherwise land in panic messages.
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"))
}
