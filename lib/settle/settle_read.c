/*
 * Reading: one NDJSON line checked and read in one pass, then added into
 * the handle's sums and the inputs digest; every line of a file, in this
 * thread or in blocks handed to helper threads.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "settle/settle_int.h"

/* ---- reading a line -------------------------------------------------------------------- */

/*
 * One pass over the line: every value is checked as JSON while the members
 * settlement uses are read into the per-line scratch. Whether the line is a
 * record or a flags line is known only at its end (the "type" member may
 * come last), so a member whose value has not the shape wanted is checked
 * again as plain JSON and its fault kept: an error if the line turns out to
 * use that member, nothing otherwise (a flags line ignores a record's
 * members, and the other way round).
 */
enum {
	K_TYPE, K_EVENT, K_USAGE, K_CONTRIB, K_CLUSTERS, K_TOP, K_MODEL, K_POISON, K_WHO, K_REJ, K_FLAG,
	K_CONF, K_ADAPTER, NKEYS
};
static const mkey LINE_KEYS[NKEYS] = {KEY("type"),  KEY("event"),     KEY("usage"),    KEY("contributors"),
				     KEY("clusters"), KEY("top"),    KEY("model"),    KEY("poisoning"),
				     KEY("contributor"), KEY("rejected"), KEY("flagged"), KEY("confidence"),
				     KEY("adapter")};

/* What one line holds, read in one pass. */
typedef struct line {
	const char *p;           /* the line: string references point into it */
	unsigned seen;           /* members present (1 << K_...) */
	const char *fault[NKEYS]; /* a member's value not of the shape wanted */
	span type;
	sref event, model, who, adapter;
	int attributed;          /* confidence.attributed: 1, 0; -1 absent */
	int has_score;           /* confidence.score given (a number) */
	int64_t score;           /* confidence.score, 1e-9 units */
	uint64_t usage[2], count[3]; /* prompt, completion; rejected, flagged, poisoning */
	int poison_list;         /* "poisoning" was an array (a record's), else a count */
} rdline;

/* A string, or null when nullok, at s->p: a reference into the line or the arena. */
static int str_at(trail_settle *t, scan *s, const char *lp, int nullok, sref *out, const char *what)
{
	span raw;
	int esc;
	memset(out, 0, sizeof *out);
	if (nullok && s->e - s->p >= 4 && !memcmp(s->p, "null", 4)) {
		s->p += 4;
		out->null = 1;
		return 0;
	}
	if (s->p >= s->e || *s->p != '"')
		return bad(s, what);
	if (settle_str_scan(s, &raw, &esc))
		return -1;
	if (raw.e == raw.p || raw.e - raw.p > (1 << 30))
		return bad(s, what);
	if (!esc) {
		out->off = (size_t)(raw.p - lp);
		out->len = (uint32_t)(raw.e - raw.p);
		return 0;
	}
	out->off = t->arena.n;
	out->arena = 1;
	settle_decode(&raw, &t->arena);
	out->len = (uint32_t)(t->arena.n - out->off);
	return 0;
}

static int fixed_at(scan *s, int64_t *out)
{
	span n;
	int isint;
	if (s->p >= s->e || (*s->p != '-' && (unsigned)(unsigned char)*s->p - '0' >= 10) || settle_num_scan(s, &n, &isint))
		return -1;
	*out = settle_fixed_of(n.p, n.e);
	return 0;
}


static int rd_usage(scan *s, rdline *l, int depth)
{
	static const mkey k[] = {KEY("prompt_tokens"), KEY("completion_tokens")};
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	unsigned seen = 0;
	int n = 0, r, i;
	while ((r = settle_members(s, &n, kb, &kp, &kn)) > 0) {
		if (key_of(s, k, 2, kp, kn, &seen, &i))
			return -1;
		if (i < 0 ? settle_value_skip(s, depth + 1) : settle_count_at(s, COUNT_MAX, &l->usage[i]))
			return bad(s, "prompt_tokens and completion_tokens are integers from 0 to 2^40");
	}
	return r < 0 ? -1 : seen == 3 ? 0 : bad(s, "{\"prompt_tokens\": N, \"completion_tokens\": N} was expected");
}

static int rd_event(trail_settle *t, scan *s, rdline *l, int depth)
{
	static const mkey k[] = {KEY("id")};
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	unsigned seen = 0;
	int n = 0, r, i;
	if (s->p < s->e && *s->p != '{')
		return str_at(t, s, l->p, 0, &l->event, "a string or an object with an id was expected");
	while ((r = settle_members(s, &n, kb, &kp, &kn)) > 0)
		if (key_of(s, k, 1, kp, kn, &seen, &i) ||
		    (i < 0 ? settle_value_skip(s, depth + 1) : str_at(t, s, l->p, 0, &l->event, "id is a non-empty string")))
			return -1;
	return r < 0 ? -1 : seen ? 0 : bad(s, "an event object has a string id");
}

/* [{"contributor": NAME, "share": N}...] (pairs_top: [{"contributor": NAME|null, "score": N|null}...]) */
static int rd_pairs(trail_settle *t, scan *s, const char *lp, int is_top, int depth)
{
	static const mkey kc[] = {KEY("contributor"), KEY("share")}, kt[] = {KEY("contributor"), KEY("score")};
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	int n = 0, r, q, i;
	while ((r = settle_elements(s, &n)) > 0) {
		scored x = {{0, 0, 0, 1}, 0};
		unsigned seen = 0;
		int m = 0;
		while ((q = settle_members(s, &m, kb, &kp, &kn)) > 0) {
			if (key_of(s, is_top ? kt : kc, 2, kp, kn, &seen, &i))
				return -1;
			if (i < 0) {
				if (settle_value_skip(s, depth + 2))
					return -1;
			} else if (i == 0) {
				if (str_at(t, s, lp, is_top, &x.who, "contributor is a non-empty string"))
					return -1;
			} else if (is_top && s->e - s->p >= 4 && !memcmp(s->p, "null", 4)) {
				s->p += 4;
			} else if (fixed_at(s, &x.v)) {
				return bad(s, is_top ? "score is a number or null" : "share is a number");
			}
		}
		if (q < 0)
			return -1;
		if (!is_top && seen != 3)
			return bad(s, "an array of {\"contributor\", \"share\"} was expected");
		if (is_top ? VEC_PUSH(t, t->top, x) : VEC_PUSH(t, t->contrib, x))
			return s->oom = 1, -1;
	}
	return r;
}

/* [NAME...] into `to` */
static int rd_names(trail_settle *t, scan *s, const char *lp, int members_list)
{
	int n = 0, r;
	while ((r = settle_elements(s, &n)) > 0) {
		sref who;
		if (str_at(t, s, lp, 0, &who, "an array of non-empty strings was expected"))
			return -1;
		if (members_list ? VEC_PUSH(t, t->members, who) : VEC_PUSH(t, t->poison, who))
			return s->oom = 1, -1;
	}
	return r;
}

/* [{"members": [NAME...], "first": NAME|null}...] */
static int rd_clusters(trail_settle *t, scan *s, const char *lp, int depth)
{
	static const mkey k[] = {KEY("members"), KEY("first")};
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	int n = 0, r, q, i;
	while ((r = settle_elements(s, &n)) > 0) {
		cluster cl = {{0, 0, 0, 1}, t->members.n, 0};
		unsigned seen = 0;
		int m = 0;
		while ((q = settle_members(s, &m, kb, &kp, &kn)) > 0) {
			if (key_of(s, k, 2, kp, kn, &seen, &i))
				return -1;
			if (i < 0 ? settle_value_skip(s, depth + 2)
				  : i == 0 ? (cl.m0 = t->members.n, rd_names(t, s, lp, 1))
					   : str_at(t, s, lp, 1, &cl.first, "first is a string or null"))
				return -1;
			if (i == 0)
				cl.m1 = t->members.n;
		}
		if (q < 0)
			return -1;
		if (!(seen & 1))
			return bad(s, "an array of {\"members\": [...], \"first\"} was expected");
		if (VEC_PUSH(t, t->clusters, cl))
			return s->oom = 1, -1;
	}
	return r;
}

/* {"score": N|null, "attributed": true|false, ...}: other members (floor) checked and ignored */
static int rd_conf(scan *s, rdline *l, int depth)
{
	static const mkey k[] = {KEY("score"), KEY("attributed")};
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	unsigned seen = 0;
	int n = 0, r, i;
	while ((r = settle_members(s, &n, kb, &kp, &kn)) > 0) {
		if (key_of(s, k, 2, kp, kn, &seen, &i))
			return -1;
		if (i < 0) {
			if (settle_value_skip(s, depth + 1))
				return -1;
		} else if (s->e - s->p >= 4 && !memcmp(s->p, "null", 4)) {
			s->p += 4;
		} else if (i == 0) {
			if (fixed_at(s, &l->score))
				return bad(s, "score is a number or null");
			l->has_score = 1;
		} else if (s->e - s->p >= 4 && !memcmp(s->p, "true", 4)) {
			s->p += 4;
			l->attributed = 1;
		} else if (s->e - s->p >= 5 && !memcmp(s->p, "false", 5)) {
			s->p += 5;
			l->attributed = 0;
		} else {
			return bad(s, "attributed is true, false or null");
		}
	}
	return r < 0 ? -1 : 0;
}

/* One member's value, read as the member wants. */
static int rd_member(trail_settle *t, scan *s, rdline *l, int k)
{
	const char *v = s->p;
	switch (k) {
	case K_TYPE:
		if (settle_value_skip(s, 1))
			return -1;
		l->type = (span){v, s->p};
		return 0;
	case K_EVENT: return rd_event(t, s, l, 1);
	case K_USAGE: return rd_usage(s, l, 1);
	case K_CONTRIB: return rd_pairs(t, s, l->p, 0, 1);
	case K_TOP: return rd_pairs(t, s, l->p, 1, 1);
	case K_CLUSTERS: return rd_clusters(t, s, l->p, 1);
	case K_MODEL: return str_at(t, s, l->p, 1, &l->model, "a string or null was expected");
	case K_ADAPTER: return str_at(t, s, l->p, 1, &l->adapter, "a string or null was expected");
	case K_CONF:
		if (s->p >= s->e || *s->p != '{')
			return bad(s, "an object was expected");
		return rd_conf(s, l, 1);
	case K_WHO: return str_at(t, s, l->p, 0, &l->who, "a non-empty string was expected");
	case K_REJ:
	case K_FLAG:
	case K_POISON:
		l->poison_list = k == K_POISON && s->p < s->e && *s->p == '[';
		if (l->poison_list)
			return rd_names(t, s, l->p, 0);
		return settle_count_at(s, COUNT_MAX, &l->count[k == K_REJ ? 0 : k == K_FLAG ? 1 : 2])
			       ? bad(s, "an integer from 0 to 2^40 was expected")
			       : 0;
	}
	return settle_value_skip(s, 1);
}

/* The whole line: 0, or -1 with s->why (or s->oom). */
static int rd_line(trail_settle *t, scan *s, rdline *l)
{
	char kb[KEY_RAW_MAX];
	const char *kp;
	size_t kn;
	int n = 0, r, k;
	while ((r = settle_members(s, &n, kb, &kp, &kn)) > 0) {
		const char *v = s->p;
		if (key_of(s, LINE_KEYS, NKEYS, kp, kn, &l->seen, &k))
			return -1;
		if (!rd_member(t, s, l, k))
			continue;
		if (s->oom || k < 0)
			return -1;
		/* not the shape wanted: is it JSON at all? */
		l->fault[k] = s->why ? s->why : "not of the type wanted";
		s->why = NULL;
		s->p = v;
		if (settle_value_skip(s, 1))
			return -1;
	}
	if (r < 0)
		return -1;
	ws(s);
	return s->p == s->e ? 0 : bad(s, "text after the JSON object");
}

/*
 * The view a line adds to the inputs digest: what settlement uses from it,
 * in a compact binary form (attr-settle(1) defines it). Integers are
 * LEB128, signed ones zigzag; strings as view_str() writes them. The
 * event's id is left out: it cannot change the result.
 */
static void sb_uv(sbuf *b, uint64_t v)
{
	if (sb_reserve(b, 10))
		return;
	while (v >= 0x80) {
		b->p[b->n++] = (char)(v | 0x80);
		v >>= 7;
	}
	b->p[b->n++] = (char)v;
}

static void sb_sv(sbuf *b, int64_t v)
{
	sb_uv(b, (uint64_t)v << 1 ^ (uint64_t)(v >> 63));
}

/* a lowercase hex digit's value + 1; 0 for any other byte (a table: the digits are random, branches would miss) */
static const uint8_t HEX1[256] = {
	['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8,
	['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

/*
 * A string: LEB128 of twice its length, then its bytes; a content address
 * ("sha256:" and 64 lowercase hex digits) as 65 (2 * 32 + 1) and its 32
 * bytes; absent or null: 0.
 */
static void view_str(trail_settle *s, const char *lp, const sref *r)
{
	const char *p = str_of(s, lp, r);
	if (r->null) {
		sb_c(&s->view, 0);
		return;
	}
	if (r->len == 71 && same(p, "sha256:", 7) && !sb_reserve(&s->view, 33)) {
		char *o = s->view.p + s->view.n;
		unsigned missing = 0;
		o[0] = 65;
		for (int i = 0; i < 32; i++) {
			unsigned hi = HEX1[(unsigned char)p[7 + 2 * i]], lo = HEX1[(unsigned char)p[8 + 2 * i]];
			missing |= (hi == 0) | (lo == 0);
			o[1 + i] = (char)((hi - 1) << 4 | ((lo - 1) & 15));
		}
		if (!missing) {
			s->view.n += 33;
			return;
		}
	}
	sb_uv(&s->view, (uint64_t)r->len * 2);
	sb_put(&s->view, p, r->len);
}

/* the inputs digest: the sum mod 2^256 of the lines' digests, so that it does not depend on their order */
static void add256(uint8_t acc[32], const uint8_t d[32])
{
	unsigned carry = 0;
	for (int i = 31; i >= 0; i--) {
		unsigned v = acc[i] + d[i] + carry;
		acc[i] = (uint8_t)v;
		carry = v >> 8;
	}
}

/* personalisation of the inputs digest's BLAKE2b: the view's version */
static const unsigned char VIEW_PERSONAL[16] = "trail-settle-v2";

static void view_digest(trail_settle *s)
{
	uint8_t d[32];
	crypto_generichash_blake2b_salt_personal(d, sizeof d, (const unsigned char *)s->view.p, s->view.n, NULL, 0,
						 NULL, VIEW_PERSONAL);
	add256(s->inputs, d);
}

static int line_record(trail_settle *s, const rdline *l, trail_error *err)
{
	const char *lp = l->p;
	uint64_t pt = l->usage[0], ct = l->usage[1];
	u128 fee = (u128)pt * s->fee_p + (u128)ct * s->fee_c;
	if (s->fees + fee > FEES_MAX) {
		trail_error_set(err, TRAIL_ELIMIT, "the epoch's fees exceed 2^53-1 minor units");
		return -2;
	}

	s->view.n = 0;
	sb_c(&s->view, 'R');
	sb_uv(&s->view, pt);
	sb_uv(&s->view, ct);
	view_str(s, lp, &l->model);
	sb_uv(&s->view, s->contrib.n);
	for (size_t i = 0; i < s->contrib.n; i++) {
		view_str(s, lp, &s->contrib.v[i].who);
		sb_sv(&s->view, s->contrib.v[i].v);
	}
	sb_uv(&s->view, s->clusters.n);
	for (size_t i = 0; i < s->clusters.n; i++) {
		const cluster *cl = &s->clusters.v[i];
		view_str(s, lp, &cl->first);
		sb_uv(&s->view, cl->m1 - cl->m0);
		for (size_t j = cl->m0; j < cl->m1; j++)
			view_str(s, lp, &s->members.v[j]);
	}
	sb_uv(&s->view, s->poison.n);
	for (size_t i = 0; i < s->poison.n; i++)
		view_str(s, lp, &s->poison.v[i]);
	size_t nneg = 0;
	for (size_t i = 0; i < s->top.n; i++)
		nneg += !s->top.v[i].who.null && s->top.v[i].v < 0;
	sb_uv(&s->view, nneg);
	for (size_t i = 0; i < s->top.n; i++)
		if (!s->top.v[i].who.null && s->top.v[i].v < 0) {
			view_str(s, lp, &s->top.v[i].who);
			sb_sv(&s->view, s->top.v[i].v);
		}
	/* only under policies that use them, so that other policies' digests stay as they were */
	int low = s->conf_rule && ((s->retain_unattributed && l->attributed == 0) ||
				   (s->has_min_confidence && l->has_score && l->score < s->min_confidence));
	if (s->conf_rule)
		sb_c(&s->view, (char)low);
	if (s->nadapters)
		view_str(s, lp, &l->adapter);
	if (s->view.oom)
		return oom(err);

	/* from here on the record counts; only memory can fail */
	uint32_t who;
	if (low) {
		/* the contributors' share of an answer explained by nothing better than chance is retained */
		s->lowconf += fee * (u128)NANO;
		s->lowconf_records++;
	} else {
		if (settle_record_credit(s, lp))
			return oom(err);
		for (size_t i = 0; i < s->cred.n; i++)
			s->pay[s->cred.v[i].who].acc += fee * s->cred.v[i].w;
	}
	who = s->model_owner;
	if (l->model.len && s->nmodels) {
		const char *m = str_of(s, lp, &l->model);
		ent *e = settle_table_slot(&s->models, s->mnames, m, l->model.len, hash(m, l->model.len));
		if (e->v)
			who = s->mowner[e->v - 1];
	}
	if (!s->nadapters) {
		s->pay[who].mfee += fee;
	} else {
		/* base and adapter owners by model_split, in units of 1/10000 of a fee */
		uint32_t aw = UINT32_MAX;
		if (l->adapter.len) {
			const char *a = str_of(s, lp, &l->adapter);
			ent *e = settle_table_slot(&s->adapters, s->anames, a, l->adapter.len, hash(a, l->adapter.len));
			if (e->v)
				aw = s->aowner[e->v - 1];
		}
		if (aw == UINT32_MAX) {
			s->pay[who].mfee += fee * 10000;
		} else {
			s->pay[who].mfee += fee * (u128)s->split_base;
			s->pay[aw].mfee += fee * (u128)(10000 - s->split_base);
			s->adapter_records++;
		}
	}
	for (size_t i = 0; i < s->top.n; i++) {
		const scored *x = &s->top.v[i];
		if (x->who.null || x->v >= 0)
			continue;
		if (settle_payee_get(s, str_of(s, lp, &x->who), x->who.len, 1, &who))
			return oom(err);
		s->pay[who].neg += x->v;
		s->pay[who].rec = 1;
	}
	for (size_t i = 0; i < s->poison.n; i++) {
		if (settle_payee_get(s, str_of(s, lp, &s->poison.v[i]), s->poison.v[i].len, 1, &who))
			return oom(err);
		s->pay[who].poisoning++;
		s->pay[who].rec = 1;
	}
	view_digest(s);
	s->fees += fee;
	s->records++;
	return 0;
}

static int line_flags(trail_settle *s, const rdline *l, trail_error *err)
{
	uint32_t i;
	s->view.n = 0;
	sb_c(&s->view, 'F');
	view_str(s, l->p, &l->who);
	for (int k = 0; k < 3; k++)
		sb_uv(&s->view, l->count[k]);
	if (s->view.oom || settle_payee_get(s, str_of(s, l->p, &l->who), l->who.len, 1, &i))
		return oom(err);
	payee *p = &s->pay[i];
	p->rejected = sat_add(p->rejected, l->count[0]);
	p->flagged = sat_add(p->flagged, l->count[1]);
	p->poisoning = sat_add(p->poisoning, l->count[2]);
	p->flag = 1;
	view_digest(s);
	s->flag_lines++;
	return 0;
}

int settle_stake_input(trail_settle *s, const char *who, uint64_t amount)
{
	uint32_t i;
	size_t n = strlen(who);
	s->view.n = 0;
	sb_c(&s->view, 'S');
	sb_uv(&s->view, (uint64_t)n * 2);
	sb_put(&s->view, who, n);
	sb_uv(&s->view, amount);
	if (s->view.oom || settle_payee_get(s, who, n, 1, &i))
		return -1;
	s->pay[i].stake = amount;
	view_digest(s);
	return 0;
}

/* The first fault among the members `use` that the line has, as "member: fault". */
static const char *faulty(const rdline *l, unsigned use, char *buf, size_t size)
{
	for (int k = 0; k < NKEYS; k++)
		if (use & l->seen & 1u << k && l->fault[k]) {
			snprintf(buf, size, "%s: %s", LINE_KEYS[k].k, l->fault[k]);
			return buf;
		}
	return NULL;
}

int trail_settle_line(trail_settle *s, const char *text, size_t len, trail_error *err)
{
	scan sc = {text, text + len, NULL, 0};
	rdline l;
	char why[160];
	const char *f;
	ws(&sc);
	if (sc.p == sc.e)
		return TRAIL_OK;
	s->arena.n = 0;
	s->arena.oom = s->view.oom = 0;
	s->contrib.n = s->top.n = s->members.n = s->poison.n = s->clusters.n = 0;
	if (*sc.p != '{')
		return trail_error_set(err, TRAIL_EDATA, "not a JSON object");
	memset(&l, 0, sizeof l);
	l.p = text;
	l.attributed = -1;
	if (rd_line(s, &sc, &l))
		return sc.oom ? oom(err) : trail_error_set(err, TRAIL_EDATA, "%s", sc.why);
	if (s->arena.oom)
		return oom(err);
	int rc;
	if (l.seen & 1u << K_TYPE) {
		static const char flags[] = "\"flags\"";
		if (l.type.e - l.type.p != 7 || memcmp(l.type.p, flags, 7))
			return trail_error_set(err, TRAIL_EDATA,
					       "a line with a type other than \"flags\" is not settlement input");
		if (!(l.seen & 1u << K_WHO) || l.fault[K_WHO])
			return trail_error_set(err, TRAIL_EDATA, "a flags line names its contributor");
		if ((f = faulty(&l, 1u << K_REJ | 1u << K_FLAG | 1u << K_POISON, why, sizeof why)) || l.poison_list)
			return trail_error_set(err, TRAIL_EDATA, "%s", f ? f : "poisoning: a count was expected");
		rc = line_flags(s, &l, err);
	} else {
		const unsigned need = 1u << K_EVENT | 1u << K_USAGE | 1u << K_CONTRIB;
		if ((l.seen & need) != need)
			return trail_error_set(err, TRAIL_EDATA, "an attribution record has event, usage and contributors");
		unsigned use = need | 1u << K_CLUSTERS | 1u << K_TOP | 1u << K_MODEL | 1u << K_POISON |
			       (s->conf_rule ? 1u << K_CONF : 0) | (s->nadapters ? 1u << K_ADAPTER : 0);
		if ((f = faulty(&l, use, why, sizeof why)) ||
		    (l.seen & 1u << K_POISON && !l.poison_list))
			return trail_error_set(err, TRAIL_EDATA, "%s", f ? f : "poisoning: an array of contributors was expected");
		rc = line_record(s, &l, err);
	}
	if (rc == -2)
		return TRAIL_ELIMIT;
	return rc ? (err && err->code ? err->code : TRAIL_ENOMEM) : TRAIL_OK;
}

int trail_settle_add(trail_settle *s, const json_t *rec, trail_error *err)
{
	char *t = json_dumps(rec, JSON_COMPACT);
	if (!t)
		return trail_error_set(err, TRAIL_EDATA, "not a JSON value that can be written");
	int rc = trail_settle_line(s, t, strlen(t), err);
	free(t);
	return rc;
}

int trail_settle_read(trail_settle *s, FILE *in, const char *src, trail_error *err)
{
	size_t cap = (size_t)1 << 20, have = 0;
	char *buf = trail_malloc(cap);
	long lineno = 0;
	int rc = TRAIL_OK;
	if (!buf)
		return oom(err);
	for (;;) {
		size_t got = fread(buf + have, 1, cap - have, in), start = 0;
		have += got;
		char *nl;
		while (!rc && (nl = memchr(buf + start, '\n', have - start))) {
			lineno++;
			if ((rc = trail_settle_line(s, buf + start, (size_t)(nl - buf) - start, err)))
				break;
			start = (size_t)(nl - buf) + 1;
		}
		if (rc)
			break;
		memmove(buf, buf + start, have - start);
		have -= start;
		if (got == 0 || have == cap) {
			if (ferror(in)) {
				rc = trail_error_at(err, TRAIL_EIO, src, lineno + 1, "read error");
				goto out;
			}
			if (got == 0) {
				if (have) { /* a last line without its newline */
					lineno++;
					rc = trail_settle_line(s, buf, have, err);
				}
				break;
			}
			if (cap >= LINE_LIMIT) {
				trail_free(buf);
				return trail_error_at(err, TRAIL_ELIMIT, src, lineno + 1, "a line longer than 256 MiB");
			}
			char *nb = trail_realloc(buf, cap * 2);
			if (!nb) {
				rc = oom(err);
				goto out;
			}
			buf = nb;
			cap *= 2;
		}
	}
	if (rc && err) {
		char msg[sizeof err->msg];
		memcpy(msg, err->msg, sizeof msg);
		trail_error_at(err, rc, src, lineno, "%s", msg);
	}
out:
	trail_free(buf);
	return rc;
}

/* ---- reading with helper threads --------------------------------------------------------- */

/*
 * The input is cut at newlines into blocks of about BLOCK bytes, handed in
 * order to `threads` workers, each with its own handle made from the same
 * policy. The per-payee sums are exact integers, so adding the workers'
 * handles into s afterwards gives exactly the sums one thread would have:
 * the result does not depend on the number of threads. An error is
 * reported for the first bad line in input order (every block before it
 * was dispatched, so read, before the reader stopped).
 */
#define BLOCK ((size_t)4 << 20)

typedef struct block {
	char *p;
	size_t n, cap;
	uint64_t seq;
	long lines; /* lines read in this block: all of them, or up to the bad one */
	int rc;
	trail_error err;
	struct block *next;
} block;

typedef struct rdpool {
	pthread_mutex_t mu;
	pthread_cond_t full_cv, free_cv;
	block *full, *full_tail, *free;
	int done, failed;
	uint64_t fail_seq;
	block *blocks;
	size_t nblocks;
	long *lines; /* lines of block seq, once read */
	size_t caplines;
} rdpool;

typedef struct worker {
	rdpool *pl;
	trail_settle *s;
	pthread_t th;
} worker;

static void block_lines(trail_settle *s, block *b)
{
	size_t start = 0;
	char *nl;
	b->lines = 0;
	b->rc = TRAIL_OK;
	while (start < b->n) {
		nl = memchr(b->p + start, '\n', b->n - start);
		size_t end = nl ? (size_t)(nl - b->p) : b->n;
		b->lines++;
		if ((b->rc = trail_settle_line(s, b->p + start, end - start, &b->err)))
			return;
		start = end + 1;
	}
}

static void *work(void *arg)
{
	worker *w = arg;
	rdpool *pl = w->pl;
	pthread_mutex_lock(&pl->mu);
	for (;;) {
		while (!pl->full && !pl->done)
			pthread_cond_wait(&pl->full_cv, &pl->mu);
		block *b = pl->full;
		if (!b)
			break;
		if (!(pl->full = b->next))
			pl->full_tail = NULL;
		pthread_mutex_unlock(&pl->mu);
		block_lines(w->s, b);
		pthread_mutex_lock(&pl->mu);
		pl->lines[b->seq] = b->lines;
		if (b->rc && (!pl->failed || b->seq < pl->fail_seq)) {
			pl->failed = 1;
			pl->fail_seq = b->seq;
		}
		if (b->rc) { /* kept aside: its error is reported */
			b->next = NULL;
		} else {
			b->next = pl->free;
			pl->free = b;
		}
		pthread_cond_signal(&pl->free_cv);
	}
	pthread_mutex_unlock(&pl->mu);
	return NULL;
}

/* Add t's sums into s: payees by name. */
static int merge(trail_settle *s, const trail_settle *t)
{
	for (size_t i = 0; i < t->npay; i++) {
		const payee *q = &t->pay[i];
		uint32_t k;
		if (settle_payee_get(s, q->name, q->len, 1, &k))
			return -1;
		payee *p = &s->pay[k];
		p->acc += q->acc;
		p->mfee += q->mfee;
		p->neg += q->neg;
		p->rejected = sat_add(p->rejected, q->rejected);
		p->flagged = sat_add(p->flagged, q->flagged);
		p->poisoning = sat_add(p->poisoning, q->poisoning);
		p->rec |= q->rec;
		p->flag |= q->flag;
	}
	s->fees += t->fees;
	s->lowconf += t->lowconf;
	s->lowconf_records += t->lowconf_records;
	s->adapter_records += t->adapter_records;
	add256(s->inputs, t->inputs);
	s->records += t->records;
	s->flag_lines += t->flag_lines;
	return 0;
}

int trail_settle_read_threads(trail_settle *s, FILE *in, const char *src, int threads, trail_error *err)
{
	if (threads <= 1)
		return trail_settle_read(s, in, src, err);
	if (threads > 64)
		threads = 64;
	rdpool pl = {.nblocks = (size_t)threads * 2 + 2};
	worker w[64];
	int started = 0, rc = TRAIL_OK;
	uint64_t seq = 0;
	char *carry = NULL; /* the start of a line cut by the end of a block */
	size_t ncarry = 0, capcarry = 0;
	block *failed = NULL;
	pthread_mutex_init(&pl.mu, NULL);
	pthread_cond_init(&pl.full_cv, NULL);
	pthread_cond_init(&pl.free_cv, NULL);
	if (!(pl.blocks = trail_calloc(pl.nblocks, sizeof *pl.blocks))) {
		rc = oom(err);
		goto out;
	}
	for (size_t i = 0; i < pl.nblocks; i++) {
		if (!(pl.blocks[i].p = trail_malloc(pl.blocks[i].cap = BLOCK))) {
			rc = oom(err);
			goto out;
		}
		pl.blocks[i].next = pl.free;
		pl.free = &pl.blocks[i];
	}
	for (; started < threads; started++) {
		w[started].pl = &pl;
		if (started == 0) {
			w[0].s = s;
		} else if ((rc = trail_settle_new(s->policy, &w[started].s, err))) {
			goto out;
		}
		if (pthread_create(&w[started].th, NULL, work, &w[started])) {
			if (started)
				trail_settle_free(w[started].s);
			rc = trail_error_set(err, TRAIL_ENOMEM, "cannot start a thread");
			goto out;
		}
	}
	for (int eof = 0; !eof;) {
		pthread_mutex_lock(&pl.mu);
		while (!pl.free && !pl.failed)
			pthread_cond_wait(&pl.free_cv, &pl.mu);
		block *b = pl.failed ? NULL : pl.free;
		if (b)
			pl.free = b->next;
		pthread_mutex_unlock(&pl.mu);
		if (!b)
			break;
		/* the block: the carried part line, then as much input as fits, cut after its last newline */
		char *nl = NULL;
		b->n = 0;
		for (;;) {
			if (b->cap < ncarry + BLOCK / 2) {
				size_t nc = b->cap;
				while (nc < ncarry + BLOCK / 2)
					nc *= 2;
				char *np = nc > LINE_LIMIT + BLOCK ? NULL : trail_realloc(b->p, nc);
				if (!np) {
					rc = nc > LINE_LIMIT + BLOCK
						     ? trail_error_set(err, TRAIL_ELIMIT, "%s: a line longer than 256 MiB", src)
						     : oom(err);
					break;
				}
				b->p = np, b->cap = nc;
			}
			if (ncarry)
				memcpy(b->p, carry, ncarry);
			b->n = ncarry;
			size_t got = fread(b->p + b->n, 1, b->cap - b->n, in);
			b->n += got;
			if (got == 0) {
				if (ferror(in))
					rc = trail_error_set(err, TRAIL_EIO, "%s: read error", src);
				eof = 1;
				ncarry = 0;
				break;
			}
			nl = memrchr(b->p + ncarry, '\n', got);
			if (nl)
				break;
			/* no newline yet: the whole block is one line's start; carry it and read on */
			if (ncarry + got > capcarry) {
				char *nc2 = trail_realloc(carry, (ncarry + got) * 2);
				if (!nc2) {
					rc = oom(err);
					break;
				}
				carry = nc2, capcarry = (ncarry + got) * 2;
			}
			memcpy(carry, b->p, ncarry + got);
			ncarry += got;
		}
		if (rc) {
			pthread_mutex_lock(&pl.mu);
			b->next = pl.free, pl.free = b;
			pthread_mutex_unlock(&pl.mu);
			break;
		}
		if (nl) {
			size_t tail = b->n - (size_t)(nl - b->p) - 1;
			if (tail > capcarry) {
				char *nc2 = trail_realloc(carry, tail * 2);
				if (!nc2) {
					rc = oom(err);
					break;
				}
				carry = nc2, capcarry = tail * 2;
			}
			if (tail)
				memcpy(carry, nl + 1, tail);
			ncarry = tail;
			b->n -= tail + 1; /* the last newline too: block_lines reads up to the end */
		}
		b->seq = seq++;
		b->next = NULL;
		pthread_mutex_lock(&pl.mu);
		if (b->seq >= pl.caplines) {
			long *nl2 = trail_realloc(pl.lines, (pl.caplines * 2 + 64) * sizeof *nl2);
			if (!nl2) {
				b->next = pl.free, pl.free = b;
				pthread_mutex_unlock(&pl.mu);
				rc = oom(err);
				break;
			}
			pl.lines = nl2, pl.caplines = pl.caplines * 2 + 64;
		}
		if (pl.full_tail)
			pl.full_tail->next = b;
		else
			pl.full = b;
		pl.full_tail = b;
		pthread_cond_signal(&pl.full_cv);
		pthread_mutex_unlock(&pl.mu);
	}
out:
	pthread_mutex_lock(&pl.mu);
	pl.done = 1;
	pthread_cond_broadcast(&pl.full_cv);
	pthread_mutex_unlock(&pl.mu);
	for (int i = 0; i < started; i++)
		pthread_join(w[i].th, NULL);
	/* the first bad line in input order: every block before it was read whole */
	if (!rc && pl.failed) {
		long before = 0;
		for (uint64_t i = 0; i < pl.fail_seq; i++)
			before += pl.lines[i];
		for (size_t i = 0; i < pl.nblocks; i++)
			if (pl.blocks[i].rc && pl.blocks[i].seq == pl.fail_seq)
				failed = &pl.blocks[i];
		rc = trail_error_at(err, failed->rc, src, before + failed->lines, "%s", failed->err.msg);
	}
	for (int i = 1; i < started; i++) {
		if (!rc && merge(s, w[i].s))
			rc = oom(err);
		trail_settle_free(w[i].s);
	}
	if (!rc && s->fees > FEES_MAX)
		rc = trail_error_set(err, TRAIL_ELIMIT, "the epoch's fees exceed 2^53-1 minor units");
	for (size_t i = 0; pl.blocks && i < pl.nblocks; i++)
		trail_free(pl.blocks[i].p);
	trail_free(pl.blocks);
	trail_free(pl.lines);
	trail_free(carry);
	pthread_mutex_destroy(&pl.mu);
	pthread_cond_destroy(&pl.full_cv);
	pthread_cond_destroy(&pl.free_cv);
	return rc;
}
