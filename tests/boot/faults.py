#!/usr/bin/env python3
"""Fault injection under qemu: PID 1 built with the `faults` feature (`make static-faults`),
booted with `FLINT_FAULTS` on the kernel command line (the kernel hands it to init as its
environment) so that the supervisor, the node loop and the signal thread each panic once. The
node must say so on its console and to the boot server, restart each loop, bring its service up,
apply its manifest, and still power off cleanly when asked."""
import os, sys, tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "qemu"))
from flintnode import CMDLINE, FAULTS_INIT, Checks, Site, Vm  # noqa: E402

FAULTS = "init.supervisor=panic-once,init.node=panic-once,init.signals=panic-once"


def main():
    work = tempfile.mkdtemp(prefix="flint-faults-")
    site = Site(work).build_initramfs(init=FAULTS_INIT)
    site.cmdline_template = CMDLINE + f" FLINT_FAULTS={FAULTS}"
    flists = site.mini_flists()
    site.publish({"version": 1, "flists": flists, "services": [
        {"name": "hello", "root": "sys0", "exec": ["/bin/sleep", "1000"], "test": ["/bin/cat", "/hello.txt"]},
        {"name": "down", "oneshot": True, "after": ["hello"], "exec": ["/init", "ctl", "poweroff"]}]})
    c = Checks("fault injection under qemu")
    site.serve()
    try:
        with c.step("a node whose loops each panic once"), Vm(site, "direct", log="console-faults.log") as vm:
            vm.wait_for("reboot: Power down", 300)
            for loop in ["supervisor", "node", "signals"]:
                panic = vm.first(f"fault injected at init.{loop}")
                c.expect(panic and "PANIC in thread" in panic[1] and vm.first(f"the {loop} loop panicked; it runs again"),
                         f"the {loop} loop's panic is on the console, and the loop runs again: {panic}")
            c.expect(vm.first("manifest version 1 applied"), "the manifest is applied")
            c.expect(vm.first("service hello: ready"), "the service comes up (its check reads its flist)")
            c.expect(vm.first("every service is stopped"), "init ctl poweroff stops every service")
            c.expect(vm.wait_exit(60) == 0, "qemu exits cleanly")
            node = site.node()
            panics = [s for s in node.get("stages", []) if s["stage"] == "panic"]
            c.expect(len(panics) >= 1, f"the boot server heard of the panics: {[p.get('detail') for p in panics]}")
    finally:
        site.stop()
    c.finish(work)


main()
