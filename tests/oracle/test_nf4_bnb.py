"""NF4/FP4 (+ double quant) bytes and dequantized values: qtrain vs bitsandbytes >= 0.50 on the CPU, bit-exact.

qtrain runs through tests/ops/nf4_tool (path in $QTRAIN_NF4_TOOL) on raw little-endian files; see that file
for the protocol. Every case draws fresh random tensors; the seed is printed in the case id on failure.
"""

import os
import pathlib
import subprocess
import tempfile

import numpy as np
import pytest
import torch

import bitsandbytes as bnb  # a missing package is a failure: CI has every oracle
import bitsandbytes.functional as F

TOOL = os.environ.get("QTRAIN_NF4_TOOL")
pytestmark = pytest.mark.skipif(not TOOL, reason="QTRAIN_NF4_TOOL not set (ctest sets it)")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def test_bnb_version_has_cuda_matching_cpu_rounding():
    # formats.md §1.3: earlier CPU paths quantize differently; only >= 0.50 is a bit-exact oracle.
    major, minor = (int(x) for x in bnb.__version__.split(".")[:2])
    assert (major, minor) >= (0, 50), f"expected bitsandbytes >= 0.50, found {bnb.__version__}"


def run_tool(verb, workdir, manifest=None, expect_ok=True):
    if manifest is not None:
        (workdir / "manifest.txt").write_text("".join(f"{k} {v}\n" for k, v in manifest.items()))
    proc = subprocess.run([TOOL, verb, str(workdir)], capture_output=True, text=True)
    if expect_ok:
        assert proc.returncode == 0, f"nf4_tool {verb} failed ({proc.returncode}): {proc.stderr}"
    return proc


def read(workdir, name, dtype):
    return torch.from_numpy(np.fromfile(workdir / name, dtype=np.uint8).copy()).view(dtype)


def write(workdir, name, t):
    t.contiguous().view(torch.uint8).numpy().tofile(workdir / name)


def make_input(gen, shape, dtype, kind):
    n = int(np.prod(shape))
    x = torch.randn(n, generator=gen, dtype=torch.float32)
    if kind == "scaled":
        # per-tensor magnitude from 1e-30 to 1e30 (fp16 range limited below)
        exp = float(torch.randint(-30, 31, (1,), generator=gen))
        x = x * 10.0**exp
    elif kind == "zero_blocks":
        x = x.reshape(-1)
        x[: n // 3] = 0  # whole leading blocks (and maybe part of one) are exactly zero
        if n > 10:
            x[-3:] = 0
    elif kind == "outliers":
        idx = torch.randint(0, n, (max(1, n // 50),), generator=gen)
        x[idx] *= 1000
    elif kind == "ties":
        # values exactly on NF4/FP4 midpoints after scaling by an exact power-of-two absmax
        code = F.get_4bit_type("nf4", device="cpu")
        mids = (code[:-1] + code[1:]) / 2
        x = mids[torch.randint(0, 15, (n,), generator=gen)] * 4.0
        x[::64] = 4.0
    elif kind == "tiny":
        x = x * 1e-39  # subnormal float32: absmax below the 1e-38 floor bnb applies
    if dtype == torch.float16:
        x = x.clamp(-60000, 60000)
    return x.reshape(shape).to(dtype)


def bnb_dequantize(packed, st, out_dtype):
    """bnb's dequantize_4bit through its default (pure torch) backend, which follows the CUDA kernel.

    bitsandbytes 0.50.2's CPU C kernel (cdequantize_blockwise_cpu_*), which F.dequantize_4bit picks for an even
    last dimension, returns wrong values when a row is not a whole number of blocks (e.g. shape [64, 64] with
    blocksize 256, or [7, 96] with blocksize 64; see test_bnb_cpu_c_dequant_disagrees_on_short_rows). Its
    default backend has the documented semantics (formats.md §1.4), so that is the oracle here.
    """
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    absmax = st.absmax
    if st.nested:
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
    code = _get_4bit_code(st.quant_type, packed.device)
    return _dequantize_4bit_compute(packed.reshape(-1), absmax.float(), code, st.blocksize, st.shape, out_dtype)


def bnb_quantize(x, quant_type, blocksize, double_quant):
    packed, st = F.quantize_4bit(x, blocksize=blocksize, compress_statistics=double_quant, quant_type=quant_type)
    return packed, st


def compare_case(tmp, x, quant_type, blocksize, double_quant, out_dtype):
    dtype_name = [k for k, v in DTYPES.items() if v == x.dtype][0]
    out_name = [k for k, v in DTYPES.items() if v == out_dtype][0]
    manifest = {
        "dtype": dtype_name,
        "shape": " ".join(str(d) for d in x.shape),
        "type": quant_type,
        "blocksize": blocksize,
        "double_quant": int(double_quant),
        "out_dtype": out_name,
    }
    write(tmp, "input.bin", x)
    run_tool("quantize", tmp, manifest)
    packed, st = bnb_quantize(x, quant_type, blocksize, double_quant)
    n = x.numel()
    nb = (n + blocksize - 1) // blocksize

    ours_packed = read(tmp, "packed.bin", torch.uint8)
    assert ours_packed.numel() == packed.numel() == (n + 1) // 2
    mism = (ours_packed != packed.reshape(-1)).nonzero().reshape(-1)
    assert mism.numel() == 0, (
        f"packed bytes differ at {mism.numel()} of {packed.numel()} positions, first {mism[:5].tolist()}: "
        f"qtrain {ours_packed[mism[:5]].tolist()} vs bnb {packed.reshape(-1)[mism[:5]].tolist()}"
    )
    if double_quant:
        qa = read(tmp, "absmax.bin", torch.uint8)
        assert torch.equal(qa, st.absmax), f"quantized absmax differs at {(qa != st.absmax).nonzero()[:5].tolist()}"
        a2 = read(tmp, "nested_absmax.bin", torch.float32)
        assert torch.equal(a2.view(torch.int32), st.state2.absmax.view(torch.int32)), (
            f"nested absmax differs: qtrain {a2[:4].tolist()} vs bnb {st.state2.absmax[:4].tolist()}"
        )
        off_bits = int((tmp / "offset.txt").read_text())
        bnb_bits = int(st.offset.reshape(1).view(torch.int32).item()) & 0xFFFFFFFF
        assert off_bits == bnb_bits, f"offset bits {off_bits:#x} (qtrain) vs {bnb_bits:#x} (bnb)"
        nmap = read(tmp, "nested_map.bin", torch.float32)
        assert torch.equal(nmap.view(torch.int32), st.state2.code.view(torch.int32)), "nested quant map differs"
    else:
        am = read(tmp, "absmax.bin", torch.float32)
        assert am.numel() == nb
        assert torch.equal(am.view(torch.int32), st.absmax.view(torch.int32)), (
            f"absmax differs at {(am != st.absmax).nonzero()[:5].tolist()}"
        )

    ref = bnb_dequantize(packed, st, out_dtype)
    ours = read(tmp, "dequant.bin", out_dtype).reshape(x.shape)
    assert_same_values(ours, ref.reshape(x.shape))
    return packed, st


def assert_same_values(ours, ref):
    # bit-identical up to the sign of zero (bnb's C dequant and its Python fallback disagree on -0.0)
    a = ours.float().reshape(-1)
    b = ref.float().reshape(-1)
    same = (a.view(torch.int32) == b.view(torch.int32)) | ((a == 0) & (b == 0))
    bad = (~same).nonzero().reshape(-1)
    assert bad.numel() == 0, (
        f"dequantized values differ at {bad.numel()} positions, first {bad[:5].tolist()}: "
        f"qtrain {a[bad[:5]].tolist()} vs bnb {b[bad[:5]].tolist()}"
    )


SHAPES = [(1,), (2,), (3,), (7, 5), (31,), (64,), (65,), (127, 3), (256,), (257,), (1000,), (33, 97), (64, 64),
          (300, 17), (4096,), (4097,), (128, 1000)]
KINDS = ["normal", "scaled", "zero_blocks", "outliers", "ties", "tiny"]


def cases():
    out = []
    seed = 0
    for qt in ["nf4", "fp4"]:
        for dq in [True, False]:
            for dtype in DTYPES:
                for i, shape in enumerate(SHAPES):
                    kind = KINDS[(i + seed) % len(KINDS)]
                    bs = BLOCKSIZES[(i * 3 + seed) % len(BLOCKSIZES)]
                    out.append((qt, dq, dtype, shape, kind, bs, seed))
                    seed += 1
    return out


@pytest.mark.parametrize("qt,dq,dtype,shape,kind,bs,seed", cases())
def test_quantize_and_dequantize_match_bnb(qt, dq, dtype, shape, kind, bs, seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    if kind == "tiny" and dtype != "float32":
        kind = "normal"  # bf16/fp16 would flush 1e-39 to zero, which zero_blocks already covers
    x = make_input(gen, shape, DTYPES[dtype], kind)
    with tempfile.TemporaryDirectory() as d:
        out_dtype = list(DTYPES.values())[seed % 3]  # dequantize to every dtype, not only the input's
        compare_case(pathlib.Path(d), x, qt, bs, dq, out_dtype)


@pytest.mark.parametrize("qt", ["nf4", "fp4"])
@pytest.mark.parametrize("bs", BLOCKSIZES)
def test_every_blocksize_large_tensor(qt, bs):
    gen = torch.Generator().manual_seed(bs)
    x = torch.randn(257, 515, generator=gen).to(torch.bfloat16)  # n = 132355: not a multiple of 64 or 256
    with tempfile.TemporaryDirectory() as d:
        compare_case(pathlib.Path(d), x, qt, bs, True, torch.bfloat16)


def test_all_zero_blocks_cpu_bytes_and_cuda_bytes_both_dequantize_to_zero():
    # formats.md §1.3: bnb's CPU backend (and qtrain) pack an all-zero NF4 block as 0x77; bnb's CUDA kernel
    # computes 0 * (1/0) = NaN and packs 0x00. qtrain must read either form back as exact zeros.
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 64, generator=gen)
    x[1] = 0
    x[3, :] = 0
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        packed, st = compare_case(tmp, x, "nf4", 64, False, torch.float32)
        assert (packed.reshape(4, 32)[1] == 0x77).all() and (packed.reshape(4, 32)[3] == 0x77).all()
        assert st.absmax[1].item() == 0.0
        cuda_form = packed.clone().reshape(4, 32)
        cuda_form[1] = 0x00
        cuda_form[3] = 0x00
        write(tmp, "packed.bin", cuda_form)
        st.absmax.numpy().tofile(tmp / "absmax.bin")
        run_tool("dequantize", tmp)
        out = read(tmp, "dequant.bin", torch.float32).reshape(4, 64)
        assert (out[1] == 0).all() and (out[3] == 0).all()
        assert torch.equal(out[0], bnb_dequantize(packed, st, torch.float32)[0])


@pytest.mark.parametrize("dq", [True, False])
@pytest.mark.parametrize("qt", ["nf4", "fp4"])
@pytest.mark.parametrize("out_dtype", list(DTYPES))
def test_dequantize_bnb_produced_state(dq, qt, out_dtype):
    # Dequantize alone, from bnb's bytes (as loaded from a bnb-4bit checkpoint), into every output dtype.
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(96, 70, generator=gen)  # n = 6720: 105 blocks of 64, last nested block partial
    packed, st = bnb_quantize(x, qt, 64, dq)
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        write(tmp, "packed.bin", packed)
        if dq:
            write(tmp, "absmax.bin", st.absmax)
            write(tmp, "nested_absmax.bin", st.state2.absmax)
            write(tmp, "nested_map.bin", st.state2.code)
            bits = int(st.offset.reshape(1).view(torch.int32).item()) & 0xFFFFFFFF
            (tmp / "offset.txt").write_text(f"{bits}\n")
        else:
            write(tmp, "absmax.bin", st.absmax)
        run_tool("dequantize", tmp, {"dtype": "float32", "shape": "96 70", "type": qt, "blocksize": 64,
                                     "double_quant": int(dq), "out_dtype": out_dtype})
        ours = read(tmp, "dequant.bin", DTYPES[out_dtype])
        assert_same_values(ours, bnb_dequantize(packed, st, DTYPES[out_dtype]))
        st.dtype = DTYPES[out_dtype]  # the public entry point (C kernel: correct for whole-block rows like these)
        assert_same_values(ours, F.dequantize_4bit(packed, st))


def test_bnb_cpu_c_dequant_disagrees_on_short_rows():
    # Documents why bnb_dequantize uses the default backend: if this starts failing, bnb fixed its CPU kernel
    # and F.dequantize_4bit can become the oracle again.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 96, generator=gen)
    packed, st = bnb_quantize(x, "nf4", 64, False)
    c_kernel = F.dequantize_4bit(packed, st)
    default = bnb_dequantize(packed, st, torch.float32)
    assert (default - x).abs().max() <= 0.5 * x.abs().max()
    assert not torch.equal(c_kernel, default)


def test_signed_dynamic_map_matches_bnb():
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        run_tool("dynmap", tmp)
        ours = read(tmp, "nested_map.bin", torch.float32)
        ref = F.create_dynamic_map(signed=True).float()
        assert torch.equal(ours.view(torch.int32), ref.view(torch.int32)), (
            f"dynamic map differs at {(ours != ref).nonzero().reshape(-1)[:5].tolist()}"
        )


def test_negative_control_perturbed_input_changes_bytes():
    # The comparison can fail: feeding bnb a tensor that differs from qtrain's input by one element must be caught.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1024, generator=gen)
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        write(tmp, "input.bin", x)
        run_tool("quantize", tmp, {"dtype": "float32", "shape": "1024", "type": "nf4", "blocksize": 64,
                                   "double_quant": 1, "out_dtype": "float32"})
        y = x.clone()
        y[500] = -y[500]
        packed, _ = bnb_quantize(y, "nf4", 64, True)
        assert not torch.equal(read(tmp, "packed.bin", torch.uint8), packed.reshape(-1))


def test_negative_control_nonfinite_input_is_rejected():
    x = torch.randn(300)
    x[129] = float("nan")
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        write(tmp, "input.bin", x)
        proc = run_tool("quantize", tmp, {"dtype": "float32", "shape": "300", "type": "nf4", "blocksize": 64,
                                          "double_quant": 1, "out_dtype": "float32"}, expect_ok=False)
        assert proc.returncode == 1
        assert "finite" in proc.stderr and "block 2" in proc.stderr, proc.stderr
