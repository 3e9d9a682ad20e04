"""Hub ids through a fake Hub on loopback (tests/oracle/fake_hub.py): qtrain's downloads land in the cache
exactly as huggingface_hub's snapshot_download puts them, each side reads what the other wrote, and the
faults a real network has (dropped connections, concurrent ranks, gated repos, 404s, corrupt bytes) end as
they should. No request leaves 127.0.0.1."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_hub import TOKEN, FakeHub  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "guanaco.yaml"
MODEL = "huggyllama/llama-7b"
DATASET = "timdettmers/openassistant-guanaco"
TRAIN_FILE = "openassistant_best_replies_train.jsonl"
# A short run of the guanaco recipe with the tiny model: what the recipe names, only smaller.
SMALL = ["training.device=cpu", "training.compute_dtype=float32", "training.max_steps=2", "training.gradient_accumulation=1",
         "lora.r=4", "data.target_max_len=64", "data.max_seq_len=80", "schedule.eval_batches=1", "schedule.save_every=0",
         "logging.report=false", "logging.tensorboard=false", "optimizer.paged=false"]


@pytest.fixture(scope="module")
def tiny_model(shared_data):
    return shared_data / "models" / "llama2c-xs-tok512-hf"


@pytest.fixture(scope="module")
def hub(tiny_model, shared_data, tmp_path_factory):
    from safetensors.torch import load_file, save_file
    rows = (shared_data / "datasets" / "guanaco-format" / "chinkara-open_qa.jsonl").read_bytes().splitlines(keepends=True)
    h = FakeHub()
    model_files = {p.name: p for p in sorted(tiny_model.iterdir()) if p.is_file()}
    h.add("model", MODEL, model_files)
    h.add("model", "gated-org/tiny", model_files, gated=True)
    # The same model in two shards with an index: the layout of every real 7B repository.
    d = tmp_path_factory.mktemp("sharded")
    tensors = load_file(str(tiny_model / "model.safetensors"))
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(d / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sharded = {k: v for k, v in model_files.items() if k != "model.safetensors"}
    sharded.update({p.name: p for p in d.iterdir()})
    sharded["pytorch_model.bin"] = b"not read by qtrain" * 1000  # present in the repo, never downloaded
    h.add("model", "tiny-org/sharded", sharded)
    h.add("dataset", DATASET, {TRAIN_FILE: b"".join(rows[:64]), "openassistant_best_replies_eval.jsonl": b"".join(rows[64:80]),
                               "README.md": b"# guanaco\n"})
    h.start()
    yield h
    h.stop()


def env_for(hub, cache, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=hub.url, HF_HOME=str(Path(cache).parent / "hf_home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
               # A CI proxy (libcurl and httpx both read these) must not see loopback requests.
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def qtrain(qtrain_bin, env, *args, cwd=None):
    return subprocess.run([str(qtrain_bin), *map(str, args)], env=env, capture_output=True, text=True, cwd=cwd, timeout=300)


def dry_run(qtrain_bin, env, tmp, *sets):
    args = [RECIPE, "--dry-run"]
    for s in ["training.device=cpu", f"output_dir={tmp / 'run'}", *sets]:
        args += ["--set", s]
    return qtrain(qtrain_bin, env, *args)


def hf_snapshot(hub, cache, repo_id, repo_type="model", **kw):
    """huggingface_hub's snapshot_download against the fake Hub, in a clean process (its settings are read at import)."""
    code = ("import sys, json; from huggingface_hub import snapshot_download; "
            "print(snapshot_download(sys.argv[1], repo_type=sys.argv[2], cache_dir=sys.argv[3], **json.loads(sys.argv[4])))")
    r = subprocess.run([sys.executable, "-c", code, repo_id, repo_type, str(cache), json.dumps(kw)], env=env_for(hub, cache),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


def cache_tree(cache):
    """Everything that defines a cache's content: blobs (name → sha256), snapshot entries (→ symlink target),
    refs (→ commit). huggingface_hub's own extras (trees/ listings, .locks, CACHEDIR.TAG text) are left out."""
    out = {}
    for p in sorted(Path(cache).rglob("*")):
        rel = p.relative_to(cache).as_posix()
        if rel.startswith(".locks") or "/trees/" in rel or rel == "CACHEDIR.TAG" or (p.is_dir() and not p.is_symlink()):
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif "/refs/" in rel:
            out[rel] = "ref " + p.read_text()
        else:
            out[rel] = "sha256 " + hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def blob_sha(hub, repo_id, path, kind="model"):
    return hub.repos[(kind, repo_id)].etag(path)


# ---------------------------------------------------------------------------------------------------------

def test_guanaco_recipe_downloads_and_cache_equals_snapshot_download(qtrain_bin, hub, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    r = dry_run(qtrain_bin, env_for(hub, ours), tmp_path)
    assert r.returncode == 0, r.stderr
    assert "dry run: recipe, model config" in r.stderr and "[hub] model.safetensors" in r.stderr
    hf_snapshot(hub, theirs, MODEL)
    hf_snapshot(hub, theirs, DATASET, "dataset", allow_patterns=[TRAIN_FILE])
    mine, ref = cache_tree(ours), cache_tree(theirs)
    assert mine == ref
    # The same files, links and refs: the README and the eval split of the dataset repo were not fetched.
    assert any(k.endswith(f"snapshots/{hub.repos[('dataset', DATASET)].commit}/{TRAIN_FILE}") for k in mine)
    assert not any("eval" in k or "README" in k for k in mine)
    assert (ours / "CACHEDIR.TAG").exists()
    # Negative control: the comparison sees one changed link target and one missing ref.
    broken = dict(mine)
    k = next(k for k in broken if k.endswith("/config.json"))
    broken[k] = "-> ../../blobs/0000"
    assert broken != ref
    del broken[next(k for k in broken if k.endswith("refs/main"))]
    assert broken != ref
    # A second run makes one request per repository (the revision) and downloads nothing.
    hub.log.clear()
    r = dry_run(qtrain_bin, env_for(hub, ours), tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(m for m, p, _ in hub.log) == ["GET", "GET"], hub.log
    assert all("/api/" in p for _, p, _ in hub.log)


def test_sharded_model_index_and_shards_only(qtrain_bin, hub, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    r = qtrain(qtrain_bin, env_for(hub, ours), "inspect", "tiny-org/sharded")
    assert r.returncode == 0, r.stderr
    assert "shards       2" in r.stdout
    hf_snapshot(hub, theirs, "tiny-org/sharded", ignore_patterns=["*.bin"])
    assert cache_tree(ours) == cache_tree(theirs)
    assert not any(k.endswith(".bin") for k in cache_tree(ours))


def test_offline_trains_from_a_cache_huggingface_hub_filled(qtrain_bin, hub, tmp_path):
    cache = tmp_path / "cache"
    hf_snapshot(hub, cache, MODEL)
    hf_snapshot(hub, cache, DATASET, "dataset", allow_patterns=[TRAIN_FILE])
    hub.log.clear()
    dead = "http://127.0.0.1:9"  # offline means no request at all: a dead endpoint proves it
    args = [RECIPE, "--set", f"output_dir={tmp_path / 'run'}"]
    for s in SMALL:
        args += ["--set", s]
    r = qtrain(qtrain_bin, {**env_for(hub, cache), "HF_ENDPOINT": dead, "HF_HUB_OFFLINE": "1"}, *args)
    assert r.returncode == 0, r.stderr
    assert hub.log == []
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert f"# from the Hub: \"{MODEL}\"" in config and str(cache) in config
    # Resuming on "another machine" (a cache elsewhere, the same ids) keeps the recipe hash: it continues.
    other = tmp_path / "other-cache"
    hf_snapshot(hub, other, MODEL)
    hf_snapshot(hub, other, DATASET, "dataset", allow_patterns=[TRAIN_FILE])
    more = [str(a).replace("training.max_steps=2", "training.max_steps=3") for a in args] + ["--resume"]
    r = qtrain(qtrain_bin, {**env_for(hub, other), "HF_ENDPOINT": dead, "HF_HUB_OFFLINE": "1"}, *more)
    assert r.returncode == 0, r.stderr
    assert "different recipe" not in r.stderr


def test_offline_names_what_the_cache_lacks(qtrain_bin, hub, tmp_path):
    cache = tmp_path / "cache"
    env = {**env_for(hub, cache), "HF_HUB_OFFLINE": "1"}
    r = dry_run(qtrain_bin, env, tmp_path)
    assert r.returncode == 1 and "HF_HUB_OFFLINE" in r.stderr and "refs/main" in r.stderr, r.stderr
    hf_snapshot(hub, cache, MODEL)
    snap = next((cache / "models--huggyllama--llama-7b" / "snapshots").iterdir())
    (snap / "model.safetensors").resolve().unlink()  # the link dangles: the blob is gone
    r = dry_run(qtrain_bin, env, tmp_path)
    assert r.returncode == 1 and "lacks 'model.safetensors'" in r.stderr, r.stderr


def test_transformers_loads_the_cache_qtrain_filled(qtrain_bin, hub, tiny_model, tmp_path):
    cache = tmp_path / "cache"
    r = qtrain(qtrain_bin, env_for(hub, cache), "inspect", MODEL)
    assert r.returncode == 0, r.stderr
    code = f"""
import torch, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained({MODEL!r}, cache_dir=sys.argv[1], torch_dtype=torch.float32)
ref = AutoModelForCausalLM.from_pretrained(sys.argv[2], torch_dtype=torch.float32)
tok = AutoTokenizer.from_pretrained({MODEL!r}, cache_dir=sys.argv[1])
ids = tok("Hello world", return_tensors="pt").input_ids
assert torch.equal(m(ids).logits, ref(ids).logits)
print("ok", ids.shape[1])
"""
    env = {**env_for(hub, cache), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    p = subprocess.run([sys.executable, "-c", code, str(cache), str(tiny_model)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr[-3000:]


def test_dropped_connection_resumes_in_the_same_run(qtrain_bin, hub, tmp_path):
    sha = blob_sha(hub, MODEL, "model.safetensors")
    hub.drop[sha] = [1, 300_000]
    hub.log.clear()
    r = qtrain(qtrain_bin, env_for(hub, tmp_path / "cache"), "inspect", MODEL)
    hub.drop.pop(sha, None)
    assert r.returncode == 0, r.stderr
    assert "connection lost in model.safetensors" in r.stderr
    ranges = [rng for m, p, rng in hub.log if m == "GET" and p == f"/cdn/{sha}"]
    assert ranges[0] is None and ranges[1] is not None and int(ranges[1][6:-1]) >= 300_000, ranges
    blob = tmp_path / "cache" / "models--huggyllama--llama-7b" / "blobs" / sha
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha


def host_tag():
    """qtrain's partial-file host tag: FNV-1a of the host name, 8 hex digits (data/hub/hub_cache.cpp)."""
    h = 2166136261
    for c in socket.gethostname().encode():
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return f"{h:08x}"


def test_interrupted_download_is_kept_and_the_next_run_resumes(qtrain_bin, hub, tmp_path):
    sha = blob_sha(hub, MODEL, "model.safetensors")
    cache = tmp_path / "cache"
    blobs = cache / "models--huggyllama--llama-7b" / "blobs"
    hub.drop[sha] = [1, 400_000]
    r = qtrain(qtrain_bin, env_for(hub, cache, QTRAIN_HUB_DOWNLOAD_ATTEMPTS=1), "inspect", MODEL)
    hub.drop.pop(sha, None)
    assert r.returncode == 1, r.stderr
    # The partial file is the process's own (never shared by two writers), named in the error.
    parts = list(blobs.glob(f"{sha}.qtrain-{host_tag()}-*.incomplete"))
    assert len(parts) == 1, list(blobs.iterdir())
    part = parts[0]
    assert "model.safetensors" in r.stderr and str(part) in r.stderr and "resumes" in r.stderr, r.stderr
    assert part.stat().st_size == 400_000
    assert not (blobs / sha).exists()
    hub.log.clear()
    r = qtrain(qtrain_bin, env_for(hub, cache), "inspect", MODEL)
    assert r.returncode == 0, r.stderr
    # The next process (its writer is dead) takes the partial over and resumes it.
    assert [rng for m, p, rng in hub.log if p == f"/cdn/{sha}" and m == "GET"] == ["bytes=400000-"]
    assert not list(blobs.glob("*.incomplete"))
    assert hashlib.sha256((blobs / sha).read_bytes()).hexdigest() == sha


def test_partials_of_older_versions_are_taken_over_and_live_ones_left_alone(qtrain_bin, hub, tmp_path):
    sha = blob_sha(hub, MODEL, "model.safetensors")
    data = hub.blobs[sha]
    cache = tmp_path / "cache"
    blobs = cache / "models--huggyllama--llama-7b" / "blobs"
    blobs.mkdir(parents=True)
    # The shared <etag>.incomplete that older qtrain and huggingface_hub versions wrote under the lock.
    (blobs / f"{sha}.incomplete").write_bytes(data[:300_000])
    hub.log.clear()
    r = qtrain(qtrain_bin, env_for(hub, cache), "inspect", MODEL)
    assert r.returncode == 0, r.stderr
    assert [rng for m, p, rng in hub.log if p == f"/cdn/{sha}" and m == "GET"] == ["bytes=300000-"]
    assert not list(blobs.glob("*.incomplete"))
    assert hashlib.sha256((blobs / sha).read_bytes()).hexdigest() == sha
    # A partial that a live process of this host writes (this test's own pid) is never taken: a fresh download.
    cache2 = tmp_path / "cache2"
    blobs2 = cache2 / "models--huggyllama--llama-7b" / "blobs"
    blobs2.mkdir(parents=True)
    live = blobs2 / f"{sha}.qtrain-{host_tag()}-{os.getpid()}.incomplete"
    live.write_bytes(b"x" * 200_000)
    hub.log.clear()
    r = qtrain(qtrain_bin, env_for(hub, cache2), "inspect", MODEL)
    assert r.returncode == 0, r.stderr
    assert [rng for m, p, rng in hub.log if p == f"/cdn/{sha}" and m == "GET"] == [None]
    assert live.read_bytes() == b"x" * 200_000
    assert hashlib.sha256((blobs2 / sha).read_bytes()).hexdigest() == sha


def test_a_cached_blob_of_the_wrong_size_is_fetched_again(qtrain_bin, hub, tmp_path):
    sha = blob_sha(hub, MODEL, "model.safetensors")
    blobs = tmp_path / "cache" / "models--huggyllama--llama-7b" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / sha).write_bytes(hub.blobs[sha][:1000])  # a torn blob (another process's partial published)
    hub.log.clear()
    r = qtrain(qtrain_bin, env_for(hub, tmp_path / "cache"), "inspect", MODEL)
    assert r.returncode == 0, r.stderr
    assert "has 1000 bytes, the Hub says" in r.stderr, r.stderr
    assert hashlib.sha256((blobs / sha).read_bytes()).hexdigest() == sha


def test_an_empty_file_is_downloaded(qtrain_bin, hub, tiny_model, tmp_path):
    files = {p.name: p for p in sorted(tiny_model.iterdir()) if p.is_file()}
    files["chat_template.jinja"] = b""          # empty, served from the resolve URL
    files["quantize_config.json"] = b""         # empty too
    hub.add("model", "tiny-org/with-empty", files)
    cache = tmp_path / "cache"
    r = qtrain(qtrain_bin, env_for(hub, cache), "inspect", "tiny-org/with-empty")
    assert "cannot publish" not in r.stderr, r.stderr
    snap = next((cache / "models--tiny-org--with-empty" / "snapshots").iterdir())
    assert (snap / "chat_template.jinja").read_bytes() == b""
    assert (snap / "quantize_config.json").read_bytes() == b""
    assert not list((cache / "models--tiny-org--with-empty" / "blobs").glob("*.incomplete"))


def test_two_concurrent_processes_make_one_intact_blob(qtrain_bin, hub, tmp_path):
    # No timing: the fake Hub holds the first process's download of the shard (so it keeps the blob's lock)
    # until the second process says it is waiting for that lock; if the second one starts very late (a loaded
    # CI machine), the gate gives up after a generous timeout and only the one-blob assertions stand.
    sha = blob_sha(hub, MODEL, "model.safetensors")
    cache = tmp_path / "cache"
    hub.log.clear()
    hub.gate_sha, hub.gate_timed_out = sha, None
    hub.gate_open.clear(), hub.gate_held.clear()
    waiting = "waiting: another process is downloading model.safetensors"
    try:
        env = env_for(hub, cache)
        procs = [subprocess.Popen([str(qtrain_bin), "inspect", MODEL], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        errs = [[], []]

        def read(i):
            for line in procs[i].stderr:
                errs[i].append(line)
                if waiting in line:
                    hub.gate_open.set()
        readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
        for t in readers:
            t.start()
        outs = [p.stdout.read() for p in procs]
        for p in procs:
            p.wait(timeout=300)
        for t in readers:
            t.join(timeout=60)
    finally:
        hub.gate_sha = None
        hub.gate_open.set()
    errs = ["".join(e) for e in errs]
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err
    # One process downloaded, the other waited on the blob's lock and found it complete.
    assert sum(1 for m, p, _ in hub.log if m == "GET" and p == f"/cdn/{sha}") == 1, hub.log
    assert hub.gate_held.is_set()
    if hub.gate_timed_out is False:  # the gate was opened by the second process's wait
        assert sum(waiting in e for e in errs) == 1, errs
    blobs = cache / "models--huggyllama--llama-7b" / "blobs"
    assert hashlib.sha256((blobs / sha).read_bytes()).hexdigest() == sha
    assert not list(blobs.glob("*.incomplete"))


def test_corrupt_bytes_are_refused(qtrain_bin, hub, tmp_path):
    sha = blob_sha(hub, MODEL, "model.safetensors")
    good = hub.blobs[sha]
    hub.blobs[sha] = good[:-1] + bytes([good[-1] ^ 1])  # same size, one bit off
    try:
        r = qtrain(qtrain_bin, env_for(hub, tmp_path / "cache"), "inspect", MODEL)
    finally:
        hub.blobs[sha] = good
    assert r.returncode == 1 and "does not match the Hub's " + sha in r.stderr, r.stderr
    assert not (tmp_path / "cache" / "models--huggyllama--llama-7b" / "blobs" / sha).exists()


def test_gated_repo_needs_a_token(qtrain_bin, hub, tmp_path):
    cache = tmp_path / "cache"
    r = qtrain(qtrain_bin, env_for(hub, cache), "inspect", "gated-org/tiny")
    assert r.returncode == 2, r.stderr
    assert "gated or private" in r.stderr and "huggingface-cli login" in r.stderr and "HF_TOKEN" in r.stderr, r.stderr
    r = qtrain(qtrain_bin, env_for(hub, cache, HF_TOKEN="hf_wrong"), "inspect", "gated-org/tiny")
    assert r.returncode == 2 and "the token from HF_TOKEN was refused" in r.stderr, r.stderr
    hub.auth_log.clear()
    assert qtrain(qtrain_bin, env_for(hub, cache, HF_TOKEN=TOKEN), "inspect", "gated-org/tiny").returncode == 0
    # The token goes to the endpoint (the API and resolve requests) and never to the storage it redirects to.
    assert any(a == f"Bearer {TOKEN}" for _, p, a in hub.auth_log if "/resolve/" in p), hub.auth_log
    cdn = [(p, a) for _, p, a in hub.auth_log if p.startswith("/cdn/")]
    assert cdn and all(a is None for _, a in cdn), cdn
    # The token file `huggingface-cli login` writes ($HF_HOME/token) works the same.
    cache2 = tmp_path / "cache2"
    env = env_for(hub, cache2)
    Path(env["HF_HOME"]).mkdir(parents=True, exist_ok=True)
    (Path(env["HF_HOME"]) / "token").write_text(TOKEN + "\n")
    r = qtrain(qtrain_bin, env, "inspect", "gated-org/tiny")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("model,file,needle", [
    ("nobody/missing", None, "model repository 'nobody/missing' not found"),
    (f"{MODEL}@no-such-branch", None, "has no revision 'no-such-branch'"),
    (MODEL, f"hf://datasets/{DATASET}/missing.jsonl", "has no file 'missing.jsonl'"),
])
def test_not_found_names_repo_revision_and_file(qtrain_bin, hub, tmp_path, model, file, needle):
    sets = [f"model.path={model}"] + ([f"data.files=[{file}]"] if file else [])
    r = dry_run(qtrain_bin, env_for(hub, tmp_path / "cache"), tmp_path, *sets)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "HTTP 404" in r.stderr and "guanaco.yaml" in r.stderr, r.stderr


def test_unreachable_hub_is_a_clear_failure(qtrain_bin, hub, tmp_path):
    env = {**env_for(hub, tmp_path / "cache"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    r = qtrain(qtrain_bin, env, "inspect", MODEL)
    assert r.returncode == 1 and "cannot reach http://127.0.0.1:9" in r.stderr, r.stderr


def test_dataset_repo_id_takes_its_train_files(qtrain_bin, hub, tmp_path):
    # A bare dataset id: every data file of a supported format, here only the train split by name.
    r = dry_run(qtrain_bin, env_for(hub, tmp_path / "cache"), tmp_path, f"data.files=[{DATASET}]")
    assert r.returncode == 0, r.stderr
    assert "64 records" in r.stderr, r.stderr


def test_local_paths_are_never_hub_ids(qtrain_bin, hub, tiny_model, tmp_path):
    # An existing org/name-shaped directory wins over the Hub; the fake Hub sees no request.
    (tmp_path / "huggyllama").mkdir()
    os.symlink(tiny_model, tmp_path / "huggyllama" / "llama-7b")
    hub.log.clear()
    r = qtrain(qtrain_bin, env_for(hub, tmp_path / "cache"), "inspect", MODEL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert hub.log == []


@pytest.mark.parametrize("evil", ["../../../escaped.json", "/ABS/escaped.json", "data/../../../../escaped.json"])
def test_a_listing_that_names_paths_outside_the_repo_is_refused(qtrain_bin, hub, tmp_path, evil):
    evil = evil.replace("/ABS", str(tmp_path))
    repo_id = "evil-org/listing" + str(abs(hash(evil)) % 1000)
    rows = hub.repos[("dataset", DATASET)].files[TRAIN_FILE]
    hub.add("dataset", repo_id, {"train.jsonl": rows}, extra_listing=[evil])
    cache = tmp_path / "cache"
    hub.log.clear()
    r = dry_run(qtrain_bin, env_for(hub, cache), tmp_path, f"data.files=[{repo_id}]")
    assert r.returncode == 1, r.stderr
    assert f"dataset repository '{repo_id}'" in r.stderr and f"names the file '{evil}'" in r.stderr, r.stderr
    assert not any(p.endswith("escaped.json") for _, p, _ in hub.log), hub.log
    # Nothing was written anywhere but inside the cache's own folders.
    assert not list(tmp_path.rglob("escaped.json")), list(tmp_path.rglob("escaped.json"))
    # Negative control: the same repository without the bad name downloads.
    del hub.repos[("dataset", repo_id)]
    hub.add("dataset", repo_id, {"train.jsonl": rows})
    r = dry_run(qtrain_bin, env_for(hub, cache), tmp_path, f"data.files=[{repo_id}]")
    assert r.returncode == 0 and "64 records" in r.stderr, r.stderr


def test_an_expired_storage_url_is_renewed_and_the_download_resumes(qtrain_bin, hub, tmp_path):
    # Each storage URL works for one GET: the connection drops at 300 kB, the resume with the same URL gets
    # 403 (expired), qtrain asks the Hub for a fresh URL and resumes; a gated-repo message would be wrong.
    sha = blob_sha(hub, MODEL, "model.safetensors")
    hub.cdn_token_uses, hub.cdn_refusals = 1, 0
    hub.drop[sha] = [1, 300_000]
    hub.log.clear()
    try:
        r = qtrain(qtrain_bin, env_for(hub, tmp_path / "cache"), "inspect", MODEL)
    finally:
        hub.cdn_token_uses = None
        hub.drop.pop(sha, None)
    assert r.returncode == 0, r.stderr
    assert hub.cdn_refusals == 1 and "storage URL of model.safetensors was refused" in r.stderr, r.stderr
    assert "gated" not in r.stderr
    ranges = [rng for m, p, rng in hub.log if m == "GET" and p == f"/cdn/{sha}"]
    assert ranges[0] is None and all(int(x[6:-1]) >= 300_000 for x in ranges[1:]) and len(ranges) == 3, ranges
    blob = tmp_path / "cache" / "models--huggyllama--llama-7b" / "blobs" / sha
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha


def test_a_storage_that_refuses_every_url_is_no_gated_repo(qtrain_bin, hub, tmp_path):
    hub.cdn_token_uses = 0  # every storage URL is dead on arrival
    try:
        r = qtrain(qtrain_bin, env_for(hub, tmp_path / "cache", HF_TOKEN=TOKEN), "inspect", MODEL)
    finally:
        hub.cdn_token_uses = None
    assert r.returncode == 1, r.stderr
    assert "storage server refused" in r.stderr and "HTTP 403" in r.stderr and "Request has expired" in r.stderr, r.stderr
    assert "gated" not in r.stderr and "login" not in r.stderr and "token=" not in r.stderr, r.stderr


def test_plan_fetches_config_json_only(qtrain_bin, hub, tmp_path):
    hub.log.clear()
    cache = tmp_path / "cache"
    r = qtrain(qtrain_bin, env_for(hub, cache, HF_HUB_ETAG_TIMEOUT="abc"), "plan", RECIPE, "--gpu-mem", "24GiB")
    assert r.returncode == 0, r.stderr
    assert "HF_HUB_ETAG_TIMEOUT='abc'" in r.stderr and "using the default" in r.stderr, r.stderr
    fetched = {p.rsplit("/", 1)[-1] for m, p, _ in hub.log if "/resolve/" in p}
    assert fetched == {"config.json"}, hub.log
    assert not any(p.startswith("/cdn/") for _, p, _ in hub.log), hub.log
    snap = next((cache / "models--huggyllama--llama-7b" / "snapshots").iterdir())
    assert [p.name for p in snap.iterdir()] == ["config.json"]


def test_a_bad_timeout_does_not_stop_a_recipe_of_local_paths(qtrain_bin, hub, tiny_model, shared_data, tmp_path):
    data = shared_data / "datasets" / "guanaco-format" / "chinkara-open_qa.jsonl"
    r = dry_run(qtrain_bin, env_for(hub, tmp_path / "cache", HF_HUB_ETAG_TIMEOUT="abc"), tmp_path,
                f"model.path={tiny_model}", f"data.files=[{data}]")
    assert r.returncode == 0, r.stderr
    assert "HF_HUB_ETAG_TIMEOUT" not in r.stderr, r.stderr


def test_a_whole_dataset_repo_is_listed_by_the_hub_not_by_the_cache(qtrain_bin, hub, tmp_path):
    repo = hub.repos[("dataset", DATASET)]
    cache = tmp_path / "cache"
    pinned = f"{DATASET}@{repo.commit}"
    # Only the eval file is cached (named alone earlier); the whole-repo reference at that commit must ask the Hub
    # for the listing and fetch the train file, not train on the eval file that happens to be cached.
    r = dry_run(qtrain_bin, env_for(hub, cache), tmp_path, f"data.files=[hf://datasets/{pinned}/openassistant_best_replies_eval.jsonl]")
    assert r.returncode == 0, r.stderr
    hub.log.clear()
    r = dry_run(qtrain_bin, env_for(hub, cache), tmp_path, f"data.files=[{pinned}]")
    assert r.returncode == 0, r.stderr
    assert any("/api/datasets/" in p for _, p, _ in hub.log), hub.log
    assert "64 records" in r.stderr, r.stderr
    # Offline, the cache's files are all there is: said in a note.
    r = dry_run(qtrain_bin, env_for(hub, cache, HF_HUB_OFFLINE="1"), tmp_path, f"data.files=[{pinned}]")
    assert r.returncode == 0, r.stderr
    assert "are the ones the cache holds" in r.stderr, r.stderr
