#!/usr/bin/env bash
# Builds the project's container images with no container engine and nothing pulled:
# OCI layouts made of our binaries plus the exact shared libraries they link (ldd), or of
# installed Debian packages (the egress guard: dash and iptables). Non-root, with OCI labels.
#
#   ci/images.sh build OUT [--profile debug|release]
#       writes OUT/<image>/ (OCI layout), OUT/<image>.tar (OCI archive for
#       `ctr images import` / `ci/cluster.sh import`) and OUT/images.env:
#       KARS_IMAGE_<NAME>=kars.local/<image>@sha256:<manifest digest>, one line per image
#   ci/images.sh push OUT REGISTRY [--plain-http]
#       pushes every layout of OUT to REGISTRY by digest (oras), prints REGISTRY/<image>@sha256:…
#
# Images: kars-gitops-agent (with the kars CLI), kars-router, kars-egress-guard, kars-test-agent (the e2e tests'
# agent: tries direct and proxied connections and reports what happened).
# The binaries come from target/<profile>/ (build them first: cargo build --workspace --bins).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

# UIDs the rendered pods run as (kars-contract: AGENT_UID, ROUTER_UID).
AGENT_UID=1000
ROUTER_UID=1001
GITOPS_UID=65532
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

version() { sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1; }
revision() { git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown; }

labels() {
  local title="$1"
  echo --label "org.opencontainers.image.title=$title"
  echo --label "org.opencontainers.image.source=https://github.com/kars-gitops/kars-gitops"
  echo --label "org.opencontainers.image.revision=$(revision)"
  echo --label "org.opencontainers.image.version=$(version)"
  echo --label "org.opencontainers.image.licenses=MIT"
}

passwd() {
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\\nkars:x:%s:%s:kars:/nonexistent:/usr/sbin/nologin\\n' "$1" "$1"
}
group() { printf 'root:x:0:\\nkars:x:%s:\\n' "$1"; }

# image NAME UID ARGS... : one layout + archive; records its digest in OUT/images.env.
image() {
  local out="$1" name="$2" uid="$3"; shift 3
  rm -rf "${out:?}/$name" "$out/$name.tar"
  local digest
  # shellcheck disable=SC2046
  digest="$(python3 "$here/oci-image.py" --layout "$out/$name" --archive "$out/$name.tar" \
    --name "kars.local/$name" --tag "$(version)" --user "$uid:$uid" \
    --text "/etc/passwd:$(passwd "$uid")" --text "/etc/group:$(group "$uid")" \
    --text "/etc/nsswitch.conf:hosts: files dns\\n" --dir /tmp:1777 \
    $(labels "$name") "$@")"
  local var; var="KARS_IMAGE_$(echo "$name" | sed 's/^kars-//' | tr 'a-z-' 'A-Z_')"
  echo "$var=kars.local/$name@$digest" >>"$out/images.env"
  log "$name: kars.local/$name@$digest ($(du -h "$out/$name.tar" | cut -f1))"
}

cmd_build() {
  local out="$1" profile="${2:-debug}"
  mkdir -p "$out"; out="$(cd "$out" && pwd)"
  local t="$root/target/$profile"
  for b in kars-gitops-agent kars kars-router kars-test-agent; do
    [ -x "$t/$b" ] || die "$t/$b is missing: cargo build --workspace --bins${profile:+ --profile $profile}"
  done
  # The agent (https Git remotes, registries) and the router (https inference upstreams)
  # verify servers against the system CA bundle (Debian's ca-certificates).
  [ -f "$CA_BUNDLE" ] || die "$CA_BUNDLE is missing (apt-get install ca-certificates)"
  for c in dash iptables; do
    dpkg -s "$c" >/dev/null 2>&1 || die "Debian package $c is not installed (ci/setup.sh installs it)"
  done
  : >"$out/images.env.new"
  mv "$out/images.env.new" "$out/images.env"
  # The agent image also carries the kars CLI (`kubectl exec … -- kars status`, and the chart's
  # uninstall hook runs `kars delete --prune` with it).
  image "$out" kars-gitops-agent "$GITOPS_UID" --binary "$t/kars-gitops-agent:/usr/local/bin/kars-gitops-agent" \
    --binary "$t/kars:/usr/local/bin/kars" --binary "$CA_BUNDLE:$CA_BUNDLE" \
    --entrypoint /usr/local/bin/kars-gitops-agent
  image "$out" kars-router "$ROUTER_UID" --binary "$t/kars-router:/usr/local/bin/kars-router" \
    --binary "$CA_BUNDLE:$CA_BUNDLE" --entrypoint /usr/local/bin/kars-router
  # The guard runs as root with NET_ADMIN (it is an init container that installs the rules and
  # exits); its image still declares a non-root user, the pod spec asks for root explicitly.
  image "$out" kars-egress-guard 65534 --package dash --package iptables \
    --symlink /bin/sh:/usr/bin/dash --symlink /usr/sbin/iptables:xtables-nft-multi \
    --symlink /usr/sbin/ip6tables:xtables-nft-multi --dir /run:755 --dir /var/lib:755 \
    --entrypoint /bin/sh
  # /usr/bin/test: the rendered agent container's probes run `test -f /proc/1/status`.
  image "$out" kars-test-agent "$AGENT_UID" --binary "$t/kars-test-agent:/usr/local/bin/kars-test-agent" \
    --binary /usr/bin/test:/usr/bin/test \
    --entrypoint /usr/local/bin/kars-test-agent --cmd serve
  log "wrote $out/images.env"
}

cmd_push() {
  local out="$1" registry="$2" plain="${3:-}"
  local oras; oras="$("$here/build-tools.sh" oci | tail -n1)/oras"
  local flags=()
  [ "$plain" = --plain-http ] && flags+=(--to-plain-http)
  local line name ref digest
  while IFS= read -r line; do
    ref="${line#*=}"; name="${ref#kars.local/}"; name="${name%@*}"; digest="${ref#*@}"
    "$oras" cp "${flags[@]}" --from-oci-layout "$out/$name@$digest" "$registry/$name@$digest" >/dev/null
    echo "$registry/$name@$digest"
  done <"$out/images.env"
}

case "${1:-}" in
  build)
    [ $# -ge 2 ] || { usage; exit 2; }
    profile=debug
    if [ "${3:-}" = --profile ]; then profile="${4:?--profile needs debug or release}"; fi
    cmd_build "$2" "$profile" ;;
  push) [ $# -ge 3 ] || { usage; exit 2; }; cmd_push "$2" "$3" "${4:-}" ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
