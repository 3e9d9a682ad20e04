"""`qtrain eval` against transformers on the real trained tiny Llama (../shared/data).

- WikiText-2 perplexity the GPTQ way (GPTQ datautils.get_wikitext2 + llama_eval, which AWQ reuses): the
  rows of HF's wikitext loader (lines with their "\\n", blank lines as "") joined by "\\n\\n", tokenized
  once by transformers' tokenizer (BOS once), non-overlapping windows of seqlen, per-window mean CE ×
  seqlen, ppl = exp(Σ / (nsamples · seqlen)). seqlen 256 = the model's max_position_embeddings, the
  first N windows so it runs in seconds.
- Sliding windows (stride < seqlen) as transformers' perplexity guide scores them (labels -100 before
  the new tokens).
- A bnb-4bit checkpoint made by `qtrain quantize`, loaded by transformers + bitsandbytes on the CPU:
  the same perplexity, and KL(dense || nf4) per token from `--reference`.
- Alpaca data: the mean NLL of the trained (masked target) tokens, with ids and masks from
  `qtrain data preview --ids` and the NLL from transformers.
Tolerance: fp32 on both sides, different kernels (batched windows, chunked LM head vs one HF forward):
per-token log-probs agree to ~1e-6 relative; means over thousands of tokens to 2e-6 relative
(measured: ~1e-7); 1e-5 is asserted. KL is a difference of nearly equal log-probs (absolute 1e-6).
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

SEQLEN = 256
NWINDOWS = 12
REL_TOL = 1e-5


@pytest.fixture(scope="module")
def tiny(shared_data):
    d = shared_data / "models" / "llama2c-xs-tok512-hf"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


@pytest.fixture(scope="module")
def wikitext(shared_data, tmp_path_factory):
    f = shared_data / "corpus" / "wikitext-2-raw" / "wiki.test.raw"
    if not f.is_file():
        pytest.skip(f"{f} not found")
    # wiki.test.raw begins with a space (" = Robert Boulter = "). For this model's bare tokenizer.model,
    # transformers 5 converts to a Metaspace pre-tokenizer that adds no "▁" dummy prefix to a text that
    # already begins with a space, where qtrain's sentencepiece tokenizer (like transformers 4's Prepend
    # normalizer and the tokenizer.json of real Llama-2 checkpoints) adds one: the first window would be
    # shifted by one token and every window after it. That is the tokenizer's concern (tested there), not
    # the evaluation's: this copy drops the leading space, after which both give the same 812,135 ids.
    copy = tmp_path_factory.mktemp("wikitext") / "wiki.test.raw"
    raw = f.read_bytes()
    assert raw.startswith(b" "), "the shared copy changed: revisit this work-around"
    copy.write_bytes(raw[1:])
    return copy


def hf_wikitext_text(path):
    # What `"\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])` is for
    # the raw file: the loader reads it in text mode (universal newlines) and yields each line with its
    # "\n", or "" for a blank one.
    with open(path, encoding="utf-8") as f:
        return "\n\n".join(line if line.strip() else "" for line in f)


def eval_json(run_qtrain, *args):
    r = run_qtrain("eval", *args)
    return json.loads(r.stdout)


def gptq_ppl(model, ids, seqlen, nsamples):
    """GPTQ llama_eval, verbatim in its arithmetic: per-window mean CE × seqlen, then exp(Σ / (n · seqlen))."""
    nlls = []
    with torch.no_grad():
        for i in range(nsamples):
            batch = ids[:, i * seqlen:(i + 1) * seqlen]
            logits = model(batch).logits
            loss = F.cross_entropy(logits[0, :-1].float(), batch[0, 1:])
            nlls.append(loss.float() * seqlen)
    return torch.exp(torch.stack(nlls).sum() / (nsamples * seqlen)).item()


@pytest.fixture(scope="module")
def hf_ids(tiny, wikitext):
    tok = AutoTokenizer.from_pretrained(tiny)
    return tok(hf_wikitext_text(wikitext), return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def wikitext_head(wikitext):
    # The first 200 lines (~57k tokens, 220 windows of 256): enough for the tests below, and each
    # tokenization of it takes milliseconds rather than seconds.
    head = wikitext.parent / "wiki.head.raw"
    head.write_bytes(b"".join(wikitext.read_bytes().splitlines(keepends=True)[:200]))
    return head


@pytest.fixture(scope="module")
def hf_head_ids(tiny, wikitext_head):
    return AutoTokenizer.from_pretrained(tiny)(hf_wikitext_text(wikitext_head), return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def hf_dense(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()


def test_wikitext_ppl_matches_gptq_protocol(run_qtrain, tiny, wikitext, hf_ids, hf_dense):
    ours = eval_json(run_qtrain, "--model", tiny, "--data", wikitext, "--seq-len", SEQLEN,
                     "--max-windows", NWINDOWS, "--batch-size", 5)
    assert ours["corpus_tokens"] == hf_ids.numel(), "same text, same tokenizer: same ids"
    assert ours["bos"] is True and hf_ids[0, 0].item() == 1
    assert ours["windows_available"] == hf_ids.numel() // SEQLEN
    assert ours["dropped_tail_tokens"] == hf_ids.numel() % SEQLEN
    assert ours["tokens"] == NWINDOWS * (SEQLEN - 1)
    ref = gptq_ppl(hf_dense, hf_ids, SEQLEN, NWINDOWS)
    print(f"ppl qtrain {ours['ppl']:.8f} transformers {ref:.8f} rel {abs(ours['ppl'] / ref - 1):.2e}")
    assert ours["ppl"] == pytest.approx(ref, rel=REL_TOL)
    assert ours["nll"] == pytest.approx(math.log(ref), rel=REL_TOL)
    # Negative control: windows shifted by one token (one token more or less at the start, e.g. a
    # dummy-prefix disagreement) change the number far beyond the tolerance.
    shifted = gptq_ppl(hf_dense, hf_ids[:, 1:], SEQLEN, NWINDOWS)
    assert abs(ours["ppl"] / shifted - 1) > 100 * REL_TOL


def test_sliding_windows_match_hf_guide(run_qtrain, tiny, wikitext_head, hf_head_ids, hf_dense):
    hf_ids = hf_head_ids
    stride, n = 96, 10
    ours = eval_json(run_qtrain, "--model", tiny, "--data", wikitext_head, "--seq-len", SEQLEN, "--stride", stride,
                     "--max-windows", n, "--batch-size", 3)
    total, count = 0.0, 0
    prev_end = 0
    with torch.no_grad():
        for i in range(n):
            begin, end = i * stride, i * stride + SEQLEN
            ids = hf_ids[:, begin:end]
            labels = ids.clone()
            labels[:, :-(end - prev_end)] = -100   # only the tokens no earlier window scored
            logits = hf_dense(ids).logits[0, :-1].float()
            tgt = labels[0, 1:]
            total += F.cross_entropy(logits, tgt, ignore_index=-100, reduction="sum").item()
            count += int((tgt != -100).sum())
            prev_end = end
    assert ours["corpus_tokens"] == hf_ids.numel()
    assert ours["tokens"] == count == (SEQLEN - 1) + (n - 1) * stride
    print(f"sliding nll qtrain {ours['nll']:.10f} transformers {total / count:.10f}")
    assert ours["nll"] == pytest.approx(total / count, rel=REL_TOL)


def test_bnb_4bit_checkpoint_ppl_and_kl(run_qtrain, tiny, wikitext_head, hf_head_ids, hf_dense, tmp_path):
    hf_ids = hf_head_ids
    q = tmp_path / "nf4"
    run_qtrain("quantize", tiny, "--out", q, "--compute-dtype", "float32")  # bnb computes in float32 too
    n = 6
    ours = eval_json(run_qtrain, "--model", q, "--reference", tiny, "--data", wikitext_head, "--seq-len", SEQLEN,
                     "--max-windows", n, "--batch-size", 4)
    # Train mode (every dropout is 0 here) keeps bitsandbytes on its reference path, dequantize_4bit +
    # F.linear; in eval mode on AVX512-BF16 CPUs it repacks the weights for a bf16 gemm (see
    # test_bnb_checkpoint.py's hf_4bit).
    hf_q = AutoModelForCausalLM.from_pretrained(q, dtype=torch.float32, device_map="cpu").train()
    assert ours["ppl"] == pytest.approx(gptq_ppl(hf_q, hf_ids, SEQLEN, n), rel=REL_TOL)
    kl_sum, count = 0.0, 0
    with torch.no_grad():
        for i in range(n):
            batch = hf_ids[:, i * SEQLEN:(i + 1) * SEQLEN]
            lp_ref = F.log_softmax(hf_dense(batch).logits[0, :-1].float(), -1)
            lp_q = F.log_softmax(hf_q(batch).logits[0, :-1].float(), -1)
            kl_sum += F.kl_div(lp_q, lp_ref, log_target=True, reduction="sum").item()  # KL(ref || q)
            count += SEQLEN - 1
    print(f"KL(dense || nf4) qtrain {ours['kl']:.8f} transformers {kl_sum / count:.8f}")
    assert ours["kl"] > 1e-4, "NF4 moves the distributions"
    assert ours["kl"] == pytest.approx(kl_sum / count, rel=1e-4, abs=1e-6)


def test_alpaca_masked_target_nll(run_qtrain, tiny, shared_data, hf_dense, tmp_path):
    data = shared_data / "datasets" / "alpaca-format" / "alpaca_en_demo.json"
    if not data.is_file():
        pytest.skip(f"{data} not found")
    n = 24
    common = ["--format", "alpaca", "--cache-dir", tmp_path / "cache"]
    ours = eval_json(run_qtrain, "--model", tiny, "--data", data, "--seq-len", SEQLEN, "--max-examples", n,
                     "--batch-size", 5, *common)
    rows = run_qtrain("data", "preview", "--model", tiny, "--file", data, "--max-seq-len", SEQLEN, "-n", n, "--ids",
                      *common).stdout.splitlines()
    assert len(rows) == n
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids_s, mask_s = row.split("\t")
            ids = torch.tensor([[int(x) for x in ids_s.split()]])
            labels = torch.where(torch.tensor([[c == "1" for c in mask_s]]), ids, torch.tensor(-100))
            logits = hf_dense(ids).logits[0, :-1].float()
            tgt = labels[0, 1:]
            total += F.cross_entropy(logits, tgt, ignore_index=-100, reduction="sum").item()
            count += int((tgt != -100).sum())
    assert ours["examples"] == n and ours["tokens"] == count
    print(f"alpaca masked nll qtrain {ours['nll']:.10f} transformers {total / count:.10f} over {count} tokens")
    assert ours["nll"] == pytest.approx(total / count, rel=REL_TOL)
    assert 0 <= ours["token_accuracy"] <= 1
