//! Golden files: output checked against a file in the repository, rewritten with
//! `UPDATE_GOLDEN=1`. Shared by the translation and injection golden tests.

use std::path::Path;

/// `Ok` when `got` equals the file at `expected_path` (or, with `UPDATE_GOLDEN` set, after
/// writing `got` there); else the first differing lines.
pub fn compare(expected_path: &Path, got: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        return std::fs::write(expected_path, got).map_err(|e| e.to_string());
    }
    let expected = std::fs::read_to_string(expected_path).map_err(|e| {
        format!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            expected_path.display()
        )
    })?;
    if expected == got {
        return Ok(());
    }
    let diff: Vec<String> = expected
        .lines()
        .zip(got.lines())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .take(10)
        .map(|(i, (a, b))| format!("line {}:\n  expected: {a}\n  got:      {b}", i + 1))
        .collect();
    Err(format!(
        "{} differs ({} vs {} lines):\n{}",
        expected_path.display(),
        expected.lines().count(),
        got.lines().count(),
        diff.join("\n")
    ))
}
