"""A conformance audit of the gateway through the official openai SDK.

Usage: openai_conformance.py BASE MODEL MAX_MODEL_LEN.  BASE is the
server's root (http://127.0.0.1:PORT): /v1 serves without keys, /keyed/v1
wants the key "sk-conformance-0123456789".  The model is the tiny random
one, so the text is noise: each check is about a shape, a count, an order
or an error, as OpenAI's API reference or (where it is silent) vLLM's
OpenAI server has it.  Prints TAP lines for t/gateway-openai-conformance.t.
"""

import asyncio
import json
import sys
from typing import List, Literal

import httpx
import openai
from pydantic import BaseModel, Field

from tap import check, plan

base, model, max_model_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0,
                       timeout=120)
MSG = [{"role": "user", "content": "Tell me a story."}]


def chat(**kw):
    kw.setdefault("model", model)
    kw.setdefault("messages", MSG)
    return client.chat.completions.create(**kw)


def error_of(fn):
    """The openai exception fn raises, or None."""
    try:
        fn()
    except openai.APIError as e:
        return e
    return None


def claim_error(e, cls, status, param, what):
    check(isinstance(e, cls), "%s: %s" % (what, cls.__name__))
    check(e is not None and getattr(e, "status_code", None) == status,
          "%s: status %d" % (what, status))
    if param is not None:
        check(e is not None and isinstance(e.body, dict)
              and e.body.get("param") == param,
              "%s: param %s" % (what, param))
    # the SDK reads the nested error object into e.body; message and type
    # must be there whatever the status
    check(e is not None and isinstance(e.body, dict)
          and isinstance(e.body.get("message"), str)
          and isinstance(e.body.get("type"), str),
          "%s: error body has message and type" % what)


def stream_chunks(**kw):
    return list(chat(stream=True, **kw))


# ---- models -----------------------------------------------------------------

m = client.models.retrieve(model)
check(m.id == model and m.object == "model", "models.retrieve: the card")
check(isinstance(m.created, int) and isinstance(m.owned_by, str),
      "models.retrieve: created and owned_by")
check((m.model_extra or {}).get("max_model_len") == max_model_len,
      "models.retrieve: vLLM's max_model_len")
e = error_of(lambda: client.models.retrieve("no-such-model"))
claim_error(e, openai.NotFoundError, 404, None, "models.retrieve unknown")

# ---- n > 1 -------------------------------------------------------------------

r = chat(n=3, max_tokens=4, seed=5)
check([c.index for c in r.choices] == [0, 1, 2], "n=3: choices indexed 0..2")
check(all(c.finish_reason in ("stop", "length") for c in r.choices),
      "n=3: every choice has a finish_reason")
check(r.usage.completion_tokens <= 12 and r.usage.completion_tokens >= 3,
      "n=3: completion_tokens sums the choices")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
      "n=3: usage adds up")
check(r.object == "chat.completion" and r.id.startswith("chatcmpl-"),
      "chat: object and id prefix")
check(r.choices[0].message.role == "assistant", "chat: role assistant")

chunks = stream_chunks(n=3, max_tokens=4, seed=5,
                       stream_options={"include_usage": True})
ids = {c.id for c in chunks}
check(len(ids) == 1, "n=3 streamed: one id on every chunk")
check(all(c.object == "chat.completion.chunk" for c in chunks),
      "n=3 streamed: object chat.completion.chunk")
texts, finishes, roles = {}, {}, {}
for c in chunks:
    for ch in c.choices:
        texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
        if ch.delta.role:
            roles[ch.index] = roles.get(ch.index, 0) + 1
        if ch.finish_reason:
            finishes[ch.index] = finishes.get(ch.index, []) + [ch.finish_reason]
check(sorted(texts) == [0, 1, 2], "n=3 streamed: indexes 0..2")
check(roles == {0: 1, 1: 1, 2: 1}, "n=3 streamed: one role delta per choice")
check(all(len(v) == 1 for v in finishes.values()) and len(finishes) == 3,
      "n=3 streamed: one finish_reason per choice")
check([texts[i] for i in range(3)]
      == [c.message.content for c in r.choices],
      "n=3 streamed with a seed: the same texts as not streamed")
usage_chunks = [c for c in chunks if c.usage is not None]
check(len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
      and usage_chunks[0].choices == [],
      "n=3 streamed: one usage chunk, last, with no choices")
check(usage_chunks and usage_chunks[0].usage.completion_tokens
      == r.usage.completion_tokens,
      "n=3 streamed: usage the same as not streamed")

# ---- seed ---------------------------------------------------------------------

a = chat(max_tokens=8, seed=1234, temperature=1.0)
b = chat(max_tokens=8, seed=1234, temperature=1.0)
check(a.choices[0].message.content == b.choices[0].message.content,
      "seed: the same seed gives the same text")
c1 = chat(n=2, max_tokens=8, seed=1234)
check(c1.choices[0].message.content == a.choices[0].message.content,
      "seed: choice 0 of n=2 equals the n=1 answer")
g1 = chat(max_tokens=8, temperature=0)
g2 = chat(max_tokens=8, temperature=0, seed=99)
check(g1.choices[0].message.content == g2.choices[0].message.content,
      "temperature 0 is greedy whatever the seed")

# ---- max_tokens / max_completion_tokens ---------------------------------------

r = chat(max_tokens=5, seed=3)
check(r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length",
      "max_tokens=5: 5 tokens, finish_reason length")
r = chat(max_completion_tokens=3, seed=3)
check(r.usage.completion_tokens == 3, "max_completion_tokens=3: 3 tokens")
r = chat(max_completion_tokens=2, max_tokens=6, seed=3)
check(r.usage.completion_tokens == 2,
      "max_completion_tokens wins over max_tokens")
e = error_of(lambda: chat(max_tokens=max_model_len + 1))
claim_error(e, openai.BadRequestError, 400, None, "max_tokens over the context")
check(e is not None and "maximum context length" in e.message,
      "max_tokens over the context: says maximum context length")
e = error_of(lambda: chat(max_tokens=0))
claim_error(e, openai.BadRequestError, 400, "max_tokens", "max_tokens=0")
e = error_of(lambda: chat(max_completion_tokens=-1))
claim_error(e, openai.BadRequestError, 400, "max_completion_tokens",
            "max_completion_tokens=-1")

# ---- stop strings --------------------------------------------------------------

ref = chat(max_tokens=12, seed=7).choices[0].message.content
# a stop string from inside the text the seed gives: the answer stops there
cut = len(ref) // 2
stop = ref[cut:cut + 2] if len(ref) > 3 else ref[-1:]
r = chat(max_tokens=12, seed=7, stop=[stop, "\x00never"])
txt = r.choices[0].message.content
check(r.choices[0].finish_reason == "stop", "stop: finish_reason stop")
check(stop not in txt and ref.startswith(txt),
      "stop: the text ends before the stop string, which is not included")
check((r.choices[0].model_extra or {}).get("stop_reason") == stop,
      "stop: vLLM's stop_reason names the string")
r = chat(max_tokens=12, seed=7, stop=stop, stream=True)
stxt, sfin = "", None
for c in r:
    for ch in c.choices:
        stxt += ch.delta.content or ""
        sfin = ch.finish_reason or sfin
check(stxt == txt and sfin == "stop", "stop streamed: the same text and stop")
r = chat(max_tokens=3, seed=7, stop=["\x01nope"])
check(r.choices[0].finish_reason == "length"
      and "stop_reason" in (r.choices[0].model_extra or {})
      and r.choices[0].model_extra["stop_reason"] is None,
      "no stop hit: finish_reason length, stop_reason null (vLLM has it)")
# a stop token first: an empty answer is "" (not a missing key); vLLM's
# stop_reason is the id for generation_config's <|im_end|> and for
# stop_token_ids, null for the tokenizer's own eos
im_end, eos = client.post("/../tokenize", cast_to=object, body={
    "model": model, "prompt": "<|im_end|>[EOS]"})["tokens"]
r = chat(max_tokens=3, logit_bias={str(im_end): 100})
check(r.choices[0].message.content == "", "an empty answer: content \"\"")
check(r.choices[0].finish_reason == "stop"
      and r.choices[0].model_extra.get("stop_reason") == im_end,
      "ended by <|im_end|>: stop_reason is its id, as vLLM")
r = chat(max_tokens=3, logit_bias={str(eos): 100})
check(r.choices[0].finish_reason == "stop"
      and "stop_reason" in r.choices[0].model_extra
      and r.choices[0].model_extra["stop_reason"] is None,
      "ended by the tokenizer's eos: stop_reason null, as vLLM")

# vLLM's stop_reason rides on the streamed finish chunk too, with the value
# the answer not streamed has: the same request at temperature 0 (or with a
# seed) both ways


def finishes(create, **kw):
    """{index: (finish_reason, stop_reason)} of an answer and of its stream,
    and whether every streamed finish chunk had the stop_reason key."""
    r = create(**kw)
    whole = {c.index: (c.finish_reason, (c.model_extra or {}).get(
        "stop_reason", "absent")) for c in r.choices}
    streamed, keyed = {}, True
    for c in create(stream=True, **kw):
        for ch in c.choices:
            if ch.finish_reason:
                extra = ch.model_extra or {}
                keyed = keyed and "stop_reason" in extra
                streamed[ch.index] = (ch.finish_reason,
                                      extra.get("stop_reason", "absent"))
    return whole, streamed, keyed


def claim_finishes(create, what, want, **kw):
    whole, streamed, keyed = finishes(create, **kw)
    check(keyed and streamed == whole,
          "%s streamed: stop_reason on the finish chunk, as not streamed"
          % what)
    if want is not None:
        check(all(v == want for v in whole.values()),
              "%s: finish_reason and stop_reason %r" % (what, want))


def token_of(text):
    return client.post("/../tokenize", cast_to=object, body={
        "model": model, "prompt": text})["tokens"][0]


quote, backslash = token_of('"'), token_of("\\")
claim_finishes(chat, "a stop string after some text", ("stop", stop),
               max_tokens=12, seed=7, stop=[stop, "\x00never"])
claim_finishes(chat, "a stop string with a quote", ("stop", '"'),
               max_tokens=4, temperature=0, logit_bias={str(quote): 100},
               stop=['"', "\x01never"])
claim_finishes(chat, "n=2, a stop string with a quote", ("stop", '"'),
               n=2, max_tokens=4, seed=3, logit_bias={str(quote): 100},
               stop='"')
claim_finishes(chat, "ended by <|im_end|>", ("stop", im_end), max_tokens=3,
               temperature=0, logit_bias={str(im_end): 100})
claim_finishes(chat, "ended by <|im_end|> with logprobs", ("stop", im_end),
               max_tokens=3, temperature=0, logprobs=True,
               logit_bias={str(im_end): 100})
claim_finishes(chat, "ended by the tokenizer's eos", ("stop", None),
               max_tokens=3, temperature=0, logit_bias={str(eos): 100})
claim_finishes(chat, "cut by max_tokens", ("length", None), max_tokens=3,
               temperature=0, stop=["\x01nope"])
claim_finishes(client.completions.create,
               "completions, a stop string with a backslash", ("stop", "\\"),
               model=model, prompt="Once", max_tokens=4, temperature=0,
               logit_bias={str(backslash): 100}, stop=["\\"])
claim_finishes(client.completions.create,
               "completions with logprobs, a stop string", ("stop", "\\"),
               model=model, prompt="Once", max_tokens=4, temperature=0,
               logprobs=1, logit_bias={str(backslash): 100}, stop="\\")
claim_finishes(client.completions.create, "completions ended by a stop id",
               ("stop", im_end), model=model, prompt="Once", max_tokens=3,
               temperature=0, logit_bias={str(im_end): 100},
               extra_body={"stop_token_ids": [im_end]})
claim_finishes(client.completions.create, "completions cut by max_tokens",
               ("length", None), model=model, prompt="Once", max_tokens=2,
               temperature=0)

e = error_of(lambda: chat(stop=["a", "b", "c", "d", "e"] * 20, max_tokens=1))
check(e is None or isinstance(e, openai.BadRequestError),
      "many stop strings: served, or a 400")

# ---- logprobs ----------------------------------------------------------------

r = chat(max_tokens=4, seed=2, logprobs=True, top_logprobs=3)
lp = r.choices[0].logprobs
check(lp is not None and len(lp.content) == r.usage.completion_tokens,
      "logprobs: one entry per completion token")
check(all(len(t.top_logprobs) == 3 for t in lp.content),
      "logprobs: top_logprobs=3 gives 3 alternatives")
check(all(t.bytes == list(t.token.encode("utf-8")) for t in lp.content
          if "\ufffd" not in t.token),
      "logprobs: bytes are the token's UTF-8")
check(all(t.logprob <= 0 for t in lp.content)
      and all(a.logprob >= b.logprob for t in lp.content
              for a, b in zip(t.top_logprobs, t.top_logprobs[1:])),
      "logprobs: logprobs <= 0 and alternatives in descending order")
check("".join(t.token for t in lp.content) == r.choices[0].message.content,
      "logprobs: tokens spell the content")
check(all(isinstance(x.bytes, list) for t in lp.content
          for x in t.top_logprobs),
      "logprobs: alternatives carry bytes")
r = chat(max_tokens=3, seed=2, logprobs=True)
check(r.choices[0].logprobs is not None
      and all(t.top_logprobs == [] for t in r.choices[0].logprobs.content),
      "logprobs without top_logprobs: empty top_logprobs lists")
r = chat(max_tokens=3, seed=2)
check(r.choices[0].logprobs is None, "no logprobs asked: logprobs null")
ch = stream_chunks(max_tokens=4, seed=2, logprobs=True, top_logprobs=2)
slp = [t for c in ch for x in c.choices if x.logprobs and x.logprobs.content
       for t in x.logprobs.content]
check(len(slp) == 4 and [t.token for t in slp] == [t.token for t in
      chat(max_tokens=4, seed=2, logprobs=True).choices[0].logprobs.content],
      "logprobs streamed: the same tokens as not streamed")
e = error_of(lambda: chat(max_tokens=1, top_logprobs=2))
claim_error(e, openai.BadRequestError, 400, "top_logprobs",
            "top_logprobs without logprobs")
e = error_of(lambda: chat(max_tokens=1, logprobs=True, top_logprobs=21))
claim_error(e, openai.BadRequestError, 400, "top_logprobs", "top_logprobs=21")

# ---- penalties and logit_bias ----------------------------------------------------

r = chat(max_tokens=6, seed=4, presence_penalty=1.5, frequency_penalty=1.0)
check(r.usage.completion_tokens == 6, "penalties accepted")
e = error_of(lambda: chat(max_tokens=1, presence_penalty=3))
claim_error(e, openai.BadRequestError, 400, "presence_penalty",
            "presence_penalty=3")
e = error_of(lambda: chat(max_tokens=1, frequency_penalty=-2.5))
claim_error(e, openai.BadRequestError, 400, "frequency_penalty",
            "frequency_penalty=-2.5")
tok = client.post("/../tokenize", cast_to=object,
                  body={"model": model, "prompt": " banana"})["tokens"][0]
r = chat(max_tokens=4, seed=4, logit_bias={str(tok): 100})
check(r.choices[0].message.content == " banana" * 4,
      "logit_bias +100: only that token")
g = chat(max_tokens=3, temperature=0, logprobs=True)
first = g.choices[0].logprobs.content[0].token
ban = client.post("/../tokenize", cast_to=object,
                  body={"model": model, "prompt": first})["tokens"]
r = chat(max_tokens=3, temperature=0, logit_bias={str(ban[0]): -100})
check(not r.choices[0].message.content.startswith(first),
      "logit_bias -100: the greedy first token is gone")
e = error_of(lambda: chat(max_tokens=1, logit_bias={"x": 1}))
claim_error(e, openai.BadRequestError, 400, "logit_bias",
            "logit_bias with a non-id key")
e = error_of(lambda: chat(max_tokens=1, logit_bias={str(tok): 101}))
claim_error(e, openai.BadRequestError, 400, "logit_bias", "logit_bias 101")

# ---- response_format --------------------------------------------------------------

r = chat(max_tokens=60, seed=1,
         response_format={"type": "json_object"})
txt = r.choices[0].message.content
try:
    ok = r.choices[0].finish_reason != "stop" or isinstance(json.loads(txt),
                                                            dict)
except ValueError:
    ok = False
check(ok and txt.lstrip().startswith("{"),
      "json_object: the answer is (a prefix of) a JSON object")


class Step(BaseModel):
    explanation: str
    output: int


class Solution(BaseModel):
    steps: List[Step]
    final_answer: bool


parsed = None
for seed in range(5):
    p = client.chat.completions.parse(model=model, messages=MSG, seed=seed,
                                      max_tokens=200,
                                      response_format=Solution)
    if p.choices[0].finish_reason == "stop":
        parsed = p
        break
check(parsed is not None, "parse(): an answer that ends within 200 tokens")
check(parsed is not None
      and isinstance(parsed.choices[0].message.parsed, Solution),
      "parse(): message.parsed is the pydantic model")
check(parsed is not None and parsed.choices[0].message.refusal is None,
      "parse(): refusal is None")
e = error_of(lambda: chat(max_tokens=1, response_format={
    "type": "json_schema", "json_schema": {"name": "x"}}))
claim_error(e, openai.BadRequestError, 400, None, "json_schema without schema")
e = error_of(lambda: chat(max_tokens=1, response_format={"type": "yaml"}))
claim_error(e, openai.BadRequestError, 400, None, "response_format yaml")

# ---- tools --------------------------------------------------------------------


class GetWeather(BaseModel):
    # small values, so that the random model's calls end
    city: Literal["Paris", "Rome"]
    days: int = Field(ge=1, le=9)


weather = openai.pydantic_function_tool(GetWeather, name="get_weather")
clock = {"type": "function", "function": {
    "name": "get_time", "description": "the time",
    "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "enum": ["utc", "cet"]}},
        "required": ["zone"]}}}
TOOLS = [weather, clock]

r = chat(max_tokens=20, seed=1, tools=TOOLS, tool_choice="auto")
m = r.choices[0].message
check(r.choices[0].finish_reason in ("stop", "length", "tool_calls"),
      "tools auto: a finish_reason")
check(m.tool_calls is None or isinstance(m.tool_calls, list),
      "tools auto: tool_calls absent or a list")
r = chat(max_tokens=20, seed=1, tools=TOOLS, tool_choice="none")
check(not r.choices[0].message.tool_calls, "tool_choice none: no calls")

r = chat(max_tokens=200, seed=1, tools=TOOLS,
         tool_choice={"type": "function", "function": {"name": "get_time"}})
m = r.choices[0].message
check(m.tool_calls and len(m.tool_calls) == 1
      and m.tool_calls[0].function.name == "get_time",
      "named tool_choice: one call of that function")
check(m.tool_calls and m.tool_calls[0].type == "function"
      and isinstance(m.tool_calls[0].id, str) and m.tool_calls[0].id,
      "named tool_choice: call has type and id")
args = json.loads(m.tool_calls[0].function.arguments) if m.tool_calls else {}
check(args.get("zone") in ("utc", "cet"),
      "named tool_choice: arguments fit the parameters")
check(r.choices[0].finish_reason == "stop",
      "named tool_choice: finish_reason stop, as vLLM")

r = chat(max_tokens=400, seed=2, tools=TOOLS, tool_choice="required")
m = r.choices[0].message
check(m.tool_calls and len(m.tool_calls) >= 1
      and all(t.function.name in ("get_weather", "get_time")
              for t in m.tool_calls),
      "tool_choice required: at least one call of a listed tool")
check(r.choices[0].finish_reason in ("tool_calls", "length"),
      "tool_choice required: finish_reason tool_calls")

r = chat(max_tokens=400, seed=2, tools=TOOLS, tool_choice="required",
         parallel_tool_calls=False)
m = r.choices[0].message
check(m.tool_calls and len(m.tool_calls) == 1,
      "parallel_tool_calls false: exactly one call")

whole, streamed, keyed = finishes(chat, max_tokens=400, seed=2, tools=TOOLS,
                                  tool_choice="required")
check(keyed and streamed == whole
      and whole[0][0] in ("tool_calls", "length"),
      "tool_calls streamed: stop_reason on the finish chunk, as not streamed")

e = error_of(lambda: chat(max_tokens=1, tools=TOOLS, tool_choice={
    "type": "function", "function": {"name": "nope"}}))
claim_error(e, openai.BadRequestError, 400, None, "named tool not in tools")
e = error_of(lambda: chat(max_tokens=1, tool_choice="required"))
claim_error(e, openai.BadRequestError, 400, None, "tool_choice without tools")

# the stream helper: events and the final completion, a strict tool
with client.chat.completions.stream(
        model=model, messages=MSG, max_tokens=200, seed=3, tools=[weather],
        tool_choice={"type": "function",
                     "function": {"name": "get_weather"}}) as s:
    kinds = []
    for ev in s:
        kinds.append(ev.type)
    final = s.get_final_completion()
fm = final.choices[0].message
check("chunk" in kinds, "stream helper: chunk events")
check("tool_calls.function.arguments.delta" in kinds
      and "tool_calls.function.arguments.done" in kinds,
      "stream helper: tool call argument delta and done events")
check(fm.tool_calls and fm.tool_calls[0].function.name == "get_weather",
      "stream helper: the final completion has the call")
check(fm.tool_calls and isinstance(fm.tool_calls[0].function.parsed_arguments,
                                   GetWeather),
      "stream helper: strict tool arguments parsed into the model")
check(final.choices[0].finish_reason == "stop",
      "stream helper: named tool finish_reason stop")

# get_final_completion() raises on finish_reason "length": a stop string
# from the seed's own text ends the answer first
ref = chat(max_tokens=8, seed=3).choices[0].message.content
stop = ref[-1]
with client.chat.completions.stream(model=model, messages=MSG, max_tokens=8,
                                    seed=3, logprobs=True, stop=stop) as s:
    kinds = [ev.type for ev in s]
    final = s.get_final_completion()
check(kinds.count("content.done") == 1 and "content.delta" in kinds,
      "stream helper: content delta and done events")
check("logprobs.content.delta" in kinds and "logprobs.content.done" in kinds,
      "stream helper: logprobs events")
check(final.choices[0].message.content == ref[:ref.index(stop)],
      "stream helper: final content is the text before the stop string")

final = None
for seed in range(5):
    with client.chat.completions.stream(model=model, messages=MSG,
                                        max_tokens=200, seed=seed,
                                        response_format=Solution) as s:
        for ev in s:
            pass
        try:
            final = s.get_final_completion()
            break
        except openai.LengthFinishReasonError:
            pass
check(final is not None
      and isinstance(final.choices[0].message.parsed, Solution),
      "stream helper with response_format: the answer parsed")

# ---- stream_options ----------------------------------------------------------------

ch = stream_chunks(max_tokens=3, seed=1)
check(all(c.usage is None for c in ch), "no stream_options: no usage")
ch = stream_chunks(max_tokens=3, seed=1, stream_options={
    "include_usage": True, "continuous_usage_stats": True})
check(all(c.usage is not None for c in ch),
      "continuous_usage_stats: usage on every chunk")
check([c.usage.completion_tokens for c in ch if c.choices][-1] == 3
      and ch[-1].usage.completion_tokens == 3,
      "continuous_usage_stats: counts grow to the total")
e = error_of(lambda: chat(max_tokens=1,
                          stream_options={"include_usage": True}))
claim_error(e, openai.BadRequestError, 400, "stream_options",
            "stream_options without stream")

# ---- user / metadata / store -------------------------------------------------------

r = chat(max_tokens=1, user="user-42")
check(r.choices, "user is accepted and ignored")
r = chat(max_tokens=1, metadata={"k": "v"}, store=False)
check(r.choices, "metadata and store are accepted and ignored, as vLLM")
r = chat(max_tokens=1, service_tier="auto")
check(r.choices, "service_tier accepted")

# ---- completions ----------------------------------------------------------------

r = client.completions.create(model=model, prompt="Once upon", max_tokens=3,
                              echo=True, seed=1)
check(r.object == "text_completion" and r.id.startswith("cmpl-"),
      "completions: object and id")
check(r.choices[0].text.startswith("Once upon"), "echo: text opens with prompt")
r = client.completions.create(model=model, prompt="Once upon", max_tokens=3,
                              echo=True, logprobs=2, seed=1)
lp = r.choices[0].logprobs
check(lp.token_logprobs[0] is None and lp.top_logprobs[0] is None,
      "echo+logprobs: the first prompt token has no logprob")
check(len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
      == len(lp.text_offset), "completions logprobs: parallel lists")
check("".join(lp.tokens) == r.choices[0].text,
      "completions logprobs: tokens spell the text")
check(lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset),
      "completions logprobs: text_offset grows from 0")
check(all(len(t) <= 3 for t in lp.top_logprobs[1:]),
      "completions logprobs=2: at most 3 entries (chosen + 2)")
raw = client.completions.with_raw_response.create(
    model=model, prompt="Once upon", max_tokens=3, logprobs=1, seed=1)
body = raw.text
check("0000000" not in body and "9999999" not in body,
      "completions logprobs: numbers without binary float noise")
e = error_of(lambda: client.completions.create(
    model=model, prompt="Once", suffix="end", max_tokens=2))
claim_error(e, openai.BadRequestError, 400, "suffix", "suffix (vLLM refuses)")
e = error_of(lambda: client.completions.create(
    model=model, prompt="Once", best_of=2, max_tokens=2))
claim_error(e, openai.BadRequestError, 400, "best_of", "best_of=2")
r = client.completions.create(model=model, prompt="Once", best_of=1,
                              max_tokens=2)
check(len(r.choices) == 1, "best_of=1 is accepted")
ids = client.post("/../tokenize", cast_to=object,
                  body={"model": model, "prompt": "Once upon a time"})["tokens"]
r1 = client.completions.create(model=model, prompt=ids, max_tokens=3, seed=9)
r2 = client.completions.create(model=model, prompt="Once upon a time",
                               max_tokens=3, seed=9)
check(r1.choices[0].text == r2.choices[0].text
      and r1.usage.prompt_tokens == len(ids),
      "prompt as token ids: the same as the text")
r = client.completions.create(model=model, prompt=["a", "b c", ids],
                              max_tokens=2, n=2, seed=1)
check([c.index for c in r.choices] == list(range(6)),
      "a list of 3 prompts with n=2: choices 0..5")
check(r.usage.completion_tokens == 12, "a list of prompts: usage sums")
s = client.completions.create(model=model, prompt=["a", "b c"], max_tokens=2,
                              stream=True, stream_options={
                                  "include_usage": True})
idx = set()
last = None
for c in s:
    idx |= {x.index for x in c.choices}
    last = c
check(idx == {0, 1} and last.usage and last.usage.completion_tokens == 4,
      "a list of prompts streamed: indexes and usage")
r = client.completions.create(model=model, prompt="Once", max_tokens=2,
                              stop=["\x00"], logit_bias={str(tok): 100})
check(r.choices[0].text == " banana" * 2, "completions: logit_bias")
r = client.completions.create(model=model, prompt="Once", max_tokens=3,
                              logit_bias={str(tok): 100},
                              extra_body={"stop_token_ids": [tok]})
check(r.choices[0].text == "" and r.choices[0].finish_reason == "stop",
      "completions ended by a stop id first: text \"\", finish stop")
check(r.choices[0].model_extra.get("stop_reason") == tok,
      "completions: stop_reason is the stop id, as vLLM")
e = error_of(lambda: client.completions.create(
    model=model, prompt="x", max_tokens=1, logprobs=21))
claim_error(e, openai.BadRequestError, 400, "logprobs", "completions logprobs=21")
e = error_of(lambda: client.completions.create(
    model=model, prompt=[], max_tokens=1))
claim_error(e, openai.BadRequestError, 400, "prompt", "an empty prompt list")

# ---- errors ----------------------------------------------------------------------

e = error_of(lambda: chat(model="gpt-nope", max_tokens=1))
claim_error(e, openai.NotFoundError, 404, None, "unknown model")
check(e is not None and "gpt-nope" in e.message,
      "unknown model: the message names it")
long_prompt = "hello " * (max_model_len + 10)
e = error_of(lambda: chat(messages=[{"role": "user", "content": long_prompt}],
                          max_tokens=1))
check(isinstance(e, openai.BadRequestError) and e.status_code == 400,
      "a prompt over max_model_len: BadRequestError 400")
check(e is not None and "maximum context length" in e.message,
      "a prompt over max_model_len: says maximum context length")
e = error_of(lambda: client.completions.create(model=model,
                                               prompt=long_prompt, max_tokens=1))
check(isinstance(e, openai.BadRequestError),
      "completions over max_model_len: BadRequestError")
big = "x" * (2 * 1024 * 1024)
e = error_of(lambda: chat(messages=[{"role": "user", "content": big}],
                          max_tokens=1))
check(isinstance(e, openai.APIStatusError) and e.status_code == 413,
      "a body over client_max_body_size: 413")
check(e is not None and isinstance(e.body, dict) and "message" in e.body,
      "413: an OpenAI error body")
e = error_of(lambda: chat(max_tokens=1, temperature=-1))
claim_error(e, openai.BadRequestError, 400, "temperature", "temperature=-1")
e = error_of(lambda: chat(max_tokens=1, n=0))
claim_error(e, openai.BadRequestError, 400, "n", "n=0")
e = error_of(lambda: chat(max_tokens=1, messages=[]))
claim_error(e, openai.BadRequestError, 400, "messages", "empty messages")
e = error_of(lambda: chat(max_tokens=1, top_p=1.5))
claim_error(e, openai.BadRequestError, 400, "top_p", "top_p=1.5")
e = error_of(lambda: chat(max_tokens=1, seed="x"))
claim_error(e, openai.BadRequestError, 400, "seed", "seed a string")
e = error_of(lambda: chat(max_tokens=1, messages=[{"role": "wizard",
                                                    "content": "x"}]))
claim_error(e, openai.BadRequestError, 400, None, "unknown role")

keyed = openai.OpenAI(base_url=base + "/keyed/v1", api_key="sk-wrong",
                      max_retries=0)
e = error_of(lambda: keyed.chat.completions.create(
    model=model, messages=MSG, max_tokens=1))
claim_error(e, openai.AuthenticationError, 401, None, "a wrong api key")
keyed = openai.OpenAI(base_url=base + "/keyed/v1",
                      api_key="sk-conformance-0123456789", max_retries=0)
r = keyed.chat.completions.create(model=model, messages=MSG, max_tokens=1)
check(r.usage.completion_tokens == 1, "the right api key is served")
check([x.id for x in keyed.models.list().data] == [model],
      "models.list with the key")

# ---- raw responses and request ids ----------------------------------------------

raw = client.chat.completions.with_raw_response.create(
    model=model, messages=MSG, max_tokens=1)
check(raw.status_code == 200
      and raw.headers.get("content-type", "").startswith("application/json"),
      "with_raw_response: 200 application/json")
check(raw.headers.get("x-request-id"), "with_raw_response: x-request-id header")
r = raw.parse()
check(r._request_id and r.id.endswith(r._request_id) is not None,
      "parsed completion: _request_id is set")
raw = client.chat.completions.with_raw_response.create(
    model=model, messages=MSG, max_tokens=1,
    extra_headers={"X-Request-Id": "conformance-1"})
check(raw.headers.get("x-request-id") == "conformance-1",
      "the client's X-Request-Id comes back")
check(raw.parse().id == "chatcmpl-conformance-1",
      "the client's X-Request-Id names the completion, as vLLM")
e = error_of(lambda: chat(model="gpt-nope", max_tokens=1))
check(e is not None and e.request_id, "an error carries x-request-id too")
with client.chat.completions.with_streaming_response.create(
        model=model, messages=MSG, max_tokens=2, stream=True) as raw:
    check(raw.headers.get("content-type", "").startswith("text/event-stream"),
          "streaming: text/event-stream")
    check(raw.headers.get("x-request-id"), "streaming: x-request-id header")
    n_lines = sum(1 for _ in raw.iter_lines())
check(n_lines > 0, "streaming response read through")

# ---- the async client -----------------------------------------------------------


async def concurrent():
    aclient = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused",
                                 max_retries=0, timeout=120)
    jobs = [aclient.chat.completions.create(model=model, messages=MSG,
                                            max_tokens=4, seed=i)
            for i in range(6)]

    async def streamed(i):
        s = await aclient.chat.completions.create(
            model=model, messages=MSG, max_tokens=4, seed=i, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in s
                        if c.choices])

    outs = await asyncio.gather(*jobs, *[streamed(i) for i in range(6)])
    bad = None
    try:
        await aclient.chat.completions.create(model="nope", messages=MSG)
    except openai.NotFoundError as x:
        bad = x
    await aclient.close()
    return outs, bad


outs, bad = asyncio.run(concurrent())
check(all(o.usage.completion_tokens == 4 for o in outs[:6]),
      "async: 6 concurrent completions served")
check([o.choices[0].message.content for o in outs[:6]] == outs[6:],
      "async: 6 concurrent streams equal their seeded twins")
check(len({o.id for o in outs[:6]}) == 6, "async: distinct ids")
check(bad is not None, "async: NotFoundError for an unknown model")

# ---- SSE framing, byte for byte -----------------------------------------------------

with httpx.Client(timeout=60) as h:
    with h.stream("POST", base + "/v1/chat/completions", json={
            "model": model, "messages": MSG, "max_tokens": 3, "seed": 1,
            "stream": True, "stream_options": {"include_usage": True}}) as hr:
        raw_bytes = b"".join(hr.iter_raw())
        ctype = hr.headers.get("content-type", "")
check(ctype.startswith("text/event-stream"), "httpx: text/event-stream")
events = raw_bytes.split(b"\n\n")
check(events[-1] == b"", "httpx: the body ends with a blank line")
events = events[:-1]
check(all(e.startswith(b"data: ") and b"\n" not in e for e in events),
      "httpx: every event is one data: line")
check(events[-1] == b"data: [DONE]", "httpx: the last event is data: [DONE]")
check(b"\r" not in raw_bytes, "httpx: LF line ends, no CR")
js = [json.loads(e[6:]) for e in events[:-1]]
check(js[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""},
      "httpx: the first delta is role assistant with empty content")
check(js[-1]["choices"] == [] and "usage" in js[-1],
      "httpx: the usage chunk comes last, before [DONE]")
check(all(set(("id", "object", "created", "model", "choices")) <= set(j)
          for j in js), "httpx: every chunk has id/object/created/model")
check(all("finish_reason" in c and "index" in c for j in js
          for c in j["choices"]), "httpx: every choice has index, finish_reason")

plan()
