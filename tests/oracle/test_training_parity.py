"""One training step and ten AdamW steps of qtrain against transformers + peft on the same model, batch
and LoRA initialisation (fp32, dropout 0): loss, every LoRA gradient, and the adapter after 10 steps.

qtrain runs its real step (tests/trainer/train_step_tool.cpp: LlamaModel + LoRA + token-weighted loss +
bnb-semantics AdamW); the reference is PeftModel on AutoModelForCausalLM with torch.optim.AdamW, whose
update equals bnb's when weight_decay = 0 (same m/v recursions; eps·sqrt(1-β2^t) inside the
denominator is torch's eps outside the bias-corrected root, algebraically).

Tolerances (fp32, relative to the largest magnitude):
- loss: 1e-5; gradients: 5e-5 (max |diff| / max |ref| per tensor). Both sides evaluate the same
  expressions in fp32 with different summation orders (GEMM blocking, the GQA key/value reduction:
  SDPA's enable_gqa here, repeat_kv there). Measured: ~1e-7 on the random tiny models, 1.5e-5 on the
  real trained model, whose peaked attention amplifies rounding in the softmax backward. A real bug
  (the negative control: alpha 17 instead of 16, a 6% scaling error) gives > 1e-3.
- adapter after 10 steps (lr 1e-3): at least 99% of elements within 1e-5, and none further than 20·lr.
  Adam divides by sqrt(v), so an element whose gradient sits at rounding level moves by up to ~lr per
  step on one side and by up to ~lr the other way on the other: two such trajectories part by at most
  ~2·lr per step, 20·lr in 10. A handful of such elements is expected (measured: none on the random
  tiny models; on the real model 0.17% beyond 1e-5, max 11·lr, with qtrain's real step: chunked
  LM-head backward scaled by 1/tokens, vs transformers' mean), while a wrong update rule moves most.
"""
import os
import subprocess

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR = 1e-3


@pytest.fixture(scope="module")
def tool():
    p = os.environ.get("QTRAIN_TRAIN_STEP_TOOL")
    if not p or not os.path.exists(p):
        pytest.fail("QTRAIN_TRAIN_STEP_TOOL not set (run through ctest)")
    return p


def tiny_model_dir(tmp_path):
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-5)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in n else torch.randn_like(p) / p.shape[-1] ** 0.5)
    d = tmp_path / "base"
    m.save_pretrained(d)
    return d


def make_batch(vocab, tmp_path, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 17), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100          # an untrained prompt
    labels[1, 12:] = -100         # and an untrained tail
    f = tmp_path / "batch.safetensors"
    save_file({"input_ids": ids, "labels": labels}, f)
    return ids, labels, f


def peft_model(base_dir, r=8, alpha=16):
    torch.manual_seed(11)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS,
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():  # start from non-zero B so step 1 has gradients for A too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.02 * torch.randn_like(p))
    return model


def lora_params(model):
    return {n.replace(".default", ""): p for n, p in model.named_parameters() if p.requires_grad}


def reference(model, ids, labels, steps):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0, eps=1e-8)
    losses, grads = [], None
    for s in range(steps):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        losses.append(loss.item())
        if s == 0:
            grads = {n: p.grad.clone() for n, p in lora_params(model).items()}
        opt.step()
    return losses, grads, {n: p.detach().clone() for n, p in lora_params(model).items()}


def run_tool(tool, model_dir, adapter_dir, batch_file, out, steps, quantize=False):
    args = [tool, str(model_dir), str(adapter_dir), str(batch_file), str(out), "--steps", str(steps), "--lr", str(LR)]
    r = subprocess.run(args + (["--quantize"] if quantize else []), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    losses = [float(x) for x in (out / "losses.txt").read_text().split()]
    return losses, load_file(out / "grads.safetensors"), load_file(out / "adapter" / "adapter_model.safetensors")


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check_parity(tool, tmp_path, base_for_qtrain, base_for_hf, quantize=False):
    model = peft_model(base_for_hf)
    init = tmp_path / "init"
    model.save_pretrained(init)
    vocab = model.config.vocab_size
    ids, labels, bf = make_batch(vocab, tmp_path)
    q_losses, q_grads, q_adapter = run_tool(tool, base_for_qtrain, init, bf, tmp_path / "out", 10, quantize)
    r_losses, r_grads, r_params = reference(model, ids, labels, 10)
    assert abs(q_losses[0] - r_losses[0]) <= 1e-5 * abs(r_losses[0]), (q_losses[0], r_losses[0])
    assert sorted(q_grads) == sorted(r_grads)
    for n in r_grads:
        assert rel(q_grads[n], r_grads[n]) <= 5e-5, f"{n}: grad rel diff {rel(q_grads[n], r_grads[n]):.3g}"
    diffs = torch.cat([(q_adapter[n] - r_params[n]).abs().flatten() for n in r_params])
    far = (diffs > 1e-5).float().mean().item()
    print(f"ADAPTER_AFTER_10: max |diff| {diffs.max().item():.3g}, fraction > 1e-5: {far:.4f}")
    assert far <= 0.01, f"after 10 steps {100 * far:.2f}% of adapter elements differ by more than 1e-5"
    assert diffs.max().item() <= 20 * LR, f"after 10 steps an element differs by {diffs.max().item():.3g} > 20·lr"
    for a, b in zip(q_losses, r_losses):
        assert abs(a - b) <= 1e-4 * abs(b), (q_losses, r_losses)
    assert q_losses[-1] < q_losses[0], "ten steps should lower the loss on a fixed batch"


def test_dense_base_matches_peft(tool, tmp_path):
    base = tiny_model_dir(tmp_path)
    check_parity(tool, tmp_path, base, base)


def test_nf4_base_matches_peft_on_dequantized_weights(tool, run_qtrain, tmp_path):
    """QLoRA: qtrain trains on the NF4 base; PEFT on the same base dequantized (what the adapter sees)."""
    base = tiny_model_dir(tmp_path)
    q = tmp_path / "nf4"
    run_qtrain("quantize", base, "--out", q)
    deq = tmp_path / "deq"
    run_qtrain("dequantize", q, "--out", deq, "--dtype", "float32")
    check_parity(tool, tmp_path, q, deq)


def test_real_trained_model(tool, shared_data, tmp_path):
    base = shared_data / "models" / "llama2c-xs-tok512-hf"
    check_parity(tool, tmp_path, base, base)


def test_negative_control_wrong_scaling_fails(tool, tmp_path):
    base = tiny_model_dir(tmp_path)
    model = peft_model(base)
    init = tmp_path / "init"
    model.save_pretrained(init)
    cfg = (init / "adapter_config.json").read_text().replace('"lora_alpha": 16', '"lora_alpha": 17')
    (init / "adapter_config.json").write_text(cfg)
    ids, labels, bf = make_batch(model.config.vocab_size, tmp_path)
    _, q_grads, _ = run_tool(tool, base, init, bf, tmp_path / "out", 1)
    _, r_grads, _ = reference(model, ids, labels, 1)
    assert max(rel(q_grads[n], r_grads[n]) for n in r_grads) > 1e-3


def test_peft_loads_qtrain_adapter_with_same_logits(run_qtrain, tmp_path):
    """The PEFT adapter qtrain writes, loaded by peft onto transformers (base = the dequantized NF4
    base), gives the logits of qtrain's own NF4 + LoRA forward."""
    from peft import PeftModel
    base = tiny_model_dir(tmp_path)
    model = peft_model(base)
    init = tmp_path / "init"
    model.save_pretrained(init)
    ids, labels, bf = make_batch(model.config.vocab_size, tmp_path)
    q = tmp_path / "nf4"
    run_qtrain("quantize", base, "--out", q)
    tool_path = os.environ["QTRAIN_TRAIN_STEP_TOOL"]
    run_tool(tool_path, q, init, bf, tmp_path / "out", 3)  # a trained (non-trivial) adapter, written by qtrain
    adapter = tmp_path / "out" / "adapter"
    deq = tmp_path / "deq"
    run_qtrain("dequantize", q, "--out", deq, "--dtype", "float32")
    hf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(deq, dtype=torch.float32), adapter).eval()
    with torch.no_grad():
        ref = hf(input_ids=ids[:1]).logits[0]
    out = tmp_path / "logits.safetensors"
    run_qtrain("forward", q, "--adapter", adapter, "--ids", ",".join(map(str, ids[0].tolist())), "--out", out)
    ours = load_file(out)["logits"]
    assert rel(ours, ref) <= 1e-5, rel(ours, ref)


@pytest.mark.parametrize("which", ["transformers-made", "shared"])
def test_nf4_plus_zero_lora_equals_dequantized_forward(run_qtrain, tmp_path, which, request):
    """Every linear in NF4 + LoRA with B = 0 (PEFT's init) computes exactly the forward pass on the
    dequantized weights: the LoRA branch adds exact zeros and the base uses the same dequantized W."""
    if which == "shared":
        base = request.getfixturevalue("shared_data") / "models" / "llama2c-xs-tok512-hf"
    else:
        base = tiny_model_dir(tmp_path)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(hf, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM"))
    init = tmp_path / "init"
    peft.save_pretrained(init)  # B = 0
    q, deq = tmp_path / "nf4", tmp_path / "deq"
    run_qtrain("quantize", base, "--out", q)
    run_qtrain("dequantize", q, "--out", deq, "--dtype", "float32")
    ids = ",".join(str(i) for i in range(1, 40, 3))
    run_qtrain("forward", q, "--adapter", init, "--ids", ids, "--out", tmp_path / "a.safetensors")
    run_qtrain("forward", deq, "--ids", ids, "--out", tmp_path / "b.safetensors")
    a, b = load_file(tmp_path / "a.safetensors")["logits"], load_file(tmp_path / "b.safetensors")["logits"]
    assert torch.equal(a, b), rel(a, b)
