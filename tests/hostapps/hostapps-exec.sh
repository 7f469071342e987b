#!/usr/bin/env bash
# Run one command inside the hostapps chroot in a clean environment (env -i) with a throw-away
# HOME and XDG directories, so the host apps never see state left by an earlier run.
#
#   hostapps-exec.sh [-H HOME_IN_CHROOT] -- [VAR=value ...] command args...
#
# HOME_IN_CHROOT is a path as seen inside the chroot (default: a fresh /tmp/hostapps-home.XXXXXX).
# VAR=value words before the command are set for it. Host variables named in HOSTAPPS_PASSENV
# (space-separated, e.g. "BGMASK_ENDPOINT BGMASK_TOKEN") are passed through unchanged. The network
# namespace is the host's: tcp://127.0.0.1:PORT reaches a host daemon as it is.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$(dirname "$0")/chroot-root.sh"      # sets ROOT

HOMEDIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -H) HOMEDIR=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [-H HOME] -- [VAR=value ...] command args..." >&2; exit 2; }
[[ -f $ROOT/.hostapps-ready ]] || { echo "hostapps chroot not ready: run setup-chroot.sh" >&2; exit 2; }
mountpoint -q "$ROOT/proc" || bash "$HERE/setup-chroot.sh"

if [[ -z $HOMEDIR ]]; then
  HOMEDIR=$(mktemp -d "$ROOT/tmp/hostapps-home.XXXXXX")
  HOMEDIR=${HOMEDIR#"$ROOT"}
fi
mkdir -p "$ROOT$HOMEDIR/.config" "$ROOT$HOMEDIR/.local/share" "$ROOT$HOMEDIR/.cache" "$ROOT$HOMEDIR/run"
chmod 700 "$ROOT$HOMEDIR/run"                         # Qt warns about a looser XDG_RUNTIME_DIR

PASS=()
for name in ${HOSTAPPS_PASSENV:-}; do
  if [[ -n ${!name+x} ]]; then PASS+=("$name=${!name}"); fi
done

exec chroot "$ROOT" /usr/bin/env -i \
  PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8 NO_AT_BRIDGE=1 \
  HOME="$HOMEDIR" XDG_CONFIG_HOME="$HOMEDIR/.config" XDG_DATA_HOME="$HOMEDIR/.local/share" \
  XDG_CACHE_HOME="$HOMEDIR/.cache" XDG_RUNTIME_DIR="$HOMEDIR/run" GEGL_SWAP="$HOMEDIR/.cache/gegl-swap" \
  ${PASS[@]+"${PASS[@]}"} "$@"
