#!/usr/bin/env python3
"""Writes Tests/Fixtures/fuse/*: what PEFT's merge_and_unload + save_pretrained give, for `qlora fuse`.

    /opt/peers/venv/bin/python scripts/make_fuse_fixtures.py
    /opt/peers/venv/bin/python scripts/make_fuse_fixtures.py --check-ours DIR    # transformers loads our fused folder?
    /opt/peers/venv/bin/python scripts/make_fuse_fixtures.py --check-gguf FILE [--reference DIR]  # gguf-py (and llama.cpp) read our GGUF?

* tiny-bpe/: a tiny random fp32 LlamaForCausalLM (hidden 64, 2 layers, 4 heads / 2 KV heads, head_dim 16,
  tied embeddings, vocab 691) saved by transformers, with the byte-level BPE tokenizer of
  Tests/Fixtures/tokenizer/smollm2-reduced (tokenizer_config.json, generation_config.json, and tokenizer.json
  with its ids renumbered densely 0..690 in the same order).
* adapter/: a PEFT LoRA adapter for it (r=4, lora_alpha=8, no rsLoRA, dropout 0.05, the 7 projections,
  random non-zero lora_B) saved by PeftModel.save_pretrained.
* merged-f32.safetensors, merged-f16.safetensors, merged-bf16.safetensors: model.safetensors of
  PeftModel.merge_and_unload() saved by save_pretrained, in float32 and after .to(float16 / bfloat16)
  (torch rounds to nearest even).
* expected.json: a prompt, its ids, and the last-position logits of the unmerged PEFT model and of the
  merged float32 model (all positions are compared by the Swift tests through our own forward).
"""
import copy
import json
import os
import shutil
import sys
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "fuse")
TOK = os.path.join(ROOT, "Tests", "Fixtures", "tokenizer", "smollm2-reduced")
PROMPT = "The quick brown fox jumps over the lazy dog. 12345"
warnings.filterwarnings("ignore")


def make():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(2026)
    cfg = LlamaConfig(vocab_size=691, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.08)
    base = os.path.join(OUT, "tiny-bpe")
    shutil.rmtree(base, ignore_errors=True)
    model.save_pretrained(base)
    for f in ("tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(TOK, f), os.path.join(base, f))
    # smollm2-reduced keeps SmolLM2's sparse ids (up to 48138): renumber them densely (same order).
    t = json.load(open(os.path.join(TOK, "tokenizer.json")))
    order = sorted(t["model"]["vocab"].items(), key=lambda kv: kv[1])
    new = {old: i for i, (_, old) in enumerate(order)}
    t["model"]["vocab"] = {tok: new[old] for tok, old in order}
    for a in t["added_tokens"]:
        a["id"] = new[a["id"]]
    with open(os.path.join(base, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(t, f, ensure_ascii=False, indent=1)

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.05)
    ad = os.path.join(OUT, "adapter")
    shutil.rmtree(ad, ignore_errors=True)
    pm.save_pretrained(ad)
    if os.path.exists(os.path.join(ad, "README.md")):
        os.remove(os.path.join(ad, "README.md"))
    pm.eval()
    tok = AutoTokenizer.from_pretrained(base)
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        peft_logits = pm(torch.tensor([ids])).logits[0, -1]
    merged = pm.merge_and_unload()
    merged.eval()
    with torch.no_grad():
        merged_logits = merged(torch.tensor([ids])).logits[0, -1]
    tmp = os.path.join(OUT, "tmp-merged")
    for name, dtype in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        shutil.rmtree(tmp, ignore_errors=True)
        copy.deepcopy(merged).to(dtype).save_pretrained(tmp)   # Module.to is in place: round a copy each time
        shutil.move(os.path.join(tmp, "model.safetensors"), os.path.join(OUT, f"merged-{name}.safetensors"))
    shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"prompt": PROMPT, "ids": ids,
                   "peft_last_logits": [float(x) for x in peft_logits],
                   "merged_last_logits": [float(x) for x in merged_logits]}, f)
    print("wrote", OUT, "max |peft - merged| last logits:", float((peft_logits - merged_logits).abs().max()))


def check_ours(d):
    """transformers loads our fused folder; its tensors and logits equal PEFT's merged model (same dtype)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    print("loaded", d, "dtype", model.dtype, "tied", model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr())
    ids = tok(PROMPT)["input_ids"]
    exp = json.load(open(os.path.join(OUT, "expected.json")))
    print("tokenizer ids equal the fixture's:", ids == exp["ids"])
    name = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[model.dtype]
    ref = load_file(os.path.join(OUT, f"merged-{name}.safetensors"))
    ours = load_file(os.path.join(d, "model.safetensors"))
    print("tensor names equal:", sorted(ref) == sorted(ours))
    worst = max(float((ref[k].float() - ours[k].float()).abs().max()) for k in ref)
    bits = sum(int((ref[k].view(torch.int16 if ref[k].dtype != torch.float32 else torch.int32) !=
                    ours[k].view(torch.int16 if ours[k].dtype != torch.float32 else torch.int32)).sum()) for k in ref)
    print(f"max |ours - peft| weight: {worst:.3g}; elements with different bits: {bits}")
    with torch.no_grad():
        logits = model.float()(torch.tensor([ids])).logits[0, -1]
    print("max |Δ last logits| vs PEFT merged f32:", float((logits - torch.tensor(exp["merged_last_logits"])).abs().max()))


def check_gguf(path, reference=None):
    """gguf-py reads our GGUF; tensors un-permuted equal the reference folder's; llama.cpp if installed."""
    import gguf
    import numpy as np
    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"]
    print("architecture:", bytes(arch.parts[arch.data[0]]).decode(), "tensors:", len(r.tensors),
          "types:", sorted({t.tensor_type.name for t in r.tensors}))
    for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
        f = r.fields[k]
        print(k, bytes(f.parts[f.data[0]]).decode())
    print("tokens:", len(r.fields["tokenizer.ggml.tokens"].data), "merges:", len(r.fields["tokenizer.ggml.merges"].data))
    if reference:
        from safetensors.torch import load_file
        ref = {k: v.float().numpy() for k, v in load_file(os.path.join(reference, "model.safetensors")).items()}
        nh = r.fields["llama.attention.head_count"]; nkv = r.fields["llama.attention.head_count_kv"]
        nh = int(nh.parts[nh.data[0]][0]); nkv = int(nkv.parts[nkv.data[0]][0])

        def permute(w, n_head):
            return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
        sub = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
        worst = 0.0
        for t in r.tensors:
            if t.name in names:
                hf = names[t.name]
            else:
                _, n, kind, _ = t.name.split(".")
                hf = f"model.layers.{n}.{sub[kind]}.weight"
            x = np.array(t.data)
            if t.tensor_type.name == "BF16":
                x = (x.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            x = x.astype(np.float32).reshape(ref[hf].shape)
            w = ref[hf]
            if "attn_q" in t.name:
                w = permute(w, nh)
            elif "attn_k" in t.name:
                w = permute(w, nkv)
            worst = max(worst, float(np.abs(x - w).max()))
        print("max |gguf - reference (permuted)|:", worst)
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama_cpp not installed: skipped")
        return
    import numpy as np
    llm = Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.eval(ids)
    print("llama.cpp ids:", ids[:16], "...", len(ids))
    np.save(path + ".llamacpp-logits.npy", np.array(llm.scores[: len(ids)]))
    out = llm.create_completion(PROMPT, max_tokens=8, temperature=0)
    print("llama.cpp greedy:", repr(out["choices"][0]["text"]))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--check-ours":
        check_ours(sys.argv[2])
    elif len(sys.argv) > 2 and sys.argv[1] == "--check-gguf":
        check_gguf(sys.argv[2], sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--reference" else None)
    else:
        make()
