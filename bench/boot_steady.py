#!/usr/bin/env python3
"""How steady boots under qemu are: N consecutive boots of the demo node (direct), each until
`service web: ready`, then killed. Prints how many got there, the median and worst time to it,
how many guest kernels died before PID 1 (booted again once by the harness) and after it.

  bench/boot_steady.py [--boots 30] [--tcg tcg,thread=single] [--parallel 1] [--until TEXT]

--tcg tcg,thread=multi measures the settings the harness used before (multi-threaded TCG);
--until "starting as PID 1" with --parallel 2 boots only to PID 1, two at a time, which is how
an early-boot crash is hunted quickly. Ignored under KVM."""
import argparse, os, statistics, sys, tempfile, threading, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "qemu"))
import flintnode  # noqa: E402
from flintnode import Demo, GuestDied, NodeFailure, Vm  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boots", type=int, default=30)
    p.add_argument("--tcg", default=flintnode.TCG, help="qemu -accel value under TCG")
    p.add_argument("--parallel", type=int, default=1, help="boots at once")
    p.add_argument("--until", default="service web: ready", help="console text that ends a boot")
    p.add_argument("--timeout", type=int, default=600)
    args = p.parse_args()
    flintnode.TCG = args.tcg

    work = tempfile.mkdtemp(prefix="flint-steady-")
    demo = Demo(work)
    demo.publish()
    demo.site.serve()
    print(f"accel {flintnode.tcg_accel(demo.site.accel)}, {args.boots} boots until {args.until!r}, "
          f"{args.parallel} at a time; logs in {work}", flush=True)
    results, lock, next_boot = [], threading.Lock(), iter(range(args.boots))

    def worker():
        while True:
            with lock:
                i = next(next_boot, None)
            if i is None:
                return
            results.append(one_boot(demo, i, args))

    try:
        threads = [threading.Thread(target=worker) for _ in range(args.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        demo.site.stop()
    reached = sorted(r["seconds"] for r in results if r["ok"])
    print(f"\n{len(reached)} of {len(results)} boots reached {args.until!r}")
    if reached:
        print(f"time to it: median {statistics.median(reached):.2f} s, best {reached[0]:.2f} s, "
              f"worst {reached[-1]:.2f} s")
    print(f"guest kernels that died before PID 1 (booted again): {sum(r['pre_pid1'] for r in results)}")
    for r in results:
        if not r["ok"]:
            print(f"boot {r['boot']}: {r['why']}")
    sys.exit(0 if len(reached) == len(results) else 1)


def one_boot(demo, i, args):
    log = f"console-{i:03d}.log"
    result = {"boot": i, "ok": False, "seconds": None, "pre_pid1": 0, "why": ""}
    with Vm(demo.site, "direct", log=log) as vm:
        try:
            t, _ = vm.wait_for(args.until, args.timeout)
            result.update(ok=True, seconds=t)
        except GuestDied as e:
            result["why"] = "died: " + str(e).splitlines()[0]
        except NodeFailure as e:
            result["why"] = "timeout: " + str(e).splitlines()[0]
        result["pre_pid1"] = vm.pre_pid1_crashes
    state = f"{result['seconds']:.2f} s" if result["ok"] else result["why"][:200]
    extra = f" (died before PID 1 {result['pre_pid1']}x, booted again)" if result["pre_pid1"] else ""
    print(f"boot {i:3d}: {state}{extra}", flush=True)
    return result


main()
