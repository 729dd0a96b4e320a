//! Installs the rules for real, each test in network namespaces of its own, and checks them with
//! iptables-save and with connections the rules capture (or leave alone).
//!
//! Needs root, `ip` (iproute2) and `iptables`; without them a test says it was skipped, unless
//! `CI=true`, where it fails. The only addresses used are loopback and the ones a test assigns
//! inside the namespaces it made (TEST-NET-1 192.0.2.0/24 and TEST-NET-2 198.51.100.0/24).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use pretty_assertions::assert_eq;

/// `strait-proxy iptables`'s flags, as the binary parses them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: strait_iptables::Args,
}

// === the environment ===

/// Whether this test can run here (the harness's check, plus `also`); under `CI=true` a
/// missing requirement fails the test.
fn ready(test: &str, also: &[(&str, &[&str])]) -> bool {
    strait_tests::netns::available_with(test, also)
}

fn legacy_available(test: &str) -> bool {
    let ok = strait_tests::netns::works("iptables-legacy-save", &[]);
    if !ok {
        println!("{test}: no usable iptables-legacy here; only nft is tested");
    }
    ok
}

// === impl Netns ===

/// A network namespace of this test's own (the harness's), deleted when dropped (also when the
/// test fails); its helpers panic, as a test's set-up should.
struct Netns {
    ns: strait_tests::netns::Netns,
}

impl Netns {
    fn new() -> Netns {
        Netns {
            ns: strait_tests::netns::Netns::new("ipt").expect("making a network namespace"),
        }
    }

    fn name(&self) -> &str {
        self.ns.name()
    }

    /// `ip -n NAME ...`
    fn ip(&self, args: &[&str]) {
        self.ns.ip(args).expect("ip in the test namespace");
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it makes and processes it
    /// starts live there.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.enter(f)
    }

    /// `strait-proxy iptables ARGS` in the namespace: its output, or its error's message.
    fn strait(&self, args: &[&str]) -> Result<String, String> {
        let cli = Cli::try_parse_from(std::iter::once("iptables").chain(args.iter().copied()))
            .expect("flags that clap accepts");
        self.enter(|| {
            let mut out = Vec::new();
            strait_iptables::run(&cli.args, &mut out)
                .map(|()| String::from_utf8(out).expect("utf-8"))
                .map_err(|e| e.to_string())
        })
    }

    fn install(&self, args: &[&str]) -> String {
        self.strait(args)
            .unwrap_or_else(|e| panic!("strait-proxy iptables {args:?}: {e}"))
    }

    /// `BINARY -t nat` without comments and counters: what a rerun must leave byte-identical.
    fn save(&self, binary: &str) -> String {
        let out = self.enter(|| {
            Command::new(binary)
                .args(["-t", "nat"])
                .output()
                .expect("running iptables-save")
        });
        assert!(out.status.success(), "{binary}: {:?}", out);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.find(" [") {
                Some(i) if l.starts_with(':') => format!("{} [0:0]\n", &l[..i]),
                _ => format!("{l}\n"),
            })
            .collect()
    }

    fn restore(&self, binary: &str, input: &str) {
        let status = self.enter(|| {
            let mut child = Command::new(binary)
                .arg("--noflush")
                .stdin(Stdio::piped())
                .spawn()
                .expect("running iptables-restore");
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())
                .expect("writing the rules");
            child.wait().expect("iptables-restore")
        });
        assert!(status.success(), "{binary} {input}");
    }
}

// === rules in the table ===

const EMPTY_NAT: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
";

/// A chain and rules of someone else's, which nothing here may touch.
const STRANGER: &str = "*nat
:KUBE-TEST - [0:0]
-A KUBE-TEST -p udp --dport 9999 -j RETURN
-A OUTPUT -j KUBE-TEST
COMMIT
";

/// The default install as iptables-save prints it (it reorders matches and adds `-m tcp`).
const DEFAULT_SAVED: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
:KUBE-TEST - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -j KUBE-TEST
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A KUBE-TEST -p udp -m udp --dport 9999 -j RETURN
COMMIT
";

/// Install, install again, other flags, clean, with one backend forced.
fn lifecycle(variant: &str) {
    let ns = Netns::new();
    let save = format!("iptables-{variant}-save");
    ns.restore(&format!("iptables-{variant}-restore"), STRANGER);
    let before = ns.save(&save);

    let out = ns.install(&["--iptables", variant]);
    assert!(
        out.starts_with(&format!(
            "IPv4: installed 18 nat rules with iptables-{variant} v"
        )),
        "{out}"
    );
    let installed = ns.save(&save);
    assert_eq!(installed, DEFAULT_SAVED);

    // Again: nothing changes, not even the jumps' places.
    let out = ns.install(&["--iptables", variant]);
    assert!(
        out.contains("replacing the previous ISTIO_* chains"),
        "{out}"
    );
    assert_eq!(ns.save(&save), installed);

    // Other flags replace rather than append.
    ns.install(&[
        "--iptables",
        variant,
        "--include-inbound-ports",
        "",
        "--include-outbound-cidrs",
        "10.0.0.0/8",
        "--exclude-outbound-ports",
        "3306",
    ]);
    let replaced = ns.save(&save);
    assert!(!replaced.contains("-A PREROUTING"), "{replaced}");
    assert!(!replaced.contains("15090"), "{replaced}");
    assert_eq!(
        replaced.matches("-A OUTPUT -j ISTIO_OUTPUT\n").count(),
        1,
        "{replaced}"
    );
    assert!(
        replaced.contains("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\n"),
        "{replaced}"
    );
    assert!(
        replaced.contains("-A ISTIO_OUTPUT -p udp -m udp --dport 3306 -j RETURN\n"),
        "{replaced}"
    );
    assert!(
        !replaced.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"),
        "{replaced}"
    );

    // Back to the defaults, byte for byte.
    ns.install(&["--iptables", variant]);
    assert_eq!(ns.save(&save), installed);

    let out = ns.install(&["--iptables", variant, "--clean"]);
    assert!(out.starts_with("IPv4: removed the ISTIO_* chains"), "{out}");
    assert_eq!(ns.save(&save), before, "clean leaves the table as it was");
    let out = ns.install(&["--iptables", variant, "--clean"]);
    assert!(out.starts_with("IPv4: nothing to remove"), "{out}");
    assert_eq!(ns.save(&save), before);
}

#[test]
fn install_rerun_replace_clean_nft() {
    if ready(
        "install_rerun_replace_clean_nft",
        &[("iptables-nft", &["--version"])],
    ) {
        lifecycle("nft");
    }
}

#[test]
fn install_rerun_replace_clean_legacy() {
    let test = "install_rerun_replace_clean_legacy";
    if ready(test, &[]) && legacy_available(test) {
        lifecycle("legacy");
    }
}

/// Istio's choice: legacy when it holds rules already (a host's or CNI's), else nft.
#[test]
fn auto_detection_follows_existing_rules() {
    let test = "auto_detection_follows_existing_rules";
    if !ready(test, &[("iptables-nft", &["--version"])]) {
        return;
    }
    let fresh = Netns::new();
    let out = fresh.install(&[]);
    assert!(
        out.starts_with("IPv4: installed 18 nat rules with iptables-nft v"),
        "{out}"
    );
    assert!(fresh.save("iptables-nft-save").contains(":ISTIO_OUTPUT"));

    if !legacy_available(test) {
        return;
    }
    let legacy = Netns::new();
    legacy.restore("iptables-legacy-restore", STRANGER);
    let out = legacy.install(&[]);
    assert!(
        out.starts_with("IPv4: installed 18 nat rules with iptables-legacy v"),
        "{out}"
    );
    assert!(
        legacy
            .save("iptables-legacy-save")
            .contains(":ISTIO_OUTPUT")
    );
    assert!(!legacy.save("iptables-nft-save").contains("ISTIO"));
}

#[test]
fn dry_run_changes_nothing() {
    if !ready("dry_run_changes_nothing", &[("ip6tables", &["--version"])]) {
        return;
    }
    let ns = Netns::new();
    let saves = ["iptables-save", "ip6tables-save"];
    let before: Vec<String> = saves.iter().map(|s| ns.save(s)).collect();
    let out = ns.install(&["--dry-run", "--ipv6"]);
    assert!(
        out.starts_with("# IPv4: iptables-restore --noflush\n*nat\n"),
        "{out}"
    );
    assert!(
        out.contains("# IPv6: ip6tables-restore --noflush\n*nat\n"),
        "{out}"
    );
    assert!(
        out.contains("-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN\n"),
        "{out}"
    );
    let after: Vec<String> = saves.iter().map(|s| ns.save(s)).collect();
    assert_eq!(after, before);
    assert_eq!(before[0], EMPTY_NAT);
}

#[test]
fn bad_flags_install_nothing() {
    if !ready("bad_flags_install_nothing", &[]) {
        return;
    }
    let ns = Netns::new();
    for (args, message) in [
        (
            &["--exclude-outbound-cidrs", "10.0.0.0/33"][..],
            r#"--exclude-outbound-cidrs: "10.0.0.0/33": prefix length 33 is longer than 32; nothing was changed"#,
        ),
        (
            &["--include-outbound-ports", "80,0"],
            r#"--include-outbound-ports: "0": port 0 cannot be captured or excluded; nothing was changed"#,
        ),
        (
            &["--include-inbound-ports", "http"],
            r#"--include-inbound-ports: "http": not a port number (1-65535); nothing was changed"#,
        ),
        (
            &["--include-outbound-cidrs", "2001:db8::/32"],
            r#"--include-outbound-cidrs: "2001:db8::/32": an IPv6 range needs --ipv6; nothing was changed"#,
        ),
    ] {
        assert_eq!(ns.strait(args), Err(message.to_string()));
        assert_eq!(ns.save("iptables-save"), EMPTY_NAT, "{args:?}");
    }

    // Over an earlier install, a bad run leaves that install as it was.
    ns.install(&["--include-outbound-cidrs", "10.0.0.0/8"]);
    let installed = ns.save("iptables-save");
    let rejected = ns.strait(&["--include-outbound-cidrs", "10.0.0.0/8,10.1.0.0"]);
    assert!(rejected.is_err_and(|e| e.contains(r#""10.1.0.0""#)));
    assert_eq!(ns.save("iptables-save"), installed);
}

#[test]
fn ipv6_ranges_go_to_ip6tables_only() {
    if !ready(
        "ipv6_ranges_go_to_ip6tables_only",
        &[("ip6tables", &["--version"])],
    ) {
        return;
    }
    let ns = Netns::new();
    let out = ns.install(&[
        "--ipv6",
        "--include-outbound-cidrs",
        "10.0.0.0/8,fd00::/8",
        "--exclude-outbound-cidrs",
        "fd00:1::/32,10.1.0.0/16",
    ]);
    assert!(
        out.starts_with("IPv4: installed 19 nat rules with "),
        "{out}"
    );
    assert!(
        out.contains("\nIPv6: installed 19 nat rules with ip6tables"),
        "{out}"
    );
    let v4 = ns.save("iptables-save");
    let v6 = ns.save("ip6tables-save");
    assert!(
        v4.contains("-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN\n"),
        "{v4}"
    );
    assert!(
        v4.contains("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\n"),
        "{v4}"
    );
    assert!(!v4.contains("fd00"), "{v4}");
    assert!(
        v6.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN\n"),
        "{v6}"
    );
    assert!(
        v6.contains("-A ISTIO_OUTPUT -d fd00:1::/32 -j RETURN\n"),
        "{v6}"
    );
    assert!(
        v6.contains("-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT\n"),
        "{v6}"
    );
    assert!(!v6.contains("10."), "{v6}");

    // Without --ipv6 the IPv6 chains of the earlier run go: the new settings replace them.
    let out = ns.install(&[]);
    assert!(
        out.contains("IPv6: removed the ISTIO_* chains an earlier run installed"),
        "{out}"
    );
    assert_eq!(ns.save("ip6tables-save"), EMPTY_NAT);
    ns.install(&["--ipv6"]);
    ns.install(&["--clean"]);
    assert_eq!(ns.save("iptables-save"), EMPTY_NAT);
    assert_eq!(ns.save("ip6tables-save"), EMPTY_NAT);
}

// === captured traffic ===

const POD: &str = "192.0.2.1";
const PEER: &str = "192.0.2.2";
const VIP: &str = "198.51.100.10";

/// The pod's namespace (rules installed, `c0` = 192.0.2.1) and a peer's (`p0` = 192.0.2.2, and
/// the "VIP" 198.51.100.10 on its lo, routed to from the pod), joined by a veth pair.
fn pod_and_peer() -> (Netns, Netns) {
    let pod = Netns::new();
    let peer = Netns::new();
    pod.ip(&[
        "link",
        "add",
        "c0",
        "type",
        "veth",
        "peer",
        "name",
        "p0",
        "netns",
        peer.name(),
    ]);
    pod.ip(&["addr", "add", &format!("{POD}/24"), "dev", "c0"]);
    pod.ip(&["link", "set", "c0", "up"]);
    peer.ip(&["addr", "add", &format!("{PEER}/24"), "dev", "p0"]);
    peer.ip(&["link", "set", "p0", "up"]);
    peer.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    pod.ip(&["route", "add", "198.51.100.0/24", "via", PEER]);
    (pod, peer)
}

fn listen(ns: &Netns, port: u16) -> TcpListener {
    ns.enter(|| {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        l
    })
}

/// The next connection within a few seconds, if one comes.
fn accept(listener: &TcpListener, wait: Duration) -> Option<TcpStream> {
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn original_dst(stream: &TcpStream) -> SocketAddr {
    socket2::SockRef::from(stream)
        .original_dst_v4()
        .expect("SO_ORIGINAL_DST")
        .as_socket()
        .expect("an inet address")
}

/// Reads the line the connecting side sent, so the right connection is being looked at.
fn line(stream: TcpStream) -> String {
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut text = String::new();
    let _ = (&stream).take(64).read_to_string(&mut text);
    text.trim().to_string()
}

/// Connects from the pod namespace as another uid and gid (bash's /dev/tcp), sends `tag`.
fn connect_as(pod: &Netns, uid: u32, gid: u32, to: &str, tag: &str) {
    let (host, port) = to.split_once(':').expect("host:port");
    let script = format!("exec 3<>/dev/tcp/{host}/{port} && printf '%s\\n' {tag} >&3");
    let status = pod.enter(|| {
        let mut child = Command::new("bash")
            .args(["-c", &script])
            .uid(uid)
            .gid(gid)
            .current_dir("/")
            .spawn()
            .expect("running bash");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for bash") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("uid {uid} gid {gid}: connecting to {to} hung");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    assert!(
        status.success(),
        "uid {uid} gid {gid}: connecting to {to} failed"
    );
}

#[test]
fn capture_redirects_apps_and_spares_the_proxy() {
    if !ready(
        "capture_redirects_apps_and_spares_the_proxy",
        &[("bash", &["-c", "true"])],
    ) {
        return;
    }
    let (pod, peer) = pod_and_peer();
    let outbound = listen(&pod, 15001);
    let inbound = listen(&pod, 15006);
    let health = listen(&pod, 15021);
    let server = listen(&peer, 8080);
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(5);

    // Before the rules, the VIP is the peer.
    connect_as(&pod, 1000, 1000, &format!("{VIP}:8080"), "before");
    assert_eq!(accept(&server, long).map(line).as_deref(), Some("before"));

    pod.install(&[]);
    let vip: SocketAddr = format!("{VIP}:8080").parse().expect("addr");

    // An app (here, this root test) connecting to the VIP lands on the outbound port, which
    // reads the VIP as the original destination.
    let mut app = pod.enter(|| TcpStream::connect_timeout(&vip, long).expect("connect"));
    app.write_all(b"app\n").expect("write");
    drop(app);
    let captured = accept(&outbound, long).expect("the app's connection on 15001");
    assert_eq!(original_dst(&captured), vip);
    assert_eq!(line(captured), "app");
    assert!(
        accept(&server, short).is_none(),
        "the peer saw a captured connection"
    );

    // Any other uid too.
    connect_as(&pod, 1000, 1000, &format!("{VIP}:8080"), "uid-1000");
    let captured = accept(&outbound, long).expect("uid 1000's connection on 15001");
    assert_eq!(original_dst(&captured), vip);
    assert_eq!(line(captured), "uid-1000");

    // The proxy's uid, or its gid alone, goes out as it is: to the peer.
    connect_as(&pod, 1337, 1337, &format!("{VIP}:8080"), "proxy");
    assert_eq!(accept(&server, long).map(line).as_deref(), Some("proxy"));
    connect_as(&pod, 1000, 1337, &format!("{PEER}:8080"), "proxy-gid");
    assert_eq!(
        accept(&server, long).map(line).as_deref(),
        Some("proxy-gid")
    );
    assert!(
        accept(&outbound, short).is_none(),
        "the proxy's traffic was captured"
    );

    // Inbound to an app port lands on the inbound port; an excluded port is left alone.
    let pod_port: SocketAddr = format!("{POD}:9080").parse().expect("addr");
    let mut client = peer.enter(|| TcpStream::connect_timeout(&pod_port, long).expect("connect"));
    client.write_all(b"inbound\n").expect("write");
    drop(client);
    let captured = accept(&inbound, long).expect("the inbound connection on 15006");
    assert_eq!(original_dst(&captured), pod_port);
    assert_eq!(line(captured), "inbound");

    let health_port: SocketAddr = format!("{POD}:15021").parse().expect("addr");
    let mut probe = peer.enter(|| TcpStream::connect_timeout(&health_port, long).expect("connect"));
    probe.write_all(b"health\n").expect("write");
    drop(probe);
    assert_eq!(accept(&health, long).map(line).as_deref(), Some("health"));
    assert!(
        accept(&inbound, short).is_none(),
        "an excluded port was captured"
    );

    // After --clean, the VIP is the peer again.
    pod.install(&["--clean"]);
    connect_as(&pod, 1000, 1000, &format!("{VIP}:8080"), "after");
    assert_eq!(accept(&server, long).map(line).as_deref(), Some("after"));
}
