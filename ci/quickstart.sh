#!/usr/bin/env bash
# The main job on the embedded default, end to end on this machine:
#   1. install what is missing and build the pinned control plane (cached) and the kars CLI;
#   2. start a local Kubernetes control plane (state in .quickstart/cluster);
#   3. install the upstream kars CRDs;
#   4. create a policy repository from repo-template/ with a commit signed by a fresh SSH key;
#   5. verify, render and apply it with `kars sync --once`;
#   6. print what was applied and how to look at it with kubectl.
# Run again at any time: the cluster and the repository are reused. Stop the cluster with
#   ci/cluster.sh down .quickstart/cluster
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/.quickstart"
step() { printf '\n==> %s\n' "$*" >&2; }

step "installing prerequisites and building the pinned tools (cached under ~/.cache/kars)"
bash ci/setup.sh control-plane
step "building the kars CLI (cargo build -p kars-cli)"
cargo build --locked -p kars-cli
kars="$root/target/debug/kars"
bin="$(bash ci/build-tools.sh print-dir control-plane)"
kubectl="$bin/kubectl"

step "starting the local control plane"
bash ci/cluster.sh up "$state/cluster"
export KUBECONFIG="$state/cluster/kubeconfig"

step "installing the upstream kars CRDs (kars.azure.com/v1alpha1) and the PolicyRepo CRD (gitops.kars.io)"
"$kubectl" apply --server-side --field-manager kars-quickstart -f renderer/upstream/crds/ -f charts/kars-gitops/crds/ 2>&1 | grep -v "unrecognized format" || true
"$kubectl" wait --for=condition=Established --timeout=60s crd -l app.kubernetes.io/name=kars >/dev/null 2>&1 ||
  "$kubectl" wait --for=condition=Established --timeout=60s crd --all >/dev/null
"$kubectl" wait --for=condition=Established --timeout=60s crd/policyrepos.gitops.kars.io >/dev/null
echo "12 kars CRDs and the PolicyRepo CRD established"

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
  git -C "$repo" add -A
  git -C "$repo" commit -q -S -m "Initial policy repository from kars init"
fi
git -C "$repo" log --show-signature -1 --format='commit %H%n%s' 2>&1 | sed 's/^/    /'

step "validating and rendering (kars validate, kars render)"
"$kars" validate "$repo"
"$kars" render "$repo" >"$state/rendered.yaml"
echo "rendered set written to $state/rendered.yaml"

step "verifying, rendering and applying (kars sync --once)"
"$kars" sync "$repo" --once --kubeconfig "$KUBECONFIG" --allowed-signers "$keys/allowed_signers"

cat <<MSG

==> done. Look at what was applied:
    export KUBECONFIG=$KUBECONFIG
    $kubectl get karssandboxes,inferencepolicies,toolpolicies -A
    $kubectl -n kars-hello-agent get deploy,rs,pods,svc,cm,networkpolicy,sa
    $kubectl get ns -l app.kubernetes.io/managed-by=kars-gitops
    $kubectl -n kars-gitops-system get policyrepo -o wide    (what is applied, from which commit)
    (pods stay Pending: this control plane has no nodes; everything else is real)
Change the repository ($repo), commit with -S, and run the sync again:
    $kars sync $repo --once --kubeconfig \$KUBECONFIG --allowed-signers $keys/allowed_signers
Stop the control plane:  bash ci/cluster.sh down $state/cluster
MSG
