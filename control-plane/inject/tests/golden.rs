//! Golden tests: workload YAML in, injected YAML out.
//!
//! Each case is a directory under `tests/golden/` with `input.yaml`, optionally
//! `settings.yaml` (the injection settings; without it, the defaults with a fixed image), and
//! `expected.yaml`. `UPDATE_GOLDEN=1 cargo test -p strait-inject --test golden` rewrites the
//! expectations; review the diff before committing it.

use std::path::{Path, PathBuf};

use pretty_assertions::assert_eq;
use strait_inject::{InjectSettings, inject_manifest};

const DEFAULT_SETTINGS: &str = "image: ghcr.io/strait-mesh/strait-proxy:golden\n";

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/golden")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn settings(dir: &Path) -> InjectSettings {
    let text = std::fs::read_to_string(dir.join("settings.yaml"))
        .unwrap_or_else(|_| DEFAULT_SETTINGS.to_string());
    InjectSettings::from_yaml(&text).expect("settings.yaml")
}

fn check(dir: &Path) -> Result<(), String> {
    let input = std::fs::read_to_string(dir.join("input.yaml")).map_err(|e| e.to_string())?;
    let settings = settings(dir);
    let got = inject_manifest(&input, &settings, false).map_err(|e| e.to_string())?;
    // Injecting the output again changes nothing.
    let again = inject_manifest(&got, &settings, false).map_err(|e| e.to_string())?;
    if again != got {
        return Err(format!(
            "{}: a second injection changed the output:\n{again}",
            dir.display()
        ));
    }
    let expected_path = dir.join("expected.yaml");
    strait_tests::golden::compare(&expected_path, &got)
}

#[test]
fn golden_cases() {
    let cases = cases();
    assert!(cases.len() >= 12, "found {} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|d| check(d).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn documents_left_alone_are_written_back_byte_for_byte() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/untouched");
    let input = std::fs::read_to_string(dir.join("input.yaml")).expect("input");
    let got = inject_manifest(&input, &settings(&dir), false).expect("inject");
    assert_eq!(got, input);
}
