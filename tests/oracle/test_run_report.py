"""report.html of a real (tiny) run, read by independent parsers and by a browser.

A quick-start model trains 6 steps (log every step, evaluate every 3), then:

  * Python's html.parser walks the whole page; every <svg> is well-formed XML (xml.etree), and each
    chart's polyline has exactly one point per finite value of metrics.jsonl for its series;
  * nothing is fetched: no <script>, <link>, <img>, src=, href= or url(;
  * `qtrain report RUN_DIR --out F` writes the same charts; a directory with only metrics.jsonl works;
  * headless Chromium (Debian's `chromium`, skipped when absent) loads the page: its serialized DOM
    keeps every polyline and their points, and it paints non-empty screenshots at a desktop and a
    phone width (scripts/report_screenshot.sh makes the same screenshots to look at).
"""
import json
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "quickstart.yaml"
DATA = f"data.files=[{ROOT / 'recipes' / 'quickstart' / 'train.jsonl'}]"
SVG = "{http://www.w3.org/2000/svg}"
# chart series → (kind, key, scale) in metrics.jsonl
SERIES = {"train": ("train", "loss"), "held-out": ("eval", "eval_loss"), "lr": ("train", "lr"), "grad_norm": ("train", "grad_norm"),
          "tokens_per_s": ("train", "tokens_per_s"), "peak_mem_mib": ("train", "peak_mem_mib"), "eval_token_acc": ("eval", "eval_token_acc")}


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def svgs_of(html):
    return [ET.fromstring(m) for m in re.findall(r"<svg .*?</svg>", html, flags=re.S)]


def expected_counts(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {name: sum(1 for r in records if r["kind"] == kind and r.get(key) is not None and math.isfinite(r[key]))
            for name, (kind, key) in SERIES.items()}


def check_page(html, run):
    p = Collect()
    p.feed(html)
    p.close()
    for tag, attrs in p.tags:
        assert tag not in ("script", "link", "img", "iframe", "object"), f"<{tag}> in a self-contained page"
        assert "src" not in attrs and "href" not in attrs, f"<{tag} {attrs}> references something"
    assert "url(" not in html and "@import" not in html
    svgs = svgs_of(html)
    assert len(svgs) >= 6, f"{len(svgs)} charts"
    polylines = [pl for s in svgs for pl in s.iter(SVG + "polyline")]
    want = expected_counts(run)
    assert sorted(pl.get("data-series") for pl in polylines) == sorted(want), [pl.get("data-series") for pl in polylines]
    for pl in polylines:
        pts = [tuple(map(float, xy.split(","))) for xy in pl.get("points").split()]
        name = pl.get("data-series")
        assert len(pts) == want[name], f"{name}: {len(pts)} points, metrics.jsonl has {want[name]} values"
        assert all(0 <= x <= 480 and 0 <= y <= 260 for x, y in pts), f"{name}: a point outside the viewBox"
        assert [x for x, _ in pts] == sorted(x for x, _ in pts)
    return polylines


@pytest.fixture(scope="module")
def run(tmp_path_factory, run_qtrain):
    d = tmp_path_factory.mktemp("report")
    run_qtrain("train", RECIPE, "--set", DATA, "--set", f"model.path={d / 'base'}", "--set", f"data.cache_dir={d / 'cache'}",
               "--set", f"output_dir={d / 'run'}", "--set", "training.max_steps=6", "--set", "training.micro_batch_size=2",
               "--set", "data.max_seq_len=160", "--set", "model.target_modules=[q_proj]", "--set", "lora.r=2",
               "--set", "schedule.log_every=1", "--set", "schedule.eval_every=3", "--set", "schedule.eval_batches=1",
               "--set", "training.warmup_steps=2")
    return d / "run"


def test_report_at_the_end_of_a_run(run):
    html = (run / "report.html").read_text()
    lines = check_page(html, run)
    assert {pl.get("data-series"): len(pl.get("points").split()) for pl in lines}["train"] == 6
    assert ">finished<" in html
    for section in ("<h2>Curves</h2>", "<h2>Run</h2>", "<h2>Data</h2>", "<h2>Recipe</h2>"):
        assert section in html


def test_report_verb_and_a_bare_directory(run, run_qtrain, tmp_path):
    out = tmp_path / "r.html"
    r = run_qtrain("report", run, "--out", out)
    assert r.stdout.strip() == str(out)
    check_page(out.read_text(), run)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "metrics.jsonl", bare / "metrics.jsonl")
    run_qtrain("report", bare)
    html = (bare / "report.html").read_text()
    check_page(html, bare)
    assert "not finished" in html
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_qtrain("report", empty, check=False)
    assert r.returncode == 3 and "metrics.jsonl" in r.stderr, r.stderr
    r = run_qtrain("report", tmp_path / "missing", check=False)
    assert r.returncode == 2, r.stderr


def test_chromium_renders_it(run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("no chromium (apt-get install chromium): the browser check is skipped")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=2000"]
    page = (run / "report.html").resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "<polyline" in dom, dom[:500]
    check_page(dom, run)  # what the browser built from the page: the same charts, the same points
    for name, size in (("desktop", "1280,1600"), ("narrow", "420,3000")):
        png = tmp_path / f"{name}.png"
        subprocess.run([*flags, f"--window-size={size}", f"--screenshot={png}", page], capture_output=True, timeout=120)
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{name}: not a PNG"
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (w, h) == tuple(map(int, size.split(","))), (w, h)
        assert len(data) > 20000, f"{name}: {len(data)} bytes, a blank page?"
