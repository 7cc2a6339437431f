#!/usr/bin/env python3
"""Zero-OS rfs `.fl` flists against flint's own, side by side in one run, on the demo's Debian
root: the same tree made into an rfs `.fl` (flist's writer of the format, as `rfs pack` makes it:
512 KiB blocks, Snappy, AES-256-GCM) and into a flint flist; both mounted by `flist mount` with
their blocks served by `netboot serve` on 127.0.0.1 and an empty cache. Prints mount time, cold
and warm whole-tree reads, metadata bytes per entry, chunk counts, and `flist convert` of the
`.fl` into a fresh store and into the store already holding the flint flist's chunks (dedup).
Run as root (FUSE)."""
import json, os, shutil, tempfile, time
from pathlib import Path

from common import FLIST, TOP, Mount, demo_root, serve, sh, timed

PORT = 18490 + os.getpid() % 500


def inspect(fl):
    return json.loads(sh(FLIST, "inspect", "--json", fl).stdout)


def main():
    work = Path(tempfile.mkdtemp(prefix="flint-rfs-", dir="/dev/shm"))
    tree, srv = work / "root", work / "srv"
    demo_root(tree)
    sh("cargo", "build", "-q", "--release", "--example", "rfs_pack", cwd=TOP)
    t0 = time.perf_counter()
    sh(TOP / "target/release/examples/rfs_pack", tree, srv / "root-rfs.fl", f"dir://{srv}/rfs-store")
    rfs_pack_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sh(FLIST, "pack", tree, "-o", srv / "root.fl", "--store", f"dir://{srv}/store")
    flint_pack_s = time.perf_counter() - t0
    server = serve(srv, PORT)
    rows = {}
    try:
        for kind, fl, store in [("rfs .fl", srv / "root-rfs.fl", "rfs-store"), ("flint", srv / "root.fl", "store")]:
            url, cache = f"http://127.0.0.1:{PORT}/{store}", work / f"cache-{store}"
            mnt = work / f"mnt-{store}"
            m = Mount(fl, mnt, cache, "--store", url)
            mount_s = m.took
            Path("/proc/sys/vm/drop_caches").write_text("3")
            cold = timed(f"cd {mnt} && tar cf - . | wc -c")
            m.close()
            # A new mount over the cache the cold read filled: what a restarted service reads.
            m = Mount(fl, mnt, cache, "--store", url)
            Path("/proc/sys/vm/drop_caches").write_text("3")
            warm = timed(f"cd {mnt} && tar cf - . | wc -c")
            m.close()
            info = inspect(fl)
            rows[kind] = dict(mount=mount_s, cold=cold, warm=warm, meta=fl.stat().st_size, entries=info["entries"],
                              chunks=info["chunks"], distinct=info["distinct_chunks"])
        t0 = time.perf_counter()
        fresh = json.loads(sh(FLIST, "convert", srv / "root-rfs.fl", "-o", work / "conv.fl", "--from-store",
                              f"http://127.0.0.1:{PORT}/rfs-store", "--store", f"dir://{work}/conv-store",
                              "--json").stdout)
        convert_s = time.perf_counter() - t0
        dedup = json.loads(sh(FLIST, "convert", srv / "root-rfs.fl", "-o", work / "conv2.fl", "--from-store",
                              f"http://127.0.0.1:{PORT}/rfs-store", "--store", f"dir://{srv}/store", "--json").stdout)
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)
    data = rows["flint"]
    print(f"tree: {data['entries']} entries; rfs .fl made in {rfs_pack_s:.1f} s, flint flist in {flint_pack_s:.1f} s")
    print(f"{'':10} {'mount s':>8} {'cold s':>7} {'warm s':>7} {'meta B':>9} {'B/entry':>8} {'chunks':>7} {'distinct':>8}")
    for kind, r in rows.items():
        print(f"{kind:10} {r['mount']:8.3f} {r['cold']:7.2f} {r['warm']:7.2f} {r['meta']:9} "
              f"{r['meta'] / r['entries']:8.1f} {r['chunks']:7} {r['distinct']:8}")
    a, b = rows["rfs .fl"], rows["flint"]
    print(f"rfs/flint: mount {a['mount'] / b['mount']:.2f}x, cold {a['cold'] / b['cold']:.2f}x, "
          f"warm {a['warm'] / b['warm']:.2f}x, metadata {a['meta'] / b['meta']:.2f}x")
    print(f"convert (.fl from HTTP, fresh store): {convert_s:.1f} s, {fresh['chunks']} chunks "
          f"({fresh['metadata_bytes'] / fresh['entries']:.1f} B/entry), {fresh['files_checked']} files checked")
    print(f"convert into the flint flist's store: {dedup['new_chunks']} of {dedup['chunks']} chunks new")
    init = TOP / "target/x86_64-unknown-linux-musl/pid1/init"
    if init.exists():
        with tempfile.NamedTemporaryFile() as stripped:
            sh("strip", "-o", stripped.name, init)
            print(f"PID 1 (static, stripped): {os.path.getsize(stripped.name)} bytes")


main()
