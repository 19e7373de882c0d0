/*
 * Fuzz signed notes, checkpoints and tlog-proof receipts: any bytes are
 * opened against a fixed key; nothing crashes and nothing verifies unless
 * it was really signed by that key.
 */
#include <string.h>

#include "ledger/ledger.h"

/* The C2SP documentation example key (public). */
static const char VKEY[] = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static trail_verifier *v;
	if (!v && trail_verifier_parse(VKEY, strlen(VKEY), &v, NULL))
		__builtin_trap();
	char *text = NULL;
	size_t tl;
	const trail_verifier *vs[1] = {v};
	trail_note_open((const char *)data, size, vs, 1, &text, &tl, NULL);
	trail_free(text);
	uint64_t idx;
	trail_hash leaf;
	trail_receipt_verify((const char *)data, size, vs, 1, NULL, &idx, leaf, NULL);
	/* Keys: parse attempts must never crash. */
	trail_verifier *x = NULL;
	trail_signer *s = NULL;
	trail_verifier_parse((const char *)data, size, &x, NULL);
	trail_signer_parse((const char *)data, size, &s, NULL);
	trail_verifier_free(x);
	trail_signer_free(s);
	return 0;
}
