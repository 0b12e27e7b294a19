# Sourced by scripts/deps/*.sh. apt_install PKG...: installs from Debian's
# archive; if the install fails (no package lists yet, or stale lists naming
# files the mirror no longer has), refreshes the lists once and tries again.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=600)
  [ "$(id -u)" -eq 0 ] || apt=(sudo "${apt[@]}")
  if ! apt-cache policy "$@" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    "${apt[@]}" update -q
  fi
  "${apt[@]}" install -y -q --no-install-recommends "$@" || {
    "${apt[@]}" update -q
    "${apt[@]}" install -y -q --no-install-recommends "$@"
  }
}
