#!/usr/bin/env bash
# Generates the CustomResourceDefinitions of other projects that the integration tests install into
# their local API server, once, into a cache outside the repository:
#
#   monitoring.coreos.com/v1 (PodMonitor, ServiceMonitor, Probe, PrometheusRule, Prometheus,
#   Alertmanager, ThanosRuler)   <- github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
#
# Where the YAML comes from, and why: the projects publish their CRDs as files in their Git
# repositories (prometheus-operator: example/prometheus-operator-crd/), but only the Go module proxy is
# reachable here, and it does not serve prometheus-operator's root module (only its API module
# .../pkg/apis/monitoring). Those published files are themselves controller-gen's output for the
# project's API types, so this script does what the project's Makefile does: controller-gen
# (sigs.k8s.io/controller-tools, built from the proxy) with the Makefile's options, run in the API
# module's own directory (here: its copy in the module cache, at the version hack/crds/go.mod pins),
# so the types load with the dependency versions of the module's own go.mod/go.sum, as upstream. The
# schema is the real one, not a hand-written stand-in: with prometheus-operator v0.93.0 and the
# controller-tools v0.21.0 it used, this recipe reproduces its published CRD files byte for byte.
# hack/crds/go.mod is a wrapper module of its own (its dependencies never merge with the control
# plane's or helm's) that pins controller-tools and the API modules.
#
# Each entry of CRD_SOURCES below is cached under $AUTOPARALLEL_CACHE_DIR/crds/<name>-<version>-<hash>/
# (one file per CRD, named <group>_<plural>.yaml, e.g. monitoring.coreos.com_podmonitors.yaml), where
# <hash> covers the wrapper module's go.mod/go.sum, the entry and the recipe below.
# $AUTOPARALLEL_CACHE_DIR/crds/current/ then holds links to the files of every entry of this checkout.
# A second run with everything cached returns in well under a second.
#
# Usage: hack/build-crds.sh [--print-path]   (--print-path: print the directory .../crds/current)
# Env:   AUTOPARALLEL_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/autoparallel), GO (default: go on
#        PATH, else /usr/local/go/bin/go). GOMODCACHE/GOCACHE stay at Go's defaults.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WRAPPER="${REPO_ROOT}/hack/crds"
CACHE_DIR="${AUTOPARALLEL_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/autoparallel}"
CRD_DIR="${CACHE_DIR}/crds/current"
# Bump when the generation recipe below changes, so the cached CRDs are regenerated.
RECIPE_VERSION=1

# What to generate, one entry a line:
#   <name> <module (required in hack/crds/go.mod; its version names the cache directory)>
#          <controller-gen crd generator options> <package dirs in that module, comma-separated>
# Options and dirs as the project's own Makefile; import a package of the module in hack/crds/tools.go
# (so that `go mod tidy` keeps the requirement). An optional function post_<name> <dir> <version> then
# edits the generated files.
CRD_SOURCES=(
  # Makefile `generate-crds`: `cd pkg/apis/monitoring && controller-gen crd:crdVersions=v1
  # paths=./v1/. paths=./v1alpha1/. ...`; v1alpha1 (PrometheusAgent, ScrapeConfig,
  # AlertmanagerConfig) only adds CRDs of its own, which we do not need.
  "monitoring github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring crd:crdVersions=v1 ./v1/."
  # KEDA's Makefile `manifests`: `controller-gen crd:crdVersions=v1,generateEmbeddedObjectMeta=true
  # paths="./apis/..." ...`; the CRDs (ScaledObject, ScaledJob, TriggerAuthentication, …) come from apis/.
  "keda github.com/kedacore/keda/v2 crd:crdVersions=v1,generateEmbeddedObjectMeta=true ./apis/keda/v1alpha1/."
  # Gateway API Inference Extension's Makefile `generate`: `controller-gen crd output:dir=./config/crd/bases
  # paths="./..."`; InferencePool (inference.networking.k8s.io/v1) is in api/v1.
  "gaie sigs.k8s.io/gateway-api-inference-extension crd ./api/v1/."
)

log() { printf '[build-crds] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=hack/go-build-lib.sh
source "${REPO_ROOT}/hack/go-build-lib.sh"

# As prometheus-operator's scripts/generate/append-operator-version.sh (run by `make generate-crds`):
# the published CRDs carry the operator version next to controller-gen's.
post_monitoring() { # <dir> <version>
  sed -i "/^    controller-gen.kubebuilder.io.version.*/a\\    operator.prometheus.io/version: ${2#v}" "$1"/*.yaml
}

# Cache directory of one entry: name, version and a hash of the wrapper module, the entry and recipe.
entry_dir() { # <name> <version> <entry>
  local hash
  hash="$(cat "${WRAPPER}/go.mod" "${WRAPPER}/go.sum" \
    <(echo "recipe=${RECIPE_VERSION}"; echo "entry=$3"; declare -f "post_$1" || true) \
    | sha256sum | cut -c1-10)"
  echo "${CACHE_DIR}/crds/$1-$2-${hash}"
}

# Builds controller-gen (once per run, only when something is generated) into a temporary directory
# that the EXIT trap removes: with Go's build cache warm, a rebuild is only a link. Sets CONTROLLER_GEN.
CONTROLLER_GEN=""
build_controller_gen() {
  [[ -z "${CONTROLLER_GEN}" ]] || return 0
  local version tools="${CACHE_DIR}/crds/.controller-gen.tmp.$$"
  version="$(module_version "${WRAPPER}/go.mod" sigs.k8s.io/controller-tools)"
  [[ -n "${version}" ]] || die "no controller-tools version found in ${WRAPPER}/go.mod"
  rm -rf "${tools}"
  mkdir -p "${tools}"
  # shellcheck disable=SC2064 # expand now: the path is fixed
  trap "rm -rf '${tools}'" EXIT
  log "building controller-gen ${version}"
  (
    cd "${WRAPPER}"
    # As controller-tools' release builds (the version stamp lands in the CRDs' annotations);
    # GOTOOLCHAIN=local: use the installed Go; go.sum is committed complete, so -mod=readonly works.
    CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}" "${GO_BIN}" build -trimpath \
      -ldflags "-s -w -X sigs.k8s.io/controller-tools/pkg/version.version=${version}" \
      -o "${tools}/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen >&2
  ) || die "go build of controller-gen ${version} failed"
  CONTROLLER_GEN="${tools}/controller-gen"
}

# Runs controller-gen into a temporary directory that replaces the cache directory only on success,
# then drops the cached CRDs of other versions of the entry.
generate() { # <dest dir> <name> <module> <version> <crd options> <package dirs>
  local dest="$1" name="$2" module="$3" version="$4" options="$5" dirs="$6" src tmp d old
  local paths=()
  build_controller_gen
  for d in ${dirs//,/ }; do paths+=("paths=${d}"); done
  # The module's source, fetched (and checked against go.sum) through the wrapper module.
  src="$(cd "${WRAPPER}" && GOTOOLCHAIN="${GOTOOLCHAIN:-local}" "${GO_BIN}" mod download "${module}" >&2 &&
    GOTOOLCHAIN="${GOTOOLCHAIN:-local}" "${GO_BIN}" list -m -f '{{.Dir}}' "${module}")" \
    || die "go mod download of ${module} failed"
  [[ -n "${src}" && -d "${src}" ]] || die "no source directory of ${module} ${version}"
  tmp="${dest}.tmp.$$"
  rm -rf "${tmp}"
  mkdir -p "${tmp}"
  (
    # As upstream: in the API module, which is the main module there, so `go list` (which
    # controller-gen loads the packages with, using the go first on PATH) resolves its dependencies
    # from its own go.mod/go.sum. The module cache is read-only: -mod=readonly, no workspace.
    cd "${src}"
    PATH="$(dirname "${GO_BIN}"):${PATH}" GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS=-mod=readonly GOWORK=off \
      "${CONTROLLER_GEN}" "${options}" "${paths[@]}" "output:crd:dir=${tmp}" >&2
    if declare -F "post_${name}" >/dev/null; then "post_${name}" "${tmp}" "${version}"; fi
  ) || { rm -rf "${tmp}"; die "controller-gen on ${module} ${version} (${dirs}) failed"; }
  compgen -G "${tmp}/*.yaml" >/dev/null || { rm -rf "${tmp}"; die "controller-gen wrote no CRD for ${module} (${dirs})"; }
  install_build "${tmp}" "${dest}" "${CACHE_DIR}/crds/${name}-*"
}

main() {
  parse_print_path "$@"

  local entry name module options dirs version dir f start=${EPOCHREALTIME} built=() cached=()
  local -A keep=()
  mkdir -p "${CACHE_DIR}/crds" "${CRD_DIR}"

  # Serialise concurrent runs (e.g. two pytest sessions needing the CRDs at once).
  exec 9>"${CACHE_DIR}/crds/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi

  for entry in "${CRD_SOURCES[@]}"; do
    read -r name module options dirs <<<"${entry}"
    version="$(module_version "${WRAPPER}/go.mod" "${module}")"
    [[ -n "${version}" ]] || die "no version of ${module} found in ${WRAPPER}/go.mod"
    dir="$(entry_dir "${name}" "${version}" "${entry}")"
    if [[ ! -d "${dir}" ]]; then
      GO_BIN="${GO_BIN:-$(find_go)}"
      # Measured from empty Go caches on 2 cores: mostly building controller-gen, once per run.
      log "generating the ${name} CRDs of ${module} ${version} with $("${GO_BIN}" env GOVERSION) (cold: ~2 min)"
      local t0=${EPOCHREALTIME}
      generate "${dir}" "${name}" "${module}" "${version}" "${options}" "${dirs}"
      log "generated the ${name} CRDs in $(elapsed "${t0}") s"
      built+=("${name}")
    else
      cached+=("${name} ${version}")
    fi
    for f in "${dir}"/*.yaml; do
      ln -sfn "${f}" "${CRD_DIR}/${f##*/}"
      keep["${f##*/}"]=1
    done
  done
  # Drop the links of CRDs that no entry of this checkout generates (any more).
  for f in "${CRD_DIR}"/*; do
    if [[ -L "${f}" && -z "${keep["${f##*/}"]:-}" ]]; then rm -f "${f}"; fi
  done

  if ((${#built[@]})); then
    log "generated CRDs in $(elapsed "${start}") s (${built[*]}) -> ${CRD_DIR}"
  else
    log "CRDs cached ($(IFS=,; echo "${cached[*]}")) -> ${CRD_DIR}"
  fi
  if ${PRINT_PATH}; then
    echo "${CRD_DIR}"
  fi
}

main "$@"
