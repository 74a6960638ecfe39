#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up (OpenBLAS, the SmolLM2 model), then every
# test in a release build (numeric tests are far too slow in debug builds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL="$(bash scripts/setup.sh | tail -n1)"
export QLORA_SMOLLM2_GGUF="$MODEL"
swift build -c release --build-tests -Xswiftc -enable-testing
if [ "$#" -gt 0 ]; then
    swift test -c release -Xswiftc -enable-testing --skip-build "$@"
    exit
fi
# Bit-identical resume holds for one training per process (OpenBLAS's thread count is global and
# its results depend on it), so the checkpoint tests run in a process of their own.
swift test -c release -Xswiftc -enable-testing --skip-build --skip CheckpointTests
swift test -c release -Xswiftc -enable-testing --skip-build --filter CheckpointTests
