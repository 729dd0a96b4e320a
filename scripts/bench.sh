#!/usr/bin/env bash
# The benchmark of issue 4, section 8: strait-proxy against stock Envoy 1.40, same config from
# straitd, on this machine, in one run, with nginx as a reference. Installs what it needs into
# .tools/ (Envoy, oha) and wrk and nginx from apt, builds release binaries, runs bench/
# (strait-bench). Arguments go to strait-bench, e.g. `scripts/bench.sh --rounds 5` or
# `scripts/bench.sh --section mtls`.
# Not part of CI: it takes minutes and its numbers depend on the machine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

usage() {
  cat <<'EOF'
usage: scripts/bench.sh [strait-bench options]

strait-proxy against stock Envoy (and nginx as a reference), same config from straitd, side by
side. Installs Envoy and oha into .tools/ and wrk and nginx from apt if missing, builds release
straitd, straitctl, strait-bench and a static strait-proxy, then runs target/release/strait-bench
pinned to core 0 (the proxies under test on core 1). Needs 2 cores; takes minutes.

Options (all of them: `target/release/strait-bench --help` once built):
  --rounds N               rounds per data plane (default 3)
  --section S              plaintext, mtls or all (default all)
  --data-planes LIST       envoy,strait-proxy,nginx (default all three, in that order)
  --duration S             seconds of closed-loop load (wrk) per measurement (default 10)
  --warmup S               seconds of load before measuring (default 2)
  --connections N          closed-loop connections (default 32)
  --rate R                 open-loop rate for the latency measurement, req/s (default 1000)
  --latency-duration S     seconds of open-loop load per latency measurement (default 10)
  --latency-connections N  open-loop connections (default 8)
  --no-awake-latency       skip the second open loop (proxy core kept out of idle)
  --proxy-core N           core for the proxies under test (default 1)
  --driver-core N          core for everything else (default 0)
  --out DIR                where latest.md and latest.json go (default bench/results)

Environment: CARGO_TARGET_DIR (default target/).
EOF
}

target="${CARGO_TARGET_DIR:-$root/target}"
for arg in "$@"; do
  case "$arg" in
    -h | --help)
      usage
      # Every option, from a binary built earlier; nothing is installed or built for --help.
      if [[ -x "$target/release/strait-bench" ]]; then
        printf '\n%s --help:\n' "$target/release/strait-bench"
        "$target/release/strait-bench" --help
      fi
      exit 0
      ;;
  esac
done

step() { printf '\n==> %s\n' "$*" >&2; }

step "scripts/install-tools.sh"
STRAIT_ENVOY="$(scripts/install-tools.sh)"
export STRAIT_ENVOY

OHA_VERSION=1.16.0
oha="$root/.tools/oha/bin/oha"
if [[ ! -x "$oha" ]] || ! "$oha" --version 2>/dev/null | grep -q " $OHA_VERSION"; then
  step "cargo install oha $OHA_VERSION into .tools/oha"
  cargo install oha --version "$OHA_VERSION" --locked --root "$root/.tools/oha"
fi
export STRAIT_BENCH_OHA="$oha"

if ! command -v wrk >/dev/null; then
  step "apt-get install wrk"
  if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get install -y wrk >&2 || {
    "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" apt-get install -y wrk >&2
  }
fi
export STRAIT_BENCH_WRK="$(command -v wrk)"

# nginx, a reference subject for the plaintext section: strait-bench starts its own nginx with
# its own config in a temp dir; the system's nginx service is neither needed nor started.
nginx_bin() { command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }; }
if ! nginx_bin >/dev/null; then
  step "apt-get install nginx (without starting its service)"
  if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
  # Package scripts ask invoke-rc.d, which asks policy-rc.d: 101 means "do not start services".
  # Docker images ship one that says so; elsewhere, put one in place for the install only.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    own_policy=1
  fi
  # nginx-light is a transitional package on Debian 12 (nginx plus the echo module); plain
  # nginx has everything the bench uses (proxy, upstream keepalive).
  status=0
  "${sudo[@]}" env RUNLEVEL=1 apt-get install -y nginx >&2 || {
    "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" env RUNLEVEL=1 apt-get install -y nginx >&2
  } || status=$?
  [[ -z $own_policy ]] || "${sudo[@]}" rm -f "$policy"
  [[ $status -eq 0 ]] || exit "$status"
  # Had a service started anyway (a system that ignores policy-rc.d), stop it: it was not
  # running before this install, and nothing here uses it.
  if [[ -s /run/nginx.pid ]] && "${sudo[@]}" kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    step "stopping the nginx service the package started"
    "${sudo[@]}" "$(nginx_bin)" -s quit >&2 || true
  fi
fi
STRAIT_BENCH_NGINX="$(nginx_bin)"
export STRAIT_BENCH_NGINX

for tool in taskset chrt getconf; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (util-linux, libc-bin)" >&2; exit 1; }
done
[[ $(nproc) -ge 2 ]] || { echo "bench: needs 2 cores (proxy on one, load on the other)" >&2; exit 1; }

step "cargo build --release -p strait-control-plane -p strait-bench"
cargo build --release -p strait-control-plane -p strait-bench
# strait-proxy as it ships: a static-pie binary (glibc linked in, no shared libraries mapped).
# The flag goes to the binary's own compile only: in RUSTFLAGS it would also reach proc-macro
# crates, which cannot be built with a static C runtime.
step "cargo rustc --release -p strait-proxy --bin strait-proxy -- -C target-feature=+crt-static"
cargo rustc --release -p strait-proxy --bin strait-proxy -- -C target-feature=+crt-static

# strait-bench finds straitd, straitctl and strait-proxy beside itself (target/release), and
# pins itself and everything it starts to core 0 before moving the proxies to core 1.
step "strait-bench $*"
# One worker, as Envoy runs with --concurrency 1.
export STRAIT_CONCURRENCY=1
exec taskset -c 0 "$target/release/strait-bench" "$@"
