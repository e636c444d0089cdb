#!/usr/bin/env bash
# Starts the local Kubernetes control plane (see docs/local-cluster.md): etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, the kwok controller and the LeaderWorkerSet controller (with its
# CRD and admission webhooks) on 127.0.0.1, plus the simulated GPU nodes of hack/nodepools.yaml. The binaries come from hack/build-control-plane.sh (built once, cached).
#
# Usage: hack/cluster-up.sh                         start (or reuse a healthy) cluster
#        hack/cluster-up.sh --print-kubeconfig-path  print the kubeconfig path only (for `make -s kubeconfig`)
#        hack/cluster-up.sh --restart COMPONENT      kill -9 one component of the running cluster and start it
#                                                    again with the same flags (fault tests; `make cluster-restart`)
#
# Everything runtime (pid files, logs, certificates, etcd data, kubeconfigs) lives in the state dir,
# $AUTOPARALLEL_CLUSTER_DIR (default ~/.cache/autoparallel/cluster); hack/cluster-down.sh removes it.
# Ports (all on 127.0.0.1) can be moved with
# AUTOPARALLEL_{APISERVER,ETCD,ETCD_PEER,KCM,SCHEDULER,KWOK,LWS,LWS_WEBHOOK}_PORT.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${AUTOPARALLEL_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/autoparallel}"
STATE_DIR="${AUTOPARALLEL_CLUSTER_DIR:-${CACHE_DIR}/cluster}"
KUBECONFIG_PATH="${STATE_DIR}/kubeconfig"
NODEPOOLS="${AUTOPARALLEL_NODEPOOLS:-${REPO_ROOT}/hack/nodepools.yaml}"
HELPER="${REPO_ROOT}/hack/cluster/helper.py"

APISERVER_PORT="${AUTOPARALLEL_APISERVER_PORT:-16443}"
ETCD_PORT="${AUTOPARALLEL_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${AUTOPARALLEL_ETCD_PEER_PORT:-12380}"
KCM_PORT="${AUTOPARALLEL_KCM_PORT:-10357}"
SCHEDULER_PORT="${AUTOPARALLEL_SCHEDULER_PORT:-10359}"
KWOK_PORT="${AUTOPARALLEL_KWOK_PORT:-10347}"
LWS_PORT="${AUTOPARALLEL_LWS_PORT:-10349}"                 # the LWS controller's health probes (HTTP)
LWS_WEBHOOK_PORT="${AUTOPARALLEL_LWS_WEBHOOK_PORT:-19443}" # its admission webhooks (HTTPS, called by the API server)
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1 # first address of SERVICE_CIDR: the `kubernetes` Service; in the serving cert
POD_CIDR=10.244.0.1/16 # kwok hands out pod IPs from here
LWS_USER=lws-controller # the LWS controller's identity (RBAC: LWS's own ClusterRole)

# Start order; cluster-down.sh stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok lws-controller)
STARTUP_TIMEOUT="${AUTOPARALLEL_STARTUP_TIMEOUT:-120}"

# shellcheck source=hack/cluster/lib.sh
source "${REPO_ROOT}/hack/cluster/lib.sh"
# shellcheck source=hack/cluster/nodes.sh
source "${REPO_ROOT}/hack/cluster/nodes.sh" # register_nodes, nodes_ready (shared with hack/kind-up.sh)

log() { printf '[cluster-up] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

kubectl_() { "${BIN_DIR}/kubectl" --kubeconfig="${KUBECONFIG_PATH}" "$@"; }

# ---------------------------------------------------------------------------------------------------
# Waiting

# Polls a command until it succeeds; fails with what was awaited, the last output, and the tail of
# every component's log when the deadline passes or a component process died.
wait_for() { # <timeout s> <description> <command...>
  local timeout="$1" description="$2" deadline output comp
  shift 2
  deadline=$(awk -v n="${EPOCHREALTIME}" -v t="${timeout}" 'BEGIN { printf "%d", n + t }')
  while true; do
    if output="$("$@" 2>&1)"; then
      return 0
    fi
    for comp in "${STARTED[@]}"; do
      component_alive "${comp}" || fail_startup "${comp} exited while waiting for ${description}" "${output}"
    done
    if (($(printf '%(%s)T' -1) >= deadline)); then
      fail_startup "timed out after ${timeout} s waiting for ${description}" "${output}"
    fi
    sleep 0.2
  done
}

fail_startup() { # <message> <last output>
  local comp
  log "ERROR: $1"
  log "last output: ${2:-<none>}"
  for comp in "${COMPONENTS[@]}"; do
    if [[ -f "$(log_file "${comp}")" ]]; then
      log "---- last lines of $(log_file "${comp}")"
      tail -n 15 "$(log_file "${comp}")" >&2 || true
    fi
  done
  log "state and logs kept in ${STATE_DIR}; run hack/cluster-down.sh (make cluster-down) to clean up"
  exit 1
}

# ---------------------------------------------------------------------------------------------------
# Certificates, tokens, kubeconfigs

random_token() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# openssl when present: a CA, the API server's serving certificate signed by it, and the
# service-account signing key. Without openssl the API server self-signs its serving certificate
# (--cert-dir) and Python writes the service-account key.
generate_pki() {
  local pki="${STATE_DIR}/pki" san
  mkdir -p "${pki}"
  chmod 700 "${pki}"
  if command -v openssl >/dev/null 2>&1 && [[ "${AUTOPARALLEL_PKI:-openssl}" == openssl ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=autoparallel-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "${pki}/ca.key" -out "${pki}/ca.crt" 2>/dev/null
    san="IP:127.0.0.1,IP:${SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
    sign_serving_cert "${pki}/apiserver" kube-apiserver "${san},DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    # The LWS controller's webhook server (the API server calls it on 127.0.0.1): tls.crt/tls.key, the
    # names controller-runtime looks for in its certDir.
    mkdir -p "${pki}/lws"
    sign_serving_cert "${pki}/lws/tls" lws-webhook "IP:127.0.0.1,DNS:localhost"
    openssl genrsa -out "${pki}/sa.key" 2048 2>/dev/null
    CA_FILE="${pki}/ca.crt"
    APISERVER_TLS_FLAGS=(--tls-cert-file="${pki}/apiserver.crt" --tls-private-key-file="${pki}/apiserver.key")
    KCM_SIGNING_FLAGS=(--cluster-signing-cert-file="${pki}/ca.crt" --cluster-signing-key-file="${pki}/ca.key")
  else
    log "no openssl: the API server self-signs its certificate; Python writes the service-account key"
    "${PYTHON}" "${HELPER}" rsa-key "${pki}/sa.key"
    # The API server writes apiserver.crt (its certificate and the CA that signed it) at startup. The LWS
    # webhooks, also on 127.0.0.1, serve that same pair (a throwaway loopback cluster: one key is enough).
    CA_FILE="${pki}/serving/apiserver.crt"
    mkdir -p "${pki}/lws"
    ln -sfn ../serving/apiserver.crt "${pki}/lws/tls.crt"
    ln -sfn ../serving/apiserver.key "${pki}/lws/tls.key"
    APISERVER_TLS_FLAGS=(--cert-dir="${pki}/serving")
    KCM_SIGNING_FLAGS=()
  fi
  printf '%s\n' "${CA_FILE}" >"${pki}/ca-file"
}

# A key and a serving certificate signed by the CA: <prefix>.key, <prefix>.crt.
sign_serving_cert() { # <path prefix> <common name> <subjectAltName>
  local pki="${STATE_DIR}/pki"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "${pki}/ca.crt" -CAkey "${pki}/ca.key" -CAcreateserial -days 3650 \
    -out "$1.crt" -extfile <(
      printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n'
      printf 'extendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$3"
    ) 2>/dev/null
}

# The flags generate_pki chose, read back from the state dir of a running cluster (for --restart).
load_pki() {
  local pki="${STATE_DIR}/pki"
  CA_FILE="$(cat "${pki}/ca-file")"
  if [[ -f "${pki}/ca.key" ]]; then
    APISERVER_TLS_FLAGS=(--tls-cert-file="${pki}/apiserver.crt" --tls-private-key-file="${pki}/apiserver.key")
    KCM_SIGNING_FLAGS=(--cluster-signing-cert-file="${pki}/ca.crt" --cluster-signing-key-file="${pki}/ca.key")
  else
    APISERVER_TLS_FLAGS=(--cert-dir="${pki}/serving")
    KCM_SIGNING_FLAGS=()
  fi
}

# Static bearer tokens (--token-auth-file) for the admin and each component: the controller-manager
# and scheduler get their usual identities, which the bootstrap RBAC policy already authorises.
write_tokens_and_kubeconfigs() {
  local pki="${STATE_DIR}/pki" admin kcm scheduler kwok lws
  admin="$(random_token)" kcm="$(random_token)" scheduler="$(random_token)" kwok="$(random_token)"
  lws="$(random_token)"
  {
    printf '%s,kubernetes-admin,kubernetes-admin,"system:masters"\n' "${admin}"
    printf '%s,system:kube-controller-manager,system:kube-controller-manager\n' "${kcm}"
    printf '%s,system:kube-scheduler,system:kube-scheduler\n' "${scheduler}"
    # kwok updates nodes, leases and pod status like a kubelet of many nodes would.
    printf '%s,kwok-controller,kwok-controller,"system:masters"\n' "${kwok}"
    # The LWS controller: no group; LWS's own ClusterRole is bound to this user (install_lws).
    printf '%s,%s,%s\n' "${lws}" "${LWS_USER}" "${LWS_USER}"
  } >"${pki}/tokens.csv"
  chmod 600 "${pki}/tokens.csv"
  write_kubeconfig "${KUBECONFIG_PATH}" kubernetes-admin "${admin}"
  write_kubeconfig "${STATE_DIR}/kube-controller-manager.kubeconfig" system:kube-controller-manager "${kcm}"
  write_kubeconfig "${STATE_DIR}/kube-scheduler.kubeconfig" system:kube-scheduler "${scheduler}"
  write_kubeconfig "${STATE_DIR}/kwok.kubeconfig" kwok-controller "${kwok}"
  write_kubeconfig "${STATE_DIR}/lws-controller.kubeconfig" "${LWS_USER}" "${lws}"
}

write_kubeconfig() { # <path> <user> <token>
  (
    umask 077
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: autoparallel-local
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority: ${CA_FILE}
users:
- name: $2
  user:
    token: $3
contexts:
- name: autoparallel-local
  context:
    cluster: autoparallel-local
    user: $2
current-context: autoparallel-local
EOF
  )
}

# ---------------------------------------------------------------------------------------------------
# Processes

STARTED=()

# Starts a component in its own session (setsid) so it outlives `make`, with stdio on a log file
# (and fd 8, the cluster lock, closed so the daemon does not hold it).
start_component() { # <component> <args...>
  local comp="$1" bin
  shift
  bin="$(readlink -f "${BIN_DIR}/${comp}")"
  setsid nohup "${bin}" "$@" >"$(log_file "${comp}")" 2>&1 </dev/null 8>&- &
  echo "$!" >"$(pid_file "${comp}")"
  STARTED+=("${comp}")
}

start_etcd() {
  # --unsafe-no-fsync: a throwaway test cluster does not need durable writes, and fsync is slow.
  start_component etcd \
    --name=autoparallel-local \
    --data-dir="${STATE_DIR}/etcd-data" \
    --listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
    --advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster="autoparallel-local=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync \
    --log-level=warn
}

start_apiserver() {
  local pki="${STATE_DIR}/pki"
  # --endpoint-reconciler-type=none: no need to publish the loopback address in the `kubernetes`
  # Service. The default admission plugins stay on (ServiceAccount among them: it needs the
  # controller-manager's `default` ServiceAccounts, as in a real cluster).
  start_component kube-apiserver \
    --etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="${APISERVER_PORT}" \
    "${APISERVER_TLS_FLAGS[@]}" \
    --token-auth-file="${pki}/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="${pki}/sa.key" \
    --service-account-signing-key-file="${pki}/sa.key" \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --profiling=false
}

start_controller_manager() {
  local kc="${STATE_DIR}/kube-controller-manager.kubeconfig"
  # --use-service-account-credentials: every controller acts as its own ServiceAccount (as kubeadm
  # sets it up), so RBAC is exercised like in a real cluster.
  start_component kube-controller-manager \
    --kubeconfig="${kc}" \
    --authentication-kubeconfig="${kc}" \
    --authorization-kubeconfig="${kc}" \
    --bind-address=127.0.0.1 \
    --secure-port="${KCM_PORT}" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="${STATE_DIR}/pki/sa.key" \
    --root-ca-file="${CA_FILE}" \
    "${KCM_SIGNING_FLAGS[@]}" \
    --profiling=false
}

start_scheduler() {
  local kc="${STATE_DIR}/kube-scheduler.kubeconfig"
  start_component kube-scheduler \
    --kubeconfig="${kc}" \
    --authentication-kubeconfig="${kc}" \
    --authorization-kubeconfig="${kc}" \
    --bind-address=127.0.0.1 \
    --secure-port="${SCHEDULER_PORT}" \
    --leader-elect=false \
    --profiling=false
}

start_kwok() {
  # Only nodes annotated kwok.x-k8s.io/node=fake are kwok's; node leases are renewed by kwok itself
  # (--node-lease-duration-seconds) so the node lifecycle controller keeps them Ready.
  start_component kwok \
    --kubeconfig="${STATE_DIR}/kwok.kubeconfig" \
    --config="${BIN_DIR}/kwok-stages.yaml" \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 \
    --cidr="${POD_CIDR}" \
    --server-address="127.0.0.1:${KWOK_PORT}"
}

# The LeaderWorkerSet controller (sigs.k8s.io/lws): its CRD, its ClusterRole bound to its user and its webhook
# configurations calling it on 127.0.0.1, from the files of LWS's module that hack/build-control-plane.sh
# copied next to the binaries. Server-side apply: the CRD is too large for kubectl's last-applied annotation.
install_lws() {
  kubectl_ apply --server-side --force-conflicts --field-manager=autoparallel-cluster-up \
    -f "${BIN_DIR}/lws-crd.yaml" >/dev/null
  "${PYTHON}" "${HELPER}" lws-manifests "${BIN_DIR}" --user="${LWS_USER}" \
    --url="https://127.0.0.1:${LWS_WEBHOOK_PORT}" --ca-file="${CA_FILE}" \
    | kubectl_ apply --server-side --force-conflicts --field-manager=autoparallel-cluster-up -f - >/dev/null
}

start_lws() {
  local config="${STATE_DIR}/lws-config.yaml"
  # LWS's component config (config.lws.x-k8s.io/v1alpha1): one instance, so no leader election (and so no
  # namespace of its own); the serving certificate from generate_pki instead of LWS's internal cert
  # rotation (which writes a Secret for an in-cluster Service); metrics off; everything on loopback.
  cat >"${config}" <<EOF
apiVersion: config.lws.x-k8s.io/v1alpha1
kind: Configuration
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
webhook:
  host: 127.0.0.1
  port: ${LWS_WEBHOOK_PORT}
  certDir: ${STATE_DIR}/pki/lws
metrics:
  bindAddress: "0"
health:
  healthProbeBindAddress: 127.0.0.1:${LWS_PORT}
EOF
  start_component lws-controller \
    --config="${config}" \
    --kubeconfig="${STATE_DIR}/lws-controller.kubeconfig" \
    --zap-devel=false
}

# The webhooks answer: a server-side dry run of a LeaderWorkerSet passes LWS's defaulting and validation.
lws_webhooks_answer() {
  kubectl_ create --dry-run=server -o name -f - <<'EOF'
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
metadata: {name: webhook-check, namespace: default}
spec:
  leaderWorkerTemplate:
    size: 2
    workerTemplate:
      spec:
        containers: [{name: check, image: check}]
EOF
}

# ---------------------------------------------------------------------------------------------------
# Simulated GPU nodes

kube_version() { awk -F= '$1 == "kubernetes" { print $2 }' "${BIN_DIR}/versions"; }

# ---------------------------------------------------------------------------------------------------
# Health

# A cluster is reusable when every component recorded in the state dir is alive and the API server
# answers /readyz.
cluster_healthy() {
  local comp
  [[ -f "${STATE_DIR}/.autoparallel-cluster" && -f "${KUBECONFIG_PATH}" ]] || return 1
  for comp in "${COMPONENTS[@]}"; do
    component_alive "${comp}" || return 1
  done
  kubectl_ get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

default_service_account_exists() { kubectl_ get serviceaccount default -n default -o name; }

# kube-scheduler and kube-controller-manager serve /healthz on their secure ports; the LWS controller
# serves /readyz over plain HTTP (controller-runtime's health probes).
component_healthz() { # <port> [<scheme> <path>]
  "${PYTHON}" - "$1" "${2:-https}" "${3:-/healthz}" <<'EOF'
import ssl, sys, urllib.request
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # self-signed serving certificate of a loopback component
port, scheme, path = sys.argv[1:]
with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}{path}", context=ctx, timeout=3) as r:
    sys.exit(0 if r.read().strip() == b"ok" else 1)
EOF
}

wait_for_lws() {
  wait_for "${STARTUP_TIMEOUT}" "lws-controller /readyz" component_healthz "${LWS_PORT}" http /readyz
  wait_for "${STARTUP_TIMEOUT}" "the LeaderWorkerSet webhooks" lws_webhooks_answer
}

report() { # <start EPOCHREALTIME> <what>
  local comp pids=()
  for comp in "${COMPONENTS[@]}"; do
    pids+=("${comp}=$(cat "$(pid_file "${comp}")")")
  done
  log "$2 in $(awk -v s="$1" -v e="${EPOCHREALTIME}" 'BEGIN { printf "%.1f", e - s }') s"
  log "control-plane RSS: $("${PYTHON}" "${HELPER}" rss "${pids[@]}")"
  log "kubeconfig: ${KUBECONFIG_PATH}"
  log "  export KUBECONFIG=${KUBECONFIG_PATH}   # kubectl: ${BIN_DIR}/kubectl"
  log "logs: ${STATE_DIR}/logs/   stop: make cluster-down"
}

# ---------------------------------------------------------------------------------------------------

find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "${PYTHON}"
  elif [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then
    echo "${REPO_ROOT}/.venv/bin/python" # has PyYAML
  else
    command -v python3 || die "python3 is required"
  fi
}

# kill -9 one component and start it again with the flags of cluster-up, then wait until it serves.
restart_component() { # <component>
  local comp="$1" pid start=${EPOCHREALTIME}
  [[ " ${COMPONENTS[*]} " == *" ${comp} "* ]] || die "unknown component ${comp} (one of: ${COMPONENTS[*]})"
  [[ -f "${STATE_DIR}/.autoparallel-cluster" ]] || die "no local cluster in ${STATE_DIR}: run hack/cluster-up.sh"
  load_pki
  if component_alive "${comp}"; then
    pid="$(cat "$(pid_file "${comp}")")"
    kill -KILL "${pid}"
    # Gone from /proc, or a zombie: only then are its sockets closed (its executable link disappears earlier,
    # while it still holds its listening port).
    while [[ -e "/proc/${pid}" && "$(awk '{ print $3 }' "/proc/${pid}/stat" 2>/dev/null)" != Z ]]; do sleep 0.1; done
    log "killed ${comp} (pid ${pid}, SIGKILL)"
  fi
  case "${comp}" in
    etcd) start_etcd ;;
    kube-apiserver) start_apiserver ;;
    kube-controller-manager) start_controller_manager ;;
    kube-scheduler) start_scheduler ;;
    kwok) start_kwok ;;
    lws-controller) start_lws ;;
  esac
  case "${comp}" in
    etcd | kube-apiserver)
      wait_for "${STARTUP_TIMEOUT}" "kube-apiserver /readyz" kubectl_ get --raw /readyz --request-timeout=5s ;;
    kube-controller-manager) wait_for "${STARTUP_TIMEOUT}" "${comp} /healthz" component_healthz "${KCM_PORT}" ;;
    kube-scheduler) wait_for "${STARTUP_TIMEOUT}" "${comp} /healthz" component_healthz "${SCHEDULER_PORT}" ;;
    kwok) ;;
    lws-controller) wait_for_lws ;;
  esac
  log "restarted ${comp} (pid $(cat "$(pid_file "${comp}")")) in $(awk -v s="${start}" -v e="${EPOCHREALTIME}" \
    'BEGIN { printf "%.1f", e - s }') s"
}

main() {
  if [[ "${1:-}" == --print-kubeconfig-path ]]; then
    echo "${KUBECONFIG_PATH}"
    return 0
  fi
  if [[ "${1:-}" == --restart && $# -eq 2 ]]; then
    PYTHON="$(find_python)"
    BIN_DIR="$("${REPO_ROOT}/hack/build-control-plane.sh" --print-bin-dir)"
    restart_component "$2"
    return 0
  fi
  [[ $# -eq 0 ]] || die "usage: $0 [--print-kubeconfig-path | --restart COMPONENT]"

  PYTHON="$(find_python)"
  BIN_DIR="$("${REPO_ROOT}/hack/build-control-plane.sh" --print-bin-dir)"
  local start=${EPOCHREALTIME}

  # One cluster-up at a time (make and a pytest session may race).
  mkdir -p "$(dirname "${STATE_DIR}")"
  exec 8>"${STATE_DIR}.lock"
  if command -v flock >/dev/null 2>&1; then flock 8; fi

  if cluster_healthy; then
    register_nodes # picks up edits of the node pools file
    wait_for 60 "the simulated GPU nodes to be Ready" nodes_ready
    report "${start}" "cluster already running and healthy (reused); ready"
    return 0
  fi
  if [[ -e "${STATE_DIR}" ]]; then
    log "found a stopped or unhealthy cluster in ${STATE_DIR}: removing it and starting afresh"
    "${REPO_ROOT}/hack/cluster-down.sh"
  fi

  mkdir -p "${STATE_DIR}/logs" "${STATE_DIR}/pids"
  touch "${STATE_DIR}/.autoparallel-cluster" # marks the dir as ours for cluster-down's rm -rf
  generate_pki
  write_tokens_and_kubeconfigs

  start_etcd
  start_apiserver
  wait_for "${STARTUP_TIMEOUT}" "kube-apiserver /readyz" kubectl_ get --raw /readyz --request-timeout=5s
  start_controller_manager
  start_scheduler
  start_kwok
  install_lws
  start_lws
  register_nodes
  wait_for "${STARTUP_TIMEOUT}" "the default ServiceAccount in namespace default" default_service_account_exists
  wait_for "${STARTUP_TIMEOUT}" "the simulated GPU nodes to be Ready" nodes_ready
  wait_for "${STARTUP_TIMEOUT}" "kube-scheduler /healthz" component_healthz "${SCHEDULER_PORT}"
  wait_for "${STARTUP_TIMEOUT}" "kube-controller-manager /healthz" component_healthz "${KCM_PORT}"
  wait_for_lws
  report "${start}" "cluster ready"
}

main "$@"
