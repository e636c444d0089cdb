#!/usr/bin/env bash
# A kind cluster with the simulated GPU nodes of hack/nodepools.yaml, for machines with Docker: the
# alternative to hack/cluster-up.sh (which needs no Docker) described in docs/local-cluster.md.
#
#   1. `kind create cluster --name autoparallel` (reused when it exists), kubeconfig written to a file of
#      its own (never ~/.kube/config);
#   2. kwok's controller installed from the kwok project's release manifests kwok.yaml and stage-fast.yaml,
#      of the kwok version hack/build-control-plane.sh builds (hack/cluster/kwok/go.mod);
#   3. the simulated GPU nodes registered and awaited with the code hack/cluster-up.sh uses
#      (hack/cluster/nodes.sh).
#
# NOT TESTED on the development machine of this repository (it has no Docker): see docs/local-cluster.md.
#
# Usage: hack/kind-up.sh                           create (or reuse) the cluster, install kwok, register nodes
#        hack/kind-up.sh --print-kubeconfig-path   print the kubeconfig path only
# Delete: kind delete cluster --name autoparallel
#
# Env: AUTOPARALLEL_KIND_NAME (cluster name, default autoparallel), AUTOPARALLEL_KIND_DIR (where the
#      kubeconfig and rendered nodes go, default ~/.cache/autoparallel/kind-<name>), AUTOPARALLEL_NODEPOOLS,
#      KIND (default: kind on PATH), KUBECTL (default: kubectl on PATH, else the one
#      hack/build-control-plane.sh built), PYTHON (default: the repo .venv, else python3; needs PyYAML),
#      AUTOPARALLEL_KWOK_RELEASES (base of kwok's release assets, default its GitHub releases),
#      AUTOPARALLEL_STARTUP_TIMEOUT (seconds per wait, default 300).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${AUTOPARALLEL_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/autoparallel}"
CLUSTER_NAME="${AUTOPARALLEL_KIND_NAME:-autoparallel}"
STATE_DIR="${AUTOPARALLEL_KIND_DIR:-${CACHE_DIR}/kind-${CLUSTER_NAME}}"
KUBECONFIG_PATH="${STATE_DIR}/kubeconfig"
NODEPOOLS="${AUTOPARALLEL_NODEPOOLS:-${REPO_ROOT}/hack/nodepools.yaml}"
HELPER="${REPO_ROOT}/hack/cluster/helper.py"
# Where kwok's release assets are: <base>/<version>/kwok.yaml (a mirror URL or a local directory works too).
KWOK_RELEASES="${AUTOPARALLEL_KWOK_RELEASES:-https://github.com/kubernetes-sigs/kwok/releases/download}"
TIMEOUT="${AUTOPARALLEL_STARTUP_TIMEOUT:-300}"

log() { printf '[kind-up] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=hack/go-build-lib.sh
source "${REPO_ROOT}/hack/go-build-lib.sh" # module_version: the pinned kwok version
# shellcheck source=hack/cluster/nodes.sh
source "${REPO_ROOT}/hack/cluster/nodes.sh" # register_nodes, nodes_ready (shared with hack/cluster-up.sh)

kubectl_() { "${KUBECTL_BIN}" --kubeconfig="${KUBECONFIG_PATH}" "$@"; }

# The kubelet version the simulated nodes report: the kind cluster's own Kubernetes version.
kube_version() { kubectl_ get --raw /version | "${PYTHON}" "${HELPER}" server-version; }

# Polls a command until it succeeds; fails with what was awaited and the last output at the deadline.
wait_until() { # <timeout s> <description> <command...>
  local timeout="$1" description="$2" deadline output
  shift 2
  deadline=$(($(printf '%(%s)T' -1) + timeout))
  until output="$("$@" 2>&1)"; do
    if (($(printf '%(%s)T' -1) >= deadline)); then
      die "timed out after ${timeout} s waiting for ${description}; last output: ${output:-<none>}"
    fi
    sleep 1
  done
}

find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "${PYTHON}"
  elif [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then
    echo "${REPO_ROOT}/.venv/bin/python" # has PyYAML
  else
    command -v python3 || die "python3 (with PyYAML) is required"
  fi
}

find_kubectl() {
  if [[ -n "${KUBECTL:-}" ]]; then
    echo "${KUBECTL}"
  elif command -v kubectl >/dev/null 2>&1; then
    command -v kubectl
  elif [[ -x "${CACHE_DIR}/bin/kubectl" ]]; then
    echo "${CACHE_DIR}/bin/kubectl"
  else
    die "kubectl (>= 1.24) is required: install it, or build it with make cluster-build"
  fi
}

cluster_exists() { "${KIND_BIN}" get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; }

# kwok's controller as the kwok project installs it in a cluster, plus the "fast" stages (nodes Ready at
# once, pods Running and Ready, Job pods Succeeded, deleted pods gone).
install_kwok() { # <version>
  local url="${KWOK_RELEASES}/$1"
  log "installing kwok $1 (${url}/kwok.yaml, ${url}/stage-fast.yaml)"
  kubectl_ apply --server-side --force-conflicts -f "${url}/kwok.yaml" >/dev/null
  kubectl_ wait --for=condition=Established --timeout="${TIMEOUT}s" crd/stages.kwok.x-k8s.io >/dev/null
  kubectl_ apply --server-side --force-conflicts -f "${url}/stage-fast.yaml" >/dev/null
  # The simulated nodes are untainted: keep kwok's own pod on the real kind node, where it runs.
  kubectl_ -n kube-system patch deployment kwok-controller --type=merge -p '{"spec":{"template":{"spec":{
    "affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[
    {"matchExpressions":[{"key":"autoparallel.io/simulated-node","operator":"DoesNotExist"}]}]}}}}}}}' >/dev/null
  kubectl_ -n kube-system rollout status deployment/kwok-controller --timeout="${TIMEOUT}s" >&2
}

main() {
  if [[ "${1:-}" == --print-kubeconfig-path ]]; then
    echo "${KUBECONFIG_PATH}"
    return 0
  fi
  [[ $# -eq 0 ]] || die "usage: $0 [--print-kubeconfig-path]"

  KIND_BIN="${KIND:-kind}"
  command -v "${KIND_BIN}" >/dev/null 2>&1 ||
    die "kind not found (https://kind.sigs.k8s.io/; it needs Docker). Without Docker use make cluster-up."
  KUBECTL_BIN="$(find_kubectl)"
  PYTHON="$(find_python)"
  local kwok_version start=${EPOCHREALTIME}
  kwok_version="$(module_version "${REPO_ROOT}/hack/cluster/kwok/go.mod" sigs.k8s.io/kwok)"
  [[ -n "${kwok_version}" ]] || die "no kwok version found in hack/cluster/kwok/go.mod"

  mkdir -p "${STATE_DIR}"
  if cluster_exists; then
    log "kind cluster ${CLUSTER_NAME} exists: reusing it"
    (umask 077 && "${KIND_BIN}" get kubeconfig --name "${CLUSTER_NAME}" >"${KUBECONFIG_PATH}")
  else
    log "creating kind cluster ${CLUSTER_NAME}"
    "${KIND_BIN}" create cluster --name "${CLUSTER_NAME}" --kubeconfig "${KUBECONFIG_PATH}" --wait "${TIMEOUT}s"
  fi
  wait_until "${TIMEOUT}" "the API server's /readyz" kubectl_ get --raw /readyz

  install_kwok "${kwok_version}"
  register_nodes
  wait_until "${TIMEOUT}" "the simulated GPU nodes to be Ready" nodes_ready

  log "ready in $(elapsed "${start}") s: kind cluster ${CLUSTER_NAME}, kwok ${kwok_version}, nodes of ${NODEPOOLS}"
  log "delete: kind delete cluster --name ${CLUSTER_NAME}"
  echo "export KUBECONFIG=${KUBECONFIG_PATH}"
}

main "$@"
