"""qtrain's Jinja engine against transformers on the 24 real chat templates in ../shared/data/chat-templates.

1. `expected.json` (rendered by transformers 5.23 / jinja2 3.1.6, strftime_now frozen at 2025-03-14 09:26:53):
   every rendering byte-identical through `qtrain data render`, every expected refusal raised with the
   template's own message.
2. Property test: per template a few hundred random conversations (unicode, empty and whitespace-only
   content, several system messages, long runs of turns, non-alternating roles, generation prompt on/off,
   tool calls and tool results, reasoning fields, special-token text inside content, extra variables),
   rendered by transformers' own `render_jinja_template` (jinja2) and by `qtrain data render --batch`:
   identical text, or both an error (raise_exception: the same message). The seed is printed; set
   QTRAIN_JINJA_SEED to replay one.
Negative control: a conversation rendered with a different date must differ for the templates that
print the date (the comparison sees the clock).
"""
import datetime as _dt
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("QTRAIN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
TEMPLATES = SHARED / "chat-templates"
if not (TEMPLATES / "expected.json").exists():
    pytest.skip(f"shared chat templates not found at {TEMPLATES}", allow_module_level=True)

from transformers.utils import chat_template_utils  # noqa: E402  (a missing package is a failure: CI has it)
from jinja2.exceptions import TemplateError  # noqa: E402

FROZEN = _dt.datetime(2025, 3, 14, 9, 26, 53)
FROZEN_ARG = "2025-03-14T09:26:53"
EXPECTED = json.loads((TEMPLATES / "expected.json").read_text())
MANIFEST = {m["file"]: m for m in json.loads((TEMPLATES / "MANIFEST.json").read_text())}
FILES = sorted(MANIFEST)
N_RANDOM = int(os.environ.get("QTRAIN_JINJA_CASES", "250"))


class _FrozenDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FROZEN


def _special_vars(f):
    return {k: MANIFEST[f][k] for k in ("bos_token", "eos_token") if MANIFEST[f].get(k) is not None}


def _qtrain_batch(qtrain_bin, tmp_path, template_file, cases, now=FROZEN_ARG):
    """Renders each case ({messages, tools?, add_generation_prompt, vars}) in one process."""
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases), encoding="utf-8")
    r = subprocess.run([str(qtrain_bin), "data", "render", str(template_file), "--batch", str(batch), "--now", now],
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.split("\n") if line]  # not splitlines(): U+2028 is inside texts
    assert len(out) == len(cases)
    return out


def _reference(template, case):
    """transformers' renderer (the jinja2 sandbox with its globals and tojson) with the frozen clock."""
    saved = chat_template_utils.datetime
    chat_template_utils.datetime = _FrozenDatetime
    try:
        # apply_chat_template drops null-valued keys before rendering; the cases have none.
        rendered, _ = chat_template_utils.render_jinja_template(
            conversations=[case["messages"]], tools=case.get("tools"), chat_template=template,
            add_generation_prompt=case["add_generation_prompt"], **case["vars"])
        return {"text": rendered[0]}
    except TemplateError as e:
        return {"error": str(e), "raised": type(e) is TemplateError}
    except Exception as e:  # TypeError, UndefinedError, ...: qtrain must fail too
        return {"error": f"{type(e).__name__}: {e}", "raised": False}
    finally:
        chat_template_utils.datetime = saved


# ---- random conversations ----

TEXTS = [
    "Hello!", "", " ", "  \n\t ", "\n", "Café, naïve, Ærøskøbing", "日本語のテキスト", "emoji 🙂🚀 and ZWJ 👩‍💻",
    "مرحبا بالعالم", "quotes ' \" and backslash \\ and {{ braces }} {% tag %}", "line one\nline two\n\nline four",
    "  padded both sides  ", "</s>", "<s>[INST] fake [/INST]", "<|im_start|>user\nfake<|im_end|>", "<|eot_id|>",
    "<think>\nreasoning here\n</think>\n\nThe answer.", "<tool_response>\nok\n</tool_response>", "\u00a0nbsp\u3000ideographic space\u2028",
    "a" * 300, "tab\tseparated\tvalues", "ends with newline\n", "\r\nwindows\r\n", "null", "None", "0",
]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                                                      "unit": {"type": "string", "enum": ["c", "f"]}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "calc", "description": "Évaluer une expression ∑",
                                      "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}, "required": ["expr"]},
                                      "return": {"type": "number"}}},
]


def _text(rng):
    if rng.random() < 0.2:
        return "".join(rng.choice(TEXTS) for _ in range(rng.randint(2, 3)))
    return rng.choice(TEXTS)


def _tool_call(rng):
    args = rng.choice([{"city": "Paris"}, {"city": "Zürich", "unit": "c"}, {}, {"expr": "1+2", "n": 3, "x": 1.5, "ok": True, "z": None}])
    call_id = "".join(rng.choice("abcdefghij0123456789") for _ in range(rng.choice([9, 9, 9, 5])))
    fn = {"name": rng.choice(["get_weather", "calc"]), "arguments": args if rng.random() < 0.8 else json.dumps(args)}
    return {"type": "function", "id": call_id, "function": fn}


def _conversation(rng):
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": _text(rng)})
    n = rng.choice([1, 1, 2, 2, 3, 4, 5, 6, 8, 12])
    alternate = rng.random() < 0.8
    role = "user"
    for _ in range(n):
        if not alternate:
            role = rng.choice(["user", "assistant", "system", "user"])
        m = {"role": role, "content": _text(rng)}
        if role == "assistant" and rng.random() < 0.15:
            m["tool_calls"] = [_tool_call(rng) for _ in range(rng.choice([1, 1, 2]))]
            if rng.random() < 0.3:
                m["content"] = ""
            msgs.append(m)
            for call in m["tool_calls"]:
                msgs.append({"role": "tool", "content": rng.choice(["22 degrees", "", '{"temp": 22}', "3"]),
                             "tool_call_id": call["id"], "name": call["function"]["name"]})
            role = "assistant"  # the model answers after the results
            continue
        if role == "assistant" and rng.random() < 0.1:
            m["reasoning_content"] = _text(rng)
        msgs.append(m)
        role = "assistant" if role == "user" else "user"
    case = {"messages": msgs, "add_generation_prompt": rng.random() < 0.5, "vars": {}}
    if rng.random() < 0.2:
        case["tools"] = TOOLS[: rng.randint(1, 2)]
    if rng.random() < 0.2:
        case["vars"]["enable_thinking"] = rng.random() < 0.5
    if rng.random() < 0.1:
        case["vars"]["date_string"] = "01 Jan 2030"
    return case


def _check_expected(name, got):
    for conv, out in zip(EXPECTED["conversations"], got):
        refused = EXPECTED["errors"].get(name, {}).get(conv)
        if refused:
            assert out.get("raised"), f"{name} {conv}: expected the template to refuse ({refused}), got {out}"
            assert refused == "TemplateError: " + out["error"], (refused, out)
        else:
            assert out.get("text") == EXPECTED[name][conv], f"{name} {conv}:\n got  {out!r}\n want {EXPECTED[name][conv]!r}"


@pytest.mark.parametrize("name", FILES)
def test_template(name, qtrain_bin, tmp_path):
    """expected.json's renderings, then the random conversations, in one qtrain process per template."""
    seed = int(os.environ.get("QTRAIN_JINJA_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"seed {seed} (QTRAIN_JINJA_SEED={seed} replays it)")
    rng = random.Random(f"{seed}-{name}")
    template = (TEMPLATES / name).read_text(encoding="utf-8")
    fixed = [{"messages": c["messages"], "add_generation_prompt": c["add_generation_prompt"], "vars": {}}
             for c in EXPECTED["conversations"].values()]
    cases = fixed + [_conversation(rng) for _ in range(N_RANDOM)]
    for c in cases:
        c["vars"].update(_special_vars(name))
    got = _qtrain_batch(qtrain_bin, tmp_path, TEMPLATES / name, cases)
    _check_expected(name, got[: len(fixed)])
    cases, got = cases[len(fixed):], got[len(fixed):]
    failures = []
    n_errors = 0
    for i, (case, out) in enumerate(zip(cases, got)):
        want = _reference(template, case)
        if "text" in want:
            ok = out.get("text") == want["text"]
        else:
            n_errors += 1
            ok = "error" in out and (not want["raised"] or (out.get("raised") and out["error"] == want["error"]))
        if not ok:
            failures.append(f"case {i}: {json.dumps(case, ensure_ascii=False)[:1500]}\n  qtrain: {out!r}\n  jinja2: {want!r}")
    print(f"{name}: {len(cases)} conversations, {n_errors} refused by the template")
    assert not failures, f"seed {seed}: {len(failures)} of {len(cases)} differ; first:\n" + "\n".join(failures[:3])


def test_date_is_seen(qtrain_bin, tmp_path):
    """Negative control: Llama-3.2 prints strftime_now's date; another clock renders differently."""
    name = "meta-llama-Llama-3.2-3B-Instruct.jinja"
    case = {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True, "vars": _special_vars(name)}
    a = _qtrain_batch(qtrain_bin, tmp_path, TEMPLATES / name, [case])[0]["text"]
    b = _qtrain_batch(qtrain_bin, tmp_path, TEMPLATES / name, [case], now="2026-01-02T03:04:05")[0]["text"]
    assert "14 Mar 2025" in a and "02 Jan 2026" in b and a != b
