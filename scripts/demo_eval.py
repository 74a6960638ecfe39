#!/usr/bin/env python3
"""Scores a model on data/demo/test.jsonl by exact match of the JSON answer, running `qlora generate`
(greedy) for each example. Used by scripts/demo.sh; prints a few answers and the score.
Usage: demo_eval.py QLORA MODEL TESTFILE LABEL [extra qlora args...]"""
import json
import subprocess
import sys

qlora, model, test, label, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
examples = [json.loads(line) for line in open(test)]
right = 0
for i, ex in enumerate(examples):
    user, expected = ex["messages"][0]["content"], ex["messages"][1]["content"]
    out = subprocess.run([qlora, "generate", "--model", model, "--chat", "--prompt", user, "--max-tokens", "60",
                          "--json"] + extra, capture_output=True, text=True, check=True)
    answer = json.loads(out.stdout)["text"].strip()
    try:
        ok = json.loads(answer) == json.loads(expected)
    except ValueError:
        ok = False
    right += ok
    if i < 3:
        print(f"[{label}] {user.splitlines()[1]}\n    -> {answer[:160]}\n    {'✓' if ok else '✗ expected ' + expected}")
print(f"[{label}] exact match: {right}/{len(examples)} = {100 * right / len(examples):.0f}%")
