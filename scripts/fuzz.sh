#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (xds_convert, http_request, yaml_model), each for a
# bounded time, starting from the seeds committed in fuzz/seeds/<target>/ and what earlier runs
# found (fuzz/corpus/<target>/, not committed). Exits non-zero on the first crash, leaving the
# input that caused it in fuzz/artifacts/<target>/; replay it with
#   scripts/fuzz.sh --replay fuzz/artifacts/<target>/crash-... <target>
#
# cargo-fuzz is installed once into ${STRAIT_CACHE:-$HOME/.cache/strait}/cargo-fuzz/. libFuzzer
# needs nightly compiler flags; the stable toolchain accepts them under RUSTC_BOOTSTRAP=1 (no
# nightly is fetched). No sanitizer: the fuzzed crates forbid unsafe code; debug assertions
# (and so overflow checks) are on.
#
# usage: scripts/fuzz.sh [TARGET...]        (default: every target)
# Environment: STRAIT_FUZZ_SECONDS (per target, default 20), CARGO_TARGET_DIR (the fuzz build
# goes to its fuzz/ subdirectory; default fuzz/target).
set -euo pipefail
shopt -s inherit_errexit

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

CARGO_FUZZ_VERSION=0.13.1
home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cache="${STRAIT_CACHE:-$home/.cache/strait}/cargo-fuzz"
seconds="${STRAIT_FUZZ_SECONDS:-20}"

say() { echo "fuzz: $*" >&2; }

case "${1:-}" in
  -h | --help)
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

if [[ ! -x "$cache/bin/cargo-fuzz" ]] || ! "$cache/bin/cargo-fuzz" --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
  say "cargo install cargo-fuzz $CARGO_FUZZ_VERSION into $cache"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$cache" >&2
fi
export PATH="$cache/bin:$PATH"
export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:-$root/fuzz/target}/fuzz"
flags=(--sanitizer none --debug-assertions --target-dir "$target_dir")

if [[ "${1:-}" == --replay ]]; then
  [[ $# -eq 3 ]] || { say "usage: scripts/fuzz.sh --replay INPUT TARGET"; exit 2; }
  exec cargo fuzz run "${flags[@]}" "$3" "$2"
fi

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

say "cargo fuzz build ${targets[*]}"
for target in "${targets[@]}"; do
  cargo fuzz build "${flags[@]}" "$target"
done
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  say "$target for ${seconds}s"
  # New inputs go to the first directory (the scratch corpus), never to the committed seeds.
  cargo fuzz run "${flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1
done
