#!/usr/bin/env bash
# Build a real kube-apiserver + kube-controller-manager (Kubernetes v1.20.2) offline from
# Debian's source package, and install etcd. The one required fix is made below (reflect2).
#
# Idempotent: binaries are cached under $MESHFLOW_CACHE (default ~/.cache/meshflow); a second
# run only checks them and exits. Needs root for apt-get (CI and the sandbox run as root).
set -euo pipefail

KUBE_VERSION=v1.20.2
CACHE=${MESHFLOW_CACHE:-$HOME/.cache/meshflow}
OUT=$CACHE/kube-$KUBE_VERSION/bin
log() { printf 'build-kube: %s\n' "$*" >&2; }

need_pkgs=()
command -v etcd >/dev/null || need_pkgs+=(etcd-server)
command -v openssl >/dev/null || need_pkgs+=(openssl)

if [[ -x $OUT/kube-apiserver && -x $OUT/kube-controller-manager ]]; then
  if ((${#need_pkgs[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  fi
  log "cached: $OUT"
  exit 0
fi

log "building Kubernetes $KUBE_VERSION from Debian's source package (about 5 minutes, once)"
src_list=/etc/apt/sources.list.d/meshflow-deb-src.sources
if [[ ! -f $src_list ]]; then
  cat >"$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  golang-go rsync golang-github-modern-go-reflect2-dev etcd-server openssl dpkg-dev make >/dev/null

work=$(mktemp -d "${TMPDIR:-/tmp}/meshflow-kube-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source --download-only kubernetes >/dev/null 2>&1
orig=$(ls kubernetes_*.orig.tar.gz | head -n1)
tar -xzf "$orig"
tree=$(find . -maxdepth 1 -mindepth 1 -type d | head -n1)
cd "$tree"

# The one required fix: reflect2 v1.0.1 crashes under Go >= 1.18; use Debian's v1.0.2.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2

export GOPATH=$work/gopath GOCACHE=$work/gocache GOFLAGS=-mod=vendor
export KUBE_GIT_VERSION=$KUBE_VERSION KUBE_GIT_TREE_STATE=clean
export KUBE_GIT_COMMIT=0000000000000000000000000000000000000000
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" KUBE_BUILD_PLATFORMS=linux/amd64 >build.log 2>&1 \
  || { tail -n 40 build.log >&2; exit 1; }

mkdir -p "$OUT.tmp"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$OUT.tmp/"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
log "built: $OUT"
