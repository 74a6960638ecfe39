#!/opt/peers/venv/bin/python
"""Writes the Llama forward-pass fixtures under Tests/Fixtures/llama/ (used by Tests/LlamaTests).

Tiny random models (fp32 safetensors + config.json written by transformers' save_pretrained), each with
expected.json holding a prompt of 12 ids, the full logits [12, vocab] from transformers, and 10 greedy ids:
  tiny-llama-gqa-tied   Llama, 4 heads / 2 kv heads, tied embeddings (+ tiny-llama-gqa-tied.gguf, F32,
                        Q/K rows permuted the way llama.cpp's converter does, same weights, same expected)
  tiny-llama-untied     Llama-2 style: separate lm_head, MHA, vocab of Tests/Fixtures/tokenizer/tiny-spm (420)
  tiny-llama3-rope      Llama with llama3 rope scaling (+ config-4x.json: the same config in the
                        transformers 4.x spelling: rope_theta/rope_scaling/torch_dtype, no head_dim)
  tiny-qwen2            Qwen2 (q/k/v bias)
  tiny-mistral          Mistral (sliding window 6, smaller than the prompt, so the mask matters)
SmolLM2 (from the float32 HF folder /opt/peers/models/smollm2-135m-hf, the same weights as the Q4_1 GGUF):
  smollm2-expected.json  4 prompts (2 chat-templated, 2 raw text) as ids, top-20 logits at every
                         position, and 20 greedy ids (eos ignored).
Run: /opt/peers/venv/bin/python scripts/make_llama_fixtures.py
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "llama")
SMOL = "/opt/peers/models/smollm2-135m-hf"
torch.set_grad_enabled(False)


def randomize(model, seed):
    """Larger-than-default random weights so logits are spread out (no greedy near-ties)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        else:
            std = 0.6 / (p.shape[-1] ** 0.5) if p.dim() == 2 else 0.1
            p.copy_(std * torch.randn(p.shape, generator=g))


def greedy(model, ids, steps):
    out = list(ids)
    for _ in range(steps):
        logits = model(torch.tensor([out])).logits[0, -1]
        out.append(int(torch.argmax(logits)))
    return out[len(ids):]


def top2_gap(logits):
    s = torch.sort(logits, dim=-1, descending=True).values
    return float((s[..., 0] - s[..., 1]).min())


def write_tiny(name, config_cls, model_cls, seed, vocab_size=256, **kw):
    cfg = config_cls(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=vocab_size,
                     max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, **kw)
    torch.manual_seed(seed)
    model = model_cls(cfg).float().eval()
    randomize(model, seed)
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    prompt = [1] + [int(x) for x in torch.randint(3, cfg.vocab_size, (11,), generator=torch.Generator().manual_seed(seed + 1))]
    logits = model(torch.tensor([prompt])).logits[0]
    ids = greedy(model, prompt, 10)
    exp = {"model_type": cfg.model_type, "prompt": prompt, "vocab": cfg.vocab_size,
           "logits": [[float(v) for v in row] for row in logits], "greedy": ids,
           "min_top2_gap": top2_gap(logits), "transformers": transformers.__version__}
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(exp, f)
    print(name, "gap", exp["min_top2_gap"], "greedy", ids, file=sys.stderr)
    return model, cfg, d


def permute(w, n_head, n_head_kv):
    # llama.cpp conversion/llama.py LlamaModel.permute: HF rotate_half rows -> interleaved pairs.
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, cfg, path):
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama-gqa-tied")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_file_type(0)
    sd = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], nh, nh))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], nh, nkv))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def to_4x_config(d):
    """The same config in the transformers 4.x spelling."""
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    rp.pop("rope_type", None) if rp.get("rope_type") == "default" else None
    c["rope_scaling"] = rp if rp else None
    c["torch_dtype"] = c.pop("dtype", "float32")
    c.pop("head_dim", None)
    c["transformers_version"] = "4.46.0"
    with open(os.path.join(d, "config-4x.json"), "w") as f:
        json.dump(c, f, indent=2)


def tiny_spm_vocab():
    p = os.path.join(ROOT, "..", "tokenizer", "tiny-spm")
    for cand in ("tokenizer.json",):
        q = os.path.join(p, cand)
        if os.path.exists(q):
            with open(q) as f:
                return len(json.load(f)["model"]["vocab"])
    return None


def tiny():
    L = transformers
    m, cfg, d = write_tiny("tiny-llama-gqa-tied", L.LlamaConfig, L.LlamaForCausalLM, 11,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    write_gguf(m, cfg, os.path.join(ROOT, "tiny-llama-gqa-tied.gguf"))
    # Llama-2 style (MHA, untied), with the vocabulary size of the tokenizer fixture tiny-spm so the two pair up
    write_tiny("tiny-llama-untied", L.LlamaConfig, L.LlamaForCausalLM, 12, vocab_size=tiny_spm_vocab() or 256,
               num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    _, _, d = write_tiny("tiny-llama3-rope", L.LlamaConfig, L.LlamaForCausalLM, 13,
                         num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
                         rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    to_4x_config(d)
    write_tiny("tiny-qwen2", L.Qwen2Config, L.Qwen2ForCausalLM, 14,
               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    write_tiny("tiny-mistral", L.MistralConfig, L.MistralForCausalLM, 15,
               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, head_dim=16,
               sliding_window=6)


def smollm2():
    tok = transformers.AutoTokenizer.from_pretrained(SMOL)
    model = transformers.AutoModelForCausalLM.from_pretrained(SMOL, dtype=torch.float32).eval()
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You are a terse assistant."},
         {"role": "user", "content": "Write a haiku about gradient descent."}],
    ]
    raws = ["The quick brown fox jumps over the lazy dog. Then the dog",
            "def fibonacci(n):\n    if n < 2:\n        return n\n"]
    prompts = []
    for c in chats:
        r = tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)
        prompts.append({"kind": "chat", "text": tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                        "ids": list(r["input_ids"])})
    for t in raws:
        prompts.append({"kind": "raw", "text": t, "ids": tok(t)["input_ids"]})
    for p in prompts:
        logits = model(torch.tensor([p["ids"]])).logits[0]
        top = torch.topk(logits, 20, dim=-1)
        p["top_ids"] = top.indices.tolist()
        p["top_logits"] = [[float(v) for v in row] for row in top.values]
        p["greedy"] = greedy(model, p["ids"], 20)
        p["min_top2_gap"] = top2_gap(logits)
        print("smollm2", len(p["ids"]), "gap", p["min_top2_gap"], tok.decode(p["greedy"]), file=sys.stderr)
    with open(os.path.join(ROOT, "smollm2-expected.json"), "w") as f:
        json.dump({"model": SMOL, "transformers": transformers.__version__, "prompts": prompts}, f)


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    what = sys.argv[1:] or ["tiny", "smollm2"]
    if "tiny" in what:
        tiny()
    if "smollm2" in what:
        smollm2()
