# Sourced by the runners: free_display prints an X display number no X server uses. `xvfb-run -a` looks only
# at the lock files in the chroot's own /tmp, but X servers also listen on abstract sockets, which every
# chroot shares with the host: two chroots' Xvfb would both take :99. /proc/net/unix lists them all.
free_display() {
  local n=99
  while grep -q "@/tmp/.X11-unix/X$n\$" /proc/net/unix || [[ -e /tmp/.X$n-lock ]]; do n=$((n + 1)); done
  echo "$n"
}
