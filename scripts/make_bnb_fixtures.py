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
With --smollm2 PATH_TO_QLORA: the same check on the real SmolLM2 GGUF against transformers' 4-bit load
of /opt/peers/models/smollm2-135m-hf (written to smollm2-roundtrip.json; a note, not used by tests).
Run: /opt/peers/venv/bin/python scripts/make_bnb_fixtures.py [--round-trip|--smollm2 .build-x/release/qlora]
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
                             "summary": r.stdout.strip().replace(out, "<output>")}
            print(name, results[name], file=sys.stderr)
    results["transformers"] = transformers.__version__
    results["bitsandbytes"] = bitsandbytes.__version__
    with open(os.path.join(ROOT, "roundtrip.json"), "w") as f:
        json.dump(results, f, indent=2)


def smollm2(qlora):
    """`qlora quantize` on the real SmolLM2 Q4_1 GGUF (default options: nf4 + DQ, bfloat16) against
    transformers' own 4-bit load of the float32 HF conversion of the same GGUF (same options):
    tensors, logits on a chat prompt, and the synthesized tokenizer.json vs the HF one."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    gguf = subprocess.run(["bash", os.path.join(HERE, "fetch_model.sh")], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    smol = "/opt/peers/models/smollm2-135m-hf"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        r = subprocess.run([qlora, "quantize", "--model", gguf, "--output", out], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        theirs = AutoModelForCausalLM.from_pretrained(smol, quantization_config=q, dtype=torch.bfloat16, device_map="cpu").eval()
        ref_dir = os.path.join(tmp, "ref")
        theirs.save_pretrained(ref_dir)
        a, b = load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(ref_dir, "model.safetensors"))
        differing = [k for k in b if k not in a or not torch.equal(a[k], b[k])]
        ours = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
        tok_ours = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        tok_ref = Tokenizer.from_file(os.path.join(smol, "tokenizer.json"))
        texts = ["Hello, world! 12345 tokens", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
                 "  spaces\tand\nnew lines ü ß 漢字 3.14159"]
        tok_same = {t: tok_ours.encode(t).ids == tok_ref.encode(t).ids for t in texts}
        ids = tok_ref.encode(texts[1]).ids
        lo = ours(torch.tensor([ids])).logits[0].float()
        lt = theirs(torch.tensor([ids])).logits[0].float()
        res = {"differing_tensors": differing, "tensors": len(b),
               "file_bytes": os.path.getsize(os.path.join(out, "model.safetensors")),
               "reference_file_bytes": os.path.getsize(os.path.join(ref_dir, "model.safetensors")),
               "max_abs_logit_diff": float((lo - lt).abs().max()), "identical_logits": bool(torch.equal(lo, lt)),
               "tokenizer_same_ids": tok_same, "summary": r.stdout.strip().replace(out, "<output>"),
               "transformers": transformers.__version__, "bitsandbytes": bitsandbytes.__version__}
        print(json.dumps(res, indent=2))
        with open(os.path.join(ROOT, "smollm2-roundtrip.json"), "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--round-trip":
        round_trip(os.path.abspath(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--smollm2":
        smollm2(os.path.abspath(sys.argv[2]))
    else:
        make()
