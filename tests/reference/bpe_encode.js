// Encode a corpus (one JSON string a line on stdin) with the reference GPT-2
// encoder of the npm package gpt-3-encoder; one JSON array of ids a line on
// stdout. With --classes, print instead the character class of every code
// point as its regex sees it: runs of "L", "N", "S" (\s) and "O" as
// "FIRST LAST CLASS" lines in hexadecimal.
// Usage: node bpe_encode.js PACKAGE-DIR < corpus.ndjson > ids.ndjson
//        node bpe_encode.js --classes > classes.txt
'use strict'
const fs = require('fs')
const path = require('path')

if (process.argv[2] === '--classes') {
  const cls = c => /\p{L}/u.test(c) ? 'L' : /\p{N}/u.test(c) ? 'N' : /\s/u.test(c) ? 'S' : 'O'
  const lines = []
  let first = 0, prev = null
  for (let cp = 0; cp <= 0x110000; cp++) {
    const c = cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF) ? cls(String.fromCodePoint(cp)) : 'O'
    if (c !== prev || cp === 0x110000) {
      if (prev !== null) lines.push(first.toString(16) + ' ' + (cp - 1).toString(16) + ' ' + prev)
      first = cp
      prev = c
    }
  }
  process.stdout.write(lines.join('\n') + '\n')
  process.exit(0)
}
const { encode } = require(path.resolve(process.argv[2], 'Encoder.js'))
const input = fs.readFileSync(0, 'utf8').split('\n')
const out = []
for (const line of input) {
  if (line === '') continue
  out.push(JSON.stringify(encode(JSON.parse(line))))
}
process.stdout.write(out.join('\n') + '\n')
