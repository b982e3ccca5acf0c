"""Template and tool-call oracles for gen_text_fixtures.py.

The chat-template side reproduces what a vLLM server does before the
prompt reaches the tokenizer: vLLM's message preprocessing (chat_utils.py,
"openai" content format, which vLLM auto-detects for all three Kimi-K2
templates because they loop over message['content']) and transformers'
jinja2 environment.  The tool-call side is vLLM's kimi_k2 parser regex.
"""

import copy
import datetime
import json
import os
import random

import jinja2
import jinja2.ext
import jinja2.sandbox


# ---- transformers' environment ------------------------------------------------

def hf_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None,
               sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def load_templates(model_dir):
    out = {}
    with open(os.path.join(model_dir, "chat_template.jinja")) as f:
        out["v3"] = f.read()
    alt = os.path.join(model_dir, "alt")
    out["v1"] = json.load(open(os.path.join(
        alt, "tokenizer_config.2025-07-initial.json")))["chat_template"]
    out["v2"] = json.load(open(os.path.join(
        alt, "tokenizer_config.2025-08-embedded-template.json")))[
            "chat_template"]
    return out


# ---- vLLM preprocessing --------------------------------------------------------

def vllm_messages(messages):
    conv = []
    for m in messages:
        role = m["role"]
        content = m.get("content")
        if content is None:
            content = []
        elif isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append({"type": "text", "text": p})
            elif p.get("type") in ("text", "input_text", "output_text",
                                   "refusal", "thinking"):
                key = "thinking" if p["type"] == "thinking" else (
                    "refusal" if p["type"] == "refusal" else "text")
                if p.get(key) is None:
                    continue
                parts.append({"type": "text", "text": p[key]})
            else:
                raise ValueError("unsupported part")
        msg = {"role": role, "content": parts}
        if role == "assistant":
            if m.get("tool_calls") is not None:
                msg["tool_calls"] = copy.deepcopy(list(m["tool_calls"]))
        elif role == "tool":
            if "tool_call_id" in m:
                msg["tool_call_id"] = m["tool_call_id"]
            texts = [p.get("text", "") for p in parts]
            msg["content"] = "\n".join(texts) if texts else ""
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        conv.append(msg)
    for msg in conv:
        if msg["role"] == "assistant" and "tool_calls" in msg:
            tcs = msg["tool_calls"]
            if not isinstance(tcs, list):
                continue
            if len(tcs) == 0:
                msg.pop("tool_calls")
                continue
            for item in tcs:
                a = item["function"].get("arguments")
                if isinstance(a, str):
                    try:
                        item["function"]["arguments"] = json.loads(a)
                    except json.JSONDecodeError:
                        item["function"]["arguments"] = {}
                elif not isinstance(a, (dict, list)):
                    item["function"]["arguments"] = {}
    return conv


def vllm_tools(tools):
    """pydantic model_dump() of ChatCompletionToolsParam: declared fields
    first (type, function{name, description, parameters}), extras after."""
    if tools is None:
        return None
    out = []
    for t in tools:
        f = t["function"]
        fd = {"name": f["name"], "description": f.get("description"),
              "parameters": f.get("parameters")}
        for k, v in f.items():
            if k not in fd:
                fd[k] = v
        td = {"type": t.get("type", "function"), "function": fd}
        for k, v in t.items():
            if k not in td:
                td[k] = v
        out.append(td)
    return out


def render(env, src, messages, tools, agp):
    tmpl = env.from_string(src)
    return tmpl.render(messages=vllm_messages(messages),
                       tools=vllm_tools(tools), documents=None,
                       add_generation_prompt=agp, bos_token="[BOS]",
                       eos_token="[EOS]", unk_token="[UNK]",
                       pad_token="[PAD]",
                       additional_special_tokens=[
                           "<|im_end|>", "<|im_user|>", "<|im_assistant|>",
                           "<|start_header_id|>", "<|end_header_id|>",
                           "[EOT]", "<|im_system|>", "<|im_middle|>"])


# ---- random requests -------------------------------------------------------------

TEXTS = ["Hello", "What's the weather in Paris?", "你好，请帮我查一下北京的天气。",
         "Line one\nLine two\n\n  indented", "", " ", "Use <|im_end|> literally",
         "emoji 👨‍👩‍👧 and \"quotes\" and 'single' and \\backslash",
         "tab\there", "Ünïcödé ñ ß", "{\"json\": true}", "trailing space ",
         "数学: 1+1=2", "<|tool_call_begin|>fake", "multi\r\nline"]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "城市名称"},
            "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "search", "parameters": {"type": "object", "properties": {
            "q": {"type": "string"}, "limit": {"type": "integer",
                                                "default": 10,
                                                "maximum": 1e3},
            "ratio": {"type": "number", "default": 0.25},
            "strict": {"type": "boolean", "default": False},
            "tags": {"type": "array", "items": {"type": "string"}},
            "x": {"default": None}}}}},
    {"type": "function", "function": {"name": "noop"}},
    {"type": "function", "function": {
        "name": "calc", "description": "Evaluate \"math\" \\ safely\n",
        "parameters": {"type": "object", "properties": {}},
        "strict": True}},
    {"function": {"description": "desc first", "name": "ordered",
                  "parameters": {"b": 1, "a": [1.5, -2, 3e-7, 1e16, 123456789]}},
     "type": "function"},
]

ARGS = ['{"city": "Paris"}', '{"city":"北京","unit":"c"}', '{}', '',
        'not json', '{"q": "a \\"b\\"", "limit": 5}', '[1, 2]', 'null',
        '{"nested": {"a": [true, false, null]}, "f": 0.1}', '  {"x": 1}  ',
        '"just a string"', '12']


def rand_request(rng, n_calls_so_far):
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": rng.choice(
            ["You are a helpful assistant.", "系统提示", "Be terse.", ""])})
    turns = rng.randint(1, 4)
    call_idx = n_calls_so_far
    for _ in range(turns):
        u = {"role": "user", "content": rng.choice(TEXTS)}
        r = rng.random()
        if r < 0.2:
            u["content"] = [{"type": "text", "text": rng.choice(TEXTS)},
                            {"type": "text", "text": rng.choice(TEXTS)}]
        if rng.random() < 0.1:
            u["name"] = rng.choice(["alice", "用户"])
        msgs.append(u)
        if rng.random() < 0.6:
            calls = []
            for _ in range(rng.randint(1, 3)):
                fn = rng.choice(["get_weather", "search", "calc"])
                a = rng.choice(ARGS)
                if rng.random() < 0.2:
                    a = {"city": "Paris", "n": 2.5, "ok": True}
                calls.append({"id": "functions.%s:%d" % (fn, call_idx),
                              "type": "function",
                              "function": {"name": fn, "arguments": a}})
                call_idx += 1
            a = {"role": "assistant", "tool_calls": calls}
            c = rng.random()
            if c < 0.4:
                a["content"] = None
            elif c < 0.6:
                a["content"] = ""
            elif c < 0.8:
                a["content"] = rng.choice(TEXTS)
            msgs.append(a)
            for call in calls:
                t = {"role": "tool", "tool_call_id": call["id"],
                     "content": rng.choice(TEXTS)}
                if rng.random() < 0.2:
                    t["content"] = [{"type": "text", "text": "part1"},
                                    {"type": "text", "text": "part2"}]
                if rng.random() < 0.2:
                    t["name"] = call["function"]["name"]
                msgs.append(t)
            if rng.random() < 0.7:
                msgs.append({"role": "assistant",
                             "content": rng.choice(TEXTS)})
        else:
            a = {"role": "assistant", "content": rng.choice(TEXTS)}
            if rng.random() < 0.1:
                a["tool_calls"] = []
            msgs.append(a)
    if rng.random() < 0.6 and msgs[-1]["role"] == "assistant":
        msgs.append({"role": "user", "content": rng.choice(TEXTS)})
    tools = None
    r = rng.random()
    if r < 0.6:
        tools = rng.sample(TOOLS, rng.randint(1, len(TOOLS)))
    elif r < 0.7:
        tools = []
    return msgs, tools


def gen_templates(model_dir, rng):
    env = hf_env()
    srcs = load_templates(model_dir)
    cases = []
    for name in ("v1", "v2", "v3"):
        for i in range(50):
            msgs, tools = rand_request(rng, 0)
            agp = rng.random() < 0.7
            cases.append({"template": name, "messages": msgs,
                          "tools": tools, "add_generation_prompt": agp,
                          "text": render(env, srcs[name], msgs, tools, agp)})
    return {"syntax": gen_syntax(),
            "syntax_messages": SYNTAX_MSGS,
            "templates": {"v1": "alt/tokenizer_config.2025-07-initial.json",
                          "v2": "alt/tokenizer_config.2025-08-embedded-"
                                "template.json",
                          "v3": "chat_template.jinja"},
            "cases": cases}


# ---- tool calls ------------------------------------------------------------------

import re  # noqa: E402

CALL_RX = re.compile(
    r"<\|tool_call_begin\|>\s*(?P<tool_call_id>[^<]+:\d+)\s*"
    r"<\|tool_call_argument_begin\|>\s*"
    r"(?P<function_arguments>(?:(?!<\|tool_call_begin\|>).)*?)\s*"
    r"<\|tool_call_end\|>", re.DOTALL)


def vllm_extract(text):
    """extract_tool_calls of vLLM's kimi_k2 parser (non-streaming)."""
    begins = ["<|tool_calls_section_begin|>", "<|tool_call_section_begin|>"]
    if not any(b in text for b in begins):
        return {"content": text, "tool_calls": []}
    calls = []
    for m in CALL_RX.finditer(text):
        fid = m.group("tool_call_id")
        name = fid.split(":")[0].split(".")[-1]
        calls.append({"id": fid, "name": name,
                      "arguments": m.group("function_arguments")})
    if not calls:
        return {"content": text, "tool_calls": []}
    cut = min(text.find(b) for b in begins if b in text)
    content = text[:cut]
    return {"content": content if content else None, "tool_calls": calls}


def gen_toolcalls(rng):
    S, E = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
    B, A, C = ("<|tool_call_begin|>", "<|tool_call_argument_begin|>",
               "<|tool_call_end|>")
    cases = []

    def add(text, wellformed=True):
        cases.append({"text": text, "wellformed": wellformed,
                      "expect": vllm_extract(text)})

    add("plain answer, no tools")
    add("")
    add(S + B + "functions.get_weather:0" + A + '{"city": "Paris"}' + C + E)
    add("Let me check." + S + B + "functions.get_weather:0" + A +
        '{"city": "北京"}' + C + B + "functions.search:1" + A +
        '{"q": "x <y> z"}' + C + E)
    add(S + B + " functions.calc:7 " + A + "  {\"e\": \"1+1\"}\n" + C + E)
    add(S + B + "get_weather:3" + A + "{}" + C + E)
    add(S + B + "functions.a.b.c:12" + A + "[1,2]" + C + E)
    for i in range(40):
        n = rng.randint(1, 3)
        pre = rng.choice(["", "Sure. ", "我来查一下。", "text with | pipes "])
        body = ""
        for k in range(n):
            fn = rng.choice(["get_weather", "search", "calc", "x_y"])
            args = rng.choice(ARGS[:3] + ['{"s": "a}b{c"}',
                                          '{"multi":\n "line"}'])
            body += (B + rng.choice(["", " ", "\n"]) + "functions.%s:%d" %
                     (fn, rng.randint(0, 20)) + rng.choice(["", " "]) + A +
                     args + C)
        add(pre + S + body + E)
    # malformed sections: unterminated, missing argument marker, bad id,
    # section with no calls; the parser must not leak markers as calls
    add(S + B + "functions.f:0" + A + '{"a": 1}', False)
    add(S + B + "functions.f" + A + "{}" + C + E, False)
    add(S + B + "functions.f:0" + "{}" + C + E, False)
    add("before " + S + "garbage" + E, False)
    add(S + E, False)
    add("x" + S + B + "functions.f:0" + A + "{}" + C, False)
    return {"cases": cases}


# ---- the jinja2 subset on small templates ------------------------------------

SYNTAX = [
    "a\n{% if true %}\n  x\n{% endif %}\nb\n",
    "  {% if true %}x{% endif %}  \n  {%- if true %}y{% endif %}",
    "{%+ if true %}keep{% endif +%}\nnext",
    "{# comment #}\n  {#- c -#}  z",
    "{% for m in messages %}{{ loop.index }}/{{ loop.length }}{% if not loop.last %},{% endif %}{% endfor %}",
    "{% for m in messages %}{{ loop.index0 }}{{ loop.first }}{{ loop.revindex }}{% endfor %}",
    "{% set x = 1 %}{% for m in messages %}{% set x = x + 1 %}{{ x }}{% endfor %}|{{ x }}",
    "{% for m in messages if m.role == 'user' %}{{ m.role }}{{ loop.length }}{% else %}none{% endfor %}",
    "{% for m in [] %}x{% else %}empty{% endfor %}",
    "{% for k, v in {'a': 1, 'b': [2]}.items() %}{{ k }}={{ v }};{% endfor %}",
    "{{ messages | length }} {{ 'abc' | length }} {{ {'a': 1} | length }}",
    "{{ [1, 'a', none, true, 1.5, {'k': 'v'}] }}",
    "{{ [1, 'a', none, true, 1.5, {'k': 'v'}] | tojson }}",
    "{{ 'it\\'s' }} {{ [\"it's\"] }} {{ ['a\"b'] }} {{ ['\\n\\t\\\\'] }}",
    "{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2.5 * 2 }}",
    "{{ 'a' ~ 1 ~ none ~ true }} {{ 'x' + 'y' }}",
    "{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' != 'b' }} {{ 2 > 1 }} {{ 'b' >= 'a' }}",
    "{{ 'ell' in 'hello' }} {{ 2 in [1, 2] }} {{ 'a' in {'a': 1} }} {{ 'z' not in 'abc' }}",
    "{{ x is defined }} {{ x is undefined }} {{ none is none }} {{ 'a' is string }} {{ 1 is number }} {{ [] is iterable }} {{ {} is mapping }}",
    "{{ 1 is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ false is false }} {{ [] is sequence }}",
    "{{ x }}|{{ x | default('d') }}|{{ '' | default('d', true) }}|{{ none | string }}",
    "{{ '  pad  ' | trim }}|{{ 'MiX' | lower }}|{{ 'MiX' | upper }}|{{ [1, 2, 3] | join('-') }}|{{ [1, 2] | first }}{{ [1, 2] | last }}",
    "{{ '  s  '.strip() }}|{{ 'xxsxx'.strip('x') }}|{{ 'ab'.startswith('a') }}|{{ 'ab'.endswith('a') }}|{{ 'a,b'.split(',') }}",
    "{{ messages[0].get('role') }} {{ messages[0].get('nope') }} {{ messages[0].get('nope', 'dflt') }}",
    "{{ messages[-1]['role'] }} {{ messages[0].content }} {{ messages[0]['content'][0]['text'] }}",
    "{{ 'yes' if messages else 'no' }} {{ 'yes' if [] else 'no' }} {{ 'only' if false }}",
    "{{ none or 'b' }} {{ 'a' or 'b' }} {{ 'a' and 'b' }} {{ '' and 'b' }} {{ not none }}",
    "{{ range(3) | list }} {{ range(1, 7, 2) | join(',') }}",
    "{{ 123456789.0 }} {{ 1e16 }} {{ 1.5e-7 }} {{ 0.1 + 0.2 }} {{ -0.0 }} {{ 100.0 }}",
    "{{ {'z': 1, 'a': {'y': [true, false, none]}} | tojson }}",
    "{{ ['é', '中', 'a\\x01b', '\\x7f', '\\u2028', '\\u00a0'] }}",
    "{{ ['é', '中', 'a\\x01b', '\\x7f', '\\u2028'] | tojson }}",
    "{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% endif %}{{ sys }}",
    "{% for m in messages %}{% for c in m.content %}[{{ c.type }}]{% endfor %}{% endfor %}",
    "{{ raise_exception('boom') }}",
    "{{ messages[0].role.nope.deeper }}",
    "{{ 1 + 'a' }}",
    "x\n",
    "x\n\n",
    "{% if true %}\n{% endif %}\n",
    "{%- for m in messages -%}\n  <{{ m.role }}>\n{%- endfor -%}\n",
    "{{ tools | tojson if tools else 'no tools' }}",
    "{{ add_generation_prompt }} {{ bos_token }} {{ eos_token }}",
    "{% for t in tools %}{{ t.function.name }}:{{ t.function.description }}:{{ t.function.parameters | tojson }};{% endfor %}",
]

SYNTAX_MSGS = [{"role": "system", "content": "sys"},
               {"role": "user", "content": "hi"},
               {"role": "assistant", "content": "yo",
                "tool_calls": [{"id": "functions.f:0", "type": "function",
                                "function": {"name": "f",
                                             "arguments": "{\"a\": 1}"}}]},
               {"role": "user", "content": [{"type": "text", "text": "p1"},
                                            {"type": "text", "text": "p2"}]}]


def gen_syntax():
    env = hf_env()
    out = []
    for src in SYNTAX:
        tools = [{"type": "function", "function": {"name": "f"}}]
        try:
            text = render(env, src, SYNTAX_MSGS, tools, True)
            out.append({"source": src, "text": text})
        except Exception as e:  # noqa: BLE001
            out.append({"source": src, "error": type(e).__name__})
    return out
