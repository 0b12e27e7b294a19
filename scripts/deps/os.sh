#!/usr/bin/env bash
# Tools the OS-layer tests (tests/it/os.rs) and bench/os.sh drive. The tests
# run bootplan inside a throwaway root: an overlayfs over `/` in private
# mount, UTS, IPC and network namespaces, entered with nsenter and chroot, so
# the host's own files, users, packages, hostname and sysctls never change.
# That needs, on the host: unshare/nsenter (util-linux), overlayfs, ip
# (iproute2, to bring up loopback in the new network namespace), python3 (the
# local apt repository's HTTP server), dpkg-deb and apt-ftparchive (building
# and indexing the test packages), gpg (a throwaway signing key), visudo
# (sudo, to validate sudo rules), su (util-linux: the attack tests act as the
# user), gpg-agent, ssh-keygen (openssh-client), systemctl
# (systemd, used offline with --root) and the shadow tools (passwd).
# Nothing is cached: the root is made in milliseconds per test.
# Idempotent: does nothing when everything is present.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
missing=()
command -v unshare >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1 && [ -x /bin/su ] || missing+=(util-linux)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
command -v apt-ftparchive >/dev/null 2>&1 || missing+=(apt-utils)
command -v gpg >/dev/null 2>&1 || missing+=(gpg)
# The throwaway key is made through the agent (only recommended by gpg).
command -v gpg-agent >/dev/null 2>&1 || missing+=(gpg-agent)
command -v visudo >/dev/null 2>&1 || [ -x /usr/sbin/visudo ] || missing+=(sudo)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v systemctl >/dev/null 2>&1 || missing+=(systemd)
command -v useradd >/dev/null 2>&1 && command -v chpasswd >/dev/null 2>&1 || missing+=(passwd)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || { echo "os: the kernel has no overlayfs" >&2; exit 1; }
echo "os: unshare $(command -v unshare), nsenter $(command -v nsenter), ip $(command -v ip)," \
  "apt-ftparchive $(command -v apt-ftparchive), visudo $(command -v visudo || echo /usr/sbin/visudo)," \
  "ssh-keygen $(command -v ssh-keygen), systemctl $(command -v systemctl); overlayfs available"
