/*
 * Settlement by line range: a shard accounts its lines of the epoch's
 * inputs into the handle's exact sums and writes them out (the partial);
 * the merge adds the partials' sums into one handle, as the reading
 * threads' sums are added (settle_read.c), so the result is the one pass's
 * byte for byte: the sums are integers, their order does not matter, and
 * every rounding happens once, on the merged sums. settle.h has the format.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "settle/settle_int.h"

/* ---- reading a range ---------------------------------------------------------------------- */

int trail_settle_read_range(trail_settle *s, FILE *in, const char *src, uint64_t *at, uint64_t lo, uint64_t hi,
			    char digest[TRAIL_DIGEST_STRLEN], trail_error *err)
{
	size_t cap = (size_t)1 << 20, have = 0;
	char *buf = trail_malloc(cap);
	long lineno = 0;
	int rc = TRAIL_OK;
	crypto_hash_sha256_state h;
	uint8_t d[32];
	if (!buf)
		return oom(err);
	crypto_hash_sha256_init(&h);
	for (;;) {
		size_t got = fread(buf + have, 1, cap - have, in), start = 0;
		if (digest)
			crypto_hash_sha256_update(&h, (const unsigned char *)buf + have, got);
		have += got;
		char *nl;
		while (!rc && (nl = memchr(buf + start, '\n', have - start))) {
			lineno++;
			uint64_t k = (*at)++;
			if (k >= lo && k < hi)
				rc = trail_settle_line(s, buf + start, (size_t)(nl - buf) - start, err);
			start = (size_t)(nl - buf) + 1;
		}
		if (rc)
			break;
		memmove(buf, buf + start, have - start);
		have -= start;
		if (got == 0 || have == cap) {
			if (ferror(in)) {
				trail_free(buf);
				return trail_error_at(err, TRAIL_EIO, src, lineno + 1, "read error");
			}
			if (got == 0) {
				if (have) { /* a last line without its newline */
					lineno++;
					uint64_t k = (*at)++;
					if (k >= lo && k < hi)
						rc = trail_settle_line(s, buf, have, err);
				}
				break;
			}
			char *nb = cap >= LINE_LIMIT ? NULL : trail_realloc(buf, cap * 2);
			if (!nb) {
				trail_free(buf);
				return cap >= LINE_LIMIT ? trail_error_at(err, TRAIL_ELIMIT, src, lineno + 1, "a line longer than 256 MiB")
							 : oom(err);
			}
			buf = nb;
			cap *= 2;
		}
	}
	trail_free(buf);
	if (rc && err) {
		char msg[sizeof err->msg];
		memcpy(msg, err->msg, sizeof msg);
		return trail_error_at(err, rc, src, lineno, "%s", msg);
	}
	if (rc)
		return rc;
	crypto_hash_sha256_final(&h, d);
	if (digest)
		trail_digest_format(d, digest);
	return TRAIL_OK;
}

/* ---- exact integers as decimal strings ------------------------------------------------------ */

static json_t *dec(u128 v, int neg)
{
	char t[48], *p = t + sizeof t;
	*--p = 0;
	do
		*--p = (char)('0' + (int)(v % 10));
	while (v /= 10);
	if (neg)
		*--p = '-';
	return json_string(p);
}

static json_t *dec_u(u128 v)
{
	return dec(v, 0);
}

static json_t *dec_i(i128 v)
{
	return v < 0 ? dec((u128)0 - (u128)v, 1) : dec((u128)v, 0);
}

/* A decimal string into *out, at most max (and, with neg, down to -max): -1 otherwise. */
static int undec(const json_t *j, u128 max, int neg, u128 *out, int *minus)
{
	const char *p = json_string_value(j);
	u128 v = 0;
	*minus = 0;
	if (!p)
		return -1;
	if (neg && *p == '-')
		*minus = 1, p++;
	if (!*p || (*p == '0' && p[1]) || (*minus && *p == '0'))
		return -1;
	for (; *p; p++) {
		if (*p < '0' || *p > '9' || v > (max - (u128)(*p - '0')) / 10)
			return -1;
		v = v * 10 + (u128)(*p - '0');
	}
	*out = v;
	return 0;
}

static int get_u128(const json_t *o, const char *k, u128 *out)
{
	int m;
	return undec(json_object_get(o, k), ~(u128)0, 0, out, &m);
}

static int get_u64(const json_t *o, const char *k, uint64_t *out)
{
	u128 v;
	int m;
	if (undec(json_object_get(o, k), UINT64_MAX, 0, &v, &m))
		return -1;
	*out = (uint64_t)v;
	return 0;
}

static int get_i128(const json_t *o, const char *k, i128 *out)
{
	u128 v;
	int m;
	if (undec(json_object_get(o, k), ((u128)1 << 127) - 1, 1, &v, &m))
		return -1;
	*out = m ? -(i128)v : (i128)v;
	return 0;
}

/* ---- the partial -------------------------------------------------------------------------- */

static int put(trail_buf *out, const json_t *v, trail_error *err)
{
	char *t = NULL;
	size_t n;
	int rc = v ? trail_jcs(v, &t, &n, err) : oom(err);
	if (!rc && (trail_buf_put(out, t, n) || trail_buf_put(out, "\n", 1)))
		rc = oom(err);
	trail_free(t);
	return rc;
}

int trail_settle_partial(const trail_settle *s, const char *epoch, const json_t *inputs, const json_t *records,
			 uint64_t lines, uint64_t lo, uint64_t hi, trail_buf *out, trail_error *err)
{
	char pd[TRAIL_DIGEST_STRLEN], in[65];
	int rc = trail_jcs_digest(s->policy, pd, err);
	if (rc)
		return rc;
	trail_hex(s->inputs, 32, in);
	json_t *h = json_pack("{s:s, s:i, s:s, s:s, s:O, s:I, s:I, s:I, s:I, s:{s:o, s:o, s:o, s:o, s:o, s:o, s:s, s:O}}",
			      "type", "settlement-partial", "version", 1, "epoch", epoch, "policy", pd, "inputs", inputs,
			      "lines", (json_int_t)lines, "lo", (json_int_t)lo, "hi", (json_int_t)hi, "payees",
			      (json_int_t)s->npay, "sums", "fees", dec_u(s->fees), "lowconf", dec_u(s->lowconf),
			      "lowconf_records", dec_u(s->lowconf_records), "adapter_records", dec_u(s->adapter_records),
			      "records", dec_u(s->records), "flag_lines", dec_u(s->flag_lines), "inputs", in,
			      "input_records", records);
	rc = put(out, h, err);
	json_decref(h);
	for (size_t i = 0; !rc && i < s->npay; i++) {
		const payee *p = &s->pay[i];
		json_t *l = json_pack("{s:s%, s:o, s:o, s:o, s:o, s:o, s:o, s:b, s:b}", "payee", p->name, (size_t)p->len,
				      "acc", dec_u(p->acc), "mfee", dec_u(p->mfee), "neg", dec_i(p->neg), "rejected",
				      dec_u(p->rejected), "flagged", dec_u(p->flagged), "poisoning", dec_u(p->poisoning),
				      "rec", (int)p->rec, "flag", (int)p->flag);
		rc = put(out, l, err);
		json_decref(l);
	}
	return rc;
}

/* ---- the merge ---------------------------------------------------------------------------- */

typedef struct part {
	const char *path;
	json_t *lines; /* [header, payees...] */
	uint64_t lo, hi;
} part;

static int read_part(part *p, trail_error *err)
{
	int rc = trail_ndjson_slurp(p->path, 0, &p->lines, err);
	if (rc)
		return rc;
	json_t *h = json_array_get(p->lines, 0);
	const char *type = json_string_value(json_object_get(h, "type"));
	json_t *lo = json_object_get(h, "lo"), *hi = json_object_get(h, "hi"), *n = json_object_get(h, "lines");
	if (!type || strcmp(type, "settlement-partial") || !json_is_integer(lo) || !json_is_integer(hi) ||
	    !json_is_integer(n) || json_integer_value(lo) < 0 || json_integer_value(hi) <= json_integer_value(lo) ||
	    json_integer_value(hi) > json_integer_value(n) || !json_is_array(json_object_get(h, "inputs")))
		return trail_error_at(err, TRAIL_EDATA, p->path, 1, "not a partial of attr-settle --partial");
	if (json_integer_value(json_object_get(h, "version")) != 1)
		return trail_error_at(err, TRAIL_EDATA, p->path, 1, "a partial of version %lld, not 1 (made by another release)",
				      (long long)json_integer_value(json_object_get(h, "version")));
	if ((size_t)json_integer_value(json_object_get(h, "payees")) + 1 != json_array_size(p->lines))
		return trail_error_at(err, TRAIL_EDATA, p->path, (long)json_array_size(p->lines),
				      "%zu payees, not the %lld the partial names (cut short?)", json_array_size(p->lines) - 1,
				      (long long)json_integer_value(json_object_get(h, "payees")));
	p->lo = (uint64_t)json_integer_value(lo), p->hi = (uint64_t)json_integer_value(hi);
	return TRAIL_OK;
}

static int cmp_part(const void *a, const void *b)
{
	const part *x = *(part *const *)a, *y = *(part *const *)b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* The parts against the handle and each other: one epoch, policy and set of inputs; every line exactly once. */
static int check_parts(const trail_settle *s, const char *epoch, part **by, size_t n, trail_error *err)
{
	char pd[TRAIL_DIGEST_STRLEN];
	int rc = trail_jcs_digest(s->policy, pd, err);
	if (rc)
		return rc;
	json_t *h0 = json_array_get(by[0]->lines, 0);
	uint64_t N = (uint64_t)json_integer_value(json_object_get(h0, "lines")), at = 0;
	for (size_t i = 0; i < n; i++) {
		json_t *h = json_array_get(by[i]->lines, 0);
		const char *e = json_string_value(json_object_get(h, "epoch"));
		const char *pol = json_string_value(json_object_get(h, "policy"));
		if (!e || strcmp(e, epoch))
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "a partial of epoch %s, not %s", e ? e : "?", epoch);
		if (!pol || strcmp(pol, pd))
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "a partial of another policy (%s, not %s)",
					      pol ? pol : "?", pd);
		if (!json_equal(json_object_get(h, "inputs"), json_object_get(h0, "inputs")) ||
		    (uint64_t)json_integer_value(json_object_get(h, "lines")) != N)
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "a partial of other inputs than %s", by[0]->path);
		if (by[i]->lo > at)
			return trail_error_set(err, TRAIL_EDATA, "lines %llu:%llu are in no partial", (unsigned long long)at,
					       (unsigned long long)by[i]->lo);
		if (by[i]->lo < at)
			return trail_error_at(err, TRAIL_EDATA, by[i]->path, 1, "lines %llu:%llu are also in %s%s",
					      (unsigned long long)by[i]->lo, (unsigned long long)(at < by[i]->hi ? at : by[i]->hi),
					      by[i - 1]->path,
					      by[i - 1]->lo == by[i]->lo && by[i - 1]->hi == by[i]->hi ? " (the same part twice)" : "");
		at = by[i]->hi;
	}
	if (at != N)
		return trail_error_set(err, TRAIL_EDATA, "lines %llu:%llu are in no partial", (unsigned long long)at,
				       (unsigned long long)N);
	return TRAIL_OK;
}

static void add256(uint8_t acc[32], const uint8_t d[32])
{
	unsigned carry = 0;
	for (int i = 31; i >= 0; i--) {
		unsigned v = acc[i] + d[i] + carry;
		acc[i] = (uint8_t)v;
		carry = v >> 8;
	}
}

/* A part's sums and payees into s. */
static int add_part(trail_settle *s, const part *p, json_t *records, trail_error *err)
{
	json_t *h = json_array_get(p->lines, 0), *sums = json_object_get(h, "sums");
	json_t *ir = json_object_get(sums, "input_records");
	const char *hex = json_string_value(json_object_get(sums, "inputs"));
	u128 fees, lowconf;
	uint64_t lr, ar, nr, fl;
	uint8_t in[32];
	if (get_u128(sums, "fees", &fees) || get_u128(sums, "lowconf", &lowconf) ||
	    get_u64(sums, "lowconf_records", &lr) || get_u64(sums, "adapter_records", &ar) ||
	    get_u64(sums, "records", &nr) || get_u64(sums, "flag_lines", &fl) || !hex ||
	    trail_unhex(hex, strlen(hex), in, 32) || !json_is_array(ir) ||
	    json_array_size(ir) != json_array_size(records) || fees > FEES_MAX)
		return trail_error_at(err, TRAIL_EDATA, p->path, 1, "the partial's sums are not exact integers of a settlement");
	for (size_t i = 0; i < json_array_size(ir); i++) {
		json_t *x = json_array_get(ir, i), *y = json_array_get(records, i);
		if (!json_is_integer(x) || json_integer_value(x) < 0)
			return trail_error_at(err, TRAIL_EDATA, p->path, 1, "input_records: counts were expected");
		if (json_integer_set(y, json_integer_value(y) + json_integer_value(x)))
			return oom(err);
	}
	for (size_t i = 1; i < json_array_size(p->lines); i++) {
		json_t *l = json_array_get(p->lines, i);
		const char *name = json_string_value(json_object_get(l, "payee"));
		size_t len = json_string_length(json_object_get(l, "payee"));
		u128 acc, mfee;
		i128 neg;
		uint64_t rej, flag, poi;
		uint32_t k;
		json_t *rec = json_object_get(l, "rec"), *fg = json_object_get(l, "flag");
		if (!name || !len || len > UINT32_MAX || get_u128(l, "acc", &acc) || get_u128(l, "mfee", &mfee) ||
		    get_i128(l, "neg", &neg) || get_u64(l, "rejected", &rej) || get_u64(l, "flagged", &flag) ||
		    get_u64(l, "poisoning", &poi) || !json_is_boolean(rec) || !json_is_boolean(fg))
			return trail_error_at(err, TRAIL_EDATA, p->path, (long)i + 1, "not a payee's sums");
		if (settle_payee_get(s, name, len, 1, &k))
			return oom(err);
		payee *q = &s->pay[k];
		q->acc += acc;
		q->mfee += mfee;
		q->neg += neg;
		q->rejected = sat_add(q->rejected, rej);
		q->flagged = sat_add(q->flagged, flag);
		q->poisoning = sat_add(q->poisoning, poi);
		q->rec |= json_is_true(rec);
		q->flag |= json_is_true(fg);
	}
	s->fees += fees;
	s->lowconf += lowconf;
	s->lowconf_records += lr;
	s->adapter_records += ar;
	add256(s->inputs, in);
	s->records += nr;
	s->flag_lines += fl;
	if (s->fees > FEES_MAX)
		return trail_error_set(err, TRAIL_ELIMIT, "the epoch's fees exceed 2^53-1 minor units");
	return TRAIL_OK;
}

int trail_settle_merge(trail_settle *s, const char *epoch, const char *const *paths, size_t n, json_t **inputs,
		       trail_error *err)
{
	part *ps = trail_calloc(n ? n : 1, sizeof *ps);
	part **by = trail_calloc(n ? n : 1, sizeof *by);
	json_t *ins = NULL, *recs = json_array();
	int rc = TRAIL_OK;
	*inputs = NULL;
	if (!ps || !by || !recs)
		rc = oom(err);
	else if (!n)
		rc = trail_error_set(err, TRAIL_EUSAGE, "no partials to merge");
	for (size_t i = 0; i < n && !rc; i++) {
		ps[i].path = paths[i];
		by[i] = &ps[i];
		rc = read_part(&ps[i], err);
	}
	if (!rc) {
		qsort(by, n, sizeof *by, cmp_part);
		rc = check_parts(s, epoch, by, n, err);
	}
	if (!rc) {
		ins = json_deep_copy(json_object_get(json_array_get(by[0]->lines, 0), "inputs"));
		for (size_t i = 0; ins && i < json_array_size(ins); i++)
			if (json_array_append_new(recs, json_integer(0)))
				rc = oom(err);
		if (!ins)
			rc = oom(err);
	}
	for (size_t i = 0; i < n && !rc; i++)
		rc = add_part(s, by[i], recs, err);
	for (size_t i = 0; !rc && i < json_array_size(ins); i++)
		if (json_object_set(json_array_get(ins, i), "records", json_array_get(recs, i)))
			rc = oom(err);
	for (size_t i = 0; ps && i < n; i++)
		json_decref(ps[i].lines);
	trail_free(ps);
	trail_free(by);
	json_decref(recs);
	if (rc) {
		json_decref(ins);
		return rc;
	}
	*inputs = ins;
	return TRAIL_OK;
}
