//! The straitd process path of the harness, driven against a stand-in with the same flags and
//! admin API, so it is tested independently of the real daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use strait_tests::{ConfigDir, Straitd, StraitdOptions};

/// A straitd stand-in: same flags, `/healthz`, `/readyz`, `/debug/proxies`, `POST /apply`.
const FAKE_STRAITD: &str = r#"#!/usr/bin/env python3
import http.server, json, sys
args = sys.argv[1:]
print("fake straitd args:", " ".join(args), flush=True)
if "--fake-crash" in args:
    print("fatal: cannot load config", file=sys.stderr, flush=True)
    sys.exit(3)
host, port = args[args.index("--admin-addr") + 1].rsplit(":", 1)
applied = []
class Admin(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/healthz", "/readyz"):
            self.reply(200, "ok")
        elif self.path == "/debug/proxies":
            self.reply(200, json.dumps([{"node_id": "fake-1", "types": {}}]))
        else:
            self.reply(404, "not found")
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
        if self.path == "/apply":
            applied.append(body)
            self.reply(200, "applied %d: %s" % (len(applied), body))
        else:
            self.reply(404, "not found")
    def reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, fmt, *a):
        print("admin:", fmt % a, flush=True)
print("fake straitd ready", flush=True)
http.server.ThreadingHTTPServer((host, int(port)), Admin).serve_forever()
"#;

fn fake_straitd(dir: &ConfigDir) -> PathBuf {
    let path = dir.scratch().join("fake-straitd");
    std::fs::write(&path, FAKE_STRAITD).expect("writing the fake straitd");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn straitd_harness_waits_for_ready_and_drives_the_admin_api() {
    let config = ConfigDir::new().unwrap();
    let fake = fake_straitd(&config);
    let mut options = StraitdOptions::new(config.path());
    options.extra_args.push("--fake-flag".into());
    let mut straitd = Straitd::start_binary(&fake, options).unwrap();

    assert!(straitd.xds_addr().ip().is_loopback());
    assert_ne!(straitd.xds_addr(), straitd.admin_addr());
    assert_eq!(
        straitd.admin_url(),
        format!("http://{}", straitd.admin_addr())
    );
    let log = straitd.log();
    let expect = format!(
        "--config-dir {} --xds-addr {} --admin-addr {} --log-format text --fake-flag",
        config.path().display(),
        straitd.xds_addr(),
        straitd.admin_addr()
    );
    assert!(log.contains(&expect), "expected {expect:?} in:\n{log}");

    assert_eq!(
        straitd.admin_get("/healthz").unwrap(),
        (200, "ok".to_string())
    );
    assert_eq!(straitd.admin_get("/nope").unwrap().0, 404);
    let (status, body) = straitd
        .admin_post("/apply", "kind: ServiceEntry\n")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "applied 1: kind: ServiceEntry\n");
    assert_eq!(straitd.proxies().unwrap().len(), 1);
    assert!(straitd.proxy_status("fake-1").unwrap().is_some());
    assert!(straitd.proxy_status("other").unwrap().is_none());

    // A restart keeps the addresses and the log, and comes back ready with fresh state.
    let old_pid = straitd.pid();
    straitd.restart().unwrap();
    assert_ne!(straitd.pid(), old_pid);
    assert_eq!(straitd.admin_post("/apply", "x").unwrap().1, "applied 1: x");
    assert_eq!(straitd.log().matches("fake straitd ready").count(), 2);

    let admin = straitd.admin_url();
    drop(straitd);
    assert!(
        strait_tests::client::get_blocking(&format!("{admin}/healthz")).is_err(),
        "straitd still answers after drop"
    );
}

#[test]
fn a_straitd_that_exits_fails_fast_with_its_log() {
    let config = ConfigDir::new().unwrap();
    let fake = fake_straitd(&config);
    let mut options = StraitdOptions::new(config.path());
    options.extra_args.push("--fake-crash".into());
    let start = Instant::now();
    let err = match Straitd::start_binary(&fake, options) {
        Ok(_) => panic!("a crashing straitd was reported ready"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        err.contains("exited") && err.contains("cannot load config"),
        "{err}"
    );
}
