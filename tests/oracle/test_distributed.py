"""Data-parallel training on the CPU through Gloo, several qtrain processes on one machine.

The oracle is qtrain in one process with the same global batch: rank r of W takes global micro-batches
r, r + W, ... (data/dataset/batching.h), so W ranks with gradient_accumulation k see exactly the
examples one process sees with W·k, and the summed gradients are the same numbers.

Tolerances and where they come from:
  * 2 ranks: bit-identical losses, gradient norms and adapter bytes. Gloo's two-rank all-reduce adds
    the other rank's fp32 gradient to this rank's once, which is the one addition autograd makes when
    one process accumulates two micro-batches (a + b == b + a in IEEE arithmetic); the token and loss
    sums are fp64 integers / one addition. Both sides run with OMP_NUM_THREADS=1 (torchrun's default),
    so every kernel sums in the same order.
  * 4 ranks: Gloo sums four partial gradients in another order than ((a + b) + c) + d: fp32
    reassociation. Measured: step 1's gradient norm 1e-9 relative apart (bound 1e-7); losses of 3 steps
    4e-8 relative (bound 1e-6); the adapter after 3 steps 1.4e-5 relative L2 (bound 1e-4: AdamW divides
    each element's step by its own gradient scale, so an element whose gradient is near eps turns a
    rounding difference into a visible one, 7e-5 absolute at lr 3e-3 on one element).

Launches use free ports; every run of the same data shares one token cache, so each run costs its
start-up plus a few steps of the tiny Llama (dim 64, 5 layers).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).parent / "torchrun"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RECIPE = """\
model:
  path: {model}
lora:
  r: 4
  alpha: 8
  dropout: {dropout}
data:
  files: [{data}]
  format: alpaca
  max_seq_len: 256
  eval_fraction: 0.02
  seed: 3
  cache_dir: {cache}
training:
  micro_batch_size: 4
  gradient_accumulation: 1
  max_steps: 6
  learning_rate: 3.0e-3
  seed: 5
  device: cpu
schedule:
  log_every: 1
  save_every: 3
  eval_batches: 4
logging:
  tensorboard: false
  report: false
distributed:
  timeout: {timeout}
output_dir: {out}
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory, shared_data, qtrain_bin):
    model = shared_data / "models" / "llama2c-xs-tok512-hf"
    if not model.is_dir():
        pytest.skip(f"{model} not found")
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    d = tmp_path_factory.mktemp("dist")

    class W:
        root = d
        binary = qtrain_bin

        def recipe(self, name, dropout=0.0, timeout=30):
            p = d / f"{name}.yaml"
            p.write_text(RECIPE.format(model=model, data=ROOT / "recipes" / "quickstart" / "train.jsonl", cache=d / "cache",
                                       dropout=dropout, timeout=timeout, out=d / name))
            return p

    return W()


def env1(**extra):
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
         and not k.startswith("SLURM_")}
    e["OMP_NUM_THREADS"] = "1"
    e.update({k: str(v) for k, v in extra.items()})
    return e


def single(ws, recipe, *sets, resume=False, check=True):
    args = [str(ws.binary), str(recipe)] + [a for s in sets for a in ("--set", s)] + (["--resume"] if resume else [])
    r = subprocess.run(args, capture_output=True, text=True, env=env1(), timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stderr[-4000:]}")
    return r


def torchrun(ws, n, recipe, *sets, resume=False, check=True):
    args = [str(TORCHRUN), "--no-python", "--nproc-per-node", str(n), "--master-port", str(free_port()), str(ws.binary), str(recipe)]
    args += [a for s in sets for a in ("--set", s)] + (["--resume"] if resume else [])
    r = subprocess.run(args, capture_output=True, text=True, env=env1(), timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stderr[-4000:]}")
    return r


def manual_rank(ws, recipe, rank, world, port, *sets, resume=False):
    """One rank started by hand with the env:// variables (no torchrun agent: rank 0 serves the store)."""
    args = [str(ws.binary), str(recipe)] + [a for s in sets for a in ("--set", s)] + (["--resume"] if resume else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env1(RANK=rank, WORLD_SIZE=world, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=world,
                                     MASTER_ADDR="127.0.0.1", MASTER_PORT=port))


def records(out: Path, kind="train"):
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in recs if r["kind"] == kind}


def adapter_bytes(out: Path) -> bytes:
    return (out / "adapter" / "adapter_model.safetensors").read_bytes()


def adapter_tensors(out: Path):
    from safetensors.torch import load_file
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def two_ranks(ws):
    """The reference 2-rank run (6 steps, k 1), made once per module."""
    out = ws.root / "two_k1"
    if not (out / "adapter").exists():
        r = torchrun(ws, 2, ws.recipe("two_k1"))
        assert "data parallel: 2 ranks (torchrun, gloo" in r.stderr
    return out


def test_two_ranks_train_exactly_like_one_process_with_the_same_global_batch(ws):
    one = ws.recipe("one_k2")
    single(ws, one, "training.gradient_accumulation=2")
    two_ranks(ws)
    a, b = records(ws.root / "one_k2"), records(ws.root / "two_k1")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in a:
        for k in ("loss", "grad_norm", "tokens"):
            assert a[s][k] == b[s][k], f"step {s} {k}: one process {a[s][k]!r}, two ranks {b[s][k]!r}"
    assert records(ws.root / "one_k2", "eval") .keys() == records(ws.root / "two_k1", "eval").keys()
    assert adapter_bytes(ws.root / "one_k2") == adapter_bytes(ws.root / "two_k1")
    # Rank 0 alone writes: one metrics file, checkpoints with both ranks' state.
    assert (ws.root / "two_k1" / "checkpoints" / "step-6" / "ranks.safetensors").exists()


def test_uneven_ranks_are_weighted_by_tokens_not_by_rank(ws):
    """Negative control: the per-rank mean (each rank normalising by its own tokens) is a different number.
    Each rank's own mean loss at step 1 comes from one process on that rank's micro-batch alone (global
    micro-batch 0, then 1 after an update of lr 1e-12, which moves the loss by < 1e-9)."""
    probe = ws.recipe("probe")
    single(ws, probe, "training.max_steps=2", "training.learning_rate=1e-12", "training.max_grad_norm=0")
    p = records(ws.root / "probe")
    m0, t0 = p[1]["loss"], p[1]["tokens"]
    m1, t1 = p[2]["loss"], p[2]["tokens"] - p[1]["tokens"]
    assert t0 != t1, f"both ranks have {t0} target tokens: the data does not exercise the weighting"
    two = records(two_ranks(ws))
    weighted = (m0 * t0 + m1 * t1) / (t0 + t1)
    per_rank_mean = (m0 + m1) / 2
    print(f"rank 0: {t0} tokens mean {m0:.6f}; rank 1: {t1} tokens mean {m1:.6f}; "
          f"two ranks {two[1]['loss']:.9f} token-weighted {weighted:.9f} per-rank mean {per_rank_mean:.9f}")
    assert two[1]["tokens"] == t0 + t1
    assert abs(two[1]["loss"] - weighted) < 1e-7 * weighted
    assert abs(two[1]["loss"] - per_rank_mean) > 1e-3, "the negative control does not separate"


def test_four_ranks_match_one_process_within_fp32_reassociation(ws):
    one = ws.recipe("one_k4")
    single(ws, one, "training.gradient_accumulation=4", "training.max_steps=3", "schedule.save_every=0")
    four = ws.recipe("four_k1")
    torchrun(ws, 4, four, "training.max_steps=3", "schedule.save_every=0")
    a, b = records(ws.root / "one_k4"), records(ws.root / "four_k1")
    for s in (1, 2, 3):
        assert a[s]["tokens"] == b[s]["tokens"]
        assert abs(a[s]["loss"] - b[s]["loss"]) <= 1e-6 * abs(a[s]["loss"]), (s, a[s]["loss"], b[s]["loss"])
    # Step 1 starts from the same adapter: only the gradient sum's order differs.
    assert abs(a[1]["grad_norm"] - b[1]["grad_norm"]) <= 1e-7 * a[1]["grad_norm"]
    ta, tb = adapter_tensors(ws.root / "one_k4"), adapter_tensors(ws.root / "four_k1")
    diff = sum(float((ta[k] - tb[k]).double().pow(2).sum()) for k in ta) ** 0.5
    norm = sum(float(ta[k].double().pow(2).sum()) for k in ta) ** 0.5
    print(f"4 ranks vs 1 process: adapter relative L2 difference {diff / norm:.3e}")
    assert diff <= 1e-4 * norm


def test_resume_on_the_same_world_size_is_bit_exact_with_dropout(ws):
    """Dropout on: every rank's own dropout stream must come back from the checkpoint."""
    full = ws.recipe("drop_full", dropout=0.1)
    torchrun(ws, 2, full)
    part = ws.recipe("drop_part", dropout=0.1)
    torchrun(ws, 2, part, "training.max_steps=3")
    r = torchrun(ws, 2, part, resume=True)
    assert "resumed from" in r.stderr
    assert adapter_bytes(ws.root / "drop_full") == adapter_bytes(ws.root / "drop_part")
    a, b = records(ws.root / "drop_full"), records(ws.root / "drop_part")
    assert [a[s]["loss"] for s in range(1, 7)] == [b[s]["loss"] for s in range(1, 7)]


def _eval_losses(out):
    return {s: r["eval_loss"] for s, r in records(out, "eval").items()}


def test_resume_two_ranks_on_one_and_one_on_two(ws):
    # 2 → 1: the checkpoint of drop_part at step 3 (2 ranks × 4 rows: global micro-batches 0..5 done).
    src = ws.root / "drop_part" / "checkpoints" / "step-3"
    if not src.exists():  # run alone (-k): make the 2-rank checkpoint the test above leaves
        torchrun(ws, 2, ws.recipe("drop_part", dropout=0.1), "training.max_steps=3")
    if not (ws.root / "drop_full" / "adapter").exists():
        torchrun(ws, 2, ws.recipe("drop_full", dropout=0.1))
    to1 = ws.recipe("to_one", dropout=0.1)
    r = subprocess.run([str(ws.binary), str(to1), "--resume", str(src)], capture_output=True, text=True, env=env1(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed on 1 rank from a checkpoint of 2: data cursor re-sharded (6 of" in r.stderr, r.stderr[-2000:]
    # 1 → 2: a one-process checkpoint at step 3 (global micro-batches 0..2 done) resumed on two ranks:
    # position ceil(3 / 2) = 2 per rank, one micro-batch skipped so none is trained twice.
    one = ws.recipe("one_src", dropout=0.1)
    single(ws, one, "training.max_steps=3")
    to2 = ws.recipe("to_two", dropout=0.1)
    args = [str(TORCHRUN), "--no-python", "--nproc-per-node", "2", "--master-port", str(free_port()), str(ws.binary), str(to2),
            "--resume", str(ws.root / "one_src" / "checkpoints" / "step-3")]
    r = subprocess.run(args, capture_output=True, text=True, env=env1(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed on 2 ranks from a checkpoint of 1: data cursor re-sharded (3 of" in r.stderr
    assert "1 micro-batch of this epoch skipped" in r.stderr
    # The loss continues where it was: the resumed runs end near the uninterrupted one, far from the start.
    full = _eval_losses(ws.root / "drop_full")
    for name in ("to_one", "to_two"):
        e = _eval_losses(ws.root / name)
        print(f"{name}: eval loss at 6 {e[6]:.4f}; uninterrupted 2 ranks {full[0]:.4f} → {full[6]:.4f}")
        assert abs(e[6] - full[6]) < 0.5 * abs(full[0] - full[6])


def test_a_missing_rank_is_an_error_within_the_timeout(ws):
    rec = ws.recipe("missing", timeout=2)
    port = free_port()
    t0 = time.monotonic()
    p = manual_rank(ws, rec, 0, 2, port)  # WORLD_SIZE 2, only rank 0 started
    _, err = p.communicate(timeout=60)
    dt = time.monotonic() - t0
    assert p.returncode == 2, err
    assert "only 1 of 2 ranks joined" in err and "missing: rank 1" in err, err
    assert dt < 2 + 20, dt
    # A rank whose rank 0 never comes: cannot reach the store, within the timeout.
    t0 = time.monotonic()
    p = manual_rank(ws, rec, 1, 2, free_port())
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "cannot reach the rendezvous store" in err, err
    assert time.monotonic() - t0 < 2 + 20


def test_bad_launches_fail_clearly(ws):
    rec = ws.recipe("bad", timeout=4)
    # MASTER_ADDR missing.
    env = env1(RANK=0, WORLD_SIZE=2, MASTER_PORT=free_port())
    r = subprocess.run([str(ws.binary), str(rec)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "MASTER_ADDR not set" in r.stderr, r.stderr
    # RANK outside WORLD_SIZE.
    env = env1(RANK=2, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    r = subprocess.run([str(ws.binary), str(rec)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "RANK=2 is outside 0..1" in r.stderr, r.stderr
    # The port is taken by something else.
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        p = manual_rank(ws, rec, 0, 2, port)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and f"MASTER_PORT {port} is already in use" in err, err
    # A recipe that asks for 2 ranks, run as one process.
    r = single(ws, rec, "distributed.world_size=2", check=False)
    assert r.returncode == 2 and "distributed.world_size is 2, but this is a single process" in r.stderr, r.stderr


def _wait_for(path: Path, procs, limit=120):
    t0 = time.monotonic()
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"a rank exited early ({p.returncode}): {p.stderr.read()[-3000:]}")
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def test_a_killed_rank_stops_the_others_with_its_name_and_the_run_resumes(ws):
    rec = ws.recipe("killed", timeout=20)
    port = free_port()
    sets = ("training.max_steps=400", "schedule.save_every=2", "schedule.eval_batches=1")
    r0 = manual_rank(ws, rec, 0, 2, port, *sets)
    r1 = manual_rank(ws, rec, 1, 2, port, *sets)
    _wait_for(ws.root / "killed" / "checkpoints" / "step-2", [r0, r1])
    r1.kill()
    t0 = time.monotonic()
    _, err = r0.communicate(timeout=60)
    dt = time.monotonic() - t0
    r1.communicate()
    print(f"rank 0 exited {dt:.1f} s after rank 1 was killed")
    assert r0.returncode == 1, err[-3000:]
    assert "lost rank 1 (pid" in err, err[-3000:]
    assert dt < 20, dt
    cks = sorted((ws.root / "killed" / "checkpoints").glob("step-*"))
    assert cks and all((c / "trainer_state.h5").exists() for c in cks)
    # Restart both ranks with --resume: continues from the last checkpoint to the (shortened) end.
    last = max(int(c.name.split("-")[1]) for c in cks)
    port = free_port()
    end = f"training.max_steps={last + 2}"
    q0 = manual_rank(ws, rec, 0, 2, port, end, resume=True)
    q1 = manual_rank(ws, rec, 1, 2, port, end, resume=True)
    _, e0 = q0.communicate(timeout=120)
    q1.communicate(timeout=120)
    assert q0.returncode == 0 and q1.returncode == 0, e0[-3000:]
    assert f"resumed from {ws.root / 'killed' / 'checkpoints' / f'step-{last}'}" in e0
    assert (ws.root / "killed" / "adapter" / "adapter_model.safetensors").exists()


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(ws):
    rec = ws.recipe("sigterm", timeout=20)
    port = free_port()
    sets = ("training.max_steps=400", "schedule.save_every=0", "schedule.eval_batches=1")
    r0 = manual_rank(ws, rec, 0, 2, port, *sets)
    r1 = manual_rank(ws, rec, 1, 2, port, *sets)
    t0 = time.monotonic()
    log = ws.root / "sigterm" / "metrics.jsonl"
    while not (log.exists() and '"step": 2,' in log.read_text()):
        assert time.monotonic() - t0 < 120 and r0.poll() is None, "rank 0 ended before step 2"
        time.sleep(0.05)
    r1.send_signal(signal.SIGTERM)
    _, e0 = r0.communicate(timeout=60)
    _, e1 = r1.communicate(timeout=60)
    assert r0.returncode == 0 and r1.returncode == 0, e0[-2000:] + e1[-2000:]
    assert "stopped by signal 15" in e0  # rank 0 names the signal rank 1 received
    cks = sorted((ws.root / "sigterm" / "checkpoints").glob("step-*"))
    assert len(cks) == 1 and (cks[0] / "ranks.safetensors").exists()
    step = int(cks[0].name.split("-")[1])
    assert max(records(ws.root / "sigterm")) == step


def test_slurm_variables_launch_the_same_ranks(ws):
    """`srun qtrain RECIPE`: no torchrun variables; rank, size and rank 0's host come from SLURM_*."""
    rec = ws.recipe("slurm")
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = env1(SLURM_PROCID=rank, SLURM_NTASKS=2, SLURM_LOCALID=rank, SLURM_NTASKS_PER_NODE=2,
                   SLURM_JOB_NODELIST="localhost", MASTER_PORT=port)
        procs.append(subprocess.Popen([str(ws.binary), str(rec), "--set", "training.max_steps=2"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    assert f"data parallel: 2 ranks (slurm, gloo, rendezvous localhost:{port}" in errs[0]
    assert records(ws.root / "slurm")[2]["loss"] == records(two_ranks(ws))[2]["loss"]
