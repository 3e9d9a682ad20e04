"""Byte-level BPE with add_prefix_space against HF tokenizers: the space goes before each segment of text
between added tokens (what ByteLevel's pre-tokenizer sees), once, not before every regex piece; in a
Sequence, before each piece of the splits that run before the ByteLevel step.

Negative control: the old per-piece rule gives different ids on these texts (checked in Python below).
qtrain side: `qtrain tokenize DIR --file F --lines --no-special`.
"""
import json
import os
import random
import shutil
import subprocess

import pytest

SHARED = os.environ.get("QTRAIN_SHARED_DATA", os.path.join(os.path.dirname(__file__), "../../../shared/data"))
BINARY = os.environ.get("QTRAIN_BINARY", "")
if not os.path.isdir(os.path.join(SHARED, "tokenizers", "gpt2")):
    pytest.skip(f"shared test data not found at {SHARED}", allow_module_level=True)
if not BINARY or not os.path.exists(BINARY):
    pytest.skip("QTRAIN_BINARY is not set to the qtrain executable", allow_module_level=True)
from tokenizers import Tokenizer  # noqa: E402

TEXTS = ["Hello,world", "Hello world", " leading space", "a.b.c!d?e", "x  y  z", "tab\there", "12345 678",
         "naïve café", "日本語のテキスト", "emoji🙂ok", "<|endoftext|>after special", "before<|endoftext|>after", "'s 're"]


def _tokenizer_json(tmp_path, seq):
    """GPT-2's vocab and merges as a tokenizer.json whose ByteLevel step adds the prefix space (alone, or after
    a digit Split in a Sequence), saved by the tokenizers library itself."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    src = os.path.join(SHARED, "tokenizers", "gpt2")
    d = tmp_path / ("seq" if seq else "plain")
    d.mkdir()
    tk = Tokenizer(models.BPE.from_file(os.path.join(src, "vocab.json"), os.path.join(src, "merges.txt")))
    bl = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex("[0-9]+"), "isolated"), bl]) if seq else bl
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>"])
    tk.save(str(d / "tokenizer.json"))
    return d, tk


def _per_piece(tk, t):
    """The old rule, for the negative control: a space before every regex piece that lacks one."""
    from tokenizers import pre_tokenizers
    ids = []
    for _, (b, e) in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(t):
        piece = t[b:e]
        ids += tk.encode(piece if piece.startswith(" ") else " " + piece, add_special_tokens=False).ids
    return ids


@pytest.mark.parametrize("seq", [False, True])
def test_prefix_space_once_per_segment(seq, tmp_path):
    d, hf = _tokenizer_json(tmp_path, seq)
    seed = random.SystemRandom().randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    texts = TEXTS + ["".join(rng.choice(TEXTS) for _ in range(3)) for _ in range(20)]
    # One process, one text per line (--lines); the texts have no newlines.
    f = tmp_path / "t.txt"
    f.write_bytes("\n".join(texts).encode("utf-8") + b"\n")
    r = subprocess.run([BINARY, "tokenize", str(d), "--file", str(f), "--lines", "--no-special"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = r.stdout.split("\n")[: len(texts)]
    differs = 0
    for t, row in zip(texts, rows):
        ours = [int(x) for x in row.split()]
        theirs = hf.encode(t, add_special_tokens=False).ids
        assert ours == theirs, f"{t!r}: qtrain {ours} tokenizers {theirs}"
        if "<|endoftext|>" not in t:
            differs += ours != _per_piece(hf, t)
    assert differs > 0, "the texts do not tell the two rules apart"
