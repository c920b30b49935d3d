#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) on loopback.
#
#   ci/cluster.sh up DIR [--node]
#                            build what is missing, start the control plane with its state in DIR,
#                            write DIR/kubeconfig, return once /readyz answers ok. With --node,
#                            also a node (containerd, kubelet, kube-proxy in a network namespace
#                            of its own, kube-scheduler) that pods really run on: see ci/node.sh
#   ci/cluster.sh down DIR   stop it (SIGTERM, then SIGKILL after 10 s) and, with a node, clean
#                            every trace of the node (processes, cgroups, links, sysctls)
#   ci/cluster.sh import DIR ARCHIVE...
#                            import OCI image archives into the node's containerd (no pulls)
#   ci/cluster.sh status DIR print whether it runs and where
#   ci/cluster.sh env DIR    print shell exports (KUBECONFIG, PATH with kubectl/helm)
#
# Ports are picked free at start (no fixed ports), so two clusters can run side by side.
# Everything the control plane writes (certificates, etcd data, logs, pids) stays under DIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The address the apiserver listens on: loopback, or with a node the host end of the node's
# link (pods reach it there, through the kubernetes Service).
API_HOST=127.0.0.1

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

gen_certs() {
  local pki="$1"
  mkdir -p "$pki"
  [ -f "$pki/.complete" ] && return 0
  (
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=kars-local-ca" -keyout ca.key -out ca.crt 2>/dev/null
    cat >apiserver.ext <<EXT
subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, IP:127.0.0.1, IP:10.96.0.1, IP:10.250.0.1
extendedKeyUsage = serverAuth
EXT
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    printf 'extendedKeyUsage = clientAuth\n' >client.ext
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=system:masters/CN=kars-admin" \
      -keyout admin.key -out admin.csr 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out admin.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr
    touch .complete
  )
}

write_kubeconfig() {
  local dir="$1" port="$2" user="$3" file="$4"
  local pki="$dir/pki"
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kars-local
  cluster:
    server: https://$API_HOST:$port
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$pki/admin.crt")
    client-key-data: $(base64 -w0 "$pki/admin.key")
contexts:
- name: kars-local
  context:
    cluster: kars-local
    user: $user
current-context: kars-local
KC
}

# shellcheck source=node.sh
source "$here/node.sh"

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_ready() {
  local dir="$1" port="$2" deadline=$((SECONDS + 90)) pki="$1/pki"
  while [ $SECONDS -lt $deadline ]; do
    for c in etcd kube-apiserver; do
      pid_alive "$dir/run/$c.pid" || { tail -n 30 "$dir/logs/$c.log" >&2; return 1; }
    done
    if curl -fsS --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
      "https://$API_HOST:$port/readyz" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  log "kube-apiserver did not become ready within 90 s; last log lines:"
  tail -n 30 "$dir/logs/kube-apiserver.log" >&2
  return 1
}

start_once() {
  local dir="$1" bin="$2"
  local etcd_port etcd_peer api_port
  etcd_port="$(free_port)"; etcd_peer="$(free_port)"; api_port="$(free_port)"
  mkdir -p "$dir/etcd" "$dir/logs" "$dir/run"
  chmod 700 "$dir/etcd"
  local pki="$dir/pki"

  setsid "$bin/etcd" --name kars-local --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "kars-local=http://127.0.0.1:$etcd_peer" \
    --listen-metrics-urls "" --unsafe-no-fsync --quota-backend-bytes 4294967296 \
    --log-level warn >"$dir/logs/etcd.log" 2>&1 </dev/null &
  echo $! >"$dir/run/etcd.pid"

  # Without a node nothing serves the kubernetes Service, so no endpoint is reconciled.
  local reconciler=none
  [ "$API_HOST" = 127.0.0.1 ] || reconciler=lease
  setsid "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$API_HOST" --advertise-address "$API_HOST" --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/12 --endpoint-reconciler-type "$reconciler" \
    --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
    --kubelet-preferred-address-types InternalIP \
    --authorization-mode RBAC --allow-privileged=true \
    --cert-dir "$dir/run/apiserver-certs" \
    --v 1 >"$dir/logs/kube-apiserver.log" 2>&1 </dev/null &
  echo $! >"$dir/run/kube-apiserver.pid"

  write_kubeconfig "$dir" "$api_port" kars-admin "$dir/kubeconfig"
  if ! wait_ready "$dir" "$api_port"; then
    stop_all "$dir"
    return 1
  fi

  setsid "$bin/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" --authentication-kubeconfig "$dir/kubeconfig" \
    --authorization-kubeconfig "$dir/kubeconfig" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 0 \
    --controllers '*' \
    --v 1 >"$dir/logs/kube-controller-manager.log" 2>&1 </dev/null &
  echo $! >"$dir/run/kube-controller-manager.pid"
  echo "$api_port" >"$dir/run/apiserver.port"
  # The controller manager has no serving port here; it works once the service-account
  # controller has created the "default" ServiceAccount in namespace "default".
  local deadline=$((SECONDS + 60))
  until curl -fsS --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://$API_HOST:$api_port/api/v1/namespaces/default/serviceaccounts/default" >/dev/null 2>&1; do
    if ! pid_alive "$dir/run/kube-controller-manager.pid" || [ $SECONDS -ge $deadline ]; then
      log "kube-controller-manager did not start; last log lines:"
      tail -n 20 "$dir/logs/kube-controller-manager.log" >&2
      stop_all "$dir"
      return 1
    fi
    sleep 0.2
  done
}

stop_all() {
  local dir="$1" c pid
  for c in kube-controller-manager kube-apiserver etcd; do
    if pid_alive "$dir/run/$c.pid"; then
      pid="$(cat "$dir/run/$c.pid")"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$dir/run/$c.pid"
  done
}

cmd_up() {
  local dir="$1" node="${2:-}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if pid_alive "$dir/run/kube-apiserver.pid"; then
    log "already running (kubeconfig: $dir/kubeconfig)"
    if [ -n "$node" ] && ! node_running "$dir"; then die "it runs without a node; ci/cluster.sh down $dir first"; fi
    return 0
  fi
  if [ -n "$node" ]; then
    node_bin="$("$here/build-tools.sh" node | tail -n1)"
    node_network_up "$dir"
    API_HOST="$NODE_HOST_IP"
  fi
  local bin
  bin="$("$here/build-tools.sh" control-plane | tail -n1)"
  local t0=$SECONDS
  gen_certs "$dir/pki"
  local attempt
  for attempt in 1 2 3; do
    if start_once "$dir" "$bin"; then
      log "control plane ready in $((SECONDS - t0))s: https://$API_HOST:$(cat "$dir/run/apiserver.port")"
      if [ -n "$node" ]; then
        node_up "$dir" "$bin" "$node_bin" || { node_down "$dir"; stop_all "$dir"; die "the node did not start; logs are in $dir/logs"; }
        log "node $NODE_IP ready in $((SECONDS - t0))s (pods: $NODE_POD_CIDR, $NODE_POD_CIDR6)"
      fi
      log "kubeconfig: $dir/kubeconfig   (try: KUBECONFIG=$dir/kubeconfig $bin/kubectl get ns)"
      return 0
    fi
    log "start attempt $attempt failed (a port may have been taken); retrying with new ports"
  done
  [ -z "$node" ] || node_network_down "$dir"
  die "could not start the control plane; logs are in $dir/logs"
}

cmd_down() {
  local dir="$1"
  [ -d "$dir" ] || { log "nothing to stop: $dir does not exist"; return 0; }
  dir="$(cd "$dir" && pwd)"
  node_down "$dir"
  stop_all "$dir"
  log "stopped (state left in $dir)"
}

cmd_status() {
  local dir="$1" c
  for c in etcd kube-apiserver kube-controller-manager; do
    if pid_alive "$dir/run/$c.pid"; then echo "$c: running (pid $(cat "$dir/run/$c.pid"))"; else echo "$c: stopped"; fi
  done
  [ -f "$dir/kubeconfig" ] && echo "kubeconfig: $dir/kubeconfig"
  node_status "$dir"
  return 0
}

cmd_env() {
  local dir; dir="$(cd "$1" && pwd)"
  echo "export KUBECONFIG=$dir/kubeconfig"
  echo "export PATH=$("$here/build-tools.sh" print-dir control-plane):$("$here/build-tools.sh" print-dir helm):\$PATH"
}

case "${1:-}" in
  up)
    if [ $# -eq 2 ]; then cmd_up "$2"
    elif [ $# -eq 3 ] && [ "$3" = --node ]; then cmd_up "$2" node
    else usage; exit 2; fi ;;
  import) [ $# -ge 3 ] || { usage; exit 2; }; d="$(cd "$2" && pwd)"; shift 2; node_import "$d" "$@" ;;
  down) [ $# -eq 2 ] || { usage; exit 2; }; cmd_down "$2" ;;
  status) [ $# -eq 2 ] || { usage; exit 2; }; cmd_status "$2" ;;
  env) [ $# -eq 2 ] || { usage; exit 2; }; cmd_env "$2" ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
