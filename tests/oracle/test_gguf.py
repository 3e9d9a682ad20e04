"""GGUF export (export/gguf_*.h) against gguf-py, the Python package of llama.cpp (pinned in
scripts/requirements.txt), and against transcriptions of llama.cpp's reference quantizers.

(a) Blocks. gguf-py 0.19 quantizes Q8_0, Q5_0 and Q5_1 ("bit-exact with ggml-quants.c", its comment says):
    our bytes must equal its bytes. For Q4_K, Q5_K and Q6_K gguf-py only dequantizes, so (i) our
    dequantization equals gguf.quants.dequantize bit for bit on our blocks and on random blocks, (ii) our
    quantization error is within each type's bound, and (iii) our bytes equal a numpy float32 transcription
    of ggml-quants.c's quantize_row_q4_K_ref / q5_K_ref / q6_K_ref written here (the limitation: that
    transcription, like the C++, was written by us from the same C source; no llama.cpp binary or
    llama-cpp-python runs here, so no llama.cpp runtime has read these files).
(b) Files. qtrain writes the shared tiny Llama (dims 64/192: not multiples of 256, so Q4_K_M falls back to
    Q5_0/Q8_0 there, as llama-quantize does) and a random Llama with 256-multiple dims in f16, q8_0 and
    q4_k_m; gguf.GGUFReader reads every file: metadata equals what convert_hf_to_gguf.py would write
    (tokens/scores/types from sentencepiece as _create_vocab_sentencepiece builds them, special ids, add_*
    flags and chat template from gguf.SpecialVocab), tensor names/shapes/types follow the rules of
    llama.cpp's llama_tensor_get_type for Q4_K_M, and every tensor dequantized by gguf-py gives back the
    HF weight (Q/K rows un-permuted with the inverse of convert's permute) within its type's bound, and
    bit-exactly where gguf-py quantizes (f16, Q8_0, Q5_0).

(c) Semantics. A float64 numpy Llama that reads the f16 file with llama.cpp's conventions (GGUF names,
    RoPE type NORM on adjacent pairs, tied output) gives transformers' logits of the same weights; with
    NEOX rope (the wrong convention for permuted weights) it does not.
(d) A byte-level BPE tokenizer (tokenizer.json made here with `tokenizers`): tokens, types and merges as
    convert's get_vocab_base builds them with transformers' AutoTokenizer, special ids / add_* flags /
    template from gguf.SpecialVocab(load_merges=True); tokenizer.ggml.pre from the pre-tokenizer.

The tool is tests/export/gguf_tool (path in $QTRAIN_GGUF_TOOL).
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

TOOL = os.environ.get("QTRAIN_GGUF_TOOL")
pytestmark = pytest.mark.skipif(not TOOL, reason="QTRAIN_GGUF_TOOL not set (ctest sets it)")

F32 = np.float32


def tool(*args):
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"gguf_tool {' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr}")
    return r.stdout


def ours_quantize(tmp_path, qtype, x):
    rows, cols = x.shape
    src, dst = tmp_path / "x.f32", tmp_path / "q.bin"
    x.astype("<f4").tofile(src)
    tool("quantize", qtype, rows, cols, src, dst)
    return np.fromfile(dst, dtype=np.uint8).reshape(rows, -1)


def ours_dequantize(tmp_path, qtype, q, rows, cols):
    src, dst = tmp_path / "q.bin", tmp_path / "y.f32"
    q.tofile(src)
    tool("dequantize", qtype, rows, cols, src, dst)
    return np.fromfile(dst, dtype="<f4").reshape(rows, cols)


def awkward(rng, rows, cols):
    """Gaussian rows with the cases that trip quantizers: an all-zero block, a constant block, a block
    with one outlier, exact ties at half steps, tiny and huge magnitudes, all-positive and all-negative
    blocks."""
    x = rng.standard_normal((rows, cols)).astype(F32)
    x[0, :32] = 0
    if cols >= 64:
        x[0, 32:64] = 0.25
    x[1, 5] = 40.0
    x[2, :] = np.round(x[2, :] * 4) / 4  # many values on a quarter grid (ties after scaling)
    if rows > 3:
        x[3, :] *= 1e-6
    if rows > 4:
        x[4, :] = np.abs(x[4, :]) + 1
    if rows > 5:
        x[5, :] = -np.abs(x[5, :]) * 300
    return x


# ---------------------------------------------------------------------------------------------------
# (a) blocks

@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0", "Q5_1"])
def test_blocks_equal_gguf_py_quantize(tmp_path, qtype):
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    for rows, cols in [(7, 32), (6, 96), (9, 512)]:
        x = awkward(rng, rows, cols)
        ours = ours_quantize(tmp_path, qtype, x)
        theirs = gguf.quants.quantize(x, QT[qtype])
        assert ours.shape == theirs.shape
        diff = np.argwhere(ours != theirs)
        assert diff.size == 0, f"{qtype} [{rows},{cols}]: first differing byte (row, byte) {diff[0]}"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"])
def test_dequantize_equals_gguf_py(tmp_path, qtype):
    """Random block bytes (scales forced to finite halves) and our own blocks: our dequantization equals
    gguf-py's bit for bit."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    qt = QT[qtype]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    rows, cols = 5, block * 3
    q = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    # the f16 fields: d (and dmin / m) at the start, except Q6_K whose d is last
    halves = rng.standard_normal((rows, cols // block, 2)).astype(np.float16).view(np.uint8).reshape(rows, cols // block, 4)
    if qtype == "Q6_K":
        q[..., -2:] = halves[..., :2]
    elif qtype in ("Q5_1", "Q4_K", "Q5_K"):
        q[..., :4] = halves
    else:
        q[..., :2] = halves[..., :2]
    q = q.reshape(rows, -1)
    ours = ours_dequantize(tmp_path, qtype, q, rows, cols)
    theirs = gguf.quants.dequantize(q, qt).reshape(rows, cols)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.astype(F32).view(np.uint32))
    x = awkward(rng, 6, 512)
    qb = ours_quantize(tmp_path, qtype, x)
    np.testing.assert_array_equal(ours_dequantize(tmp_path, qtype, qb, 6, 512).view(np.uint32),
                                  gguf.quants.dequantize(qb, qt).reshape(6, 512).astype(F32).view(np.uint32))


def error_bound(qtype, x):
    """Per-element bound on |x − deq(q(x))| for x [rows, cols] (the derivation is in
    tests/export/gguf_quants_test.cpp): half a step of the block grid plus f16 rounding of the scale for
    Q8_0/Q5_0/Q5_1; for K-quants a full step of the block's own grid plus what the 6-/8-bit block scales
    (quantized against the super-block's largest) can cost at the clamped ends (Q5_0: a full step, its
    grid −16..15 ends a step short on the side opposite the largest magnitude); plus half an f16
    subnormal times the largest code product for scales below the normal range."""
    rows, cols = x.shape
    x = x.astype(np.float64)
    e16, sub = 2.0**-11, 2048 * 2.0**-25
    if qtype == "F32":
        return np.zeros_like(x)
    if qtype == "F16":
        return np.abs(x) * e16 + 2.0**-25
    if qtype in ("Q8_0", "Q5_0", "Q5_1"):
        b = x.reshape(rows, -1, 32)
        amax = np.abs(b).max(-1, keepdims=True)
        lo, hi = b.min(-1, keepdims=True), b.max(-1, keepdims=True)
        if qtype == "Q8_0":
            bound = amax / 127 * 0.5 + amax * 128 * e16 / 127
        elif qtype == "Q5_0":
            # a full step: the largest magnitude maps to code 0 (−16·d), the opposite end stops at +15·d
            bound = amax / 16 + amax * 17 * e16 / 16
        else:
            bound = (hi - lo) / 31 * (0.5 + 32 * e16) + np.abs(lo) * e16
        return np.broadcast_to(bound + sub, b.shape).reshape(rows, cols) * 1.0001 + 1e-30
    s = x.reshape(rows, -1, 256)
    if qtype == "Q6_K":
        b = s.reshape(rows, -1, 16, 16)
        A = np.abs(s).max(-1)[..., None, None]
        bound = np.abs(b).max(-1, keepdims=True) / 31 + A / 128 + A * 64 * e16
    else:
        b = s.reshape(rows, -1, 8, 32)
        lo, hi = np.minimum(b.min(-1, keepdims=True), 0), b.max(-1, keepdims=True)
        rm = ((hi - lo).max(-2, keepdims=True) + (-lo).max(-2, keepdims=True))
        bound = (hi - lo) / (15 if qtype == "Q4_K" else 31) + rm / 63 + rm * 64 * e16
    return np.broadcast_to(bound + sub, b.shape).reshape(rows, cols) * 1.0001 + 1e-30


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"])
def test_quantization_error_within_bound(tmp_path, qtype):
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    x = awkward(rng, 8, 1024)
    deq = gguf.quants.dequantize(ours_quantize(tmp_path, qtype, x), QT[qtype]).reshape(x.shape)
    err = np.abs(deq - x)
    bound = error_bound(qtype, x)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert (err <= bound).all(), f"{qtype}: error {err[worst]} > bound {bound[worst]} at {worst}"
    rel_rmse = float(np.sqrt(((deq - x)[6:] ** 2).mean() / (x[6:] ** 2).mean()))
    print(f"{qtype}: relative RMSE on Gaussian rows {rel_rmse:.4f}")
    # Negative control: the bound is tight enough to notice the codes of the neighbouring grid point.
    if qtype in ("Q8_0", "Q4_K", "Q6_K"):
        assert (err > 0).any()


# --- numpy float32 transcriptions of ggml-quants.c's K-quant reference quantizers ---------------------

def nearest_int(v):
    i = (F32(v) + F32(12582912.0)).view(np.int32)
    return int((int(i) & 0x007FFFFF) - 0x00400000)


def h16(v):
    return np.float16(F32(v))


def make_qkx2(x, nmax, rmin, rdelta, nstep):
    n = len(x)
    w = [None] * n
    sum_x2 = F32(0)
    for v in x:
        sum_x2 = F32(sum_x2 + v * v)
    av_x = F32(np.sqrt(F32(sum_x2 / F32(32))))
    for i in range(n):
        w[i] = F32(av_x + F32(abs(x[i])))
    mn, mx = x[0], x[0]
    sum_w = w[0]
    sum_x = F32(sum_w * x[0])
    for i in range(1, n):
        mn = x[i] if x[i] < mn else mn
        mx = x[i] if x[i] > mx else mx
        sum_w = F32(sum_w + w[i])
        sum_x = F32(sum_x + F32(w[i] * x[i]))
    if mn > 0:
        mn = F32(0)
    if mx == mn:
        return F32(0), [0] * n, F32(-mn)
    iscale = F32(F32(nmax) / F32(mx - mn))
    scale = F32(F32(1) / iscale)
    L = [max(0, min(nmax, nearest_int(F32(iscale * F32(x[i] - mn))))) for i in range(n)]
    best = F32(0)
    for i in range(n):
        diff = F32(F32(F32(scale * F32(L[i])) + mn) - x[i])
        best = F32(best + F32(w[i] * F32(diff * diff)))
    for s in range(nstep + 1):
        iscale = F32(F32(F32(F32(rmin) + F32(F32(rdelta) * F32(s))) + F32(nmax)) / F32(mx - mn))
        aux = [max(0, min(nmax, nearest_int(F32(iscale * F32(x[i] - mn))))) for i in range(n)]
        sl = sl2 = sxl = F32(0)
        for i in range(n):
            l = F32(aux[i])
            sl = F32(sl + F32(w[i] * l))
            sl2 = F32(sl2 + F32(F32(w[i] * l) * l))
            sxl = F32(sxl + F32(F32(w[i] * l) * x[i]))
        D = F32(F32(sum_w * sl2) - F32(sl * sl))
        if D > 0:
            this_scale = F32(F32(F32(sum_w * sxl) - F32(sum_x * sl)) / D)
            this_min = F32(F32(F32(sl2 * sum_x) - F32(sl * sxl)) / D)
            if this_min > 0:
                this_min = F32(0)
                this_scale = F32(sxl / sl2)
            cur = F32(0)
            for i in range(n):
                diff = F32(F32(F32(this_scale * F32(aux[i])) + this_min) - x[i])
                cur = F32(cur + F32(w[i] * F32(diff * diff)))
            if cur < best:
                L, best, scale, mn = aux, cur, this_scale, this_min
    return scale, L, F32(-mn)


def ref_q45_k(x, nmax):
    """quantize_row_q4_K_ref (nmax 15) / quantize_row_q5_K_ref (nmax 31), one row of 256·k floats."""
    rmin, rdelta, nstep = (F32(-1.0), F32(0.1), 20) if nmax == 15 else (F32(-0.5), F32(0.1), 15)
    out = []
    for sb in x.reshape(-1, 256):
        sb = [F32(v) for v in sb]
        scales, mins, L = [], [], []
        for j in range(8):
            s, l, m = make_qkx2(sb[32 * j:32 * j + 32], nmax, rmin, rdelta, nstep)
            scales.append(s), mins.append(m), L.extend(l)
        max_scale = max([F32(0)] + [s for s in scales if s > 0])
        max_min = max([F32(0)] + [m for m in mins if m > 0])
        inv_s = F32(F32(63) / max_scale) if max_scale > 0 else F32(0)
        inv_m = F32(F32(63) / max_min) if max_min > 0 else F32(0)
        ls = [min(63, nearest_int(F32(inv_s * s)) & 0xFF) for s in scales]
        lm = [min(63, nearest_int(F32(inv_m * m)) & 0xFF) for m in mins]
        sc = [0] * 12
        for j in range(8):
            if j < 4:
                sc[j], sc[j + 4] = ls[j], lm[j]
            else:
                sc[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4)
                sc[j - 4] |= (ls[j] >> 4) << 6
                sc[j] |= (lm[j] >> 4) << 6
        d, dmin = h16(F32(max_scale / F32(63))), h16(F32(max_min / F32(63)))
        for j in range(8):
            dj = F32(F32(d) * F32(ls[j]))
            if dj == 0:
                continue
            dm = F32(F32(dmin) * F32(lm[j]))
            for i in range(32):
                L[32 * j + i] = max(0, min(nmax, nearest_int(F32(F32(sb[32 * j + i] + dm) / dj))))
        blk = bytearray(np.array([d, dmin], dtype=np.float16).tobytes()) + bytearray(sc)
        if nmax == 15:
            for c in range(0, 256, 64):
                blk += bytearray(L[c + l] | (L[c + l + 32] << 4) for l in range(32))
        else:
            qh = [0] * 32
            ql = bytearray()
            for k, c in enumerate(range(0, 256, 64)):
                for l in range(32):
                    a, b = L[c + l], L[c + l + 32]
                    if a > 15:
                        a -= 16
                        qh[l] |= 1 << (2 * k)
                    if b > 15:
                        b -= 16
                        qh[l] |= 2 << (2 * k)
                    ql.append(a | (b << 4))
            blk += bytearray(qh) + ql
        out.append(np.frombuffer(bytes(blk), dtype=np.uint8))
    return np.concatenate(out)


def make_qx_rmse1(x, nmax):
    n = len(x)
    amax, mx = F32(0), F32(0)
    for v in x:
        if F32(abs(v)) > amax:
            amax, mx = F32(abs(v)), v
    if amax < F32(1e-15):
        return F32(0), [0] * n
    iscale = F32(F32(-nmax) / mx)
    sumlx = suml2 = F32(0)
    L = []
    for v in x:
        l = max(-nmax, min(nmax - 1, nearest_int(F32(iscale * v))))
        L.append(l + nmax)
        w = F32(v * v)
        sumlx = F32(sumlx + F32(F32(w * v) * F32(l)))
        suml2 = F32(suml2 + F32(F32(w * F32(l)) * F32(l)))
    scale = F32(sumlx / suml2) if suml2 != 0 else F32(0)
    best = F32(scale * sumlx)
    for s in range(-9, 10):
        if s == 0:
            continue
        iscale = F32(-F32(F32(nmax) + F32(F32(0.1) * F32(s))) / mx)
        sumlx = suml2 = F32(0)
        for v in x:
            l = max(-nmax, min(nmax - 1, nearest_int(F32(iscale * v))))
            w = F32(v * v)
            sumlx = F32(sumlx + F32(F32(w * v) * F32(l)))
            suml2 = F32(suml2 + F32(F32(w * F32(l)) * F32(l)))
        if suml2 > 0 and F32(sumlx * sumlx) > F32(best * suml2):
            L = [nmax + max(-nmax, min(nmax - 1, nearest_int(F32(iscale * v)))) for v in x]
            scale = F32(sumlx / suml2)
            best = F32(scale * sumlx)
    return scale, L


def ref_q6_k(x):
    out = []
    for sb in x.reshape(-1, 256):
        sb = [F32(v) for v in sb]
        scales, L = [], []
        max_scale = max_abs = F32(0)
        for ib in range(16):
            s, l = make_qx_rmse1(sb[16 * ib:16 * ib + 16], 32)
            scales.append(s), L.extend(l)
            if F32(abs(s)) > max_abs:
                max_abs, max_scale = F32(abs(s)), s
        if max_abs < F32(1e-15):
            out.append(np.zeros(210, dtype=np.uint8))
            continue
        iscale = F32(F32(-128) / max_scale)
        d = h16(F32(F32(1) / iscale))
        sc = [min(127, nearest_int(F32(iscale * s))) for s in scales]
        for j in range(16):
            dj = F32(F32(d) * F32(sc[j]))
            if dj == 0:
                continue
            for i in range(16):
                L[16 * j + i] = max(-32, min(31, nearest_int(F32(sb[16 * j + i] / dj)))) + 32
        ql, qh = bytearray(), bytearray()
        for j in (0, 128):
            a = bytearray(64)
            for l in range(32):
                q1, q2, q3, q4 = L[j + l], L[j + l + 32], L[j + l + 64], L[j + l + 96]
                a[l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                a[l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
                qh.append((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6))
            ql += a
        blk = ql + qh + np.array(sc, dtype=np.int8).tobytes() + np.array([d], dtype=np.float16).tobytes()
        out.append(np.frombuffer(bytes(blk), dtype=np.uint8))
    return np.concatenate(out)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quant_bytes_equal_reference_transcription(tmp_path, qtype):
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    x = awkward(rng, 6, 256)  # six super-blocks, each with one of the awkward cases
    ours = ours_quantize(tmp_path, qtype, x)
    for r in range(x.shape[0]):
        ref = ref_q6_k(x[r]) if qtype == "Q6_K" else ref_q45_k(x[r], 15 if qtype == "Q4_K" else 31)
        diff = np.flatnonzero(ours[r] != ref)
        assert diff.size == 0, f"{qtype} row {r}: bytes differ from byte {diff[0]}"
    # Negative control: moving one weight by a quarter of its super-block's range (several grid steps)
    # changes the transcription's bytes, so the comparison above sees codes, not just scales.
    y = x[5].copy()
    y[7] = F32(y[7] + F32(0.25) * (y.max() - y.min()))
    ref_y = ref_q6_k(y) if qtype == "Q6_K" else ref_q45_k(y, 15 if qtype == "Q4_K" else 31)
    assert (ref_y != ours[5]).any()


# ---------------------------------------------------------------------------------------------------
# (b) files

def convert_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def expected_type(ftype, name, ne0, n_layer, tied):
    """convert_hf_to_gguf.py (f16, q8_0) and llama-quantize Q4_K_M (llama_tensor_get_type_impl +
    tensor_type_fallback), for a non-70B Llama."""
    if name.endswith("_norm.weight") or not name.endswith(".weight") or name == "rope_freqs.weight":
        return "F32"
    if ftype == "f16":
        return "F16"
    if ftype == "q8_0":
        return "Q8_0" if ne0 % 32 == 0 else "F16"
    t = "Q4_K"
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        t = "Q8_0" if ne0 % 256 else "Q6_K"
    elif "attn_v.weight" in name and use_more_bits(layer, n_layer):
        t = "Q6_K"
    elif "ffn_down" in name and use_more_bits(layer, n_layer):
        t = "Q6_K"
    fb = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
    if ne0 % 256 and t in fb:
        t = fb[t]
    if ne0 % 32:
        t = "F16"
    return t


def expected_sp_vocab(model_dir, vocab_size):
    """convert_hf_to_gguf.py _create_vocab_sentencepiece, for a directory without added_tokens.json."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    sp.LoadFromFile(str(model_dir / "tokenizer.model"))
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [5] * vocab_size
    for i in range(sp.vocab_size()):
        t = 1
        if sp.IsUnknown(i):
            t = 2
        elif sp.IsControl(i):
            t = 3
        elif sp.IsUnused(i):
            t = 5
        elif sp.IsByte(i):
            t = 6
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), sp.GetScore(i), t
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    for k, e in tc.get("added_tokens_decoder", {}).items():
        i = int(k)
        if i >= vocab_size:
            continue
        c = e["content"]
        special = e.get("special") or (c.startswith("<|") and c.endswith("|>"))
        types[i] = 3 if special else 4
        scores[i] = -1000.0
        tokens[i] = c if special else c.replace("\u2581", " ")
    return tokens, scores, types


def field_value(reader, key):
    f = reader.get_field(key)
    assert f is not None, f"missing metadata key {key}"
    return f.contents()


def check_file(path, model_dir, ftype, hf, cfg, exact_name_check=True):
    reader = gguf.GGUFReader(path)
    n_layer, n_head, n_kv = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // n_head)
    tied = cfg.get("tie_word_embeddings", False)
    # --- metadata
    expect = {
        "general.architecture": "llama",
        "general.alignment": 32,
        "general.file_type": {"f16": 1, "q8_0": 7, "q4_k_m": 15}[ftype],
        "general.quantization_version": 2,
        "llama.block_count": n_layer,
        "llama.context_length": cfg["max_position_embeddings"],
        "llama.embedding_length": cfg["hidden_size"],
        "llama.feed_forward_length": cfg["intermediate_size"],
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_kv,
        "llama.rope.freq_base": float(np.float32(cfg.get("rope_theta", 10000.0))),
        "llama.attention.layer_norm_rms_epsilon": float(np.float32(cfg["rms_norm_eps"])),
        "llama.vocab_size": cfg["vocab_size"],
        "llama.rope.dimension_count": head_dim,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
    }
    if "head_dim" in cfg:
        expect["llama.attention.key_length"] = head_dim
        expect["llama.attention.value_length"] = head_dim
    tokens, scores, types = expected_sp_vocab(model_dir, cfg["vocab_size"])
    sv = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    names = {"bos": "bos", "eos": "eos", "unk": "unknown", "sep": "seperator", "pad": "padding", "mask": "mask"}
    for typ, tid in sv.special_token_ids.items():
        if typ in names:
            expect[f"tokenizer.ggml.{names[typ]}_token_id"] = tid
    for typ, v in sv.add_special_token.items():
        if typ in ("bos", "eos", "sep"):
            expect[f"tokenizer.ggml.add_{typ}_token"] = v
    if isinstance(sv.chat_template, str):
        expect["tokenizer.chat_template"] = sv.chat_template
    for k, v in expect.items():
        got = field_value(reader, k)
        assert got == v, f"{k}: {got!r} != {v!r}"
    assert field_value(reader, "tokenizer.ggml.tokens") == tokens
    np.testing.assert_array_equal(np.array(field_value(reader, "tokenizer.ggml.scores"), dtype=F32), np.array(scores, dtype=F32))
    assert field_value(reader, "tokenizer.ggml.token_type") == types
    # no key we did not expect, apart from the name
    extra = set(reader.fields) - set(expect) - {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                                                "general.name", "general.type", "GGUF.version", "GGUF.tensor_count",
                                                "GGUF.kv_count"}
    assert not extra, f"unexpected keys {extra}"
    assert reader.alignment == 32
    # --- tensors
    hf_of = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    sub = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(n_layer):
        for g, h in sub.items():
            hf_of[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h}.weight"
    want = {n for n, h in hf_of.items() if h in hf}
    got_names = [t.name for t in reader.tensors]
    assert set(got_names) == want
    # llama-quantize's order: outside the blocks first, then by block, by name within each
    key = [(int(n.split(".")[1]) if n.startswith("blk.") else -1, n) for n in got_names]
    assert key == sorted(key)
    kinds = {}
    for t in reader.tensors:
        w = hf[hf_of[t.name]].float().numpy()
        assert list(t.shape) == list(reversed(w.shape)), t.name
        tname = t.tensor_type.name
        kinds[t.name] = tname
        assert tname == expected_type(ftype, t.name, w.shape[-1], n_layer, tied), f"{t.name}: {tname}"
        if ".attn_q." in t.name:
            w_perm = convert_permute(w, n_head)
        elif ".attn_k." in t.name:
            w_perm = convert_permute(w, n_kv)
        else:
            w_perm = w
        deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
        if tname in ("F32", "F16", "Q8_0", "Q5_0"):
            # gguf-py produces these itself: the bytes must be its bytes
            theirs = gguf.quants.quantize(w_perm.astype(F32), t.tensor_type)
            np.testing.assert_array_equal(np.asarray(t.data).view(np.uint8).reshape(theirs.view(np.uint8).shape),
                                          theirs.view(np.uint8), err_msg=t.name)
        bound = error_bound(tname, w_perm.reshape(-1, w_perm.shape[-1])).reshape(w_perm.shape)
        assert (np.abs(deq - w_perm) <= bound).all(), t.name
        # the inverse permutation gives back HF's rows
        if ".attn_q." in t.name or ".attn_k." in t.name:
            n = n_head if ".attn_q." in t.name else n_kv
            np.testing.assert_array_equal(convert_unpermute(w_perm, n), w)
            assert (np.abs(convert_unpermute(deq, n) - w) <= convert_unpermute(bound, n)).all(), t.name
    return kinds


@pytest.fixture(scope="module")
def tiny(shared_data):
    d = shared_data / "models" / "llama2c-xs-tok512-hf"
    if not d.is_dir():
        pytest.skip("tiny model not in shared data")
    return d


@pytest.mark.parametrize("ftype", ["f16", "q8_0", "q4_k_m"])
def test_tiny_model_file(tmp_path, tiny, ftype):
    out = tmp_path / f"tiny-{ftype}.gguf"
    printed = tool("export", tiny, out, ftype)
    cfg = json.loads((tiny / "config.json").read_text())
    hf = load_file(tiny / "model.safetensors")
    kinds = check_file(out, tiny, ftype, hf, cfg)
    assert f"bytes {out.stat().st_size}" in printed
    if ftype == "q4_k_m":
        # dims 64 / 192: Q4_K → Q5_0, Q6_K → Q8_0 (layers 2 and 4 of 5 for attn_v and ffn_down)
        assert kinds["blk.2.attn_v.weight"] == "Q8_0" and kinds["blk.0.attn_v.weight"] == "Q5_0"
        assert kinds["blk.4.ffn_down.weight"] == "Q8_0" and kinds["blk.1.ffn_down.weight"] == "Q5_0"
        assert kinds["token_embd.weight"] == "Q8_0"


def make_random_llama(dst, tiny, hidden=256, ffn=512, layers=8, heads=4, kv=2, tied=True, seed=0):
    """A random Llama whose rows are multiples of 256, with the tiny model's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=128,
                      rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    m.save_pretrained(dst, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny / f, dst / f)
    # a chat template, so the key is exercised
    tc = json.loads((dst / "tokenizer_config.json").read_text())
    tc["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (dst / "tokenizer_config.json").write_text(json.dumps(tc))


@pytest.mark.parametrize("tied", [True, False])
def test_k_quant_mix_on_256_multiple_model(tmp_path, tiny, tied):
    d = tmp_path / "model"
    make_random_llama(d, tiny, tied=tied)
    out = tmp_path / "m.gguf"
    tool("export", d, out, "q4_k_m")
    cfg = json.loads((d / "config.json").read_text())
    hf = load_file(d / "model.safetensors")
    kinds = check_file(out, d, "q4_k_m", hf, cfg)
    # 8 layers: use_more_bits picks layers 0, 3, 6, 7
    for i in range(8):
        want = "Q6_K" if i in (0, 3, 6, 7) else "Q4_K"
        assert kinds[f"blk.{i}.attn_v.weight"] == want
        assert kinds[f"blk.{i}.ffn_down.weight"] == ("Q6_K" if i in (0, 3, 6, 7) else "Q4_K")
        assert kinds[f"blk.{i}.attn_q.weight"] == "Q4_K"
    assert kinds["token_embd.weight"] == ("Q6_K" if tied else "Q4_K")
    if not tied:
        assert kinds["output.weight"] == "Q6_K"
    assert field_value(gguf.GGUFReader(out), "tokenizer.chat_template").startswith("{% for m in messages %}")


# ---------------------------------------------------------------------------------------------------
# (c) semantics: what llama.cpp computes from the file

def llama_cpp_forward(reader, ids, neox_rope=False):
    """A float64 numpy Llama that reads a GGUF file the way llama.cpp's llama graph uses it: tensors by
    their GGUF names, RoPE of type NORM (rotating adjacent pairs (2i, 2i+1) of each head, the layout
    convert's Q/K permutation produces), tied output = token_embd when there is no output.weight.
    neox_rope=True rotates (i, i + head_dim/2) instead: the negative control."""
    f = {k: v.contents() for k, v in reader.fields.items() if not k.startswith("tokenizer.")}
    n_layer, n_head, n_kv = f["llama.block_count"], f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
    eps, base = f["llama.attention.layer_norm_rms_epsilon"], f["llama.rope.freq_base"]
    W = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(list(reversed(t.shape.tolist()))).astype(np.float64)
         for t in reader.tensors}
    hd = f["llama.rope.dimension_count"]
    T = len(ids)
    pos = np.arange(T)[:, None]
    inv = base ** (-np.arange(0, hd, 2) / hd)
    if "rope_freqs.weight" in W:  # llama3 scaling: llama.cpp divides each frequency by its factor
        inv = inv / W["rope_freqs.weight"]
    ang = pos * inv[None, :]  # [T, hd/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # x [T, heads, hd]
        y = x.copy()
        if neox_rope:
            a, b = x[..., : hd // 2], x[..., hd // 2:]
            y[..., : hd // 2] = a * cos[:, None] - b * sin[:, None]
            y[..., hd // 2:] = a * sin[:, None] + b * cos[:, None]
        else:
            a, b = x[..., 0::2], x[..., 1::2]
            y[..., 0::2] = a * cos[:, None] - b * sin[:, None]
            y[..., 1::2] = a * sin[:, None] + b * cos[:, None]
        return y

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    h = W["token_embd.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(n_layer):
        p = f"blk.{i}."
        x = norm(h, W[p + "attn_norm.weight"])
        q = rope((x @ W[p + "attn_q.weight"].T).reshape(T, n_head, hd))
        k = rope((x @ W[p + "attn_k.weight"].T).reshape(T, n_kv, hd))
        v = (x @ W[p + "attn_v.weight"].T).reshape(T, n_kv, hd)
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = np.einsum("hqk,khd->qhd", s / s.sum(-1, keepdims=True), v).reshape(T, n_head * hd)
        h = h + a @ W[p + "attn_output.weight"].T
        x = norm(h, W[p + "ffn_norm.weight"])
        g = x @ W[p + "ffn_gate.weight"].T
        h = h + ((g / (1 + np.exp(-g))) * (x @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
    out = W.get("output.weight", W["token_embd.weight"])
    return norm(h, W["output_norm.weight"]) @ out.T


def test_llama_cpp_semantics_give_transformers_logits(tmp_path, tiny):
    """The f16 file, run with llama.cpp's conventions, gives transformers' logits of the same model with
    its matrices rounded to f16 (float64 numpy vs float32 torch: agreement to ~1e-6 of the logit scale).
    This checks the Q/K permutation's direction, not just that it is convert's formula."""
    from transformers import AutoModelForCausalLM
    out = tmp_path / "tiny-f16.gguf"
    tool("export", tiny, out, "f16")
    reader = gguf.GGUFReader(out)
    model = AutoModelForCausalLM.from_pretrained(tiny, torch_dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() == 2:  # norms stay float32 in the file
                prm.copy_(prm.half().float())
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}")
    ids = np.random.default_rng(seed).integers(0, 512, size=24)
    ids[0] = 1
    with torch.no_grad():
        ref = model(torch.tensor(ids)[None]).logits[0].double().numpy()
    got = llama_cpp_forward(reader, ids)
    scale = np.abs(ref).max()
    err = np.abs(got - ref).max() / scale
    print(f"max |llama.cpp-style − transformers| / max|logit| = {err:.2e}")
    # measured 1.4e-6 typically and 1.06e-5 on one seed of random ids (fp32 sums in two orders over 24
    # tokens); the wrong-RoPE control below is > 1e-2, so 1e-4 still separates them by two orders.
    assert err < 1e-4, f"seed {seed}: {err:.2e}"
    wrong = np.abs(llama_cpp_forward(reader, ids, neox_rope=True) - ref).max() / scale
    print(f"negative control (NEOX rope on the permuted weights): {wrong:.2e}")
    assert wrong > 1e-2


# ---------------------------------------------------------------------------------------------------
# (d) byte-level BPE tokenizers

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def make_bpe_llama(dst, tiny, llama3_pre):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    if llama3_pre:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [l for l in (tiny.parent.parent / "corpus" / "wiki_demo.txt").read_text().splitlines() if l.strip()][:400] \
        if (tiny.parent.parent / "corpus" / "wiki_demo.txt").exists() else ["the quick brown fox jumps over the lazy dog " * 20]
    tok.train_from_iterator(text, trainer)
    tok.add_tokens(["my extra"])  # a non-special added token (USER_DEFINED)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    dst.mkdir(parents=True, exist_ok=True)
    tok.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"}))
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=bos,
                      eos_token_id=tok.token_to_id("<|end_of_text|>"), tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(dst, safe_serialization=True)
    return tok


def expected_bpe_vocab(model_dir, vocab_size):
    """convert_hf_to_gguf.py get_vocab_base (without the re-encoding of non-normalized added tokens)."""
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(model_dir)
    reverse = {i: s for s, i in t.get_vocab().items()}
    added = t.get_added_vocab()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(5)
            continue
        s = reverse[i]
        if s in added:
            special = t.added_tokens_decoder[i].special or (s.startswith("<|") and s.endswith("|>"))
            types.append(3 if special else 4)
            s = s if special else s.replace("\u2581", " ")
        else:
            types.append(1)
        tokens.append(s)
    return tokens, types


@pytest.mark.parametrize("llama3_pre", [False, True])
def test_bpe_tokenizer_metadata(tmp_path, tiny, llama3_pre):
    d = tmp_path / "bpe"
    make_bpe_llama(d, tiny, llama3_pre)
    out = tmp_path / "bpe.gguf"
    tool("export", d, out, "q8_0")
    r = gguf.GGUFReader(out)
    assert field_value(r, "tokenizer.ggml.model") == "gpt2"
    assert field_value(r, "tokenizer.ggml.pre") == ("llama-bpe" if llama3_pre else "gpt-2")
    tokens, types = expected_bpe_vocab(d, 320)
    assert field_value(r, "tokenizer.ggml.tokens") == tokens
    assert field_value(r, "tokenizer.ggml.token_type") == types
    assert 4 in types and 5 in types and 3 in types  # user-defined, padding and control ids all present
    assert r.get_field("tokenizer.ggml.scores") is None
    sv = gguf.SpecialVocab(d, load_merges=True)
    assert field_value(r, "tokenizer.ggml.merges") == sv.merges and len(sv.merges) > 10
    names = {"bos": "bos", "eos": "eos", "unk": "unknown", "sep": "seperator", "pad": "padding", "mask": "mask"}
    for typ, tid in sv.special_token_ids.items():
        assert field_value(r, f"tokenizer.ggml.{names[typ]}_token_id") == tid, typ
    for typ, v in sv.add_special_token.items():
        assert field_value(r, f"tokenizer.ggml.add_{typ}_token") == v, typ
    assert sv.add_special_token.get("bos") is True  # from the TemplateProcessing
    assert field_value(r, "tokenizer.chat_template") == sv.chat_template
    # no unexpected tokenizer keys
    keys = {k for k in r.fields if k.startswith("tokenizer.")}
    want = {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.chat_template"}
    want |= {f"tokenizer.ggml.{names[t]}_token_id" for t in sv.special_token_ids}
    want |= {f"tokenizer.ggml.add_{t}_token" for t in sv.add_special_token}
    assert keys == want


def test_llama3_rope_factors_give_transformers_logits(tmp_path, tiny):
    """rope_type llama3: rope_freqs.weight equals convert's generate_extra_tensors (float32 torch), and the
    file run with llama.cpp's conventions (frequencies divided by those factors) gives transformers'
    logits. original_max_position_embeddings 32 with head_dim 16 puts frequencies in all three regimes."""
    from transformers import LlamaConfig, LlamaForCausalLM
    import math
    d = tmp_path / "l3"
    torch.manual_seed(1)
    rp = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, rope_parameters=rp, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for prm in model.parameters():
            prm.normal_(0, 0.2) if prm.dim() == 2 else prm.uniform_(0.5, 1.5)
    model.save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny / f, d / f)
    out = tmp_path / "l3.gguf"
    tool("export", d, out, "f16")
    reader = gguf.GGUFReader(out)
    # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors, as written there
    dim = 16
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    lo_w, hi_w = 32 / 1.0, 32 / 4.0
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < hi_w:
            factors.append(1)
        elif wavelen > lo_w:
            factors.append(8.0)
        else:
            smooth = (32 / wavelen - 1.0) / (4.0 - 1.0)
            factors.append(1 / ((1 - smooth) / 8.0 + smooth))
    want = torch.tensor(factors, dtype=torch.float32).numpy()
    t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    assert t.tensor_type.name == "F32"
    np.testing.assert_allclose(np.asarray(t.data), want, rtol=2e-7)
    assert len(set(np.round(want, 4))) > 2  # three regimes: 1, smoothed, 8
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() == 2:
                prm.copy_(prm.half().float())
    model.config._attn_implementation = "eager"
    ids = np.random.default_rng(0).integers(0, 512, size=40)
    with torch.no_grad():
        ref = model(torch.tensor(ids)[None]).logits[0].double().numpy()
    err = np.abs(llama_cpp_forward(reader, ids) - ref).max() / np.abs(ref).max()
    print(f"llama3 rope: max rel logit error {err:.2e}")
    assert err < 1e-5
