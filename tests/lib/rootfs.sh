#!/usr/bin/env bash
# Builds (once) and caches a debootstrap'd Debian root as a tarball, then prints its path.
# Usage: rootfs.sh NAME [EXTRA_PACKAGES_COMMA_SEPARATED]
# The tarball keeps xattrs, numeric owners and device nodes, so it is a faithful real root.
set -euo pipefail
name=$1
include=${2:-}
cache=${FLINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flint}
tarball=$cache/$name.tar
if [ -s "$tarball" ]; then echo "$tarball"; exit 0; fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/.debootstrap.XXXXXX")
trap 'rm -rf "$work"' EXIT
args=(--variant=minbase)
[ -n "$include" ] && args+=(--include="$include")
debootstrap "${args[@]}" bookworm "$work/root" http://deb.debian.org/debian >"$work/log" 2>&1 \
  || { tail -20 "$work/log" >&2; exit 1; }
# Drop apt's downloaded .debs: they are a cache, not part of the system.
rm -f "$work"/root/var/cache/apt/archives/*.deb
tar --xattrs --xattrs-include='*' --numeric-owner -C "$work/root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$tarball"
