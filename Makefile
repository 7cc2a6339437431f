# flint — see README.md. Every target installs what it needs (idempotently) before using it.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.cargo/bin:$(PATH)

MUSL_TARGET := x86_64-unknown-linux-musl
STATIC_BINS := target/$(MUSL_TARGET)/release/flist target/$(MUSL_TARGET)/release/init
QUIET       := $(if $(filter true,$(CI)),-q,)
APT_PACKAGES := musl-tools debootstrap squashfs-tools squashfuse casync zstd attr python3 util-linux tar kmod dnsmasq-base iproute2 cpio qemu-system-x86 openssl fdisk e2fsprogs
FUZZ_SECONDS ?= 600

.PHONY: help deps build static test test-unit test-rootfs test-boot-steps static-check fuzz bench qemu qemu-pxe usb initramfs test-boot test-vm clean

help:
	@echo "make qemu     build everything and boot a node under qemu (see README)"
	@echo "make test     install test dependencies, build, run the test suite"
	@echo "make bench    run the benchmarks in bench/ side by side with their peers"
	@echo "make fuzz     run every fuzz target for FUZZ_SECONDS (default 600) each"

# Debian packages and Rust pieces, installed only when missing.
deps:
	@command -v cargo >/dev/null || { echo "cargo is missing: install Rust with rustup (https://rustup.rs) first"; exit 1; }
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@rustup target list --installed | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET) >/dev/null
	@command -v s3s-fs >/dev/null || { echo "installing s3s-fs (S3 server for tests)"; \
	  cargo install --locked $(QUIET) s3s-fs --version 0.14.1 --features binary; }

build:
	cargo build $(QUIET) --release --workspace

# The static binaries PID 1 and the initramfs need: musl, no dynamic loader.
static: deps
	CC_x86_64_unknown_linux_musl=musl-gcc cargo build $(QUIET) --release --target $(MUSL_TARGET) -p flist -p init

static-check: static
	@for bin in $(STATIC_BINS); do \
	  out=$$(ldd $$bin 2>&1 || true); echo "ldd $$bin: $$out"; \
	  grep -qE "not a dynamic executable|statically linked" <<<"$$out" || exit 1; \
	done

test: deps test-unit test-rootfs test-boot-steps static-check test-boot

test-unit:
	cargo test $(QUIET) --workspace

# Round trip of a real debootstrap'd Debian (built once, cached in ~/.cache/flint).
test-rootfs: deps
	FLINT_ROOTFS_TAR=$$(tests/lib/rootfs.sh bookworm-minbase) \
	  cargo test $(QUIET) -p flist --test rootfs -- --ignored --nocapture

# Boot steps against real Debian pieces, fetched once and cached: module resolution on the
# packaged kernel's modules (depmod'ed), SNTP against chronyd.
test-boot-steps: deps
	FLINT_KERNEL_ROOT=$$(tests/lib/kernel.sh) FLINT_CHRONYD=$$(tests/lib/chronyd.sh) \
	  cargo test $(QUIET) -p init --test modules --test time -- --ignored

fuzz: deps
	@command -v cargo-fuzz >/dev/null || cargo install --locked $(QUIET) cargo-fuzz
	for t in flist:decode flist:chunk_open init:manifest init:boot_inputs; do crate=$${t%%:*}; target=$${t#*:}; \
	  (cd $$crate/fuzz && mkdir -p corpus/$$target seeds/$$target && \
	   RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$target corpus/$$target seeds/$$target -- \
	     -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096) || exit 1; done

bench: deps build static
	bench/run.sh

qemu: deps build
	@echo "make qemu: booting a node is not implemented yet (issue 5); everything else is built."
# Nodes booted under qemu (TCG unless KVM really works) from the static init and a signed manifest.
test-boot: deps build static
	@for t in tests/boot/*.py; do echo "== $$t"; python3 $$t || exit 1; done

qemu-pxe usb initramfs test-vm:
	@echo "make $@: not yet (boot issues 4, 5 and 7)."

clean:
	cargo clean
