/*
 * Out-of-memory injection: the N-th allocation fails, for every N a
 * scenario reaches. Each call must fail cleanly (an error code, no crash,
 * no leak under ASan) and the ledger must still verify afterwards.
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "tap.h"

static long countdown = -1; /* allocations left before failing; -1 = never */
static long allocations;

static void *fail_malloc(size_t n)
{
	allocations++;
	if (countdown == 0)
		return NULL;
	if (countdown > 0)
		countdown--;
	return malloc(n);
}

static void *fail_realloc(void *p, size_t n)
{
	allocations++;
	if (countdown == 0)
		return NULL;
	if (countdown > 0)
		countdown--;
	return realloc(p, n);
}

static const char *home;
static int parse_step; /* set when the failure came from parsing JSON */

/* One pass over the library's main paths; returns the first error code. */
static int scenario(int i)
{
	trail_store *s = NULL;
	trail_ledger *l = NULL;
	json_t *j = NULL;
	char *c = NULL, *note = NULL, *text = NULL, *sk = NULL, *vk = NULL;
	trail_signer *sig = NULL;
	trail_verifier *ver = NULL;
	char dg[72];
	int rc;
	const char *doc = "{\"type\":\"oom\",\"list\":[1,2.5,\"x\",{\"k\":null}],\"s\":\"\\u00e9\"}";
	parse_step = 1;
	if ((rc = trail_json_parse(doc, strlen(doc), "t", &j, NULL)))
		goto out;
	parse_step = 0;
	if (json_object_set_new(j, "i", json_integer(i))) {
		rc = TRAIL_ENOMEM;
		goto out;
	}
	if ((rc = trail_jcs(j, &c, NULL, NULL)))
		goto out;
	if ((rc = trail_key_generate("k", &sk, &vk, NULL)) ||
	    (rc = trail_signer_parse(sk, strlen(sk), &sig, NULL)) ||
	    (rc = trail_verifier_parse(vk, strlen(vk), &ver, NULL)) ||
	    (rc = trail_note_sign("hi\n", 3, (const trail_signer *const *)&sig, 1, &note, NULL, NULL)) ||
	    (rc = trail_note_open(note, strlen(note), (const trail_verifier *const *)&ver, 1, &text, NULL, NULL)) ||
	    (rc = trail_json_sign(j, sig, NULL)))
		goto out;
	if ((rc = trail_store_open(home, &s, NULL)) || (rc = trail_store_put(s, c, strlen(c), dg, NULL)) ||
	    (rc = trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, NULL)))
		goto out;
	if ((rc = trail_ledger_append(l, j, NULL, NULL)) || (rc = trail_ledger_commit(l, NULL)))
		goto out;
	char *e;
	if ((rc = trail_ledger_get(l, trail_ledger_size(l) - 1, &e, NULL, NULL)))
		goto out;
	trail_free(e);
	char *cp;
	if ((rc = trail_ledger_checkpoint(l, &cp, NULL)))
		goto out;
	trail_free(cp);
	char *rcpt;
	if ((rc = trail_ledger_receipt(l, 0, &rcpt, NULL)))
		goto out;
	trail_free(rcpt);
out:
	trail_ledger_free(l);
	trail_store_free(s);
	json_decref(j);
	trail_free(c);
	trail_free(note);
	trail_free(text);
	trail_free(sk);
	trail_free(vk);
	trail_signer_free(sig);
	trail_verifier_free(ver);
	return rc;
}

int main(void)
{
	char dir[] = "/tmp/trail-oom-XXXXXX";
	trail_init();
	ok(mkdtemp(dir) != NULL, "temp dir");
	char *h = trail_path(dir, "h");
	home = h;
	ok(trail_store_init(home, "oom.test/log", NULL, NULL) == 0, "store");
	trail_set_alloc(fail_malloc, fail_realloc, free);
	allocations = 0;
	ok(scenario(0) == 0, "scenario runs without failures");
	long total = allocations;
	diag("the scenario makes %ld allocations", total);
	int bad = 0, failed = 0;
	for (long n = 0; n < total; n++) {
		countdown = n;
		int rc = scenario((int)n + 1);
		countdown = -1;
		/* jansson cannot always tell a failed allocation from bad syntax */
		if (rc == TRAIL_ENOMEM || (rc == TRAIL_EDATA && parse_step))
			failed++;
		else if (rc != TRAIL_OK) {
			bad++;
			diag("allocation %ld: unexpected error %d", n, rc);
		}
	}
	ok(bad == 0, "every injected failure gives TRAIL_ENOMEM or is absorbed (%d of %ld reported)", failed,
	   total);
	trail_set_alloc(NULL, NULL, NULL);
	trail_store *s;
	trail_ledger *l;
	trail_error e = {0};
	ok(trail_store_open(home, &s, &e) == 0 && trail_ledger_open(s, 0, &l, &e) == 0 &&
	   trail_ledger_verify(l, NULL, NULL, &e) == 0, "the ledger verifies after %ld failures: %s", total, e.msg);
	diag("ledger size %llu", (unsigned long long)trail_ledger_size(l));
	trail_ledger_free(l);
	trail_store_free(s);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	ok(system(cmd) == 0, "cleanup");
	trail_free(h);
	return tap_done();
}
