#!/usr/bin/env bash
# Builds (once) a static mke2fs from Debian's e2fsprogs source with musl, and prints its path.
# The initramfs carries it as /sbin/mkfs.ext4 to format a blank cache disk: Debian's own mkfs.ext4
# is dynamic and brings glibc and five libraries (750 KB compressed); this one is 250 KB.
# The source comes through apt (deb-src of the configured Debian mirror, signed like any package),
# with a private lists directory, so the machine's apt configuration is left alone.
set -euo pipefail
cache=${FLINT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flint}
dir=$cache/mke2fs
if [ -x "$dir/mke2fs" ]; then echo "$dir/mke2fs"; exit 0; fi
mkdir -p "$dir/lists/partial" "$dir/src"
cd "$dir"
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
cat > sources.list <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main
SRC
apt=(-qq -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists="$dir/lists")
apt-get "${apt[@]}" update >/dev/null 2>&1
(cd src && apt-get "${apt[@]}" source --download-only e2fsprogs >/dev/null 2>&1)
rm -rf build && mkdir build
tar xzf src/e2fsprogs_*.orig.tar.gz -C build --strip-components=1
cd build
CC=musl-gcc ./configure --quiet --disable-nls --disable-fuse2fs --disable-fsck --disable-e2initrd-helper \
  --disable-uuidd --disable-debugfs --disable-imager --disable-defrag --disable-tdb --enable-libuuid \
  --enable-libblkid LDFLAGS=-static >/dev/null 2>&1
make -s -j"$(nproc)" libs >/dev/null 2>&1
make -s -C misc mke2fs >/dev/null 2>&1
file misc/mke2fs | grep -q "statically linked" || { echo "mke2fs.sh: misc/mke2fs is not static" >&2; exit 1; }
strip -o "$dir/mke2fs.tmp" misc/mke2fs
mv "$dir/mke2fs.tmp" "$dir/mke2fs"
cd .. && rm -rf build
echo "$dir/mke2fs"
