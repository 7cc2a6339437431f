#!/usr/bin/env bash
# Container images to flists, in one run: two real Debian images built with umoci (minbase, and
# minbase plus a few packages as a second layer on top of it), pushed by skopeo to Debian's
# docker-registry on 127.0.0.1, then `flist pack oci:REF` of each into one store. Prints the
# conversion time, bytes uploaded for each, the dedup ratio, and the flist's size against the
# image's compressed size (what `docker pull` would download).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
FLIST=${FLIST:-$top/target/release/flist}
base_tar=$("$top/tests/lib/rootfs.sh" bookworm-minbase)
plus_tar=$("$top/tests/lib/rootfs.sh" bookworm-minbase-plus curl,openssh-server,nginx-light)
work=$(mktemp -d /var/tmp/flint-bench-oci.XXXXXX)
registry_pid=
trap '[ -n "$registry_pid" ] && kill $registry_pid; rm -rf "$work"' EXIT
layout=$work/layout

# Image 1: minbase in one layer; image 2: the same base, plus the packages' changes as a layer.
umoci init --layout "$layout"
umoci new --image "$layout:base"
umoci unpack --image "$layout:base" "$work/b" >/dev/null
tar --xattrs --xattrs-include='*' --numeric-owner -xpf "$base_tar" -C "$work/b/rootfs"
umoci repack --image "$layout:base" "$work/b"
rm -rf "$work/b"
umoci unpack --image "$layout:base" "$work/p" >/dev/null
# The plus tree replaces the base one; umoci's repack records the difference (whiteouts included).
find "$work/p/rootfs" -mindepth 1 -delete
tar --xattrs --xattrs-include='*' --numeric-owner -xpf "$plus_tar" -C "$work/p/rootfs"
umoci repack --image "$layout:plus" "$work/p"
rm -rf "$work/p"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/registry"
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
  "$work/registry" "$port" > "$work/registry.yml"
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
registry_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
for tag in base plus; do
  skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$tag" "docker://127.0.0.1:$port/bench/debian:$tag"
done

compressed() { # the image's layers as pushed (gzip), in bytes
  python3 - "$layout" "$1" <<'PY'
import json, sys
layout, tag = sys.argv[1], sys.argv[2]
index = json.load(open(f"{layout}/index.json"))
d = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
manifest = json.load(open(f"{layout}/blobs/sha256/{d['digest'][7:]}"))
print(sum(l["size"] for l in manifest["layers"]))
PY
}

printf '| image | convert (s) | chunks new/all | uploaded | image (gzip layers) | flist file |\n|---|---|---|---|---|---|\n'
for tag in base plus; do
  t0=$(date +%s.%N)
  out=$("$FLIST" pack "oci:127.0.0.1:$port/bench/debian:$tag" --insecure -o "$work/$tag.fl" \
        --store "dir://$work/store" --json)
  t1=$(date +%s.%N)
  python3 - "$out" "$t0" "$t1" "$tag" "$(compressed $tag)" "$(stat -c %s "$work/$tag.fl")" <<'PY'
import json, sys
r, t0, t1, tag, gz, fl = json.loads(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
print(f"| {tag} | {t1 - t0:.1f} | {r['new_chunks']}/{r['chunks']} | {r['new_stored_bytes'] / 1e6:.1f} MB "
      f"of {r['stored_bytes'] / 1e6:.1f} MB (dedup {r['stored_bytes'] / max(r['new_stored_bytes'], 1):.1f}x) "
      f"| {gz / 1e6:.1f} MB | {fl / 1e3:.0f} kB ({100 * fl / gz:.2f}% of the image) |")
PY
done
store=$(find "$work/store" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
registry=$(find "$work/registry" -path '*blobs*' -name data -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "flist store after both images: $(( store / 1000000 )) MB (zstd chunks); the registry's unique blobs: $(( registry / 1000000 )) MB (gzip layers)"
