/*
 * Settlement: conservation and non-negativity over 10,000 random epochs
 * (with a reference computation of every contributor's exact quota), order
 * independence, manipulation (splitting across identities, exact and near
 * copies), penalties (the worked example of attr-settle(1)), the scanner's
 * strictness and the fixed-point reading of shares.
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "settle/settle.h"
#include "tap.h"

typedef unsigned __int128 u128;

static uint64_t rs = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(uint64_t n)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return n ? rs % n : 0;
}

/* a share in units of 1e-9 as the 9-decimal text attr-score writes */
static int share_text(char *b, size_t n, long long nanos)
{
	const char *sign = nanos < 0 ? "-" : "";
	long long a = nanos < 0 ? -nanos : nanos;
	return snprintf(b, n, "%s%lld.%09lld", sign, a / 1000000000, a % 1000000000);
}

typedef struct rec {
	int pt, ct, k;
	const char *who[12];
	long long w[12]; /* nanos */
	char extra[512]; /* more members, JSON text, starting with ',' */
} rec;

static char *line_of(const rec *r, int id, int reorder)
{
	static char buf[4096];
	char cs[2048] = "", t[64];
	size_t n = 0;
	for (int j = 0; j < r->k; j++) {
		int i = j;
		share_text(t, sizeof t, r->w[i]);
		n += (size_t)snprintf(cs + n, sizeof cs - n, "%s{\"contributor\":\"%s\",\"share\":%s}", j ? "," : "",
				      r->who[i], t);
	}
	if (reorder)
		snprintf(buf, sizeof buf,
			 "{ \"contributors\": [%s], \"usage\": {\"completion_tokens\": %d, \"prompt_tokens\": %d, "
			 "\"total_tokens\": 1}, \"event\": {\"id\": \"q%d\"}%s }",
			 cs, r->ct, r->pt, id, r->extra);
	else
		snprintf(buf, sizeof buf,
			 "{\"event\":\"q%d\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d},"
			 "\"contributors\":[%s]%s}",
			 id, r->pt, r->ct, cs, r->extra);
	return buf;
}

static json_t *settle_lines(const json_t *pol, char **lines, int n, const char *epoch)
{
	trail_settle *s;
	json_t *res = NULL;
	trail_error e = {0};
	if (trail_settle_new(pol, &s, &e)) {
		diag("policy: %s", e.msg);
		return NULL;
	}
	for (int i = 0; i < n; i++)
		if (trail_settle_line(s, lines[i], strlen(lines[i]), &e)) {
			diag("line %d: %s: %s", i, e.msg, lines[i]);
			trail_settle_free(s);
			return NULL;
		}
	if (trail_settle_result(s, epoch, &res, &e))
		diag("result: %s", e.msg);
	trail_settle_free(s);
	return res;
}

/* amount paid to `to` in `role` (NULL: any role) */
static long long paid(const json_t *res, const char *to, const char *role)
{
	size_t i;
	json_t *l;
	long long s = 0;
	json_array_foreach(res, i, l) {
		const char *t = json_string_value(json_object_get(l, "to")), *r = json_string_value(json_object_get(l, "role"));
		if (t && !strcmp(t, to) && (!role || !strcmp(r, role)))
			s += json_integer_value(json_object_get(l, "amount"));
	}
	return s;
}

/* paid + withheld, as a contributor */
static long long earned(const json_t *res, const char *to)
{
	json_t *ep = json_array_get(res, json_array_size(res) - 1), *w;
	long long s = paid(res, to, "contributor");
	size_t i;
	json_array_foreach(json_object_get(ep, "withheld"), i, w)
		if (!strcmp(json_string_value(json_object_get(w, "to")), to) &&
		    !strcmp(json_string_value(json_object_get(w, "role")), "contributor"))
			s += json_integer_value(json_object_get(w, "amount"));
	return s;
}

static long long ep_int(const json_t *res, const char *k)
{
	return json_integer_value(json_object_get(json_array_get(res, json_array_size(res) - 1), k));
}

static const char *NAMES[] = {"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"};

/* ---- 10,000 random epochs ---------------------------------------------------------------- */

static void property(void)
{
	int bad = 0, neg = 0, quota = 0, failed = 0, checked = 0;
	for (int ep = 0; ep < 10000; ep++) {
		long long b[4], left = 10000, fp = (long long)rnd(5000), fc = (long long)rnd(20000);
		for (int i = 0; i < 3; i++)
			left -= (b[i] = (long long)rnd((uint64_t)left + 1));
		b[3] = left;
		int simple = rnd(2); /* shares sum to at most 1, no clusters, no penalties: quotas checked */
		json_t *pol = json_pack("{s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I}, s:{s:i, s:i, s:i, s:f, s:I}}",
					"fee_per_1k_prompt", (json_int_t)fp, "fee_per_1k_completion", (json_int_t)fc,
					"split_bps", "platform", (json_int_t)b[0], "model", (json_int_t)b[1], "stakers",
					(json_int_t)b[2], "contributors", (json_int_t)b[3], "stakes", "alice",
					(json_int_t)rnd(1000), "dave", (json_int_t)rnd(1000), "heidi", (json_int_t)rnd(3),
					"penalty", "max_rejected", (int)rnd(3), "max_flagged", (int)rnd(3), "max_poisoning",
					(int)rnd(2), "min_influence", -(double)rnd(3), "slash_bps", (json_int_t)rnd(10001));
		int nr = 1 + (int)rnd(30);
		char *lines[40];
		u128 fee_total = 0, acc[8] = {0};
		for (int r = 0; r < nr; r++) {
			rec x = {(int)rnd(4000), (int)rnd(4000), (int)rnd(6), {0}, {0}, ""};
			long long room = 1000000000;
			for (int i = 0; i < x.k; i++) {
				int who = (int)rnd(8);
				x.who[i] = NAMES[who];
				x.w[i] = simple ? (long long)rnd((uint64_t)room + 1) : (long long)rnd(700000000) - 100000000;
				if (simple) {
					room -= x.w[i];
					if (x.w[i] > 0)
						acc[who] += ((u128)x.pt * (u128)fp + (u128)x.ct * (u128)fc) * (u128)x.w[i];
				}
			}
			if (!simple && rnd(3) == 0)
				snprintf(x.extra, sizeof x.extra,
					 ",\"clusters\":[{\"records\":[\"sha256:00\"],\"members\":[\"%s\",\"%s\"],\"first\":\"%s\"}],"
					 "\"top\":[{\"record\":\"r\",\"contributor\":\"%s\",\"score\":-%d.5e-1}],"
					 "\"poisoning\":[\"%s\"]",
					 NAMES[rnd(8)], NAMES[rnd(8)], NAMES[rnd(8)], NAMES[rnd(8)], (int)rnd(30), NAMES[rnd(8)]);
			fee_total += (u128)x.pt * (u128)fp + (u128)x.ct * (u128)fc;
			lines[r] = strdup(line_of(&x, r, (int)rnd(2)));
		}
		int nl = nr;
		if (!simple && rnd(2)) {
			char f[160];
			snprintf(f, sizeof f, "{\"type\":\"flags\",\"contributor\":\"%s\",\"rejected\":%d,\"flagged\":%d}",
				 NAMES[rnd(8)], (int)rnd(5), (int)rnd(5));
			lines[nl++] = strdup(f);
		}
		json_t *res = settle_lines(pol, lines, nl, "e");
		if (!res) {
			failed++;
		} else {
			long long fees = ep_int(res, "fees"), p = ep_int(res, "paid"), ret = ep_int(res, "retained");
			long long sum = 0, held = 0;
			size_t i;
			json_t *l;
			json_array_foreach(res, i, l)
				if (!strcmp(json_string_value(json_object_get(l, "type")), "payout")) {
					long long a = json_integer_value(json_object_get(l, "amount"));
					sum += a;
					neg += a <= 0;
				}
			json_array_foreach(json_object_get(json_array_get(res, json_array_size(res) - 1), "withheld"), i, l) {
				held += json_integer_value(json_object_get(l, "amount"));
				neg += json_integer_value(json_object_get(l, "amount")) <= 0;
			}
			bad += sum != p || p + ret != fees || ret < 0 || fees != (long long)(fee_total / 1000) ||
			       ret != ep_int(res, "unattributed") + ep_int(res, "unstaked") + held;
			if (simple && fees > 0) {
				/* the contributors' pool by largest remainder over basis points, in role order */
				long long pool[4], rem[4], given = 0;
				for (int k = 0; k < 4; k++)
					pool[k] = fees * b[k] / 10000, rem[k] = fees * b[k] % 10000, given += pool[k];
				while (given++ < fees) {
					int best = 0;
					for (int k = 1; k < 4; k++)
						best = rem[k] > rem[best] ? k : best;
					pool[best]++, rem[best] = -1;
				}
				u128 D = fee_total * 1000000000u, A = 0;
				long long T = 0;
				for (int k = 0; k < 8; k++)
					A += acc[k];
				T = (long long)((u128)pool[3] * A / D);
				long long got = 0;
				for (int k = 0; k < 8; k++) {
					long long q = (long long)((u128)pool[3] * acc[k] / D), e = earned(res, NAMES[k]);
					quota += e != q && e != q + 1;
					got += e;
				}
				quota += got != T || pool[3] - T != ep_int(res, "unattributed");
				checked++;
			}
			json_decref(res);
		}
		for (int r = 0; r < nl; r++)
			free(lines[r]);
		json_decref(pol);
	}
	ok(failed == 0, "10,000 random epochs settle (%d failed)", failed);
	ok(bad == 0, "payouts add up to paid, paid + retained = fees = floor(sum of fee numerators / 1000), retained "
		     "= unattributed + unstaked + withheld (%d bad)", bad);
	ok(neg == 0, "no payout or withheld amount is zero or negative (%d)", neg);
	ok(quota == 0 && checked > 4000,
	   "every contributor gets the floor of its exact quota or one more, and the pool's attributed part in all "
	   "(%d of %d epochs checked wrong)", quota, checked);
}

/* ---- order ------------------------------------------------------------------------------- */

static void shuffle(void)
{
	json_t *pol = json_pack("{s:i, s:i, s:{s:i, s:i, s:i, s:i}, s:{s:i, s:i}, s:{s:i, s:i}}", "fee_per_1k_prompt",
				1000, "fee_per_1k_completion", 3000, "split_bps", "platform", 1000, "model", 1000,
				"stakers", 500, "contributors", 7500, "stakes", "bob", 7, "carol", 3, "penalty",
				"max_flagged", 1, "slash_bps", 100);
	enum { N = 300 };
	char *a[N + 2], *b[N + 2];
	rec x[N];
	for (int i = 0; i < N; i++) {
		x[i] = (rec){100 + (int)rnd(900), 50 + (int)rnd(500), 1 + (int)rnd(8), {0}, {0}, ""};
		long long room = 1000000000;
		for (int j = 0; j < x[i].k; j++) {
			x[i].who[j] = NAMES[(i + j) % 8];
			room -= (x[i].w[j] = (long long)rnd((uint64_t)room / 2 + 1));
		}
		if (i % 5 == 0)
			snprintf(x[i].extra, sizeof x[i].extra, ",\"clusters\":[{\"members\":[\"%s\",\"%s\"],\"first\":\"%s\"}]",
				 NAMES[i % 8], NAMES[(i + 1) % 8], NAMES[(i + 1) % 8]);
		a[i] = strdup(line_of(&x[i], i, 0));
	}
	a[N] = strdup("{\"type\":\"flags\",\"contributor\":\"carol\",\"flagged\":1}");
	a[N + 1] = strdup("{\"type\":\"flags\",\"flagged\":1,\"contributor\":\"carol\"}");
	/* the same lines shuffled, each written another way (member order, spacing, ignored members) */
	int perm[N + 2];
	for (int i = 0; i < N + 2; i++)
		perm[i] = i;
	for (int i = N + 1; i > 0; i--) {
		int j = (int)rnd((uint64_t)i + 1), t = perm[i];
		perm[i] = perm[j], perm[j] = t;
	}
	for (int i = 0; i < N + 2; i++)
		b[i] = strdup(perm[i] < N ? line_of(&x[perm[i]], perm[i], 1) : a[perm[i]]);
	json_t *r1 = settle_lines(pol, a, N + 2, "x"), *r2 = settle_lines(pol, b, N + 2, "x");
	ok(r1 && r2 && json_equal(r1, r2), "shuffled and rewritten input gives the same result, digests included");
	ok(r1 && ep_int(r1, "retained") > 0 && json_array_size(json_object_get(json_array_get(r1, json_array_size(r1) - 1),
									       "withheld")) == 2,
	   "(carol, flagged twice, is withheld as contributor and as staker)");
	/* one share changed by 1e-9 changes the inputs digest */
	free(b[0]);
	x[perm[0] < N ? perm[0] : 0].w[0] += 1;
	b[0] = strdup(perm[0] < N ? line_of(&x[perm[0]], perm[0], 1) : "{\"type\":\"flags\",\"contributor\":\"carol\"}");
	json_t *r3 = settle_lines(pol, b, N + 2, "x");
	ok(r1 && r3 && strcmp(json_string_value(json_object_get(json_array_get(r1, json_array_size(r1) - 1), "inputs_digest")),
			      json_string_value(json_object_get(json_array_get(r3, json_array_size(r3) - 1), "inputs_digest"))),
	   "a change of 1e-9 in one share changes the inputs digest");
	json_decref(r1), json_decref(r2), json_decref(r3), json_decref(pol);
	for (int i = 0; i < N + 2; i++)
		free(a[i]), free(b[i]);
}

/* ---- what the inputs digest covers ------------------------------------------------------- */

static char *inputs_of(const json_t *pol, const char *a, const char *b)
{
	char *l[2] = {(char *)a, (char *)b};
	json_t *res = settle_lines(pol, l, 2, "d");
	char *d = res ? strdup(json_string_value(json_object_get(json_array_get(res, json_array_size(res) - 1),
								      "inputs_digest"))) : NULL;
	json_decref(res);
	return d;
}

static void coverage(void)
{
	json_t *pol = json_pack("{s:i, s:{s:i}, s:{s:i}}", "fee_per_1k_prompt", 1000, "split_bps", "contributors", 10000,
				"penalty", "max_poisoning", 5);
#define REC(ev, model, u, extra)                                                                                   \
	"{\"event\":\"" ev "\",\"model\":" model ",\"usage\":{\"prompt_tokens\":" u ",\"completion_tokens\":2},"     \
	"\"contributors\":[{\"contributor\":\"alice\",\"share\":0.5},{\"contributor\":\"bob\",\"share\":0.25}]" extra "}"
#define HEXM "\"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\""
#define TOP(s) ",\"top\":[{\"record\":\"r1\",\"contributor\":\"carol\",\"score\":" s "}]"
	const char *base = REC("e1", HEXM, "10", TOP("-0.5") ",\"poisoning\":[\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":\"bob\"}]");
	const char *flags = "{\"type\":\"flags\",\"contributor\":\"erin\",\"rejected\":1,\"flagged\":2,\"poisoning\":3}";
	struct {
		const char *rec, *fl, *what;
	} differ[] = {
		{REC("e1", HEXM, "11", TOP("-0.5") ",\"poisoning\":[\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":\"bob\"}]"), flags, "usage"},
		{REC("e1", "\"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeefe\"", "10", TOP("-0.5") ",\"poisoning\":[\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":\"bob\"}]"), flags, "the model"},
		{REC("e1", "\"sha256:00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff\"", "10", TOP("-0.5") ",\"poisoning\":[\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":\"bob\"}]"), flags, "the model's letter case"},
		{REC("e1", "null", "10", TOP("-0.5") ",\"poisoning\":[\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":\"bob\"}]"), flags, "no model"},
		{REC("e1", HEXM, "10", TOP("-0.6") ",\"poisoning\":[\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":\"bob\"}]"), flags, "a negative score"},
		{REC("e1", HEXM, "10", TOP("-0.5") ",\"poisoning\":[\"dave\",\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":\"bob\"}]"), flags, "a poisoning report"},
		{REC("e1", HEXM, "10", TOP("-0.5") ",\"poisoning\":[\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":\"alice\"}]"), flags, "a cluster's first"},
		{REC("e1", HEXM, "10", TOP("-0.5") ",\"poisoning\":[\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":null}]"), flags, "a cluster's first, null"},
		{base, "{\"type\":\"flags\",\"contributor\":\"erin\",\"rejected\":2,\"flagged\":2,\"poisoning\":3}", "rejected"},
		{base, "{\"type\":\"flags\",\"contributor\":\"erin\",\"rejected\":1,\"flagged\":3,\"poisoning\":3}", "flagged"},
		{base, "{\"type\":\"flags\",\"contributor\":\"erin\",\"rejected\":1,\"flagged\":2,\"poisoning\":4}", "poisoning counted"},
		{base, "{\"type\":\"flags\",\"contributor\":\"frank\",\"rejected\":1,\"flagged\":2,\"poisoning\":3}", "the flagged contributor"},
	}, same[] = {
		{REC("e2", HEXM, "10", TOP("-0.5") ",\"poisoning\":[\"dave\"],\"clusters\":[{\"members\":[\"alice\",\"bob\"],\"first\":\"bob\"}]"), flags, "the event id"},
		{REC("e1", HEXM, "10", TOP("-0.5") ",\"poisoning\":[\"d\\u0061ve\"],\"method\":\"x\",\"clusters\":[{\"records\":[],\"members\":[\"alice\",\"bob\"],\"first\":\"bob\"}]"), flags, "escapes and ignored members"},
		{base, "{\"poisoning\":3,\"flagged\":2,\"rejected\":1,\"contributor\":\"erin\",\"type\":\"flags\",\"note\":1}", "member order"},
	};
	char *d0 = inputs_of(pol, base, flags);
	int bad = 0;
	for (size_t i = 0; i < sizeof differ / sizeof *differ; i++) {
		char *d = inputs_of(pol, differ[i].rec, differ[i].fl);
		if (!d0 || !d || !strcmp(d0, d))
			bad++, diag("digest unchanged by %s", differ[i].what);
		free(d);
	}
	ok(bad == 0, "the inputs digest changes with usage, model, negative scores, poisoning reports, clusters and every "
		     "count of a flags line (%d missed)", bad);
	bad = 0;
	for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
		char *d = inputs_of(pol, same[i].rec, same[i].fl);
		if (!d0 || !d || strcmp(d0, d))
			bad++, diag("digest changed by %s", same[i].what);
		free(d);
	}
	ok(bad == 0, "but not with the event id, escapes, member order or ignored members (%d changed)", bad);
	ok(d0 && !strncmp(d0, "blake2b:", 8) && strlen(d0) == 8 + 64, "it is written blake2b:<64 hex digits>");
	free(d0);
	json_decref(pol);
#undef REC
#undef HEXM
#undef TOP
}

/* ---- manipulation ------------------------------------------------------------------------ */

static json_t *POL;

static void manipulation(void)
{
	POL = json_pack("{s:i, s:i, s:{s:i, s:i, s:i, s:i}}", "fee_per_1k_prompt", 1000, "fee_per_1k_completion", 3000,
			"split_bps", "platform", 1000, "model", 1000, "stakers", 0, "contributors", 8000);
	enum { N = 200 };
	int split_bad = 0, others_bad = 0, copy_bad = 0, near_bad = 0;
	long long worst_gain = -1000000;
	for (int trial = 0; trial < 20; trial++) {
		char *one[N], *ten[N], *copy[N], *near[N];
		for (int i = 0; i < N; i++) {
			/* raw positive influences of alice, bob and mallory's records in this answer */
			long long xa = 1 + (long long)rnd(1000), xb = 1 + (long long)rnd(1000), xm = 1 + (long long)rnd(1000);
			long long T = xa + xb + xm;
			rec r = {100 + (int)rnd(2000), 10 + (int)rnd(500), 3, {"alice", "bob", "mallory"},
				 {xa * 1000000000 / T, xb * 1000000000 / T, xm * 1000000000 / T}, ""};
			one[i] = strdup(line_of(&r, i, 0));
			/* mallory's records spread over 10 identities: her share split among them */
			rec s = r;
			long long left = r.w[2];
			s.k = 2;
			char names[10][16];
			for (int j = 0; j < 10; j++) {
				snprintf(names[j], sizeof names[j], "mallory-%d", j);
				long long part = j == 9 ? left : (long long)rnd((uint64_t)left / 3 + 1);
				left -= part;
				s.who[s.k] = names[j];
				s.w[s.k++] = part;
			}
			ten[i] = strdup(line_of(&s, i, 0));
			/* copycat re-submits alice's records: same influence, shares renormalised over four */
			long long T2 = T + xa;
			rec c = {r.pt, r.ct, 4, {"alice", "bob", "mallory", "copycat"},
				 {xa * 1000000000 / T2, xb * 1000000000 / T2, xm * 1000000000 / T2, xa * 1000000000 / T2},
				 ",\"clusters\":[{\"members\":[\"alice\",\"copycat\"],\"first\":\"alice\"}]"};
			copy[i] = strdup(line_of(&c, i, 0));
			/* a near copy: somewhat different influence, either way */
			long long xc = xa / 2 + (long long)rnd((uint64_t)xa + 1), T3 = T + xc;
			rec d = {r.pt, r.ct, 4, {"copycat", "alice", "bob", "mallory"},
				 {xc * 1000000000 / T3, xa * 1000000000 / T3, xb * 1000000000 / T3, xm * 1000000000 / T3},
				 ",\"clusters\":[{\"records\":[\"sha256:a\",\"sha256:b\"],\"members\":[\"alice\",\"copycat\"],"
				 "\"first\":\"alice\"}]"};
			near[i] = strdup(line_of(&d, i, 0));
		}
		json_t *r1 = settle_lines(POL, one, N, "m"), *r10 = settle_lines(POL, ten, N, "m");
		json_t *rc = settle_lines(POL, copy, N, "m"), *rn = settle_lines(POL, near, N, "m");
		long long m1 = earned(r1, "mallory"), m10 = 0;
		for (int j = 0; j < 10; j++) {
			char n[16];
			snprintf(n, sizeof n, "mallory-%d", j);
			m10 += earned(r10, n);
		}
		worst_gain = m10 - m1 > worst_gain ? m10 - m1 : worst_gain;
		split_bad += m10 > m1 + 10 || m10 < m1 - 10;
		others_bad += llabs(earned(r10, "alice") - earned(r1, "alice")) > 1 ||
			      llabs(earned(r10, "bob") - earned(r1, "bob")) > 1;
		copy_bad += earned(rc, "copycat") != 0 || earned(rc, "alice") < earned(r1, "alice") - 1 ||
			    llabs(earned(rc, "bob") - earned(r1, "bob")) > 1 || llabs(earned(rc, "mallory") - m1) > 1;
		near_bad += earned(rn, "copycat") != 0 || earned(rn, "alice") < earned(r1, "alice") - 1;
		json_decref(r1), json_decref(r10), json_decref(rc), json_decref(rn);
		for (int i = 0; i < N; i++)
			free(one[i]), free(ten[i]), free(copy[i]), free(near[i]);
	}
	ok(split_bad == 0, "splitting records across 10 identities earns within 10 units of not splitting "
			   "(20 trials; largest gain %lld)", worst_gain);
	ok(others_bad == 0, "and everyone else's earnings move by at most 1");
	ok(copy_bad == 0, "exact copies earn the copier nothing; the original, and everyone else, keep their "
			  "earnings (within 1)");
	ok(near_bad == 0, "near copies, more or less influential than the original, earn the copier nothing and "
			  "the original keeps its share");
}

/* ---- penalties: the worked example of attr-settle(1) ------------------------------------------ */

static void penalties(void)
{
	json_t *pol = json_pack("{s:i, s:i, s:{s:i, s:i, s:i, s:i}, s:{s:i, s:i}, s:{s:i, s:i, s:i}}",
				"fee_per_1k_prompt", 1000, "fee_per_1k_completion", 2000, "split_bps", "platform", 1000,
				"model", 1000, "stakers", 2000, "contributors", 6000, "stakes", "alice", 3000, "mallory",
				1000, "penalty", "max_flagged", 0, "max_poisoning", 0, "slash_bps", 5000);
	char *lines[] = {
		"{\"event\":\"q1\",\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":500},"
		"\"contributors\":[{\"contributor\":\"alice\",\"share\":0.5},{\"contributor\":\"mallory\",\"share\":0.5}]}",
		"{\"event\":\"q2\",\"usage\":{\"prompt_tokens\":500,\"completion_tokens\":250},"
		"\"contributors\":[{\"contributor\":\"bob\",\"share\":0.75},{\"contributor\":\"alice\",\"share\":0.25}]}",
		"{\"type\":\"flags\",\"contributor\":\"mallory\",\"flagged\":2}",
	};
	json_t *res = settle_lines(pol, lines, 3, "2026-11");
	json_t *ep = json_array_get(res, json_array_size(res) - 1);
	json_t *w = json_object_get(ep, "withheld"), *sl = json_object_get(ep, "slashed");
	ok(res && ep_int(res, "fees") == 3000 && paid(res, "platform", "platform") == 300 &&
	   paid(res, "model", "model") == 300 && paid(res, "alice", "stakers") == 450 &&
	   paid(res, "alice", "contributor") == 750 && paid(res, "bob", "contributor") == 450 &&
	   paid(res, "mallory", NULL) == 0 && ep_int(res, "paid") == 2250 && ep_int(res, "retained") == 750,
	   "worked example: fees 3000; platform 300, model 300, alice 450 + 750, bob 450, mallory nothing; "
	   "retained 750");
	ok(json_array_size(w) == 2 && json_integer_value(json_object_get(json_array_get(w, 0), "amount")) == 150 &&
	   json_integer_value(json_object_get(json_array_get(w, 1), "amount")) == 600 &&
	   json_array_size(sl) == 1 && json_integer_value(json_object_get(json_array_get(sl, 0), "amount")) == 500,
	   "mallory's 600 as contributor and 150 as staker withheld, 500 of her 1000 stake slashed");
	json_decref(res);
	/* the same through a poisoning report and through negative influence */
	char *l2[] = {lines[0], lines[1],
		      "{\"event\":\"q3\",\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0},\"contributors\":[],"
		      "\"poisoning\":[\"mallory\"]}"};
	res = settle_lines(pol, l2, 3, "2026-11");
	ok(res && paid(res, "mallory", NULL) == 0 && ep_int(res, "retained") == 750, "a poisoning report withholds too");
	json_decref(res);
	json_object_set_new(json_object_get(pol, "penalty"), "min_influence", json_real(-1.5));
	char *l3[] = {lines[0], lines[1],
		      "{\"event\":\"q4\",\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0},\"contributors\":[],"
		      "\"top\":[{\"record\":\"r1\",\"contributor\":\"bob\",\"score\":-1.5},"
		      "{\"record\":\"r2\",\"contributor\":\"mallory\",\"score\":-1.25e0},"
		      "{\"record\":\"r3\",\"contributor\":\"mallory\",\"score\":-0.2500000019}]}"};
	res = settle_lines(pol, l3, 3, "2026-11");
	ok(res && paid(res, "mallory", NULL) == 0 && paid(res, "bob", NULL) == 450,
	   "negative influence below min_influence (-1.250000000 - 0.250000001 < -1.5) is penalised, at it (-1.5) is "
	   "not (scores read to 1e-9, toward zero)");
	json_decref(res);
	json_decref(pol);
}

/* ---- strictness -------------------------------------------------------------------------- */

static void strict(void)
{
	json_t *pol = json_pack("{s:{s:i}}", "split_bps", "contributors", 10000);
	const char *badl[] = {
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[]",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[]} x",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1.5,\"completion_tokens\":1},\"contributors\":[]}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":1},\"contributors\":[]}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1},\"contributors\":[]}",
		"{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[]}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}",
		"{\"event\":\"q\",\"event\":\"r\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[]}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[{\"contributor\":\"a\"}]}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[{\"contributor\":\"a\",\"share\":\"1\"}]}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[{\"contributor\":\"\\ud800\",\"share\":1}]}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[{\"contributor\":\"\xc0\xaf\",\"share\":1}]}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[],\"x\":01}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[],\"x\":[1,]}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[],\"x\":\"a\tb\"}",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},\"contributors\":[],\"clusters\":[{\"first\":\"a\"}]}",
		"{\"type\":\"payout\",\"to\":\"a\",\"role\":\"contributor\",\"amount\":3}",
		"{\"type\":\"flags\",\"rejected\":1}",
		"[1,2]",
		"{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1099511627777,\"completion_tokens\":1},\"contributors\":[]}",
	};
	trail_settle *s;
	trail_settle_new(pol, &s, NULL);
	int refused = 0;
	size_t n = sizeof badl / sizeof *badl;
	for (size_t i = 0; i < n; i++) {
		trail_error e = {0};
		int rc = trail_settle_line(s, badl[i], strlen(badl[i]), &e);
		refused += rc == TRAIL_EDATA && e.msg[0];
		if (rc != TRAIL_EDATA)
			diag("accepted (%d): %s", rc, badl[i]);
	}
	ok(refused == (int)n && trail_settle_records(s) == 0, "%d malformed lines refused with a message, nothing counted",
	   refused);
	/* deep nesting, escapes, a record that is fine */
	char deep[2000];
	size_t k = (size_t)snprintf(deep, sizeof deep, "{\"event\":\"q\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1},"
							 "\"contributors\":[],\"x\":");
	for (int i = 0; i < 100; i++)
		deep[k++] = '[';
	for (int i = 0; i < 100; i++)
		deep[k++] = ']';
	strcpy(deep + k, "}");
	ok(trail_settle_line(s, deep, strlen(deep), NULL) == TRAIL_EDATA, "nesting deeper than 64 is refused");
	const char *good = "{\"event\":{\"id\":\"q\\u0031\",\"x\":[1,{}]},\"model\":null,\"usage\":{\"prompt_tokens\":1000,"
			   "\"completion_tokens\":0,\"total_tokens\":1000},\"contributors\":[{\"contributor\":\"\\u00e9\\ud83d\\ude00\","
			   "\"share\":1E-1},{\"contributor\":\"\xc3\xa9\xf0\x9f\x98\x80\",\"share\":2e-1}],\"spans\":[]}";
	ok(trail_settle_line(s, good, strlen(good), NULL) == TRAIL_OK && trail_settle_records(s) == 1,
	   "escaped and literal UTF-8 names, exponents, ignored members: accepted");
	json_t *res;
	trail_settle_result(s, "s", &res, NULL);
	ok(res && json_array_size(res) == 1 && ep_int(res, "unattributed") == 0 && ep_int(res, "fees") == 0,
	   "(a zero fee pays nothing)");
	json_decref(res);
	trail_settle_free(s);

	json_t *p2 = json_pack("{s:i, s:{s:i}}", "fee_per_1k_prompt", 1000, "split_bps", "contributors", 10000);
	trail_settle_new(p2, &s, NULL);
	trail_settle_line(s, good, strlen(good), NULL);
	trail_settle_result(s, "s", &res, NULL);
	ok(res && paid(res, "\xc3\xa9\xf0\x9f\x98\x80", NULL) == 300 && ep_int(res, "unattributed") == 700,
	   "\\u escapes and literal UTF-8 name the same payee; shares 0.1 + 0.2 of 1000 pay 300, 700 unattributed");
	json_decref(res);
	/* shares summing to more than 1 are scaled down: never more than the record's fee */
	const char *over = "{\"event\":\"o\",\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":0},\"contributors\":"
			   "[{\"contributor\":\"a\",\"share\":0.9},{\"contributor\":\"b\",\"share\":0.9},"
			   "{\"contributor\":\"c\",\"share\":123456789012345678901234567890}]}";
	trail_settle_free(s);
	trail_settle_new(p2, &s, NULL);
	ok(trail_settle_line(s, over, strlen(over), NULL) == TRAIL_OK, "huge shares are read (saturated)");
	trail_settle_result(s, "s", &res, NULL);
	ok(res && ep_int(res, "paid") == 1000 && paid(res, "c", NULL) == 1000, "and scaled to the record's fee");
	json_decref(res);
	trail_settle_free(s);
	json_decref(p2);

	const char *badp[] = {
		"{\"split_bps\":{\"platform\":10}}",
		"{\"split_bps\":{\"platform\":5000,\"contributors\":5000},\"fee_per_1k_typo\":3}",
		"{\"split_bps\":{\"platform\":5000,\"contributors\":5000,\"x\":0}}",
		"{\"split_bps\":{\"platform\":-5000,\"contributors\":15000}}",
		"{\"split_bps\":{\"contributors\":10000},\"fee_per_1k_prompt\":1.5}",
		"{\"split_bps\":{\"contributors\":10000},\"penalty\":{\"slash_bps\":10001}}",
		"{\"split_bps\":{\"contributors\":10000},\"stakes\":{\"a\":-1}}",
		"{\"split_bps\":{\"contributors\":10000},\"model_owners\":{\"m\":3}}",
		"{\"split_bps\":{\"contributors\":10000},\"platform\":\"\"}",
		"[]",
	};
	int prefused = 0;
	for (size_t i = 0; i < sizeof badp / sizeof *badp; i++) {
		json_t *p = json_loads(badp[i], 0, NULL);
		trail_error e = {0};
		prefused += trail_settle_new(p, &s, &e) == TRAIL_EDATA && e.msg[0];
		json_decref(p);
	}
	ok(prefused == (int)(sizeof badp / sizeof *badp), "bad policies refused (%d)", prefused);
	json_decref(pol);
}

/* ---- model owners and fees at the limit --------------------------------------------------------- */

static void models(void)
{
	json_t *pol = json_pack("{s:i, s:{s:i, s:i}, s:s, s:{s:s}}", "fee_per_1k_completion", 1000, "split_bps", "model",
				3000, "contributors", 7000, "model_owner", "house", "model_owners", "sha256:m1", "olga");
	char *l[] = {"{\"event\":\"a\",\"model\":\"sha256:m1\",\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":2000},\"contributors\":[]}",
		     "{\"event\":\"b\",\"model\":\"sha256:m2\",\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":1000},\"contributors\":[]}",
		     "{\"event\":\"c\",\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":1000},\"contributors\":[]}"};
	json_t *res = settle_lines(pol, l, 3, "m");
	ok(res && paid(res, "olga", "model") == 600 && paid(res, "house", "model") == 600 &&
	   ep_int(res, "unattributed") == 2800,
	   "the model pool goes to each model's owner by its fees (olga 600, the default owner 600)");
	json_decref(res);
	json_decref(pol);

	pol = json_pack("{s:I, s:{s:i}}", "fee_per_1k_prompt", (json_int_t)1 << 40, "split_bps", "contributors", 10000);
	trail_settle *s;
	trail_settle_new(pol, &s, NULL);
	char big[256];
	snprintf(big, sizeof big, "{\"event\":\"b\",\"usage\":{\"prompt_tokens\":%llu,\"completion_tokens\":0},"
				  "\"contributors\":[{\"contributor\":\"x\",\"share\":1}]}", 1ULL << 20);
	int r1 = trail_settle_line(s, big, strlen(big), NULL), r2 = TRAIL_OK, n = 0;
	while (r2 == TRAIL_OK && n < 20)
		r2 = trail_settle_line(s, big, strlen(big), NULL), n++;
	trail_settle_result(s, "b", &res, NULL);
	ok(r1 == TRAIL_OK && r2 == TRAIL_ELIMIT && res && ep_int(res, "paid") == ep_int(res, "fees") &&
	   trail_settle_records(s) == 7 &&
	   ep_int(res, "fees") == (long long)((u128)7 * ((u128)1 << 60) / 1000),
	   "fees up to 2^53-1 are exact; past that the line is refused (TRAIL_ELIMIT) and the sums stay as they were");
	json_decref(res);
	trail_settle_free(s);
	json_decref(pol);
}

/*
 * The largest-remainder products at their extremes: fees at the 2^53-1 cap
 * times per-payee weights near 2^93 (the 192-bit path), stakes near 2^53
 * each summing past 2^55. Each amount is checked against its quota
 * computed in long double (64-bit mantissa: error far below 1 unit here).
 */
static void extremes(void)
{
	json_t *pol = json_pack("{s:I, s:{s:i, s:i}, s:{s:I, s:I, s:I, s:I, s:I}}", "fee_per_1k_prompt", (json_int_t)1 << 40,
				"split_bps", "stakers", 3333, "contributors", 6667, "stakes", "s1",
				((json_int_t)1 << 53) - 1, "s2", ((json_int_t)1 << 53) - 3, "s3", (json_int_t)1 << 52,
				"s4", (json_int_t)7, "s5", ((json_int_t)1 << 53) - 11);
	char l[512];
	trail_settle *s;
	trail_settle_new(pol, &s, NULL);
	int n = 0;
	/* 7 records of 2^60 fee numerators: fees 7 * 2^60 / 1000, just under 2^53 */
	for (; n < 7; n++) {
		snprintf(l, sizeof l, "{\"event\":\"x%d\",\"usage\":{\"prompt_tokens\":%llu,\"completion_tokens\":0},"
				      "\"contributors\":[{\"contributor\":\"a\",\"share\":0.333333333},{\"contributor\":\"b\","
				      "\"share\":0.333333333},{\"contributor\":\"c\",\"share\":0.%09d}]}", n, 1ULL << 20,
			 333333334 - n);
		trail_settle_line(s, l, strlen(l), NULL);
	}
	json_t *res;
	trail_error e = {0};
	int rc = trail_settle_result(s, "x", &res, &e);
	if (rc)
		diag("%s", e.msg);
	long long F = ep_int(res, "fees"), pc = 0, ps = 0;
	long double D = 7.0L * 1e9L, stake = (long double)(((1LL << 53) - 1) + ((1LL << 53) - 3) + (1LL << 52) + 7 + ((1LL << 53) - 11));
	int far = 0;
	long long pool_c = (long long)((unsigned __int128)F * 6667 / 10000), pool_s = F - pool_c;
	/* pools: largest remainder over the two roles, so each within 1 of its exact share */
	const char *who[] = {"a", "b", "c"};
	for (int i = 0; i < 3; i++) {
		long double w = 0;
		for (int k = 0; k < 7; k++)
			w += i < 2 ? 333333333.0L : (long double)(333333334 - k);
		long long a = paid(res, who[i], "contributor");
		long double q = (long double)pool_c * w / D;
		pc += a;
		if (a < q - 2 || a > q + 2) /* the pool itself may differ by 1 from F * 6667 / 10000 */
			far++, diag("%s: %lld, quota %.3Lf", who[i], a, q);
	}
	const char *st[] = {"s1", "s2", "s3", "s4", "s5"};
	const long long sv[] = {(1LL << 53) - 1, (1LL << 53) - 3, 1LL << 52, 7, (1LL << 53) - 11};
	for (int i = 0; i < 5; i++) {
		long long a = paid(res, st[i], "stakers");
		long double q = (long double)pool_s * (long double)sv[i] / stake;
		ps += a;
		if (a < q - 2 || a > q + 2)
			far++, diag("%s: %lld, quota %.3Lf", st[i], a, q);
	}
	ok(rc == TRAIL_OK && F > (1LL << 52) && far == 0 && pc + ps == ep_int(res, "paid") &&
	   ep_int(res, "paid") + ep_int(res, "retained") == F,
	   "fees near 2^53 (%lld), weights near 2^93, stakes near 2^53 summing past 2^55: every amount at its quota, "
	   "paid + retained = fees", F);
	json_decref(res);
	trail_settle_free(s);
	json_decref(pol);
}

int main(void)
{
	property();
	shuffle();
	coverage();
	manipulation();
	penalties();
	strict();
	models();
	extremes();
	json_decref(POL);
	return tap_done();
}
