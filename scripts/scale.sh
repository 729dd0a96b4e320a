#!/usr/bin/env bash
# The control-plane scale harness of issue 11, section 1: one release straitd, thousands of
# simulated ADS clients and a few stock Envoys on this machine, in one run (bench/scale,
# strait-scale). Builds release straitd, straitctl and strait-scale, installs Envoy into
# .tools/ (scripts/install-tools.sh), raises the open-file limit and runs
# target/release/strait-scale with the arguments given, e.g.
#   scripts/scale.sh --clients 2000 --services 500
# Writes bench/results/scale-latest.md and .json (scale-scoped-latest with --scoped). Not part
# of CI: it takes minutes, much memory, and its numbers depend on the machine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

usage() {
  cat <<'EOF'
usage: scripts/scale.sh [strait-scale options]

Builds release straitd, straitctl and strait-scale, installs stock Envoy if needed
(scripts/install-tools.sh), raises `ulimit -n` and runs target/release/strait-scale.

Common options (all of them: scripts/scale.sh and then `target/release/strait-scale --help`):
  --clients N         simulated ADS clients (default 10000)
  --sotw-share F      share of clients using state-of-the-world instead of delta (default 0.0)
  --shapes N          distinct proxy shapes, namespace x app, some gateways (default 100)
  --envoys N          stock Envoys among the clients (default 20; 0 for none)
  --services N        services (STATIC ServiceEntries) (default 1000)
  --namespaces N      namespaces (default 20)
  --endpoints N       endpoints per service (default 10)
  --split-share F     share of services with a 90/10 VirtualService (default 0.2)
  --scoped            a Sidecar in every namespace (egress ./*, istio-system/* and
                      --scoped-imports other namespaces); checks each client gets only its scope
  --scoped-imports K  other namespaces each Sidecar imports (default 2)
  --steps A,B         client counts at which steady-state memory is read (default 1000,5000)
  --churn-seconds S   sustained churn duration (default 60)
  --churn-rate R      endpoint changes per second during churn (default 20)
  --timeout S         longest wait for any convergence (default 300)
  --load-threads N    tokio worker threads for the clients (default 1)
  --skip LIST         scenarios to skip: cold,steady,endpoint,route,churn,restart
  --out-dir DIR       where scale-latest.md/.json go (default bench/results;
                      scale-scoped-latest.md/.json with --scoped; --name NAME to choose)

Environment: CARGO_TARGET_DIR (default target/), STRAIT_ENVOY (an Envoy binary; else
scripts/install-tools.sh installs one), STRAIT_SCALE_NOFILE (open-file limit, default 200000).
EOF
}

target="${CARGO_TARGET_DIR:-$root/target}"
for arg in "$@"; do
  case "$arg" in
    -h | --help)
      usage
      # Every option, from a binary built earlier; nothing is built for --help.
      if [[ -x "$target/release/strait-scale" ]]; then
        printf '\n%s --help:\n' "$target/release/strait-scale"
        "$target/release/strait-scale" --help
      fi
      exit 0
      ;;
  esac
done

step() { printf '\n==> %s\n' "$*" >&2; }

if [[ -z "${STRAIT_ENVOY:-}" ]]; then
  step "scripts/install-tools.sh"
  STRAIT_ENVOY="$(scripts/install-tools.sh)"
fi
export STRAIT_ENVOY

step "cargo build --release -p strait-control-plane --bin straitd --bin straitctl"
cargo build --release -p strait-control-plane --bin straitd --bin straitctl
step "cargo build --release -p strait-scale"
cargo build --release -p strait-scale

# Every client holds a socket in this process and one in straitd, which inherits the limit.
nofile="${STRAIT_SCALE_NOFILE:-200000}"
if ! ulimit -n "$nofile" 2>/dev/null; then
  hard="$(ulimit -Hn)"
  echo "scale: cannot raise ulimit -n to $nofile; using the hard limit $hard" >&2
  ulimit -n "$hard"
fi

step "strait-scale $* (ulimit -n $(ulimit -n))"
exec "$target/release/strait-scale" "$@"
