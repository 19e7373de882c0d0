#!/bin/bash
# Under make check-full, with Debian's python3-torch: regenerate the PyTorch
# reference with a new seed and compare (the committed fixtures run always,
# in tests/unit/test_torch_parity.c).
. "$TRAIL_TOP/tests/tap.sh"
if [ -z "${TRAIL_FULL:-}" ] || ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
	echo "ok 1 - fresh PyTorch reference # SKIP needs make check-full and python3-torch"
	exit 0
fi
check "generate a fresh GPT-2 reference with PyTorch" /usr/bin/python3 "$TRAIL_TOP/tests/reference/gpt2_torch.py" "$T/ref" 7
check "and a fresh Llama-family one" /usr/bin/python3 "$TRAIL_TOP/tests/reference/llama_torch.py" "$T/ref" 7
TRAIL_REFERENCE_DIR="$T/ref" "$TRAIL_BUILD/tests/test_torch_parity" > "$T/out"
rc=$?
sed 's/^/# /' "$T/out"
check_eq "the model matches the fresh reference" "$rc" 0
finish
