//! Finds the descriptor set envoy-types was generated from (`src/generated/types.bin` in its
//! package), so the admin API and straitctl can write Envoy's JSON form of its protobufs.

use std::error::Error;
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let cargo = std::env::var("CARGO")?;
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    let target = std::env::var("TARGET")?;
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(&target)
        .arg("--manifest-path")
        .arg(&manifest)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let envoy_types = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "envoy-types")
        .filter_map(|p| p["manifest_path"].as_str())
        .map(|m| PathBuf::from(m).with_file_name("src/generated/types.bin"))
        .find(|p| p.exists())
        .ok_or("envoy-types' src/generated/types.bin not found through cargo metadata")?;
    println!("cargo:rerun-if-changed={}", envoy_types.display());
    println!(
        "cargo:rustc-env=STRAIT_ENVOY_DESCRIPTORS={}",
        envoy_types.display()
    );
    Ok(())
}
