/*
 * Datanets through the library: creation, contributions (all or nothing),
 * owner decisions, snapshots that never change once taken, entries forged
 * or mismatched in the ledger, damaged objects, concurrent contributors.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/data.h"
#include "core/core.h"
#include "tap.h"

static trail_signer *key(const char *name)
{
	char *sk, *vk;
	trail_signer *s = NULL;
	trail_key_generate(name, &sk, &vk, NULL);
	trail_signer_parse(sk, strlen(sk), &s, NULL);
	trail_free(sk);
	trail_free(vk);
	return s;
}

/* A bundle of `n` text records whose text starts with `tag`. */
static int bundle(const char *datanet, const char *tag, int n, const trail_signer *k, void **b,
		  size_t *len)
{
	json_t *recs = json_array();
	for (int i = 0; i < n; i++) {
		char t[128];
		snprintf(t, sizeof t, "%s record %d, about the harbour of Oskelund.", tag, i);
		json_array_append_new(recs, json_pack("{s:s, s:s}", "text", t, "lang", "en"));
	}
	int rc = trail_bundle_create(recs, datanet, "CC-BY-4.0", NULL, k, 0, b, len, NULL);
	json_decref(recs);
	return rc;
}

static uint64_t contribute(trail_store *s, const char *datanet, const char *tag, int n,
			   const trail_signer *k, char digest[72])
{
	void *b;
	size_t len;
	json_t *r = NULL;
	trail_error e = {0};
	if (bundle(datanet, tag, n, k, &b, &len) ||
	    trail_datanet_contribute(s, datanet, b, len, k, &r, &e)) {
		diag("contribute: %s", e.msg);
		return UINT64_MAX;
	}
	uint64_t idx = (uint64_t)json_integer_value(json_object_get(r, "entry"));
	if (digest)
		snprintf(digest, 72, "%s", json_string_value(json_object_get(r, "bundle")));
	trail_free(b);
	json_decref(r);
	return idx;
}

/* The snapshot as NDJSON text (trail_malloc'd), or NULL with *rc set. */
static char *snapshot(trail_store *s, const char *name, uint64_t size, size_t *count, int *rc)
{
	trail_datanet_iter *it;
	trail_buf out = {0};
	json_t *r;
	*count = 0;
	if ((*rc = trail_datanet_iter_open(s, name, size, &it, NULL)))
		return NULL;
	while (!(*rc = trail_datanet_iter_next(it, &r, NULL)) && r) {
		char *line;
		size_t n;
		trail_jcs(r, &line, &n, NULL);
		trail_buf_put(&out, line, n);
		trail_buf_put(&out, "\n", 1);
		trail_free(line);
		json_decref(r);
		(*count)++;
	}
	trail_datanet_iter_free(it);
	if (*rc) {
		trail_buf_release(&out);
		return NULL;
	}
	if (!out.p)
		trail_buf_put(&out, "", 0);
	return out.p;
}

static uint64_t size_now(trail_store *s)
{
	trail_ledger *l;
	trail_ledger_open(s, 0, &l, NULL);
	uint64_t n = trail_ledger_size(l);
	trail_ledger_free(l);
	return n;
}

/* Append a signed entry directly, as trail-log append would. */
static uint64_t forge(trail_store *s, json_t *e, const trail_signer *k)
{
	trail_ledger *l;
	uint64_t idx = UINT64_MAX;
	trail_json_sign(e, k, NULL);
	if (!trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, NULL)) {
		if (trail_ledger_append(l, e, &idx, NULL) || trail_ledger_commit(l, NULL))
			idx = UINT64_MAX;
		trail_ledger_free(l);
	}
	json_decref(e);
	return idx;
}

static int stop_at_two(void *ctx, const json_t *r)
{
	(void)r;
	return ++*(int *)ctx == 2 ? 42 : 0;
}

static void specs(void)
{
	char *name;
	uint64_t size;
	ok(trail_datanet_spec("atlas@12", &name, &size, NULL) == 0 && !strcmp(name, "atlas") && size == 12,
	   "NAME@SIZE parses");
	trail_free(name);
	ok(trail_datanet_spec("atlas", &name, &size, NULL) == 0 && size == 0, "NAME alone: size 0");
	trail_free(name);
	const char *bad[] = {"atlas@0", "atlas@", "@5", "a b@3", "atlas@-1", "atlas@+4", "atlas@1x",
			     "atlas@99999999999999999999999", "a/b", "", "a@b@3"};
	int refused = 0;
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		int rc = trail_datanet_spec(bad[i], &name, &size, NULL);
		refused += rc == TRAIL_EUSAGE;
		if (!rc)
			diag("'%s' accepted", bad[i]), trail_free(name);
	}
	ok(refused == (int)(sizeof bad / sizeof *bad), "malformed NAME[@SIZE] refused (%d of %zu)", refused,
	   sizeof bad / sizeof *bad);
	json_t *r = json_pack("{s:s, s:s}", "text", "x", "source_note", "kept");
	ok(trail_datanet_check_record(r, "text", NULL) == 0, "extra string fields are allowed");
	json_object_set_new(r, "entry", json_string("7"));
	ok(trail_datanet_check_record(r, "text", NULL) == TRAIL_EDATA, "a reserved field is refused");
	json_decref(r);
	r = json_pack("{s:s, s:i}", "text", "x", "n", 1);
	ok(trail_datanet_check_record(r, "text", NULL) == TRAIL_EDATA, "a non-string field is refused");
	json_decref(r);
	r = json_pack("{s:s}", "prompt", "x");
	ok(trail_datanet_check_record(r, "instruct", NULL) == TRAIL_EDATA, "instruct needs a completion");
	json_decref(r);
}

int main(void)
{
	trail_init();
	specs();

	char home[] = "/tmp/trail-datanet.XXXXXX", cmd[64];
	trail_error e = {0};
	if (!mkdtemp(home) || trail_store_init(home, "datanet.test", NULL, &e)) {
		ok(0, "store: %s", e.msg);
		return tap_done();
	}
	trail_store *s;
	trail_store_open(home, &s, NULL);
	trail_signer *owner = key("owner"), *alice = key("alice"), *bob = key("bob"), *mallory = key("mallory");
	uint64_t idx;
	json_t *pol = json_pack("{s:{s:{s:i}}}", "rules", "gopher-word-count", "min", 3);

	ok(trail_datanet_create(s, "atlas", "text", "CC-BY-4.0", pol, owner, &idx, &e) == 0 && idx == 0,
	   "create atlas%s", e.msg);
	ok(trail_datanet_create(s, "atlas", "text", NULL, NULL, alice, &idx, &e) == TRAIL_EDATA,
	   "a second atlas is refused: %s", e.msg);
	ok(trail_datanet_create(s, "a@b", "text", NULL, NULL, owner, &idx, &e) == TRAIL_EUSAGE,
	   "a name with '@' is refused: %s", e.msg);
	ok(trail_datanet_create(s, "poems", "verse", NULL, NULL, owner, &idx, &e) == TRAIL_EUSAGE,
	   "an unknown schema is refused: %s", e.msg);
	ok(trail_datanet_create(s, "qa", "instruct", NULL, NULL, owner, &idx, &e) == 0 && idx == 1, "create qa");
	json_t *def, *p2;
	ok(trail_datanet_policy(s, "atlas", &def, &p2, &e) == 0 && json_equal(p2, pol) &&
	   !strcmp(json_string_value(json_object_get(def, "owner")), trail_signer_vkey(owner)),
	   "the datanet entry names its owner and its policy object");
	json_decref(def);
	json_decref(p2);

	/* contributions */
	void *b;
	size_t blen;
	json_t *rc_json = NULL;
	bundle("atlas", "Alice", 2, alice, &b, &blen);
	trail_error_clear(&e);
	ok(trail_datanet_contribute(s, "atlas", b, blen, alice, &rc_json, &e) == 0, "alice contributes%s", e.msg);
	uint64_t ea = (uint64_t)json_integer_value(json_object_get(rc_json, "entry"));
	char da[72];
	snprintf(da, sizeof da, "%s", json_string_value(json_object_get(rc_json, "bundle")));
	{
		char want[72];
		trail_digest_str(b, blen, want);
		ok(ea == 2 && !strcmp(da, want) && json_integer_value(json_object_get(rc_json, "records")) == 2,
		   "the receipt names entry, bundle digest and record count");
		const char *proof = json_string_value(json_object_get(rc_json, "proof"));
		const trail_verifier *op = trail_store_operator_vkey(s);
		uint64_t pi = 99;
		trail_hash leaf;
		ok(proof && trail_receipt_verify(proof, strlen(proof), &op, 1, "datanet.test", &pi, leaf, &e) == 0 && pi == ea,
		   "its tlog-proof verifies offline%s", e.msg);
		ok(strstr(json_string_value(json_object_get(rc_json, "checkpoint")), "datanet.test\n") != NULL,
		   "and it carries the checkpoint");
	}
	json_decref(rc_json);
	ok(trail_store_has(s, da), "the bundle is an object in the store");

	uint64_t before = size_now(s);
	ok(trail_datanet_contribute(s, "atlas", b, blen, bob, &rc_json, &e) == TRAIL_EVERIFY,
	   "bob cannot add alice's bundle: %s", e.msg);
	ok(trail_datanet_contribute(s, "qa", b, blen, alice, &rc_json, &e) == TRAIL_EDATA,
	   "a bundle for atlas is not added to qa: %s", e.msg);
	ok(trail_datanet_contribute(s, "nowhere", b, blen, alice, &rc_json, &e) == TRAIL_EDATA,
	   "nor to a datanet it does not name");
	trail_free(b);
	bundle("nowhere", "Alice", 1, alice, &b, &blen);
	ok(trail_datanet_contribute(s, "nowhere", b, blen, alice, &rc_json, &e) == TRAIL_ENOINPUT,
	   "a missing datanet: %s", e.msg);
	trail_free(b);
	{
		json_t *recs = json_pack("[{s:s, s:s}]", "prompt", "Capital of Varnholm?", "answer", "Oskelund");
		trail_bundle_create(recs, "qa", NULL, NULL, alice, 0, &b, &blen, NULL);
		ok(trail_datanet_contribute(s, "qa", b, blen, alice, &rc_json, &e) == TRAIL_EDATA,
		   "records that do not fit the schema: %s", e.msg);
		trail_free(b);
		json_decref(recs);
		recs = json_pack("[{s:s, s:s}]", "text", "A record with a reserved field.", "bundle", "x");
		trail_bundle_create(recs, "atlas", NULL, NULL, alice, 0, &b, &blen, NULL);
		ok(trail_datanet_contribute(s, "atlas", b, blen, alice, &rc_json, &e) == TRAIL_EDATA,
		   "a record with a reserved field: %s", e.msg);
		trail_free(b);
		json_decref(recs);
	}
	ok(size_now(s) == before, "refused contributions left the ledger as it was");

	/* decisions and snapshots */
	size_t count;
	int rc;
	char *snap = snapshot(s, "atlas", 0, &count, &rc);
	ok(snap && count == 0, "nothing is in the snapshot before approval");
	trail_free(snap);
	ok(trail_datanet_decide(s, "atlas", ea, 1, NULL, alice, &idx, &e) == TRAIL_EVERIFY,
	   "only the owner decides: %s", e.msg);
	ok(trail_datanet_decide(s, "atlas", 0, 1, NULL, owner, &idx, &e) == TRAIL_ENOINPUT,
	   "a decision names a contribution: %s", e.msg);
	ok(trail_datanet_decide(s, "atlas", ea, 1, "looks good", owner, &idx, &e) == 0, "the owner approves");
	uint64_t s1 = size_now(s);
	char *snap1 = snapshot(s, "atlas", s1, &count, &rc);
	ok(snap1 && count == 2, "the snapshot holds alice's two records");
	{
		trail_datanet_iter *it;
		json_t *r;
		trail_datanet_iter_open(s, "atlas", 0, &it, NULL);
		trail_datanet_iter_next(it, &r, NULL);
		json_t *bare = json_copy(r);
		json_object_del(bare, "record");
		json_object_del(bare, "contributor");
		json_object_del(bare, "bundle");
		json_object_del(bare, "entry");
		char id[72];
		trail_record_id(bare, id, NULL);
		ok(trail_datanet_iter_size(it) == s1 && !strcmp(json_string_value(json_object_get(r, "record")), id) &&
		   !strcmp(json_string_value(json_object_get(r, "contributor")), trail_signer_vkey(alice)) &&
		   !strcmp(json_string_value(json_object_get(r, "bundle")), da) &&
		   json_integer_value(json_object_get(r, "entry")) == (json_int_t)ea &&
		   !strcmp(json_string_value(json_object_get(r, "lang")), "en") &&
		   !strncmp(json_string_value(json_object_get(r, "text")), "Alice record 0", 14),
		   "each record: its fields, its id, contributor, bundle and entry");
		json_decref(bare);
		json_decref(r);
		trail_datanet_iter_free(it);
	}
	char db[72];
	uint64_t eb = contribute(s, "atlas", "Bob", 3, bob, db);
	trail_datanet_decide(s, "atlas", eb, 1, NULL, owner, &idx, NULL);
	uint64_t s2 = size_now(s);
	char *snap2 = snapshot(s, "atlas", 0, &count, &rc);
	ok(count == 5 && snap2 && !strncmp(snap2, snap1, strlen(snap1)),
	   "bob's approved records follow alice's, in ledger order");
	trail_datanet_decide(s, "atlas", eb, 0, "duplicates", owner, &idx, NULL);
	char *snap3 = snapshot(s, "atlas", 0, &count, &rc);
	ok(count == 2 && !strcmp(snap3, snap1), "the owner's latest decision counts: rejected again");
	char *again = snapshot(s, "atlas", s2, &count, &rc);
	ok(again && !strcmp(again, snap2), "atlas@%llu is unchanged by the later rejection", (unsigned long long)s2);
	trail_free(again);
	trail_free(snap3);

	/* an approval that leaves records out */
	{
		trail_bundle *bb;
		char dd[72];
		ok(trail_datanet_load_bundle(s, db, &bb, dd, &e) == 0 && json_array_size(bb->ids) == 3, "bob's bundle");
		json_t *one = json_pack("[{s:i, s:O}]", "n", 2, "record", json_array_get(bb->ids, 1));
		json_t *wrong = json_pack("[{s:i, s:O}]", "n", 1, "record", json_array_get(bb->ids, 1));
		json_t *all = json_pack("[{s:i, s:O}, {s:i, s:O}, {s:i, s:O}]", "n", 1, "record",
					json_array_get(bb->ids, 0), "n", 2, "record", json_array_get(bb->ids, 1),
					"n", 3, "record", json_array_get(bb->ids, 2));
		uint64_t sz = size_now(s);
		ok(trail_datanet_approve_records(s, "atlas", eb, 1, wrong, NULL, owner, &idx, &e) == TRAIL_EUSAGE,
		   "a record named at the wrong position is refused: %s", e.msg);
		ok(trail_datanet_approve_records(s, "atlas", eb, 1, all, NULL, owner, &idx, &e) == TRAIL_EUSAGE,
		   "rejecting every record is refused: %s", e.msg);
		ok(trail_datanet_approve_records(s, "atlas", eb, 0, one, NULL, owner, &idx, &e) == TRAIL_EUSAGE,
		   "only an approval names rejected records");
		ok(size_now(s) == sz, "refused decisions append nothing");
		ok(trail_datanet_approve_records(s, "atlas", eb, 1, one, NULL, owner, &idx, &e) == 0,
		   "bob's bundle approved but for its second record");
		char *snap4 = snapshot(s, "atlas", 0, &count, &rc);
		const char *id2 = json_string_value(json_array_get(bb->ids, 1));
		ok(count == 4 && snap4 && !strstr(snap4, id2) && strstr(snap4, json_string_value(json_array_get(bb->ids, 2))),
		   "the snapshot holds bob's other two records");
		trail_free(snap4);
		trail_datanet_decide(s, "atlas", eb, 0, NULL, owner, &idx, NULL);
		snap4 = snapshot(s, "atlas", 0, &count, &rc);
		ok(count == 2 && !strcmp(snap4, snap1), "a later rejection takes the rest out");
		trail_free(snap4);
		json_decref(one);
		json_decref(wrong);
		json_decref(all);
		trail_bundle_free(bb);
	}

	/* forged and mismatched entries are ignored */
	forge(s, json_pack("{s:s, s:s, s:I, s:s, s:s}", "type", "approval", "datanet", "atlas", "contribution",
			   (json_int_t)eb, "bundle", db, "decision", "approve"), mallory);
	forge(s, json_pack("{s:s, s:s, s:I, s:s, s:s}", "type", "approval", "datanet", "atlas", "contribution",
			   (json_int_t)eb, "bundle", da, "decision", "approve"), owner);
	uint64_t ef = forge(s, json_pack("{s:s, s:s, s:s, s:s, s:i, s:s}", "type", "contribution", "datanet", "atlas",
					 "bundle", da, "contributor", trail_signer_vkey(alice), "records", 2, "root", "x"),
			    mallory);
	trail_datanet_decide(s, "atlas", ef, 1, NULL, owner, &idx, &e);
	snap3 = snapshot(s, "atlas", 0, &count, &rc);
	ok(snap3 && !strcmp(snap3, snap1),
	   "approvals by others, for another bundle, and contributions signed for someone else change nothing");
	trail_free(snap3);

	/* the same bundle contributed twice appears once per contribution */
	uint64_t ea2 = contribute(s, "atlas", "Alice", 2, alice, NULL);
	trail_datanet_decide(s, "atlas", ea2, 1, NULL, owner, &idx, NULL);
	snap3 = snapshot(s, "atlas", 0, &count, &rc);
	ok(count == 4 && !strncmp(snap3, snap1, strlen(snap1)), "a second contribution of the same bundle adds its records again");
	trail_free(snap3);
	{
		int seen = 0;
		ok(trail_datanet_snapshot(s, "atlas", 0, stop_at_two, &seen, NULL) == 42 && seen == 2,
		   "a callback's non-zero return stops the walk and comes back");
	}
	ok(trail_datanet_iter_open(s, "atlas", size_now(s) + 1, &(trail_datanet_iter *){NULL}, &e) == TRAIL_ENOINPUT,
	   "a size beyond the ledger: %s", e.msg);
	ok(trail_datanet_iter_open(s, "qa", 1, &(trail_datanet_iter *){NULL}, &e) == TRAIL_ENOINPUT,
	   "qa did not exist at size 1: %s", e.msg);

	/* an approved contribution whose entry does not match its bundle stops the read */
	trail_datanet_create(s, "side", "text", NULL, NULL, owner, &idx, NULL);
	char dside[72];
	contribute(s, "side", "Side", 1, alice, dside);
	uint64_t em = forge(s, json_pack("{s:s, s:s, s:s, s:s, s:i, s:s}", "type", "contribution", "datanet", "side",
					 "bundle", dside, "contributor", trail_signer_vkey(mallory), "records", 1,
					 "root", "x"), mallory);
	trail_datanet_decide(s, "side", em, 1, NULL, owner, &idx, NULL);
	snap3 = snapshot(s, "side", 0, &count, &rc);
	ok(!snap3 && rc == TRAIL_EVERIFY, "mallory's entry for alice's bundle is detected when read");
	/* four processes contributing at once all land */
	{
		uint64_t n0 = size_now(s);
		trail_datanet_create(s, "busy", "text", NULL, NULL, owner, &idx, NULL);
		pid_t pids[4];
		trail_signer *ks[4] = {alice, bob, mallory, owner};
		for (int i = 0; i < 4; i++) {
			if ((pids[i] = fork()) == 0) {
				trail_store *cs;
				int bad = trail_store_open(home, &cs, NULL);
				for (int j = 0; j < 5 && !bad; j++) {
					char tag[32];
					snprintf(tag, sizeof tag, "Writer %d.%d", i, j);
					bad = contribute(cs, "busy", tag, 2, ks[i], NULL) == UINT64_MAX;
				}
				trail_store_free(cs);
				_exit(bad);
			}
		}
		int all = 1;
		for (int i = 0; i < 4; i++) {
			int st;
			waitpid(pids[i], &st, 0);
			all &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
		}
		ok(all && size_now(s) == n0 + 1 + 20, "20 contributions from 4 processes at once all land");
		trail_ledger *l;
		trail_ledger_open(s, 0, &l, NULL);
		trail_error_clear(&e);
		ok(trail_ledger_verify(l, NULL, NULL, &e) == 0, "and the ledger verifies%s", e.msg);
		trail_ledger_free(l);
	}

	/* a damaged object is detected too */
	{
		uint64_t es = contribute(s, "side", "Damaged", 1, bob, dside);
		trail_datanet_decide(s, "side", es, 1, NULL, owner, &idx, NULL);
		uint64_t at = size_now(s);
		char *path = trail_store_object_path(s, dside);
		void *x;
		size_t xn;
		trail_read_file(path, 0, &x, &xn, NULL);
		((char *)x)[xn / 2] ^= 1;
		chmod(path, 0644);
		trail_write_atomic(path, x, xn, 0444, NULL);
		trail_free(x);
		trail_free(path);
		trail_datanet_iter *it;
		json_t *r = NULL;
		int got = trail_datanet_iter_open(s, "side", at, &it, NULL);
		while (!got && !(got = trail_datanet_iter_next(it, &r, NULL)) && r)
			json_decref(r);
		trail_datanet_iter_free(it);
		ok(got == TRAIL_EVERIFY || got == TRAIL_EDATA, "a damaged bundle object stops the snapshot (%s)",
		   trail_strerror(got));
	}

	trail_free(snap1);
	trail_free(snap2);
	json_decref(pol);
	trail_signer_free(owner);
	trail_signer_free(alice);
	trail_signer_free(bob);
	trail_signer_free(mallory);
	trail_store_free(s);
	snprintf(cmd, sizeof cmd, "rm -rf %s", home);
	if (system(cmd))
		diag("could not remove %s", home);
	return tap_done();
}
