#!/opt/peers/venv/bin/python
"""Writes the bitsandbytes 4-bit fixtures under Tests/Fixtures/bnb/ (used by Tests/QuantizationTests/
BitsAndBytesModelTests.swift and Tests/QLoRATests/QuantizeCommandTests.swift).

From the tiny fp32 fixture models in Tests/Fixtures/llama (made by scripts/make_llama_fixtures.py):
  gqa-tied-nf4-dq/    tiny-llama-gqa-tied loaded by transformers with BitsAndBytesConfig(load_in_4bit,
                      nf4, double quant, compute float32) and written by save_pretrained
  gqa-tied-fp4/       the same with fp4, no double quant
  untied-nf4-dq/      tiny-llama-untied, nf4 + double quant (separate lm_head, kept unquantized)
Each folder has expected.json: the prompt of tiny-llama-*/expected.json and transformers' 4-bit logits [12, vocab].

Round trip (needs the built qlora binary; run with --round-trip PATH_TO_QLORA):
  runs `qlora quantize` on the tiny fp32 folders with the same options, loads OUR output with
  AutoModelForCausalLM.from_pretrained, compares its logits with transformers' own 4-bit model and
  writes the figures to roundtrip.json.
Run: /opt/peers/venv/bin/python scripts/make_bnb_fixtures.py [--round-trip .build-x/release/qlora]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
import bitsandbytes
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA = os.path.join(HERE, "..", "Tests", "Fixtures", "llama")
ROOT = os.path.join(HERE, "..", "Tests", "Fixtures", "bnb")
torch.set_grad_enabled(False)

VARIANTS = [
    # name, source, quant type, double quant
    ("gqa-tied-nf4-dq", "tiny-llama-gqa-tied", "nf4", True),
    ("gqa-tied-fp4", "tiny-llama-gqa-tied", "fp4", False),
    ("untied-nf4-dq", "tiny-llama-untied", "nf4", True),
]


def load4bit(folder, quant_type=None, dq=None):
    if quant_type is None:  # a folder that already holds a 4-bit checkpoint
        return AutoModelForCausalLM.from_pretrained(folder, device_map="cpu").eval()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=dq,
                           bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=q, dtype=torch.float32,
                                                device_map="cpu").eval()


def prompt_of(source):
    with open(os.path.join(LLAMA, source, "expected.json")) as f:
        return json.load(f)["prompt"]


def make():
    for name, source, qt, dq in VARIANTS:
        src = os.path.join(LLAMA, source)
        model = load4bit(src, qt, dq)
        d = os.path.join(ROOT, name)
        if os.path.exists(d):
            shutil.rmtree(d)
        model.save_pretrained(d, safe_serialization=True)
        gc = os.path.join(d, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
        prompt = prompt_of(source)
        logits = model(torch.tensor([prompt])).logits[0]
        # Reload what was saved: the logits must be the same (the checkpoint is used as stored).
        again = load4bit(d)(torch.tensor([prompt])).logits[0]
        assert torch.equal(logits, again), (name, float((logits - again).abs().max()))
        exp = {"source": source, "quant_type": qt, "double_quant": dq, "prompt": prompt,
               "logits": [[float(v) for v in row] for row in logits],
               "transformers": transformers.__version__, "bitsandbytes": bitsandbytes.__version__}
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(exp, f)
        print(name, sorted(os.listdir(d)), file=sys.stderr)


def round_trip(qlora):
    results = {}
    for name, source, qt, dq in VARIANTS:
        src = os.path.join(LLAMA, source)
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out")
            args = [qlora, "quantize", "--model", src, "--output", out, "--quant-type", qt,
                    "--double-quant" if dq else "--no-double-quant", "--dtype", "float32"]
            r = subprocess.run(args, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            prompt = prompt_of(source)
            ours = load4bit(out)(torch.tensor([prompt])).logits[0]
            theirs = load4bit(src, qt, dq)(torch.tensor([prompt])).logits[0]
            from safetensors.torch import load_file
            a = load_file(os.path.join(out, "model.safetensors"))
            b = load_file(os.path.join(ROOT, name, "model.safetensors"))
            same_tensors = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
            results[name] = {"max_abs_logit_diff": float((ours - theirs).abs().max()),
                             "identical_logits": bool(torch.equal(ours, theirs)),
                             "identical_tensors": same_tensors,
                             "summary": r.stdout.strip()}
            print(name, results[name], file=sys.stderr)
    results["transformers"] = transformers.__version__
    results["bitsandbytes"] = bitsandbytes.__version__
    with open(os.path.join(ROOT, "roundtrip.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--round-trip":
        round_trip(os.path.abspath(sys.argv[2]))
    else:
        make()
