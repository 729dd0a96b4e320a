//! Golden files: output checked against a file in the repository, rewritten with
//! `UPDATE_GOLDEN=1`. Shared by the translation and injection golden tests.

use std::path::{Path, PathBuf};

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

/// A golden case's `credentials/NAMESPACE/NAME/` directories, read as Kubernetes TLS Secrets
/// (`tls.crt`, `tls.key`, `ca.crt`); `None` when the case has none (then `credentialName` is
/// refused, as without Kubernetes).
pub fn credentials(dir: &Path) -> Result<Option<strait_model::Credentials>, String> {
    let root = dir.join("credentials");
    if !root.is_dir() {
        return Ok(None);
    }
    let entries = |p: &Path| -> Result<Vec<PathBuf>, String> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        Ok(v)
    };
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let mut out = strait_model::Credentials::new();
    for ns in entries(&root)? {
        for secret in entries(&ns)? {
            let data = entries(&secret)?
                .into_iter()
                .map(|f| Ok((name(&f), std::fs::read(&f).map_err(|e| e.to_string())?)))
                .collect::<Result<_, String>>()?;
            let id = strait_model::CredentialId::new(name(&ns), name(&secret));
            let credential = strait_model::Credential::from_secret(
                id.clone(),
                Some(strait_model::credential::TLS_SECRET_TYPE),
                &data,
            )
            .map_err(|e| e.to_string())?;
            out.insert(id, std::sync::Arc::new(credential));
        }
    }
    Ok(Some(out))
}
