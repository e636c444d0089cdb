#!/usr/bin/env bash
# Stops the local control plane started by hack/cluster-up.sh (only the processes named in its pid
# files, and only while they still run the component's binary) and removes its state dir: pid files,
# logs, certificates, etcd data, kubeconfigs. The cached binaries stay.
#
# Usage: hack/cluster-down.sh
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${AUTOPARALLEL_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/autoparallel}"
STATE_DIR="${AUTOPARALLEL_CLUSTER_DIR:-${CACHE_DIR}/cluster}"
# Reverse start order: the clients first, etcd last.
COMPONENTS=(lws-controller kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
STOP_TIMEOUT=15

# shellcheck source=hack/cluster/lib.sh
source "${REPO_ROOT}/hack/cluster/lib.sh"

log() { printf '[cluster-down] %s\n' "$*" >&2; }

# SIGTERM, then SIGKILL if the process has not exited after STOP_TIMEOUT seconds.
stop_component() { # <component>
  local comp="$1" pid i
  component_alive "${comp}" || return 0
  pid="$(cat "$(pid_file "${comp}")")"
  kill -TERM "${pid}" 2>/dev/null || return 0
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    component_alive "${comp}" || { log "stopped ${comp} (pid ${pid})"; return 0; }
    sleep 0.1
  done
  log "${comp} (pid ${pid}) ignored SIGTERM for ${STOP_TIMEOUT} s: killing it"
  kill -KILL "${pid}" 2>/dev/null || true
  while component_alive "${comp}"; do sleep 0.1; done
}

main() {
  local comp
  if [[ ! -e "${STATE_DIR}" ]]; then
    log "no local cluster state in ${STATE_DIR}: nothing to stop"
    return 0
  fi
  if [[ ! -f "${STATE_DIR}/.autoparallel-cluster" ]]; then
    # Never rm -rf a directory we did not create (e.g. a mistyped AUTOPARALLEL_CLUSTER_DIR).
    log "ERROR: ${STATE_DIR} is not a cluster state dir made by hack/cluster-up.sh; leaving it alone"
    exit 1
  fi
  for comp in "${COMPONENTS[@]}"; do
    stop_component "${comp}"
  done
  rm -rf "${STATE_DIR}"
  log "removed ${STATE_DIR}"
}

main "$@"
