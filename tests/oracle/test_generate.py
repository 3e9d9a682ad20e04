"""`qtrain generate` greedy decoding against transformers' model.generate(do_sample=False): the same new
token ids, token for token, and the same prompt ids.

  tiny Llama   the shared trained llama2c-xs model: from BOS (long enough to reach EOS and stop there),
               from a text prompt (prompt ids == the HF tokenizer's), with a PEFT LoRA adapter whose B
               is random and nonzero (peft's model.generate; negative control: the adapter changes the tokens)
  families     random Qwen3 (q/k norm) and Mistral (sliding window 6, shorter than the generated text)
               models made by transformers, prompt given as ids
  templates    --messages rendered with chatml (Qwen2 tokenizer), llama-3, llama-2 and plain: prompt ids ==
               apply_chat_template(add_generation_prompt=True), then the greedy tokens of a random model

Sampled output cannot equal transformers' (another RNG); its statistics are tested in C++
(tests/export/generate_test.cpp).
"""
import json
import os
import shutil
import sys

import pytest

torch = pytest.importorskip("torch")
import transformers  # a missing package is a failure: CI has every oracle

TINY = "models/llama2c-xs-tok512-hf"


def qtrain_generate(run_qtrain, model_dir, *args):
    r = run_qtrain("generate", model_dir, "--greedy", "--print-ids", *args)
    lines = r.stdout.splitlines()
    assert lines[-2].startswith("prompt_ids: ") and lines[-1].startswith("new_ids: "), r.stdout
    parse = lambda s: [int(x) for x in s.split(": ", 1)[1].split(",") if x]
    return parse(lines[-2]), parse(lines[-1]), "\n".join(lines[:-2])


def hf_generate(model, prompt_ids, n):
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             pad_token_id=0)  # one unpadded row: the pad id is never used
    return out[0, len(prompt_ids):].tolist()


def load(d):
    return transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def test_greedy_from_bos(shared_data, run_qtrain):
    d = shared_data / TINY
    prompt, ours, text = qtrain_generate(run_qtrain, d, "--ids", "1", "--max-new-tokens", "100")
    theirs = hf_generate(load(d), [1], 100)
    assert prompt == [1]
    assert ours == theirs, f"qtrain {ours}\nhf     {theirs}"
    assert len(ours) == 100  # this model loops greedily and never writes EOS from BOS
    assert text.strip() == transformers.AutoTokenizer.from_pretrained(d).decode(ours, skip_special_tokens=True).strip()


def test_stops_at_any_eos_id_of_generation_config(shared_data, run_qtrain, tmp_path):
    """generation_config.json eos_token_id [2, X], X a token first written at step ≥ 10: both stop right after X."""
    src = shared_data / TINY
    _, base, _ = qtrain_generate(run_qtrain, src, "--ids", "1", "--max-new-tokens", "40")
    stop_at = next(i for i in range(10, 40) if base[i] not in base[:i])
    d = tmp_path / "model"
    d.mkdir()
    for f in os.listdir(src):
        if f != "generation_config.json":
            os.symlink(src / f, d / f)
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, base[stop_at]]}))
    _, ours, _ = qtrain_generate(run_qtrain, d, "--ids", "1", "--max-new-tokens", "40")
    assert ours == base[:stop_at + 1]
    assert hf_generate(load(d), [1], 40) == ours


def test_greedy_from_text_prompt(shared_data, run_qtrain):
    d = shared_data / TINY
    text = "Once upon a time, there was a little dog named Max. He liked to"
    prompt, ours, _ = qtrain_generate(run_qtrain, d, "--prompt", text, "--max-new-tokens", "30")
    assert prompt == transformers.AutoTokenizer.from_pretrained(d)(text).input_ids
    theirs = hf_generate(load(d), prompt, 30)
    assert ours == theirs, f"qtrain {ours}\nhf     {theirs}"


def test_greedy_with_lora_adapter(shared_data, run_qtrain, tmp_path):
    peft = pytest.importorskip("peft")
    d = shared_data / TINY
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"adapter seed {seed}")
    torch.manual_seed(seed)
    model = peft.get_peft_model(load(d), peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)  # PEFT starts B at 0: random B makes the adapter change the output
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    prompt, ours, _ = qtrain_generate(run_qtrain, d, "--ids", "1", "--max-new-tokens", "40", "--adapter", tmp_path / "adapter")
    theirs = hf_generate(model, [1], 40)
    assert ours == theirs, f"qtrain {ours}\nhf     {theirs}"
    _, base, _ = qtrain_generate(run_qtrain, d, "--ids", "1", "--max-new-tokens", "40")
    assert base != ours, "negative control: the adapter should change the greedy tokens"


def random_model(tmp_path, name, config, seed, tokenizer_from=None):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    d = tmp_path / name
    model.save_pretrained(d)
    if tokenizer_from:
        for f in os.listdir(tokenizer_from):
            shutil.copy(os.path.join(tokenizer_from, f), d / f)
    return model, d


SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=8, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("family", ["qwen3", "mistral"])
def test_greedy_families(run_qtrain, tmp_path, family):
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"{family} seed {seed}")
    if family == "qwen3":
        cfg = transformers.Qwen3Config(vocab_size=300, **SMALL)
    else:
        cfg = transformers.MistralConfig(vocab_size=300, sliding_window=6, **SMALL)
    model, d = random_model(tmp_path, family, cfg, seed)
    prompt = [1, 17, 42, 99, 5, 250, 3, 77]
    _, ours, _ = qtrain_generate(run_qtrain, d, "--ids", ",".join(map(str, prompt)), "--max-new-tokens", "40")
    theirs = hf_generate(model, prompt, 40)
    assert ours == theirs, f"{family}: qtrain {ours}\nhf     {theirs}"


CONV = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one, please."}]


def chat_case(shared_data, tmp_path, template):
    """A model dir with the template's tokenizer (from test_chat_templates.py's set-ups), the HF tokenizer."""
    sys.path.insert(0, os.path.dirname(__file__))
    from test_chat_templates import LLAMA2, LLAMA3, PLAIN, with_config  # the official template texts, the set-ups
    tokdir = shared_data / "tokenizers"
    if template == "chatml":
        src = tokdir / "qwen2"
    elif template == "llama-2":
        src = with_config(tmp_path, "tok-llama2", tokdir / "llama2-spm",
                          {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                           "add_bos_token": True, "legacy": True, "chat_template": LLAMA2})
    elif template == "llama-3":
        added = {"151643": "<|endoftext|>", "151644": "<|im_start|>", "151645": "<|im_end|>", "151646": "<|begin_of_text|>",
                 "151647": "<|start_header_id|>", "151648": "<|end_header_id|>", "151649": "<|eot_id|>"}
        src = with_config(tmp_path, "tok-llama3", tokdir / "qwen2", {
            "tokenizer_class": "Qwen2Tokenizer", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
            "pad_token": "<|endoftext|>", "chat_template": LLAMA3,
            "added_tokens_decoder": {k: {"content": v, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                                         "single_word": False} for k, v in added.items()}})
        os.remove(src / "added_tokens.json")
    else:
        src = shared_data / TINY
    tok = transformers.AutoTokenizer.from_pretrained(src)
    if template == "plain":
        tok.chat_template = PLAIN
    return src, tok


@pytest.mark.parametrize("template", ["chatml", "llama-3", "llama-2", "plain"])
def test_messages_use_the_chat_template_with_generation_prompt(shared_data, run_qtrain, tmp_path, template):
    src, tok = chat_case(shared_data, tmp_path, template)
    conv = CONV if template != "plain" else CONV[1:]
    expected = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
    if hasattr(expected, "keys"):
        expected = expected["input_ids"]
    expected = list(expected)
    if template == "plain":
        model, d = load(src), src
    else:
        seed = int.from_bytes(os.urandom(4), "little")
        print(f"{template} model seed {seed}")
        cfg = transformers.LlamaConfig(vocab_size=len(tok), **{**SMALL, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id})
        model, d = random_model(tmp_path, "model", cfg, seed, tokenizer_from=src)
    f = tmp_path / "conv.json"
    f.write_text(json.dumps(conv), encoding="utf-8")
    args = ["--messages", f, "--max-new-tokens", "12"] + (["--template", "plain"] if template == "plain" else [])
    prompt, ours, _ = qtrain_generate(run_qtrain, d, *args)
    assert prompt == expected, f"{template}: qtrain prompt {prompt}\nhf             {expected}"
    assert ours == hf_generate(model, prompt, 12)


def test_bad_messages_fail_clearly(shared_data, run_qtrain, tmp_path):
    f = tmp_path / "conv.json"
    f.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]))
    r = run_qtrain("generate", shared_data / TINY, "--messages", f, check=False)
    assert r.returncode == 3 and "conv.json" in r.stderr and "assistant" in r.stderr, r.stderr
    f.write_text(json.dumps([{"role": "narrator", "content": "hi"}]))
    r = run_qtrain("generate", shared_data / TINY, "--messages", f, check=False)
    assert r.returncode == 3 and "narrator" in r.stderr, r.stderr
