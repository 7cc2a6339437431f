#!/usr/bin/env python3
"""Boots a flint node under qemu (TCG unless KVM really works) and times it: qemu start to PID 1,
each boot step init logs, PID 1 to every service ready, and PID 1's memory with 3 flists mounted
and 12 services (9 with readiness checks). Built and served by tests/lib/flintnode.py."""
import os, re, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from flintnode import Node, first  # noqa: E402


def main():
    node = Node(tempfile.mkdtemp(prefix="flint-boot-"), flists=3)
    services = [{"name": f"s{i}", "root": f"sys{i % 3}", "test": ["/bin/cat", "/hello.txt"],
                 "exec": ["/bin/sh", "-c", "exec sleep 100000"]} for i in range(9)]
    services += [
        {"name": "list", "oneshot": True, "after": [f"s{i}" for i in range(9)], "exec": ["/init", "ctl", "list"]},
        {"name": "report", "oneshot": True, "after": ["list"], "root": "sys0",
         "exec": ["/bin/sh", "-c", "cat /proc/1/status > /dev/console; echo ALL-SERVICES-UP > /dev/console"]},
        {"name": "down", "oneshot": True, "after": ["report"], "exec": ["/init", "ctl", "poweroff"]},
    ]
    node.publish({"version": 1, "hostname": "bench", "flists": node.flists, "services": services})
    try:
        lines = node.boot()
    finally:
        node.close()
    status = {m.group(1): int(m.group(2)) for _, l in lines for m in [re.match(r"(VmRSS|VmHWM|Threads):\s+(\d+)", l)] if m}
    print(f"accelerator: {node.accel}; console log: {node.work}/console.log")
    print(f"static init (stripped): {os.path.getsize(node.stripped):,} bytes; "
          f"initramfs: {os.path.getsize(node.initrd):,} bytes")
    pid1, up = first(lines, "starting as PID 1"), first(lines, "ALL-SERVICES-UP")
    if not pid1 or not up:
        print("the node did not come up; see the console log")
        sys.exit(1)
    steps = re.search(r"services: (.*) \(init up", first(lines, "steps before services")[1]).group(1)
    applied, off = first(lines, "manifest version"), first(lines, "reboot: Power down")
    print(f"qemu start -> PID 1:             {pid1[0]:6.2f} s (firmware + kernel)")
    print(f"PID 1 steps:                     {steps}")
    print(f"PID 1 -> manifest applied:       {applied[0] - pid1[0]:6.2f} s (fetch, verify, 3 flists mounted)")
    print(f"PID 1 -> all 9 services ready:   {up[0] - pid1[0]:6.2f} s")
    if off:
        print(f"report -> power down:            {off[0] - up[0]:6.2f} s (ctl poweroff, services stopped, unmounted)")
    print(f"PID 1 memory, 3 flists + 12 services: VmRSS {status.get('VmRSS', 0) / 1024:.1f} MiB, "
          f"peak {status.get('VmHWM', 0) / 1024:.1f} MiB, {status.get('Threads')} threads")


main()
