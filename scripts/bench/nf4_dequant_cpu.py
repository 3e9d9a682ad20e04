"""CPU NF4 dequantize throughput: qtrain vs bitsandbytes' CPU dequantize_4bit, same tensors, same run.

Run (after building nf4_tool):
    . scripts/env.sh && $QTRAIN_VENV/bin/python scripts/bench/nf4_dequant_cpu.py build-nf4/tests/nf4_tool
Throughput counts bytes moved: packed codes + 8-bit scales read, bf16/fp32 output written. Best of N runs.
Two modes, each side the same: "fresh" allocates the output per call (bnb's default, qtrain's
dequantize_4bit), "reused" writes into one preallocated output (bnb's out=, qtrain's dequantize_4bit_out).
On the CPU a fresh output of tens of MiB is page-faulted in on every call, which costs more than the decode.
QTRAIN_CPU_ISA=scalar|avx2 in the environment caps qtrain's instruction set (default: the best the CPU has).
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import time

import torch
import bitsandbytes
import bitsandbytes.functional as F

REPS = 10


def bench_bnb(packed, st, reps, out=None):
    """Best seconds of one bnb dequantize; with out, into it where bnb can (bnb 0.50 has no CPU out= kernel:
    then it is timed allocating, its only CPU path, and the caller is told so by a None second value)."""
    if out is not None:
        try:
            F.dequantize_4bit(packed, st, out=out)
        except NotImplementedError:
            return bench_bnb(packed, st, reps), None
        return bench_bnb_loop(packed, st, reps, out), out
    return bench_bnb_loop(packed, st, reps, None)


def bench_bnb_loop(packed, st, reps, out):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        F.dequantize_4bit(packed, st, out=out)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_qtrain(tool, packed, st, shape, out_dtype, reps, reuse=False):
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        packed.reshape(-1).numpy().tofile(tmp / "packed.bin")
        st.absmax.numpy().tofile(tmp / "absmax.bin")
        st.state2.absmax.numpy().tofile(tmp / "nested_absmax.bin")
        st.state2.code.numpy().tofile(tmp / "nested_map.bin")
        bits = int(st.offset.reshape(1).view(torch.int32).item()) & 0xFFFFFFFF
        (tmp / "offset.txt").write_text(f"{bits}\n")
        name = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}[out_dtype]
        (tmp / "manifest.txt").write_text(
            f"dtype {name}\nshape {' '.join(map(str, shape))}\ntype nf4\nblocksize 64\ndouble_quant 1\n"
            f"out_dtype {name}\nreps {reps}\nreuse_out {int(reuse)}\n"
        )
        out = subprocess.run([tool, "bench", str(tmp)], capture_output=True, text=True, check=True)
        return float(out.stdout.strip())


def main():
    tool = sys.argv[1] if len(sys.argv) > 1 else "build-nf4/tests/nf4_tool"
    print(f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'shape':>14} {'dtype':>9} {'output':>7} {'qtrain GB/s':>12} {'bnb GB/s':>9} {'ratio':>6}")
    for shape in [(4096, 4096), (11008, 4096), (1024, 1024)]:
        for out_dtype in [torch.bfloat16, torch.float32]:
            w = torch.randn(shape).to(out_dtype)
            packed, st = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
            n = w.numel()
            moved = n / 2 + n / 64 + n * w.element_size()
            for reuse in (False, True):
                out = torch.empty(shape, dtype=out_dtype) if reuse else None
                note = ""
                if reuse:
                    t_bnb, used = bench_bnb(packed, st, REPS, out)
                    if used is None:
                        note = "  (bnb has no CPU out=: its allocating path)"
                else:
                    t_bnb = bench_bnb(packed, st, REPS)
                t_q = bench_qtrain(tool, packed, st, shape, out_dtype, REPS, reuse)
                print(f"{str(shape):>14} {str(out_dtype)[6:]:>9} {'reused' if reuse else 'fresh':>7} "
                      f"{moved / t_q / 1e9:12.2f} {moved / t_bnb / 1e9:9.2f} {t_bnb / t_q:6.2f}x{note}")


if __name__ == "__main__":
    main()
