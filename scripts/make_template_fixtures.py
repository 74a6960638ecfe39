#!/usr/bin/env python3
"""Writes Tests/Fixtures/templates/chat_templates.json: real chat templates, conversations, and what
transformers' own chat-template machinery renders for them (or the error it raises).

    /opt/peers/venv/bin/python scripts/make_template_fixtures.py

Rendering goes through transformers.utils.chat_template_utils.render_jinja_template, which is what
PreTrainedTokenizerBase.apply_chat_template(tokenize=False) calls (with the tokenizer's special tokens
map merged into the keyword arguments). For SmolLM2 the script also checks that the real tokenizer's
apply_chat_template gives the same strings.

Template texts are the exact `chat_template` strings of each model's tokenizer_config.json, written here
in JSON string form (so "\\n" below is a backslash-n inside a Jinja string literal and "\n" a newline).
"""
import json
import os
import sys

import transformers
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "templates", "chat_templates.json")
SMOL_DIR = "/opt/peers/models/smollm2-135m-hf"

TEMPLATES = []


def template(name, source, bos, eos, text, extra=None):
    TEMPLATES.append({"name": name, "source": source, "bos_token": bos, "eos_token": eos,
                      "template": text, "extra": extra or {}})


# SmolLM2-135M-Instruct: copied from the local HF conversion's tokenizer_config.json.
with open(os.path.join(SMOL_DIR, "tokenizer_config.json")) as f:
    _smol = json.load(f)
template("SmolLM2-135M-Instruct", SMOL_DIR + "/tokenizer_config.json",
         _smol["bos_token"], _smol["eos_token"], _smol["chat_template"])

# meta-llama/Llama-2-7b-chat-hf tokenizer_config.json. Same text found verbatim in several public copies,
# e.g. llama.cpp tests/test-chat-template.cpp history and sarvam-2b fine-tuning scripts.
template("Llama-2-chat", "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json (as copied in public repos)",
         "<s>", "</s>",
         "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json (public copies, e.g. jinja test generators).
template("Llama-3-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json (as copied in public repos)",
         "<|begin_of_text|>", "<|eot_id|>",
         "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json (public copy in a vLLM evaluation script,
# get_chat_template("llama")); date_string is passed so the output does not depend on the clock.
template("Llama-3.1-Instruct", "meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json (as copied in public repos)",
         "<|begin_of_text|>", "<|eot_id|>",
         "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n{#- System message + builtin tools #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if builtin_tools is defined or tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{%- if builtin_tools is defined %}\n    {{- \"Tools: \" + builtin_tools | reject('equalto', 'code_interpreter') | join(\", \") + \"\\n\\n\"}}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- \"<|python_tag|>\" + tool_call.name + \".call(\" }}\n            {%- for arg_name, arg_val in tool_call.arguments | items %}\n                {{- arg_name + '=\"' + arg_val + '\"' }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- endif %}\n                {%- endfor %}\n            {{- \")\" }}\n        {%- else  %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n            {{- '\"parameters\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- \"}\" }}\n        {%- endif %}\n        {%- if builtin_tools is defined %}\n            {#- This means we're in ipython mode #}\n            {{- \"<|eom_id|>\" }}\n        {%- else %}\n            {{- \"<|eot_id|>\" }}\n        {%- endif %}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n",
         extra={"date_string": "26 Jul 2024"})

# mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json (the original template; llama.cpp
# tests/test-chat-template.cpp quotes it as Mistral-7B-Instruct-v0.2's too).
template("Mistral-7B-Instruct-v0.1", "mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json (as copied in public repos)",
         "<s>", "</s>",
         "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

# Qwen/Qwen2.5-*-Instruct tokenizer_config.json (public copy: the BFCL Qwen function-calling handler docstring).
template("Qwen2.5-Instruct", "Qwen/Qwen2.5-7B-Instruct tokenizer_config.json (as copied in public repos)",
         None, "<|im_end|>",
         "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")

# google/gemma-2-2b-it tokenizer_config.json (llama.cpp models/templates/google-gemma-2-2b-it.jinja).
template("Gemma-2-it", "google/gemma-2-2b-it tokenizer_config.json (llama.cpp models/templates/google-gemma-2-2b-it.jinja)",
         "<bos>", "<eos>",
         "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

# microsoft/Phi-3.5-mini-instruct tokenizer_config.json (llama.cpp models/templates/microsoft-Phi-3.5-mini-instruct.jinja).
template("Phi-3.5-mini-instruct", "microsoft/Phi-3.5-mini-instruct tokenizer_config.json (llama.cpp models/templates/microsoft-Phi-3.5-mini-instruct.jinja)",
         "<s>", "<|endoftext|>",
         "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")


def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "single_user": [m("user", "Hello!")],
    "with_system": [m("system", "You are a terse assistant."), m("user", "What is 2+2?")],
    "multi_turn": [m("user", "Hi there"), m("assistant", "Hello! How can I help?"),
                   m("user", "  Tell me a joke.  "), m("assistant", " Why did the chicken cross the road? "),
                   m("user", "Another one")],
    "system_multi_turn": [m("system", "Be kind."), m("user", "Hi"), m("assistant", "Hello."),
                          m("user", "Bye")],
    "unicode_newlines": [m("user", "Caf\u00e9 \u2615 \u65e5\u672c\u8a9e \U0001F600\nline two\n\n  indented\ttab"),
                         m("assistant", "R\u00e9ponse:\n- one\n- two\n"), m("user", "\u00bfY ahora?")],
    "ends_with_assistant": [m("user", "Say hi"), m("assistant", "hi")],
    "not_alternating": [m("user", "first"), m("user", "second")],
    "assistant_first": [m("assistant", "I speak first"), m("user", "ok")],
}


# Tool use, for the templates that support it: a tool schema, an assistant tool call and its result.
# These conversations need messages with more than role/content, so the Swift test renders them through
# ChatTemplate.render(_ context:).
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}]
TOOL_CONVERSATIONS = {
    "tool_call": [m("system", "Use tools when helpful."), m("user", "Weather in Z\u00fcrich?"),
                  {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                      "name": "get_weather", "arguments": {"city": "Z\u00fcrich", "unit": "celsius"}}}]},
                  {"role": "tool", "content": "{\"temp\": 21.5, \"sky\": \"clear\"}"}],
}
TOOL_TEMPLATES = ("Llama-3.1-Instruct", "Qwen2.5-Instruct")


def render(t, conv, agp, tools=None):
    kwargs = {"bos_token": t["bos_token"], "eos_token": t["eos_token"]}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(t["extra"])
    out, _ = render_jinja_template(conversations=[conv], chat_template=t["template"], tools=tools,
                                   add_generation_prompt=agp, **kwargs)
    return out[0]


# Language features one at a time, rendered by the same compiled jinja2 environment transformers uses.
FEATURES = [
    ("text", "plain text", {}),
    ("output", "a{{ x }}b", {"x": "X"}),
    ("undefined prints nothing", "[{{ missing }}]", {}),
    ("none and bools", "{{ none }} {{ None }} {{ true }} {{ False }}", {}),
    ("numbers", "{{ 1 + 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 * 3 - 1 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1.5 + 1 }} {{ 0.1 + 0.2 }}", {}),
    ("string escapes", "{{ 'a\\nb\\t\\\"c\\\"' }}|{{ \"it's\" }}|{{ '\\u00e9\\x41' }}", {}),
    ("string concat", "{{ 'a' + 'b' }}{{ 'n=' ~ 3 ~ none ~ missing }}{{ [1] + [2] }}", {}),
    ("comment", "a{# gone #}b", {}),
    ("trim_blocks", "{% if true %}\nx\n{% endif %}\ny", {}),
    ("lstrip_blocks", "a\n    {% if true %}\n    b\n    {% endif %}\nc", {}),
    ("lstrip does not touch output tags", "a\n    {{ 'b' }}\n", {}),
    ("minus trims", "a   {{- 'b' -}}   c  {%- if true -%}  d  {%- endif %}", {}),
    ("plus disables lstrip", "x\n  {%+ if true %}y{% endif %}", {}),
    ("comment trims", "a\n  {# c #}\nb {#- c -#} c", {}),
    ("raw block", "{% raw %}{{ not parsed }}{% endraw %}", {}),
    ("if elif else", "{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %},{% endfor %}", {}),
    ("for loop variables", "{% for x in items %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }};{% endfor %}", {"items": ["a", "b", "c"]}),
    ("for else", "{% for x in [] %}x{% else %}empty{% endfor %}", {}),
    ("for with condition", "{% for x in [1, 2, 3, 4] if x % 2 == 0 %}{{ loop.index }}:{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", {}),
    ("for unpack items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in d | items %}{{ k }}{% endfor %}", {"d": {"x": 1, "y": "z"}}),
    ("for over dict and string", "{% for k in d %}{{ k }}{% endfor %}|{% for c in 'h\u00e9' %}[{{ c }}]{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("break continue", "{% for n in [1, 2, 3, 4] %}{% if n == 2 %}{% continue %}{% endif %}{% if n == 4 %}{% break %}{% endif %}{{ n }}{% endfor %}", {}),
    ("loop cycle", "{% for x in [1, 2, 3] %}{{ loop.cycle('a', 'b') }}{% endfor %}", {}),
    ("set and scope", "{% set a = 1 %}{% for x in [1] %}{% set a = 2 %}{{ a }}{% endfor %}{{ a }}{% if true %}{% set b = 3 %}{% endif %}{{ b }}", {}),
    ("namespace", "{% set ns = namespace(total=0, seen=false) %}{% for x in [1, 2, 3] %}{% set ns.total = ns.total + x %}{% if x == 2 %}{% set ns.seen = true %}{% endif %}{% endfor %}{{ ns.total }} {{ ns.seen }}", {}),
    ("set block", "{% set v %}in {{ 'side' }}{% endset %}[{{ v }}]", {}),
    ("set tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}", {}),
    ("macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bo', punct='?') }}", {}),
    ("call block", "{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}inner{% endcall %}", {}),
    ("filter block", "{% filter upper %}shout {{ 'this' }}{% endfilter %}", {}),
    ("comparisons", "{{ 1 < 2 }}{{ 2 <= 1 }}{{ 'a' == 'a' }}{{ 'a' != 'a' }}{{ 3 > 2 }}{{ 1 >= 1 }}{{ 1 == 1.0 }}{{ 'a' < 'b' }}{{ 1 < 2 < 3 }}", {}),
    ("logic", "{{ true and false }}{{ true or false }}{{ not true }}{{ not (1 == 2) }}{{ 0 or 'x' }}{{ 'y' and 0 }}", {}),
    ("in", "{{ 'b' in 'abc' }}{{ 2 in [1, 2] }}{{ 'k' in d }}{{ 'q' not in d }}", {"d": {"k": 1}}),
    ("tests", "{{ x is defined }}{{ y is defined }}{{ y is not defined }}{{ n is none }}{{ s is string }}{{ d is mapping }}{{ s is iterable }}{{ 3 is iterable }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 4 is even }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ 'a' is equalto 'a' }}{{ 1 is number }}{{ 1 is integer }}{{ 1.0 is float }}{{ true is boolean }}", {"x": 1, "n": None, "s": "s", "d": {}}),
    ("conditional expression", "{{ 'yes' if flag else 'no' }}[{{ 'a' if false }}]{{ 'p' if 0 else 'q' if 1 else 'r' }}", {"flag": True}),
    ("subscripts and slices", "{{ l[0] }}{{ l[-1] }}{{ l[1:] }}{{ l[:-1] }}{{ l[::-1] }}{{ l[::2] }}{{ s[1:3] }}{{ s[-1] }}{{ d['k'] }}{{ d.k }}[{{ l[10] }}]", {"l": [1, 2, 3, 4], "s": "hello", "d": {"k": "v"}}),
    ("list and dict literals", "{{ [1, 'a', none, true] }} {{ {'a': 1, 'b': [2.5]} }} {{ (1, 2) }}", {}),
    ("string methods", "{{ '  x  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  x'.lstrip() }}|{{ 'x  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}{{ 'abc'.startswith(('x', 'a')) }}|{{ 'MiX'.upper() }}{{ 'MiX'.lower() }}|{{ 'a-b'.replace('-', '+') }}|{{ \"hello wor'ld\".title() }}|{{ 'hELLO'.capitalize() }}|{{ 'a b'.split(' ', 1) }}", {}),
    ("dict methods", "{{ d.get('a') }}{{ d.get('z') }}{{ d.get('z', 'dflt') }}{{ d.items() | list }}{{ d.keys() | list }}{{ d.values() | list }}", {"d": {"a": 1, "b": 2}}),
    ("filters basic", "{{ '  t  ' | trim }}|{{ 'xtx' | trim('x') }}|{{ [1, 2] | length }}|{{ 'h\u00e9' | length }}|{{ 'abc' | count }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}|{{ 'hello wORLD-x' | title }}|{{ 'hELLO' | capitalize }}|{{ 'aXa' | replace('a', 'b') }}", {}),
    ("filters sequences", "{{ [1, 2, 3] | join(', ') }}|{{ [1, 2] | join }}|{{ [3, 1] | first }}{{ [3, 1] | last }}|{{ 'ab' | list }}|{{ [3, 1, 2] | sort }}|{{ [1, 2] | reverse | list }}|{{ [1, 1, 2] | unique | list }}|{{ [1, 2] | sum }}|{{ [2, 5, 1] | max }}{{ [2, 5, 1] | min }}", {}),
    ("filters default", "{{ missing | default('d') }}|{{ missing | d('e') }}|{{ '' | default('f') }}|{{ '' | default('g', true) }}|{{ none | default('h') }}", {}),
    ("filters conversion", "{{ 3.7 | int }}{{ '42' | int }}{{ 'x' | int }}{{ 'x' | int(7) }}{{ 5 | string }}{{ 2 | float }}{{ -3 | abs }}{{ 2.567 | round(2) }}", {}),
    ("filters selectattr map", "{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|{{ msgs | rejectattr('role', 'equalto', 'user') | list | length }}|{{ msgs | map(attribute='role') | list }}|{{ ['a', 'B'] | map('upper') | join }}|{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3] | reject('odd') | list }}|{{ items | selectattr('on') | map(attribute='n') | list }}", {"msgs": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}], "items": [{"n": 1, "on": True}, {"n": 2, "on": False}, {"n": 3}]}),
    ("filter tojson", "{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ 'caf\u00e9 \"q\" <b>' | tojson }}|{{ [] | tojson }}|{{ {} | tojson(indent=2) }}|{{ d | tojson(sort_keys=true) }}|{{ d | tojson(separators=(',', ':')) }}", {"d": {"z": 1, "a": [True, None, 1.5, "x"], "m": {"k": "v"}}}),
    ("filter indent", "{{ 'a\nb\n\nc' | indent }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(1, blank=true) }}", {}),
    ("filter safe escape", "{{ '<a>' | safe }}{{ '<a&\"b\">' | escape }}", {}),
    ("range and dict", "{{ range(3) | list }}{{ range(1, 7, 2) | list }}{{ dict(a=1, b='x') }}", {}),
    ("dict printing with unicode", "{{ {'k': 'caf\u00e9', 'n': none} }}{{ ['it\\'s'] }}", {}),
    ("float printing", "{{ 1.0 }} {{ 1e20 }} {{ 1e-5 }} {{ 2.5e-3 }} {{ 100.0 / 3 }}", {}),
    ("raise_exception", "{% if fail %}{{ raise_exception('bad input: ' ~ what) }}{% endif %}ok", {"fail": True, "what": "x"}),
    ("keep no trailing newline", "line\n", {}),
    ("only one trailing newline dropped", "line\n\n", {}),
    ("crlf normalized", "a\r\n{% if true %}\r\nb\r\n{% endif %}", {}),
    ("undefined attribute of dict", "[{{ d.missing }}][{{ d.missing is defined }}][{{ d['missing'] | default('z') }}]", {"d": {}}),
    ("is not none", "{{ x is not none }}{{ y is not none }}", {"x": 1, "y": None}),
]


def main():
    from transformers.utils.chat_template_utils import _compile_jinja_template
    features = []
    for name, text, context in FEATURES:
        case = {"name": name, "template": text, "context": context}
        try:
            case["expected"] = _compile_jinja_template(text).render(**context)
        except Exception as e:
            case["error"] = str(e)
            case["error_type"] = type(e).__name__
        features.append(case)
    cases = []
    for t in TEMPLATES:
        for conv_name, conv in CONVERSATIONS.items():
            for agp in (False, True):
                case = {"template": t["name"], "conversation": conv_name, "add_generation_prompt": agp}
                try:
                    case["expected"] = render(t, conv, agp)
                except Exception as e:  # jinja2.exceptions.TemplateError from raise_exception
                    case["error"] = str(e)
                    case["error_type"] = type(e).__name__
                cases.append(case)
        if t["name"] in TOOL_TEMPLATES:
            for conv_name, conv in TOOL_CONVERSATIONS.items():
                for with_tools in (False, True):
                    case = {"template": t["name"], "conversation": conv_name, "add_generation_prompt": True,
                            "tools": with_tools}
                    try:
                        case["expected"] = render(t, conv, True, TOOLS if with_tools else None)
                    except Exception as e:
                        case["error"] = str(e)
                        case["error_type"] = type(e).__name__
                    cases.append(case)

    # Cross-check: the real SmolLM2 tokenizer's apply_chat_template gives the same strings.
    tok = transformers.AutoTokenizer.from_pretrained(SMOL_DIR)
    for case in cases:
        if case["template"] != "SmolLM2-135M-Instruct" or "expected" not in case:
            continue
        got = tok.apply_chat_template(CONVERSATIONS[case["conversation"]], tokenize=False,
                                      add_generation_prompt=case["add_generation_prompt"])
        assert got == case["expected"], (case, got)

    doc = {
        "generator": "scripts/make_template_fixtures.py",
        "transformers": transformers.__version__,
        "jinja2": __import__("jinja2").__version__,
        "templates": TEMPLATES,
        "conversations": {**CONVERSATIONS, **TOOL_CONVERSATIONS},
        "tools": TOOLS,
        "cases": cases,
        "features": features,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum("error" in c for c in cases)
    print(f"wrote {OUT}: {len(TEMPLATES)} templates, {len(cases)} cases ({n_err} expected errors)")


if __name__ == "__main__":
    sys.exit(main())
