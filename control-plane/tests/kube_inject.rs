//! `straitctl kube-inject` as a user runs it: a file or stdin in, YAML out, exit codes, and
//! nothing written when something is wrong.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}   # passes through as it is
";

fn straitctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_straitctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("straitctl runs");
    let mut input = child.stdin.take().expect("stdin");
    // A straitctl that stops early (a usage error, a file it cannot read) never reads its
    // input: a broken pipe here is its exit, which the caller asserts on.
    match input.write_all(stdin.unwrap_or_default().as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
        _ => {}
    }
    drop(input);
    child.wait_with_output().expect("straitctl ends")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn injects_a_file_and_stdin_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "web.yaml", DEPLOYMENT);
    let from_file = straitctl(&["kube-inject", "-f", &file], None);
    assert_eq!(
        from_file.status.code(),
        Some(0),
        "{}",
        text(&from_file.stderr)
    );
    let out = text(&from_file.stdout);
    assert!(out.contains("name: strait-proxy"), "{out}");
    assert!(out.contains("name: strait-init"), "{out}");
    assert!(
        out.contains(&format!("image: {}", strait_inject::DEFAULT_IMAGE)),
        "{out}"
    );
    assert!(
        out.ends_with("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}   # passes through as it is\n"),
        "{out}"
    );

    let from_stdin = straitctl(&["kube-inject", "-f", "-"], Some(DEPLOYMENT));
    assert_eq!(
        from_stdin.status.code(),
        Some(0),
        "{}",
        text(&from_stdin.stderr)
    );
    assert_eq!(text(&from_stdin.stdout), out);

    // Injecting the output again changes nothing.
    let again = straitctl(&["kube-inject", "-f", "-"], Some(&out));
    assert_eq!(text(&again.stdout), out);
}

#[test]
fn settings_and_output_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = write(
        dir.path(),
        "settings.yaml",
        "image: registry.example/strait-proxy:1\nnativeSidecars: false\n",
    );
    let output = dir.path().join("out.yaml");
    let run = straitctl(
        &[
            "kube-inject",
            "-f",
            "-",
            "--settings",
            &settings,
            "-o",
            &output.display().to_string(),
        ],
        Some(DEPLOYMENT),
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(run.stdout.is_empty());
    let written = std::fs::read_to_string(&output).expect("the output file");
    assert!(
        written.contains("image: registry.example/strait-proxy:1"),
        "{written}"
    );
    assert!(written.contains("postStart"), "not native: {written}");
}

#[test]
fn errors_exit_1_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out.yaml");
    let out_arg = output.display().to_string();
    let bad = DEPLOYMENT.replace(
        "metadata: {labels: {app: web}}",
        "metadata: {annotations: {traffic.sidecar.istio.io/excludeInboundPorts: 'http'}}",
    );
    let file = write(dir.path(), "bad.yaml", &bad);
    let run = straitctl(&["kube-inject", "-f", &file, "-o", &out_arg], None);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(
        text(&run.stderr),
        format!(
            "error: {file}: document 1: Deployment web: spec.template.metadata.annotations['traffic.sidecar.istio.io/excludeInboundPorts']: \"http\": not a port number (1-65535)\n"
        )
    );
    assert!(!output.exists(), "nothing written");

    let run = straitctl(&["kube-inject", "-f", "-"], Some(&bad));
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stdout.is_empty());
    assert!(text(&run.stderr).starts_with("error: <stdin>: document 1: "));

    let settings = write(dir.path(), "settings.yaml", "imag: x\n");
    let run = straitctl(
        &["kube-inject", "-f", "-", "--settings", &settings],
        Some(DEPLOYMENT),
    );
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stdout.is_empty());
    assert!(
        text(&run.stderr).starts_with(&format!("error: {settings}: imag: unknown field `imag`")),
        "{}",
        text(&run.stderr)
    );

    let missing = dir.path().join("missing.yaml").display().to_string();
    let run = straitctl(&["kube-inject", "-f", &missing], None);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("reading"),
        "{}",
        text(&run.stderr)
    );

    // Usage errors are clap's: exit 2.
    assert_eq!(straitctl(&["kube-inject"], None).status.code(), Some(2));
}
