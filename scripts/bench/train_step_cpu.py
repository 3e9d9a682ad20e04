#!/usr/bin/env python3
"""CPU training throughput: qtrain's QLoRA step vs transformers + peft + bitsandbytes on the same model,
batch shape, LoRA config and thread count, printed as a ratio.

    . scripts/env.sh && $QTRAIN_VENV/bin/python scripts/bench/train_step_cpu.py \
        --tool build/tests/train_step_tool --model runs/quickstart/base [--batch 16 --seq 128 --steps 20]

Both sides: NF4 + double-quant base (qtrain quantizes while loading; transformers through
BitsAndBytesConfig), LoRA r=16 alpha=32 on all linears, dropout 0, fp32 compute, AdamW, one fixed
random batch. qtrain's time per step is (t(N steps) - t(1 step)) / (N - 1), so loading is excluded;
the peft side times the same steps in-process after a warm-up step.

--whole-process N also times both sides as whole processes running N steps from a cold start (qtrain:
train_step_tool loading, quantizing and stepping; peft: a fresh Python running this file with --peft-child:
imports, load through BitsAndBytesConfig, N steps) and prints that ratio too (issue 14's measure).
--make-model H,L,I,V writes a random Llama (hidden H, L layers, MLP width I, vocab V, 8 heads) to a temporary
directory and uses it as --model (issue 14's 25M shape: 512,8,1024,4096 with --batch 8 --seq 256).
OMP_WAIT_POLICY and OMP_NUM_THREADS, when set, reach every process the same way: on a loaded machine
OMP_WAIT_POLICY=passive stops idle OpenMP threads from spinning (docs/PERFORMANCE.md).
"""
import argparse
import os
import resource
import subprocess
import sys
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
    ap.add_argument("--model", default="", help="a Hugging Face Llama directory (e.g. runs/quickstart/base)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--whole-process", type=int, default=0, metavar="N")
    ap.add_argument("--make-model", default="", metavar="H,L,I,V")
    ap.add_argument("--repeats", type=int, default=2, help="alternating whole-process pairs")
    ap.add_argument("--skip-per-step", action="store_true", help="only the whole-process pairs")
    ap.add_argument("--peft-child", default="", help=argparse.SUPPRESS)  # BATCH.safetensors: run N steps, exit
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    if args.peft_child:
        return peft_child(args)
    tmp = Path(tempfile.mkdtemp())
    if args.make_model:
        args.model = str(make_model(args.make_model, tmp / "model"))

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

    whole = []
    if args.whole_process:
        # Alternating runs (peft, qtrain, peft, qtrain) so a change in the machine's load hits both sides; CPU
        # time (user + sys of the child) is reported beside wall time: it moves less with the load.
        n = args.whole_process

        def timed(cmd):
            r0, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run(cmd, check=True)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            return time.perf_counter() - t, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)

        for _ in range(args.repeats):
            p = timed([sys.executable, __file__, "--tool", args.tool, "--model", args.model, "--steps", str(n),
                       "--peft-child", str(tmp / "batch.safetensors")])
            q = timed([args.tool, args.model, str(tmp / "init"), str(tmp / "batch.safetensors"), str(tmp / "outw"),
                       "--steps", str(n), "--lr", "1e-4", "--quantize"])
            whole.append((q, p))

    if args.skip_per_step:
        return report_whole(args, whole)
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
    report_whole(args, whole)


def report_whole(args, whole):
    for (q_wall, q_cpu), (p_wall, p_cpu) in whole:
        print(f"whole process, {args.whole_process} steps: qtrain {q_wall:.1f} s wall / {q_cpu:.1f} s CPU, "
              f"peft+bitsandbytes {p_wall:.1f} s / {p_cpu:.1f} s: qtrain {p_wall / q_wall:.2f}x faster by wall time, "
              f"{p_cpu / q_cpu:.2f}x by CPU time")
    print(f"load average {os.getloadavg()[0]:.2f}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")


def make_model(spec, out):
    h, layers, inter, vocab = (int(v) for v in spec.split(","))
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg)
    m.save_pretrained(out)
    print(f"model {spec}: {sum(p.numel() for p in m.parameters()) / 1e6:.1f}M parameters")
    return out


def peft_child(args):
    """The peft side as a whole process: load, quantize, attach LoRA, run the steps on the saved batch."""
    from safetensors.torch import load_file
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=bnb, dtype=torch.float32,
                                                device_map="cpu")
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                            task_type="CAUSAL_LM")).train()
    batch = load_file(args.peft_child)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    for _ in range(args.steps):
        opt.zero_grad()
        model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
