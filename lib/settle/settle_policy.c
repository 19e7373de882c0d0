/*
 * The settlement handle: the policy read and checked, the table of payees
 * (by name) and of models (to their owners), and one record's credit after
 * clusters and normalisation, ready to be added into the payees' sums.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "settle/settle_int.h"

static const char *const ROLE[4] = {"platform", "model", "stakers", "contributors"};

/* ---- payees ---------------------------------------------------------------------------- */

int settle_vec_grow(void **v, size_t *cap, size_t size)
{
	size_t nc = *cap ? *cap * 2 : 16;
	void *nv = trail_realloc(*v, nc * size);
	if (!nv)
		return -1;
	*v = nv;
	*cap = nc;
	return 0;
}

static int table_grow(table *t)
{
	size_t nc = t->cap ? t->cap * 2 : 64;
	ent *ne = trail_calloc(nc, sizeof *ne);
	if (!ne)
		return -1;
	for (size_t i = 0; i < t->cap; i++) {
		if (!t->e[i].v)
			continue;
		size_t j = (size_t)t->e[i].h & (nc - 1);
		while (ne[j].v)
			j = (j + 1) & (nc - 1);
		ne[j] = t->e[i];
	}
	trail_free(t->e);
	t->e = ne;
	t->cap = nc;
	return 0;
}

ent *settle_table_slot(table *t, char **keys, const char *k, size_t n, uint64_t h)
{
	size_t j = (size_t)h & (t->cap - 1);
	while (t->e[j].v) {
		const char *x = keys[t->e[j].v - 1];
		if (t->e[j].h == h && !memcmp(x, k, n) && x[n] == 0)
			return &t->e[j];
		j = (j + 1) & (t->cap - 1);
	}
	return &t->e[j];
}

static ent *name_slot(trail_settle *s, const char *k, size_t n, uint64_t h)
{
	size_t j = (size_t)h & (s->names.cap - 1);
	while (s->names.e[j].v) {
		const payee *p = &s->pay[s->names.e[j].v - 1];
		if (s->names.e[j].h == h && p->len == n && same(p->name, k, n))
			return &s->names.e[j];
		j = (j + 1) & (s->names.cap - 1);
	}
	return &s->names.e[j];
}

int settle_payee_get(trail_settle *s, const char *k, size_t n, int create, uint32_t *out)
{
	if ((s->names.n + 1) * 4 > s->names.cap * 3 && table_grow(&s->names))
		return -1;
	uint64_t h = hash(k, n);
	ent *e = name_slot(s, k, n, h);
	if (e->v) {
		*out = e->v - 1;
		return 0;
	}
	if (!create)
		return 1;
	if (s->npay == s->cappay && settle_vec_grow((void **)&s->pay, &s->cappay, sizeof *s->pay))
		return -1;
	payee *p = &s->pay[s->npay];
	memset(p, 0, sizeof *p);
	if (!(p->name = trail_malloc(n + 1)))
		return -1;
	memcpy(p->name, k, n);
	p->name[n] = 0;
	p->len = (uint32_t)n;
	e->h = h;
	e->v = (uint32_t)++s->npay;
	s->names.n++;
	*out = (uint32_t)(s->npay - 1);
	return 0;
}


/* ---- policy ------------------------------------------------------------------------------ */

static int check_keys(const json_t *o, const char *const *ok, const char *where, trail_error *err)
{
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)o, k, v) {
		const char *const *p = ok;
		while (*p && strcmp(*p, k))
			p++;
		if (!*p)
			return trail_error_set(err, TRAIL_EDATA, "policy: unknown member %s%s", where, k);
	}
	return TRAIL_OK;
}

static int get_int(const json_t *o, const char *k, int64_t def, int64_t min, int64_t max, const char *where,
		   int64_t *out, trail_error *err)
{
	json_t *v = json_object_get(o, k);
	if (!v) {
		*out = def;
		return TRAIL_OK;
	}
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
		return trail_error_set(err, TRAIL_EDATA, "policy: %s%s is an integer from %lld to %lld", where, k,
				       (long long)min, (long long)max);
	*out = json_integer_value(v);
	return TRAIL_OK;
}

/* A number read from its canonical text to 1e-9, as scores are. */
static int get_fixed(const json_t *v, int64_t *out)
{
	char nb[40];
	scan t = {nb, nb, NULL, 0};
	span n;
	int isint;
	if (!json_is_number(v) || trail_jcs_number(json_number_value(v), nb, sizeof nb) ||
	    (t.e = nb + strlen(nb), settle_num_scan(&t, &n, &isint)) || t.p != t.e)
		return -1;
	*out = settle_fixed_of(n.p, n.e);
	return 0;
}

/*
 * "confidence": {"min": X, "unattributed": "retain"|"pay"} and
 * "adapter_owners": {adapter: name} with "model_split": {"base","adapter"}.
 */
static int policy_more(trail_settle *s, const json_t *policy, trail_error *err)
{
	static const char *const ck[] = {"min", "unattributed", NULL}, *const mk[] = {"base", "adapter", NULL};
	const json_t *c = json_object_get(policy, "confidence"), *ao = json_object_get(policy, "adapter_owners");
	const json_t *ms = json_object_get(policy, "model_split");
	int rc;
	if (c) {
		const json_t *mn = json_object_get(c, "min"), *un = json_object_get(c, "unattributed");
		const char *u = json_string_value(un);
		if (!json_is_object(c))
			return trail_error_set(err, TRAIL_EDATA, "policy: confidence is an object");
		if ((rc = check_keys(c, ck, "confidence.", err)))
			return rc;
		if (mn && get_fixed(mn, &s->min_confidence))
			return trail_error_set(err, TRAIL_EDATA, "policy: confidence.min is a number");
		if (un && (!u || (strcmp(u, "retain") && strcmp(u, "pay"))))
			return trail_error_set(err, TRAIL_EDATA, "policy: confidence.unattributed is \"retain\" or \"pay\"");
		s->has_min_confidence = mn != NULL;
		s->retain_unattributed = u && !strcmp(u, "retain");
		s->conf_rule = s->has_min_confidence || s->retain_unattributed;
	}
	if ((ao && !json_is_object(ao)) || (ms && !json_is_object(ms)))
		return trail_error_set(err, TRAIL_EDATA, "policy: adapter_owners and model_split are objects");
	int64_t b, a;
	if (ms && ((rc = check_keys(ms, mk, "model_split.", err)) ||
		   (rc = get_int(ms, "base", 0, 0, 10000, "model_split.", &b, err)) ||
		   (rc = get_int(ms, "adapter", 0, 0, 10000, "model_split.", &a, err))))
		return rc;
	if (ms && a + b != 10000)
		return trail_error_set(err, TRAIL_EDATA, "policy: model_split sums to %lld, not 10000", (long long)(a + b));
	size_t n = json_object_size(ao);
	if (n && !ms)
		return trail_error_set(err, TRAIL_EDATA, "policy: adapter_owners needs model_split");
	s->split_base = ms ? b : 10000;
	if (n && (!(s->anames = trail_calloc(n, sizeof *s->anames)) || !(s->aowner = trail_calloc(n, sizeof *s->aowner))))
		return oom(err);
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)ao, k, v) {
		uint32_t i;
		const char *who = json_string_value(v);
		if (!who || !*who || !*k)
			return trail_error_set(err, TRAIL_EDATA, "policy: adapter_owners.%s is a non-empty string", k);
		if (settle_payee_get(s, who, strlen(who), 1, &i) ||
		    ((s->adapters.n + 1) * 4 > s->adapters.cap * 3 && table_grow(&s->adapters)) ||
		    !(s->anames[s->nadapters] = trail_strdup(k)))
			return oom(err);
		uint64_t h = hash(k, strlen(k));
		ent *e = settle_table_slot(&s->adapters, s->anames, k, strlen(k), h);
		s->aowner[s->nadapters++] = i;
		e->h = h;
		e->v = (uint32_t)s->nadapters;
		s->adapters.n++;
	}
	return TRAIL_OK;
}

static int named_payee(trail_settle *s, const json_t *policy, const char *k, const char *def, uint32_t *out,
		       trail_error *err)
{
	json_t *v = json_object_get(policy, k);
	const char *name = v ? json_string_value(v) : def;
	if (!name || !*name)
		return trail_error_set(err, TRAIL_EDATA, "policy: %s is a non-empty string", k);
	return settle_payee_get(s, name, strlen(name), 1, out) ? trail_error_set(err, TRAIL_ENOMEM, "out of memory")
							 : TRAIL_OK;
}

int trail_settle_new(const json_t *policy, trail_settle **out, trail_error *err)
{
	static const char *const top[] = {"fee_per_1k_prompt", "fee_per_1k_completion", "split_bps", "platform",
					  "model_owner", "model_owners", "stakes", "penalty", "confidence",
					  "adapter_owners", "model_split", NULL};
	static const char *const pen[] = {"max_rejected", "max_flagged", "max_poisoning", "min_influence",
					  "slash_bps", NULL};
	static const char *const roles[] = {"platform", "model", "stakers", "contributors", NULL};
	*out = NULL;
	if (!json_is_object(policy))
		return trail_error_set(err, TRAIL_EDATA, "policy: a JSON object");
	json_t *split = json_object_get(policy, "split_bps"), *pe = json_object_get(policy, "penalty");
	json_t *stakes = json_object_get(policy, "stakes"), *owners = json_object_get(policy, "model_owners");
	if (!json_is_object(split))
		return trail_error_set(err, TRAIL_EDATA, "policy: split_bps is an object");
	int from_ledger = json_is_string(stakes) && !strcmp(json_string_value(stakes), "ledger");
	if ((pe && !json_is_object(pe)) || (stakes && !json_is_object(stakes) && !from_ledger) ||
	    (owners && !json_is_object(owners)))
		return trail_error_set(err, TRAIL_EDATA, "policy: penalty and model_owners are objects, stakes an "
			"object or \"ledger\"");
	trail_settle *s = trail_calloc(1, sizeof *s);
	if (!s || !(s->policy = json_deep_copy(policy))) {
		trail_free(s);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	int64_t fp, fc, sum = 0;
	int rc;
	s->stakes_ledger = from_ledger;
	if ((rc = check_keys(policy, top, "", err)) || (rc = check_keys(split, roles, "split_bps.", err)) ||
	    (pe && (rc = check_keys(pe, pen, "penalty.", err))) ||
	    (rc = get_int(policy, "fee_per_1k_prompt", 0, 0, (int64_t)COUNT_MAX, "", &fp, err)) ||
	    (rc = get_int(policy, "fee_per_1k_completion", 0, 0, (int64_t)COUNT_MAX, "", &fc, err)))
		goto fail;
	s->fee_p = (uint64_t)fp;
	s->fee_c = (uint64_t)fc;
	for (int i = 0; i < 4; i++) {
		if ((rc = get_int(split, ROLE[i], 0, 0, 10000, "split_bps.", &s->bps[i], err)))
			goto fail;
		sum += s->bps[i];
	}
	if (sum != 10000) {
		rc = trail_error_set(err, TRAIL_EDATA, "policy: split_bps sums to %lld, not 10000", (long long)sum);
		goto fail;
	}
	if ((rc = get_int(pe, "max_rejected", -1, 0, INT64_MAX, "penalty.", &s->max_rejected, err)) ||
	    (rc = get_int(pe, "max_flagged", -1, 0, INT64_MAX, "penalty.", &s->max_flagged, err)) ||
	    (rc = get_int(pe, "max_poisoning", -1, 0, INT64_MAX, "penalty.", &s->max_poisoning, err)) ||
	    (rc = get_int(pe, "slash_bps", 0, 0, 10000, "penalty.", &s->slash_bps, err)))
		goto fail;
	json_t *mi = json_object_get(pe, "min_influence");
	if (mi) {
		/* read from its canonical text, as scores are */
		if (get_fixed(mi, &s->min_influence)) {
			rc = trail_error_set(err, TRAIL_EDATA, "policy: penalty.min_influence is a number");
			goto fail;
		}
		s->has_min_influence = 1;
	}
	if ((rc = named_payee(s, policy, "platform", "platform", &s->platform, err)) ||
	    (rc = named_payee(s, policy, "model_owner", "model", &s->model_owner, err)))
		goto fail;
	const char *k;
	json_t *v;
	json_object_foreach(stakes, k, v) {
		uint32_t i;
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (json_int_t)1 << 53) {
			rc = trail_error_set(err, TRAIL_EDATA, "policy: stakes.%s is an integer from 0 to 2^53-1", k);
			goto fail;
		}
		if (settle_payee_get(s, k, strlen(k), 1, &i)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto fail;
		}
		s->pay[i].stake = (uint64_t)json_integer_value(v);
	}
	size_t no = json_object_size(owners);
	if (no && (!(s->mnames = trail_calloc(no, sizeof *s->mnames)) ||
		   !(s->mowner = trail_calloc(no, sizeof *s->mowner)))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	json_object_foreach(owners, k, v) {
		uint32_t i;
		const char *who = json_string_value(v);
		if (!who || !*who) {
			rc = trail_error_set(err, TRAIL_EDATA, "policy: model_owners.%s is a non-empty string", k);
			goto fail;
		}
		if (settle_payee_get(s, who, strlen(who), 1, &i) ||
		    ((s->models.n + 1) * 4 > s->models.cap * 3 && table_grow(&s->models)) ||
		    !(s->mnames[s->nmodels] = trail_strdup(k))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto fail;
		}
		uint64_t h = hash(k, strlen(k));
		ent *e = settle_table_slot(&s->models, s->mnames, k, strlen(k), h);
		s->mowner[s->nmodels++] = i;
		e->h = h;
		e->v = (uint32_t)s->nmodels;
		s->models.n++;
	}
	if ((rc = policy_more(s, policy, err)))
		goto fail;
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
	for (size_t i = 0; i < s->npay; i++)
		trail_free(s->pay[i].name);
	for (size_t i = 0; i < s->nmodels; i++)
		trail_free(s->mnames[i]);
	json_decref(s->anchors);
	json_decref(s->stake_refs);
	for (size_t i = 0; i < s->nadapters; i++)
		trail_free(s->anames[i]);
	trail_free(s->anames);
	trail_free(s->aowner);
	trail_free(s->adapters.e);
	trail_free(s->pay);
	trail_free(s->names.e);
	trail_free(s->models.e);
	trail_free(s->mnames);
	trail_free(s->mowner);
	trail_free(s->arena.p);
	trail_free(s->view.p);
	trail_free(s->contrib.v);
	trail_free(s->top.v);
	trail_free(s->members.v);
	trail_free(s->poison.v);
	trail_free(s->clusters.v);
	trail_free(s->cred.v);
	json_decref(s->policy);
	trail_free(s);
}

uint64_t trail_settle_records(const trail_settle *s)
{
	return s->records;
}

size_t trail_settle_payees(const trail_settle *s)
{
	return s->npay;
}

/* ---- a record's credit ------------------------------------------------------------------ */

int settle_name_cmp(const payee *a, const payee *b)
{
	size_t n = a->len < b->len ? a->len : b->len;
	int c = memcmp(a->name, b->name, n);
	return c ? c : (a->len > b->len) - (a->len < b->len);
}

/* largest remainder first, then name */
static int by_rem(const void *x, const void *y, void *ctx)
{
	const credit *a = x, *b = y;
	const payee *pay = ctx;
	if (a->rem != b->rem)
		return a->rem > b->rem ? -1 : 1;
	return settle_name_cmp(&pay[a->who], &pay[b->who]);
}

/* Credit w to payee who in the current record's list. */
static int credit_add(trail_settle *s, uint32_t who, u128 w)
{
	payee *p = &s->pay[who];
	if (p->mark == s->serial) {
		s->cred.v[p->slot].w += w;
		return 0;
	}
	p->mark = s->serial;
	p->slot = (uint32_t)s->cred.n;
	return VEC_PUSH(s, s->cred, ((credit){who, w, 0}));
}

/*
 * A record's credit: positive shares, merged by name. A cluster of copies
 * counts once: its members' credit (the first's own included) is replaced
 * by the largest of them, credited to the first; the record's credit is
 * then scaled back to the sum it had (at most 1e9) by largest remainder,
 * as it is when the shares add up to more than 1e9. Fills s->cred.
 */
int settle_record_credit(trail_settle *s, const char *line)
{
	uint32_t who;
	s->serial++;
	s->cred.n = 0;
	for (size_t i = 0; i < s->contrib.n; i++) {
		const scored *c = &s->contrib.v[i];
		if (c->v <= 0)
			continue;
		if (settle_payee_get(s, str_of(s, line, &c->who), c->who.len, 1, &who) || credit_add(s, who, (u128)c->v))
			return -1;
		s->pay[who].rec = 1;
	}
	u128 S0 = 0, S = 0;
	int collapsed = 0;
	for (size_t i = 0; i < s->cred.n; i++)
		S0 += s->cred.v[i].w;
	for (size_t i = 0; i < s->clusters.n; i++) {
		const cluster *cl = &s->clusters.v[i];
		uint32_t first;
		u128 best = 0;
		int any = 0;
		if (cl->first.null)
			continue;
		if (settle_payee_get(s, str_of(s, line, &cl->first), cl->first.len, 1, &first))
			return -1;
		s->pay[first].rec = 1;
		if (s->pay[first].mark == s->serial)
			best = s->cred.v[s->pay[first].slot].w;
		for (size_t j = cl->m0; j < cl->m1; j++) {
			const sref *m = &s->members.v[j];
			int r = settle_payee_get(s, str_of(s, line, m), m->len, 0, &who);
			if (r < 0)
				return -1;
			if (r || who == first || s->pay[who].mark != s->serial || !s->cred.v[s->pay[who].slot].w)
				continue;
			credit *c = &s->cred.v[s->pay[who].slot];
			best = c->w > best ? c->w : best;
			c->w = 0;
			any = 1;
		}
		if (!any)
			continue;
		collapsed = 1;
		if (s->pay[first].mark == s->serial)
			s->cred.v[s->pay[first].slot].w = best;
		else if (credit_add(s, first, best))
			return -1;
	}
	for (size_t i = 0; i < s->cred.n; i++)
		S += s->cred.v[i].w;
	u128 target = S0 < (u128)NANO ? S0 : (u128)NANO;
	if (S && (S > (u128)NANO || (collapsed && S != target))) {
		u128 given = 0;
		for (size_t i = 0; i < s->cred.n; i++) {
			u128 num = s->cred.v[i].w * target;
			s->cred.v[i].w = num / S;
			s->cred.v[i].rem = num % S;
			given += s->cred.v[i].w;
		}
		qsort_r(s->cred.v, s->cred.n, sizeof *s->cred.v, by_rem, s->pay);
		for (size_t i = 0; given < target; i++, given++)
			s->cred.v[i].w++;
	}
	return 0;
}
