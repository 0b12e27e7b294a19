#!/usr/bin/env bash
# Runs a script as root of a throwaway copy of this machine: an overlay over
# / whose changes live in a tmpfs, with its own /proc, /run, /tmp, loopback
# up and the host's /dev. Call it inside fresh namespaces, so nothing of the
# run reaches the host:
#   unshare --mount --uts --ipc --net --propagation private \
#     bash bench/throwaway-root.sh WORK SCRIPT [FILE...] -- [ARG...]
# SCRIPT and each FILE are copied into the root's /tmp; SCRIPT runs there
# with ARGs under an empty environment. WORK is a scratch directory.
set -euo pipefail
work=$1 script=$2
shift 2
files=("$script")
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do files+=("$1"); shift; done
[ "$#" -gt 0 ] && shift
m=$(mktemp -d "$work/mnt.XXXX")
mount -t tmpfs -o mode=0755 tmpfs "$m"
mkdir "$m/upper" "$m/work" "$m/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$m/upper,workdir=$m/work" "$m/root"
mount -t proc proc "$m/root/proc"
mount -t tmpfs -o mode=0755 tmpfs "$m/root/run"
mount -t tmpfs -o mode=1777 tmpfs "$m/root/tmp"
mount --rbind /dev "$m/root/dev"
ip link set lo up
cp "${files[@]}" "$m/root/tmp/"
exec chroot "$m/root" env -i bash "/tmp/$(basename "$script")" "$@"
