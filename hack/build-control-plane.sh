#!/usr/bin/env bash
# Builds the binaries of the local control plane from Go modules, once, into a cache outside the
# repository (see docs/local-cluster.md):
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl   <- hack/cluster/kubernetes/go.mod
#   etcd                                                               <- hack/cluster/etcd/go.mod
#   kwok (+ the kwok stage definitions it runs with)                   <- hack/cluster/kwok/go.mod
#   lws-controller (+ the LeaderWorkerSet CRD, webhook configurations   <- hack/cluster/lws/go.mod
#                   and RBAC role from the same module version)
#
# Every component is cached under $AUTOPARALLEL_CACHE_DIR/control-plane/<component>-<version>-<hash>/,
# where <hash> covers the wrapper module's go.mod/go.sum and the build recipe below, so a version bump
# rebuilds exactly that component. $AUTOPARALLEL_CACHE_DIR/bin/ then gets symlinks to the binaries of
# the current checkout (kubectl included). A second run with everything cached returns in well under
# a second.
#
# Usage: hack/build-control-plane.sh [--print-bin-dir]
# Env:   AUTOPARALLEL_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/autoparallel), GO (default: go on
#        PATH, else /usr/local/go/bin/go). GOMODCACHE/GOCACHE stay at Go's defaults.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WRAPPERS="${REPO_ROOT}/hack/cluster"
CACHE_DIR="${AUTOPARALLEL_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME}/.cache}/autoparallel}"
BIN_DIR="${CACHE_DIR}/bin"
# Bump when the build flags below change, so cached binaries are rebuilt.
RECIPE_VERSION=2

log() { printf '[build-control-plane] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=hack/go-build-lib.sh
source "${REPO_ROOT}/hack/go-build-lib.sh"



# Cache directory of one component: name, version and a hash of its wrapper module + recipe.
component_dir() { # <component> <version>
  local hash
  hash="$(cat "${WRAPPERS}/$1/go.mod" "${WRAPPERS}/$1/go.sum" <(echo "recipe=${RECIPE_VERSION}") \
    | sha256sum | cut -c1-10)"
  echo "${CACHE_DIR}/control-plane/$1-$2-${hash}"
}

# Runs "go build" in a wrapper module, writing into a temporary directory that replaces the cache
# directory only when everything succeeded (an interrupted build leaves no half-filled cache).
go_build() { # <component> <dest dir> <go build args...>
  local component="$1" dest="$2"
  shift 2
  local tmp="${dest}.tmp.$$"
  rm -rf "${tmp}"
  mkdir -p "${tmp}/bin"
  (
    cd "${WRAPPERS}/${component}"
    # CGO off and -trimpath as the upstream release builds; GOTOOLCHAIN=local: use the installed Go
    # (the wrappers declare go 1.24, which any Go >= 1.24 builds) instead of downloading another one.
    # go.sum is committed complete, so the default -mod=readonly works and never edits the repo.
    CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}" "${GO_BIN}" build -trimpath -o "${tmp}/bin/" "$@" >&2
  ) || { rm -rf "${tmp}"; die "go build of ${component} failed"; }
  echo "${tmp}"
}

# Moves a finished build into place and drops the cached builds of other versions of the component
# (a cluster still running them is unaffected: Linux keeps a running binary's file alive).
finish_component() { # <component> <tmp dir> <dest dir>
  install_build "$2" "$3" "${CACHE_DIR}/control-plane/$1-*"
}

build_kubernetes() { # <dest dir> <version>
  local dest="$1" version="$2" minor ldflags="-s -w" pkg tmp
  minor="$(cut -d. -f2 <<<"${version}")"
  # Version stamp as in kubernetes/hack/lib/version.sh; without it `--version` says v0.0.0 and
  # clients mis-detect the server version.
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  # ONE go build for all four binaries: the packages they share (most of them) compile once.
  # Tags as upstream's non-debug release builds (hack/lib/golang.sh).
  tmp="$(go_build kubernetes "${dest}" -tags selinux,notest,grpcnotrace -ldflags "${ldflags}" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)"
  finish_component kubernetes "${tmp}" "${dest}"
}

build_etcd() { # <dest dir> <version>
  local tmp
  tmp="$(go_build etcd "$1" -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$2" go.etcd.io/etcd/server/v3)"
  # The main package is the module root; go names the binary after it ("server"): call it etcd.
  mv "${tmp}"/bin/* "${tmp}/bin/etcd.new" && mv "${tmp}/bin/etcd.new" "${tmp}/bin/etcd"
  finish_component etcd "${tmp}" "$1"
}

build_kwok() { # <dest dir> <version>
  local dest="$1" version="$2" tmp src stage
  tmp="$(go_build kwok "${dest}" -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${version#v}" \
    sigs.k8s.io/kwok/cmd/kwok)"
  # The stages kwok plays (standalone kwok has no others): taken from the same module version in the
  # module cache. node-initialize: nodes become Ready (keeping the capacity we set); heartbeat with
  # lease: kwok renews node leases itself; pod-ready: scheduled pods Running and Ready; pod-complete:
  # pods owned by a Job succeed; pod-delete: deleted pods go away (there is no kubelet to do it).
  src="$(cd "${WRAPPERS}/kwok" && GOTOOLCHAIN="${GOTOOLCHAIN:-local}" "${GO_BIN}" list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    [[ -f "${src}/kustomize/stage/${stage}.yaml" ]] || { rm -rf "${tmp}"; die "kwok stage ${stage} missing in ${src}"; }
    printf -- '---\n'
    cat "${src}/kustomize/stage/${stage}.yaml"
  done >"${tmp}/stages.yaml"
  finish_component kwok "${tmp}" "${dest}"
}

build_lws() { # <dest dir> <version>
  local dest="$1" version="$2" tmp src
  # Version stamp as LWS's Makefile (LD_FLAGS); the main package is sigs.k8s.io/lws/cmd.
  tmp="$(go_build lws "${dest}" -ldflags "-s -w -X sigs.k8s.io/lws/pkg/version.GitVersion=${version}" \
    sigs.k8s.io/lws/cmd)"
  mv "${tmp}/bin/cmd" "${tmp}/bin/lws-controller"
  # What LWS's release manifests are made of, from the same module version in the module cache: the CRD
  # (config/crd/bases, without the conversion-webhook patch: v1 is its only version), the controller's
  # ClusterRole (config/rbac/role.yaml) and the webhook configurations with their objectSelector patches
  # (`kubectl kustomize config/webhook`); hack/cluster/helper.py points those at the loopback controller.
  src="$(cd "${WRAPPERS}/lws" && GOTOOLCHAIN="${GOTOOLCHAIN:-local}" "${GO_BIN}" list -m -f '{{.Dir}}' sigs.k8s.io/lws)"
  install -m 0644 "${src}/config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml" "${tmp}/lws-crd.yaml"
  install -m 0644 "${src}/config/rbac/role.yaml" "${tmp}/lws-role.yaml"
  "${BIN_DIR}/kubectl" kustomize "${src}/config/webhook" >"${tmp}/lws-webhooks.yaml" \
    || { rm -rf "${tmp}"; die "kubectl kustomize ${src}/config/webhook failed"; }
  finish_component lws "${tmp}" "${dest}"
}

# Points $BIN_DIR/<binary> at the cached binaries of the versions this checkout asks for.
link_bin() { # <component dir>
  local f
  mkdir -p "${BIN_DIR}"
  for f in "$1"/bin/*; do
    ln -sfn "${f}" "${BIN_DIR}/$(basename "${f}")"
  done
}

main() {
  local print_bin_dir=false
  case "${1:-}" in
    --print-bin-dir) print_bin_dir=true ;;
    "") ;;
    *) die "usage: $0 [--print-bin-dir]" ;;
  esac

  local -A versions=(
    [kubernetes]="$(module_version "${WRAPPERS}/kubernetes/go.mod" k8s.io/kubernetes)"
    [etcd]="$(module_version "${WRAPPERS}/etcd/go.mod" go.etcd.io/etcd/server/v3)"
    [kwok]="$(module_version "${WRAPPERS}/kwok/go.mod" sigs.k8s.io/kwok)"
    [lws]="$(module_version "${WRAPPERS}/lws/go.mod" sigs.k8s.io/lws)"
  )
  local component dir built=() start=${EPOCHREALTIME}
  # Measured from empty Go caches on 2 cores (docs/local-cluster.md).
  local -A COLD_HINT=([kubernetes]=" (cold: ~9 min)" [etcd]=" (cold: ~30 s)" [kwok]=" (cold: ~2 min)"
    [lws]=" (cold: ~2 min)")
  mkdir -p "${CACHE_DIR}/control-plane"

  # Serialise concurrent builds (e.g. `make cluster-up` while pytest brings the cluster up).
  exec 9>"${CACHE_DIR}/control-plane/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi

  # kubernetes first: lws's build runs its kubectl (kustomize).
  for component in kubernetes etcd kwok lws; do
    [[ -n "${versions[${component}]}" ]] || die "no version of ${component} found in ${WRAPPERS}/${component}/go.mod"
    dir="$(component_dir "${component}" "${versions[${component}]}")"
    if [[ ! -d "${dir}" ]]; then
      GO_BIN="${GO_BIN:-$(find_go)}"
      log "building ${component} ${versions[${component}]} with $("${GO_BIN}" env GOVERSION)${COLD_HINT[${component}]}"
      local t0=${EPOCHREALTIME}
      "build_${component}" "${dir}" "${versions[${component}]}"
      log "built ${component} ${versions[${component}]} in $(elapsed "${t0}") s"
      built+=("${component}")
    fi
    link_bin "${dir}"
  done
  cp -f "$(component_dir kwok "${versions[kwok]}")/stages.yaml" "${BIN_DIR}/kwok-stages.yaml"
  cp -f "$(component_dir lws "${versions[lws]}")"/lws-*.yaml "${BIN_DIR}/"
  printf 'kubernetes=%s\netcd=%s\nkwok=%s\nlws=%s\n' "${versions[kubernetes]}" "${versions[etcd]}" \
    "${versions[kwok]}" "${versions[lws]}" >"${BIN_DIR}/versions"

  if ((${#built[@]})); then
    log "built control plane in $(elapsed "${start}") s (${built[*]}) -> ${BIN_DIR}"
  else
    log "control plane binaries cached (kubernetes ${versions[kubernetes]}, etcd ${versions[etcd]}, kwok ${versions[kwok]}, lws ${versions[lws]}) -> ${BIN_DIR}"
  fi
  if ${print_bin_dir}; then
    echo "${BIN_DIR}"
  fi
}


main "$@"
