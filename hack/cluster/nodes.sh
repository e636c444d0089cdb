# shellcheck shell=bash
# The simulated GPU nodes of the node pools file: registered and awaited with the same code by
# hack/cluster-up.sh (the local control plane) and hack/kind-up.sh (a kind cluster with kwok).
#
# Sourced. The caller defines: STATE_DIR (rendered nodes.json goes there), NODEPOOLS (the pools file),
# PYTHON (with PyYAML), HELPER (hack/cluster/helper.py), and the functions kubectl_ (kubectl against the
# cluster), kube_version (the kubelet version the nodes report), log and die.

# Creates/updates one Node per entry of the node pools file and deletes simulated nodes no longer in
# it. Labels, annotations and taints go through `kubectl apply`; capacity/allocatable live in the
# status subresource, which apply ignores on existing nodes, so they are patched there too.
register_nodes() {
  local rendered="${STATE_DIR}/nodes.json" name patch
  [[ -f "${NODEPOOLS}" ]] || die "node pools file ${NODEPOOLS} not found"
  "${PYTHON}" "${HELPER}" render-nodes "${NODEPOOLS}" --kubelet-version="$(kube_version)" >"${rendered}"
  kubectl_ apply --server-side --force-conflicts --field-manager=autoparallel-cluster-up \
    -f "${rendered}" >/dev/null
  while read -r name patch; do
    kubectl_ patch node "${name}" --subresource=status --type=merge -p "${patch}" >/dev/null
  done < <("${PYTHON}" "${HELPER}" status-patches "${rendered}")

  WANTED_NODES="$("${PYTHON}" "${HELPER}" node-names "${NODEPOOLS}")"
  for name in $(kubectl_ get nodes -l autoparallel.io/simulated-node=true -o name); do
    if ! grep -qx "${name#node/}" <<<"${WANTED_NODES}"; then
      log "removing ${name} (no longer in ${NODEPOOLS})"
      kubectl_ delete "${name}" --wait=false >/dev/null
    fi
  done
}

# Every node of the pools file exists and has condition Ready=True (kwok's node-initialize stage).
nodes_ready() {
  local statuses name missing=()
  statuses="$(kubectl_ get nodes -l autoparallel.io/simulated-node=true \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')"
  for name in ${WANTED_NODES}; do
    grep -qx "${name} True" <<<"${statuses}" || missing+=("${name}")
  done
  if ((${#missing[@]})); then
    echo "not Ready yet: ${missing[*]}"
    return 1
  fi
}
