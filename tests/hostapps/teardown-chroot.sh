#!/usr/bin/env bash
# Stop whatever still runs inside the hostapps chroot and undo setup-chroot.sh's mounts;
# with --purge, also delete the chroot. Always use this instead of a bare `rm -rf`: the chroot's
# /dev and /sys are bind mounts of the host's own.
set -euo pipefail
source "$(dirname "$0")/chroot-root.sh"      # sets ROOT

for proc in /proc/[0-9]*; do            # leftovers (Xvfb, gimp, krita) whose root is the chroot
  if [[ "$(readlink "$proc/root" 2>/dev/null)" == "$ROOT" ]]; then
    kill -9 "${proc#/proc/}" 2>/dev/null || true
  fi
done
for m in dev/shm dev/pts dev sys proc; do
  if mountpoint -q "$ROOT/$m" 2>/dev/null; then
    umount -R "$ROOT/$m" 2>/dev/null || umount -l "$ROOT/$m"
  fi
done
if findmnt -rn -o TARGET | grep -q "^$ROOT/"; then
  echo "still mounted under $ROOT:" >&2
  findmnt -rn -o TARGET | grep "^$ROOT/" >&2
  exit 1
fi
if [[ "${1:-}" == "--purge" ]]; then
  rm -rf "$ROOT"
fi
