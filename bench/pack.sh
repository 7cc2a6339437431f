#!/usr/bin/env bash
# Packing a real Debian root, side by side: flist pack vs mksquashfs vs casync make, on the same
# tree in tmpfs, in one run. Then chunk statistics, a chunk-size sweep, and dedup across two
# related roots (minbase, and minbase plus a few packages) in one store.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
FLIST=${FLIST:-$top/target/release/flist}
base_tar=$("$top/tests/lib/rootfs.sh" bookworm-minbase)
plus_tar=$("$top/tests/lib/rootfs.sh" bookworm-minbase-plus curl,openssh-server,nginx-light)
work=$(mktemp -d /dev/shm/flint-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
extract() { mkdir -p "$2"; tar --xattrs --xattrs-include='*' --numeric-owner -xpf "$1" -C "$2"; }
extract "$base_tar" "$work/base"
extract "$plus_tar" "$work/plus"
# Warm the page cache so every tool reads from memory.
tar -cf - -C "$work" base plus >/dev/null

now() { date +%s.%N; }
# Bytes of the objects in a store (files only: fan-out directories are not data).
objbytes() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
data_mb=$(du -sb --apparent-size "$work/base" | awk '{printf "%.1f", $1/1e6}')

timed() { # name, command...; prints seconds (best of 2)
  local best=
  for _ in 1 2; do
    rm -rf "$work/out"; mkdir -p "$work/out"
    local t0; t0=$(now); "${@:2}" >/dev/null 2>&1; local t1; t1=$(now)
    local s; s=$(secs "$t0" "$t1")
    best=$(python3 -c "print(min(float('$s'), float('${best:-1e9}')))")
  done
  echo "$best"
}

t_flist=$(timed flist "$FLIST" pack "$work/base" -o "$work/out/base.fl" --store "dir://$work/out/store")
t_squash=$(timed mksquashfs mksquashfs "$work/base" "$work/out/base.sqfs" -comp zstd -Xcompression-level 3 -noappend -quiet)
t_squash_def=$(timed mksquashfs-default mksquashfs "$work/base" "$work/out/base.sqfs" -noappend -quiet)
t_casync=$(timed casync casync make --store="$work/out/castr" "$work/out/base.caidx" "$work/base")

# Keep one flist of the base for the statistics below.
"$FLIST" pack "$work/base" -o "$work/base.fl" --store "dir://$work/store-base" --json > "$work/base.json"
"$FLIST" inspect --json "$work/base.fl" > "$work/base-inspect.json"

echo
echo "Pack throughput, bookworm minbase ($data_mb MB of file data, tmpfs, best of 2, $(nproc) cores)"
python3 - "$data_mb" "$t_flist" "$t_squash" "$t_squash_def" "$t_casync" <<'PY'
import sys
mb, fl, sq, sqd, ca = map(float, sys.argv[1:])
rows = [("flist pack (zstd 3, CDC 256K)", fl), ("mksquashfs -comp zstd level 3", sq),
        ("mksquashfs (defaults: gzip)", sqd), ("casync make (defaults)", ca)]
print(f"  {'tool':34} {'seconds':>8} {'MB/s':>8} {'flist speed vs it':>18}")
for name, s in rows:
    print(f"  {name:34} {s:8.2f} {mb/s:8.1f} {s/fl:17.2f}x")
PY

python3 - "$work/base.json" "$work/base-inspect.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1])); i = json.load(open(sys.argv[2]))
print()
print("Metadata and chunks (bookworm minbase)")
print(f"  entries {p['entries']}, metadata {p['metadata_bytes']} bytes = {p['metadata_bytes']/p['entries']:.1f} bytes per entry (target <= 40)")
print(f"  chunks {i['chunks']} ({i['distinct_chunks']} distinct), mean {i['mean_chunk_bytes']/1024:.0f} KiB plain; "
      f"stored {p['stored_bytes']/1e6:.1f} MB for {p['data_bytes']/1e6:.1f} MB of data")
PY

echo
echo "Chunk size sweep: dedup of minbase + minbase-plus in one store vs separately"
printf "  %-8s %8s %10s %12s %12s %10s %8s\n" avg chunks "mean KiB" "base MB" "plus MB" "one store" "saved"
for avg in 128K 256K 512K 1M; do
  d="$work/sweep-$avg"; mkdir -p "$d"
  "$FLIST" pack "$work/base" -o "$d/b.fl" --store "dir://$d/alone-b" --chunk-size $avg --json > "$d/b.json"
  "$FLIST" pack "$work/plus" -o "$d/p.fl" --store "dir://$d/alone-p" --chunk-size $avg --json > "$d/p.json"
  "$FLIST" pack "$work/base" -o "$d/b2.fl" --store "dir://$d/shared" --chunk-size $avg --json > /dev/null
  "$FLIST" pack "$work/plus" -o "$d/p2.fl" --store "dir://$d/shared" --chunk-size $avg --json > /dev/null
  python3 - "$avg" "$d/b.json" "$(objbytes "$d/alone-b")" "$(objbytes "$d/alone-p")" "$(objbytes "$d/shared")" <<'PY'
import json, sys
avg = sys.argv[1]; b = json.load(open(sys.argv[2])); sb, sp, both = map(int, sys.argv[3:])
print(f"  {avg:8} {b['chunks']:8} {b['data_bytes']/b['chunks']/1024:10.0f} {sb/1e6:12.1f} "
      f"{sp/1e6:12.1f} {both/1e6:10.1f} {100*(1-both/(sb+sp)):7.1f}%")
PY
  rm -rf "$d"
done

echo
echo "Same dedup test with casync (its default 64K chunks)"
casync make --store="$work/ca-shared" "$work/b.caidx" "$work/base" >/dev/null 2>&1
cb=$(objbytes "$work/ca-shared")
casync make --store="$work/ca-shared" "$work/p.caidx" "$work/plus" >/dev/null 2>&1
cboth=$(objbytes "$work/ca-shared")
casync make --store="$work/ca-plus" "$work/p-alone.caidx" "$work/plus" >/dev/null 2>&1
cp=$(objbytes "$work/ca-plus")
python3 -c "b,p,both=$cb,$cp,$cboth; print(f'  casync: base {b/1e6:.1f} MB, plus {p/1e6:.1f} MB, both {both/1e6:.1f} MB, saved {100*(1-both/(b+p)):.1f}%')"
