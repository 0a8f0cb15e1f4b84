# msock: build, test and install.
#
#   make / make build    release build: target/release/msock and target/release/libmsock.so
#   make test            build, then every test (namespace tests need root), clippy, rustfmt
#   make demo            an unmodified UDP program under msock talking to a kernel peer (root)
#   make bench           benchmarks; they write BENCHMARKS.md
#   make fuzz            each cargo-fuzz target for FUZZ_SECONDS (needs nightly + cargo-fuzz)
#   make cdemo           the C demo programs (cdemo/*.c) into cdemo/bin/
#   make install         PREFIX=/usr/local (DESTDIR for staging): bin/msock, lib/libmsock.so,
#                        include/msock.h, lib/pkgconfig/msock.pc (install-files: the same
#                        without building first)
#   make uninstall       removes what install installed (same PREFIX and DESTDIR)
#   make clean
#
# CARGO_TARGET_DIR is honoured everywhere.

CARGO        ?= cargo
CC           ?= cc
PREFIX       ?= /usr/local
DESTDIR      ?=
FUZZ_SECONDS ?= 30

TARGET_DIR   := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
RELEASE      := $(TARGET_DIR)/release
MSOCK_BIN    := $(RELEASE)/msock
MSOCK_LIB    := $(RELEASE)/libmsock.so
HEADER       := include/msock.h
PC_IN        := include/msock.pc.in
# Name, description and version of the pkg-config file: libmsock's own package
# (preload/Cargo.toml, [package] section).
PC_VERSION   := $(shell awk -F'"' '/^\[/{p=($$0=="[package]")} p&&/^version *=/{print $$2; exit}' preload/Cargo.toml)
PC_DESC      := $(shell awk -F'"' '/^\[/{p=($$0=="[package]")} p&&/^description *=/{print $$2; exit}' preload/Cargo.toml)

CDEMO_SRC    := $(wildcard cdemo/*.c)
CDEMO_BIN    := $(patsubst cdemo/%.c,cdemo/bin/%,$(CDEMO_SRC))
CFLAGS       ?= -O2 -g -std=c11 -Wall -Wextra -Werror

.PHONY: all build cdemo test fmt-check clippy demo bench fuzz install install-files uninstall clean

all: build

# One cargo invocation builds the binary, the cdylib and (via preload/build.rs) the header.
build:
	$(CARGO) build --release --workspace
	@test -x $(MSOCK_BIN) || { echo "make: $(MSOCK_BIN) missing after build" >&2; exit 1; }
	@test -f $(MSOCK_LIB) || { echo "make: $(MSOCK_LIB) missing after build" >&2; exit 1; }
	@$(MAKE) --no-print-directory cdemo

# The C demo programs (plain socket programs, run unmodified under `msock run`).
cdemo: $(CDEMO_BIN)

cdemo/bin/%: cdemo/%.c $(wildcard cdemo/*.h) $(wildcard $(HEADER))
	@mkdir -p cdemo/bin
	$(CC) $(CFLAGS) -Iinclude -o $@ $<

# Formatting first (cheap), then the tests against the release artifacts, then clippy.
# The fuzz-corpus smoke test (tests/wire_corpus.rs) is an ordinary cargo test.
test: fmt-check build
	$(CARGO) test --release --workspace
	$(MAKE) --no-print-directory clippy

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --all-targets --workspace -- -D warnings

demo: build
	bash scripts/demo.sh

bench: build
	$(CARGO) bench --bench checksum --bench channel --bench udp_rtt --bench tcp_engine --bench tcp_throughput --bench control --bench preload_tcp

# Optional: skipped with a message when nightly or cargo-fuzz is missing. New inputs go to
# fuzz/corpus-work (ignored); the checked-in seeds in fuzz/corpus are only read.
fuzz:
	@if ! $(CARGO) +nightly fuzz --version >/dev/null 2>&1; then \
		echo "make fuzz: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz); skipped"; \
		exit 0; \
	fi; \
	targets=$$($(CARGO) +nightly fuzz list) || exit 1; \
	for t in $$targets; do \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		mkdir -p fuzz/corpus-work/$$t; \
		$(CARGO) +nightly fuzz run $$t fuzz/corpus-work/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

install: build
	@$(MAKE) --no-print-directory install-files

# The files alone, from artifacts already built (tests stage this into a DESTDIR). msock.pc
# names PREFIX, not DESTDIR: the staged tree is meant to end up at PREFIX.
install-files:
	@test -x $(MSOCK_BIN) || { echo "make: $(MSOCK_BIN) missing: run make build" >&2; exit 1; }
	@test -f $(MSOCK_LIB) || { echo "make: $(MSOCK_LIB) missing: run make build" >&2; exit 1; }
	@test -n "$(PC_VERSION)" || { echo "make: no version in preload/Cargo.toml" >&2; exit 1; }
	install -D -m 0755 $(MSOCK_BIN) $(DESTDIR)$(PREFIX)/bin/msock
	install -D -m 0755 $(MSOCK_LIB) $(DESTDIR)$(PREFIX)/lib/libmsock.so
	install -D -m 0644 $(HEADER) $(DESTDIR)$(PREFIX)/include/msock.h
	@mkdir -p $(DESTDIR)$(PREFIX)/lib/pkgconfig
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(PC_VERSION)|g' \
		-e 's|@DESCRIPTION@|$(PC_DESC)|g' $(PC_IN) > $(DESTDIR)$(PREFIX)/lib/pkgconfig/msock.pc
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/pkgconfig/msock.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/msock $(DESTDIR)$(PREFIX)/lib/libmsock.so \
		$(DESTDIR)$(PREFIX)/include/msock.h $(DESTDIR)$(PREFIX)/lib/pkgconfig/msock.pc

clean:
	$(CARGO) clean
	rm -rf cdemo/bin
