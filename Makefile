# Sluice developer workflow. Every target is safe to re-run.
#   make deps    install the Debian packages the build, tests, demo and benchmarks need (root)
#   make build   configure + build everything into build/
#   make test    deps + build + every test (unit, BPF kernel tests, end-to-end on the lab)
#   make demo    deps + build + a one-node lab showing capture, then teardown
#   make bench   deps + build + benchmarks (no mesh vs Sluice), figures printed side by side
#   make asan    build + test with AddressSanitizer/UBSan in build-asan/
#   make fuzz    deps + every libFuzzer target (tests/fuzz) for FUZZ_SECONDS (default 300) each
#   make soak    deps + build + 10,000 connections across two lab nodes for SOAK_SECONDS (default 3600)
#                (SLUICE_LAB_PREFIX=soak: in its own lab instance, beside other labs)
#   make format  apply .clang-format (make test fails on unformatted C++: format-check)
BUILD ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)

.PHONY: deps build test demo bench asan fuzz soak clean format format-check

deps:
	@bash tools/deps.sh

build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

test: deps build
	@bash tools/run-tests.sh $(BUILD)

demo: deps build
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) bash tools/demo.sh

bench: deps build
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) bash bench/run.sh
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) bash bench/mtls.sh
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) bash bench/cpu_cross.sh
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) bash bench/snapshot.sh
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) bash bench/policy.sh
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) bash bench/http.sh
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) bash bench/policy_mesh.sh
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) bash bench/metrics.sh

asan: deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSLUICE_SANITIZE=ON >/dev/null
	@cmake --build build-asan -j$(JOBS)
	@bash tools/run-tests.sh build-asan

fuzz: deps
	@bash tools/fuzz.sh

SOAK_SECONDS ?= 3600
soak: deps build
	@SLUICE_BUILD_DIR=$(abspath $(BUILD)) SOAK_SECONDS=$(SOAK_SECONDS) /usr/bin/python3 tests/e2e/soak.py

format:
	@git ls-files --cached --others --exclude-standard '*.cc' '*.h' | grep -v '^bpf/' | xargs clang-format -i

format-check:
	@bash tools/format-check.sh

clean:
	rm -rf $(BUILD) build-asan build-fuzz
