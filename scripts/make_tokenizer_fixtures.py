#!/usr/bin/env python3
"""Generate the tokenizer fixtures in Tests/Fixtures/tokenizer/ (used by Tests/BPETests).

Run with the reference stack:  /opt/peers/venv/bin/python scripts/make_tokenizer_fixtures.py
Needs: transformers, tokenizers, sentencepiece, gguf (gguf-py), the real SmolLM2 GGUF
(scripts/fetch_model.sh) and the transformers conversion of it at /opt/peers/models/smollm2-135m-hf.

Writes
  smollm2-corpus.json          hard corpus -> ids, two references:
      ids_smollm:  the SmolLM2 pipeline that GGUF `tokenizer.ggml.pre = "smollm"` names (llama.cpp, and the
                   hub tokenizer.json): Digits(individual_digits) then ByteLevel regex, then BPE.
      ids_hf:      the transformers tokenizer at /opt/peers/models/smollm2-135m-hf (built by transformers from the
                   GGUF; its tokenizer.json has ByteLevel only, no Digits step). Also checked equal to
                   AutoTokenizer.from_pretrained(dir, gguf_file=...).
  smollm2-reduced/tokenizer.json, tokenizer_config.json, chat_template.jinja, generation_config.json
                   the real SmolLM2 tokenizer.json cut down to the vocab entries and merges that the corpus
                   uses (same ids, same pre-tokenizer); the script checks it gives the same ids as the full one.
  pretokenizer-corpus.json   the corpus split by the `tokenizers` Split pre-tokenizer with the GPT-2, Llama-3 and
                   Qwen2 regexes (and Digits + GPT-2 for SmolLM), to check the hand-written matchers.
  smollm2-added-tokens.json   the reduced SmolLM2 tokenizer.json plus added tokens with lstrip / rstrip / single_word,
      and added-tokens-corpus.json with the ids `tokenizers` gives.
  tiny-spm/        a tiny real SentencePiece BPE model (byte_fallback) converted like LlamaConverter (legacy):
      tokenizer.json, tokenizer_config.json (Llama-2 chat template), tokenizer.model (the SentencePiece model),
      tokenizer.gguf (vocab-only GGUF, tokenizer.ggml.model = "llama", tokens/scores/token_type),
      spm-corpus.json (ids with and without special tokens, decode results; checked against sentencepiece).
"""
import json
import os
import random
import shutil
import sys

import sentencepiece as spm
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import generate_merges

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "tokenizer")
HF_DIR = "/opt/peers/models/smollm2-135m-hf"
GGUF = os.path.expanduser("~/.cache/swift-qlora/SmolLM2-135M-Instruct.Q4_1.gguf")

SMOLLM_CORPUS = [
    "Hello, we can use",
    "The capital of France is",
    "\n",
    "Hello world! 123",
    "  multiple   spaces",
    "Café déjà vu.",
    "a  1 and\t\t2 then   42",
    "",
    " ",
    "   ",
    "trailing spaces   ",
    "tabs\tand\t\ttabs\n\nnewlines\r\nwindows\n",
    "\n\n\n  \n\t \n",
    "Numbers: 3.14159, 1,000,000 and 98765432101234567890; x²+y³=z⁴ ½ Ⅻ ٣٤",
    "I'm sure you'll see they've done it, we'd go, it's John's. DON'T SHOUT'S",
    "Punctuation!!! ??? ... --- ((([[[{{{}}}]]]))) @#$%^&*_+=|\\~`<>",
    "日本語のテキストと中文文本，한국어 텍스트。",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
    "Accents: naïve coöperate façade résumé Ångström Øresund ß",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷 1️⃣",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
    "text<|endoftext|>more<|im_end|><|im_end|>  <|im_start|> x",
    "<|im_start <|im_end| |im_end|> <|unknown|>",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2#frag",
    "e-mail: someone@example.com, path C:\\Users\\me\\file.txt",
    "Zero\u200bwidth\u00a0nbsp\u3000ideographic space\u2028line sep",
    "MiXeD CaSe WoRdS and ALLCAPS and lowercase",
    "a" * 50 + " " + "ab" * 20,
    "Ünïcödé\u0301 combining e\u0301 and precomposed é",
    # control bytes 0x04 0x06 0x13 0x14 0x16 0x1D have no token in SmolLM2's vocabulary: dropped
    "ctrl\u0004x !\u0006! ..\u0013.. \u0014\u0016\u001d end\u0001\u0002\u007f",
]

SPM_TRAIN_WORDS = ("the quick brown fox jumps over lazy dog hello world tokenizer sentence piece model "
                   "llama chat user assistant system token byte fallback training data small tiny "
                   "café naïve über résumé").split()

SPM_CORPUS = [
    "Hello world",
    "the quick brown fox",
    "  two leading spaces",
    "multiple   inner    spaces",
    "trailing space ",
    " ",
    "",
    "tabs\tand\nnewlines\n",
    "café naïve über résumé",
    "Out of vocab: 漢字 ж ø Ω 😀 👍🏽",
    "Zahlen 12345 und Sonderzeichen ~^`|",
    "<s>hi</s> there",
    "hi <s> there </s>",
    "[INST] What is a llama? [/INST] A llama is an animal.",
    "xyzzy QQQ jjjjj",
]

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def check(cond, msg):
    if not cond:
        sys.exit("FIXTURE CHECK FAILED: " + msg)


def bpe_trace(word, ranks, vocab):
    """Byte-level BPE of one pre-tokenized fragment; returns (all intermediate symbols, merges used).
    Symbols missing from the vocabulary are dropped first (BPE without unk_token)."""
    syms = [c for c in word if c in vocab]
    seen, used = set(syms), set()
    while len(syms) > 1:
        best = None
        for i in range(len(syms) - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        used.add((syms[i], syms[i + 1]))
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
        seen.add(syms[i])
    return seen, used


def make_smollm2():
    hf = AutoTokenizer.from_pretrained(HF_DIR)
    from_gguf = AutoTokenizer.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF))
    full = json.load(open(os.path.join(HF_DIR, "tokenizer.json"), encoding="utf-8"))
    smollm = tokenizers.Tokenizer.from_file(os.path.join(HF_DIR, "tokenizer.json"))
    smollm.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])

    cases = []
    for text in SMOLLM_CORPUS:
        ids_hf = hf(text, add_special_tokens=False)["input_ids"]
        check(ids_hf == from_gguf(text, add_special_tokens=False)["input_ids"], f"gguf_file tokenizer differs on {text!r}")
        ids_smollm = smollm.encode(text, add_special_tokens=False).ids
        check(hf.decode(ids_hf) == text or "\u0004" in text, f"hf round trip {text!r}")
        cases.append({"text": text, "ids_smollm": ids_smollm, "ids_hf": ids_hf, "decoded": hf.decode(ids_hf),
                      "decoded_skip_special": hf.decode(ids_hf, skip_special_tokens=True)})
    json.dump({"model": "SmolLM2-135M-Instruct", "cases": cases},
              open(os.path.join(OUT, "smollm2-corpus.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)

    # Reduced tokenizer.json: the byte alphabet, the added tokens, and every symbol / merge the corpus touches
    # (with either pre-tokenizer). BPE restricted to a superset of the merges it applies is unchanged.
    ranks = {tuple(m): i for i, m in enumerate(full["model"]["merges"])}
    vocab = full["model"]["vocab"]
    keep_syms, keep_merges = set(), set()
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    keep_syms.update(byte_alphabet)
    added = {t["content"] for t in full["added_tokens"]}
    for text in SMOLLM_CORPUS:
        for pt in (hf.backend_tokenizer.pre_tokenizer, smollm.pre_tokenizer):
            # split out added tokens the same way the tokenizer does
            for piece in split_added(text, added):
                if piece in added:
                    continue
                for frag, _ in pt.pre_tokenize_str(piece):
                    s, u = bpe_trace(frag, ranks, vocab)
                    keep_syms |= s
                    keep_merges |= u
    red = json.loads(json.dumps(full))
    red["model"]["vocab"] = {k: v for k, v in vocab.items() if k in keep_syms or k in added}
    red["model"]["merges"] = [m for m in full["model"]["merges"] if tuple(m) in keep_merges]
    d = os.path.join(OUT, "smollm2-reduced")
    os.makedirs(d, exist_ok=True)
    json.dump(red, open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False)
    for f in ("tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(os.path.join(HF_DIR, f), os.path.join(d, f))
    red_tok = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    for c in cases:
        check(red_tok.encode(c["text"], add_special_tokens=False).ids == c["ids_hf"], f"reduced differs {c['text']!r}")
    print(f"smollm2: {len(cases)} cases, reduced vocab {len(red['model']['vocab'])}, merges {len(red['model']['merges'])}, "
          f"{sum(c['ids_hf'] != c['ids_smollm'] for c in cases)} cases where Digits changes the ids")


def split_added(text, added):
    """Leftmost-longest split of text by the added-token strings (enough for this corpus)."""
    out, i, start = [], 0, 0
    toks = sorted(added, key=len, reverse=True)
    while i < len(text):
        m = next((t for t in toks if text.startswith(t, i)), None)
        if m:
            if start < i:
                out.append(text[start:i])
            out.append(m)
            i += len(m)
            start = i
        else:
            i += 1
    if start < len(text):
        out.append(text[start:])
    return out


def make_tiny_spm():
    d = os.path.join(OUT, "tiny-spm")
    os.makedirs(d, exist_ok=True)
    rng = random.Random(0)
    lines = []
    for _ in range(4000):
        n = rng.randint(3, 12)
        lines.append(" ".join(rng.choice(SPM_TRAIN_WORDS) for _ in range(n)) + rng.choice([".", "!", "?", ",", "", " 42"]))
    model_path = os.path.join(d, "tokenizer.model")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=model_path[:-len(".model")], vocab_size=420, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, minloglevel=2)
    if os.path.exists(model_path[:-len(".model")] + ".vocab"):
        os.remove(model_path[:-len(".model")] + ".vocab")
    sp = spm.SentencePieceProcessor(model_file=model_path)
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    # sentencepiece types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i) else 1
             for i in range(n)]

    # As transformers' LlamaConverter (legacy=True, add_prefix_space default) builds it.
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = generate_merges(vocab, {p: s for p, s in zip(pieces, scores)})
    tok = tokenizers.Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.add_special_tokens([tokenizers.AddedToken(p, normalized=False, special=True)
                            for i, p in enumerate(pieces) if types[i] in (2, 3)])
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = LLAMA2_CHAT_TEMPLATE
    fast.save_pretrained(d)
    cfg_path = os.path.join(d, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    # tokenizer_class stays PreTrainedTokenizerFast: transformers 5's LlamaTokenizer class would rebuild the pipeline
    # as Metaspace(prepend_scheme="always"), which differs from sentencepiece on leading spaces ("  two").
    cfg.update({"add_bos_token": True, "add_eos_token": False, "legacy": True,
                "tokenizer_class": "PreTrainedTokenizerFast"})
    if "chat_template" not in cfg and os.path.exists(os.path.join(d, "chat_template.jinja")):
        cfg["chat_template"] = open(os.path.join(d, "chat_template.jinja")).read()
        os.remove(os.path.join(d, "chat_template.jinja"))
    json.dump(cfg, open(cfg_path, "w"), indent=2, ensure_ascii=False)
    for f in ("special_tokens_map.json",):
        p = os.path.join(d, f)
        if os.path.exists(p):
            os.remove(p)
    fast = AutoTokenizer.from_pretrained(d)
    check(type(fast).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend"), f"AutoTokenizer gave {type(fast).__name__}")
    # transformers 5's own Llama pipeline (Metaspace pre-tokenizer, no normalizer), saved as a second
    # tokenizer.json so the Swift Metaspace path is tested too.
    from transformers import LlamaTokenizer
    meta = LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    check(meta.backend_tokenizer.pre_tokenizer is not None, "metaspace pre-tokenizer")
    meta.backend_tokenizer.save(os.path.join(OUT, "tiny-spm-metaspace.json"))

    cases = []
    for text in SPM_CORPUS:
        ids = fast(text, add_special_tokens=False)["input_ids"]
        ids_bos = fast(text)["input_ids"]
        if "<s>" not in text and "</s>" not in text:
            check(ids == sp.encode(text), f"sentencepiece differs from converted on {text!r}: {ids} vs {sp.encode(text)}")
        check(ids_bos == [1] + ids, f"bos {text!r}")
        ids_meta = meta(text, add_special_tokens=False)["input_ids"]
        cases.append({"text": text, "ids": ids, "ids_with_special": ids_bos, "ids_metaspace": ids_meta,
                      "decoded_metaspace": meta.decode(ids_meta),
                      "tokens": fast.convert_ids_to_tokens(ids),
                      "decoded": fast.decode(ids), "decoded_with_special": fast.decode(ids_bos),
                      "decoded_skip_special": fast.decode(ids_bos, skip_special_tokens=True)})
    json.dump({"cases": cases}, open(os.path.join(d, "spm-corpus.json"), "w", encoding="utf-8"),
              ensure_ascii=False, indent=1)

    import gguf
    w = gguf.GGUFWriter(os.path.join(d, "tokenizer.gguf"), "llama")
    w.add_name("tiny-spm tokenizer")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    w.add_chat_template(LLAMA2_CHAT_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"tiny-spm: vocab {n}, merges {len(merges)}, {len(cases)} cases")


GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def make_pretokenizer_corpus():
    def split(pattern):
        return pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated", invert=False)
    pts = {
        "gpt2": split(GPT2_REGEX),
        "llama3": split(LLAMA3_REGEX),
        "qwen2": split(QWEN2_REGEX),
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), split(GPT2_REGEX)]),
    }
    texts = [t for t in SMOLLM_CORPUS if t] + ["He'S HERE'LL 'VE", "x \n\n y\r\n\r\nz", "!!!\n\n\nabc", "  \t\n  a"]
    out = {name: [{"text": t, "fragments": [f for f, _ in pt.pre_tokenize_str(t)]} for t in texts]
           for name, pt in pts.items()}
    # The ByteLevel pre-tokenizer's own regex must agree with GPT2_REGEX on this corpus.
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for c in out["gpt2"]:
        enc = [f for f, _ in bl.pre_tokenize_str(c["text"])]
        mine = [f for f, _ in pre_tokenizers.Sequence([split(GPT2_REGEX), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]).pre_tokenize_str(c["text"])]
        check(enc == mine, f"GPT-2 regex differs from ByteLevel on {c['text']!r}")
    json.dump(out, open(os.path.join(OUT, "pretokenizer-corpus.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)
    print(f"pretokenizer corpus: {len(texts)} texts x {len(pts)} pre-tokenizers")


def make_added_tokens():
    # Added with explicit ids above the real vocabulary, also entered in the model vocab: tokenizers would
    # otherwise number them from the reduced vocabulary's length, colliding with real ids.
    red = json.load(open(os.path.join(OUT, "smollm2-reduced", "tokenizer.json"), encoding="utf-8"))
    extra = [("<L>", True, False, False, True), ("<R>", False, True, False, True), ("<LR>", True, True, False, True),
             ("word", False, False, True, False), ("<|im_start|>user", False, False, False, False)]
    for k, (content, l, r, sw, special) in enumerate(extra):
        red["added_tokens"].append({"id": 49152 + k, "content": content, "single_word": sw, "lstrip": l, "rstrip": r,
                                    "normalized": False, "special": special})
        red["model"]["vocab"][content] = 49152 + k
    path = os.path.join(OUT, "smollm2-added-tokens.json")
    json.dump(red, open(path, "w", encoding="utf-8"), ensure_ascii=False)
    tok = tokenizers.Tokenizer.from_file(path)
    check(tok.token_to_id("<LR>") == 49154, "added token ids")
    texts = ["a <L> b", "a  <L>b", "a <R>  b", "x\n<LR>\n y", "word words sword word.", "<|im_start|>user\nhi",
             "<|im_start|>assistant", "<L><R><LR>", "   <L>", "<R>   "]
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids,
              "decoded_skip_special": tok.decode(tok.encode(t, add_special_tokens=False).ids, skip_special_tokens=True)}
             for t in texts]
    json.dump({"cases": cases}, open(os.path.join(OUT, "added-tokens-corpus.json"), "w", encoding="utf-8"),
              ensure_ascii=False, indent=1)
    print(f"added tokens: {len(cases)} cases")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    make_smollm2()
    make_pretokenizer_corpus()
    make_added_tokens()
    make_tiny_spm()
