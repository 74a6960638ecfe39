#!/opt/peers/venv/bin/python
"""transformers' fp32 CPU speed on SmolLM2-135M, to compare with ours (same shapes as our bench):
prefill of a 128-token prompt, then greedy decoding of 64 tokens with the KV cache.
Run: /opt/peers/venv/bin/python scripts/bench_transformers.py [model_dir] [threads]"""
import resource
import sys
import time

import torch
import transformers

model_dir = sys.argv[1] if len(sys.argv) > 1 else "/opt/peers/models/smollm2-135m-hf"
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
torch.set_grad_enabled(False)
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
prompt = torch.tensor([[100 + (i * 7919) % 40000 for i in range(128)]])
for rnd in range(3):
    t0 = time.perf_counter()
    out = model(prompt, use_cache=True)
    prefill = time.perf_counter() - t0
    past, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    t0 = time.perf_counter()
    for _ in range(64):
        out = model(nxt, cache=past, use_cache=True)
        past, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    decode = time.perf_counter() - t0
    print(f"round {rnd}: prefill 128 tok {prefill:.3f} s = {128 / prefill:.1f} tok/s; "
          f"decode 64 tok {decode:.3f} s = {64 / decode:.1f} tok/s")
    t0 = time.perf_counter()
    g = model.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False)
    gen = time.perf_counter() - t0
    print(f"         generate(128 prompt + 64 greedy) {gen:.3f} s = {64 / gen:.1f} new tok/s overall")
print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
