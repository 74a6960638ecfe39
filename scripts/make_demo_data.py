#!/usr/bin/env python3
"""Makes the demo's data set, deterministically (same output on every run): purchase sentences to be
turned into one line of JSON with fixed keys. Writes data/demo/{train,valid,test}.jsonl in the
`messages` format. Exact match of the JSON line is the score, so the difference fine-tuning makes is
measurable. Run: python3 scripts/make_demo_data.py"""
import json
import os
import random

NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Lucas", "Priya", "Olga", "Ben", "Sofia", "Omar", "Lena", "Diego",
         "Mei", "Ivan", "Chloe", "Noah", "Fatima", "Erik", "Zoe", "Ravi"]
ITEMS = ["apples", "notebooks", "candles", "batteries", "lemons", "pencils", "towels", "mugs", "tickets", "plants",
         "socks", "bagels", "cables", "stamps", "onions", "brushes"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FORMS = [
    "{name} bought {qty} {item} for ${price} on {day}.",
    "On {day}, {name} paid ${price} for {qty} {item}.",
    "{qty} {item} cost {name} ${price} last {day}.",
    "For ${price}, {name} picked up {qty} {item} on {day}.",
]
INSTRUCTION = "Extract the purchase as JSON with keys name, item, quantity, price, day."

def example(rng):
    name, item, day = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(DAYS)
    qty = rng.randint(2, 19)
    price = f"{rng.randint(1, 60)}.{rng.randint(0, 99):02d}"
    sentence = rng.choice(FORMS).format(name=name, item=item, day=day, qty=qty, price=price)
    answer = json.dumps({"name": name, "item": item, "quantity": qty, "price": float(price), "day": day})
    return {"messages": [{"role": "user", "content": f"{INSTRUCTION}\n{sentence}"},
                         {"role": "assistant", "content": answer}]}

rng = random.Random(20261127)
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "demo")
os.makedirs(out, exist_ok=True)
for split, n in [("train", 240), ("valid", 16), ("test", 24)]:
    with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
        for _ in range(n):
            f.write(json.dumps(example(rng)) + "\n")
print("wrote", out)
