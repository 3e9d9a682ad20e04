"""qtrain's built-in chat templates against transformers' apply_chat_template with the official Jinja
text of each template: identical token ids for every conversation.

  chatml   the Qwen2 tokenizer (its tokenizer_config.json carries the ChatML template; qtrain detects it)
  llama-2  the Llama-2 sentencepiece model + Meta's Llama-2-chat template (detected from a written
           tokenizer_config.json)
  mistral  the Llama-2 sentencepiece model + Mistral-7B-Instruct-v0.1's template (detected)
  llama-3  the Qwen2 byte-level BPE with Llama 3's header/turn tokens added + Meta's Llama-3-Instruct
           template (detected)
  plain    the shared tiny model + qtrain's plain template written in Jinja (named explicitly)

qtrain side: `qtrain data preview --model DIR --file conv.jsonl --format messages --ids -n 0`.
"""
import json
import os
import shutil
import subprocess

import pytest

SHARED = os.environ.get("QTRAIN_SHARED_DATA", os.path.join(os.path.dirname(__file__), "../../../shared/data"))
BINARY = os.environ.get("QTRAIN_BINARY", "")
if not os.path.isdir(os.path.join(SHARED, "tokenizers")):
    pytest.skip(f"shared test data not found at {SHARED}", allow_module_level=True)
if not BINARY or not os.path.exists(BINARY):
    pytest.skip("QTRAIN_BINARY is not set to the qtrain executable", allow_module_level=True)
import transformers  # a missing package is a failure: CI has every oracle

# The official templates, as published in the models' tokenizer_config.json.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
PLAIN = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\n' }}"
    "{% else %}{{ m['content'] + '\n' }}{% endif %}{% endfor %}"
)


def _content(c):
    return c if isinstance(c, str) else "".join(p.get("text", p.get("value", "")) for p in c)


def conversations(with_system):
    convs = []
    with open(os.path.join(SHARED, "datasets", "messages-format", "v1_sft_demo.jsonl"), encoding="utf-8") as f:
        for line in list(f)[:60]:
            convs.append([{"role": m["role"], "content": _content(m["content"])} for m in json.loads(line)["messages"]])
    convs.append([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
                  {"role": "user", "content": "And 3+3?\nExplain."}, {"role": "assistant", "content": "6, because 3 and 3 make 6."}])
    convs.append([{"role": "user", "content": "  padded question  "}, {"role": "assistant", "content": "\nanswer with newline\n"}])
    convs.append([{"role": "user", "content": "Unicode: café, 日本語, emoji 🎉"}, {"role": "assistant", "content": "Noted — ünïcödé."}])
    if with_system:
        convs.append([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}])
    return convs


def hf_ids(tok, conv):
    out = tok.apply_chat_template(conv, tokenize=True)
    if hasattr(out, "keys"):  # transformers 5 may return a BatchEncoding
        out = out["input_ids"]
    return list(out)


def qtrain_ids(model_dir, convs, template, tmp_path):
    f = tmp_path / "conv.jsonl"
    with open(f, "w", encoding="utf-8") as out:
        for c in convs:
            out.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")
    args = [BINARY, "data", "preview", "--model", str(model_dir), "--file", str(f), "--format", "messages", "--ids", "-n", "0",
            "--max-seq-len", "100000", "--cache-dir", str(tmp_path / "cache")]
    if template:
        args += ["--template", template]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = []
    for line in r.stdout.splitlines():
        ids, mask = line.split("\t")
        rows.append(([int(x) for x in ids.split()], mask))
    return rows


def qtrain_tokenize(model_dir, text, tmp_path):
    f = tmp_path / "rendered.txt"
    f.write_bytes(text.encode("utf-8"))
    r = subprocess.run([BINARY, "tokenize", str(model_dir), "--file", str(f), "--no-special"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


def compare(name, tok, model_dir, convs, template, tmp_path, sentencepiece=False):
    """Token ids equal transformers' for every conversation. With a sentencepiece model, transformers 5
    merges whitespace runs differently from sentencepiece (see test_tokenizers.py; qtrain follows
    sentencepiece): there the rendered text of apply_chat_template, tokenized by qtrain (checked against
    sentencepiece in test_tokenizers.py), is the reference instead."""
    ours = qtrain_ids(model_dir, convs, template, tmp_path)
    assert len(ours) == len(convs), f"{name}: qtrain gave {len(ours)} examples for {len(convs)} conversations"
    bad, via_text = [], 0
    for conv, (ids, mask) in zip(convs, ours):
        theirs = hf_ids(tok, conv)
        if ids != theirs and sentencepiece:
            rendered = tok.apply_chat_template(conv, tokenize=False)
            if "  " in rendered:
                theirs = qtrain_tokenize(model_dir, rendered, tmp_path)
                via_text += 1
        if ids != theirs:
            bad.append((conv, ids, theirs))
        assert "1" in mask, f"{name}: nothing trained in {conv}"
        # The trained tokens decode to the assistant replies (and the end-of-turn token).
        trained = tok.decode([i for i, m in zip(ids, mask) if m == "1"])
        last = [m for m in conv if m["role"] == "assistant"][-1]["content"].strip()
        assert last.split()[-1] in trained, f"{name}: last reply {last!r} not among trained tokens {trained!r}"
    assert not bad, f"{name}: {len(bad)}/{len(convs)} conversations differ, e.g. {bad[0][0]}\n qtrain {bad[0][1]}\n hf     {bad[0][2]}"
    assert via_text <= len(convs) // 10, f"{name}: {via_text} conversations needed the rendered-text reference"
    print(f"{name}: {len(convs)} conversations identical ({via_text} against the rendered text)")


def with_config(tmp_path, name, files_from, config):
    d = tmp_path / name
    d.mkdir()
    for f in os.listdir(files_from):
        if f != "tokenizer_config.json":
            shutil.copy(os.path.join(files_from, f), d / f)
    with open(d / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f)
    return d


def test_chatml_qwen2(tmp_path):
    d = os.path.join(SHARED, "tokenizers", "qwen2")
    tok = transformers.AutoTokenizer.from_pretrained(d)
    compare("chatml", tok, d, conversations(True), None, tmp_path)  # auto-detected from tokenizer_config.json


def test_llama2(tmp_path):
    d = with_config(tmp_path, "llama2", os.path.join(SHARED, "tokenizers", "llama2-spm"),
                    {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                     "add_bos_token": True, "legacy": True, "chat_template": LLAMA2})
    tok = transformers.AutoTokenizer.from_pretrained(d)
    compare("llama-2", tok, d, conversations(True), None, tmp_path, sentencepiece=True)


def test_mistral(tmp_path):
    d = with_config(tmp_path, "mistral", os.path.join(SHARED, "tokenizers", "llama2-spm"),
                    {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                     "add_bos_token": True, "legacy": True, "chat_template": MISTRAL})
    tok = transformers.AutoTokenizer.from_pretrained(d)
    compare("mistral", tok, d, conversations(False), None, tmp_path, sentencepiece=True)


def test_llama3(tmp_path):
    src = os.path.join(SHARED, "tokenizers", "qwen2")
    # Contiguous ids after Qwen2's own added tokens (transformers 5 numbers added tokens in order).
    added = {"151643": "<|endoftext|>", "151644": "<|im_start|>", "151645": "<|im_end|>", "151646": "<|begin_of_text|>", "151647": "<|start_header_id|>", "151648": "<|end_header_id|>", "151649": "<|eot_id|>"}
    d = with_config(tmp_path, "llama3", src, {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|endoftext|>",
        "added_tokens_decoder": {k: {"content": v, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                                     "single_word": False} for k, v in added.items()},
        "chat_template": LLAMA3})
    os.remove(d / "added_tokens.json")  # keep the ids in one place: added_tokens_decoder above
    tok = transformers.AutoTokenizer.from_pretrained(d)
    assert tok.convert_tokens_to_ids("<|eot_id|>") == 151649
    compare("llama-3", tok, d, conversations(True), None, tmp_path)


def test_plain(tmp_path):
    d = os.path.join(SHARED, "models", "llama2c-xs-tok512-hf")
    tok = transformers.AutoTokenizer.from_pretrained(d)
    tok.chat_template = PLAIN
    # The tiny model's vocabulary has no CJK/emoji pieces: byte fallback tokens, still comparable.
    compare("plain", tok, d, conversations(True), "plain", tmp_path, sentencepiece=True)


def test_model_template_is_rendered_whatever_it_is(tmp_path):
    """No fingerprints: the model's own template is rendered as it is. This one drops the assistant's reply,
    so nothing is left to train, and the error says so (exit 3)."""
    d = with_config(tmp_path, "odd", os.path.join(SHARED, "tokenizers", "llama2-spm"),
                    {"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{{ messages[0]['content'] }}"})
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    r = subprocess.run([BINARY, "data", "preview", "--model", str(d), "--file", str(f), "--format", "messages", "--ids",
                        "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "no example has a trained token" in r.stderr


TEMPLATES = os.path.join(SHARED, "chat-templates")


def _qwen_dir(tmp_path, name, template_file):
    src = os.path.join(SHARED, "tokenizers", "qwen2")
    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    with open(os.path.join(TEMPLATES, template_file), encoding="utf-8") as f:
        cfg["chat_template"] = f.read()
    return with_config(tmp_path, name, src, cfg)


def _expected_mask(tok, conv, ids):
    """The documented rule, computed independently in Python: per assistant message, the characters from
    the end of render(messages[:i], add_generation_prompt=True) to the end of render(messages[:i+1]), less
    the whitespace after the turn's closing '>'; a token is trained when its characters overlap."""
    full = tok.apply_chat_template(conv, tokenize=False)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids
    spans = []
    for i, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(conv[:i], tokenize=False, add_generation_prompt=True) if i else ""
        after = tok.apply_chat_template(conv[: i + 1], tokenize=False)
        assert full.startswith(before) and full.startswith(after)
        end = len(after)
        trimmed = after.rstrip(" \n\t\r")
        if len(trimmed) > len(before) and trimmed.endswith(">"):
            end = len(trimmed)
        spans.append((len(before), end))
    return "".join("1" if any(a < e and b > s for s, e in spans) else "0" for a, b in enc["offset_mapping"])


@pytest.mark.parametrize("template", ["Qwen-Qwen2.5-7B-Instruct.jinja", "Qwen-Qwen2-7B-Instruct.jinja", "Felladrin-Llama-68M-Chat-v1.jinja"])
def test_real_templates_ids_and_mask(template, tmp_path):
    """The shared Qwen/ChatML templates with the Qwen2 tokenizer: ids == apply_chat_template(tokenize=True),
    and the trained mask == the documented rule (assistant content + <|im_end|>, not the header, not the \n)."""
    d = _qwen_dir(tmp_path, "qwen", template)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    convs = conversations(True)
    ours = qtrain_ids(d, convs, None, tmp_path)
    for conv, (ids, mask) in zip(convs, ours):
        assert ids == hf_ids(tok, conv), conv
        assert mask == _expected_mask(tok, conv, ids), conv


# Qwen's ChatML with transformers' {% generation %} marks around each assistant reply.
GENERATION_CHATML = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_generation_mask_equals_transformers(tmp_path):
    """A template with {% generation %}: the trained mask is exactly return_assistant_tokens_mask."""
    src = os.path.join(SHARED, "tokenizers", "qwen2")
    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["chat_template"] = GENERATION_CHATML
    d = with_config(tmp_path, "gen", src, cfg)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    convs = conversations(True)
    ours = qtrain_ids(d, convs, None, tmp_path)
    for conv, (ids, mask) in zip(convs, ours):
        out = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert ids == list(out["input_ids"]), conv
        assert mask == "".join(str(x) for x in out["assistant_masks"]), conv


def test_tool_call_data_matches_transformers(tmp_path):
    """ShareGPT tool data (function_call / observation / tools) through Qwen2.5's template: the same ids as
    apply_chat_template on the OpenAI-style conversation (assistant tool_calls, tool messages, tools)."""
    d = _qwen_dir(tmp_path, "qwen-tools", "Qwen-Qwen2.5-7B-Instruct.jinja")
    tok = transformers.AutoTokenizer.from_pretrained(d)
    with open(os.path.join(SHARED, "datasets", "sharegpt-format", "glaive_toolcall_en_demo.json"), encoding="utf-8") as f:
        records = json.load(f)[:25]
    f = tmp_path / "tools.json"
    f.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    r = subprocess.run([BINARY, "data", "preview", "--model", str(d), "--file", str(f), "--format", "sharegpt", "--ids", "-n", "0",
                        "--max-seq-len", "100000", "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(rows) == len(records)
    n_calls = 0
    for rec, (ids, mask) in zip(records, rows):
        msgs, last = [], None
        for i, m in enumerate(rec["conversations"]):
            role = {"human": "user", "gpt": "assistant", "system": "system"}.get(m["from"])
            if role:
                msgs.append({"role": role, "content": m["value"]})
            elif m["from"] == "function_call":
                call = json.loads(m["value"])
                last = {"type": "function", "id": "call%05d" % i, "function": {"name": call["name"], "arguments": call.get("arguments", {})}}
                msgs.append({"role": "assistant", "content": "", "tool_calls": [last]})
                n_calls += 1
            else:
                msgs.append({"role": "tool", "content": m["value"], "tool_call_id": last["id"], "name": last["function"]["name"]})
        tools = [{"type": "function", "function": t} for t in json.loads(rec["tools"])] if rec.get("tools") else None
        theirs = tok.apply_chat_template(msgs, tools=tools, tokenize=True)
        if hasattr(theirs, "keys"):
            theirs = theirs["input_ids"]
        assert [int(x) for x in ids.split()] == list(theirs), msgs
        trained = tok.decode([int(x) for x, m in zip(ids.split(), mask) if m == "1"])
        for m in msgs:
            if m.get("tool_calls"):
                assert m["tool_calls"][0]["function"]["name"] in trained  # the call is trained: the model learns to call
    assert n_calls > 0
