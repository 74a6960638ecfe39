#!/bin/bash
# Back-to-back decode/prefill speed: llama.cpp's llama-bench, then our `qlora bench generate`,
# on the same GGUF, same prompt/generation lengths, so both see the same machine load.
#
# usage: bash scripts/bench_llamacpp.sh [options] MODEL.gguf
#   --qlora PATH        our binary (default: .build/release/qlora)
#   --llama-bench PATH  llama.cpp's llama-bench (default: /opt/peers/llamacpp-build/bin/llama-bench)
#   --threads N         llama.cpp threads, or a comma list such as 1,2 (default: 2)
#   --prompt-tokens N   (default: 128)
#   --gen-tokens N      (default: 64)
#   --reps N            llama-bench repetitions (default: 5; ours: --repetitions, default 3)
#   --quantize Q        how ours holds the linear weights: nf4 (default), fp4, int4, none
#   --decode-arithmetic A  ours: int16 (default) or float32 (see `qlora generate --help`)
#
# llama.cpp runs the GGUF's own tensor types (e.g. Q4_1); ours loads them and holds them as
# --quantize says (nf4 by default), so the two do not run the same kernels.
# OMP_WAIT_POLICY: this llama.cpp is built with OpenMP. Its default (active: threads spin between
# ops) is by far the fastest on an idle machine (118 tok/s decode vs 31 with passive, 2026-11-27), but
# collapses when the 2 cores are shared (3.2 tok/s vs 27.7 with passive, same load). The default
# here is llama.cpp's own; set OMP_WAIT_POLICY=passive in the environment on a busy machine.
# llama-bench is not built by this project: see the team notes for how it was built
# (the vendored llama.cpp of the llama-cpp-python sdist, CMake, targets llama-bench only).
set -euo pipefail

QLORA=.build/release/qlora
LLAMA_BENCH=/opt/peers/llamacpp-build/bin/llama-bench
THREADS=2
PP=128
TG=64
REPS=5
OUR_REPS=3
QUANT=nf4
ARITH=int16
MODEL=

while [ $# -gt 0 ]; do
    case "$1" in
        --qlora) QLORA=$2; shift 2 ;;
        --llama-bench) LLAMA_BENCH=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --prompt-tokens) PP=$2; shift 2 ;;
        --gen-tokens) TG=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --our-reps) OUR_REPS=$2; shift 2 ;;
        --quantize) QUANT=$2; shift 2 ;;
        --decode-arithmetic) ARITH=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "bench_llamacpp.sh: unknown option $1" >&2; exit 2 ;;
        *) MODEL=$1; shift ;;
    esac
done

[ -n "$MODEL" ] || { echo "bench_llamacpp.sh: give a GGUF file (see --help)" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "bench_llamacpp.sh: no such model file: $MODEL" >&2; exit 2; }
[ -x "$LLAMA_BENCH" ] || { echo "bench_llamacpp.sh: llama-bench not found at $LLAMA_BENCH (--llama-bench)" >&2; exit 2; }
[ -x "$QLORA" ] || { echo "bench_llamacpp.sh: qlora binary not found at $QLORA (--qlora)" >&2; exit 2; }

echo "model: $MODEL"
echo "load before: $(uptime)"

export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-active}
echo "OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
LB_JSON=$(mktemp)
trap 'rm -f "$LB_JSON"' EXIT
"$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p "$PP" -n "$TG" -r "$REPS" -fa 1 -o json > "$LB_JSON" 2>/dev/null
python3 - "$LB_JSON" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
for r in rows:
    kind = "prefill" if r["n_prompt"] > 0 else "decode"
    n = r["n_prompt"] if r["n_prompt"] > 0 else r["n_gen"]
    print(f"llama.cpp {r.get('build_commit', '?')} {r.get('model_type', '')}, {r['n_threads']} threads, "
          f"flash-attn {r.get('flash_attn')}: {kind} {n} tokens: {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} tok/s")
EOF

echo "load between: $(uptime)"
echo "ours ($QLORA, --quantize $QUANT, --decode-arithmetic $ARITH):"
"$QLORA" bench generate --model "$MODEL" --quantize "$QUANT" --decode-arithmetic "$ARITH" \
    --prompt-tokens "$PP" --gen-tokens "$TG" --repetitions "$OUR_REPS"
echo "load after: $(uptime)"
