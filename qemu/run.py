#!/usr/bin/env python3
"""Boots the demo node under qemu (`make qemu`, `make qemu-pxe`, `make qemu-usb`).

Builds (once, in target/flint) the netboot root: the Debian kernel, the initramfs with this
checkout's key, the signed demo manifest and its Debian system flist; starts `netboot serve` on
127.0.0.1; boots qemu with the serial console in this terminal (ctrl-a x quits). The node's web
server and sshd are forwarded to 127.0.0.1. Without a terminal (CI, scripts) it boots, checks
that the web server answers from the host, and stops the node."""
import argparse, os, subprocess, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flintnode import ROOT, Demo, Vm, qemu_args, wait_http  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="direct", choices=["direct", "pxe", "usb"],
                   help="direct: qemu loads kernel and initramfs; pxe: qemu's iPXE ROM fetches them from the "
                        "boot server; usb: OVMF boots the USB image (make usb)")
    p.add_argument("--work", default=os.path.join(ROOT, "target/flint"), help="build and state directory")
    p.add_argument("--port", type=int, default=int(os.environ.get("NETBOOT_PORT", 8400)), help="boot server port")
    p.add_argument("--http-port", type=int, default=int(os.environ.get("QEMU_HTTP_PORT", 8080)),
                   help="host port forwarded to the node's web server")
    p.add_argument("--ssh-port", type=int, default=int(os.environ.get("QEMU_SSH_PORT", 2222)),
                   help="host port forwarded to the node's sshd")
    p.add_argument("--build-only", action="store_true", help="build the netboot root (and USB image) and stop")
    args = p.parse_args()

    os.makedirs(args.work, exist_ok=True)
    demo = Demo(args.work, args.port)
    site = demo.site
    demo.publish()
    usb = os.path.join(args.work, "usb.img")
    if args.mode == "usb" or args.build_only:
        site.usb_image(usb)
    if args.build_only:
        print(f"netboot root: {site.srv}\nUSB image: {usb}")
        return
    site.serve()
    hostfwd = [(args.http_port, 80), (args.ssh_port, 22)]
    print(f"boot server: http://127.0.0.1:{args.port}/ (status page; log in {args.work}/netboot.log)\n"
          f"fleet dashboard: {site.admin_url}\n"
          f"node, once up: curl http://127.0.0.1:{args.http_port}/ ; "
          f"ssh -i {demo.ssh_key} -p {args.ssh_port} root@127.0.0.1\n"
          f"accelerator: {site.accel}; quit qemu with ctrl-a x\n", flush=True)
    try:
        if sys.stdin.isatty():
            subprocess.call(qemu_args(site, args.mode, usb=usb, hostfwd=hostfwd))
            return
        with Vm(site, args.mode, usb=usb, hostfwd=hostfwd) as vm:
            vm.wait_for("service web: ready", timeout=600)
            page = wait_http(f"http://127.0.0.1:{args.http_port}/", timeout=60)
            print(f"the node answered on 127.0.0.1:{args.http_port}: {page!r}" if page else "the node did not answer")
            sys.exit(0 if page else 1)
    finally:
        site.stop()


main()
