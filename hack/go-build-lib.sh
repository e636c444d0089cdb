# shellcheck shell=bash
# Shell functions shared by the scripts that build Go binaries from the module proxy
# (hack/build-control-plane.sh, hack/build-helm.sh). Source it after defining `log` and `die`.

# The go command: $GO, else go on PATH, else the standard install location.
find_go() {
  if [[ -n "${GO:-}" ]]; then
    echo "${GO}"
  elif command -v go >/dev/null 2>&1; then
    command -v go
  elif [[ -x /usr/local/go/bin/go ]]; then
    echo /usr/local/go/bin/go
  else
    die "Go >= 1.26 is required to build this (https://go.dev/dl/)"
  fi
}

# The version a wrapper go.mod requires of a module (read from the file: no go command needed).
module_version() { # <go.mod> <module path>
  awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) && $0 !~ /=>/ {
      for (i = 1; i <= NF; i++) if ($i ~ /^v[0-9]/) { print $i; exit } }' "$1"
}

elapsed() { # <start EPOCHREALTIME> -> seconds with one decimal
  awk -v s="$1" -v e="${EPOCHREALTIME}" 'BEGIN { printf "%.1f", e - s }'
}

# Move a finished build from <tmp> into <dest> (replacing it), then remove the other cached builds whose
# directories match <glob> (other versions; a running binary keeps its open file alive).
install_build() { # <tmp> <dest> <glob>
  local tmp="$1" dest="$2" glob="$3" old
  rm -rf "${dest}"
  mv "${tmp}" "${dest}"
  # shellcheck disable=SC2086  # the pattern is expanded here, on purpose
  for old in ${glob}; do
    if [[ "${old}" != "${dest}" && "${old}" != *.tmp.* && -d "${old}" ]]; then
      log "removing the cached build ${old}"
      rm -rf "${old}"
    fi
  done
}

# The scripts' only argument: --print-path (print where the result is) or nothing. Sets PRINT_PATH.
# shellcheck disable=SC2034  # PRINT_PATH is read by the sourcing script
parse_print_path() { # "$@" of the script
  PRINT_PATH=false
  case "${1:-}" in
    --print-path) PRINT_PATH=true ;;
    "") ;;
    *) die "usage: $0 [--print-path]" ;;
  esac
}
