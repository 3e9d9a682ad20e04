"""Logits parity with transformers for every supported family and variant.

transformers itself creates tiny random checkpoints (weights re-drawn at a realistic scale so logits
are far from zero), computes reference logits for a padded batch, and `qtrain forward` must agree on
every non-padding position.

Tolerances (max |diff| / max |ref|):
- fp32: 1e-5. Both sides run the same float32 op sequence; the remaining freedom is summation order
  inside matmul/SDPA kernels, whose relative error is bounded by ~k·u with k ≤ a few hundred terms and
  u = 6e-8, i.e. well under 1e-5. Measured here: 0 (bit-identical) on every variant.
- bf16: 4e-3 = 2^-8, one bf16 ulp of the largest logit. qtrain runs transformers' exact op sequence
  in bf16 (RMSNorm in fp32, cos/sin in fp32 then cast, the same SDPA dispatch), so the logits are
  bit-identical (measured: 0 on every variant, printed as BF16_MEASURED); one ulp leaves room for a
  kernel that sums in another order, while a real bug (a missed cast, fp32 RoPE tables) gives ≥ 5e-3.
"""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

FP32_TOL = 1e-5
BF16_TOL = 2.0**-8

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2, max_position_embeddings=128,
              rms_norm_eps=1e-6)

VARIANTS = {
    "llama_mha_untied": lambda: LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "llama_gqa_llama3_rope_tied": lambda: LlamaConfig(
        **COMMON, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}, rope_theta=500000.0),
    "llama_attention_bias_head_dim": lambda: LlamaConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                                          attention_bias=True, mlp_bias=True),
    "mistral_sliding_window": lambda: MistralConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2, sliding_window=5),
    "qwen2_qkv_bias": lambda: Qwen2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3_qk_norm": lambda: Qwen3Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=32),
}


def make_model(tmp_path, name, dtype, shard=False):
    torch.manual_seed(hash(name) % 2**31)
    cfg = VARIANTS[name]()
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    out = tmp_path / f"{name}-{str(dtype).split('.')[-1]}{'-sharded' if shard else ''}"
    model.to(dtype).save_pretrained(out, max_shard_size="40KB" if shard else "5GB")
    # The reference is the checkpoint as a user loads it: `.to(bf16)` on a live model would also round
    # the non-persistent RoPE inv_freq buffer, which a loaded model recomputes in float32.
    return AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval(), out


def batch(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = [11, 7, 3]
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def reference(model, seqs, pad_side):
    t = max(map(len, seqs))
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(t - len(s), t) if pad_side == "left" else slice(0, len(s))
        ids[b, sl] = torch.tensor(s)
        mask[b, sl] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return logits, mask


def qtrain_logits(run_qtrain, model_dir, seqs, dtype, pad_side, tmp_path):
    out = tmp_path / "logits.safetensors"
    args = ["forward", model_dir, "--dtype", dtype, "--pad-side", pad_side, "--out", out]
    for s in seqs:
        args += ["--ids", ",".join(map(str, s))]
    run_qtrain(*args)
    t = load_file(out)
    return t["logits"], t["attention_mask"]


def rel_err(ours, ref, mask):
    keep = mask.bool()
    return ((ours - ref).abs()[keep].max() / ref.abs()[keep].max()).item()


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_fp32_logits_match(run_qtrain, tmp_path, name, pad_side):
    model, d = make_model(tmp_path, name, torch.float32)
    seqs = batch(model.config.vocab_size, seed=len(name))
    ref, mask = reference(model, seqs, pad_side)
    ours, our_mask = qtrain_logits(run_qtrain, d, seqs, "float32", pad_side, tmp_path)
    assert torch.equal(our_mask, mask)
    err = rel_err(ours, ref, mask)
    assert err <= FP32_TOL, f"{name}/{pad_side}: fp32 max|diff|/max|ref| = {err:.3g} > {FP32_TOL}"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_bf16_logits_match(run_qtrain, tmp_path, name):
    model, d = make_model(tmp_path, name, torch.bfloat16)
    seqs = batch(model.config.vocab_size, seed=7)
    ref, mask = reference(model, seqs, "right")
    ours, _ = qtrain_logits(run_qtrain, d, seqs, "bfloat16", "right", tmp_path)
    err = rel_err(ours, ref, mask)
    print(f"BF16_MEASURED {name}: {err:.3g}")
    assert err <= BF16_TOL, f"{name}: bf16 max|diff|/max|ref| = {err:.3g} > {BF16_TOL}"


def test_sharded_checkpoint(run_qtrain, tmp_path):
    model, d = make_model(tmp_path, "llama_mha_untied", torch.float32, shard=True)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2, "fixture should be sharded"
    seqs = batch(model.config.vocab_size, seed=3)
    ref, mask = reference(model, seqs, "right")
    ours, _ = qtrain_logits(run_qtrain, d, seqs, "float32", "right", tmp_path)
    assert rel_err(ours, ref, mask) <= FP32_TOL


def test_negative_control_wrong_weights_fail(run_qtrain, tmp_path):
    """The comparison must be able to fail: perturb one weight of the checkpoint qtrain reads."""
    model, d = make_model(tmp_path, "qwen2_qkv_bias", torch.float32)
    seqs = batch(model.config.vocab_size, seed=5)
    ref, mask = reference(model, seqs, "right")
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.bias.add_(0.05)
    model.save_pretrained(d)
    ours, _ = qtrain_logits(run_qtrain, d, seqs, "float32", "right", tmp_path)
    assert rel_err(ours, ref, mask) > 100 * FP32_TOL


@pytest.mark.parametrize("variant", ["llama2c-xs-tok512-hf", "llama2c-xs-tok512-hf-untied"])
def test_real_trained_model(run_qtrain, shared_data, tmp_path, variant):
    d = shared_data / "models" / variant
    tok = AutoTokenizer.from_pretrained(d)
    texts = ["Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
             "The dog was very happy. He ran to the tree and barked at the bird."]
    seqs = [tok(t).input_ids for t in texts]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ref, mask = reference(model, seqs, "right")
    ours, _ = qtrain_logits(run_qtrain, d, seqs, "float32", "right", tmp_path)
    err = rel_err(ours, ref, mask)
    assert err <= FP32_TOL, f"{variant}: {err:.3g}"
