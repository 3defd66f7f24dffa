#!/usr/bin/env python3
"""Embedding benchmark: tabnode's CPU encoder against sentence-transformers
(torch, the model's reference implementation) on the same texts and the
same number of threads, in one run; prints both and the ratio.

    scripts/bench/embed.py MODEL_DIR [TEXTS] [ROUNDS]

MODEL_DIR holds all-MiniLM-L6-v2's files (`scripts/fetch-model.py
all-minilm-l6-v2`); run with a Python that has torch and
sentence-transformers (scripts/bench.sh sets one up in
~/.cache/tabnode/venv-st) and a built example (`cargo build -p
tabnode-infer --example embed_bench`, or pass EMBED_BENCH=path).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

WORDS = ("network browser tab node model vector query relay token proof compute volunteer "
         "peer inference embedding search document answer question fast private open "
         "the a of to in and is on for with that by from").split()


def texts(n):
    """Deterministic sentences of 6 to 60 words."""
    out, x = [], 12345
    for i in range(n):
        words = []
        for _ in range(6 + (i * 7) % 55):
            x = (x * 1103515245 + 12345) % 2**31
            words.append(WORDS[x % len(WORDS)])
        out.append(" ".join(words).capitalize() + ".")
    return out


def reference(model_dir, items, rounds, threads):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = SentenceTransformer(model_dir, device="cpu")
    load_s = time.perf_counter() - t0
    tokens = sum(len(model.tokenize([t])["input_ids"][0]) for t in items)
    model.encode(items, batch_size=32)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        model.encode(items, batch_size=32)
        best = min(best, time.perf_counter() - t)
    return {"engine": f"sentence-transformers (torch {torch.__version__}, batch 32)", "load_s": load_s,
            "texts": len(items), "tokens": tokens, "texts_per_s": len(items) / best,
            "tokens_per_s": tokens / best, "threads": threads}


def main():
    model_dir = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    items = texts(n)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    exe = os.environ.get("EMBED_BENCH", os.path.join(target, "debug", "examples", "embed_bench"))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(items, f)
    try:
        out = subprocess.run([exe, model_dir, f.name, str(rounds)], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
    finally:
        os.remove(f.name)
    ours = json.loads(out.strip().splitlines()[-1])
    ref = reference(model_dir, items, rounds, ours["threads"])
    print(json.dumps({"tabnode": ours, "reference": ref}, indent=1))
    print(f"{ours['texts']} texts, {ours['tokens']} tokens, {ours['threads']} threads")
    print(f"{'':24}{'tabnode':>12}{'reference':>12}{'ratio':>8}")
    for key in ("texts_per_s", "tokens_per_s", "load_s"):
        print(f"{key:24}{ours[key]:12.2f}{ref[key]:12.2f}{ours[key] / ref[key]:8.2f}")


if __name__ == "__main__":
    main()
