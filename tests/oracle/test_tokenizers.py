"""qtrain's tokenizers against Hugging Face transformers / tokenizers on every line of the shared
datasets (JSON/JSONL string fields, WikiText-2), with and without special tokens, plus whole
multi-line texts, decode round trips, and tokenizer.json-based tokenizers written by HF itself.

Runs `$QTRAIN_BINARY tokenize DIR --file F --lines` (one process per tokenizer and mode).

Sentencepiece models: transformers 5 converts tokenizer.model on the fly and differs from
sentencepiece (and from transformers 4) on whitespace: its merges are ordered by piece id, not
score, so "a  b" merges "▁▁" first (Llama-2 gives the whitespace pieces score -1e9: last), and its
Metaspace pre-tokenizer drops the dummy prefix when a text starts with a space (" Hello" ->
[15043], not [29871, 15043] as in llama.cpp's vectors). qtrain follows sentencepiece, what the
models were trained with. So these directories are checked against the sentencepiece library
and against HF `tokenizers` built the transformers-4 way (score-ordered merges, Prepend + Replace
normalizer) on every line, and against transformers 5 on the lines without whitespace runs.
"""
import glob
import json
import os
import subprocess
import tempfile

import pytest

SHARED = os.environ.get("QTRAIN_SHARED_DATA", os.path.join(os.path.dirname(__file__), "../../../shared/data"))
BINARY = os.environ.get("QTRAIN_BINARY", "")
if not os.path.isdir(os.path.join(SHARED, "tokenizers")):
    pytest.skip(f"shared test data not found at {SHARED}", allow_module_level=True)
if not BINARY or not os.path.exists(BINARY):
    pytest.skip("QTRAIN_BINARY is not set to the qtrain executable", allow_module_level=True)

import tokenizers  # a missing package is a failure: CI has every oracle
import transformers


# ---------------------------------------------------------------- the texts


def _strings(node, out):
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, list):
        for v in node:
            _strings(v, out)
    elif isinstance(node, dict):
        for v in node.values():
            _strings(v, out)


def _dataset_fields():
    fields = []
    for path in sorted(glob.glob(os.path.join(SHARED, "datasets", "*", "*.json*"))):
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                for line in f:
                    if line.strip():
                        _strings(json.loads(line), fields)
            else:
                _strings(json.load(f), fields)
    return fields


def _lines():
    lines = []
    for field in _dataset_fields():
        lines += field.split("\n")
    for path in [os.path.join(SHARED, "corpus", "wikitext-2-raw", "wiki.test.raw"), os.path.join(SHARED, "corpus", "wiki_demo.txt")]:
        with open(path, encoding="utf-8", newline="") as f:
            lines += f.read().split("\n")  # WikiText keeps its CRLF: the '\r' stays in the text
    seen, out = set(), []
    for line in lines:
        if line and line not in seen:
            seen.add(line)
            out.append(line)
    return out


LINES = _lines()
MULTILINE = "\n".join(f for f in _dataset_fields() if "\n" in f)


# ---------------------------------------------------------------- running qtrain


def qtrain_encode_lines(tok_dir, lines, special, tmp_path):
    src = tmp_path / "lines.txt"
    src.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    args = [BINARY, "tokenize", str(tok_dir), "--file", str(src), "--lines"] + ([] if special else ["--no-special"])
    out = subprocess.run(args, check=True, capture_output=True).stdout.decode()
    rows = out.split("\n")[:-1]
    assert len(rows) == len(lines)
    return [[int(x) for x in r.split()] for r in rows]


def qtrain_encode_text(tok_dir, text, special, tmp_path):
    src = tmp_path / "text.txt"
    src.write_bytes(text.encode("utf-8"))
    args = [BINARY, "tokenize", str(tok_dir), "--file", str(src)] + ([] if special else ["--no-special"])
    return [int(x) for x in subprocess.run(args, check=True, capture_output=True).stdout.split()]


def qtrain_decode_lines(tok_dir, id_rows, tmp_path, skip_special=False):
    src = tmp_path / "ids.txt"
    src.write_text("\n".join(" ".join(map(str, r)) if r else "0" for r in id_rows) + "\n")
    args = [BINARY, "tokenize", str(tok_dir), "--file", str(src), "--lines", "--decode"] + (["--no-special"] if skip_special else [])
    out = subprocess.run(args, check=True, capture_output=True).stdout.decode("utf-8")
    return out.split("\n")[:-1]


def compare(name, ours, theirs, lines, limit=5):
    bad = [i for i in range(len(lines)) if ours[i] != theirs[i]]
    msg = "\n".join(f"  {lines[i]!r}\n    qtrain {ours[i][:40]}\n    HF     {theirs[i][:40]}" for i in bad[:limit])
    assert not bad, f"{name}: {len(bad)} of {len(lines)} lines differ from HF, e.g.\n{msg}"


# ---------------------------------------------------------------- the HF oracles


def scored_pipeline(sp):
    """HF `tokenizers` with merges ordered by the sentencepiece scores (as transformers 4's converter
    built them) and the legacy Prepend + Replace normalizer."""
    from tokenizers import Tokenizer, normalizers
    from tokenizers.models import BPE
    from transformers.tokenization_utils_base import generate_merges

    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    t = Tokenizer(BPE(vocab, generate_merges(vocab, scores), unk_token=sp.id_to_piece(sp.unk_id()), fuse_unk=True, byte_fallback=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    return t


def spm_case(tok_dir, legacy, tmp_path):
    """Three oracles for sentencepiece directories (see the module docstring for why three):
    the sentencepiece library itself, HF `tokenizers` with score-ordered merges, and transformers 5
    on the lines its own conversion handles like sentencepiece (no whitespace runs)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "tokenizer.model"))
    if tok_dir.endswith("llama2-spm"):
        hf = transformers.LlamaTokenizer.from_pretrained(tok_dir, add_bos_token=True)  # no config: say Llama's BOS
    else:
        hf = transformers.AutoTokenizer.from_pretrained(tok_dir)
    scored = scored_pipeline(sp)
    specials = [x for x in hf.all_special_tokens if x]
    has_special = lambda s: any(x in s for x in specials)
    whitespace_run = lambda s: s[0].isspace() or s[-1] == " " or "  " in s
    # transformers 5: Metaspace skips the prefix after a special token followed by a space (legacy).
    v5_ok = lambda s: not whitespace_run(s) and not (legacy and any(x + c in s for x in specials for c in " \t\r"))
    collapses = sp_collapses(tok_dir)
    counts = {}
    for special in (False, True):
        ours = qtrain_encode_lines(tok_dir, LINES, special, tmp_path)
        bos = [hf.bos_token_id] if special else []
        plain = [i for i, s in enumerate(LINES) if not has_special(s)]
        theirs = [bos + e.ids for e in scored.encode_batch([LINES[i] for i in plain], add_special_tokens=False)]
        compare(f"{tok_dir} special={special} (HF tokenizers, score-ordered merges)", [ours[i] for i in plain], theirs,
                [LINES[i] for i in plain])
        idx = [i for i in plain if not (collapses and whitespace_run(LINES[i]))]
        theirs = [bos + sp.encode(LINES[i]) for i in idx]
        compare(f"{tok_dir} special={special} (sentencepiece {spm.__version__})", [ours[i] for i in idx], theirs,
                [LINES[i] for i in idx])
        idx = [i for i, s in enumerate(LINES) if v5_ok(s)]
        theirs = hf([LINES[i] for i in idx], add_special_tokens=special)["input_ids"]
        compare(f"{tok_dir} special={special} (transformers {transformers.__version__})", [ours[i] for i in idx], theirs,
                [LINES[i] for i in idx])
        counts[special] = (len(plain), len(idx))
        if not special:
            decoded = qtrain_decode_lines(tok_dir, [ours[i] for i in plain], tmp_path)
            bad = [LINES[i] for k, i in enumerate(plain) if decoded[k] != LINES[i]]
            assert not bad, f"{len(bad)} lines do not round-trip, e.g. {bad[:3]!r}"
    print(f"{tok_dir}: {len(LINES)} lines; vs tokenizers/sentencepiece {counts[False][0]}, vs transformers {counts[False][1]}")


def sp_collapses(tok_dir):
    """Whether the model's normalizer collapses whitespace (the llama2.c models do; HF ignores it)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    with open(os.path.join(tok_dir, "tokenizer.model"), "rb") as f:
        m.ParseFromString(f.read())
    return m.normalizer_spec.remove_extra_whitespaces


def test_llama2_sentencepiece_all_lines(tmp_path):
    spm_case(os.path.join(SHARED, "tokenizers", "llama2-spm"), legacy=False, tmp_path=tmp_path)


def test_tiny_model_sentencepiece_all_lines(tmp_path):
    spm_case(os.path.join(SHARED, "models", "llama2c-xs-tok512-hf"), legacy=True, tmp_path=tmp_path)


def bpe_case(tok_dir, hf, tmp_path):
    for special in (False, True):
        ours = qtrain_encode_lines(tok_dir, LINES, special, tmp_path)
        theirs = hf(LINES, add_special_tokens=special)["input_ids"]
        compare(f"{tok_dir} special={special}", ours, theirs, LINES)
    decoded = qtrain_decode_lines(tok_dir, ours, tmp_path)
    hf_decoded = hf.batch_decode(ours, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    bad = [i for i in range(len(LINES)) if decoded[i] != hf_decoded[i]]
    assert not bad, f"{len(bad)} decodes differ from HF, e.g. {[(decoded[i], hf_decoded[i]) for i in bad[:3]]!r}"
    # Whole multi-line texts: newlines inside a text matter to the pre-tokenizer regex.
    assert qtrain_encode_text(tok_dir, MULTILINE, False, tmp_path) == hf(MULTILINE, add_special_tokens=False)["input_ids"]


def test_gpt2_all_lines(tmp_path):
    d = os.path.join(SHARED, "tokenizers", "gpt2")
    bpe_case(d, transformers.GPT2Tokenizer.from_pretrained(d), tmp_path)


def test_qwen2_all_lines(tmp_path):
    d = os.path.join(SHARED, "tokenizers", "qwen2")
    bpe_case(d, transformers.Qwen2Tokenizer.from_pretrained(d), tmp_path)


def test_qwen2_tokenizer_json_all_lines(tmp_path):
    """The tokenizer.json path: HF writes Qwen2's tokenizer.json (NFC, Split + ByteLevel, template)."""
    hf = transformers.Qwen2Tokenizer.from_pretrained(os.path.join(SHARED, "tokenizers", "qwen2"))
    d = tmp_path / "qwen2-json"
    hf.save_pretrained(d)
    assert (d / "tokenizer.json").exists() and not (d / "vocab.json").exists()
    bpe_case(str(d), transformers.AutoTokenizer.from_pretrained(d), tmp_path)


def test_llama3_style_tokenizer_json(tmp_path):
    """A Llama-3-shaped tokenizer.json built with HF tokenizers on GPT-2's vocabulary: Llama 3's split
    regex, ignore_merges, and a TemplateProcessing post-processor that adds BOS."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    g = os.path.join(SHARED, "tokenizers", "gpt2")
    vocab, merges = BPE.read_file(os.path.join(g, "vocab.json"), os.path.join(g, "merges.txt"))
    tok = Tokenizer(BPE(vocab, merges, ignore_merges=True))
    llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(llama3), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.add_special_tokens(["<|endoftext|>"])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 50256)])])
    tok.decoder = decoders.ByteLevel()
    d = tmp_path / "llama3-style"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    for special in (False, True):
        ours = qtrain_encode_lines(str(d), LINES, special, tmp_path)
        theirs = [e.ids for e in tok.encode_batch(LINES, add_special_tokens=special)]
        compare(f"llama3-style special={special}", ours, theirs, LINES)
    assert qtrain_encode_text(str(d), MULTILINE, True, tmp_path) == tok.encode(MULTILINE).ids


def test_enough_real_lines():
    assert len(LINES) > 5000, len(LINES)
