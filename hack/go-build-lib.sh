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
