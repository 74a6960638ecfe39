#!/usr/bin/env bash
# The main job, from a fresh machine: set-up (OpenBLAS, the SmolLM2 model), a release build,
# then a chat with SmolLM2-135M-Instruct. Interactive on a terminal; with no terminal (CI, a pipe)
# it plays a short scripted conversation instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL="$(bash scripts/setup.sh | tail -n1)"
swift build -c release --product qlora >&2
QLORA=.build/release/qlora
"$QLORA" inspect --model "$MODEL" | sed -n '/^architecture/,/^storage/p'
if [ -t 0 ]; then
  exec "$QLORA" chat --model "$MODEL" --temperature 0.7 --top-p 0.9 --seed 1
fi
printf '%s\n' "What is the capital of France?" "And what is it famous for? Answer in two sentences." \
  | "$QLORA" chat --model "$MODEL" --max-tokens 96
