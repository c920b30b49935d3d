# shellcheck shell=bash
# The node of the local cluster (sourced by ci/cluster.sh; `ci/cluster.sh up DIR --node`).
#
# Layout (one node cluster per machine at a time; the addresses are the project's own):
#   host netns   karsn0 10.250.0.1/30 fd6b:6172:0:1::1/64   the apiserver listens here
#   netns kars-node  karsn1 10.250.0.2/30 fd6b:6172:0:1::2/64   the node, named by its IP
#                bridge kars0 10.244.0.1/24 fd6b:6172:0:2::1/64   pods (CNI bridge, host-local)
#   containerd + kubelet run in the node's network namespace and in a private mount namespace
#   (held by one "holder" process) so their mounts vanish with them; kube-proxy (iptables
#   mode) runs in the node's network namespace, so its rules live and die there; the
#   scheduler runs beside the control plane. The kubelet's cgroups are under /kars-node in
#   each cgroup v1 hierarchy (sub-cgroups only: the machine's hierarchies are not touched).
#
# What the node changes outside DIR, and how `down` undoes it (also after a SIGKILL):
#   network namespace kars-node and the veth pair       ip netns del (the pair goes with it)
#   host routes to the pod networks                      on karsn0, so they go with the link
#   sysctls the kubelet sets (vm.*, kernel.*)            saved at up, written back at down
#   cgroups /sys/fs/cgroup/*/kars-node                   every task killed, rmdir depth first
#   processes (holder, containerd, shims, kubelet, ...)  by PID and by mount/network namespace
#   empty mount points it had to create                  removed when they were not there before

NODE_NETNS=kars-node
NODE_HOST_IF=karsn0
NODE_IF=karsn1
NODE_HOST_IP=10.250.0.1
NODE_IP=10.250.0.2
NODE_HOST_IP6=fd6b:6172:0:1::1
NODE_IP6=fd6b:6172:0:1::2
NODE_POD_CIDR=10.244.0.0/24
NODE_POD_CIDR6=fd6b:6172:0:2::/64
NODE_CGROUP=kars-node
# The sysctls the kubelet writes at start (setupKernelTunables): global, so restored at down.
NODE_SYSCTLS="vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes"
# Host directories the node's private mounts need as mount points (tmpfs inside the mount
# namespace, so nothing is written to the host's copies).
NODE_MOUNT_POINTS="/run/containerd /var/lib/cni /var/log/containers /var/log/pods"

node_log() { printf '[node] %s\n' "$*" >&2; }

node_running() { [ -f "$1/run/node.netns" ] && pid_alive "$1/run/kubelet.pid"; }

node_status() {
  local dir="$1" c
  [ -f "$dir/run/node.netns" ] || return 0
  for c in node-holder containerd kubelet kube-proxy kube-scheduler; do
    if pid_alive "$dir/run/$c.pid"; then echo "$c: running (pid $(cat "$dir/run/$c.pid"))"; else echo "$c: stopped"; fi
  done
  echo "node: $NODE_IP (network namespace $NODE_NETNS)"
}

in_node_netns() { nsenter --net="/run/netns/$NODE_NETNS" -- "$@"; }

node_network_up() {
  local dir="$1"
  for cmd in ip nsenter unshare iptables ip6tables; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (ci/setup.sh installs iproute2, util-linux and iptables)"
  done
  if ip netns list | grep -qw "$NODE_NETNS"; then
    local owner
    owner="$(cat /run/kars-node.owner 2>/dev/null || echo unknown)"
    die "a node cluster already runs on this machine (state in $owner): ci/cluster.sh down $owner"
  fi
  mkdir -p "$dir/run" "$dir/logs"
  # What is restored at down: the sysctls, and which mount points existed.
  : >"$dir/run/node-sysctls"
  local s
  for s in $NODE_SYSCTLS; do echo "$s $(cat "/proc/sys/$s")" >>"$dir/run/node-sysctls"; done
  : >"$dir/run/node-created-dirs"
  local d
  for d in $NODE_MOUNT_POINTS; do
    [ -d "$d" ] || { mkdir -p "$d"; echo "$d" >>"$dir/run/node-created-dirs"; }
  done
  # `ip netns add` makes /run/netns (and a bind mount of it on itself, for propagation) when
  # they are not there; both are undone at down when the node made them.
  [ -d /run/netns ] || echo /run/netns >>"$dir/run/node-created-dirs"
  mountpoint -q /run/netns 2>/dev/null || echo /run/netns >"$dir/run/node-created-netns-mount"
  echo "$dir" >/run/kars-node.owner
  echo "$NODE_NETNS" >"$dir/run/node.netns"
  ip netns add "$NODE_NETNS"
  ip link add "$NODE_HOST_IF" type veth peer name "$NODE_IF" netns "$NODE_NETNS"
  ip addr add "$NODE_HOST_IP/30" dev "$NODE_HOST_IF"
  ip -6 addr add "$NODE_HOST_IP6/64" dev "$NODE_HOST_IF" nodad
  ip link set "$NODE_HOST_IF" up
  in_node_netns ip link set lo up
  in_node_netns ip addr add "$NODE_IP/30" dev "$NODE_IF"
  in_node_netns ip -6 addr add "$NODE_IP6/64" dev "$NODE_IF" nodad
  in_node_netns ip link set "$NODE_IF" up
  in_node_netns ip route add default via "$NODE_HOST_IP"
  in_node_netns ip -6 route add default via "$NODE_HOST_IP6"
  # Per network namespace: these go with the namespace.
  in_node_netns sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward; echo 1 >/proc/sys/net/ipv6/conf/all/forwarding'
  # The host reaches pods (the agent asks their routers) through the node; the routes are on
  # the veth, so they vanish with it.
  ip route add "$NODE_POD_CIDR" via "$NODE_IP" dev "$NODE_HOST_IF"
  ip -6 route add "$NODE_POD_CIDR6" via "$NODE_IP6" dev "$NODE_HOST_IF"
}

node_network_down() {
  local dir="$1"
  if ip netns list 2>/dev/null | grep -qw "$NODE_NETNS"; then
    local pid
    for pid in $(ip netns pids "$NODE_NETNS" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$NODE_NETNS" 2>/dev/null || true
  fi
  ip link del "$NODE_HOST_IF" 2>/dev/null || true
  if [ -f "$dir/run/node-created-netns-mount" ] && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
    umount /run/netns 2>/dev/null || true
    rm -f "$dir/run/node-created-netns-mount"
  fi
  if [ -f "$dir/run/node-sysctls" ]; then
    local s v
    while read -r s v; do
      [ -n "$s" ] && echo "$v" >"/proc/sys/$s" 2>/dev/null || true
    done <"$dir/run/node-sysctls"
    rm -f "$dir/run/node-sysctls"
  fi
  if [ -f "$dir/run/node-created-dirs" ]; then
    local d
    while read -r d; do [ -n "$d" ] && rmdir "$d" 2>/dev/null || true; done <"$dir/run/node-created-dirs"
    rm -f "$dir/run/node-created-dirs"
  fi
  rm -f "$dir/run/node.netns"
  [ "$(cat /run/kars-node.owner 2>/dev/null)" != "$dir" ] || rm -f /run/kars-node.owner
}

node_cgroup_dirs() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$NODE_CGROUP" ] && echo "$h$NODE_CGROUP"
  done
  return 0
}

node_cgroups_create() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -e "${h}cgroup.procs" ] || continue
    mkdir -p "$h$NODE_CGROUP"
    # A new cpuset cgroup has no CPUs or memory nodes until given its parent's.
    if [ -f "${h}cpuset.cpus" ]; then
      cat "${h}cpuset.cpus" >"$h$NODE_CGROUP/cpuset.cpus"
      cat "${h}cpuset.mems" >"$h$NODE_CGROUP/cpuset.mems"
    fi
  done
}

# Kills every task in the node's cgroups until none is left, then removes the cgroups; with
# "final", says which cgroup could not be removed (before containerd stops, its shims may
# still hold some).
node_cgroups_remove() {
  local final="${1:-}" round d pid left
  for round in $(seq 1 50); do
    left=0
    for d in $(node_cgroup_dirs); do
      while read -r pid; do
        [ -n "$pid" ] || continue
        left=1
        kill -KILL "$pid" 2>/dev/null || true
      done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
      # A frozen cgroup's tasks cannot die: thaw it.
      find "$d" -name freezer.state -exec sh -c 'echo THAWED >"$1"' _ {} \; 2>/dev/null || true
    done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for d in $(node_cgroup_dirs); do
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ ! -d "$d" ] || [ -z "$final" ] || node_log "warning: could not remove cgroup $d"
  done
}

# Kills every process in the mount namespace the holder made (containerd, its shims, the
# kubelet), whether or not its PID file survived.
node_kill_mount_namespace() {
  local dir="$1" ns pid
  ns="$(cat "$dir/run/node-mntns" 2>/dev/null || true)"
  [ -n "$ns" ] || return 0
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" = "$ns" ] && kill -KILL "$pid" 2>/dev/null || true
  done
  return 0
}

stop_pid_file() {
  local f="$1" pid
  if pid_alive "$f"; then
    pid="$(cat "$f")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

node_down() {
  local dir="$1"
  [ -f "$dir/run/node.netns" ] || [ -f "$dir/run/node-sysctls" ] || return 0
  local c
  for c in kube-scheduler kube-proxy kubelet; do stop_pid_file "$dir/run/$c.pid"; done
  node_cgroups_remove
  stop_pid_file "$dir/run/containerd.pid"
  node_kill_mount_namespace "$dir"
  stop_pid_file "$dir/run/node-holder.pid"
  rm -f "$dir/run/node-mntns"
  node_cgroups_remove final
  node_network_down "$dir"
  node_log "node stopped and cleaned (network namespace, links, cgroups, sysctls)"
}

# Runs "$@" in the node's network namespace and the holder's mount namespace.
in_node() {
  local dir="$1"; shift
  nsenter --target "$(cat "$dir/run/node-holder.pid")" --mount --net -- "$@"
}

node_write_configs() {
  local dir="$1" nbin="$2" n="$1/node"
  mkdir -p "$n/containerd" "$n/cni/net.d" "$n/kubelet/seccomp/profiles" "$n/run"
  # The seccomp profile `isolation: enhanced` sandboxes ask for (Localhost
  # profiles/kars-strict.json): upstream's, installed on every node (its chart uses a DaemonSet).
  cp "$here/../charts/kars-gitops/files/kars-strict.json" "$n/kubelet/seccomp/profiles/kars-strict.json"
  local sock="$n/run/containerd.sock"
  [ ${#sock} -lt 100 ] || die "the containerd socket path would be too long (${#sock} > 100): use a shorter DIR"
  cat >"$n/containerd/config.toml" <<TOML
version = 3
root = "$n/containerd/root"
state = "$n/containerd/state"

[grpc]
  address = "$sock"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "kars.local/pause:3.10"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  # CAP_SYS_RESOURCE is absent on this machine: containers may not lower their OOM score.
  restrict_oom_score_adj = true
  # Pod network namespaces are mounted under the state dir (inside DIR), not in /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$nbin"]
    conf_dir = "$n/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$nbin/runc"
        SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
TOML
  cat >"$n/cni/net.d/10-kars.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kars",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "kars0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$n/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}], [{"subnet": "$NODE_POD_CIDR6"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # Pods resolve names through the test's own resolver on the host end of the node link
  # (there is no cluster DNS here).
  printf 'nameserver %s\n' "$NODE_HOST_IP" >"$n/resolv.conf"
  local pki="$dir/pki"
  if [ ! -f "$pki/kubelet.crt" ]; then
    (
      cd "$pki"
      printf 'subjectAltName = IP:%s\nextendedKeyUsage = serverAuth\n' "$NODE_IP" >kubelet.ext
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$NODE_IP" \
        -keyout kubelet.key -out kubelet.csr 2>/dev/null
      openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile kubelet.ext -out kubelet.crt 2>/dev/null
      rm -f kubelet.csr
    )
  fi
  cat >"$n/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
containerRuntimeEndpoint: unix://$sock
# This machine mounts cgroup v1 hierarchies; the kubelet refuses them unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
resolvConf: $n/resolv.conf
clusterDomain: cluster.local
podLogsDir: /var/log/pods
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
maxPods: 50
syncFrequency: 5s
fileCheckFrequency: 5s
shutdownGracePeriod: 0s
YAML
  cat >"$n/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $dir/kubeconfig}
hostnameOverride: "$NODE_IP"
clusterCIDR: "$NODE_POD_CIDR,$NODE_POD_CIDR6"
bindAddress: $NODE_IP
healthzBindAddress: ""
metricsBindAddress: ""
# Leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
YAML
}

node_import() {
  local dir="$1"; shift
  local nbin; nbin="$("$here/build-tools.sh" print-dir node)"
  local a
  for a in "$@"; do
    [ -f "$a" ] || die "image archive $a does not exist (ci/images.sh writes them)"
    in_node "$dir" "$nbin/ctr" --address "$dir/node/run/containerd.sock" -n k8s.io images import \
      --no-unpack=false --all-platforms "$a" >>"$dir/logs/ctr-import.log" 2>&1 ||
      { tail -n 5 "$dir/logs/ctr-import.log" >&2; die "importing $a failed"; }
  done
}

node_wait() {
  local what="$1" secs="$2" pidf="$3" log="$4"; shift 4
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$pidf"; then node_log "$what exited; last log lines:"; tail -n 30 "$log" >&2; return 1; fi
    if [ $SECONDS -ge $deadline ]; then node_log "$what not ready within ${secs}s; last log lines:"; tail -n 30 "$log" >&2; return 1; fi
    sleep 0.2
  done
}

node_up() {
  local dir="$1" bin="$2" nbin="$3" n="$1/node"
  node_write_configs "$dir" "$nbin"
  node_cgroups_create
  # The holder: a process in the node's network namespace and a new mount namespace (mounts
  # made in it do not reach the host; the host's still reach it). It mounts tmpfs over the
  # host paths containerd, CNI and the kubelet insist on, then sleeps until down.
  local mounts="" d
  for d in $NODE_MOUNT_POINTS; do mounts+="mount -t tmpfs -o mode=755 kars-node $d; "; done
  # containerd resolves registry names with /etc/resolv.conf: give it the test's resolver, so
  # even a mistaken pull asks nothing outside the machine.
  mounts+="mount --bind '$n/resolv.conf' /etc/resolv.conf; "
  rm -f "$dir/run/node-holder.ready"
  setsid nsenter --net="/run/netns/$NODE_NETNS" -- unshare --mount --propagation slave -- \
    sh -c "$mounts echo ready >'$dir/run/node-holder.ready'; exec sleep infinity" \
    >"$dir/logs/node-holder.log" 2>&1 </dev/null &
  echo $! >"$dir/run/node-holder.pid"
  local holder; holder="$(cat "$dir/run/node-holder.pid")"
  local deadline=$((SECONDS + 10))
  until [ -f "$dir/run/node-holder.ready" ]; do
    pid_alive "$dir/run/node-holder.pid" || { cat "$dir/logs/node-holder.log" >&2; return 1; }
    [ $SECONDS -lt $deadline ] || { node_log "the mount namespace holder did not start"; return 1; }
    sleep 0.05
  done
  readlink "/proc/$holder/ns/mnt" >"$dir/run/node-mntns"

  in_node "$dir" env PATH="$nbin:$PATH" setsid "$nbin/containerd" --config "$n/containerd/config.toml" \
    >"$dir/logs/containerd.log" 2>&1 </dev/null &
  echo $! >"$dir/run/containerd.pid"
  node_wait containerd 30 "$dir/run/containerd.pid" "$dir/logs/containerd.log" \
    in_node "$dir" "$nbin/ctr" --address "$n/run/containerd.sock" version || return 1

  # The pod sandbox image: the static pause built with the node tools.
  python3 "$here/oci-image.py" --layout "$n/images/pause" --archive "$n/images/pause.tar" \
    --name kars.local/pause --tag 3.10 --user 65535 --binary "$nbin/pause:/pause" \
    --entrypoint /pause >/dev/null || return 1
  node_import "$dir" "$n/images/pause.tar"

  in_node "$dir" setsid "$nbin/kubelet" --config "$n/kubelet/config.yaml" --kubeconfig "$dir/kubeconfig" \
    --root-dir "$n/kubelet" --cert-dir "$n/kubelet/pki" --hostname-override "$NODE_IP" \
    --node-ip "$NODE_IP,$NODE_IP6" --node-labels "kars.azure.com/pool=sandbox" \
    --v 1 >"$dir/logs/kubelet.log" 2>&1 </dev/null &
  echo $! >"$dir/run/kubelet.pid"

  setsid nsenter --net="/run/netns/$NODE_NETNS" -- "$nbin/kube-proxy" --config "$n/kube-proxy.yaml" \
    --v 1 >"$dir/logs/kube-proxy.log" 2>&1 </dev/null &
  echo $! >"$dir/run/kube-proxy.pid"

  setsid "$nbin/kube-scheduler" --kubeconfig "$dir/kubeconfig" --authentication-kubeconfig "$dir/kubeconfig" \
    --authorization-kubeconfig "$dir/kubeconfig" --leader-elect=false --secure-port 0 \
    --v 1 >"$dir/logs/kube-scheduler.log" 2>&1 </dev/null &
  echo $! >"$dir/run/kube-scheduler.pid"

  node_wait "the kubelet" 90 "$dir/run/kubelet.pid" "$dir/logs/kubelet.log" \
    sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get node '$NODE_IP' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True" || return 1
  local c
  for c in kube-proxy kube-scheduler; do
    pid_alive "$dir/run/$c.pid" || { node_log "$c exited; last log lines:"; tail -n 30 "$dir/logs/$c.log" >&2; return 1; }
  done
}
