#!/usr/bin/env bash
# Builds the pinned external tools from the Go module proxy, once, into ~/.cache/kars/.
#
#   ci/build-tools.sh [control-plane|helm|oci|node|forge|all|print-dir NAME]
#
# control-plane  etcd, kube-apiserver, kube-controller-manager, kubectl
# helm           helm
# oci            cosign, oras, registry (CNCF distribution)
# node           kubelet, kube-scheduler, kube-proxy (same Kubernetes module as the control plane),
#                containerd, ctr, containerd-shim-runc-v2, runc (cgo, seccomp, static), the CNI
#                plugins bridge/host-local/loopback/portmap, and a static pause (gcc)
# forge          gitea (sqlite, pure Go) and the files it reads at run time (share/gitea:
#                options/, templates/, public/), since the module zip has no embedded assets
# all            all of the above (default: control-plane helm)
# print-dir NAME prints the bin directory of a tool set without building it
#
# A tool set is built into a temporary directory and moved into place only when every binary
# built, so an interrupted build never leaves a half-filled cache. Versions: ci/versions.env.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${KARS_CACHE_DIR:-$HOME/.cache/kars}"
export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export CGO_ENABLED=0
log() { printf '[build-tools] %s\n' "$*" >&2; }

dir_of() {
  case "$1" in
    control-plane) echo "$cache_root/kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION" ;;
    helm) echo "$cache_root/helm-$HELM_VERSION" ;;
    oci) echo "$cache_root/oci-cosign-$COSIGN_VERSION-oras-$ORAS_VERSION-registry-$DISTRIBUTION_VERSION" ;;
    node) echo "$cache_root/node-kubernetes-$KUBERNETES_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-cni-$CNI_PLUGINS_VERSION" ;;
    forge) echo "$cache_root/gitea-$GITEA_VERSION" ;;
    *) echo "unknown tool set: $1" >&2; exit 2 ;;
  esac
}

# Runs "$2..." in a fresh work dir and moves its bin/ to the cache dir of tool set $1 on success.
build_into_cache() {
  local set="$1"; shift
  local dest; dest="$(dir_of "$set")"
  if [ -f "$dest/.complete" ]; then return 0; fi
  mkdir -p "$cache_root"
  (
    work="$(mktemp -d "$cache_root/.build-$set.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    start=$SECONDS
    log "building $set into $dest (cold builds take minutes on 2 cores)"
    cd "$work"
    "$@"
    rm -rf "$dest"
    mkdir -p "$dest"
    mv "$work/bin" "$dest/bin"
    if [ -d "$work/share" ]; then mv "$work/share" "$dest/share"; fi
    echo "built in $((SECONDS - start))s on $(date -u +%FT%TZ)" >"$dest/.complete"
    log "$set ready in $((SECONDS - start))s: $(ls "$dest/bin" | tr '\n' ' ')"
  )
}

k8s_ldflags() {
  local v="$KUBERNETES_VERSION" major minor
  major="${v#v}"; major="${major%%.*}"
  minor="${v#v*.}"; minor="${minor%%.*}"
  local f=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    f+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$f"
}

# Writes go.mod of the wrapper module that builds Kubernetes commands: k8s.io/kubernetes replaces
# its staging modules with ./staging/..., which does not exist in the module zip; map each one to
# its published version instead. Extra require lines come as arguments.
k8s_wrapper_module() {
  local kmod
  kmod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
  {
    echo "module kars.local/$1"
    echo
    echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    shift
    for r in "$@"; do echo "require $r"; done
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s.io/[a-z0-9.-]*\) => ./staging/src/k8s.io/.*#\t\1 => \1 '"$KUBERNETES_STAGING_VERSION"'#p' "$kmod"
    echo ")"
  } >go.mod
}

do_control_plane() {
  k8s_wrapper_module controlplane "go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  mkdir -p cmd/etcd
  cat >cmd/etcd/main.go <<'GO'
// Command etcd is etcd's own server entry point, built at the version Kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  cat >tools.go <<'GO'
//go:build tools

// Package tools keeps the Kubernetes commands in this module's build list.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubectl/pkg/cmd"
)
GO
  log "resolving modules for k8s.io/kubernetes $KUBERNETES_VERSION"
  go mod tidy -e >/dev/null 2>tidy.log || { cat tidy.log >&2; return 1; }
  mkdir -p bin
  log "compiling etcd, kube-apiserver, kube-controller-manager, kubectl"
  go build -ldflags "$(k8s_ldflags)" -o bin/ \
    ./cmd/etcd \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
}

do_helm() {
  mkdir -p bin
  GOBIN="$PWD/bin" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

do_oci() {
  mkdir -p bin
  local major="${COSIGN_VERSION%%.*}"
  GOBIN="$PWD/bin" go install -ldflags "-s -w" "github.com/sigstore/cosign/$major/cmd/cosign@$COSIGN_VERSION"
  GOBIN="$PWD/bin" go install -ldflags "-s -w" "oras.land/oras/cmd/oras@$ORAS_VERSION"
  GOBIN="$PWD/bin" go install -ldflags "-s -w" "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"
}

do_node() {
  mkdir -p bin
  # kubelet, kube-scheduler and kube-proxy from the same pinned module (and Go build cache) as
  # the control plane.
  k8s_wrapper_module node
  cat >tools.go <<'GO'
//go:build tools

// Package tools keeps the Kubernetes node commands in this module's build list.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
)
GO
  log "resolving modules for the node commands of k8s.io/kubernetes $KUBERNETES_VERSION"
  go mod tidy -e >/dev/null 2>tidy.log || { cat tidy.log >&2; return 1; }
  log "compiling kubelet, kube-scheduler, kube-proxy"
  go build -ldflags "$(k8s_ldflags)" -o bin/ \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
  log "compiling containerd $CONTAINERD_VERSION (containerd, ctr, containerd-shim-runc-v2)"
  local cv="${CONTAINERD_VERSION#v}"
  GOBIN="$PWD/bin" go install -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$cv" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  # runc needs seccomp (without it even the pause container fails): cgo against Debian's
  # libseccomp-dev, linked statically.
  log "compiling runc $RUNC_VERSION (cgo, seccomp, static)"
  CGO_ENABLED=1 GOBIN="$PWD/bin" go install -tags "seccomp netgo osusergo" \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v} -extldflags -static" \
    "github.com/opencontainers/runc@$RUNC_VERSION"
  log "compiling CNI plugins $CNI_PLUGINS_VERSION (bridge, host-local, loopback, portmap)"
  GOBIN="$PWD/bin" go install -ldflags "-s -w" \
    "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_PLUGINS_VERSION"
  log "compiling pause (static, gcc)"
  cat >pause.c <<'C'
/* The pod sandbox's pause process: holds the pod's namespaces, reaps zombies, exits on TERM/INT. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
C
  gcc -Os -static -o bin/pause pause.c
  strip bin/pause
}

do_forge() {
  # Gitea's go.mod carries replace lines, which `go install pkg@version` refuses: build inside a
  # writable copy of the downloaded module instead.
  log "downloading code.gitea.io/gitea@$GITEA_VERSION"
  local src
  src="$(go mod download -json "code.gitea.io/gitea@$GITEA_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
  [ -n "$src" ] || { log "go mod download gave no directory for gitea"; return 1; }
  cp -r "$src" gitea-src
  chmod -R u+w gitea-src
  mkdir -p bin share/gitea
  log "compiling gitea $GITEA_VERSION (sqlite; takes about 3 minutes on 2 cores)"
  (cd gitea-src && go build -tags 'sqlite sqlite_unlock_notify' \
    -ldflags "-s -w -X main.Version=${GITEA_VERSION#v}" -o ../bin/gitea .)
  # Without the bindata tag gitea reads options/ (locales, licences, gitignores), templates/
  # and public/ from its static root at run time.
  cp -r gitea-src/options gitea-src/templates share/gitea/
  if [ -d gitea-src/public ]; then cp -r gitea-src/public share/gitea/; fi
  chmod -R u+w gitea-src
}

main() {
  command -v go >/dev/null || { echo "go is required (Go 1.26); this machine kind ships it" >&2; exit 1; }
  local sets=("$@")
  [ ${#sets[@]} -gt 0 ] || sets=(control-plane helm)
  if [ "${sets[0]}" = print-dir ]; then echo "$(dir_of "${sets[1]:?print-dir needs a tool set}")/bin"; exit 0; fi
  [ "${sets[0]}" != all ] || sets=(control-plane helm oci node forge)
  for s in "${sets[@]}"; do
    case "$s" in
      control-plane) build_into_cache control-plane do_control_plane ;;
      helm) build_into_cache helm do_helm ;;
      oci) build_into_cache oci do_oci ;;
      node) build_into_cache node do_node ;;
      forge) build_into_cache forge do_forge ;;
      *) echo "unknown tool set '$s' (expected control-plane, helm, oci, node, forge or all)" >&2; exit 2 ;;
    esac
    echo "$(dir_of "$s")/bin"
  done
}
main "$@"
