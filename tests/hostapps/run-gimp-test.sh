#!/usr/bin/env bash
# Run an in-GIMP test script against a plug-in, in real GIMP 3 (3.0, 3.2, ...) inside the hostapps chroot (host side,
# root).
#
#   run-gimp-test.sh PLUGIN_DIR BATCH_PY OUT_DIR [DATA_FILE ...]
#
# PLUGIN_DIR  the GIMP 3 plug-in folder under test (checked to exist; `bgmask install` installs the repo's)
# BATCH_PY    Python executed by python-fu-eval inside GIMP. It must write the JSON file named by
#             $HOSTAPPS_RESULT, with "ok": true on success; other files it writes beside it come back too.
# OUT_DIR     host folder that receives result.json, gimp.log and those files
# DATA_FILE   copied into the chroot; BATCH_PY finds them in the folder named by $HOSTAPPS_DATA
#
# Exit status: 0 iff result.json says "ok": true; 77/78 when the chroot cannot be built (see
# setup-chroot.sh).
#
# Environment:
#   HOSTAPPS_SUITE, HOSTAPPS_KRITA_FROM, HOSTAPPS_ROOT   which chroot (see setup-chroot.sh; default trixie)
#   HOSTAPPS_PASSENV        host variables passed into GIMP (and so to the plug-in), e.g.
#                           "BGMASK_ENDPOINT BGMASK_TOKEN"
#   HOSTAPPS_GIMP_GUI=1     run the GUI (gimp under Xvfb) instead of gimp-console; the batch
#                           script can then open displays and press keys with xdotool ($DISPLAY is set)
#   HOSTAPPS_HIDE_PYZMQ=1   make `import zmq` and `import msgpack` fail in GIMP's Python, as in a GIMP
#                           without them: stub packages first on PYTHONPATH raise ImportError, after
#                           noting the importing program in OUT_DIR/hidden-imports.log
#   HOSTAPPS_GIMP_TIMEOUT   seconds before GIMP is killed (default 300)
#   HOSTAPPS_NO_TEMPLATE=1  start from an empty profile (GIMP then queries every plug-in: ~6 s more)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$(dirname "$0")/chroot-root.sh"      # sets ROOT
[[ $# -ge 3 ]] || { echo "usage: $0 PLUGIN_DIR BATCH_PY OUT_DIR [DATA_FILE ...]" >&2; exit 2; }
PLUGIN_DIR=$(cd "$1" && pwd)
BATCH_PY=$2
OUT_DIR=$3
shift 3
TEMPLATE=$ROOT/var/cache/hostapps/gimp-home     # a profile in which GIMP has queried its own plug-ins
CONSOLE_ARGS=(--no-interface --no-data --no-fonts --no-splash)
GUI_ARGS=(--no-splash --no-fonts)

# ---- install step ----------------------------------------------------------------------------------
# Puts the plug-in into the profile whose HOME is $1 (host path) the way a user does:
# `bgmask install --gimp --no-autostart` (issue 6), with HOME, the XDG dirs and the bgmask config dir inside
# the throw-away home; it installs the repository's plugins/ tree. Its output goes to $2.
install_plugin() {
  local home=$1
  HOME=$home XDG_DATA_HOME=$home/.local/share XDG_CONFIG_HOME=$home/.config BGMASK_CONFIG_DIR=$home/bgmask-config \
    PYTHONPATH="$REPO/server${PYTHONPATH:+:$PYTHONPATH}" \
    "${HOSTAPPS_PYTHON:-python3}" -m bgmask install --gimp --no-autostart > "$2" 2>&1 || {
      echo "bgmask install --gimp failed:" >&2; cat "$2" >&2; exit 1; }
}
# -----------------------------------------------------------------------------------------------------

bash "$HERE/setup-chroot.sh"

mkdir -p "$(dirname "$TEMPLATE")"
exec 8>"$TEMPLATE.lock"
flock 8                                             # one template builder at a time
version=$(chroot "$ROOT" dpkg-query -W -f '${Version}' gimp)
if [[ -z ${HOSTAPPS_NO_TEMPLATE:-} && "$(cat "$TEMPLATE/.hostapps-version" 2>/dev/null)" != "$version" ]]; then
  rm -rf "$TEMPLATE"
  mkdir -p "$TEMPLATE"
  timeout -k 10 300 "$HERE/hostapps-exec.sh" -H "${TEMPLATE#"$ROOT"}" -- \
    gimp-console "${CONSOLE_ARGS[@]}" --batch-interpreter python-fu-eval -b 'pass' --quit \
    >/dev/null 2>&1 || true
  rm -rf "$TEMPLATE/run" "$TEMPLATE/.cache/gegl-swap"
  echo "$version" > "$TEMPLATE/.hostapps-version"
fi
flock -u 8

W=$(mktemp -d "$ROOT/tmp/hostapps-gimp.XXXXXX")
WI=${W#"$ROOT"}                                     # the same folder, seen from inside the chroot
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/home" "$W/out" "$W/data"
if [[ -z ${HOSTAPPS_NO_TEMPLATE:-} && -d $TEMPLATE ]]; then cp -a "$TEMPLATE/." "$W/home/"; fi
install_plugin "$W/home" "$W/out/install.log"
cp "$BATCH_PY" "$W/batch.py"
for f in "$@"; do cp "$f" "$W/data/"; done

EXTRA=(HOSTAPPS_RESULT="$WI/out/result.json" HOSTAPPS_DATA="$WI/data")
if [[ -n ${HOSTAPPS_HIDE_PYZMQ:-} ]]; then
  # Each stub notes which program tried to import it (OUT_DIR/hidden-imports.log), then fails.
  for mod in zmq msgpack; do
    mkdir -p "$W/hide/$mod"
    cat > "$W/hide/$mod/__init__.py" <<STUB
import os, sys
with open("$WI/out/hidden-imports.log", "a") as log:
    log.write(os.path.basename(sys.argv[0]) + " $mod\n")
raise ImportError("$mod is hidden by run-gimp-test.sh (HOSTAPPS_HIDE_PYZMQ)")
STUB
  done
  EXTRA+=(PYTHONPATH="$WI/hide")
fi
# runpy runs the script as __main__ under its own file name, so tracebacks point into it.
BATCH=(--batch-interpreter python-fu-eval -b "import runpy; runpy.run_path('$WI/batch.py', run_name='__main__')" --quit)
if [[ -n ${HOSTAPPS_GIMP_GUI:-} ]]; then
  source "$HERE/free-display.sh"
  CMD=(xvfb-run -a -n "$(free_display)" -s "-screen 0 1280x1024x24 -nolisten tcp" gimp "${GUI_ARGS[@]}" "${BATCH[@]}")
else
  CMD=(gimp-console "${CONSOLE_ARGS[@]}" "${BATCH[@]}")
fi

start=$(date +%s.%N)
set +e
timeout -k 10 "${HOSTAPPS_GIMP_TIMEOUT:-300}" "$HERE/hostapps-exec.sh" -H "$WI/home" -- "${EXTRA[@]}" "${CMD[@]}" \
  > "$W/out/gimp.log" 2>&1
rc=$?
set -e
end=$(date +%s.%N)
mkdir -p "$OUT_DIR"
cp -r "$W/out/." "$OUT_DIR/"
awk -v rc="$rc" -v a="$start" -v b="$end" 'BEGIN { printf "gimp exit %s after %.1f s\n", rc, b - a }'
if [[ ! -f $OUT_DIR/result.json ]]; then
  echo "no result.json; the end of gimp.log:"
  tail -30 "$OUT_DIR/gimp.log"
  exit 1
fi
python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("ok") else 1)' "$OUT_DIR/result.json"
