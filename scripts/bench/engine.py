#!/usr/bin/env python3
"""Engine benchmark: tabnode's native engine against llama.cpp on the same
GGUF, the same prompt and the same number of threads, in one run; prints
both and the ratios (tabnode / llama.cpp).

    scripts/bench/engine.py MODEL.gguf [PROMPT_TOKENS] [DECODE_TOKENS]

Needs the reference venv of scripts/fixtures/llama_reference.py
(~/.cache/tabnode/venv-ref, llama-cpp-python built with GGML_NATIVE=OFF)
and a built example (`cargo build -p tabnode-infer --example
engine_bench`, or pass ENGINE_BENCH=path).
"""
import json
import os
import resource
import subprocess
import sys
import time

TEXT = ("The quick brown fox jumps over the lazy dog. Machine learning models are trained on "
        "large amounts of text, and they learn to predict the next word in a sentence. ")


def llama_cpp(path, n_prompt, n_decode, threads):
    import numpy as np
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=n_prompt + n_decode + 8, n_threads=threads,
                n_threads_batch=threads, n_batch=512, verbose=True)
    load_s = time.perf_counter() - t0
    ids = []
    while len(ids) < n_prompt:
        ids += llm.tokenize(TEXT.encode(), add_bos=False)
    ids = ids[:n_prompt]
    llm.eval(ids[:1])  # warm-up
    llm.reset()
    t1 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    for _ in range(n_decode):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([nxt])
    decode_s = time.perf_counter() - t2
    return {
        "engine": "llama.cpp (llama-cpp-python)",
        "load_s": round(load_s, 3),
        "prefill_tps": round(n_prompt / prefill_s, 2),
        "decode_tps": round(n_decode / decode_s, 2),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": threads,
    }


def main():
    path = sys.argv[1]
    n_prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    n_decode = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    exe = os.environ.get("ENGINE_BENCH") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tabnode/target")),
        "debug/examples/engine_bench")
    ours = json.loads(subprocess.check_output([exe, path, str(n_prompt), str(n_decode)]).decode().strip().splitlines()[-1])
    # llama.cpp logs to stderr; keep it out of the report.
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(devnull, 2)
    try:
        ref = llama_cpp(path, n_prompt, n_decode, ours["threads"])
    finally:
        os.dup2(saved, 2)
    size = os.path.getsize(path)
    print(json.dumps({"tabnode": ours, "llama_cpp": ref}, indent=1))
    print(f"file {size / 1e6:.1f} MB, {ours['threads']} threads, prompt {n_prompt}, decode {n_decode}")
    print(f"{'':24}{'tabnode':>12}{'llama.cpp':>12}{'ratio':>8}")
    for key, label in [("prefill_tps", "prefill tokens/s"), ("decode_tps", "decode tokens/s"), ("load_s", "load s")]:
        print(f"{label:24}{ours[key]:>12}{ref[key]:>12}{ours[key] / ref[key]:>8.2f}")
    print(f"{'peak RSS / file size':24}{ours['peak_rss'] / size:>12.2f}{ref['peak_rss'] / size:>12.2f}")


if __name__ == "__main__":
    main()
