#!/usr/bin/env bash
# The README's first command (`make demo`): a local control plane with simulated GPU nodes, the CRD, the
# operator, and examples/llama70b.yaml applied — then what a user sees: `kubectl get pd` and the plan.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-${REPO_ROOT}/.venv}"
EXAMPLE="${1:-${REPO_ROOT}/examples/llama70b.yaml}"

"${REPO_ROOT}/hack/cluster-up.sh"
KUBECONFIG="$("${REPO_ROOT}/hack/cluster-up.sh" --print-kubeconfig-path)"
export KUBECONFIG
KUBECTL="$(dirname "$(command -v kubectl 2>/dev/null || echo "${HOME}/.cache/autoparallel/bin/kubectl")")/kubectl"
[[ -x "${KUBECTL}" ]] || KUBECTL="${HOME}/.cache/autoparallel/bin/kubectl"
STATE_DIR="$(dirname "${KUBECONFIG}")"

echo "== installing the CRD"
"${KUBECTL}" apply --server-side -f "${REPO_ROOT}/crds/"
"${KUBECTL}" wait --for=condition=Established crd/paralleldeployments.autoparallel.io --timeout=30s

echo "== starting the operator (log: ${STATE_DIR}/operator.log)"
"${VENV}/bin/autoparallel" operator run --all-namespaces --metrics-port 8080 --liveness-port 8081 \
  >"${STATE_DIR}/operator.log" 2>&1 &
OPERATOR_PID=$!
trap 'kill ${OPERATOR_PID} 2>/dev/null || true' EXIT

echo "== kubectl apply -f ${EXAMPLE#"${REPO_ROOT}"/}"
"${KUBECTL}" apply -f "${EXAMPLE}"
NAME="$("${KUBECTL}" get -f "${EXAMPLE}" -o jsonpath='{.metadata.name}')"
if ! "${KUBECTL}" wait --for=condition=Ready "pd/${NAME}" --timeout=120s; then
  echo "the ParallelDeployment did not become Ready; operator log:" >&2
  tail -n 40 "${STATE_DIR}/operator.log" >&2
  exit 1
fi

echo
echo "== kubectl get pd -o wide"
"${KUBECTL}" get pd -o wide
echo
echo "== the plan (kubectl get pd ${NAME} -o jsonpath='{.status.plan}')"
"${KUBECTL}" get pd "${NAME}" -o jsonpath='{.status.plan}' | "${VENV}/bin/python" -m json.tool
echo
echo "== what the operator created"
"${KUBECTL}" get deployments,statefulsets,jobs,services,pods -l "app.kubernetes.io/instance=${NAME}" -o wide
echo
echo "== metrics (curl localhost:8080/metrics | grep autoparallel_memory_per_gpu_bytes)"
# On a second run the resource is Ready before this operator has even started: wait (bounded) until the operator
# serves /metrics and has reported the resource again.
"${VENV}/bin/python" - "${NAME}" <<'PY'
import sys, time, urllib.error, urllib.request
deadline = time.monotonic() + 120
wanted = f'name="{sys.argv[1]}"'
while True:
    try:
        text = urllib.request.urlopen("http://127.0.0.1:8080/metrics", timeout=5).read().decode()
    except (urllib.error.URLError, OSError):
        text = ""
    lines = [line for line in text.splitlines() if line.startswith("autoparallel_memory_per_gpu_bytes")]
    if any(wanted in line for line in lines):
        print("\n".join(lines))
        break
    if time.monotonic() > deadline:
        sys.exit(f"the operator did not report {sys.argv[1]} on :8080/metrics within 120 s")
    time.sleep(0.5)  # polling interval of a bounded wait
PY
echo
echo "The cluster keeps running: export KUBECONFIG=${KUBECONFIG}; run the operator yourself with"
echo "'${VENV}/bin/autoparallel operator run', and 'make cluster-down' when you are done."
