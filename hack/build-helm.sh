#!/usr/bin/env bash
# Builds the helm CLI from the Go module proxy, once, into a cache outside the repository (the chart
# tests, `make chart-lint` and docs/install.md use it):
#
#   helm   <- hack/helm/go.mod (helm.sh/helm/v3, its own wrapper module: its dependencies never
#             merge with the control plane's Kubernetes modules)
#
# The binary is cached under $AUTOPARALLEL_CACHE_DIR/helm/helm-<version>-<hash>/, where <hash> covers
# the wrapper module's go.mod/go.sum and the build recipe below, and $AUTOPARALLEL_CACHE_DIR/bin/helm
# points at it. A second run with the binary cached returns in well under a second.
#
# Usage: hack/build-helm.sh [--print-path]
# Env:   AUTOPARALLEL_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/autoparallel), GO (default: go on
#        PATH, else /usr/local/go/bin/go). GOMODCACHE/GOCACHE stay at Go's defaults.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WRAPPER="${REPO_ROOT}/hack/helm"
CACHE_DIR="${AUTOPARALLEL_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/autoparallel}"
BIN_DIR="${CACHE_DIR}/bin"
# Bump when the build flags below change, so the cached binary is rebuilt.
RECIPE_VERSION=1

log() { printf '[build-helm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=hack/go-build-lib.sh
source "${REPO_ROOT}/hack/go-build-lib.sh"




build() { # <dest dir> <helm version> <client-go version>
  local dest="$1" version="$2" client_go="$3" tmp ldflags major minor
  # As helm's own Makefile: the Kubernetes version helm assumes for `helm template`/`helm lint`
  # (.Capabilities.KubeVersion, deprecation checks) is client-go's v0.N -> 1.N.
  major=$(($(cut -d. -f1 <<<"${client_go#v}") + 1))
  minor="$(cut -d. -f2 <<<"${client_go}")"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${version}"
  ldflags+=" -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${major}"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor}"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${major}"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}"
  # Build into a temporary directory that replaces the cache directory only on success.
  tmp="${dest}.tmp.$$"
  rm -rf "${tmp}"
  mkdir -p "${tmp}"
  (
    cd "${WRAPPER}"
    # CGO off and -trimpath as helm's release builds; GOTOOLCHAIN=local: use the installed Go instead
    # of downloading another; go.sum is committed complete, so -mod=readonly never edits the repo.
    CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}" "${GO_BIN}" build -trimpath -ldflags "${ldflags}" \
      -o "${tmp}/helm" helm.sh/helm/v3/cmd/helm >&2
  ) || { rm -rf "${tmp}"; die "go build of helm ${version} failed"; }
  install_build "${tmp}" "${dest}" "${CACHE_DIR}/helm/helm-*"
}

main() {
  parse_print_path "$@"

  local version client_go hash dir start=${EPOCHREALTIME}
  version="$(module_version "${WRAPPER}/go.mod" helm.sh/helm/v3)"
  client_go="$(module_version "${WRAPPER}/go.mod" k8s.io/client-go)"
  [[ -n "${version}" && -n "${client_go}" ]] || die "no helm or client-go version found in ${WRAPPER}/go.mod"
  hash="$(cat "${WRAPPER}/go.mod" "${WRAPPER}/go.sum" <(echo "recipe=${RECIPE_VERSION}") | sha256sum | cut -c1-10)"
  dir="${CACHE_DIR}/helm/helm-${version}-${hash}"
  mkdir -p "${CACHE_DIR}/helm" "${BIN_DIR}"

  # Serialise concurrent builds (e.g. two pytest sessions needing helm at once).
  exec 9>"${CACHE_DIR}/helm/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi

  if [[ ! -x "${dir}/helm" ]]; then
    GO_BIN="${GO_BIN:-$(find_go)}"
    # Measured from empty Go caches on 2 cores (docs/install.md).
    log "building helm ${version} with $("${GO_BIN}" env GOVERSION) (cold: ~3 min)"
    build "${dir}" "${version}" "${client_go}"
    log "built helm ${version} in $(elapsed "${start}") s -> ${BIN_DIR}/helm"
  else
    log "helm ${version} cached -> ${BIN_DIR}/helm"
  fi
  ln -sfn "${dir}/helm" "${BIN_DIR}/helm"
  if ${PRINT_PATH}; then
    echo "${BIN_DIR}/helm"
  fi
}

main "$@"
