// The official OpenAI client for node against lora-serve, for
// tests/cli/openai-client.sh: chat.completions.create without and with
// streaming (the streamed pieces must add up to the whole answer), the
// adapter chosen by "model", completions.create, models.list, and the
// client's own error classes for a 404 and for 400s. Prints TAP lines.
// Usage: node openai_client.js NODE_MODULES URL ADAPTER
'use strict'
const path = require('path')
const [nm, url, adapter] = process.argv.slice(2)
const OpenAI = require(path.join(nm, 'openai')).OpenAI
const client = new OpenAI({ baseURL: url + '/v1', apiKey: 'not-needed', maxRetries: 0, timeout: 60000 })
let n = 0, failed = 0
const ok = (c, what, extra) => {
  n++
  if (!c) failed++
  console.log(`${c ? '' : 'not '}ok ${n} - ${what}`)
  if (!c && extra !== undefined) console.log('#   ' + JSON.stringify(extra).slice(0, 600))
}
const messages = [{ role: 'system', content: 'You answer briefly.' }, { role: 'user', content: 'Where is the harbour? 😀' }]
async function error (p) { try { await p; return null } catch (e) { return e } }

async function main () {
  const r = await client.chat.completions.create({ model: 'base', messages, max_tokens: 8, temperature: 0 })
  ok(r.object === 'chat.completion' && /^chatcmpl-/.test(r.id), 'chat: a chat.completion with a chatcmpl- id', r)
  const c = r.choices[0]
  ok(c.message.role === 'assistant' && typeof c.message.content === 'string' && ['stop', 'length'].includes(c.finish_reason),
    'chat: the assistant message and a finish_reason', c)
  ok(r.usage.prompt_tokens > 0 && r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens, 'chat: usage adds up', r.usage)
  ok(r.event && r.event.prompt.startsWith('<|im_start|>system\nYou answer briefly.<|im_end|>') &&
    r.event.prompt.endsWith('<|im_start|>assistant\n') && r.event.messages.length === 2, 'chat: the event holds the rendered prompt and the messages', r.event)

  const s = await client.chat.completions.create({ model: 'base', messages, max_tokens: 8, temperature: 0, stream: true })
  let text = '', role = null, finish = null, chunks = 0, objects = true
  for await (const ch of s) {
    chunks++
    objects = objects && ch.object === 'chat.completion.chunk'
    const d = ch.choices[0].delta
    if (d.role) role = d.role
    if (d.content) text += d.content
    if (ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason
  }
  ok(objects && chunks >= 2 && role === 'assistant', 'stream: chat.completion.chunk objects, the role first', { chunks, role })
  ok(text === c.message.content && finish === c.finish_reason, 'stream: the pieces add up to the same answer', { text, whole: c.message.content, finish })

  const a = await client.chat.completions.create({ model: adapter, messages, max_tokens: 4, temperature: 0 })
  ok(a.model === adapter && a.event.adapter === adapter && a.event.adapter_digest.startsWith('sha256:'), 'chat: "model" chooses the adapter', a.event)

  const p = await client.completions.create({ model: 'base', prompt: 'Where is the harbour?', max_tokens: 4, temperature: 0 })
  ok(p.object === 'text_completion' && typeof p.choices[0].text === 'string', 'completions.create still answers', p)

  const ids = []
  for await (const m of client.models.list()) ids.push(m.id)
  ok(ids.includes('base') && ids.includes(adapter), 'models.list lists the base and the adapter', ids)

  let e = await error(client.chat.completions.create({ model: 'no-such-adapter', messages }))
  ok(e instanceof OpenAI.NotFoundError && e.status === 404 && /unknown model/.test(e.message), 'an unknown model: NotFoundError', e && e.message)
  e = await error(client.chat.completions.create({ model: 'base', messages: [] }))
  ok(e instanceof OpenAI.BadRequestError && e.status === 400, 'no messages: BadRequestError', e && e.message)
  e = await error(client.chat.completions.create({ model: 'base', messages, temperature: 5 }))
  ok(e instanceof OpenAI.BadRequestError && /temperature/.test(e.message), 'temperature 5: BadRequestError', e && e.message)
  e = await error(client.chat.completions.create({ model: 'base', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }))
  ok(e instanceof OpenAI.BadRequestError && /text parts/.test(e.message), 'an image part: BadRequestError', e && e.message)
  e = await error(client.chat.completions.create({ model: 'no-such-adapter', messages, stream: true }))
  ok(e instanceof OpenAI.NotFoundError, 'stream: an unknown model is a NotFoundError too', e && e.message)
}
main().then(() => { console.log(`1..${n}`); process.exit(failed ? 1 : 0) },
  e => { console.log(`not ok ${n + 1} - the client failed: ${String(e && e.stack).split('\n').slice(0, 3).join(' | ')}`); console.log(`1..${n + 1}`); process.exit(1) })
