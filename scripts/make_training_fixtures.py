#!/usr/bin/env python3
"""Writes Tests/Fixtures/training/*: reference results of the real libraries for the training pieces.

    /opt/peers/venv/bin/python scripts/make_training_fixtures.py
    /opt/peers/venv/bin/python scripts/make_training_fixtures.py --check-adapter DIR   # PEFT loads DIR?

* optimizer.safetensors: seeded params/grads and the params (and 8-bit states) after each of 5 steps of
  torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ + torch AdamW, bitsandbytes AdamW (32-bit, CPU),
  bitsandbytes AdamW8bit (CPU, blockwise 256) and bitsandbytes PagedAdamW (CPU falls back to non-paged).
* schedules.json: the learning rate transformers' get_{constant,cosine,linear}_schedule_with_warmup gives
  at every step (the lr used by optimizer step k is lr_lambda(k)·base_lr).
* masking.json: chat examples rendered with tokenizer.apply_chat_template and tokenized by HF tokenizers;
  labels are computed from CHARACTER spans with the tokenizer's offset mapping (a different method from
  the Swift prefix-by-prefix token method): a token is trained iff its characters lie inside an
  assistant span = the text the template appends for that assistant message, up to and including its
  last end-of-turn / EOS token (text after it, e.g. ChatML's "\n", is not trained).
* peft-tiny/: a PEFT 0.21.2 LoRA adapter (r=4, alpha=8, rslora, 7 targets, random non-zero B) saved by
  PeftModel.save_pretrained for Tests/Fixtures/llama/tiny-llama-gqa-tied; peft-tiny-expected.json: keys,
  shapes and sums.
"""
import json
import math
import os
import sys
import warnings

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "training")
warnings.filterwarnings("ignore")


def optimizer_fixture():
    import bitsandbytes as bnb
    torch.manual_seed(1234)
    sizes = {"small": 37, "big": 4500}  # big: 18 blocks of 256 (last partial), >= 4096 → 8-bit states
    p0 = {k: torch.randn(n) for k, n in sizes.items()}
    grads = {k: [torch.randn(n) * (0.5 + s) for s in range(5)] for k, n in sizes.items()}
    t = {}
    for k in sizes:
        t[f"{k}.p0"] = p0[k]
        for s in range(5):
            t[f"{k}.grad{s}"] = grads[k][s]
    lr, wd = 1e-2, 0.1

    def run(name, make, clip=None):
        ps = {k: torch.nn.Parameter(p0[k].clone()) for k in sizes}
        opt = make([ps["small"], ps["big"]])
        for s in range(5):
            for k in sizes:
                ps[k].grad = grads[k][s].clone()
            if clip is not None:
                norm = torch.nn.utils.clip_grad_norm_([ps["small"], ps["big"]], clip)
                t[f"{name}.gnorm{s}"] = norm.reshape(1).float()
            opt.step()
            for k in sizes:
                t[f"{name}.{k}.p{s + 1}"] = ps[k].detach().clone()
        return opt, ps

    kw = dict(lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    run("torch", lambda p: torch.optim.AdamW(p, **kw))
    run("torchclip", lambda p: torch.optim.AdamW(p, **kw), clip=0.3)
    run("bnb32", lambda p: bnb.optim.AdamW(p, optim_bits=32, **kw))
    run("paged", lambda p: bnb.optim.PagedAdamW(p, **kw))
    opt, ps = run("bnb8", lambda p: bnb.optim.AdamW8bit(p, **kw))
    st = opt.state[ps["big"]]
    t["bnb8.big.state1"] = st["state1"].clone()
    t["bnb8.big.state2"] = st["state2"].clone()
    t["bnb8.big.absmax1"] = st["absmax1"].clone()
    t["bnb8.big.absmax2"] = st["absmax2"].clone()
    t["bnb8.qmap1"] = st["qmap1"].clone()
    t["bnb8.qmap2"] = st["qmap2"].clone()
    assert "state1" in opt.state[ps["small"]] and opt.state[ps["small"]]["state1"].dtype == torch.float32
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "optimizer.safetensors"),
              metadata={"lr": str(lr), "weight_decay": str(wd)})


def schedules_fixture():
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)
    out = []
    base = 2e-4
    for total, warm in [(20, 3), (17, 0), (10, 10), (25, 7)]:
        for kind, make in [("constant", lambda o: get_constant_schedule_with_warmup(o, warm)),
                           ("cosine", lambda o: get_cosine_schedule_with_warmup(o, warm, total)),
                           ("linear", lambda o: get_linear_schedule_with_warmup(o, warm, total))]:
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=base)
            sch = make(opt)
            lrs = []
            for _ in range(total + 2):
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                sch.step()
            out.append({"kind": kind, "total": total, "warmup": warm, "base": base, "lrs": lrs})
    with open(os.path.join(OUT, "schedules.json"), "w") as f:
        json.dump(out, f, indent=1)


def masking_fixture():
    from transformers import AutoTokenizer
    convs = [
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
         {"role": "assistant", "content": "6, of course."}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b c"},
         {"role": "user", "content": "d"}, {"role": "assistant", "content": "e f g"}],
    ]
    cases = []
    for tdir in ["tokenizer/smollm2-reduced", "tokenizer/tiny-spm"]:
        tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "Tests", "Fixtures", tdir))
        for conv in convs:
            text = tok.apply_chat_template(conv, tokenize=False)
            spans = []
            for i, m in enumerate(conv):
                if m["role"] != "assistant":
                    continue
                before = tok.apply_chat_template(conv[:i], tokenize=False, add_generation_prompt=True) if i > 0 else ""
                upto = tok.apply_chat_template(conv[:i + 1], tokenize=False)
                assert text.startswith(upto) and upto.startswith(before)
                # The trained span ends with the last end-of-turn token in it (ChatML's "\n" after
                # <|im_end|> is template glue the model never generates).
                seg = upto[len(before):]
                cut = max((seg.rfind(e) + len(e) for e in [tok.eos_token, "<|im_end|>"] if e and e in seg), default=len(seg))
                spans.append((len(before), len(before) + cut))
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            labels = []
            for tid, (a, b) in zip(ids, enc["offset_mapping"]):
                inside = any(s <= a and b <= e and b > a for s, e in spans)
                labels.append(tid if inside else -100)
            cases.append({"tokenizer": tdir, "messages": conv, "text": text, "input_ids": ids, "labels": labels})
    # prompt/completion and alpaca: transformers-free reference (SPEC §5.4): source/target concatenation
    with open(os.path.join(OUT, "masking.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)


def peft_fixture():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "Tests", "Fixtures", "llama", "tiny-llama-gqa-tied"))
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, use_rslora=True, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.01)
    d = os.path.join(OUT, "peft-tiny")
    pm.save_pretrained(d)
    if os.path.exists(os.path.join(d, "README.md")):
        os.remove(os.path.join(d, "README.md"))  # PEFT's model card: not a fixture
    from safetensors import safe_open
    exp = {}
    with safe_open(os.path.join(d, "adapter_model.safetensors"), "pt") as f:
        meta = f.metadata()
        for k in f.keys():
            x = f.get_tensor(k)
            exp[k] = {"shape": list(x.shape), "sum": float(x.double().sum()), "first": float(x.flatten()[0]),
                      "last": float(x.flatten()[-1])}
    with open(os.path.join(OUT, "peft-tiny-expected.json"), "w") as f:
        json.dump({"metadata": meta, "tensors": exp}, f, indent=1, sort_keys=True)


def check_adapter(d):
    """Loads a Swift-written adapter directory with PEFT on the tiny model; prints what it found."""
    from peft import PeftModel, PeftConfig
    from transformers import AutoModelForCausalLM
    from safetensors.torch import load_file
    cfg = PeftConfig.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "Tests", "Fixtures", "llama", "tiny-llama-gqa-tied"))
    pm = PeftModel.from_pretrained(model, d)
    sd = load_file(os.path.join(d, "adapter_model.safetensors"))
    mism = 0
    params = dict(pm.named_parameters())
    for k, v in sd.items():
        name = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        if not torch.equal(params[name].detach(), v):
            mism += 1
    print(json.dumps({"r": cfg.r, "lora_alpha": cfg.lora_alpha, "use_rslora": cfg.use_rslora,
                      "target_modules": sorted(cfg.target_modules), "tensors": len(sd), "mismatches": mism}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-adapter":
        check_adapter(sys.argv[2])
        sys.exit(0)
    os.makedirs(OUT, exist_ok=True)
    optimizer_fixture()
    schedules_fixture()
    masking_fixture()
    peft_fixture()
    for dirpath, _, files in os.walk(OUT):
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)  # safetensors writes 0600
    print("wrote", sorted(os.listdir(OUT)))
