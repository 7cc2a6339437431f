# flint — see README.md. Every target installs what it needs (idempotently) before using it.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.cargo/bin:$(PATH)

MUSL_TARGET := x86_64-unknown-linux-musl
STATIC_BINS := target/$(MUSL_TARGET)/release/flist target/$(MUSL_TARGET)/pid1/init
QUIET       := $(if $(filter true,$(CI)),-q,)
APT_PACKAGES := musl-tools debootstrap squashfs-tools squashfuse casync zstd xz-utils attr python3 util-linux tar kmod \
  dnsmasq-base iproute2 cpio qemu-system-x86 ipxe-qemu ovmf systemd-boot-efi mtools dosfstools binutils \
  openssl openssh-client fdisk e2fsprogs file busybox-static curl ca-certificates gcc umoci skopeo docker-registry apache2-utils redis-server postgresql
FUZZ_SECONDS ?= 600

.PHONY: help deps build static static-faults test lint test-unit test-rootfs test-boot-steps static-check fuzz bench qemu qemu-pxe qemu-usb usb initramfs test-boot test-boot-direct test-vm vm-deps test-garage test-fleet clean

help:
	@echo "make qemu     build everything and boot the demo node under qemu (see README)"
	@echo "make qemu-pxe the same through PXE (qemu's iPXE ROM, netboot serve)"
	@echo "make usb      build target/flint/usb.img (GPT, EFI system partition, unified kernel image)"
	@echo "make qemu-usb boot that image under OVMF as a USB stick"
	@echo "make initramfs  build target/flint/srv/boot/initrd.zst (same inputs, same bytes)"
	@echo "make test     install test dependencies, build, run the test suite"
	@echo "make bench    run the benchmarks in bench/ side by side with their peers"
	@echo "make fuzz     run every fuzz target for FUZZ_SECONDS (default 600) each"
	@echo "make test-boot  boot nodes under qemu by every path (direct, PXE, USB)"
	@echo "make test-vm  run VMs from flists under the supervisor (qemu + virtiofsd)"
	@echo "make test-garage  flists on a 3-node garage cluster, one node killed mid-read"
	@echo "make test-fleet   13 nodes (12 init run in network namespaces, 1 qemu by PXE), two rollouts"

# Debian packages and Rust pieces, installed only when missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo >/dev/null || { echo "installing Rust (rustup, minimal profile)"; \
	  curl -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal >/dev/null; }
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET) >/dev/null
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy >/dev/null
	@rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src >/dev/null
	@command -v s3s-fs >/dev/null || { echo "installing s3s-fs (S3 server for tests)"; \
	  cargo install --locked $(QUIET) s3s-fs --version 0.14.1 --features binary; }

build:
	cargo build $(QUIET) --release --workspace

# PID 1's std is built with it (rust-src, RUSTC_BOOTSTRAP for the -Z flags): without the
# backtrace symbolizer (panics are still caught and reported, as text), in std's size-optimized
# form, at PID 1's opt-level and LTO: with the packed relocations of .cargo/config.toml, about
# 0.6 MB of PID 1's 4.9 MB. The fault-injection build uses the same std, so what the fault tests
# exercise (unwinding) is what ships.
PID1_STD := RUSTC_BOOTSTRAP=1 CC_x86_64_unknown_linux_musl=musl-gcc cargo build $(QUIET) --target $(MUSL_TARGET) \
  -Zbuild-std=std,panic_unwind -Zbuild-std-features=panic-unwind,optimize_for_size

# The static binaries PID 1 and the initramfs need: musl, no dynamic loader. init on its own
# (one build with flist would give it flist's tools too) and in the size profile it ships in.
static: deps
	$(PID1_STD) --profile pid1 -p init
	CC_x86_64_unknown_linux_musl=musl-gcc cargo build $(QUIET) --release --target $(MUSL_TARGET) -p flist

# PID 1 with fault injection (tests/boot/faults.py), apart from the shipped binary.
static-faults: deps
	$(PID1_STD) --release --target-dir target/faults -p init --features faults

static-check: static
	@for bin in $(STATIC_BINS); do \
	  out=$$(ldd $$bin 2>&1 || true); echo "ldd $$bin: $$out"; \
	  grep -qE "not a dynamic executable|statically linked" <<<"$$out" || exit 1; \
	done

test: deps lint test-unit test-rootfs test-boot-steps static-check test-boot-direct

# Warnings are errors; the panic lints (unwrap, expect, panic, indexing) hold in production code,
# tests may use them (clippy.toml).
lint: deps
	cargo clippy $(QUIET) --workspace --all-targets -- -D warnings

test-unit:
	cargo test $(QUIET) --workspace
	# The fault-injection tier: FUSE handlers and init's loops that panic or stall on request.
	cargo test $(QUIET) -p flist --features faults --test mount
	cargo test $(QUIET) -p init --features faults --test supervise

# Round trip of a real debootstrap'd Debian (built once, cached in ~/.cache/flint).
test-rootfs: deps
	FLINT_ROOTFS_TAR=$$(tests/lib/rootfs.sh bookworm-demo openssh-server,busybox) \
	  cargo test $(QUIET) -p flist --test rootfs -- --ignored --nocapture

# Boot steps against real Debian pieces, fetched once and cached: module resolution on the
# packaged kernel's modules (depmod'ed), SNTP against chronyd.
test-boot-steps: deps
	FLINT_KERNEL_ROOT=$$(tests/lib/kernel.sh) FLINT_CHRONYD=$$(tests/lib/chronyd.sh) \
	  cargo test $(QUIET) -p init --test modules --test time -- --ignored

fuzz: deps
	@command -v cargo-fuzz >/dev/null || cargo install --locked $(QUIET) cargo-fuzz
	for t in flist:decode flist:chunk_open flist:image_layers flist:trace flist:rfs flist:sqlite init:manifest init:boot_inputs; do crate=$${t%%:*}; target=$${t#*:}; \
	  (cd $$crate/fuzz && mkdir -p corpus/$$target seeds/$$target && \
	   RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$target corpus/$$target seeds/$$target -- \
	     -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096) || exit 1; done

bench: deps build static
	bench/run.sh

# The demo node (qemu/run.py): built in target/flint, served by netboot serve on 127.0.0.1.
qemu: deps build static
	python3 qemu/run.py direct
qemu-pxe: deps build static
	python3 qemu/run.py pxe
qemu-usb: deps build static
	python3 qemu/run.py usb
usb: deps build static
	python3 qemu/run.py usb --build-only
initramfs: deps build static
	python3 -c 'import sys; sys.path.insert(0, "qemu"); import flintnode; print(flintnode.Site("target/flint").build_initramfs().initrd)'

# Nodes booted under qemu (TCG unless KVM really works) from a signed manifest: every boot path.
test-boot: deps build static static-faults
	@for t in tests/boot/*.py; do echo "== $$t"; python3 $$t || exit 1; done
# The part of test-boot that make test runs.
test-boot-direct: deps build static static-faults
	@for t in tests/boot/harness.py tests/boot/faults.py tests/boot/cache_disk.py tests/boot/confined.py tests/boot/rollback.py tests/boot/clock.py tests/boot/rfs.py tests/boot/direct.py; do echo "== $$t"; python3 $$t || exit 1; done

# VMs from flists (tests/vm/vm.py): qemu guests whose root is an flist shared by virtiofsd, from
# crates.io (it builds against libseccomp and libcap-ng).
VIRTIOFSD_VERSION := 1.14.0
vm-deps: deps
	@missing=$$(for p in libseccomp-dev libcap-ng-dev xz-utils procps; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	@command -v virtiofsd >/dev/null || { echo "installing virtiofsd $(VIRTIOFSD_VERSION)"; \
	  cargo install --locked $(QUIET) virtiofsd --version $(VIRTIOFSD_VERSION); }

test-vm: vm-deps build
	python3 tests/vm/vm.py

# The scale-out path (tests/garage/garage.py): flists on a 3-node garage cluster, one node killed
# mid-read. garage builds from crates.io (long: about 40 minutes on 2 cores), once.
GARAGE_VERSION := 2.5.0
test-garage: deps build
	@command -v garage >/dev/null || { echo "installing garage $(GARAGE_VERSION) (a long build)"; \
	  cargo install --locked $(QUIET) garage --version $(GARAGE_VERSION); }
	python3 tests/garage/garage.py

# The fleet (tests/fleet/fleet.py): 12 `init run` nodes in network namespaces and a qemu node
# booted by PXE, a failed and a good rollout, the dashboard in Chromium; on one server with
# SQLite, then on two sharing a PostgreSQL database.
test-fleet: deps build static
	@dpkg -s chromium >/dev/null 2>&1 || { echo "installing chromium (the dashboard's browser test)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	python3 tests/fleet/fleet.py
	python3 tests/fleet/fleet.py --postgres

clean:
	cargo clean
