#!/usr/bin/env bash
# Installs what kars GitOps needs on a fresh machine of this kind (Debian with Go and Rust):
# Debian packages (git, gnupg, openssh-client, openssl, curl, python3; for the node iproute2,
# iptables and libseccomp-dev, which runc links statically) when missing, then the pinned
# Go-built tools (ci/build-tools.sh; the forge is Gitea, for the pull-request tests). Safe to
# run again: everything is cached.
#
#   ci/setup.sh [tool sets...]   default: control-plane helm oci node forge
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf '[setup] %s\n' "$*" >&2; }

need=()
for pair in git:git gpg:gnupg ssh-keygen:openssh-client openssl:openssl curl:curl python3:python3 setsid:util-linux \
  ip:iproute2 iptables:iptables dash:dash; do
  cmd="${pair%%:*}"; pkg="${pair#*:}"
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
dpkg -s libseccomp-dev >/dev/null 2>&1 || need+=(libseccomp-dev)
# The CA bundle the agent and router images carry (ci/images.sh).
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
for cmd in go cargo; do
  command -v "$cmd" >/dev/null 2>&1 || { log "$cmd is required and ships with this machine kind; install it first"; exit 1; }
done
[ $# -gt 0 ] || set -- control-plane helm oci node forge
"$here/build-tools.sh" "$@" >/dev/null
log "tools ready: $("$here/build-tools.sh" print-dir control-plane)"
