#!/usr/bin/env python3
"""Seed corpora for the libFuzzer harnesses, built at test time from ../shared/data and recipes/.

Usage: make_seeds.py SHARED_DATA REPO_ROOT OUT_DIR
Writes OUT_DIR/<harness>/<name> for every torch-free, non-HDF5 harness (the HDF5 harnesses write
their own seeds through qtrain's writers, see fuzz_token_cache.cpp). Real files are cut down (the
first merges of GPT-2 / Qwen2, the first records of each dataset): libFuzzer mutates small inputs
much faster, and a cut-down real file still reaches every branch a whole one does.
Standard library only (runs with the system python3).
"""
import json
import pathlib
import sys

SEP = b"\n#@qtrain-fuzz-part@#\n"  # tests/fuzz/fuzz_util.h kPartSeparator


def parts(*items):
    return SEP.join(x if isinstance(x, bytes) else x.encode() for x in items)


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False, indent=1)


def hard_texts(shared, name, count=12):
    """The llama.cpp tokenizer test texts (hard cases: spaces, newlines, scripts, emoji)."""
    p = shared / "tokenizer-tests/llama.cpp" / f"ggml-vocab-{name}.gguf.inp"
    texts = [t for t in p.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n") if t]
    return texts[:count]


def cut_bpe(vocab, merges, n_merges):
    """The 256 byte-alphabet tokens plus the first n_merges merges (and their results), ids kept."""
    alphabet = sorted(vocab.items(), key=lambda kv: kv[1])[:256]
    keep = dict(alphabet)
    kept_merges = []
    for line in merges:
        if len(kept_merges) == n_merges:
            break
        left, right = line.split(" ")
        if left in keep and right in keep and left + right in vocab:
            keep[left + right] = vocab[left + right]
            kept_merges.append((left, right))
    # Renumber densely: sparse ids make every run allocate the whole original id range.
    order = sorted(keep, key=lambda t: keep[t])
    return {t: i for i, t in enumerate(order)}, kept_merges


def read_bpe(shared, name):
    vocab = json.loads((shared / "tokenizers" / name / "vocab.json").read_text(encoding="utf-8"))
    lines = (shared / "tokenizers" / name / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [l for l in lines[1:] if l and not l.startswith("#version")]
    return vocab, merges


GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def tokenizer_json_seeds(shared, out):
    vocab, merges = read_bpe(shared, "gpt2")
    v, m = cut_bpe(vocab, merges, 400)
    eot = len(v)
    texts = hard_texts(shared, "gpt-2")
    gpt2 = {
        "version": "1.0",
        "added_tokens": [{"id": eot, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": True, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "vocab": {**v, "<|endoftext|>": eot}, "merges": [f"{a} {b}" for a, b in m]},
    }
    bos, eos = len(v), len(v) + 1
    llama3 = {
        "version": "1.0",
        "added_tokens": [{"id": bos, "content": "<|begin_of_text|>", "special": True},
                         {"id": eos, "content": "<|end_of_text|>", "special": True, "lstrip": True, "rstrip": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos],
                                                      "tokens": ["<|begin_of_text|>"]}}}]},
        "model": {"type": "BPE", "ignore_merges": True, "vocab": v, "merges": [[a, b] for a, b in m]},
    }
    qvocab, qmerges = read_bpe(shared, "qwen2")
    qv, qm = cut_bpe(qvocab, qmerges, 400)
    qwen = {
        "added_tokens": [{"id": len(qv) + i, "content": c, "special": True}
                         for i, c in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": "\n"}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]},
        "post_processor": {"type": "RobertaProcessing", "cls": ["<|im_start|>", len(qv) + 1], "sep": ["<|im_end|>", len(qv) + 2]},
        "model": {"type": "BPE", "vocab": qv, "merges": [f"{a} {b}" for a, b in qm]},
    }
    qwen_cfg = {"add_prefix_space": False, "add_bos_token": False, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "tokenizer_class": "Qwen2Tokenizer", "legacy": False,
                "added_tokens_decoder": {str(len(qv) + 1): {"content": "<|im_start|>", "special": True, "lstrip": False}},
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    d = out / "tokenizer_json"
    d.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(texts[:6]):
        (d / f"gpt2-{i}").write_bytes(parts(dumps(gpt2), "", t))
        (d / f"llama3-{i}").write_bytes(parts(dumps(llama3), '{"add_bos_token": true, "bos_token": "<|begin_of_text|>"}',
                                              "<|begin_of_text|>" + t + "<|end_of_text|>"))
        (d / f"qwen2-{i}").write_bytes(parts(dumps(qwen), dumps(qwen_cfg), "<|im_start|>user\n" + t + "<|im_end|>"))


def vocab_merges_seeds(shared, out):
    d = out / "vocab_merges"
    d.mkdir(parents=True, exist_ok=True)
    vocab, merges = read_bpe(shared, "gpt2")
    v, m = cut_bpe(vocab, merges, 400)
    v["<|endoftext|>"] = len(v)
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in m)
    for i, t in enumerate(hard_texts(shared, "gpt-2", 6)):
        (d / f"gpt2-{i}").write_bytes(parts(dumps(v), merges_txt, "", "", "", t))
    qdir = shared / "tokenizers/qwen2"
    qvocab, qmerges = read_bpe(shared, "qwen2")
    qv, qm = cut_bpe(qvocab, qmerges, 400)
    # The side files as shipped, with the added token ids moved next to the cut vocabulary.
    remap = {151643: len(qv), 151644: len(qv) + 1, 151645: len(qv) + 2}
    cfg = json.loads((qdir / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["added_tokens_decoder"] = {str(remap.get(int(k), k)): t for k, t in cfg.get("added_tokens_decoder", {}).items()}
    added = {t: remap[i] for t, i in json.loads((qdir / "added_tokens.json").read_text(encoding="utf-8")).items()}
    special = (qdir / "special_tokens_map.json").read_text(encoding="utf-8")
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in qm)
    for i, t in enumerate(hard_texts(shared, "qwen2", 6)):
        (d / f"qwen2-{i}").write_bytes(parts(dumps(qv), merges_txt, dumps(cfg), dumps(added), special,
                                             "<|im_start|>" + t + "<|im_end|>"))


def sentencepiece_seeds(shared, out):
    d = out / "sentencepiece"
    d.mkdir(parents=True, exist_ok=True)
    model_dir = shared / "models/llama2c-xs-tok512-hf"
    model = (model_dir / "tokenizer.model").read_bytes()
    cfg = (model_dir / "tokenizer_config.json").read_text(encoding="utf-8")
    texts = hard_texts(shared, "llama-spm", 8)
    for i, t in enumerate(texts):
        (d / f"tok512-{i}").write_bytes(parts(model, cfg if i % 2 == 0 else "", "<s>" + t + "</s>"))
    legacy = json.dumps({"legacy": True, "add_bos_token": True, "add_eos_token": True, "add_prefix_space": False,
                         "added_tokens_decoder": {"512": {"content": "[INST]", "special": True, "rstrip": True}}})
    (d / "tok512-legacy").write_bytes(parts(model, legacy, "[INST] Hello\nworld [INST]"))
    # Regression (built here: the model file must not be copied into the repository): an added token
    # far above the 512 pieces left ids in the gap that reached libsentencepiece unchecked.
    gap = json.dumps({"added_tokens_decoder": {"2000": {"content": "<x>", "special": True}}})
    (d / "regression-added-token-gap").write_bytes(parts(model, gap, "Hello<x>"))


def hf_config_seeds(shared, out, repo):
    d = out / "hf_config"
    d.mkdir(parents=True, exist_ok=True)
    base = None
    for p in sorted((shared / "models").glob("*/config.json")):
        (d / f"{p.parent.name}.json").write_bytes(p.read_bytes())
        base = json.loads(p.read_text())
    if base is None:  # no shared data: a plain Llama config
        base = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 192,
                "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4}
    variants = {
        "mistral": {"model_type": "mistral", "sliding_window": 4096, "rope_theta": 1e6},
        "qwen2": {"model_type": "qwen2", "use_sliding_window": False, "eos_token_id": [1, 2], "tie_word_embeddings": True},
        "qwen3": {"model_type": "qwen3", "head_dim": 16, "attention_bias": False, "dtype": "bfloat16"},
        "llama3-rope": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
        "linear-rope": {"rope_scaling": {"type": "linear", "factor": 2.0}},
        "transformers5": {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "dtype": "float32"},
        "bnb4bit": {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                            "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                            "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8"}},
    }
    for name, extra in variants.items():
        (d / f"{name}.json").write_text(dumps({**base, **extra}))


def recipe_seeds(out, repo):
    d = out / "recipe"
    d.mkdir(parents=True, exist_ok=True)
    sets = ["training.learning_rate=1e-4", "data.files=[{path: a.jsonl, weight: 0.5, format: alpaca}]",
            "lora.init_seed=null", "data.sharegpt_role_map={function_call: assistant}", "model.target_modules=[q_proj, v_proj]"]
    for i, p in enumerate(sorted((repo / "recipes").glob("*.yaml"))):
        text = p.read_bytes()
        (d / p.stem).write_bytes(text)
        (d / f"{p.stem}-set").write_bytes(parts(text, sets[i % len(sets)], sets[(i + 1) % len(sets)], sets[(i + 2) % len(sets)]))


def dataset_seeds(shared, out, repo):
    """Prefix byte 0 = extension + 3 * format, byte 1 = template + 5 * train_on (+ flag bits)."""
    d = out / "dataset"
    d.mkdir(parents=True, exist_ok=True)
    JSONL, JSON, TXT = 0, 1, 2
    GUANACO, ALPACA, MESSAGES, SHAREGPT, TEXT = range(5)

    def seed(name, ext, fmt, tmpl, train_on, body, flags=0x20):
        (d / name).write_bytes(bytes([ext + 3 * fmt, tmpl + 5 * train_on + flags]) + body)

    def first_lines(p, n):
        return b"".join(p.read_bytes().splitlines(keepends=True)[:n])

    def first_records(p, n):
        return json.dumps(json.loads(p.read_text(encoding="utf-8"))[:n], ensure_ascii=False, indent=2).encode()

    ds = shared / "datasets"
    if ds.is_dir():
        seed("guanaco", JSONL, GUANACO, 4, 0, first_lines(ds / "guanaco-format/chinkara-open_qa.jsonl", 4))
        seed("guanaco-assistant", JSONL, GUANACO, 4, 1, first_lines(ds / "guanaco-format/chinkara-open_qa.jsonl", 3))
        seed("alpaca", JSON, ALPACA, 4, 0, first_records(ds / "alpaca-format/alpaca_en_demo.json", 4))
        seed("alpaca-identity", JSON, ALPACA, 4, 2, first_records(ds / "alpaca-format/identity.json", 3))
        for t in range(5):
            seed(f"messages-{t}", JSONL, MESSAGES, t, t % 3, first_lines(ds / "messages-format/v1_sft_demo.jsonl", 2),
                 flags=0x20 | (0x40 if t == 2 else 0))
            seed(f"sharegpt-{t}", JSON, SHAREGPT, t, (t + 1) % 3, first_records(ds / "sharegpt-format/glaive_toolcall_en_demo.json", 2))
    corpus = shared / "corpus/wiki_demo.txt"
    if corpus.exists():
        seed("text", TXT, TEXT, 4, 0, corpus.read_bytes()[:2000])
    seed("quickstart", JSONL, ALPACA, 4, 0, first_lines(repo / "recipes/quickstart/train.jsonl", 4))
    seed("messages-object", JSON, MESSAGES, 2, 0, json.dumps({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello", "loss_weight": 1}]}).encode())


def jinja_seeds(shared, out):
    """The real chat templates (tests/fuzz/fuzz_jinja.cpp), alone and with a conversation, plus every construct."""
    d = out / "jinja"
    d.mkdir(parents=True, exist_ok=True)
    conv = dumps([{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Yo", "tool_calls": [{"id": "abcdefghi", "function": {"name": "f", "arguments": {"x": 1}}}]},
                  {"role": "tool", "content": "ok", "tool_call_id": "abcdefghi"}])
    templates = shared / "chat-templates"
    if templates.is_dir():
        for p in sorted(templates.glob("*.jinja")):
            (d / p.stem).write_bytes(p.read_bytes())
            (d / f"{p.stem}-conv").write_bytes(parts(p.read_bytes(), conv))
    (d / "constructs").write_text(
        "{%- macro m(a, b=2) %}{{ a ~ b }}{{ caller() if caller is defined }}{% endmacro -%}\n"
        "{% call m(1) %}c{% endcall %}{% filter upper %}x{% endfilter %}{% with q = [1, 2][::-1] %}{{ q | join(',') }}{% endwith %}\n"
        "{% set ns = namespace(n=0) %}{% for k, v in {'a': 1}.items() if v > 0 %}{% set ns.n = ns.n + loop.index %}{% break %}{% endfor %}\n"
        "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list | tojson(indent=2) }}\n"
        "{# comment #}{% raw %}{{ raw }}{% endraw %}{{ '%d' | length }}{{ strftime_now('%Y') }}{{ x is defined and 1 < 2 <= 3 }}\n"
        "{% set b %}{{ range(3) | sum }}{% endset %}{{ b | int * 2 ** 3 // 5 % 4 }}{{ 'a b'.split()[-1].upper() }}{{ raise_exception('e') if false }}")


def main():
    shared, repo, out = (pathlib.Path(a) for a in sys.argv[1:4])
    out.mkdir(parents=True, exist_ok=True)
    hf_config_seeds(shared, out, repo)
    recipe_seeds(out, repo)
    dataset_seeds(shared, out, repo)
    jinja_seeds(shared, out)
    if (shared / "tokenizers").is_dir():
        tokenizer_json_seeds(shared, out)
        vocab_merges_seeds(shared, out)
        sentencepiece_seeds(shared, out)


if __name__ == "__main__":
    main()
