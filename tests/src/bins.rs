//! Where the binaries under test live: workspace binaries in the cargo target dir, and Envoy.

use std::path::{Path, PathBuf};

/// The workspace root, fixed at compile time (this crate sits one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Directories a workspace binary may be in, most specific first.
fn bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    // Test executables run from target/<profile>/deps/; binaries sit one level up.
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        if dir.ends_with("deps") {
            if let Some(up) = dir.parent() {
                dirs.push(up.to_path_buf());
            }
        } else {
            dirs.push(dir.to_path_buf());
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        let target = if target.is_relative() {
            workspace_root().join(target)
        } else {
            target
        };
        dirs.push(target.join("debug"));
    }
    dirs.push(workspace_root().join("target").join("debug"));
    dirs
}

/// A binary built from this workspace, by name.
///
/// Integration tests can't make cargo build another package's binaries, so they must have been
/// built first (`scripts/test.sh` does).
pub fn cargo_bin(name: &str) -> PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let dirs = bin_dirs();
    dirs.iter()
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "binary {name:?} not found in {dirs:?}: run `cargo build --workspace --bins` first"
            )
        })
}

pub fn straitd() -> PathBuf {
    cargo_bin("straitd")
}

pub fn straitctl() -> PathBuf {
    cargo_bin("straitctl")
}

/// Where `scripts/install-tools.sh` puts Envoy.
pub fn default_envoy_path() -> PathBuf {
    workspace_root().join(".tools/envoy/envoy/_bin/envoy")
}

/// The Envoy binary: `$STRAIT_ENVOY`, else the project-local install.
pub fn envoy_path() -> PathBuf {
    try_envoy_path().unwrap_or_else(|| {
        panic!(
            "no Envoy binary at $STRAIT_ENVOY or {}: run scripts/install-tools.sh",
            default_envoy_path().display()
        )
    })
}

/// Like [`envoy_path`], but `None` instead of a panic when Envoy is missing.
pub fn try_envoy_path() -> Option<PathBuf> {
    match std::env::var_os("STRAIT_ENVOY").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => Some(default_envoy_path()).filter(|p| p.is_file()),
    }
}
