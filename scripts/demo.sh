#!/usr/bin/env bash
# The main job, from a fresh machine: set-up (OpenBLAS, the SmolLM2 model), a release build, then
# fine-tune SmolLM2-135M-Instruct with QLoRA (NF4 + double-quantized base, LoRA on all linear layers)
# on the bundled data set (data/demo, made by scripts/make_demo_data.py), and score the base and the
# fine-tuned model on the held-out test split (exact match of the JSON answer).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL="$(bash scripts/setup.sh | tail -n1)"
swift build -c release --product qlora >&2
QLORA=.build/release/qlora
OUT="${QLORA_DEMO_OUT:-.cache/demo-adapter}"
rm -rf "$OUT"
echo "== base model =="
python3 scripts/demo_eval.py "$QLORA" "$MODEL" data/demo/test.jsonl base
echo "== fine-tuning (QLoRA: NF4 + double quant base, rank 16 on q,k,v,o,gate,up,down) =="
"$QLORA" train --model "$MODEL" --data data/demo --output "$OUT" --steps 60 --batch-size 4 --max-seq-len 96 \
  --learning-rate 1e-3 --lora-rank 16 --lora-alpha 32 --eval-every 20 --seed 1
echo "== fine-tuned model =="
python3 scripts/demo_eval.py "$QLORA" "$MODEL" data/demo/test.jsonl fine-tuned --adapter "$OUT"
