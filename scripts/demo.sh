#!/usr/bin/env bash
# The demo: installs stock Envoy into .tools/, builds Strait, then runs Istio's bookinfo routing
# through straitd to stock Envoy and strait-proxy side by side, and mTLS between sidecars, on
# 127.0.0.1 (tests/src/bin/strait-demo.rs), and says what happened. Exits non-zero if any step
# fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

for arg in "$@"; do
  case "$arg" in
    -h | --help)
      cat <<'EOF'
usage: scripts/demo.sh

Installs stock Envoy into .tools/ (scripts/install-tools.sh), builds the workspace's binaries
(cargo build --workspace --bins; CARGO_TARGET_DIR is honoured), then runs strait-demo on
127.0.0.1: Istio's bookinfo routing through straitd to two sidecars side by side, stock Envoy
and strait-proxy, then mTLS between sidecars with their identities shown; each step said as it
runs. Takes no options; exits non-zero if a step fails.
EOF
      exit 0
      ;;
    *)
      echo "demo: unknown argument $arg (see scripts/demo.sh --help)" >&2
      exit 2
      ;;
  esac
done

echo "==> scripts/install-tools.sh"
STRAIT_ENVOY="$(scripts/install-tools.sh)"
export STRAIT_ENVOY

echo "==> cargo build --workspace --bins (the first build takes a few minutes)"
cargo build --workspace --bins --quiet

# straitd's and Envoy's log tails go to stderr as they stop: noise when all went well, the
# first thing to read when not. Keep them aside and show them only on failure.
log="$(mktemp -t strait-demo.XXXXXX)"
trap 'rm -f "$log"' EXIT
rc=0
"${CARGO_TARGET_DIR:-target}/debug/strait-demo" 2>"$log" || rc=$?
# 130: Ctrl-C, which the demo has already cleaned up after.
if ((rc != 0 && rc != 130)) && [[ -s "$log" ]]; then
  echo
  echo "---- stderr of strait-demo (process log tails) ----"
  cat "$log"
fi
exit "$rc"
