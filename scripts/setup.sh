#!/usr/bin/env bash
# One-time set-up of a fresh machine (Debian 12 + Swift 6.3, as root, or with sudo):
# OpenBLAS if missing, the SmolLM2 test model into the cache, and a release build of `qlora`.
# Idempotent. Prints the model path on its last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! pkg-config --exists openblas 2>/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q >&2
  $SUDO apt-get install -y -q libopenblas-dev pkg-config >&2
fi
bash scripts/fetch_model.sh
