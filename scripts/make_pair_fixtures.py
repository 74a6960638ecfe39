#!/opt/peers/venv/bin/python
"""The second architecture family end to end: a tiny random Llama-2-style model
(Tests/Fixtures/llama/tiny-llama-untied, from make_llama_fixtures.py) paired with a real
SentencePiece BPE tokenizer (Tests/Fixtures/tokenizer/tiny-spm, from make_tokenizer_fixtures.py).
transformers renders the Llama-2 chat template, tokenizes (chat and raw prompts, BOS added as the
tokenizer says) and generates greedily; the expected ids go to
Tests/Fixtures/llama/tiny-llama2-spm-expected.json. LlamaTests/SentencePieceModelTests.swift assembles
the same folder (symlinks) and must reproduce every id.
Run: /opt/peers/venv/bin/python scripts/make_pair_fixtures.py"""
import json
import os
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures")
MODEL = os.path.join(ROOT, "llama", "tiny-llama-untied")
TOKENIZER = os.path.join(ROOT, "tokenizer", "tiny-spm")
OUT = os.path.join(ROOT, "llama", "tiny-llama2-spm-expected.json")

folder = tempfile.mkdtemp()
for name in ("config.json", "model.safetensors"):
    os.symlink(os.path.join(MODEL, name), os.path.join(folder, name))
for name in ("tokenizer.json", "tokenizer_config.json"):
    os.symlink(os.path.join(TOKENIZER, name), os.path.join(folder, name))

tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
cases = []
chats = [
    [{"role": "user", "content": "the cat sat on the mat"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello  world, 42 times"}],
]
for messages in chats:
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    cases.append({"kind": "chat", "messages": messages, "text": text, "ids": ids})
for raw in ["the quick brown fox", "  leading spaces and ünïcödé ✓"]:
    ids = tok(raw)["input_ids"]   # add_special_tokens=True: BOS, as the tokenizer config says
    cases.append({"kind": "raw", "text": raw, "ids": ids})
with torch.no_grad():
    for c in cases:
        out = model.generate(torch.tensor([c["ids"]]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
        c["greedy"] = out[0, len(c["ids"]):].tolist()
json.dump({"model": "tiny-llama-untied + tiny-spm", "cases": cases}, open(OUT, "w"), indent=1, ensure_ascii=False)
print("wrote", OUT, [len(c["ids"]) for c in cases])
