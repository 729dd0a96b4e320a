#!/usr/bin/env bash
# The benchmark of issue 4, section 8: strait-proxy against stock Envoy 1.40, same config from
# straitd, on this machine, in one run. Installs what it needs into .tools/ (Envoy, oha) and
# wrk from apt, builds release binaries, runs bench/ (strait-bench). Arguments go to
# strait-bench, e.g. `scripts/bench.sh --rounds 5` or `scripts/bench.sh --section mtls`.
# Not part of CI: it takes minutes and its numbers depend on the machine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

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

for tool in taskset getconf; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (util-linux, libc-bin)" >&2; exit 1; }
done
[[ $(nproc) -ge 2 ]] || { echo "bench: needs 2 cores (proxy on one, load on the other)" >&2; exit 1; }

step "cargo build --release -p strait-control-plane -p strait-proxy -p strait-bench"
cargo build --release -p strait-control-plane -p strait-proxy -p strait-bench

# strait-bench finds straitd, straitctl and strait-proxy beside itself (target/release), and
# pins itself and everything it starts to core 0 before moving the proxies to core 1.
step "strait-bench $*"
# One worker, as Envoy runs with --concurrency 1.
export STRAIT_CONCURRENCY=1
exec taskset -c 0 "$root/target/release/strait-bench" "$@"
