#!/usr/bin/env bash
# The main job on the embedded default, end to end on this machine, the way a user installs it:
#   1. install what is missing and build the pinned tools (cached): control plane, node, helm;
#   2. build kars, the agent and the router, and their images (no container engine, nothing
#      pulled: OCI archives from our binaries and Debian packages);
#   3. start a local Kubernetes control plane with a node (state in .quickstart/cluster) and
#      import the images into it;
#   4. create a policy repository from repo-template/ with a commit signed by a fresh SSH key,
#      and serve it with `git daemon` on the host end of the node link, where pods reach it;
#   5. `helm install` charts/kars-gitops: the agent runs in the cluster from its image, as the
#      chart's ServiceAccount, and reconciles the repository;
#   6. wait until the PolicyRepo is Ready — the template's sandbox pod runs with its egress
#      guard and router, and the router confirms the policy — and print what to look at.
# Run again at any time: the cluster, the repository and the release are reused (helm upgrade).
# Stop everything with
#   bash ci/quickstart.sh down
# Needs root (the node runs in a network namespace of its own; ci/node.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/.quickstart"
step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'quickstart: error: %s\n' "$*" >&2; exit 1; }
host_ip=10.250.0.1
git_port=9418

stop_git_daemon() {
  if [ -f "$state/git-daemon.pid" ]; then
    kill "$(cat "$state/git-daemon.pid")" 2>/dev/null || true
    rm -f "$state/git-daemon.pid"
  fi
}

if [ "${1:-}" = down ]; then
  stop_git_daemon
  bash ci/cluster.sh down "$state/cluster"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "the node needs root (network namespace, cgroups); run as root"

step "installing prerequisites and building the pinned tools (cached under ~/.cache/kars)"
bash ci/setup.sh control-plane helm node
bin="$(bash ci/build-tools.sh print-dir control-plane)"
kubectl="$bin/kubectl"
helm="$(bash ci/build-tools.sh print-dir helm)/helm"

step "building kars, the agent, the router (cargo build) and their images (ci/images.sh)"
cargo build --locked -p kars-cli -p kars-gitops-agent -p kars-router
# The template's OpenClaw runtime image (upstream's) cannot be pulled here: the quickstart runs
# the project's test agent in its place, beside the real router and egress guard.
cargo build --locked -p kars-e2e --bin kars-test-agent
kars="$root/target/debug/kars"
bash ci/images.sh build "$state/images"
# shellcheck disable=SC1091
. "$state/images/images.env"

step "starting the local control plane with a node, and importing the images"
bash ci/cluster.sh up "$state/cluster" --node
export KUBECONFIG="$state/cluster/kubeconfig"
bash ci/cluster.sh import "$state/cluster" "$state"/images/*.tar

repo="$state/policy-repo"
keys="$state/keys"
if [ ! -d "$repo/.git" ]; then
  step "creating a policy repository from repo-template/ with a signed commit"
  mkdir -p "$keys"
  [ -f "$keys/signer" ] || ssh-keygen -q -t ed25519 -N '' -C quickstart@kars.local -f "$keys/signer"
  printf 'quickstart@kars.local namespaces="git" %s\n' "$(cat "$keys/signer.pub")" >"$keys/allowed_signers"
  "$kars" init "$repo"
  git -C "$repo" init -q -b main
  git -C "$repo" config user.name "kars quickstart"
  git -C "$repo" config user.email quickstart@kars.local
  git -C "$repo" config gpg.format ssh
  git -C "$repo" config user.signingkey "$keys/signer"
  git -C "$repo" config gpg.ssh.allowedSignersFile "$keys/allowed_signers"
fi
# This cluster's images (by digest), in kars.yaml: a signed commit whenever they change.
python3 - "$repo/kars.yaml" "$KARS_IMAGE_ROUTER" "$KARS_IMAGE_EGRESS_GUARD" "$KARS_IMAGE_TEST_AGENT" <<'PY'
import re, sys
path, router, guard, agent = sys.argv[1:]
text = open(path).read()
text = re.sub(r"(?m)^    router: .*$", f'    router: "{router}"', text)
text = re.sub(r"(?m)^    egressGuard: .*$", f'    egressGuard: "{guard}"', text)
text = re.sub(r"(?m)^    runtimes:\n      OpenClaw: .*\n", "", text)
text = re.sub(r'(?m)^(    egressGuard: .*)$', r'\1\n    runtimes:\n      OpenClaw: "' + agent + '"', text)
open(path, "w").write(text)
PY
git -C "$repo" add -A
if ! git -C "$repo" diff --cached --quiet || ! git -C "$repo" rev-parse -q --verify HEAD >/dev/null; then
  git -C "$repo" commit -q -S -m "Policy repository from kars init, with this cluster's images"
fi
git -C "$repo" log --show-signature -1 --format='commit %H%n%s' 2>&1 | sed 's/^/    /'

step "validating and rendering (kars validate, kars render)"
"$kars" validate "$repo"
"$kars" render "$repo" >"$state/rendered.yaml"
echo "rendered set written to $state/rendered.yaml"

step "serving the repository with git daemon on git://$host_ip:$git_port/ (pods reach the host there)"
stop_git_daemon
setsid git daemon --reuseaddr --export-all --listen="$host_ip" --port="$git_port" \
  --base-path="$state" "$state" >"$state/git-daemon.log" 2>&1 </dev/null &
echo $! >"$state/git-daemon.pid"
for _ in $(seq 1 50); do
  git ls-remote "git://$host_ip:$git_port/policy-repo" >/dev/null 2>&1 && break
  sleep 0.1
done
git ls-remote "git://$host_ip:$git_port/policy-repo" >/dev/null || die "git daemon did not start (see $state/git-daemon.log)"

step "helm install kars-gitops (charts/kars-gitops): the agent, its RBAC, the kars CRDs"
cat >"$state/values.yaml" <<VALUES
repository:
  url: git://$host_ip:$git_port/policy-repo
  retryInterval: 2s
image:
  repository: ${KARS_IMAGE_GITOPS_AGENT%@*}
  digest: "${KARS_IMAGE_GITOPS_AGENT#*@}"
  pullPolicy: Never
VALUES
"$helm" upgrade --install kars-gitops charts/kars-gitops --namespace kars-gitops-system \
  --create-namespace --values "$state/values.yaml" --set-file trust.allowedSigners="$keys/allowed_signers" \
  --wait --timeout 5m

step "waiting for the in-cluster agent: PolicyRepo kars-policies Ready (the sandbox runs, its router confirms)"
deadline=$((SECONDS + 240))
until [ "$("$kubectl" -n kars-gitops-system get policyrepo kars-policies \
  -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
  if [ $SECONDS -gt $deadline ]; then
    "$kars" status -n kars-gitops-system || true
    "$kubectl" -n kars-gitops-system logs deploy/kars-gitops --tail=30 || true
    die "not Ready after 240 s (the status and the agent's log are above)"
  fi
  sleep 2
done
"$kars" get -n kars-gitops-system
"$kubectl" -n kars-hello-agent get pods -o wide

cat <<MSG

==> done. The agent runs in the cluster (helm list -n kars-gitops-system) and keeps it equal
    to the last signed commit of $repo. Look at it:
    export KUBECONFIG=$KUBECONFIG
    $kars status -n kars-gitops-system          (what is applied, from which commit, signed by whom)
    $kubectl get karssandboxes,inferencepolicies,toolpolicies -A
    $kubectl -n kars-hello-agent get deploy,pods,svc,cm,networkpolicy
    $kubectl -n kars-gitops-system logs deploy/kars-gitops
Change the repository, commit with -S, and ask the agent to fetch now (or wait for the interval):
    git -C $repo commit -S -am "..."
    $kars reconcile kars-policies -n kars-gitops-system --wait
Stop everything:  bash ci/quickstart.sh down
MSG
