# nvmf-tpc: the two commands a new user needs are `make run` and `make test`.

CARGO ?= cargo
BIN := target/release/nvmf-tpc

.PHONY: all build run test unit interop lint fmt clean fuzz fuzz-smoke fuzz-tools soak

all: build

build:
	$(CARGO) build --release

## Serve the embedded default: a sparse 1 GiB file under ./nvmf-tpc-data on 127.0.0.1:4420.
run: build
	$(BIN) serve

## Every test: unit, integration (real target over loopback) and the Linux
## kernel host under QEMU (installs qemu, Debian's kernel, nvme-cli, fio).
test: lint unit fuzz-smoke interop

unit:
	$(CARGO) test --release

interop: build
	tests/interop/matrix.py $(BIN)

## Longer runs of the tests that sample at random: many more power cuts
## (tests/power_cut.rs; `make test` takes 10).
SOAK_CUTS ?= 60
soak:
	POWERCUT_CUTS=$(SOAK_CUTS) $(CARGO) test --release --test power_cut -- --nocapture

## Coverage-guided fuzzing (fuzz/): the PDU header check, the wire decoders, the receive
## protocol without I/O (rx), and
## the queue state machine (byte streams against a live connection). cargo-fuzz needs
## nightly flags; RUSTC_BOOTSTRAP lets the one stable toolchain here accept them.
FUZZ_TARGETS := pdu_layout decoders queue rx
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_SECONDS ?= 600
FUZZ := RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O --sanitizer none

fuzz-tools:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

# rx reads the queue target's seeds too (same input format).
FUZZ_CORPUS = fuzz/corpus/$$t $$([ $$t = rx ] && echo fuzz/seeds/queue)

fuzz-smoke: fuzz-tools
	for t in $(FUZZ_TARGETS); do mkdir -p fuzz/corpus/$$t; $(FUZZ) $$t $(FUZZ_CORPUS) -- -max_total_time=$(FUZZ_SMOKE_SECONDS) || exit 1; done

fuzz: fuzz-tools
	for t in $(FUZZ_TARGETS); do mkdir -p fuzz/corpus/$$t; $(FUZZ) $$t $(FUZZ_CORPUS) -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## Latency and throughput matrix on this machine (PERF_TIME=3 for a quick run); see perf/README.md.
.PHONY: perf
perf:
	perf/latency.sh
