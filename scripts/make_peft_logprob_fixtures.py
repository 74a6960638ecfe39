#!/usr/bin/env python3
"""PEFT reference for `qlora generate --adapter` on SmolLM2 (Tests/QLoRATests/PeftLogprobTests.swift).

Loads the float32 Hugging Face conversion of SmolLM2-135M-Instruct (made by transformers from the
Q4_1 GGUF the tests use, so the weights are the same), puts the adapter written by our own
`qlora train` (Tests/Fixtures/peft-smollm2/adapter) on it with PEFT, and records, for a few chat
prompts rendered with the tokenizer's chat template:
  - the prompt ids,
  - the greedy continuation (max_new_tokens steps, end-of-turn not stopping it),
  - the top-5 next-token log-probabilities at each generated step (float32 log_softmax),
  - the same top-5 of the base alone (adapter disabled), so the test can check the adapter matters.

Loading is also the check that PEFT reads our adapter: every tensor of adapter_model.safetensors
must become a LoRA parameter of the model with the same values, and every LoRA parameter of the
model must come from the file (no missing, no unexpected keys).

The adapter itself was made with (from the repository root, release build):
  .build/release/qlora train --model ~/.cache/swift-qlora/SmolLM2-135M-Instruct.Q4_1.gguf \
      --data data/demo --output /tmp/peft-adapter --steps 3 --lora-rank 2 \
      --target-modules q_proj,v_proj,down_proj --quantize none --max-seq-len 96 --batch-size 2 \
      --learning-rate 5e-3
  cp /tmp/peft-adapter/adapter_config.json /tmp/peft-adapter/adapter_model.safetensors \
      Tests/Fixtures/peft-smollm2/adapter/

Usage: /opt/peers/venv/bin/python scripts/make_peft_logprob_fixtures.py
           [--model /opt/peers/models/smollm2-135m-hf] [--adapter Tests/Fixtures/peft-smollm2/adapter]
           [--output Tests/Fixtures/peft-smollm2/expected.json]
"""
import argparse
import json
import os

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    {"user": "What is the capital of France?"},
    {"user": "Extract the name and the city as JSON: Maria lives in Lisbon and works as a nurse."},
    {"system": "You are a terse assistant.", "user": "Name three primary colors."},
]
TOP = 5


def check_adapter_loaded(model, adapter_dir):
    """Every file tensor is a LoRA parameter with equal values; every LoRA parameter is in the file."""
    file_tensors = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    lora_params = {k: v for k, v in params.items() if ".lora_A." in k or ".lora_B." in k}
    matched = set()
    for name, value in file_tensors.items():
        assert name.endswith(".weight"), name
        key = name[: -len(".weight")] + ".default.weight"   # PEFT inserts the adapter name
        assert key in lora_params, f"unexpected key: {name} (no parameter {key})"
        assert lora_params[key].shape == value.shape, f"{name}: {tuple(value.shape)} vs {tuple(lora_params[key].shape)}"
        assert torch.equal(lora_params[key].detach().float(), value.float()), f"{name}: values differ after loading"
        matched.add(key)
    missing = sorted(set(lora_params) - matched)
    assert not missing, f"missing keys: {missing[:5]} ({len(missing)})"
    # PEFT's own report, from loading the same folder again under another adapter name.
    result = model.load_adapter(adapter_dir, adapter_name="recheck")
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing_lora = [k for k in getattr(result, "missing_keys", []) if "recheck" in k]
    assert not unexpected, f"PEFT unexpected keys: {unexpected[:5]}"
    assert not missing_lora, f"PEFT missing keys: {missing_lora[:5]}"
    model.delete_adapter("recheck")
    model.set_adapter("default")
    return len(file_tensors)


def top_logprobs(logits):
    lp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = torch.topk(lp, TOP)
    return [{"id": int(i), "logprob": float(v)} for i, v in zip(ids, values)]


@torch.no_grad()
def greedy(model, ids, steps):
    ids = list(ids)
    tokens, tops = [], []
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        top = top_logprobs(logits)
        tops.append(top)
        nxt = int(torch.argmax(logits))
        assert nxt == top[0]["id"]
        tokens.append(nxt)
        ids.append(nxt)
    return tokens, tops


@torch.no_grad()
def base_top_logprobs(model, ids, continuation):
    """The base's top-5 at the same positions (the adapter's greedy continuation fed in)."""
    with model.disable_adapter():
        logits = model(input_ids=torch.tensor([list(ids) + continuation[:-1]])).logits[0]
    return [top_logprobs(logits[len(ids) - 1 + i]) for i in range(len(continuation))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/opt/peers/models/smollm2-135m-hf")
    ap.add_argument("--adapter", default=os.path.join(ROOT, "Tests/Fixtures/peft-smollm2/adapter"))
    ap.add_argument("--output", default=os.path.join(ROOT, "Tests/Fixtures/peft-smollm2/expected.json"))
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    base.eval()
    model = PeftModel.from_pretrained(base, args.adapter)
    model.eval()
    n = check_adapter_loaded(model, args.adapter)
    with open(os.path.join(args.adapter, "adapter_config.json")) as f:
        cfg = json.load(f)

    cases = []
    for p in PROMPTS:
        messages = ([{"role": "system", "content": p["system"]}] if "system" in p else []) + [
            {"role": "user", "content": p["user"]}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        tokens, tops = greedy(model, ids, args.steps)
        cases.append({
            "system": p.get("system"), "user": p["user"], "rendered": text, "prompt_ids": ids,
            "tokens": tokens, "top_logprobs": tops,
            "base_top_logprobs": base_top_logprobs(model, ids, tokens),
        })
        print(f"{p['user'][:40]!r}: {tokens} {tok.decode(tokens)!r}")

    out = {
        "generator": "scripts/make_peft_logprob_fixtures.py",
        "model": os.path.basename(args.model.rstrip("/")),
        "adapter": {"r": cfg["r"], "lora_alpha": cfg["lora_alpha"], "target_modules": cfg["target_modules"],
                    "tensors": n},
        "peft_loaded": True,
        "steps": args.steps,
        "cases": cases,
    }
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {args.output}: {len(cases)} prompts, {n} adapter tensors")


if __name__ == "__main__":
    main()
