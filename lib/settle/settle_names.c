/*
 * Names for people: a policy (stakes, model_owner, model_owners,
 * adapter_owners, platform) or a flags line may name a contributor by the
 * full verifier key "name+hex+base64", by a key file (NAME.pub, a path
 * with a '/' or ending in ".pub") or by the short name, the key's name
 * part. After the inputs are read, every payee named in one of the two
 * other ways is merged into the payee of its key: a key file is read; a
 * short name must be the name part of exactly one key the settlement
 * knows (from the records, the flags lines or the policy). Two keys of
 * that name are refused, naming both; no such key is refused for a stake
 * or a flag when the inputs have keys at all (a typo must not pass as a
 * penalty nobody gets), and leaves a role payee (the platform, a model
 * owner) as the plain label it was. A contributor whose records name it
 * by a plain name is that name, as before.
 */
#include <string.h>

#include "ledger/ledger.h"
#include "settle/settle_int.h"

static int is_key(const payee *p)
{
	return memchr(p->name, '+', p->len) != NULL;
}

static int is_file(const payee *p)
{
	return strchr(p->name, '/') || (p->len > 4 && !strcmp(p->name + p->len - 4, ".pub"));
}

/* The length of a key's name part. */
static size_t name_part(const payee *p)
{
	const char *e = memchr(p->name, '+', p->len);
	return e ? (size_t)(e - p->name) : p->len;
}

static void redirect(uint32_t *ix, size_t n, uint32_t from, uint32_t to)
{
	for (size_t i = 0; i < n; i++)
		if (ix[i] == from)
			ix[i] = to;
}

/* Payee `from`'s sums and roles moved to `to`; `from` is left empty and earns nothing. */
static void move(trail_settle *s, uint32_t from, uint32_t to)
{
	payee *p = &s->pay[from], *q = &s->pay[to];
	q->acc += p->acc;
	q->mfee += p->mfee;
	q->neg += p->neg;
	q->rejected = sat_add(q->rejected, p->rejected);
	q->flagged = sat_add(q->flagged, p->flagged);
	q->poisoning = sat_add(q->poisoning, p->poisoning);
	q->stake = sat_add(q->stake, p->stake);
	q->flag |= p->flag;
	p->acc = p->mfee = 0;
	p->neg = 0;
	p->rejected = p->flagged = p->poisoning = p->stake = 0;
	p->flag = 0;
	redirect(&s->platform, 1, from, to);
	redirect(&s->model_owner, 1, from, to);
	redirect(s->mowner, s->nmodels, from, to);
	redirect(s->aowner, s->nadapters, from, to);
}

static int by_file(trail_settle *s, uint32_t i, trail_error *err)
{
	trail_verifier *v;
	uint32_t t;
	trail_error e = {0};
	if (trail_verifier_load(s->pay[i].name, &v, &e))
		return trail_error_set(err, TRAIL_EDATA, "%s", e.msg);
	const char *k = trail_verifier_str(v);
	int rc = settle_payee_get(s, k, strlen(k), 1, &t) ? oom(err) : TRAIL_OK;
	trail_verifier_free(v);
	if (!rc && t != i)
		move(s, i, t);
	return rc;
}

static int by_name(trail_settle *s, uint32_t i, int keyed, trail_error *err)
{
	const payee *p = &s->pay[i];
	uint32_t found = UINT32_MAX;
	for (size_t j = 0; j < s->npay; j++) {
		const payee *q = &s->pay[j];
		if (!is_key(q) || name_part(q) != p->len || memcmp(q->name, p->name, p->len))
			continue;
		if (found != UINT32_MAX) {
			const char *a = s->pay[found].name, *b = q->name;
			if (strcmp(a, b) > 0) {
				const char *c = a;
				a = b;
				b = c;
			}
			return trail_error_set(err, TRAIL_EDATA, "%s names two contributors, %s and %s: give the key "
				"or its key file", p->name, a, b);
		}
		found = (uint32_t)j;
	}
	if (found != UINT32_MAX) {
		move(s, i, found);
		return TRAIL_OK;
	}
	if (keyed && (p->stake || p->flag))
		return trail_error_set(err, TRAIL_EDATA, "%s: no contributor key of the inputs or the policy has "
			"that name: give the key or its key file", p->name);
	return TRAIL_OK;
}

int settle_resolve(trail_settle *s, trail_error *err)
{
	if (s->resolved)
		return TRAIL_OK;
	s->resolved = 1;
	int rc = TRAIL_OK, keyed = 0;
	size_t n = s->npay;
	/* key files first, so that their keys take part in the names */
	for (uint32_t i = 0; i < n && !rc; i++)
		if (!s->pay[i].rec && !is_key(&s->pay[i]) && is_file(&s->pay[i]))
			rc = by_file(s, i, err);
	for (size_t j = 0; j < s->npay && !keyed; j++)
		keyed = is_key(&s->pay[j]);
	for (uint32_t i = 0; i < n && !rc; i++)
		if (!s->pay[i].rec && !is_key(&s->pay[i]) && !is_file(&s->pay[i]))
			rc = by_name(s, i, keyed, err);
	return rc;
}
