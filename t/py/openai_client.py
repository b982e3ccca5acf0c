"""The official openai client against the gateway, unchanged.

Usage: openai_client.py BASE_URL.  Prints TAP lines ("ok N - claim") for
t/gateway-openai.t to relay; exits non-zero on an unexpected exception.
"""

import sys

import openai

from tap import check, plan

base = sys.argv[1]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)

models = client.models.list()
check([m.id for m in models.data] == ["kimi-test"], "models.list sees kimi-test")

r = client.chat.completions.create(
    model="kimi-test", messages=[{"role": "user", "content": "Hello"}])
check(r.choices[0].message.content == "Hi there!", "non-streaming content")
check(r.choices[0].finish_reason == "stop", "non-streaming finish_reason")
check(r.usage.total_tokens == r.usage.prompt_tokens
      + r.usage.completion_tokens, "non-streaming usage adds up")

stream = client.chat.completions.create(
    model="kimi-test", messages=[{"role": "user", "content": "Hello"}],
    stream=True, stream_options={"include_usage": True})
text, finish, usage = "", None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
check(text == "Hi there!", "streaming content")
check(finish == "stop", "streaming finish_reason")
check(usage is not None and usage.completion_tokens > 0, "streaming usage")

tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "weather of a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string"}}}}}]
r = client.chat.completions.create(
    model="kimi-test", tools=tools,
    messages=[{"role": "user", "content": "weather in Paris?"}])
calls = r.choices[0].message.tool_calls or []
check(len(calls) == 1 and calls[0].function.name == "get_weather",
      "non-streaming tool call")
check(calls and calls[0].id == "functions.get_weather:0", "tool call id kept")
check(calls and calls[0].function.arguments == '{"city": "Paris"}',
      "tool call arguments")
check(r.choices[0].finish_reason == "tool_calls", "finish_reason tool_calls")

stream = client.chat.completions.create(
    model="kimi-test", tools=tools, stream=True,
    messages=[{"role": "user", "content": "weather in Paris?"}])
acc = {}
finish = None
for chunk in stream:
    for c in chunk.choices:
        finish = c.finish_reason or finish
        for tc in c.delta.tool_calls or []:
            e = acc.setdefault(tc.index, {"id": None, "name": "", "args": ""})
            if tc.id:
                e["id"] = tc.id
            if tc.function and tc.function.name:
                e["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                e["args"] += tc.function.arguments
check(acc.get(0, {}).get("name") == "get_weather", "streaming tool call name")
check(acc.get(0, {}).get("args") == '{"city": "Paris"}',
      "streaming tool call arguments")
check(finish == "tool_calls", "streaming finish_reason tool_calls")

# the tool result goes back with the id unchanged and is accepted
r = client.chat.completions.create(model="kimi-test", tools=tools, messages=[
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "functions.get_weather:0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "functions.get_weather:0",
     "content": "sunny"}])
check(r.choices[0].message.content is not None, "tool result turn accepted")

# n choices: a list of them, indexed, in one response or one stream
r = client.chat.completions.create(
    model="kimi-test", n=2, messages=[{"role": "user", "content": "Hello"}])
check([c.index for c in r.choices] == [0, 1]
      and all(c.message.content == "Hi there!" for c in r.choices),
      "n=2: two choices")
stream = client.chat.completions.create(
    model="kimi-test", n=2, stream=True, tools=tools,
    messages=[{"role": "user", "content": "weather in Paris?"}])
per = {}
for chunk in stream:
    for c in chunk.choices:
        e = per.setdefault(c.index, {"args": "", "finish": None})
        e["finish"] = c.finish_reason or e["finish"]
        for tc in c.delta.tool_calls or []:
            if tc.function and tc.function.arguments:
                e["args"] += tc.function.arguments
check(sorted(per) == [0, 1]
      and all(e["args"] == '{"city": "Paris"}' and e["finish"] == "tool_calls"
              for e in per.values()),
      "n=2 streaming: each choice's tool call and finish_reason")

r = client.completions.create(model="kimi-test", prompt="Hello", max_tokens=2)
check(r.choices[0].finish_reason == "length", "completions with max_tokens")

try:
    client.chat.completions.create(
        model="nope", messages=[{"role": "user", "content": "x"}])
    check(False, "unknown model raises NotFoundError")
except openai.NotFoundError as e:
    check("does not exist" in str(e), "unknown model raises NotFoundError")

try:
    client.chat.completions.create(model="kimi-test", messages=[])
    check(False, "empty messages raises BadRequestError")
except openai.BadRequestError:
    check(True, "empty messages raises BadRequestError")

# the Responses API, non-streaming (streaming is a 400 there)
if hasattr(client, "responses"):
    r = client.responses.create(model="kimi-test", input="Hello",
                                instructions="Be brief.")
    check(r.output_text == "Hi there!" and r.status == "completed",
          "responses.create: output_text and status")
    check(r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens,
          "responses.create: usage adds up")
    r = client.responses.create(
        model="kimi-test", input="What is the weather in Paris?",
        tools=[{"type": "function", "name": "get_weather",
                "parameters": {"type": "object",
                               "properties": {"city": {"type": "string"}}}}])
    fc = [o for o in r.output if o.type == "function_call"]
    check(len(fc) == 1 and fc[0].name == "get_weather"
          and fc[0].arguments == '{"city": "Paris"}',
          "responses.create: a function_call item")
    r = client.responses.create(
        model="kimi-test",
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": fc[0].call_id,
                "name": "get_weather", "arguments": fc[0].arguments},
               {"type": "function_call_output", "call_id": fc[0].call_id,
                "output": "sunny"}],
        tools=[{"type": "function", "name": "get_weather",
                "parameters": {"type": "object", "properties": {}}}])
    check(r.output_text == "It is sunny.",
          "responses.create: the call's output back in input")
    types, text, final = [], "", None
    for ev in client.responses.create(model="kimi-test", input="Hello",
                                      stream=True):
        types.append(ev.type)
        if ev.type == "response.output_text.delta":
            text += ev.delta
        if ev.type == "response.completed":
            final = ev.response
    check(types[:2] == ["response.created", "response.in_progress"]
          and types[-1] == "response.completed" and text == "Hi there!"
          and final is not None and final.output_text == "Hi there!",
          "responses stream: events, deltas and the completed response")
    args, names = {}, {}
    for ev in client.responses.create(
            model="kimi-test", input="What is the weather in Paris?",
            stream=True,
            tools=[{"type": "function", "name": "get_weather",
                    "parameters": {"type": "object", "properties": {}}}]):
        if ev.type == "response.output_item.added" and \
                ev.item.type == "function_call":
            names[ev.output_index] = ev.item.name
        if ev.type == "response.function_call_arguments.delta":
            args[ev.output_index] = args.get(ev.output_index, "") + ev.delta
        if ev.type == "response.completed":
            final = ev.response
    fc = [o for o in final.output if o.type == "function_call"]
    check(list(names.values()) == ["get_weather"]
          and list(args.values()) == ['{"city": "Paris"}']
          and len(fc) == 1 and fc[0].arguments == '{"city": "Paris"}',
          "responses stream: a function call's events and item")

    # stored responses (the test's nginx has kimi_responses_store)
    r1 = client.responses.create(model="kimi-test",
                                 input="What is the weather in Paris?",
                                 tools=[{"type": "function",
                                         "name": "get_weather",
                                         "parameters": {"type": "object",
                                                        "properties": {}}}])
    got = client.responses.retrieve(r1.id)
    check(r1.store and got.id == r1.id and got.output[0].type
          == "function_call", "responses.retrieve: the stored response")
    fc = [o for o in r1.output if o.type == "function_call"]
    r2 = client.responses.create(
        model="kimi-test", previous_response_id=r1.id,
        input=[{"type": "function_call_output", "call_id": fc[0].call_id,
                "output": "sunny"}],
        tools=[{"type": "function", "name": "get_weather",
                "parameters": {"type": "object", "properties": {}}}])
    check(r2.output_text == "It is sunny."
          and r2.previous_response_id == r1.id,
          "responses.create with previous_response_id continues it")
    items = client.responses.input_items.list(r2.id)
    check([i.type for i in items.data] == ["function_call_output"],
          "responses.input_items.list")
    client.responses.delete(r1.id)
    try:
        client.responses.retrieve(r1.id)
        check(False, "responses.delete: then retrieve raises NotFoundError")
    except openai.NotFoundError:
        check(True, "responses.delete: then retrieve raises NotFoundError")

plan()
