# Sourced by the OpenTenBase stand-in wrappers (tests only; see README.md).
here=$(dirname "$(readlink -f "$0")")
real=$(cat "$here/.real-bin")
log() { printf '%s %s\n' "$(date +%T.%N)" "$*" >> "$here/standin.log"; }
