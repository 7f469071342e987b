# Sourced by the hostapps scripts: the chroot they work on. HOSTAPPS_ROOT when set, else the folder
# setup-chroot.sh builds for HOSTAPPS_SUITE (default trixie) and HOSTAPPS_KRITA_FROM:
# /var/tmp/hostapps/trixie, /var/tmp/hostapps/sid, /var/tmp/hostapps/sid-krita-experimental, ...
ROOT=${HOSTAPPS_ROOT:-/var/tmp/hostapps/${HOSTAPPS_SUITE:-trixie}${HOSTAPPS_KRITA_FROM:+-krita-$HOSTAPPS_KRITA_FROM}}
