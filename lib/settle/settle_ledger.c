/*
 * A settlement recorded in the ledger, once per epoch: the result stored as
 * an object, a signed `settlement` entry appended under the writer lock.
 */
#include <stdint.h>
#include <string.h>

#include "ledger/ledger.h"
#include "settle/settle_int.h"

/*
 * The settlement of `epoch` recorded in the ledger: *index, or
 * UINT64_MAX when there is none. Entries are canonical JSON, so a plain
 * byte search finds the candidates before any is parsed.
 */
static int find_settlement(trail_ledger *l, const char *epoch, uint64_t *index, json_t **entry, trail_error *err)
{
	static const char type[] = "\"type\":\"settlement\"";
	sbuf pat = {0};
	int rc = TRAIL_OK;
	*index = UINT64_MAX;
	*entry = NULL;
	sb_put(&pat, "\"epoch\":", 8);
	settle_sb_jstr(&pat, epoch, strlen(epoch));
	if (pat.oom)
		return oom(err);
	for (uint64_t i = 0, n = trail_ledger_size(l); i < n && !rc && !*entry; i++) {
		char *b;
		size_t len;
		json_t *j;
		if ((rc = trail_ledger_get(l, i, &b, &len, err)))
			break;
		if (memmem(b, len, type, sizeof type - 1) && memmem(b, len, pat.p, pat.n) &&
		    trail_json_parse(b, len, "log", &j, NULL) == TRAIL_OK) {
			/* the byte search is only a filter: "type" and "epoch" must be the entry's own members */
			const char *e = json_string_value(json_object_get(j, "epoch"));
			const char *t = json_string_value(json_object_get(j, "type"));
			if (e && t && !strcmp(t, "settlement") && !strcmp(e, epoch)) {
				*entry = j;
				*index = i;
			} else {
				json_decref(j);
			}
		}
		trail_free(b);
	}
	trail_free(pat.p);
	return rc;
}

int trail_settle_record(trail_settle *s, trail_store *st, const char *epoch, const trail_signer *key,
			json_t **out, int *recorded, trail_error *err)
{
	trail_ledger *l = NULL;
	json_t *res = NULL, *e = NULL, *prev = NULL;
	uint64_t at;
	int rc;
	*out = NULL;
	*recorded = 0;
	if ((rc = trail_settle_result(s, epoch, &res, err)))
		return rc;
	json_t *ep = json_array_get(res, json_array_size(res) - 1);
	const char *in = json_string_value(json_object_get(ep, "inputs_digest"));
	const char *pd = json_string_value(json_object_get(ep, "policy_digest"));
	/* the lock is held from the search to the commit: one settlement per epoch */
	if ((rc = trail_ledger_open(st, TRAIL_LEDGER_WRITE | TRAIL_LEDGER_NOWAIT, &l, err)) ||
	    (rc = find_settlement(l, epoch, &at, &prev, err)))
		goto out;
	if (prev) {
		const char *ri = json_string_value(json_object_get(prev, "inputs_digest"));
		const char *rp = json_string_value(json_object_get(prev, "policy_digest"));
		const char *ro = json_string_value(json_object_get(prev, "result_object"));
		void *ob;
		size_t ol;
		json_t *old;
		if (!ri || !rp || !ro || strcmp(ri, in) || strcmp(rp, pd)) {
			rc = trail_error_set(err, TRAIL_EVERIFY, "epoch %s was settled at entry %llu with other %s", epoch,
					     (unsigned long long)at, ri && !strcmp(ri, in) ? "policy" : "inputs");
			goto out;
		}
		if ((rc = trail_store_get(st, ro, &ob, &ol, err)))
			goto out;
		rc = trail_json_parse(ob, ol, ro, &old, err);
		trail_free(ob);
		if (rc)
			goto out;
		json_decref(res);
		res = old;
		*recorded = 1;
		goto out;
	}
	char *text, od[72];
	size_t tl;
	if ((rc = trail_jcs(res, &text, &tl, err)))
		goto out;
	rc = trail_store_put(st, text, tl, od, err);
	trail_free(text);
	if (rc || (!key && (rc = trail_store_operator(st, &key, err))))
		goto out;
	e = json_pack("{s:s, s:s, s:s, s:s, s:s, s:O, s:O, s:O, s:O}", "type", "settlement", "epoch", epoch,
		      "inputs_digest", in, "policy_digest", pd, "result_object", od, "fees", json_object_get(ep, "fees"),
		      "paid", json_object_get(ep, "paid"), "retained", json_object_get(ep, "retained"), "digest",
		      json_object_get(ep, "digest"));
	/* the batches the inputs were found in (trail_settle_anchor); absent when none, as before */
	/* and the stake entries a "stakes": "ledger" policy read */
	if (!e || (s->anchors && json_array_size(s->anchors) && json_object_set(e, "batches", s->anchors)) ||
	    (s->stake_refs && json_object_set(e, "stakes", s->stake_refs))) {
		rc = oom(err);
		goto out;
	}
	if (!(rc = trail_json_sign(e, key, err)) && !(rc = trail_ledger_append(l, e, &at, err)))
		rc = trail_ledger_commit(l, err);
out:
	json_decref(e);
	json_decref(prev);
	trail_ledger_free(l);
	if (rc)
		json_decref(res);
	else
		*out = res;
	return rc;
}

/* Whether entry j is the attribution batch of `digest` (its own members, not a byte match). */
static int is_batch(const json_t *j, const char *digest)
{
	const char *t = json_string_value(json_object_get(j, "type"));
	const char *d = json_string_value(json_object_get(j, "records_object"));
	return t && d && !strcmp(t, "attribution-batch") && !strcmp(d, digest);
}

int trail_settle_anchor(trail_settle *s, trail_store *st, const char *epoch, const char *digest, uint64_t records,
			uint64_t want, uint64_t *index, trail_error *err)
{
	trail_ledger *l = NULL;
	json_t *found = NULL;
	uint64_t at = UINT64_MAX;
	int rc;
	*index = UINT64_MAX;
	if ((rc = trail_ledger_open(st, 0, &l, err)))
		return rc;
	uint64_t n = trail_ledger_size(l);
	if (want != UINT64_MAX && want >= n) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "--batch %llu: the ledger has %llu entries",
				     (unsigned long long)want, (unsigned long long)n);
		goto out;
	}
	/* the latest batch of these bytes: a re-run of attr-score records the same object again */
	for (uint64_t k = n; k-- > 0 && !rc && !found;) {
		uint64_t i = want != UINT64_MAX ? want : k;
		char *b;
		size_t len;
		json_t *j;
		if ((rc = trail_ledger_get(l, i, &b, &len, err)))
			break;
		if (memmem(b, len, digest, strlen(digest)) && trail_json_parse(b, len, "log", &j, NULL) == TRAIL_OK) {
			if (is_batch(j, digest)) {
				found = j;
				at = i;
			} else {
				json_decref(j);
			}
		}
		trail_free(b);
		if (want != UINT64_MAX)
			break;
	}
	if (rc)
		goto out;
	if (!found) {
		if (want != UINT64_MAX)
			rc = trail_error_set(err, TRAIL_EVERIFY,
					     "entry %llu is not the attribution batch of these records (%s)",
					     (unsigned long long)want, digest);
		goto out;
	}
	const json_t *je = json_object_get(found, "epoch");
	const json_t *jr = json_object_get(found, "records");
	if (je && (!json_is_string(je) || strcmp(json_string_value(je), epoch))) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "the attribution batch at entry %llu is of epoch %s, not %s",
				     (unsigned long long)at, json_is_string(je) ? json_string_value(je) : "(not a string)",
				     epoch);
		goto out;
	}
	if (!json_is_integer(jr) || (uint64_t)json_integer_value(jr) != records) {
		rc = trail_error_set(err, TRAIL_EVERIFY,
				     "the attribution batch at entry %llu holds %lld records, the input %llu",
				     (unsigned long long)at, (long long)json_integer_value(jr), (unsigned long long)records);
		goto out;
	}
	if (!s->anchors && !(s->anchors = json_array())) {
		rc = oom(err);
		goto out;
	}
	if (json_array_append_new(s->anchors, json_pack("{s:I, s:s}", "entry", (json_int_t)at, "records_object", digest))) {
		rc = oom(err);
		goto out;
	}
	*index = at;
out:
	json_decref(found);
	trail_ledger_free(l);
	return rc;
}

/* ---- stakes ------------------------------------------------------------------------------ */

#define STAKE_MAX (((int64_t)1 << 53) - 1)

int trail_settle_post_stake(trail_store *st, const trail_signer *staker, int64_t amount, uint64_t *index,
			    trail_error *err)
{
	trail_ledger *l = NULL;
	int rc;
	if (amount < 0 || amount > STAKE_MAX)
		return trail_error_set(err, TRAIL_EUSAGE, "a stake is an integer from 0 to 2^53-1");
	json_t *e = json_pack("{s:s, s:I}", "type", "stake", "amount", (json_int_t)amount);
	if (!e)
		return oom(err);
	if (!(rc = trail_json_sign(e, staker, err)) && !(rc = trail_ledger_open(st, TRAIL_LEDGER_WRITE, &l, err)) &&
	    !(rc = trail_ledger_append(l, e, index, err)))
		rc = trail_ledger_commit(l, err);
	trail_ledger_free(l);
	json_decref(e);
	return rc;
}

int trail_settle_stakes_from_ledger(const trail_settle *s)
{
	return s->stakes_ledger;
}

static int by_entry(const void *a, const void *b)
{
	json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "entry"));
	json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "entry"));
	return (x > y) - (x < y);
}

int trail_settle_ledger_stakes(trail_settle *s, trail_store *st, const char *epoch, trail_error *err)
{
	static const char type[] = "\"type\":\"stake\"";
	trail_ledger *l = NULL;
	json_t *settled = NULL, *latest = json_object(), *refs = json_array();
	uint64_t end;
	int rc;
	if (!s->stakes_ledger || s->stake_refs) {
		json_decref(latest);
		json_decref(refs);
		return TRAIL_OK;
	}
	if (!latest || !refs) {
		rc = oom(err);
		goto out;
	}
	if ((rc = trail_ledger_open(st, 0, &l, err)) || (rc = find_settlement(l, epoch, &end, &settled, err)))
		goto out;
	if (end == UINT64_MAX)
		end = trail_ledger_size(l);
	for (uint64_t i = 0; i < end && !rc; i++) {
		char *b;
		size_t len;
		json_t *j;
		if ((rc = trail_ledger_get(l, i, &b, &len, err)))
			break;
		if (memmem(b, len, type, sizeof type - 1) && trail_json_parse(b, len, "log", &j, NULL) == TRAIL_OK) {
			const char *t = json_string_value(json_object_get(j, "type"));
			const char *who = json_string_value(json_object_get(j, "signer"));
			const json_t *a = json_object_get(j, "amount");
			if (t && !strcmp(t, "stake")) {
				if (!who || !json_is_integer(a) || json_integer_value(a) < 0 ||
				    json_integer_value(a) > STAKE_MAX)
					rc = trail_error_set(err, TRAIL_EVERIFY, "stake entry %llu: a signed amount "
						"from 0 to 2^53-1", (unsigned long long)i);
				else if (trail_json_verify(j, NULL))
					rc = trail_error_set(err, TRAIL_EVERIFY, "stake entry %llu: bad signature",
							     (unsigned long long)i);
				else if (json_object_set_new(latest, who, json_pack("{s:I, s:s, s:O}", "entry",
						(json_int_t)i, "staker", who, "amount", a)))
					rc = oom(err);
			}
			json_decref(j);
		}
		trail_free(b);
	}
	const char *k;
	json_t *v;
	json_object_foreach(latest, k, v) {
		if (rc)
			break;
		if (settle_stake_input(s, k, (uint64_t)json_integer_value(json_object_get(v, "amount"))) ||
		    json_array_append(refs, v))
			rc = oom(err);
	}
	if (!rc) {
		/* in ledger order, whatever the hash order of the object */
		size_t n = json_array_size(refs);
		json_t **tmp = trail_malloc((n ? n : 1) * sizeof *tmp), *sorted = json_array();
		for (size_t i = 0; tmp && i < n; i++)
			tmp[i] = json_array_get(refs, i);
		if (tmp)
			qsort(tmp, n, sizeof *tmp, by_entry);
		for (size_t i = 0; tmp && sorted && i < n; i++)
			json_array_append(sorted, tmp[i]);
		if (!tmp || !sorted) {
			json_decref(sorted);
			rc = oom(err);
		} else {
			s->stake_refs = sorted;
		}
		trail_free(tmp);
	}
out:
	json_decref(settled);
	json_decref(latest);
	json_decref(refs);
	trail_ledger_free(l);
	return rc;
}
