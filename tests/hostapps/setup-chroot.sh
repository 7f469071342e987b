#!/usr/bin/env bash
# Build (once) and mount a Debian chroot that holds real GIMP 3 and Krita, so the plug-ins can be tested
# in the real applications on a Debian 12 host, headless. Needs root.
#
#   HOSTAPPS_SUITE       Debian suite (default trixie: GIMP 3.0, Krita 5.2; sid: GIMP 3.2, Krita 5.3)
#   HOSTAPPS_KRITA_FROM  another suite to take Krita from, e.g. experimental (Krita 6, with PyQt6 instead
#                        of PyQt5); used with sid
#   HOSTAPPS_ROOT        where the chroot lives (a cache, outside the repo; default
#                        /var/tmp/hostapps/<suite>[-krita-<from>], so /var/tmp/hostapps/trixie by default)
#   HOSTAPPS_MIRROR      Debian mirror (default http://deb.debian.org/debian)
#
# Idempotent and cheap when nothing changed: the stamp file holds a hash of the package list, and a
# matching stamp means only the mounts are (re)done. Concurrent callers are serialized with flock.
#
# Exit status: 0 ready; 77 cannot build because we are not root; 78 cannot build because the mirror
# cannot be reached (no network); anything else is a real failure. On 77/78 the last line on stderr
# says why (the tests report it as their skip reason).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=${HOSTAPPS_SUITE:-trixie}
KRITA_FROM=${HOSTAPPS_KRITA_FROM:-}
source "$HERE/chroot-root.sh"                # sets ROOT
MIRROR=${HOSTAPPS_MIRROR:-http://deb.debian.org/debian}
STAMP=$ROOT/.hostapps-ready
PYQT=python3-pyqt5
[[ -z $KRITA_FROM ]] || PYQT=python3-pyqt6   # Krita 6 (experimental) is a Qt 6 application

# What both host apps need. The installs run with recommends off, so everything the tests rely on
# is listed explicitly. Changing this list changes the stamp: the next run installs the difference.
PKGS=(
  gimp                    # 3.0.x (trixie), 3.2.x (sid); Python plug-in support (python-eval) is built in
  gir1.2-gimp-3.0         # Gimp / GimpUi typelibs
  gir1.2-gegl-0.4
  gir1.2-babl-0.1
  python3-gi
  krita                   # 5.2.x (trixie), 5.3.x (sid), with pykrita and kritarunner
  krita-data
  "$PYQT"                 # only a Recommends of krita, yet pykrita plugins need it
  xvfb xauth              # Krita insists on xcb; GIMP's GUI tests use it too
  xdotool                 # presses Ctrl+Z in GIMP's GUI: GIMP 3 has no PDB procedure for undo
  fonts-dejavu-core
  python3-zmq python3-msgpack python3-numpy
  ca-certificates
)

log() { printf '[hostapps %s] %s\n' "$(date +%T)" "$*" >&2; }
cannot() { log "cannot build the chroot: $2"; exit "$1"; }

package_list() { printf '%s\n' "${PKGS[@]}" | sed 's/#.*//' | tr -s ' \n' '\n' | sed '/^$/d'; }
# Must stay the same function of the list as in earlier builds, so an existing chroot counts as ready:
# the list alone for the default trixie chroot (as before suites could be chosen), the suites and the
# list otherwise (as ../shared/hostapps/setup-chroot.sh computes it).
want_sig() {
  if [[ $SUITE == trixie && -z $KRITA_FROM ]]; then
    package_list | sort | sha256sum | cut -c1-16
  else
    { printf '%s\n' "$SUITE" "$KRITA_FROM"; package_list; } | sed '/^$/d' | sort | sha256sum | cut -c1-16
  fi
}

mount_all() {
  mkdir -p "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/dev/pts" "$ROOT/dev/shm" "$ROOT/tmp"
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  if ! mountpoint -q "$ROOT/sys"; then
    mount --bind /sys "$ROOT/sys"
    mount -o remount,bind,ro "$ROOT/sys" 2>/dev/null || true
  fi
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
  mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts"
  mountpoint -q "$ROOT/dev/shm" || mount -t tmpfs -o mode=1777 shm "$ROOT/dev/shm"
  chmod 1777 "$ROOT/tmp"
  cp -f /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
}

in_chroot() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}

mirror_reachable() {
  local host=${MIRROR#*://}; host=${host%%/*}
  local port=80; [[ $MIRROR == https://* ]] && port=443
  timeout 20 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

[[ $(id -u) -eq 0 ]] || cannot 77 "not root (chroot, mount and debootstrap need root)"

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9

if [[ -f $STAMP && "$(cat "$STAMP")" == "$(want_sig)" ]]; then
  mount_all
  log "ready (cached) at $ROOT"
  exit 0
fi

mirror_reachable || cannot 78 "no network: $MIRROR cannot be reached"

if ! command -v debootstrap >/dev/null; then
  apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
fi

if [[ ! -x $ROOT/usr/bin/apt-get || ! -f $ROOT/.debootstrap-done ]]; then
  # A half-built tree may have host /dev bind-mounted into it: unmount before deleting.
  [[ -d $ROOT ]] && bash "$HERE/teardown-chroot.sh" --purge
  log "debootstrap $SUITE into $ROOT"
  mkdir -p "$ROOT"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOT" "$MIRROR"
  touch "$ROOT/.debootstrap-done"
fi

mount_all
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"   # no services start in the chroot
chmod +x "$ROOT/usr/sbin/policy-rc.d"
cat > "$ROOT/etc/dpkg/dpkg.cfg.d/01-hostapps-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF
cat > "$ROOT/etc/apt/apt.conf.d/01-hostapps" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
EOF
if [[ $SUITE != trixie ]]; then
  # sid's and experimental's Release files are valid for a week only; a lagging mirror would be refused
  echo 'Acquire::Check-Valid-Until "false";' >> "$ROOT/etc/apt/apt.conf.d/01-hostapps"
fi
if [[ -n $KRITA_FROM ]]; then
  echo "deb $MIRROR $KRITA_FROM main" > "$ROOT/etc/apt/sources.list.d/krita-from.list"
fi

log "apt-get update in the chroot"
in_chroot apt-get update -qq
mapfile -t WANT < <(package_list)
log "apt-get install ${#WANT[@]} packages"
APTLOG=$ROOT.apt-install.log
if ! in_chroot apt-get install -y -q "${WANT[@]}" >"$APTLOG" 2>&1; then
  tail -40 "$APTLOG" >&2
  exit 1
fi
if [[ -n $KRITA_FROM ]]; then
  log "krita from $KRITA_FROM"
  if ! in_chroot apt-get install -y -q -t "$KRITA_FROM" krita krita-data >>"$APTLOG" 2>&1; then
    tail -40 "$APTLOG" >&2
    exit 1
  fi
fi
in_chroot apt-get clean
want_sig > "$STAMP"
log "ready at $ROOT ($(du -sh --one-file-system "$ROOT" | cut -f1))"
