// The corpus for comparing trail's GPT-2 tokenizer with the reference
// encoder (tests/cli/bpe-reference.sh): one JSON string a line on stdout.
//   real text   paragraphs, lines and the first 8 KiB of documents: the licences, jargon and
//               FOLDOC dictionaries and manual pages (English, Japanese,
//               Korean, Russian, German, ... as installed)
//   generated   seeded random strings over many scripts, emoji sequences,
//               combining marks, CJK, every kind of space and control
//               character, digits and contractions
//   punctuation runs of quotes, commas and brackets
//   edge cases  a fixed list
// Usage: node bpe_corpus.js [SEED] > corpus.ndjson
// Only characters assigned by Unicode 15.0 are generated, the version of
// trail's table; real text is taken as it is.
'use strict'
const fs = require('fs')
const path = require('path')
const zlib = require('zlib')

let seed = (parseInt(process.argv[2] || '1', 10) >>> 0) || 1
function rand() { // mulberry32
  seed = (seed + 0x6D2B79F5) >>> 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const pick = a => a[Math.floor(rand() * a.length)]
const out = []
// Real text is cut at 4 KiB (the reference encoder is quadratic in a string's ids).
const emit = (s, max = 4096) => { if (typeof s === 'string') out.push(s.length > max ? s.slice(0, max) : s) }

function readText(file) {
  try {
    let b = fs.readFileSync(file)
    if (/\.(gz|dz)$/.test(file)) b = zlib.gunzipSync(b)
    return b.toString('utf8')
  } catch (e) {
    return null
  }
}
function listDir(dir) {
  try { return fs.readdirSync(dir).sort().map(f => path.join(dir, f)) } catch (e) { return [] }
}
// Paragraphs, some lines and the first 8 KiB of one document.
function take(text, maxParas) {
  if (!text) return
  const paras = text.split(/\n\s*\n/)
  for (let i = 0; i < paras.length && i < maxParas; i++) emit(paras[i])
  const lines = text.split('\n')
  for (let i = 0; i < 20 && lines.length; i++) emit(pick(lines))
  emit(text, 8192)
}

// ---- real text ----
for (const f of listDir('/usr/share/common-licenses')) take(readText(f), 200)
for (const d of ['jargon', 'foldoc']) {
  const t = readText('/usr/share/dictd/' + d + '.dict.dz')
  if (!t) continue
  const entries = t.split(/\n(?=\S)/)
  for (let i = 0; i < 1500 && entries.length; i++) emit(pick(entries))
}
for (const lang of ['', 'ja', 'ko', 'ru', 'de', 'fr', 'pl', 'tr', 'cs', 'sr', 'uk', 'zh_CN', 'zh_TW', 'es', 'pt_BR']) {
  const pages = listDir(path.join('/usr/share/man', lang, 'man1'))
  for (let i = 0; i < 40 && pages.length; i++) take(readText(pick(pages)), 30)
}

// ---- generated ----
const ranges = [ // [lo, hi]: blocks fully assigned long before Unicode 15.0
  [0x41, 0x5A], [0x61, 0x7A], [0x30, 0x39], [0x21, 0x2F], [0x3A, 0x40], [0xC0, 0x24F], [0xA1, 0xBF],
  [0x300, 0x36F], [0x391, 0x3A1], [0x3A3, 0x3C9], [0x400, 0x4FF], [0x5D0, 0x5EA], [0x591, 0x5C7],
  [0x621, 0x64A], [0x660, 0x669], [0x64B, 0x65F], [0x905, 0x939], [0x93E, 0x94D], [0x966, 0x96F],
  [0xE01, 0xE3A], [0xE50, 0xE59], [0x10A0, 0x10C5], [0x1100, 0x11FF], [0x1E00, 0x1EFF], [0x2010, 0x2027],
  [0x2030, 0x205E], [0x2070, 0x2071], [0x2074, 0x208E], [0x20A0, 0x20BF], [0x2150, 0x2188], [0x2190, 0x21FF],
  [0x2460, 0x24FF], [0x2500, 0x257F], [0x3001, 0x303F], [0x3041, 0x3096], [0x30A1, 0x30FA], [0x4E00, 0x9FA5],
  [0xAC00, 0xD7A3], [0xFF01, 0xFF5E], [0xFE20, 0xFE2F], [0x1D400, 0x1D7FF], [0x10400, 0x1044F],
  [0x1F300, 0x1F5FF], [0x1F600, 0x1F64F], [0x1F680, 0x1F6C5], [0x1F900, 0x1F9FF], [0x1F3FB, 0x1F3FF],
  [0x20000, 0x2A6DF], [0x12000, 0x12399], [0x16A0, 0x16F0], [0x13A0, 0x13F4], [0x1780, 0x17DD],
]
const spaces = [0x20, 0x20, 0x20, 0x9, 0xA, 0xB, 0xC, 0xD, 0x85, 0xA0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
  0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x200B, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
  0xFEFF, 0x180E, 0x1C, 0x1D, 0x1E, 0x1F]
const controls = [0x0, 0x1, 0x7, 0x8, 0x1B, 0x7F, 0x80, 0x9F, 0xAD, 0x200D, 0x200E, 0xFFFD, 0xFFFC]
const words = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "don't", "I'm", "we'll", "you're",
  "they've", "it'd", "''", "'", "’s", "rock'n'roll", "123", "3.14159", "1,000,000", "0x7f", "2024-01-01",
  "hello", "world", " the", "The", "GPT-2", "naïve", "café", "Ünïcödé", "日本語", "한국어", "Ελληνικά", "Русский",
  "עברית", "العربية", "हिन्दी", "ไทย", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🏳️‍🌈", "e\u0301", "a\u0308\u0323", "ﬁ", "Ⅻ",
  "½", "²", "①", "٣", "\t", "\n", "\r\n", "  ", "   ", "\u00a0", "...", "!!!", "?!", "<|endoftext|>",
  "http://example.com/a?b=c&d=e", "foo_bar", "x==y", "#include <stdio.h>", "{\"a\":1,\"b\":[2,3]}"]
function randChar() {
  const r = rand()
  if (r < 0.12) return String.fromCodePoint(pick(spaces))
  if (r < 0.16) return String.fromCodePoint(pick(controls))
  const [lo, hi] = pick(ranges)
  return String.fromCodePoint(lo + Math.floor(rand() * (hi - lo + 1)))
}
// at least 4,000, and enough for 12,000 strings in all where little text is installed
const generated = Math.max(4000, 12000 - out.length)
for (let i = 0; i < generated; i++) {
  let s = ''
  const n = 1 + Math.floor(rand() * (rand() < 0.1 ? 400 : 40))
  while (s.length < n) s += rand() < 0.35 ? pick(words) + (rand() < 0.5 ? ' ' : '') : randChar()
  emit(s, Infinity)
}

// The reference keys a merge by its pair joined with a comma, so ('",', '"')
// reads as the merge ('"', ',"'); GPT-2 keys by the pair itself. Runs of
// these characters are where the two could part.
const punct = ['"', ',', '}', ']', ')', "'", '[', '.', '{', ' ']
for (let i = 0; i < 3000; i++) {
  let s = ''
  const n = 2 + Math.floor(rand() * 8)
  while (s.length < n) s += pick(punct)
  emit(s, Infinity)
}

// ---- edge cases ----
const edge = ['', ' ', '  ', '   ', '\n', '\n\n', '\t', ' \n ', 'a ', 'a  ', 'a   b', ' a', '  a', '\n a', '\na',
  'a\n', 'a\n\n', "'s", "a's", "a 's", " 's", "''s", "'''", "'ll've", "I'LL", "don't", "DON'T", '1', '12', '123456789012345',
  ' 1', 'a1b2', '1a', '$1.00', '   \t\n  x  ', 'x\u00a0y', '\u00a0 x', ' \u00a0x', 'x \u3000 y', '\u0000', '\u0000\u0001\u0002',
  '\x7f', 'tab\there', 'crlf\r\nline', 'trailing   ', '\u200b', 'a\u200db', '\ufeffbom', '\u2028\u2029', '\u0085x',
  ' '.repeat(1000), '\n'.repeat(100), 'a'.repeat(3000), '!'.repeat(500), '1'.repeat(700), '日'.repeat(500),
  ' ' + 'x'.repeat(50), '😀'.repeat(100), 'e' + '\u0301'.repeat(50), 'Hello, world!', 'Hello world   \n\n', '<|endoftext|>']
for (const s of edge) emit(s, Infinity)

process.stdout.write(out.map(s => JSON.stringify(s)).join('\n') + '\n')
