"""Chat templates come with model files: rendering one is bounded in time and memory, and every
failure is one binllm error (issue: release hardening)."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc

import pytest
from binllm import InvalidArgumentError, Model, ModelFormatError
from binllm.chat_template import MAX_SECONDS, render
from binllm.model import default_model_path

# A Llama-3-like template: namespace, loop variables, filters, tojson-free string work.
REAL = """{% set ns = namespace(system='') %}
{%- for m in messages %}{% if m.role == 'system' %}{% set ns.system = m.content|trim %}{% endif %}{% endfor %}
{{- bos_token }}{% if ns.system %}<|system|>{{ ns.system }}<|end|>{% endif %}
{%- for m in messages if m.role != 'system' %}
{%- if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate user/assistant') }}{% endif %}
<|{{ m.role }}|>{{ '%s'|format(m.content|trim) }}{{ '<|end|>' if not loop.last or m.role == 'user' else '' }}
{%- endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"""

MESSAGES = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"}]


def test_a_real_template_renders_as_jinja_does():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    want = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(REAL)
    context = dict(messages=MESSAGES, add_generation_prompt=True, bos_token="<s>")
    assert render(REAL, **context) == want.render(raise_exception=raise_exception, **context)
    start = time.perf_counter()
    for _ in range(20):
        render(REAL, **context)
    assert (time.perf_counter() - start) / 20 < 0.05
    with pytest.raises(InvalidArgumentError, match="chat template: roles must alternate"):
        render(REAL, messages=MESSAGES[1:2] * 2, add_generation_prompt=True, bos_token="")


HOSTILE = {
    "repetition": "{{ 'x' * 3000000000 }}",
    "power": "{{ 2 ** 100000000 }}",
    "output in a loop": "{% set b = 'x' * 1000000 %}{% for i in range(100000) %}{{ b }}{% endfor %}",
    "namespace doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "macro doubling": "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('x', 60) }}",
    "set block": "{% set b = 'x' * 1000000 %}{% set c %}{% for i in range(1000) %}{{ b }}{% endfor %}{% endset %}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "center filter": "{{ 'x'|center(3000000000) }}",
    "ljust method": "{{ 'x'.ljust(3000000000) }}",
    "replace method": "{% set s = 'a' * 100000 %}{{ s.replace('', 'b' * 100000) }}",
    "replace filter": "{% set s = 'a' * 100000 %}{{ s|replace('a', 'b' * 100000) }}",
    "percent width": "{{ '%3000000000d' % 1 }}",
    "format filter width": "{{ '%3000000000d'|format(1) }}",
    "str.format width": "{{ '{:>3000000000}'.format(1) }}",
    "str.format argument width": "{{ '{:>{}}'.format(1, 3000000000) }}",
    "syntax": "{% for %}",
    "undefined": "{{ foo.bar.baz }}",
    "unsafe attribute": "{{ ''.__class__.__mro__ }}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_template_is_one_clear_error(name):
    start = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError, match="^chat template: "):
            render(HOSTILE[name], messages=[])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0 and peak < 64 << 20


@pytest.mark.parametrize("template", ["{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"])
def test_a_template_that_would_run_for_hours_stops_at_the_deadline(template):
    start = time.perf_counter()
    with pytest.raises(ModelFormatError, match="took more than"):
        render(template, messages=[])
    assert time.perf_counter() - start < MAX_SECONDS + 1.0


def test_a_model_with_a_hostile_template_is_a_model_format_error(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = HOSTILE["repetition"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="chat template: a repetition"):
        Model.from_pretrained(folder).generate([{"role": "user", "content": "Hi"}], max_new_tokens=1)
