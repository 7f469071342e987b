#!/usr/bin/env bash
# Run an in-Krita test script against the bgmask Krita plugin, in real Krita (5.2, 5.3, 6) under Xvfb inside the
# hostapps chroot (host side, root). The plugin is installed into a fresh Krita profile by
# `bgmask install --krita --no-autostart`, from this checkout.
#
#   run-krita-test.sh TEST_PY OUT_DIR [DATA_FILE ...]
#
# TEST_PY     Python run inside Krita by the bgmask_testrunner plugin (tests/hostapps/krita_testrunner)
#             once the main window exists; see that plugin for what the script gets. It must write the
#             JSON file named by $HOSTAPPS_RESULT with "ok": true on success; other files it writes beside
#             it come back too.
# OUT_DIR     host folder that receives result.json, krita.log, install.log and those files
# DATA_FILE   copied into the chroot; TEST_PY finds them in the folder named by $HOSTAPPS_DATA
#
# Exit status: 0 iff result.json says "ok": true; 77/78 when the chroot cannot be built (see
# setup-chroot.sh).
#
# Environment:
#   HOSTAPPS_SUITE, HOSTAPPS_KRITA_FROM, HOSTAPPS_ROOT   which chroot (see setup-chroot.sh; default trixie)
#   HOSTAPPS_PASSENV        host variables passed into Krita (and so to the plugin), e.g.
#                           "BGMASK_ENDPOINT BGMASK_TOKEN"
#   HOSTAPPS_HIDE_PYZMQ=1   make `import zmq` and `import msgpack` fail in Krita's Python (stub packages
#                           that raise ImportError, first on PYTHONPATH), as in Krita on Windows/macOS
#   HOSTAPPS_KRITA_TIMEOUT  seconds before Krita is killed (default 600)
#   HOSTAPPS_NO_TEMPLATE=1  start from an empty profile (Krita then builds its resource database: ~12 s)
#   HOSTAPPS_PYTHON         the host Python that runs the installer (default python3)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$(dirname "$0")/chroot-root.sh"      # sets ROOT
[[ $# -ge 2 ]] || { echo "usage: $0 TEST_PY OUT_DIR [DATA_FILE ...]" >&2; exit 2; }
TEST_PY=$1
OUT_DIR=$2
shift 2
RUNNER=$HERE/krita_testrunner                       # bgmask_testrunner.desktop + bgmask_testrunner/
TEMPLATE=$ROOT/var/cache/hostapps/krita-home-bgmask # a profile in which Krita built its resource database
source "$HERE/free-display.sh"
# xvfb-run with a display no X server (in any chroot) uses now; called right before each launch
xvfb() { XVFB=(xvfb-run -a -n "$(free_display)" -s "-screen 0 1280x1024x24 -nolisten tcp"); }

# Enable the pykrita plugin $2 in the kritarc of the profile whose HOME is $1 (host path): set
# enable_$2=true in the [python] group, keeping everything else in the file.
kritarc_enable() {
  local rc=$1/.config/kritarc key="enable_$2"
  mkdir -p "$1/.config"
  touch "$rc"
  awk -v key="$key" '
    /^\[/ { if (inpy && !done) { print key "=true"; done = 1 }
            inpy = ($0 == "[python]"); print; next }
    inpy && index($0, key "=") == 1 { next }
    { print }
    END { if (!done) { if (!inpy) print "[python]"; print key "=true" } }' "$rc" > "$rc.tmp"
  mv "$rc.tmp" "$rc"
}

# ---- install step ----------------------------------------------------------------------------------
# Puts the plugin into the profile whose HOME is $1 (host path) and enables it in kritarc, the way a
# user does: `bgmask install --krita --no-autostart` (issue 6) with HOME, the XDG dirs and the bgmask
# config dir (config.json, install manifest) all inside the throw-away home. Its output goes to $2.
install_plugin() {
  local home=$1
  HOME=$home XDG_DATA_HOME=$home/.local/share XDG_CONFIG_HOME=$home/.config BGMASK_CONFIG_DIR=$home/bgmask-config \
    PYTHONPATH="$REPO/server${PYTHONPATH:+:$PYTHONPATH}" \
    "${HOSTAPPS_PYTHON:-python3}" -m bgmask install --krita --no-autostart > "$2" 2>&1 || {
      echo "bgmask install --krita failed:" >&2; cat "$2" >&2; exit 1; }
}
# -----------------------------------------------------------------------------------------------------

# The test harness plugin, enabled beside the plugin under test.
install_runner() {
  local pykrita=$1/.local/share/krita/pykrita
  mkdir -p "$pykrita"
  cp -r "$RUNNER/bgmask_testrunner" "$RUNNER/bgmask_testrunner.desktop" "$pykrita/"
  rm -rf "$pykrita/bgmask_testrunner/__pycache__"
  kritarc_enable "$1" bgmask_testrunner
}

bash "$HERE/setup-chroot.sh"

mkdir -p "$(dirname "$TEMPLATE")"
exec 8>"$TEMPLATE.lock"
flock 8                                             # one template builder at a time
version=$(chroot "$ROOT" dpkg-query -W -f '${Version}' krita)
if [[ -z ${HOSTAPPS_NO_TEMPLATE:-} && "$(cat "$TEMPLATE/.hostapps-version" 2>/dev/null)" != "$version" ]]; then
  rm -rf "$TEMPLATE"
  mkdir -p "$TEMPLATE"
  install_runner "$TEMPLATE"                        # quits Krita once its window is up
  echo 'def main(): yield 0' > "$TEMPLATE/noop.py"
  xvfb
  timeout -k 10 300 "$HERE/hostapps-exec.sh" -H "${TEMPLATE#"$ROOT"}" -- \
    BGMASK_KRITA_TEST="${TEMPLATE#"$ROOT"}/noop.py" HOSTAPPS_RESULT=/dev/null "${XVFB[@]}" krita --nosplash \
    >/dev/null 2>&1 || true
  rm -rf "$TEMPLATE/run" "$TEMPLATE/noop.py" "$TEMPLATE/.local/share/krita/pykrita"
  sed -i '/^enable_bgmask_testrunner=/d' "$TEMPLATE/.config/kritarc"
  echo "$version" > "$TEMPLATE/.hostapps-version"
fi
flock -u 8

W=$(mktemp -d "$ROOT/tmp/hostapps-krita.XXXXXX")
WI=${W#"$ROOT"}                                     # the same folder, seen from inside the chroot
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/home" "$W/out" "$W/data"
if [[ -z ${HOSTAPPS_NO_TEMPLATE:-} && -d $TEMPLATE ]]; then cp -a "$TEMPLATE/." "$W/home/"; fi
install_plugin "$W/home" "$W/out/install.log"
install_runner "$W/home"
cp "$TEST_PY" "$W/test.py"
for f in "$@"; do cp "$f" "$W/data/"; done

EXTRA=(BGMASK_KRITA_TEST="$WI/test.py" HOSTAPPS_RESULT="$WI/out/result.json" HOSTAPPS_DATA="$WI/data")
if [[ -n ${HOSTAPPS_HIDE_PYZMQ:-} ]]; then
  for mod in zmq msgpack; do
    mkdir -p "$W/hide/$mod"
    echo "raise ImportError('$mod is hidden by run-krita-test.sh (HOSTAPPS_HIDE_PYZMQ)')" > "$W/hide/$mod/__init__.py"
  done
  EXTRA+=(PYTHONPATH="$WI/hide")
fi

xvfb
start=$(date +%s.%N)
set +e
timeout -k 10 "${HOSTAPPS_KRITA_TIMEOUT:-600}" "$HERE/hostapps-exec.sh" -H "$WI/home" -- "${EXTRA[@]}" \
  "${XVFB[@]}" krita --nosplash > "$W/out/krita.log" 2>&1
rc=$?
set -e
end=$(date +%s.%N)
mkdir -p "$OUT_DIR"
cp -r "$W/out/." "$OUT_DIR/"
awk -v rc="$rc" -v a="$start" -v b="$end" 'BEGIN { printf "krita exit %s after %.1f s\n", rc, b - a }'
if [[ ! -f $OUT_DIR/result.json ]]; then
  echo "no result.json; the end of krita.log:"
  tail -30 "$OUT_DIR/krita.log"
  exit 1
fi
python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("ok") else 1)' "$OUT_DIR/result.json"
