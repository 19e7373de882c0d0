/*
 * Settlement: conservation and non-negativity over 10,000 random epochs,
 * independence from input order, manipulation resistance (splitting across
 * identities, copies credited once), penalties.
 */
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "settle.h"
#include "tap.h"

static uint64_t rs = 0x1234567;
static uint64_t rnd(uint64_t n)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return n ? rs % n : 0;
}

static json_t *record(int pt, int ct, int n, const char **who, const double *share)
{
	json_t *cs = json_array();
	for (int i = 0; i < n; i++)
		json_array_append_new(cs, json_pack("{s:s, s:f}", "contributor", who[i], "share", share[i]));
	return json_pack("{s:I, s:{s:i, s:i}, s:o}", "event", (json_int_t)rnd(1u << 30), "usage", "prompt_tokens", pt,
			 "completion_tokens", ct, "contributors", cs);
}

/* amount paid to `to` as a contributor (0 if none) */
static long long paid_to(const json_t *res, const char *to)
{
	size_t i;
	json_t *l;
	long long s = 0;
	json_array_foreach(res, i, l) {
		const char *t = json_string_value(json_object_get(l, "to")), *r = json_string_value(json_object_get(l, "role"));
		if (t && r && !strcmp(r, "contributor") && !strncmp(t, to, strlen(to)))
			s += json_integer_value(json_object_get(l, "amount"));
	}
	return s;
}

static json_t *settle(const json_t *pol, json_t **recs, int n, const char *epoch)
{
	trail_settle *s;
	json_t *res = NULL;
	if (trail_settle_new(pol, &s, NULL))
		return NULL;
	for (int i = 0; i < n; i++)
		trail_settle_add(s, recs[i], NULL);
	trail_settle_result(s, epoch, &res, NULL);
	trail_settle_free(s);
	return res;
}

int main(void)
{
	const char *names[] = {"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"};
	int bad = 0, neg = 0;
	for (int ep = 0; ep < 10000; ep++) {
		long long b[4], left = 10000;
		for (int i = 0; i < 3; i++) {
			b[i] = (long long)rnd((uint64_t)left + 1);
			left -= b[i];
		}
		b[3] = left;
		json_t *pol = json_pack("{s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:{s:I, s:I}, s:{s:i, s:i}}", "fee_per_1k_prompt",
					(json_int_t)rnd(5000), "fee_per_1k_completion", (json_int_t)rnd(20000), "split_bps",
					"platform", (json_int_t)b[0], "model", (json_int_t)b[1], "stakers", (json_int_t)b[2],
					"contributors", (json_int_t)b[3], "stakes", "alice", (json_int_t)rnd(1000), "dave",
					(json_int_t)rnd(1000), "penalty", "max_rejected", 1, "slash_bps", 2500);
		trail_settle *s;
		trail_settle_new(pol, &s, NULL);
		int nr = 1 + (int)rnd(30);
		for (int r = 0; r < nr; r++) {
			int k = (int)rnd(5);
			double sh[5], tot = 0;
			for (int i = 0; i < k; i++)
				tot += (sh[i] = (double)rnd(1000) / 7.0 - 20);
			for (int i = 0; i < k; i++)
				sh[i] = tot > 0 ? sh[i] / tot : sh[i];
			json_t *rec = record((int)rnd(4000), (int)rnd(4000), k, names + rnd(4), sh);
			trail_settle_add(s, rec, NULL);
			json_decref(rec);
		}
		if (rnd(3) == 0) {
			json_t *f = json_pack("{s:s, s:i}", "contributor", names[rnd(4)], "rejected", (int)rnd(4));
			trail_settle_flag(s, f, NULL);
			json_decref(f);
		}
		json_t *res;
		if (trail_settle_result(s, "e", &res, NULL)) {
			bad++;
		} else {
			json_t *e = json_array_get(res, json_array_size(res) - 1);
			long long fees = json_integer_value(json_object_get(e, "fees")), paid = json_integer_value(json_object_get(e, "paid"));
			long long sum = 0;
			size_t i;
			json_t *l;
			json_array_foreach(res, i, l)
				if (!strcmp(json_string_value(json_object_get(l, "type")), "payout")) {
					long long a = json_integer_value(json_object_get(l, "amount"));
					sum += a;
					neg += a < 0;
				}
			bad += sum != paid || paid + json_integer_value(json_object_get(e, "retained")) != fees ||
			       json_integer_value(json_object_get(e, "retained")) < 0;
			json_decref(res);
		}
		trail_settle_free(s);
		json_decref(pol);
	}
	ok(bad == 0 && neg == 0, "10,000 random epochs: payouts + retained = fees, no negative amount (%d bad)", bad);

	json_t *pol = json_pack("{s:i, s:i, s:{s:i, s:i, s:i, s:i}}", "fee_per_1k_prompt", 1000, "fee_per_1k_completion",
				3000, "split_bps", "platform", 1000, "model", 1000, "stakers", 0, "contributors", 8000);
	/* order does not matter */
	enum { N = 200 };
	json_t *recs[N];
	for (int i = 0; i < N; i++) {
		double sh[3] = {0.5, 0.3, 0.2};
		const char *w[3] = {names[i % 8], names[(i + 3) % 8], names[(i + 5) % 8]};
		recs[i] = record(100 + i, 50 + 3 * i, 3, w, sh);
	}
	json_t *a = settle(pol, recs, N, "x");
	for (int i = N - 1; i > 0; i--) {
		int j = (int)rnd((uint64_t)i + 1);
		json_t *t = recs[i];
		recs[i] = recs[j];
		recs[j] = t;
	}
	json_t *b = settle(pol, recs, N, "x");
	ok(a && b && json_equal(a, b), "shuffled input gives the same result, digests included");
	json_decref(a);
	json_decref(b);
	for (int i = 0; i < N; i++)
		json_decref(recs[i]);

	/* splitting across 10 identities earns nothing extra */
	json_t *one[50], *split[50];
	for (int i = 0; i < 50; i++) {
		double sh[2] = {0.6, 0.4};
		const char *w[2] = {"mallory", "alice"};
		one[i] = record(300, 700, 2, w, sh);
		char id[32];
		snprintf(id, sizeof id, "mallory-%d", i % 10); /* the same records, under 10 names */
		const char *w2[2] = {id, "alice"};
		split[i] = record(300, 700, 2, w2, sh);
	}
	a = settle(pol, one, 50, "s");
	b = settle(pol, split, 50, "s");
	long long m1 = paid_to(a, "mallory"), m10 = paid_to(b, "mallory"), a1 = paid_to(a, "alice"), a10 = paid_to(b, "alice");
	ok(m10 <= m1 + 10 && a10 >= a1 - 10 && a10 <= a1 + 10,
	   "splitting across 10 identities: %lld vs %lld in total; alice %lld vs %lld", m10, m1, a10, a1);
	json_decref(a);
	json_decref(b);
	/* copies (clusters) are credited once, to the first contributor */
	json_t *orig[20], *copied[20];
	for (int i = 0; i < 20; i++) {
		double sh1[1] = {1}, sh2[2] = {0.5, 0.5};
		const char *w1[1] = {"alice"}, *w2[2] = {"alice", "copycat"};
		orig[i] = record(300, 700, 1, w1, sh1);
		copied[i] = record(300, 700, 2, w2, sh2);
		json_object_set_new(copied[i], "clusters", json_pack("[{s:[s,s], s:s}]", "members", "alice", "copycat", "first", "alice"));
	}
	a = settle(pol, orig, 20, "c");
	b = settle(pol, copied, 20, "c");
	ok(paid_to(b, "copycat") == 0 && paid_to(b, "alice") == paid_to(a, "alice"),
	   "a copy earns nothing (%lld) and the original keeps its share (%lld = %lld)", paid_to(b, "copycat"),
	   paid_to(b, "alice"), paid_to(a, "alice"));
	json_decref(a);
	json_decref(b);
	for (int i = 0; i < 20; i++)
		json_decref(orig[i]), json_decref(copied[i]);
	for (int i = 0; i < 50; i++)
		json_decref(one[i]), json_decref(split[i]);

	/* penalties: withheld and slashed */
	json_t *pp = json_pack("{s:i, s:i, s:{s:i, s:i, s:i, s:i}, s:{s:i}, s:{s:i, s:i}}", "fee_per_1k_prompt", 1000,
			       "fee_per_1k_completion", 1000, "split_bps", "platform", 0, "model", 0, "stakers", 2000,
			       "contributors", 8000, "stakes", "mallory", 1000, "penalty", "max_flagged", 0, "slash_bps", 5000);
	trail_settle *s;
	trail_settle_new(pp, &s, NULL);
	double sh[2] = {0.5, 0.5};
	const char *w[2] = {"mallory", "alice"};
	json_t *r = record(1000, 1000, 2, w, sh), *f = json_pack("{s:s, s:i}", "contributor", "mallory", "flagged", 3);
	trail_settle_add(s, r, NULL);
	trail_settle_flag(s, f, NULL);
	json_t *res;
	trail_settle_result(s, "p", &res, NULL);
	long long slash = 0;
	size_t i;
	json_t *l;
	json_array_foreach(res, i, l)
		if (!strcmp(json_string_value(json_object_get(l, "type")), "slash"))
			slash = json_integer_value(json_object_get(l, "amount"));
	json_t *e = json_array_get(res, json_array_size(res) - 1);
	ok(paid_to(res, "mallory") == 0 && slash == 500 && paid_to(res, "alice") == 800 &&
	   json_integer_value(json_object_get(e, "retained")) == 1200,
	   "a flagged contributor is withheld (retained %lld) and half its stake slashed (%lld)",
	   (long long)json_integer_value(json_object_get(e, "retained")), slash);
	json_decref(res), json_decref(r), json_decref(f), json_decref(pp), json_decref(pol);
	trail_settle_free(s);

	json_t *badp = json_pack("{s:{s:i}}", "split_bps", "platform", 10);
	ok(trail_settle_new(badp, &s, NULL) == TRAIL_EDATA, "split_bps must sum to 10000");
	json_decref(badp);
	badp = json_pack("{s:{s:i, s:i}, s:i}", "split_bps", "platform", 5000, "contributors", 5000, "fee_per_1k_typo", 3);
	ok(trail_settle_new(badp, &s, NULL) == TRAIL_EDATA, "unknown policy keys are refused");
	json_decref(badp);
	return tap_done();
}
