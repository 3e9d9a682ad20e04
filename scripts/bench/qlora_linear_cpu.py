"""QLoRA linear forward + backward on the CPU: qtrain's op vs PEFT's LoRA layer on a bitsandbytes Linear4bit, same
shapes, same thread count, same run.

Run (after building the bench target):
    . scripts/env.sh && ninja -C build-adamw qlora_linear_bench && \\
    $QTRAIN_VENV/bin/python scripts/bench/qlora_linear_cpu.py build-adamw/tests/qlora_linear_bench [--threads 2]

Both sides: W [N, K] NF4 + double quant (blocksize 64), fp32 compute, x [T, K] fp32 requiring grad, LoRA A [r, K],
B [N, r] fp32 with alpha = 2r and no dropout; one iteration is y = layer(x); y.backward(gy), grads cleared between
iterations; one warm-up, then best and median of REPS. The ratio is peer time / qtrain time (> 1: qtrain faster).
"""

import argparse
import statistics
import subprocess
import time

import torch


def bench_peft(tokens, k, n, r, reps):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.float32, compress_statistics=True,
                                          quant_type="nf4")

    torch.manual_seed(1234)
    block = Block()
    w = torch.randn(n, k) * 0.02
    block.proj.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True,
                                          blocksize=64)
    block.to("cpu")  # Params4bit quantizes on its first move to a device
    block.is_loaded_in_4bit = True  # what transformers sets; PEFT then dispatches to its bnb LoRA layer
    model = get_peft_model(block, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["proj"]))
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.01)  # as the qtrain side: no trivially-zero product
    assert type(layer).__module__.endswith("lora.bnb"), f"expected PEFT's bnb LoRA layer, found {type(layer)}"
    assert layer.base_layer.weight.quant_state is not None, "expected the base weight quantized to NF4"
    x = torch.randn(tokens, k, requires_grad=True)
    gy = torch.randn(tokens, n)
    params = [x, layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        y = layer(x)
        y.backward(gy)
        t1 = time.perf_counter()
        for p in params:
            p.grad = None
        if i > 0:
            times.append(t1 - t0)
    return min(times), statistics.median(times)


def bench_qtrain(tool, tokens, k, n, r, threads, reps):
    out = subprocess.run([tool, str(tokens), str(k), str(n), str(r), str(threads), str(reps)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"{tool} failed ({out.returncode}): {out.stderr}")
    best, median = (float(v) for v in out.stdout.split())
    return best, median


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tool", nargs="?", default="build-adamw/tests/qlora_linear_bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shapes", default="512x4096x4096", help="comma-separated TxKxN")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import bitsandbytes
    import peft

    print(f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}, peft {peft.__version__}, "
          f"threads {args.threads}, r {args.rank}, reps {args.reps} (+1 warm-up)")
    print(f"{'T x K -> N':>18} {'qtrain best/med s':>18} {'peft+bnb best/med s':>20} {'ratio (best)':>12}")
    for shape in args.shapes.split(","):
        t, k, n = (int(v) for v in shape.split("x"))
        q_best, q_med = bench_qtrain(args.tool, t, k, n, args.rank, args.threads, args.reps)
        p_best, p_med = bench_peft(t, k, n, args.rank, args.reps)
        print(f"{f'{t} x {k} -> {n}':>18} {q_best:8.3f}/{q_med:<9.3f} {p_best:9.3f}/{p_med:<10.3f} "
              f"{p_best / q_best:11.2f}x")


if __name__ == "__main__":
    main()
