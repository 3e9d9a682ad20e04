"""GPTQ (export/gptq.h) and the GPTQ v1 checkpoint (data/io/gptq_format.h) against independent Python.

(a) A transcription of the reference `fasterquant` (AutoGPTQ / GPTQModel gptq.py + quantizer.py as
    formats.md §5.1-5.4 describes them, written here from that description) runs on the same W and H as
    qtrain (tests/export/gptq_tool, path in $QTRAIN_GPTQ_TOOL); codes, scales, zeros and g_idx must agree.
(b) An unpacker written here from formats.md §5.6 reads qtrain's packed qweight/qzeros/scales/g_idx back to
    exactly the integers qtrain meant, and qtrain reads tensors this file packs the AutoGPTQ way (integers
    recovered from the dequantized weight, then bit-packed with numpy).
(c) A GPTQ directory of the shared tiny model written here loads in `qtrain forward` and gives the logits
    of transformers' dense model with the same dequantized weights.

Why gptqmodel is not pinned (tried for the AWQ/GGUF issue): every 7.x release pins numpy==2.2.6 for
Python < 3.14 (we pin 2.4.6, so the requirements would not resolve); 7.7.0 also needs torch >= 2.14 (we pin
2.11); 6.0.3 and 5.6.12 fail in pip's "getting requirements to build wheel" (their sdists need torch in the
isolated build). pypcre itself compiles against the installed libpcre2-dev in ~15 s. Installed by hand with
--no-deps (gptqmodel 7.6.0 + pypcre, logbar, threadpoolctl, device-smi, kernels, tokenicer, defuser), its
TorchLinear dequantizes our v1 files (after its own v1 -> v2 qzeros conversion) to exactly our fp16 weights,
symmetric, asymmetric, act-order and group -1 alike: test_gptqmodel_dequantizes_our_files below, which runs
wherever gptqmodel imports and is skipped otherwise. The dequant formula in (b) is written independently
from formats.md §5.6 and runs everywhere.

One documented deviation from the references, mirrored in the transcription: an asymmetric group whose zero
rounds to 0 gets zero 1 and scale xmax/(maxq-1), because v1 stores zero-1 and cannot hold -1 (gptq.h).
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

TOOL = os.environ.get("QTRAIN_GPTQ_TOOL")
pytestmark = pytest.mark.skipif(not TOOL, reason="QTRAIN_GPTQ_TOOL not set (ctest sets it)")


# ---------------------------------------------------------------------------------------------------
# The reference algorithm, transcribed from formats.md §5.1-5.4.

def find_params(x, bits, sym):
    """Per-row min/max grid of x [rows, cols] (§5.4). Returns scale, zero [rows] float32."""
    maxq = 2**bits - 1
    zeros = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1).values, zeros)
    xmax = torch.maximum(x.max(1).values, zeros)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        neg = xmin < 0
        xmin[neg] = -xmax[neg]
    flat = (xmin == 0) & (xmax == 0)
    xmin[flat] = -1
    xmax[flat] = 1
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
        z0 = zero == 0  # qtrain's v1-safe deviation (module docstring)
        zero[z0] = 1
        scale[z0] = xmax[z0] / (maxq - 1)
    return scale, zero


def quantize(x, scale, zero, bits):
    """x [rows] → integer codes [rows] (float), torch.round half-to-even."""
    return torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1)


def fasterquant(W, H, bits, group_size, sym, desc_act, static_groups, damp, blocksize=128):
    W = W.clone().float()
    H = H.clone().float()
    rows, cols = W.shape
    if group_size == -1:
        scale, zero = find_params(W, bits, sym)  # before dead columns are zeroed, as the references
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    g = group_size if group_size != -1 else cols
    groups = []
    if static_groups and group_size != -1:
        groups = [find_params(W[:, i:i + g], bits, sym) for i in range(0, cols, g)]
    perm = None
    if desc_act:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    H[range(cols), range(cols)] += damp * torch.mean(torch.diag(H))
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    codes = torch.zeros_like(W)
    scales, zeros = [], []
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if group_size != -1:
                if not static_groups:
                    if c % g == 0:
                        scale, zero = find_params(W[:, c:c + g], bits, sym)  # W, not W1: the references' read
                        scales.append(scale)
                        zeros.append(zero)
                else:
                    orig = int(perm[c]) if desc_act else c
                    scale, zero = groups[orig // g]
            w = W1[:, i]
            d = Hinv1[i, i]
            q_int = quantize(w, scale, zero, bits)
            q = scale * (q_int - zero)
            codes[:, c] = q_int
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if group_size == -1:
        scales, zeros = [scale], [zero]
        g_idx = torch.zeros(cols, dtype=torch.long)
    elif static_groups:
        scales, zeros = [s for s, _ in groups], [z for _, z in groups]
        g_idx = torch.arange(cols) // g
    elif desc_act:
        g_idx = torch.argsort(perm) // g
    else:
        g_idx = torch.arange(cols) // g
    if desc_act:
        codes = codes[:, torch.argsort(perm)]
    return codes.to(torch.uint8), torch.stack(scales), torch.stack(zeros).to(torch.int32), g_idx.to(torch.int32)


def rtn(W, bits, group_size, sym):
    cols = W.shape[1]
    g = group_size if group_size != -1 else cols
    codes, scales, zeros = [], [], []
    for i in range(0, cols, g):
        s, z = find_params(W[:, i:i + g], bits, sym)
        codes.append(torch.clamp(torch.round(W[:, i:i + g] / s[:, None]) + z[:, None], 0, 2**bits - 1))
        scales.append(s)
        zeros.append(z)
    return (torch.cat(codes, 1).to(torch.uint8), torch.stack(scales), torch.stack(zeros).to(torch.int32),
            (torch.arange(cols) // g).to(torch.int32))


# ---------------------------------------------------------------------------------------------------
# GPTQ v1 packing and unpacking, from formats.md §5.6, in numpy.

def pack_v1(codes, scales, zeros, g_idx, bits):
    """codes [out, in] → qweight [in*bits/32, out]; zeros [groups, out] → qzeros (zero-1) [groups, out*bits/32]."""
    pf = 32 // bits
    c = codes.numpy().astype(np.uint32).T  # [in, out]
    qweight = np.zeros((c.shape[0] // pf, c.shape[1]), dtype=np.uint32)
    for j in range(pf):
        qweight |= c[j::pf, :] << np.uint32(bits * j)
    z = (zeros.numpy().astype(np.int64) - 1).astype(np.uint32)  # [groups, out]
    qzeros = np.zeros((z.shape[0], z.shape[1] // pf), dtype=np.uint32)
    for j in range(pf):
        qzeros |= z[:, j::pf] << np.uint32(bits * j)
    return {"layer.qweight": torch.from_numpy(qweight.view(np.int32)),
            "layer.qzeros": torch.from_numpy(qzeros.view(np.int32)),
            "layer.scales": scales.to(torch.float16).contiguous(),
            "layer.g_idx": g_idx.to(torch.int32).contiguous()}


def unpack_v1(t, prefix, bits):
    """→ codes [out, in] int64, true zeros [groups, out] int64, scales fp32, g_idx int64, and the dequantized
    nn.Linear weight W[n, k] = scales[g_idx[k], n] * (q[k, n] - (qz[g_idx[k], n] + 1))."""
    pf, mask = 32 // bits, (1 << bits) - 1
    qw = t[prefix + ".qweight"].numpy().view(np.uint32)
    qz = t[prefix + ".qzeros"].numpy().view(np.uint32)
    q = np.stack([(qw >> np.uint32(bits * j)) & mask for j in range(pf)], axis=1).reshape(-1, qw.shape[1])  # [in, out]
    z = np.stack([(qz >> np.uint32(bits * j)) & mask for j in range(pf)], axis=2).reshape(qz.shape[0], -1) + 1
    s = t[prefix + ".scales"].float().numpy()
    gi = t[prefix + ".g_idx"].numpy().astype(np.int64)
    deq = (s[gi, :] * (q.astype(np.float32) - z[gi, :].astype(np.float32))).T  # [out, in]
    return (torch.from_numpy(q.T.astype(np.int64)), torch.from_numpy(z.astype(np.int64)), torch.from_numpy(s),
            torch.from_numpy(gi), torch.from_numpy(np.ascontiguousarray(deq)))


# ---------------------------------------------------------------------------------------------------

def correlated_case(gen, out, inp, n=2048):
    mix = torch.eye(inp) + 0.5 * torch.randn(inp, inp, generator=gen) / inp**0.5
    chan = torch.exp(1.5 * torch.randn(inp, generator=gen))
    X = torch.randn(n, inp, generator=gen).mm(mix) * chan
    H = 2.0 / n * X.t().mm(X)
    W = torch.randn(out, inp, generator=gen)
    return W, H


def run_tool(*args):
    p = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, f"gptq_tool {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr}"


CASES = [  # bits, group, sym, desc_act, static_groups
    (4, 128, True, False, False),
    (4, 32, False, False, False),
    (4, -1, True, False, False),
    (4, 64, True, True, False),
    (4, 64, False, True, True),
    (8, 128, True, False, False),
    (4, 256, True, True, False),  # groups span two lazy blocks; 320 = 2.5 blocks, last group 64 wide
]


@pytest.mark.parametrize("bits,group,sym,desc_act,static", CASES)
def test_gptq_matches_reference_transcription(tmp_path, bits, group, sym, desc_act, static):
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    W, H = correlated_case(gen, 48, 320)
    save_file({"W": W, "H": H}, tmp_path / "in.safetensors")
    run_tool("quantize", tmp_path / "in.safetensors", tmp_path / "out.safetensors", bits, group, int(sym),
             int(desc_act), int(static), 0.01)
    ours = load_file(tmp_path / "out.safetensors")
    codes, scales, zeros, g_idx = fasterquant(W, H, bits, group, sym, desc_act, static, 0.01)

    # Same ops on the same fp32 data in the same libtorch: we expect bit-identical results and measure it.
    # A last-ulp difference in a BLAS sum could flip a rounding tie; GPTQ rows are independent, so a flip
    # only perturbs the rest of its row through the error feedback: bound the fraction at 0.5 % of codes.
    differ = (ours["gptq.codes"] != codes).float().mean().item()
    print(f"codes differing: {differ:.6f}")
    assert differ <= 0.005, f"seed {seed}: {differ:.4%} of codes differ from the reference transcription"
    assert torch.equal(ours["gptq.g_idx"], g_idx)
    rows_same = (ours["gptq.codes"] == codes).all(1)  # rows without any flip have identical grids too
    assert rows_same.float().mean() >= 0.9, f"seed {seed}"
    assert torch.equal(ours["gptq.scales"][:, rows_same], scales[:, rows_same])
    assert torch.equal(ours["gptq.zeros"][:, rows_same], zeros[:, rows_same])

    rc, rs, rz, rg = rtn(W, bits, group, sym)
    assert torch.equal(ours["rtn.codes"], rc) and torch.equal(ours["rtn.scales"], rs)
    assert torch.equal(ours["rtn.zeros"], rz) and torch.equal(ours["rtn.g_idx"], rg)

    # (b) our packed tensors, read by the independent unpacker: exactly our integers and fp16 scales.
    q, z, s, gi, deq = unpack_v1(ours, "layer", bits)
    assert ours["layer.qweight"].dtype == torch.int32 and ours["layer.qzeros"].dtype == torch.int32
    assert ours["layer.scales"].dtype == torch.float16
    assert torch.equal(q, ours["gptq.codes"].long())
    assert torch.equal(z, ours["gptq.zeros"].long())
    assert torch.equal(gi, ours["gptq.g_idx"].long())
    assert torch.equal(s, ours["gptq.scales"].half().float())
    if sym:
        word = 0x77777777 if bits == 4 else 0x7F7F7F7F
        assert (ours["layer.qzeros"] == word).all()
    # The dequantized layer is GPTQ's result; its layer-output error is not above RTN's where GPTQ itself
    # (the reference transcription) beats RTN on this draw. GPTQ is greedy and loses on some draws: on
    # 1000 seeds per case (48x320, measured 2026-12-01) the transcription's error exceeded RTN's by more
    # than 1% on ~0.3% of draws per case, by up to 17% (seed 850, 4-bit g32 asym) and 10% with act-order
    # (seed 90, g256); the earlier fixed 1% bound (6f1b6d2, after CI's seed 1374402311) so failed about one
    # run of this file in 100. On such a draw ours is held to the transcription's error instead (the
    # codes above are equal, so the errors are; 1% for fp16 scales and the flips the code check allows).
    # This bound only catches a grossly wrong error measure; the real-model tests (tests/export) check
    # that GPTQ beats RTN.
    def layer_error(Q):
        D = (W - Q).double()
        return (D @ H.double() * D).sum().item()
    ref_gptq = layer_error(scales[g_idx.long()].t() * (codes.float() - zeros[g_idx.long()].t().float()))
    ref_rtn = layer_error(rs[rg.long()].t() * (rc.float() - rz[rg.long()].t().float()))
    print(f"reference transcription: GPTQ {ref_gptq:.6g} RTN {ref_rtn:.6g} (ratio {ref_gptq / ref_rtn:.4f})")
    stats = ours["gptq.stats"]
    bound = stats[4].item() if ref_gptq < ref_rtn else ref_gptq
    assert stats[3] < 1.01 * bound, f"seed {seed}: GPTQ {stats[3]} vs RTN {stats[4]} (reference GPTQ {ref_gptq:.6g})"
    d = W - deq
    err = (d.double() @ H.double() * d.double()).sum().item()
    assert abs(err - stats[3].item()) <= 0.02 * stats[3].item() + 1e-6  # fp16 scales vs fp32 in the tool


@pytest.mark.parametrize("bits,group,desc_act", [(4, 64, False), (4, 64, True), (8, 32, True), (4, -1, False)])
def test_our_reader_reads_reference_packing(tmp_path, bits, group, desc_act):
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    W, H = correlated_case(gen, 40, 192)
    codes, scales, zeros, g_idx = fasterquant(W, H, bits, group, False, desc_act, False, 0.01)
    # AutoGPTQ packs from the dequantized weight: intweight = round((Q + scale·zero) / scale).
    Q = scales[g_idx.long()].t() * (codes.float() - zeros[g_idx.long()].t().float())
    recovered = torch.round((Q + (scales * zeros)[g_idx.long()].t()) / scales[g_idx.long()].t())
    assert torch.equal(recovered.to(torch.uint8), codes)
    save_file(pack_v1(codes, scales, zeros, g_idx, bits), tmp_path / "ref.safetensors")
    run_tool("unpack", tmp_path / "ref.safetensors", tmp_path / "ours.safetensors", 40, 192, bits, group)
    ours = load_file(tmp_path / "ours.safetensors")
    assert torch.equal(ours["q.codes"], codes)
    assert torch.equal(ours["q.zeros"], zeros)
    assert torch.equal(ours["q.g_idx"], g_idx)
    assert torch.equal(ours["q.scales"], scales.half().float())


def test_tiny_model_gptq_dir_loads_with_transformers_logits(shared_data, run_qtrain, tmp_path):
    """A GPTQ v1 directory of the shared model written here (RTN, asym, group 32, act-order-like shuffled
    g_idx) → `qtrain forward`; reference: transformers' dense LlamaForCausalLM with the same dequantized
    weights (scales rounded to fp16 as stored)."""
    from transformers import AutoModelForCausalLM

    src = shared_data / "models" / "llama2c-xs-tok512-hf"
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    dense = load_file(src / "model.safetensors")
    out = tmp_path / "gptq"
    out.mkdir()
    tensors, deq_weights = {}, {}
    group = 32
    for name, t in dense.items():
        if ".layers." not in name or not name.endswith("_proj.weight"):
            tensors[name] = t
            continue
        prefix = name[: -len(".weight")]
        W = t.float()
        # A shuffled g_idx as act-order produces: permute columns, quantize, carry g_idx back.
        perm = torch.randperm(W.shape[1], generator=gen)
        codes, scales, zeros, gp = rtn(W[:, perm], 4, group, False)
        inv = torch.argsort(perm)
        packed = {prefix + k[len("layer"):]: v for k, v in pack_v1(codes[:, inv], scales, zeros, gp[inv], 4).items()}
        tensors.update(packed)
        deq_weights[name] = unpack_v1(packed, prefix, 4)[4]
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"bits": 4, "group_size": group, "desc_act": True, "sym": False,
                                  "quant_method": "gptq", "checkpoint_format": "gptq", "damp_percent": 0.01,
                                  "static_groups": False, "true_sequential": True}
    (out / "config.json").write_text(json.dumps(cfg))
    for f in src.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, out / f.name)

    ids = [1, 403, 407, 38, 2, 99, 511, 7, 300, 12]
    run_qtrain("forward", out, "--ids", ",".join(map(str, ids)), "--out", tmp_path / "logits.safetensors")
    ours = load_file(tmp_path / "logits.safetensors")["logits"]

    model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    sd = model.state_dict()
    for name, w in deq_weights.items():
        sd[name].copy_(w)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0].float()
    # fp32 both sides: the repo's fp32 logits tolerance (test_model_logits.py) is 1e-4 absolute.
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), f"max diff {(ours - ref).abs().max()}"
    # Negative control: the dense model's logits are far from these (4-bit matters).
    dense_model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    with torch.no_grad():
        dense_ref = dense_model(input_ids=torch.tensor([ids])).logits[0].float()
    assert (dense_ref - ours).abs().max() > 1e-2


@pytest.mark.parametrize("out_f,in_f,group,sym,desc_act", [
    (64, 128, 32, 1, 0), (96, 256, 128, 0, 0), (64, 128, 64, 1, 1), (32, 192, -1, 1, 0)])
def test_gptqmodel_dequantizes_our_files(tmp_path, out_f, in_f, group, sym, desc_act):
    """gptqmodel's pure-torch QuantLinear reads our v1 tensors to exactly our weights (module docstring)."""
    pytest.importorskip("gptqmodel", reason="gptqmodel cannot be pinned with our numpy/torch (module docstring)")
    from gptqmodel.nn_modules.qlinear import torch as gq_torch
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module
    QuantLinear = getattr(gq_torch, "TorchQuantLinear", None) or getattr(gq_torch, "TorchLinear")
    seed = out_f + in_f
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g) * 0.05
    X = torch.randn(512, in_f, generator=g)
    save_file({"W": W, "H": (2 / 512) * X.t() @ X}, tmp_path / "in.safetensors")
    run_tool("quantize", tmp_path / "in.safetensors", tmp_path / "out.safetensors", 4, group, sym, desc_act, 0, 0.01)
    t = load_file(tmp_path / "out.safetensors")
    lin = QuantLinear(bits=4, group_size=group, sym=bool(sym), desc_act=bool(desc_act), in_features=in_f,
                      out_features=out_f, bias=False)
    for k in ["qweight", "qzeros", "scales", "g_idx"]:
        getattr(lin, k).data = t["layer." + k].clone()
    convert_gptq_v1_to_v2_format_module(lin, bits=4, pack_dtype=torch.int32)  # gptqmodel's in-memory v2
    lin.post_init()
    deq = lin.dequantize_weight().float().t()  # [out, in] fp16 values
    gi = t["gptq.g_idx"].long()
    ours = (t["gptq.codes"].float() - t["gptq.zeros"].float()[gi].t()) * t["gptq.scales"].half().float()[gi].t()
    assert torch.equal(deq, ours.half().float()), f"seed {seed}"
