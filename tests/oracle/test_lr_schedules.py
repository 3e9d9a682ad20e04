"""qtrain's learning-rate schedules against transformers' schedule functions, through the CLI.

Each case trains a quick-start model (created by qtrain itself, so no shared data is needed) for a
few steps with one schedule and warmup, and compares the `lr` of every step in metrics.jsonl with
the learning rate transformers' LambdaLR gives the optimizer step of the same number:

  constant -> get_constant_schedule_with_warmup   (qtrain applies warmup to "constant" too; with no
                                                   warmup it is transformers' plain constant schedule)
  linear   -> get_linear_schedule_with_warmup
  cosine   -> get_cosine_schedule_with_warmup     (num_cycles 0.5)

Negative control: the cosine run must not match the linear oracle.
"""
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import (
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "quickstart.yaml"
DATA = f"data.files=[{ROOT / 'recipes' / 'quickstart' / 'train.jsonl'}]"  # the recipe's path is relative to the root
STEPS = 13
BASE_LR = 3.0e-3
ORACLES = {
    "constant": lambda opt, warmup: get_constant_schedule_with_warmup(opt, num_warmup_steps=warmup),
    "linear": lambda opt, warmup: get_linear_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=STEPS),
    "cosine": lambda opt, warmup: get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=STEPS),
}
# metrics.jsonl prints 8 significant digits today (full precision once it goes through nlohmann-json):
# a relative 1e-7 is that rounding, not a tolerance on the schedule.
REL = 1e-7


def transformers_lrs(make_schedule, warmup):
    """The learning rate of optimizer steps 1..STEPS, as a transformers Trainer would use them."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    sched = make_schedule(opt, warmup)
    lrs = []
    for _ in range(STEPS):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, run_qtrain):
    """A quick-start base model (random Llama + sentencepiece tokenizer) shared by every case."""
    d = tmp_path_factory.mktemp("lr-schedules")
    run_qtrain("train", RECIPE, "--dry-run", "--set", DATA, "--set", f"model.path={d / 'base'}",
               "--set", f"data.cache_dir={d / 'cache'}", "--set", f"output_dir={d / 'dry'}")
    return d


def qtrain_lrs(run_qtrain, workdir, schedule, warmup):
    out = workdir / f"{schedule}-{warmup}"
    run_qtrain("train", RECIPE, "--set", DATA, "--set", f"model.path={workdir / 'base'}",
               "--set", f"data.cache_dir={workdir / 'cache'}", "--set", f"output_dir={out}",
               "--set", f"training.schedule={schedule}", "--set", f"training.warmup_steps={warmup}",
               "--set", f"training.max_steps={STEPS}", "--set", f"training.learning_rate={BASE_LR}",
               "--set", "training.micro_batch_size=1", "--set", "data.max_seq_len=160", "--set", "data.eval_fraction=0",
               "--set", "model.target_modules=[q_proj]", "--set", "lora.r=2",
               "--set", "schedule.log_every=1", "--set", "schedule.eval_every=0", "--set", "schedule.save_every=0")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1)), f"{out}/metrics.jsonl: steps {[r['step'] for r in train]}"
    return [r["lr"] for r in train]


@pytest.mark.parametrize("warmup", [0, 4])
@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedule_matches_transformers(run_qtrain, workdir, schedule, warmup):
    ours = qtrain_lrs(run_qtrain, workdir, schedule, warmup)
    expected = transformers_lrs(ORACLES[schedule], warmup)
    for step, (a, e) in enumerate(zip(ours, expected), start=1):
        assert a == pytest.approx(e, rel=REL, abs=1e-15), (
            f"{schedule}, warmup {warmup}: step {step} lr {a!r}, transformers {e!r}\nqtrain   {ours}\nexpected {expected}")
    if warmup == 0 and schedule == "constant":
        # With no warmup, qtrain's constant is transformers' plain constant schedule.
        assert ours == pytest.approx(transformers_lrs(lambda opt, _: get_constant_schedule(opt), 0), rel=REL)
    if schedule == "cosine":
        # Negative control: the comparison can fail.
        linear = transformers_lrs(ORACLES["linear"], warmup)
        assert max(abs(a - b) for a, b in zip(ours, linear)) > 10 * REL * BASE_LR
    assert all(math.isfinite(a) for a in ours)
