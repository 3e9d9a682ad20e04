#!/usr/bin/env python3
"""Encoding throughput of qtrain's tokenizers against HF `tokenizers` (Rust) on WikiText-2 test.

Both encode the same texts (each non-empty line of wiki.test.raw, without special tokens). qtrain
is single-threaded; HF is timed one line per call (one thread, includes a little Python call
overhead) and with encode_batch (its Rayon thread pool over all CPUs). qtrain's time is the
`qtrain tokenize --file F --lines --no-special` process minus the same process on an empty file
(tokenizer load), so it measures encoding only.

  . scripts/env.sh && $QTRAIN_VENV/bin/python scripts/bench/tokenize_bench.py --qtrain build/qtrain
"""
import argparse
import os
import subprocess
import tempfile
import time

SHARED = os.environ.get("QTRAIN_SHARED_DATA", os.path.join(os.path.dirname(__file__), "../../../shared/data"))


def best_of(n, fn):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qtrain", required=True, help="the qtrain executable")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import transformers
    import tokenizers

    with open(os.path.join(SHARED, "corpus", "wikitext-2-raw", "wiki.test.raw"), encoding="utf-8", newline="") as f:
        lines = [l for l in f.read().split("\n") if l]
    nbytes = sum(len(l.encode()) for l in lines)
    tmp = tempfile.mkdtemp()
    src, empty = os.path.join(tmp, "wiki.txt"), os.path.join(tmp, "empty.txt")
    with open(src, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")
    open(empty, "w").close()

    cases = [
        ("gpt2 (vocab+merges)", os.path.join(SHARED, "tokenizers", "gpt2"), lambda d: transformers.GPT2Tokenizer.from_pretrained(d)),
        ("qwen2 (vocab+merges, NFC)", os.path.join(SHARED, "tokenizers", "qwen2"), lambda d: transformers.Qwen2Tokenizer.from_pretrained(d)),
        ("llama2 (sentencepiece)", os.path.join(SHARED, "tokenizers", "llama2-spm"), lambda d: transformers.LlamaTokenizer.from_pretrained(d)),
    ]
    print(f"WikiText-2 test: {len(lines)} lines, {nbytes / 1e6:.2f} MB; best of {args.repeat}; {os.cpu_count()} CPUs")
    print(f"{'tokenizer':28s} {'qtrain MB/s':>12s} {'HF 1 thread':>12s} {'HF batch':>12s} {'qtrain/HF1':>11s} {'qtrain/HFb':>11s}")
    for name, d, make in cases:
        run = lambda f: subprocess.run([args.qtrain, "tokenize", d, "--file", f, "--lines", "--no-special"], check=True,
                                       stdout=subprocess.DEVNULL)
        t_q = best_of(args.repeat, lambda: run(src)) - best_of(args.repeat, lambda: run(empty))
        backend = make(d).backend_tokenizer
        t_1 = best_of(args.repeat, lambda: [backend.encode(l, add_special_tokens=False) for l in lines])
        t_b = best_of(args.repeat, lambda: backend.encode_batch(lines, add_special_tokens=False))
        mb = nbytes / 1e6
        print(f"{name:28s} {mb / t_q:12.1f} {mb / t_1:12.1f} {mb / t_b:12.1f} {t_1 / t_q:10.2f}x {t_b / t_q:10.2f}x")
    print(f"(HF tokenizers {tokenizers.__version__}; ratios > 1 mean qtrain is faster)")


if __name__ == "__main__":
    main()
