//! `strait-proxy iptables` as the binary parses it: flags, environment variables, errors, and
//! the proxy's own flags still required without the subcommand. No root needed (`--dry-run`).

use std::process::{Command, Output};

use strait_iptables::{Settings, build};

/// The binary with a clean environment, so no STRAIT_* of the caller's leaks in.
fn strait_proxy(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strait-proxy"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("running strait-proxy")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

#[test]
fn dry_run_prints_the_default_rule_set() {
    let out = stdout(&strait_proxy(&["iptables", "--dry-run"], &[]));
    let expected = format!(
        "# IPv4: iptables-restore --noflush\n{}",
        build(&Settings::default())[0].to_restore()
    );
    assert_eq!(out, expected);
    assert!(out.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"), "{out}");
}

#[test]
fn environment_variables_set_the_flags_and_flags_win() {
    let env = [
        ("STRAIT_CAPTURE_INCLUDE_INBOUND_PORTS", ""),
        ("STRAIT_CAPTURE_OUTBOUND_PORT", "16001"),
        ("STRAIT_CAPTURE_PROXY_UID", "101"),
        ("STRAIT_CAPTURE_IPV6", "true"),
    ];
    let out = stdout(&strait_proxy(&["iptables", "--dry-run"], &env));
    assert!(!out.contains("-A PREROUTING"), "{out}");
    assert!(out.contains("-j REDIRECT --to-ports 16001\n"), "{out}");
    assert!(
        out.contains("-m owner --uid-owner 101 -j RETURN\n"),
        "{out}"
    );
    assert!(
        out.contains("-m owner --gid-owner 101 -j RETURN\n"),
        "{out}"
    );
    assert!(
        out.contains("# IPv6: ip6tables-restore --noflush\n"),
        "{out}"
    );

    let out = stdout(&strait_proxy(
        &["iptables", "--dry-run", "--outbound-port", "17001"],
        &env,
    ));
    assert!(out.contains("-j REDIRECT --to-ports 17001\n"), "{out}");
    assert!(!out.contains("16001"), "{out}");
}

#[test]
fn a_bad_value_names_the_flag_and_the_value() {
    let out = strait_proxy(
        &[
            "iptables",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,10.0.0.0/33",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            r#"--exclude-outbound-cidrs: "10.0.0.0/33": prefix length 33 is longer than 32; nothing was changed"#
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = strait_proxy(&["iptables"], &[("STRAIT_CAPTURE_INBOUND_PORT", "0")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"--inbound-port: "0": port 0"#),
        "{stderr}"
    );
}

#[test]
fn the_proxy_flags_are_unchanged() {
    // Without the subcommand --node-id is still required...
    let out = strait_proxy(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--node-id <NODE_ID>"), "{stderr}");
    // ...as is --app-port beside --inbound-port...
    let out = strait_proxy(&["--node-id", "a", "--inbound-port", "15106"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--app-port"));
    // ...the proxy's flags do not mix with the subcommand...
    let out = strait_proxy(&["--node-id", "a", "iptables", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(2));
    // ...and the proxy's environment (an injected sidecar's) does not disturb it.
    let proxy_env = [
        ("STRAIT_NODE_ID", "web-1.default"),
        ("STRAIT_INBOUND_PORT", "15106"),
        ("STRAIT_XDS", "https://127.0.0.1:15012"),
    ];
    let out = stdout(&strait_proxy(&["iptables", "--dry-run"], &proxy_env));
    assert!(out.contains("--to-ports 15006\n"), "{out}");
}
