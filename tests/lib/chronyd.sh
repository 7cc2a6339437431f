#!/usr/bin/env bash
# Fetches (once) Debian's chrony and unpacks it without installing it (an installed chrony would
# start a daemon that steers the host's clock), then prints the path of chronyd.
set -euo pipefail
cache=${FLINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flint}
dir=$cache/chrony
if [ -x "$dir/root/usr/sbin/chronyd" ]; then echo "$dir/root/usr/sbin/chronyd"; exit 0; fi
mkdir -p "$dir"
cd "$dir"
ls chrony_*.deb >/dev/null 2>&1 || apt-get download -qq chrony 2>/dev/null
rm -rf root.tmp
dpkg -x chrony_*.deb root.tmp
rm -rf root && mv root.tmp root
echo "$dir/root/usr/sbin/chronyd"
