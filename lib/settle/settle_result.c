/*
 * The result: the fees split by largest remainder, roles by basis points
 * and then payees by their exact quotas; penalised payees' amounts
 * withheld; conservation checked from the output lines themselves.
 */
#include <stdlib.h>
#include <string.h>

#include "settle/settle_int.h"

static const char *const ROLE_OUT[4] = {"platform", "model", "stakers", "contributor"};

/* ---- largest remainder ----------------------------------------------------------------- */

/* q = a * b / d, r = a * b % d, for d < 2^127 and a quotient below 2^128. */
static void muldiv(uint64_t a, u128 b, u128 d, u128 *q, u128 *r)
{
	if (b >> 64 == 0) {
		u128 p = (u128)a * (uint64_t)b;
		*q = p / d;
		*r = p % d;
		return;
	}
	/* a * b = hi * 2^128 + lo, then long division one bit at a time */
	u128 lo = (u128)a * (uint64_t)b, mid = (u128)a * (uint64_t)(b >> 64);
	uint64_t hi = (uint64_t)(mid >> 64);
	u128 low = lo + (mid << 64);
	hi += low < lo;
	u128 rem = 0, quo = 0;
	for (int i = 191; i >= 0; i--) {
		unsigned bit = i >= 128 ? (unsigned)(hi >> (i - 128)) & 1 : (unsigned)(low >> i) & 1;
		rem = rem << 1 | bit;
		quo <<= 1;
		if (rem >= d) {
			rem -= d;
			quo |= 1;
		}
	}
	*q = quo;
	*r = rem;
}

typedef struct part {
	uint32_t who;
	u128 w, rem;
	int64_t amount;
} part;

static int part_by_rem(const void *x, const void *y, void *ctx)
{
	const part *a = *(part *const *)x, *b = *(part *const *)y;
	const payee *pay = ctx;
	if (a->rem != b->rem)
		return a->rem > b->rem ? -1 : 1;
	return settle_name_cmp(&pay[a->who], &pay[b->who]);
}

/*
 * Largest remainder: P over the parts, part i's quota P * w_i / D (sum of
 * w_i <= D). Each gets the floor of its quota, then one unit each goes to
 * the largest remainders (equal remainders: the smaller name first) until
 * floor(P * sum w / D) is given out. Returns that total; -1 out of memory.
 */
static int64_t hamilton(const trail_settle *s, part *v, size_t n, int64_t P, u128 D)
{
	u128 W = 0, T, r, given = 0;
	for (size_t i = 0; i < n; i++)
		W += v[i].w;
	if (!n || !D)
		return 0;
	muldiv((uint64_t)P, W, D, &T, &r);
	for (size_t i = 0; i < n; i++) {
		u128 q;
		muldiv((uint64_t)P, v[i].w, D, &q, &v[i].rem);
		v[i].amount = (int64_t)q;
		given += q;
	}
	if (given < T) {
		part **o = trail_malloc(n * sizeof *o);
		if (!o)
			return -1;
		for (size_t i = 0; i < n; i++)
			o[i] = &v[i];
		qsort_r(o, n, sizeof *o, part_by_rem, s->pay);
		for (size_t i = 0; given < T; i++, given++)
			o[i]->amount++;
		trail_free(o);
	}
	return (int64_t)T;
}

static int idx_by_name(const void *x, const void *y, void *ctx)
{
	const payee *pay = ctx;
	return settle_name_cmp(&pay[*(const uint32_t *)x], &pay[*(const uint32_t *)y]);
}

/* ---- the result ---------------------------------------------------------------------- */


static int payout(json_t *out, const char *to, const char *role, int64_t amount, int64_t *paid)
{
	if (amount <= 0)
		return 0;
	*paid += amount;
	return json_array_append_new(out, json_pack("{s:s, s:s, s:s, s:I}", "type", "payout", "to", to, "role", role,
						     "amount", (json_int_t)amount));
}

/* One role's pool over the payees whose weight `w` is set, in name order; penalised ones withheld. */
static int64_t pay_role(trail_settle *s, const uint32_t *order, part *v, int role, int64_t pool, u128 D,
			json_t *pay, json_t *withheld, int64_t *paid, int64_t *held, int *rc)
{
	size_t n = 0;
	for (size_t i = 0; i < s->npay; i++) {
		const payee *p = &s->pay[order[i]];
		u128 w = role == R_MODEL ? p->mfee : role == R_STAKERS ? (u128)p->stake : p->acc;
		if (w)
			v[n++] = (part){order[i], w, 0, 0};
	}
	int64_t T = hamilton(s, v, n, pool, D);
	if (T < 0) {
		*rc = TRAIL_ENOMEM;
		return 0;
	}
	for (size_t i = 0; i < n && !*rc; i++) {
		const payee *p = &s->pay[v[i].who];
		json_t *why = role == R_MODEL ? json_array() : settle_reasons(s, p);
		if (!why) {
			*rc = TRAIL_ENOMEM;
		} else if (json_array_size(why)) {
			if (v[i].amount > 0 &&
			    json_array_append_new(withheld, json_pack("{s:s, s:s, s:I, s:O}", "to", p->name, "role",
								      ROLE_OUT[role], "amount", (json_int_t)v[i].amount,
								      "reasons", why)))
				*rc = TRAIL_ENOMEM;
			*held += v[i].amount;
		} else if (payout(pay, p->name, ROLE_OUT[role], v[i].amount, paid)) {
			*rc = TRAIL_ENOMEM;
		}
		json_decref(why);
	}
	return T;
}

int trail_settle_result(trail_settle *s, const char *epoch, json_t **out, trail_error *err)
{
	*out = NULL;
	int rc0 = settle_resolve(s, err);
	if (rc0)
		return rc0;
	int64_t F = (int64_t)(s->fees / 1000), pool[4], given = 0, rem[4];
	/* roles: basis points, largest remainder, equal remainders in role order */
	for (int i = 0; i < 4; i++) {
		pool[i] = (int64_t)((u128)F * (u128)s->bps[i] / 10000);
		rem[i] = (int64_t)((u128)F * (u128)s->bps[i] % 10000);
		given += pool[i];
	}
	while (given < F) {
		int best = 0;
		for (int i = 1; i < 4; i++)
			if (rem[i] > rem[best])
				best = i;
		pool[best]++;
		rem[best] = -1;
		given++;
	}

	uint32_t *order = trail_malloc(s->npay * sizeof *order);
	part *v = trail_malloc(s->npay * sizeof *v);
	json_t *pay = json_array(), *withheld = json_array(), *slashed = json_array(), *res = NULL;
	int64_t paid = 0, held = 0, unattributed = 0, unstaked = 0;
	int rc = 0;
	if (!order || !v || !pay || !withheld || !slashed) {
		rc = TRAIL_ENOMEM;
		goto done;
	}
	for (size_t i = 0; i < s->npay; i++)
		order[i] = (uint32_t)i;
	qsort_r(order, s->npay, sizeof *order, idx_by_name, s->pay);

	if (payout(pay, s->pay[s->platform].name, "platform", pool[R_PLATFORM], &paid))
		rc = TRAIL_ENOMEM;
	/* with adapter owners the model sums are in units of 1/10000 of a fee (model_split) */
	int64_t tm = pay_role(s, order, v, R_MODEL, pool[R_MODEL], s->fees * (s->nadapters ? 10000 : 1), pay, withheld,
			      &paid, &held, &rc);
	u128 stake = 0;
	for (size_t i = 0; i < s->npay; i++)
		stake += s->pay[i].stake;
	int64_t ts = pay_role(s, order, v, R_STAKERS, pool[R_STAKERS], stake, pay, withheld, &paid, &held, &rc);
	unstaked = pool[R_STAKERS] - ts;
	int64_t tc = pay_role(s, order, v, R_CONTRIB, pool[R_CONTRIB], s->fees * (u128)NANO, pay, withheld, &paid,
			      &held, &rc);
	/*
	 * the low-confidence records' part of the pool, rounded down: the units that rounding leaves
	 * between it and the payees stay unattributed
	 */
	int64_t low = 0;
	if (s->lowconf) {
		u128 q, r;
		muldiv((uint64_t)pool[R_CONTRIB], s->lowconf, s->fees * (u128)NANO, &q, &r);
		low = (int64_t)q;
	}
	unattributed = pool[R_CONTRIB] - tc - low;
	if (!rc)
		rc = settle_slash(s, order, slashed);
	if (rc)
		goto done;

	/* conservation, checked from the lines themselves */
	int64_t sum = 0, neg = 0;
	size_t i;
	json_t *l;
	json_array_foreach(pay, i, l) {
		int64_t a = json_integer_value(json_object_get(l, "amount"));
		sum += a;
		neg |= a <= 0;
	}
	int64_t retained = F - paid;
	if (pool[0] + pool[1] + pool[2] + pool[3] != F || sum != paid || neg || retained < 0 ||
	    (F && tm != pool[R_MODEL]) || ts > pool[R_STAKERS] || tc + low > pool[R_CONTRIB] || unattributed < 0 ||
	    retained != unattributed + unstaked + held + low) {
		rc = trail_error_set(err, TRAIL_EINTERNAL,
				     "conservation failed: fees %lld, paid %lld (lines %lld), retained %lld = "
				     "unattributed %lld + unstaked %lld + withheld %lld",
				     (long long)F, (long long)paid, (long long)sum, (long long)retained,
				     (long long)unattributed, (long long)unstaked, (long long)held);
		goto done;
	}
	char in[80] = "blake2b:", pd[72], od[72], dg[72];
	trail_hex(s->inputs, 32, in + 8);
	if ((rc = trail_jcs_digest(s->policy, pd, err)) || (rc = trail_jcs_digest(pay, od, err)))
		goto done;
	json_t *ep = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:O, s:O, s:s, s:s, s:s}", "type",
			       "epoch", "epoch", epoch, "fees", (json_int_t)F, "paid", (json_int_t)paid, "retained",
			       (json_int_t)retained, "records", (json_int_t)s->records, "flags",
			       (json_int_t)s->flag_lines, "unattributed", (json_int_t)unattributed, "unstaked",
			       (json_int_t)unstaked, "withheld", withheld, "slashed", slashed, "inputs_digest", in,
			       "policy_digest", pd, "payouts_digest", od);
	/* present only under a policy with a confidence rule: other results keep their bytes */
	if (ep && s->conf_rule &&
	    (json_object_set_new(ep, "low_confidence", json_integer(low)) ||
	     json_object_set_new(ep, "low_confidence_records", json_integer((json_int_t)s->lowconf_records))))
		rc = TRAIL_ENOMEM;
	/* the epoch's digest covers inputs, policy and outputs */
	if (rc || !ep || (rc = trail_jcs_digest(ep, dg, err)) || json_object_set_new(ep, "digest", json_string(dg)) ||
	    json_array_append_new(pay, ep)) {
		rc = rc ? rc : TRAIL_ENOMEM;
		goto done;
	}
	res = pay;
	pay = NULL;
done:
	if (rc == TRAIL_ENOMEM)
		oom(err);
	trail_free(order);
	trail_free(v);
	json_decref(pay);
	json_decref(withheld);
	json_decref(slashed);
	*out = res;
	return rc;
}

/* ---- for people ------------------------------------------------------------------------- */

/* A verifier key "name+hex+base64" shown as "name+hex"; other names whole. */
static int shown(const char *to)
{
	const char *a = strchr(to, '+'), *b = a ? strchr(a + 1, '+') : NULL;
	return b && b - a == 9 ? (int)(b - to) : (int)strlen(to);
}

static void join(FILE *f, const json_t *a)
{
	size_t i;
	json_t *x;
	json_array_foreach(a, i, x)
		fprintf(f, "%s%s", i ? ", " : "", json_string_value(x));
}

int trail_settle_print_text(const json_t *res, FILE *f)
{
	size_t i;
	json_t *l, *ep = NULL;
	fprintf(f, "%-12s %-32s %12s\n", "ROLE", "PAYEE", "AMOUNT");
	json_array_foreach(res, i, l) {
		const char *t = json_string_value(json_object_get(l, "type")), *to;
		if (t && !strcmp(t, "epoch"))
			ep = l;
		if (!t || strcmp(t, "payout"))
			continue;
		to = json_string_value(json_object_get(l, "to"));
		fprintf(f, "%-12s %-32.*s %12lld\n", json_string_value(json_object_get(l, "role")), shown(to), to,
			(long long)json_integer_value(json_object_get(l, "amount")));
	}
	if (!ep)
		return TRAIL_EDATA;
	json_array_foreach(json_object_get(ep, "withheld"), i, l) {
		const char *to = json_string_value(json_object_get(l, "to"));
		fprintf(f, "%-12s %-32.*s %12lld  as %s, for: ", "withheld", shown(to), to,
			(long long)json_integer_value(json_object_get(l, "amount")),
			json_string_value(json_object_get(l, "role")));
		join(f, json_object_get(l, "reasons"));
		fputc('\n', f);
	}
	json_array_foreach(json_object_get(ep, "slashed"), i, l) {
		const char *to = json_string_value(json_object_get(l, "to"));
		fprintf(f, "%-12s %-32.*s %12lld  of a stake of %lld, for: ", "slashed", shown(to), to,
			(long long)json_integer_value(json_object_get(l, "amount")),
			(long long)json_integer_value(json_object_get(l, "stake")));
		join(f, json_object_get(l, "reasons"));
		fputc('\n', f);
	}
	long long held = 0;
	json_array_foreach(json_object_get(ep, "withheld"), i, l)
		held += json_integer_value(json_object_get(l, "amount"));
	char lowc[64] = "";
	if (json_object_get(ep, "low_confidence"))
		snprintf(lowc, sizeof lowc, ", low_confidence %lld",
			 (long long)json_integer_value(json_object_get(ep, "low_confidence")));
	fprintf(f, "epoch %s: fees %lld = paid %lld + retained %lld (unattributed %lld, unstaked %lld, withheld %lld%s); "
		   "%lld records\n",
		json_string_value(json_object_get(ep, "epoch")), (long long)json_integer_value(json_object_get(ep, "fees")),
		(long long)json_integer_value(json_object_get(ep, "paid")),
		(long long)json_integer_value(json_object_get(ep, "retained")),
		(long long)json_integer_value(json_object_get(ep, "unattributed")),
		(long long)json_integer_value(json_object_get(ep, "unstaked")), held, lowc,
		(long long)json_integer_value(json_object_get(ep, "records")));
	return ferror(f) ? TRAIL_EIO : TRAIL_OK;
}
