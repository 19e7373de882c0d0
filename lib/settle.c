#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "json.h"
#include "ledger.h"
#include "settle.h"
#include "util.h"

typedef unsigned __int128 u128;

#define SCALE 1000000000ULL /* shares as integers */

typedef struct payee {
	char *name;
	u128 acc;        /* sum over records of fee_milli * weight */
	long rejected, flagged;
	double poisoning, negative;
} payee;

struct trail_settle {
	json_t *policy;
	long long fee_p, fee_c;
	long long bps[4]; /* platform, model, stakers, contributors */
	const char *platform, *model_owner;
	long long max_rejected, max_flagged, slash_bps;
	double max_poisoning, min_influence;
	payee *tab;
	size_t cap, n;
	u128 fee_milli;  /* sum of fees, in 1/1000 minor units */
	u128 full;       /* sum of fee_milli * SCALE: what full attribution would weigh */
	uint8_t inputs[32]; /* multiset digest: sum of record digests mod 2^256 */
	long long records;
};

static const char *const ROLE[4] = {"platform", "model", "stakers", "contributors"};

/* ---- the payee table (open addressing, xxHash) -------------------------------- */

static payee *find(trail_settle *s, const char *name, int create)
{
	if (create && (s->n + 1) * 4 > s->cap * 3) {
		size_t nc = s->cap ? s->cap * 2 : 64;
		payee *nt = trail_calloc(nc, sizeof *nt);
		if (!nt)
			return NULL;
		for (size_t i = 0; i < s->cap; i++) {
			if (!s->tab[i].name)
				continue;
			size_t h = (size_t)XXH3_64bits(s->tab[i].name, strlen(s->tab[i].name)) & (nc - 1);
			while (nt[h].name)
				h = (h + 1) & (nc - 1);
			nt[h] = s->tab[i];
		}
		trail_free(s->tab);
		s->tab = nt;
		s->cap = nc;
	}
	if (!s->cap)
		return NULL;
	size_t h = (size_t)XXH3_64bits(name, strlen(name)) & (s->cap - 1);
	while (s->tab[h].name) {
		if (!strcmp(s->tab[h].name, name))
			return &s->tab[h];
		h = (h + 1) & (s->cap - 1);
	}
	if (!create || !(s->tab[h].name = trail_strdup(name)))
		return NULL;
	s->n++;
	return &s->tab[h];
}

/* ---- policy -------------------------------------------------------------------- */

static int get_int(const json_t *o, const char *k, long long def, long long min, long long *out, trail_error *err)
{
	json_t *v = json_object_get(o, k);
	if (!v) {
		*out = def;
		return TRAIL_OK;
	}
	if (!json_is_integer(v) || json_integer_value(v) < min)
		return trail_error_set(err, TRAIL_EDATA, "policy: %s is an integer >= %lld", k, min);
	*out = json_integer_value(v);
	return TRAIL_OK;
}

static int check_keys(const json_t *o, const char *const *ok, const char *where, trail_error *err)
{
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)o, k, v) {
		int known = 0;
		for (const char *const *p = ok; *p; p++)
			known |= !strcmp(*p, k);
		if (!known)
			return trail_error_set(err, TRAIL_EDATA, "policy: unknown key %s%s", where, k);
	}
	return TRAIL_OK;
}

int trail_settle_new(const json_t *policy, trail_settle **out, trail_error *err)
{
	static const char *top[] = {"fee_per_1k_prompt", "fee_per_1k_completion", "split_bps", "platform",
				    "model_owner", "stakes", "penalty", NULL};
	static const char *pen[] = {"max_rejected", "max_flagged", "max_poisoning", "min_influence", "slash_bps", NULL};
	trail_settle *s = trail_calloc(1, sizeof *s);
	json_t *split = json_object_get(policy, "split_bps"), *pe = json_object_get(policy, "penalty");
	json_t *stakes = json_object_get(policy, "stakes");
	int rc;
	*out = NULL;
	if (!s)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	s->policy = json_deep_copy(policy);
	if (!json_is_object(policy) || !json_is_object(split) || (pe && !json_is_object(pe)) ||
	    (stakes && !json_is_object(stakes))) {
		rc = trail_error_set(err, TRAIL_EDATA, "policy: an object with split_bps (and penalty, stakes objects)");
		goto fail;
	}
	static const char *roles[] = {"platform", "model", "stakers", "contributors", NULL};
	if ((rc = check_keys(policy, top, "", err)) || (rc = check_keys(split, roles, "split_bps.", err)) ||
	    (pe && (rc = check_keys(pe, pen, "penalty.", err))) ||
	    (rc = get_int(policy, "fee_per_1k_prompt", 0, 0, &s->fee_p, err)) ||
	    (rc = get_int(policy, "fee_per_1k_completion", 0, 0, &s->fee_c, err)))
		goto fail;
	long long sum = 0;
	for (int i = 0; i < 4; i++) {
		if ((rc = get_int(split, ROLE[i], 0, 0, &s->bps[i], err)))
			goto fail;
		sum += s->bps[i];
	}
	if (sum != 10000) {
		rc = trail_error_set(err, TRAIL_EDATA, "policy: split_bps sums to %lld, not 10000", sum);
		goto fail;
	}
	if ((rc = get_int(pe, "max_rejected", -1, -1, &s->max_rejected, err)) ||
	    (rc = get_int(pe, "max_flagged", -1, -1, &s->max_flagged, err)) ||
	    (rc = get_int(pe, "slash_bps", 0, 0, &s->slash_bps, err)))
		goto fail;
	json_t *mp = json_object_get(pe, "max_poisoning"), *mi = json_object_get(pe, "min_influence");
	s->max_poisoning = mp ? json_number_value(mp) : INFINITY;
	s->min_influence = mi ? json_number_value(mi) : -INFINITY;
	if (s->slash_bps > 10000) {
		rc = trail_error_set(err, TRAIL_EDATA, "policy: penalty.slash_bps is at most 10000");
		goto fail;
	}
	const char *k;
	json_t *v;
	json_object_foreach(stakes, k, v)
		if (!json_is_integer(v) || json_integer_value(v) < 0) {
			rc = trail_error_set(err, TRAIL_EDATA, "policy: stakes.%s is a non-negative integer", k);
			goto fail;
		}
	s->platform = json_string_value(json_object_get(policy, "platform"));
	s->model_owner = json_string_value(json_object_get(policy, "model_owner"));
	if (!s->platform)
		s->platform = "platform";
	if (!s->model_owner)
		s->model_owner = "model";
	*out = s;
	return TRAIL_OK;
fail:
	trail_settle_free(s);
	return rc;
}

void trail_settle_free(trail_settle *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->cap; i++)
		trail_free(s->tab[i].name);
	trail_free(s->tab);
	json_decref(s->policy);
	trail_free(s);
}

/* ---- accounting -------------------------------------------------------------------- */

static void add256(uint8_t acc[32], const uint8_t d[32])
{
	unsigned carry = 0;
	for (int i = 31; i >= 0; i--) {
		unsigned v = acc[i] + d[i] + carry;
		acc[i] = (uint8_t)v;
		carry = v >> 8;
	}
}

int trail_settle_add(trail_settle *s, const json_t *rec, trail_error *err)
{
	json_t *u = json_object_get(rec, "usage"), *cs = json_object_get(rec, "contributors");
	json_t *pt = json_object_get(u, "prompt_tokens"), *ct = json_object_get(u, "completion_tokens");
	if (!json_is_object(rec) || !json_is_integer(pt) || !json_is_integer(ct) || json_integer_value(pt) < 0 ||
	    json_integer_value(ct) < 0 || !json_is_array(cs))
		return trail_error_set(err, TRAIL_EDATA, "an attribution record has usage {prompt_tokens, completion_tokens} and contributors");
	char dg[72];
	uint8_t d[32];
	int rc = trail_jcs_digest(rec, dg, err);
	if (rc)
		return rc;
	trail_digest_parse(dg, d);
	add256(s->inputs, d);
	s->records++;
	u128 fee = (u128)json_integer_value(pt) * (u128)s->fee_p + (u128)json_integer_value(ct) * (u128)s->fee_c;
	s->fee_milli += fee;
	s->full += fee * SCALE;
	/* shares: positive only, copies credited to their cluster's first contributor */
	size_t n = json_array_size(cs), i;
	json_t *c;
	json_t *credit = json_object();
	if (!credit)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	json_array_foreach(cs, i, c) {
		const char *who = json_string_value(json_object_get(c, "contributor"));
		double sh = json_number_value(json_object_get(c, "share"));
		if (!who || !json_is_number(json_object_get(c, "share")) || !isfinite(sh)) {
			json_decref(credit);
			return trail_error_set(err, TRAIL_EDATA, "contributors[%zu]: contributor and a finite share", i);
		}
		if (sh > 0) {
			double prev = json_number_value(json_object_get(credit, who));
			json_object_set_new(credit, who, json_real(prev + sh));
		}
	}
	json_t *cl;
	json_array_foreach(json_object_get(rec, "clusters"), i, cl) {
		const char *first = json_string_value(json_object_get(cl, "first"));
		size_t j;
		json_t *m;
		double moved = 0;
		if (!first)
			continue;
		json_array_foreach(json_object_get(cl, "members"), j, m) {
			const char *who = json_string_value(m);
			if (!who || !strcmp(who, first))
				continue;
			moved += json_number_value(json_object_get(credit, who));
			json_object_del(credit, who);
		}
		if (moved > 0)
			json_object_set_new(credit, first, json_real(json_number_value(json_object_get(credit, first)) + moved));
	}
	/* normalise to SCALE, so the record weighs at most its fee */
	double total = 0;
	const char *k;
	json_t *v;
	json_object_foreach(credit, k, v) total += json_real_value(v);
	json_object_foreach(credit, k, v) {
		payee *p = find(s, k, 1);
		if (!p) {
			json_decref(credit);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
		uint64_t w = (uint64_t)llround(json_real_value(v) / (total > 1 ? total : 1) * (double)SCALE);
		p->acc += fee * w;
	}
	json_decref(credit);
	/* negative influence, for the penalty */
	json_t *t;
	json_array_foreach(json_object_get(rec, "top"), i, t) {
		const char *who = json_string_value(json_object_get(t, "contributor"));
		double sc = json_number_value(json_object_get(t, "score"));
		payee *p;
		if (who && sc < 0 && (p = find(s, who, 1)))
			p->negative += sc;
	}
	(void)n;
	return TRAIL_OK;
}

int trail_settle_flag(trail_settle *s, const json_t *f, trail_error *err)
{
	const char *who = json_string_value(json_object_get(f, "contributor"));
	payee *p;
	if (!who)
		return trail_error_set(err, TRAIL_EDATA, "a flags line names a contributor");
	if (!(p = find(s, who, 1)))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	p->rejected += (long)json_integer_value(json_object_get(f, "rejected"));
	p->flagged += (long)json_integer_value(json_object_get(f, "flagged"));
	p->poisoning = fmax(p->poisoning, json_number_value(json_object_get(f, "poisoning")));
	return TRAIL_OK;
}

/* ---- result -------------------------------------------------------------------------- */

typedef struct share {
	const char *name;
	u128 w, rem;
	long long amount;
} share;

static int by_rem(const void *a, const void *b)
{
	const share *x = a, *y = b;
	if (x->rem != y->rem)
		return x->rem > y->rem ? -1 : 1;
	return strcmp(x->name, y->name);
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const share *)a)->name, ((const share *)b)->name);
}

/* Largest remainder: split T over weights w (sum W > 0); ties by name. */
static void hamilton(share *v, size_t n, long long T, u128 W)
{
	long long given = 0;
	for (size_t i = 0; i < n; i++) {
		u128 num = (u128)T * v[i].w;
		v[i].amount = (long long)(num / W);
		v[i].rem = num % W;
		given += v[i].amount;
	}
	qsort(v, n, sizeof *v, by_rem);
	for (size_t i = 0; given < T && i < n; i++, given++)
		v[i].amount++;
	qsort(v, n, sizeof *v, by_name);
}

static int penalized(const trail_settle *s, const payee *p)
{
	return (s->max_rejected >= 0 && p->rejected > s->max_rejected) ||
	       (s->max_flagged >= 0 && p->flagged > s->max_flagged) || p->poisoning > s->max_poisoning ||
	       p->negative < s->min_influence;
}

int trail_settle_result(trail_settle *s, const char *epoch, json_t **out, trail_error *err)
{
	long long F = (long long)(s->fee_milli / 1000);
	share roles[4];
	for (int i = 0; i < 4; i++)
		roles[i] = (share){ROLE[i], (u128)s->bps[i], 0, 0};
	hamilton(roles, 4, F, 10000);
	long long pool[4];
	for (int i = 0; i < 4; i++)
		for (int j = 0; j < 4; j++)
			if (!strcmp(roles[j].name, ROLE[i]))
				pool[i] = roles[j].amount;
	json_t *res = json_array();
	long long paid = 0;
	size_t nst = json_object_size(json_object_get(s->policy, "stakes"));
	share *v = trail_calloc((s->n > nst ? s->n : nst) + 1, sizeof *v);
	if (!res || !v) {
		json_decref(res);
		trail_free(v);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
#define PAY(to, role, amt)                                                                                 \
	do {                                                                                               \
		if ((amt) > 0) {                                                                           \
			json_array_append_new(res, json_pack("{s:s, s:s, s:s, s:I}", "type", "payout", "to", \
							     (to), "role", (role), "amount", (json_int_t)(amt))); \
			paid += (amt);                                                                     \
		}                                                                                          \
	} while (0)
	PAY(s->platform, "platform", pool[0]);
	PAY(s->model_owner, "model", pool[1]);
	/* stakers: by stake, penalised stakers excluded */
	json_t *stakes = json_object_get(s->policy, "stakes");
	size_t n = 0;
	u128 W = 0;
	const char *k;
	json_t *val;
	json_object_foreach(stakes, k, val) {
		payee *p = find(s, k, 0);
		if (json_integer_value(val) <= 0 || (p && penalized(s, p)))
			continue;
		v[n++] = (share){k, (u128)json_integer_value(val), 0, 0};
		W += (u128)json_integer_value(val);
	}
	if (W) {
		hamilton(v, n, pool[2], W);
		for (size_t i = 0; i < n; i++)
			PAY(v[i].name, "stakers", v[i].amount);
	}
	/* contributors: the attributed part of the pool, by weight; penalised ones withheld */
	n = 0;
	u128 A = 0;
	for (size_t i = 0; i < s->cap; i++) {
		payee *p = &s->tab[i];
		if (!p->name || !p->acc)
			continue;
		v[n++] = (share){p->name, p->acc, 0, 0};
		A += p->acc;
	}
	if (A && s->full) {
		long long T = (long long)((u128)pool[3] * A / s->full);
		if (T > pool[3]) /* per-record rounding of shares may overshoot by a hair */
			T = pool[3];
		hamilton(v, n, T, A);
		for (size_t i = 0; i < n; i++)
			if (!penalized(s, find(s, v[i].name, 0)))
				PAY(v[i].name, "contributor", v[i].amount);
	}
	/* slashing: a share of the stake of every penalised staker */
	json_object_foreach(stakes, k, val) {
		payee *p = find(s, k, 0);
		long long amt = (long long)((u128)json_integer_value(val) * (u128)s->slash_bps / 10000);
		if (p && penalized(s, p) && amt > 0)
			json_array_append_new(res, json_pack("{s:s, s:s, s:I}", "type", "slash", "to", k, "amount",
							     (json_int_t)amt));
	}
#undef PAY
	trail_free(v);
	long long retained = F - paid;
	if (retained < 0 || paid + retained != F) {
		json_decref(res);
		return trail_error_set(err, TRAIL_EINTERNAL, "conservation failed: paid %lld, fees %lld", paid, F);
	}
	char pd[72], id[72] = "sha256:", od[72];
	trail_hex(s->inputs, 32, id + 7);
	trail_jcs_digest(s->policy, pd, NULL);
	trail_jcs_digest(res, od, NULL);
	json_t *ep = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:s, s:s, s:s}", "type", "epoch", "epoch", epoch, "fees",
			       (json_int_t)F, "paid", (json_int_t)paid, "retained", (json_int_t)retained, "records",
			       (json_int_t)s->records, "inputs_digest", id, "policy_digest", pd, "payouts_digest", od);
	/* the epoch's digest covers inputs, policy and outputs */
	char dg[72];
	trail_jcs_digest(ep, dg, NULL);
	json_object_set_new(ep, "digest", json_string(dg));
	json_array_append_new(res, ep);
	*out = res;
	return TRAIL_OK;
}

int trail_settle_record(trail_settle *s, trail_store *st, const char *epoch, const trail_signer *key,
			json_t **out, int *recorded, trail_error *err)
{
	trail_ledger *l = NULL;
	json_t *res = NULL, *e = NULL;
	char pat[160];
	int rc = trail_ledger_open(st, TRAIL_LEDGER_WRITE | TRAIL_LEDGER_NOWAIT, &l, err);
	*out = NULL;
	*recorded = 0;
	if (rc)
		return rc;
	if ((rc = trail_settle_result(s, epoch, &res, err)))
		goto out;
	json_t *ep = json_array_get(res, json_array_size(res) - 1);
	const char *in = json_string_value(json_object_get(ep, "inputs_digest"));
	const char *pd = json_string_value(json_object_get(ep, "policy_digest"));
	json_t *jid = json_string(epoch);
	char *q = jid ? json_dumps(jid, JSON_ENCODE_ANY) : NULL;
	snprintf(pat, sizeof pat, "\"epoch\":%s", q ? q : "\"\"");
	free(q);
	json_decref(jid);
	for (uint64_t i = 0; i < trail_ledger_size(l); i++) {
		char *b;
		size_t n;
		json_t *j;
		if ((rc = trail_ledger_get(l, i, &b, &n, err)))
			goto out;
		static const char want[] = "\"type\":\"settlement\"";
		int hit = memmem(b, n, want, sizeof want - 1) && memmem(b, n, pat, strlen(pat));
		if (hit && trail_json_parse(b, n, "log/data", &j, NULL) == TRAIL_OK) {
			const char *ri = json_string_value(json_object_get(j, "inputs_digest"));
			const char *rp = json_string_value(json_object_get(j, "policy_digest"));
			const char *ro = json_string_value(json_object_get(j, "result_object"));
			if (!ri || !rp || strcmp(ri, in) || strcmp(rp, pd)) {
				rc = trail_error_set(err, TRAIL_EVERIFY,
						     "epoch %s was settled at entry %llu with other inputs or policy", epoch,
						     (unsigned long long)i);
			} else {
				void *ob;
				size_t ol;
				json_t *prev;
				if (!(rc = trail_store_get(st, ro, &ob, &ol, err))) {
					if (!(rc = trail_json_parse(ob, ol, ro, &prev, err))) {
						json_decref(res);
						res = prev;
						*recorded = 1;
					}
					trail_free(ob);
				}
			}
			json_decref(j);
			trail_free(b);
			goto out;
		}
		trail_free(b);
	}
	char *text, od[72];
	size_t tl;
	if ((rc = trail_jcs(res, &text, &tl, err)))
		goto out;
	rc = trail_store_put(st, text, tl, od, err);
	trail_free(text);
	if (rc)
		goto out;
	e = json_pack("{s:s, s:s, s:s, s:s, s:s, s:O, s:O, s:O, s:O}", "type", "settlement", "epoch", epoch,
		      "inputs_digest", in, "policy_digest", pd, "result_object", od, "fees", json_object_get(ep, "fees"),
		      "paid", json_object_get(ep, "paid"), "retained", json_object_get(ep, "retained"), "digest",
		      json_object_get(ep, "digest"));
	uint64_t idx;
	if (!e || (key && (rc = trail_json_sign(e, key, err))) || (rc = trail_ledger_append(l, e, &idx, err)) ||
	    (rc = trail_ledger_commit(l, err)))
		rc = rc ? rc : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
out:
	json_decref(e);
	trail_ledger_free(l);
	if (rc)
		json_decref(res);
	else
		*out = res;
	return rc;
}
