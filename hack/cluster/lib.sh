# shellcheck shell=bash
# Shared by hack/cluster-up.sh and hack/cluster-down.sh (sourced; expects STATE_DIR to be set).
# Where a component's pid and log live in the state dir, and whether its process is still ours.

pid_file() { echo "${STATE_DIR}/pids/$1.pid"; }
log_file() { echo "${STATE_DIR}/logs/$1.log"; }

# True when the pid file names a live process running the component's binary. Checking the
# executable guards against a pid reused by an unrelated process (e.g. after a reboot).
component_alive() { # <component>
  local pid exe
  pid="$(cat "$(pid_file "$1")" 2>/dev/null)" || return 1
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/${pid}/exe" 2>/dev/null)" || return 1
  exe="${exe% (deleted)}"
  [[ "$(basename "${exe}")" == "$1" ]]
}
