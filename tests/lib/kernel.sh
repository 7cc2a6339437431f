#!/usr/bin/env bash
# Fetches (once) Debian's packaged 6.12 kernel, unpacks it and runs depmod on its modules, then
# prints the directory: BOOT/vmlinuz-*, lib/modules/VERSION/{modules.dep,modules.alias,...}.
# The .deb has no modules.dep (depmod writes it at install time), hence depmod -b here.
set -euo pipefail
cache=${FLINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flint}
dir=$cache/kernel
if [ -f "$dir/ready" ]; then echo "$dir/root"; exit 0; fi
mkdir -p "$dir"
cd "$dir"
pkg=$(apt-cache depends linux-image-6.12-amd64 | awk '/Depends: linux-image-6/{print $2; exit}')
[ -n "$pkg" ] || { echo "no linux-image-6.12 package in the apt sources" >&2; exit 1; }
ls "$pkg"_*.deb >/dev/null 2>&1 || apt-get download -qq "$pkg" 2>/dev/null
rm -rf root.tmp
dpkg -x "$pkg"_*.deb root.tmp
depmod -b root.tmp "$(ls root.tmp/lib/modules)"
rm -rf root && mv root.tmp root
touch ready
echo "$dir/root"
