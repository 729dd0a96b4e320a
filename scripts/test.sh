#!/usr/bin/env bash
# The one command that runs every check and test, from a fresh clone.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "scripts/install-tools.sh"
STRAIT_ENVOY="$(scripts/install-tools.sh)"
export STRAIT_ENVOY
"$STRAIT_ENVOY" --version

# Kubernetes tools for tests/tests/kube_*.rs, cached outside the repo (the first build of
# kube-apiserver takes minutes, later runs reuse it). It prints KEY=path lines for the tools it
# has; tests whose tools are missing skip, or fail under CI=true.
step "scripts/install-kube-tools.sh"
kube_tools="$(scripts/install-kube-tools.sh)"
set -a
eval "$kube_tools"
set +a
printf '%s\n' "$kube_tools"

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Scenario tests run straitd and straitctl as processes; cargo builds another package's
# binaries only when asked.
step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo test --workspace (STRAIT_ENVOY=$STRAIT_ENVOY)"
cargo test --workspace

# The same scenarios, with the same assertions, against Strait's own proxy.
# --workspace keeps the feature set of the step above: `-p strait-tests` alone would unify
# features differently and rebuild much of the dependency tree.
step "scenarios against strait-proxy (STRAIT_DATA_PLANE=strait-proxy)"
STRAIT_DATA_PLANE=strait-proxy cargo test --workspace --test scenarios

# Each fuzz target (xDS conversion, the HTTP request path, the YAML loader and validator) for a
# short, bounded time; a crash fails the run (scripts/fuzz.sh installs cargo-fuzz, cached).
step "scripts/fuzz.sh (${STRAIT_FUZZ_SECONDS:-20}s per target)"
scripts/fuzz.sh
