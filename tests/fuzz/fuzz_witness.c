/*
 * Fuzz the witness's add-checkpoint and the cosignature readers. The first
 * byte picks how the rest is used:
 *   even  the whole request body, as it came over HTTP;
 *   odd   the request's head ("old N", proof lines) followed by a blank line
 *         and a checkpoint really signed by the log, of a size (mod 64) and
 *         root taken from the input's last 9 bytes;
 * and the input is also read as a cosigner key and as a cosigned note.
 * Nothing crashes; the reply is always one of the statuses C2SP
 * tlog-witness names (or 500); a 409 with text/x.tlog.size says a decimal
 * size and a newline; a 200 is a cosignature that verifies over the
 * checkpoint sent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ledger/ledger.h"

static const char LOGKEY[] = "PRIVATE+KEY+fuzz.example/log+f98492e7+AUBBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5f";
static const char WKEY[] = "PRIVATE+KEY+witness.example/w1+3218362d+AQABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f";

static char dir[64];
static void cleanup(void)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (dir[0] && system(cmd))
		return;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static trail_signer *log, *wk;
	static trail_verifier *lv;
	static trail_cosigner *cs;
	static trail_witness *w;
	if (!w) {
		char *v = NULL;
		snprintf(dir, sizeof dir, "%s", "/tmp/trail-fuzz-witness.XXXXXX");
		if (trail_init() || !mkdtemp(dir) ||
		    trail_signer_parse(LOGKEY, strlen(LOGKEY), &log, NULL) ||
		    trail_signer_parse(WKEY, strlen(WKEY), &wk, NULL) ||
		    trail_verifier_parse(trail_signer_vkey(log), strlen(trail_signer_vkey(log)), &lv, NULL) ||
		    trail_cosigner_vkey(wk, &v, NULL) || trail_cosigner_parse(v, strlen(v), &cs, NULL))
			__builtin_trap();
		trail_free(v);
		const trail_verifier *logs[1] = {lv};
		if (trail_witness_open(dir, wk, logs, NULL, 1, &w, NULL))
			__builtin_trap();
		atexit(cleanup);
	}
	if (size == 0)
		return 0;
	const char *in = (const char *)data + 1;
	size_t n = size - 1;
	char *req = NULL, *note = NULL, *text = NULL;
	size_t rl = n, tl = 0;
	if (data[0] & 1) {
		/* a real checkpoint after the fuzzed head */
		uint64_t cs_size = 0;
		trail_hash root;
		memset(root, 0, sizeof root);
		if (n >= 9) {
			n -= 9;
			cs_size = (uint8_t)in[n] % 64;
			memcpy(root, in + n + 1, 8);
		}
		char b64[64], t[256];
		trail_base64(root, 32, b64);
		int l = snprintf(t, sizeof t, "fuzz.example/log\n%llu\n%s\n", (unsigned long long)cs_size, b64);
		const trail_signer *const ss[1] = {log};
		if (trail_note_sign(t, (size_t)l, ss, 1, &note, NULL, NULL))
			__builtin_trap();
		text = strndup(t, (size_t)l);
		tl = (size_t)l;
		size_t nl = strlen(note);
		req = malloc(n + 1 + nl);
		memcpy(req, in, n);
		req[n] = '\n';
		memcpy(req + n + 1, note, nl);
		rl = n + 1 + nl;
	} else {
		req = malloc(n + 1);
		memcpy(req, in, n);
	}
	trail_witness_reply r;
	trail_witness_add_checkpoint(w, req, rl, 1700000000, &r, NULL);
	int s = r.status;
	if (s != 200 && s != 400 && s != 403 && s != 404 && s != 409 && s != 422 && s != 500)
		__builtin_trap();
	if (!r.type || (!r.body && s != 500))
		__builtin_trap();
	if (s == 409 && !strcmp(r.type, "text/x.tlog.size")) {
		if (r.len < 2 || r.body[r.len - 1] != '\n')
			__builtin_trap();
		for (size_t i = 0; i + 1 < r.len; i++)
			if (r.body[i] < '0' || r.body[i] > '9')
				__builtin_trap();
	}
	if (s == 200 && (!text || trail_cosignature_verify(cs, text, tl, r.body, r.len, NULL, NULL)))
		__builtin_trap();
	trail_witness_reply_release(&r);
	/* the input as a cosigner key and as a cosigned note */
	trail_cosigner *x = NULL;
	trail_cosigner_parse(in, n, &x, NULL);
	trail_cosigner_free(x);
	size_t got;
	const trail_cosigner *const cc[1] = {cs};
	trail_cosignatures_count(in, n, cc, 1, &got, NULL);
	trail_checkpoint_check_quorum(in, n, (const trail_verifier *const *)&lv, 1, NULL, cc, 1, 1, &got, NULL);
	free(req);
	free(text);
	trail_free(note);
	return 0;
}
