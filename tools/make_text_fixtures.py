#!/usr/bin/env python3
"""Reference fixtures for dvd's text and sampling modules (language-server/src/{text,sampling}).

Builds the tiny Qwen-style tokenizer of tools/tiny_tokenizer.py, saves it the way transformers
saves a checkpoint's tokenizer, and records what transformers and tokenizers do with it:

  tokenizer.json, tokenizer_config.json   PreTrainedTokenizerFast(eos <|im_end|>, pad <|endoftext|>)
  chat_template.jinja                     the HF InternVL chat template (written by save_pretrained)
  templates/internvl_hf.jinja             the chat template transformers' InternVL conversion script
                                          (convert_internvl_weights_to_hf.py) writes
  templates/qwen3.jinja                   a Qwen3-style template (system message, reasoning split,
                                          enable_thinking switch; no tools)
  templates/controls.jinja                raise_exception, loop controls ({% break %}/{% continue %}),
                                          tojson (ensure_ascii=False, key order, indent), filters,
                                          trim_blocks/lstrip_blocks on undashed tags
  templates/pymethods.jinja               Python str/dict methods, tojson options, how True, None
                                          and floats print
  tokenizer_cases.json                    encode (add_special_tokens=False) and decode (with and
                                          without skip_special_tokens) of assorted strings, and the
                                          decode of every prefix of some byte-split ids
  chat_cases.json                         apply_chat_template(messages, add_generation_prompt=...,
                                          tokenize=False) for several message lists x templates,
                                          with the ids of the rendered text, or the message of the
                                          exception a template raised
  logits_cases.json                       transformers' TemperatureLogitsWarper, TopKLogitsWarper,
                                          TopPLogitsWarper, MinPLogitsWarper and
                                          RepetitionPenaltyLogitsProcessor (alone and chained in
                                          generate()'s order) on fixed logits vectors; -inf is null

Deterministic: two runs give identical files (compare with sha256sum).

Usage:  python3 -m venv .venv && .venv/bin/pip install -r tools/requirements-vision.txt
        .venv/bin/python tools/make_text_fixtures.py
(the versions pinned in tools/requirements-vision.txt: transformers 5.24.0, tokenizers 0.23.3,
torch 2.15.0.)
"""

import json
import re
import shutil
import sys
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerFast
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_tokenizer import build_tokenizer  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "language-server/tests/fixtures/text"

# ------------------------------------------------------------------------------------- templates
# Verbatim from transformers' src/transformers/models/internvl/convert_internvl_weights_to_hf.py.
INTERNVL_HF = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<image>\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}"
    "{% endif %}"
)

QWEN3 = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

CONTROLS = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = 'You are a helpful assistant.' %}
    {%- set loop_messages = messages %}
{%- endif %}
[SYS] {{ system_message | trim }} [/SYS]
{% for message in loop_messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Unsupported role: ' + message['role']) }}
    {%- endif %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'assistant' and message['content'] is string and message['content'] == '' %}
        {%- continue %}
    {%- endif %}
    {%- if loop.index > 5 %}
        {%- break %}
    {%- endif %}
[{{ message['role'] | upper }} {{ loop.index }}/{{ loop.length }}]
{% if message['content'] is string %}
{{ message['content'] }}
{% else %}
{% for part in message['content'] %}
{% if part['type'] != 'text' %}
{% continue %}
{% endif %}
  - {{ part['text'] | trim }}
{% endfor %}
images: {{ message['content'] | selectattr('type', 'equalto', 'image') | list | length }}
{% endif %}
json: {{ message | tojson }}
{% if loop.first %}
pretty: {{ message['content'] | tojson(indent=2) }}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{% else %}
{{- eos_token }}
{% endif %}
"""

# Python str/dict methods, tojson options and how values print (True, None, floats).
PYMETHODS = """{%- for message in messages %}
{%- if message.content is string %}{% set c = message.content %}{% else %}
{%- set c = message.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') %}{% endif %}
{{ loop.index0 }}: {{ c.strip() | tojson }} {{ c.lstrip('Hel') }}|{{ c.rstrip('!?.') }}|{{ c.strip('\n ') }}
 {{ c.split() | tojson }} {{ c.split(' ', 1) | tojson }} {{ c.rsplit(None, 1) | tojson }} {{ c.split('\n') | tojson }}
 {{ c.upper() }} {{ c.lower() }} {{ c.title() }} {{ c.capitalize() }} {{ c.replace('l', 'L', 1) }} {{ c.replace('o', '0') }}
 {{ c.find('o') }} {{ c.rfind('o') }} {{ c.count('l') }} {{ c.startswith(('Wh', 'He')) }} {{ c.endswith('?') }}
 {{ c.isdigit() }} {{ c.isspace() }} {{ c.isalpha() }} {{ '-'.join(c.splitlines()) }} {{ c.removeprefix('<think>') | length }}
 {{ message.items() | list | tojson }} {{ message.keys() | list | tojson }} {{ message.get('name', 'anon') }} {{ message.get('nope') }}
{%- endfor %}
{{ {'z': [1, 2.5, 1e-07, 1e16, 3.0, none, true, false], 'a': 'ü\n\u0001'} | tojson(sort_keys=true) }}
{{ messages | tojson(indent=2, ensure_ascii=true) }}
{{ messages[0] | tojson(separators=(',', ':')) }}
{{ true }} {{ false }} {{ none }} {{ 2.5 }} {{ 3.0 }} {{ 1e16 }} {{ 10 // 3 }} {{ 7 / 2 }} {{ messages | length > 1 }}
"""

TEMPLATES = {"internvl_hf": INTERNVL_HF, "qwen3": QWEN3, "controls": CONTROLS, "pymethods": PYMETHODS}

# ---------------------------------------------------------------------------------------- inputs
STRINGS = [
    "Describe this image in detail.",
    "Hello world!",
    "naïve café — 你好，世界 🙂",
    "日本語のテキストです",
    "emoji: 😀👍🏽 🇯🇵 👨\u200d👩\u200d👧",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is shown in the picture?",
    "<think>\nreasoning\n</think>\n\nanswer",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\r\n end",
    "e\u0301t\u00e9 (NFC)",
    "<image>\nnot a special token; <|im_start| is not one either",
    "Hello<|endoftext|><|endoftext|>",
    "1234567890 + - * / = ( ) [ ] { }",
    "",
]
# Strings whose every-prefix decode is recorded (multi-byte characters split over byte tokens).
PREFIX_STRINGS = ["日本語のテキストです", "emoji: 😀👍🏽 🇯🇵 👨\u200d👩\u200d👧", "naïve café — 你好，世界 🙂"]

MESSAGES = {
    "single_text": [{"role": "user", "content": "Hello world!"}],
    "image_then_text": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image in detail."}]}
    ],
    "multi_turn_system": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "two_images_escapes": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare:\n"},
                {"type": "image"},
                {"type": "image"},
                {"type": "text", "text": "Which is \"brighter\" & <bigger>?\t\\ 'quoted'"},
            ],
        }
    ],
    "unicode_reasoning": [
        {"role": "user", "content": "你好，世界 🙂"},
        {"role": "assistant", "content": "<think>\nThe user greets.\n</think>\n\n你好！"},
    ],
    "video": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}],
    "empty_assistant_and_long": [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "four"},
        {"role": "assistant", "content": "five"},
        {"role": "user", "content": "six"},
        {"role": "assistant", "content": "seven"},
    ],
    "roles_not_alternating": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "tool_role": [{"role": "user", "content": "a"}, {"role": "tool", "content": "{\"x\": 1}"}],
}
EXTRA_KWARGS = [("qwen3", "multi_turn_system", {"enable_thinking": False}),
                ("qwen3", "single_text", {"enable_thinking": True})]


def f32_list(t):
    return [None if v == float("-inf") else float(v) for v in t.tolist()]


def tokenizer_cases(tok, raw):
    cases = []
    for s in STRINGS:
        ids = tok.encode(s, add_special_tokens=False)
        assert ids == raw.encode(s, add_special_tokens=False).ids
        cases.append({
            "text": s,
            "ids": ids,
            "decode": tok.decode(ids, skip_special_tokens=False),
            "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    prefixes = []
    for s in PREFIX_STRINGS:
        ids = tok.encode(s, add_special_tokens=False)
        prefixes.append({"ids": ids, "decodes": [tok.decode(ids[:n]) for n in range(1, len(ids) + 1)]})
    specials = {t: tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens + ["<|im_start|>", "<IMG_CONTEXT>",
                                                                                   "<think>"]}
    return {"vocab_size": len(tok), "special_ids": dict(sorted(specials.items())), "cases": cases,
            "prefix_decodes": prefixes}


def chat_cases(tok):
    cases = []
    runs = [(t, m, agp, {}) for t in TEMPLATES if t != "pymethods" for m in MESSAGES for agp in (True, False)]
    runs += [("pymethods", m, True, {}) for m in ("multi_turn_system", "two_images_escapes", "unicode_reasoning")]
    runs += [(t, m, True, kw) for (t, m, kw) in EXTRA_KWARGS]
    for template, messages, agp, kwargs in runs:
        case = {"template": template, "messages": messages, "add_generation_prompt": agp, "kwargs": kwargs}
        try:
            text = tok.apply_chat_template(MESSAGES[messages], chat_template=TEMPLATES[template],
                                           add_generation_prompt=agp, tokenize=False, **kwargs)
        except TemplateError as e:
            case["exception"] = str(e)
        else:
            case["text"] = text
            case["ids"] = tok.encode(text, add_special_tokens=False)
        cases.append(case)
    return {"messages": MESSAGES, "cases": cases}


def logits_cases():
    vectors = [
        [2.5, -1.0, 0.3, 4.0, 0.0, -3.2, 1.7, 3.1, -0.5, 2.0, 0.9, -2.2],
        [0.11, 0.52, -0.73, 1.94, 1.05, -0.36, 0.27, 0.88, -1.49, 0.6, 1.31, -0.02, 0.44, 2.33, -0.91, 0.75],
        [1.0, 3.0, 3.0, 0.5, 3.0, -1.0, 2.0, 0.25],  # ties at the top-k boundary
        [-2.0, -0.5, -3.0, -0.25, -1.5, -4.0, -0.75, -1.0],  # all negative
    ]
    input_ids = [[3, 3, 5, 1, 0], [13, 3, 8, 8, 14, 0, 2], [1, 2, 7], [0, 2, 5, 5]]
    cases = []
    for vec, ids in zip(vectors, input_ids):
        scores = torch.tensor([vec], dtype=torch.float32)
        ids_t = torch.tensor([ids], dtype=torch.long)
        case = {"logits": [float(v) for v in scores[0].tolist()], "input_ids": ids, "temperature": [], "top_k": [],
                "top_p": [], "min_p": [], "repetition_penalty": [], "chain": []}
        for t in (0.5, 1.3):
            case["temperature"].append({"value": t, "out": f32_list(TemperatureLogitsWarper(t)(ids_t, scores.clone())[0])})
        for k in (1, 2, 3, 5):
            case["top_k"].append({"value": k, "out": f32_list(TopKLogitsWarper(k)(ids_t, scores.clone())[0])})
        for p in (0.05, 0.3, 0.6, 0.9, 0.99):
            case["top_p"].append({"value": p, "out": f32_list(TopPLogitsWarper(p)(ids_t, scores.clone())[0])})
        for m in (0.05, 0.2, 0.5, 1.0):
            case["min_p"].append({"value": m, "out": f32_list(MinPLogitsWarper(m)(ids_t, scores.clone())[0])})
        for r in (1.3, 0.8):
            out = RepetitionPenaltyLogitsProcessor(r)(ids_t, scores.clone())[0]
            case["repetition_penalty"].append({"value": r, "out": f32_list(out)})
        for (r, t, k, p, m) in [(1.2, 0.7, 5, 0.9, 0.05), (1.0, 1.5, 0, 0.8, 0.0), (1.1, 0.6, 3, 1.0, 0.3),
                                (1.0, 1.0, 0, 1.0, 0.1)]:
            # generate()'s order: processors (repetition penalty), then temperature, top-k, top-p, min-p.
            out = scores.clone()
            if r != 1.0:
                out = RepetitionPenaltyLogitsProcessor(r)(ids_t, out)
            if t != 1.0:
                out = TemperatureLogitsWarper(t)(ids_t, out)
            if k != 0:
                out = TopKLogitsWarper(k)(ids_t, out)
            if p < 1.0:
                out = TopPLogitsWarper(p)(ids_t, out)
            if m > 0.0:
                out = MinPLogitsWarper(m)(ids_t, out)
            case["chain"].append({"repetition_penalty": r, "temperature": t, "top_k": k, "top_p": p, "min_p": m,
                                  "out": f32_list(out[0])})
        cases.append(case)
    return {"cases": cases}


NUMBER_LIST = re.compile(r"\[(?:\s*(?:-?[0-9][0-9.e+-]*|null),?)+\s*\]")


def write_json(name, obj):
    """Indented JSON with lists of numbers on one line (keeps the fixtures small)."""
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    text = NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",")) + "]", text)
    (OUT / name).write_text(text + "\n", encoding="utf-8")


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "templates").mkdir(parents=True)
    raw = build_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = INTERNVL_HF
    tok.save_pretrained(OUT)
    for name, src in TEMPLATES.items():
        (OUT / "templates" / f"{name}.jinja").write_text(src, encoding="utf-8")
    write_json("tokenizer_cases.json", tokenizer_cases(tok, raw))
    write_json("chat_cases.json", chat_cases(tok))
    write_json("logits_cases.json", logits_cases())
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
