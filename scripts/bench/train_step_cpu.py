#!/usr/bin/env python3
"""CPU training throughput: qtrain's QLoRA step vs transformers + peft + bitsandbytes on the same model,
batch shape, LoRA config and thread count, printed as a ratio.

    . scripts/env.sh && $QTRAIN_VENV/bin/python scripts/bench/train_step_cpu.py \
        --tool build/tests/train_step_tool --model runs/quickstart/base [--batch 16 --seq 128 --steps 20]

Both sides: NF4 + double-quant base (qtrain quantizes while loading; transformers through
BitsAndBytesConfig), LoRA r=16 alpha=32 on all linears, dropout 0, fp32 compute, AdamW, one fixed
random batch. qtrain's time per step is (t(N steps) - t(1 step)) / (N - 1), so loading is excluded;
the peft side times the same steps in-process after a warm-up step.
"""
import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True)
    ap.add_argument("--model", required=True, help="a Hugging Face Llama directory (e.g. runs/quickstart/base)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    tmp = Path(tempfile.mkdtemp())

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=bnb, dtype=torch.float32, device_map="cpu")
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                            task_type="CAUSAL_LM")).train()
    model.save_pretrained(tmp / "init")
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq))
    labels = ids.clone()
    labels[:, : args.seq // 4] = -100
    save_file({"input_ids": ids, "labels": labels}, tmp / "batch.safetensors")

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    def peft_step():
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()

    peft_step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        peft_step()
    peft_s = (time.perf_counter() - t0) / args.steps

    def qtrain(steps):
        t = time.perf_counter()
        subprocess.run([args.tool, args.model, str(tmp / "init"), str(tmp / "batch.safetensors"), str(tmp / f"out{steps}"),
                        "--steps", str(steps), "--lr", "1e-4", "--quantize"], check=True)
        return time.perf_counter() - t

    q1 = min(qtrain(1) for _ in range(2))
    qn = qtrain(args.steps + 1)
    qtrain_s = (qn - q1) / args.steps
    tokens = args.batch * args.seq
    print(f"model {args.model}, batch {args.batch}×{args.seq}, {os.cpu_count()} threads, {args.steps} steps")
    print(f"qtrain              {qtrain_s * 1e3:8.1f} ms/step  {tokens / qtrain_s:8.0f} tok/s")
    print(f"peft+bitsandbytes   {peft_s * 1e3:8.1f} ms/step  {tokens / peft_s:8.0f} tok/s")
    print(f"ratio (qtrain speed / peft speed): {peft_s / qtrain_s:.2f}x")


if __name__ == "__main__":
    main()
