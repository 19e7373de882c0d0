/*
 * The validator: runs a policy's rules over records one at a time and
 * builds verdicts. Records are checked in this order, every failing rule
 * giving one reason: utf8, schema, (redaction), size, license, duplicate
 * or near-duplicate, the quality rules, PII.
 *
 * Duplicates: a submission record is compared with the approved records
 * the caller loaded and with every earlier record of the submission that
 * passed the schema check (rejected ones too: a copy of a rejected record
 * is still a copy). An exact copy is reported as `duplicate` only.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "data/data_int.h"

/* A set of record ids with the input line each was first seen on (0: approved). */
struct idset {
	uint8_t (*id)[32];
	long *line;
	size_t n, cap;
	uint32_t *slot; /* index + 1; 0 empty */
	size_t scap;    /* power of two */
};

struct trail_validator {
	const trail_policy *p;
	int redact;
	char *license;
	char *source;
	trail_minhasher *mh;
	trail_ndindex *ix;
	trail_qscratch *qs;
	uint64_t napproved; /* index ordinals below this are approved records */
	uint32_t *apslot;   /* approved records in the index by id: ordinal + 1; 0 empty */
	size_t apcap, napslot; /* apcap: power of two */
	long *ixline;       /* input line of index ordinal napproved + i */
	size_t nixline, ixlinecap;
	struct idset ids;
	uint32_t sig[TRAIL_ND_MAXPERM];
	uint8_t key[64 * 4 + TRAIL_ND_MAXPERM / 4]; /* sig as the index keeps it */
	int partial; /* checks give partial lines (validate_shard.c), not verdicts */
	uint64_t records, accepted, rejected, malformed, redacted;
	uint64_t rule_count[R_COUNT];
};

static size_t idslot(const uint8_t id[32], size_t cap)
{
	uint64_t h;
	memcpy(&h, id, sizeof h);
	return (size_t)h & (cap - 1);
}

static long idset_find(const struct idset *s, const uint8_t id[32])
{
	if (!s->scap)
		return -1;
	for (size_t i = idslot(id, s->scap); s->slot[i]; i = (i + 1) & (s->scap - 1))
		if (!memcmp(s->id[s->slot[i] - 1], id, 32))
			return (long)s->slot[i] - 1;
	return -1;
}

static int idset_add(struct idset *s, const uint8_t id[32], long line)
{
	if (s->n >= UINT32_MAX - 1)
		return TRAIL_ELIMIT;
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 256;
		uint8_t(*ni)[32] = trail_realloc(s->id, nc * 32);
		if (!ni)
			return TRAIL_ENOMEM;
		s->id = ni;
		long *nl = trail_realloc(s->line, nc * sizeof *nl);
		if (!nl)
			return TRAIL_ENOMEM;
		s->line = nl;
		s->cap = nc;
	}
	if ((s->n + 1) * 2 > s->scap) {
		size_t nc = s->scap ? s->scap * 2 : 512;
		uint32_t *ns = trail_calloc(nc, sizeof *ns);
		if (!ns)
			return TRAIL_ENOMEM;
		for (size_t i = 0; i < s->n; i++) {
			size_t k = idslot(s->id[i], nc);
			while (ns[k])
				k = (k + 1) & (nc - 1);
			ns[k] = (uint32_t)i + 1;
		}
		trail_free(s->slot);
		s->slot = ns;
		s->scap = nc;
	}
	memcpy(s->id[s->n], id, 32);
	s->line[s->n] = line;
	size_t k = idslot(id, s->scap);
	while (s->slot[k])
		k = (k + 1) & (s->scap - 1);
	s->slot[k] = (uint32_t)++s->n;
	return TRAIL_OK;
}

/*
 * Approved records that are in the near-duplicate index, by id, so an exact
 * copy of one is found in constant time however many records share its
 * LSH buckets. Ids live in the index; the table holds ordinals.
 */
static long approved_find(const trail_validator *v, const uint8_t id[32])
{
	if (!v->apcap)
		return -1;
	for (size_t i = idslot(id, v->apcap); v->apslot[i]; i = (i + 1) & (v->apcap - 1))
		if (!memcmp(trail_ndindex_id(v->ix, v->apslot[i] - 1), id, 32))
			return (long)v->apslot[i] - 1;
	return -1;
}

/* Record index ordinal o (an approved record with this id) unless one is there already. */
static int approved_add(trail_validator *v, const uint8_t id[32], uint64_t o)
{
	if (approved_find(v, id) >= 0)
		return TRAIL_OK;
	if ((v->napslot + 1) * 2 > v->apcap) {
		size_t nc = v->apcap ? v->apcap * 2 : 1024;
		uint32_t *ns = trail_calloc(nc, sizeof *ns);
		if (!ns)
			return TRAIL_ENOMEM;
		for (size_t i = 0; i < v->apcap; i++) {
			if (!v->apslot[i])
				continue;
			size_t k = idslot(trail_ndindex_id(v->ix, v->apslot[i] - 1), nc);
			while (ns[k])
				k = (k + 1) & (nc - 1);
			ns[k] = v->apslot[i];
		}
		trail_free(v->apslot);
		v->apslot = ns;
		v->apcap = nc;
	}
	size_t k = idslot(id, v->apcap);
	while (v->apslot[k])
		k = (k + 1) & (v->apcap - 1);
	v->apslot[k] = (uint32_t)o + 1;
	v->napslot++;
	return TRAIL_OK;
}

int trail_validator_new(const trail_policy *p, trail_validator **out, trail_error *err)
{
	trail_validator *v = trail_calloc(1, sizeof *v);
	*out = NULL;
	if (!v)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	v->p = p;
	v->redact = p->redact;
	if (trail_minhasher_new(&p->nd, &v->mh) || trail_ndindex_new(&p->nd, &v->ix) ||
	    !(v->qs = trail_qscratch_new())) {
		trail_validator_free(v);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	*out = v;
	return TRAIL_OK;
}

void trail_validator_free(trail_validator *v)
{
	if (!v)
		return;
	trail_minhasher_free(v->mh);
	trail_ndindex_free(v->ix);
	trail_qscratch_free(v->qs);
	trail_free(v->ixline);
	trail_free(v->apslot);
	trail_free(v->ids.id);
	trail_free(v->ids.line);
	trail_free(v->ids.slot);
	trail_free(v->license);
	trail_free(v->source);
	trail_free(v);
}

void trail_validator_set_redact(trail_validator *v, int on)
{
	v->redact = !!on;
}

static int set_str(char **dst, const char *s)
{
	char *c = NULL;
	if (s && !(c = trail_strdup(s)))
		return TRAIL_ENOMEM;
	trail_free(*dst);
	*dst = c;
	return TRAIL_OK;
}

int trail_validator_set_license(trail_validator *v, const char *license)
{
	return set_str(&v->license, license);
}

int trail_validator_set_source(trail_validator *v, const char *source)
{
	return set_str(&v->source, source);
}

/* The text the similarity and quality rules read. *own is set when allocated. */
static const char *content(const trail_validator *v, const json_t *rec, size_t *len, char **own)
{
	*own = NULL;
	if (v->p->schema == TRAIL_SCHEMA_TEXT) {
		json_t *t = json_object_get(rec, "text");
		*len = json_string_length(t);
		return json_string_value(t);
	}
	if (v->p->schema == TRAIL_SCHEMA_CHAT) {
		/* the turns' contents, a blank line between them */
		json_t *msgs = json_object_get(rec, "messages"), *m;
		size_t i, n = 0, o = 0;
		json_array_foreach(msgs, i, m)
			n += json_string_length(json_object_get(m, "content")) + 2;
		if (!(*own = trail_malloc(n + 1)))
			return NULL;
		json_array_foreach(msgs, i, m)
		{
			json_t *c = json_object_get(m, "content");
			if (i)
				memcpy(*own + o, "\n\n", 2), o += 2;
			memcpy(*own + o, json_string_value(c), json_string_length(c));
			o += json_string_length(c);
		}
		(*own)[o] = 0;
		*len = o;
		return *own;
	}
	json_t *pr = json_object_get(rec, "prompt"), *co = json_object_get(rec, "completion");
	size_t a = json_string_length(pr), b = json_string_length(co);
	if (!(*own = trail_malloc(a + b + 3)))
		return NULL;
	memcpy(*own, json_string_value(pr), a);
	memcpy(*own + a, "\n\n", 2);
	memcpy(*own + a + 2, json_string_value(co), b);
	(*own)[a + b + 2] = 0;
	*len = a + b + 2;
	return *own;
}

/* Id of a record; *canon_len gets its canonical size (0 when it has none). */
static int record_id(const json_t *rec, char id[72], uint8_t raw[32], size_t *canon_len)
{
	char *buf;
	size_t len;
	if (canon_len)
		*canon_len = 0;
	if (trail_jcs(rec, &buf, &len, NULL) != TRAIL_OK) {
		/* No canonical form (a number beyond 2^53): hash jansson's sorted dump. */
		buf = json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
		if (!buf)
			return TRAIL_ENOMEM;
		trail_sha256(buf, strlen(buf), raw);
		free(buf);
		trail_digest_format(raw, id);
		return TRAIL_OK;
	}
	trail_sha256(buf, len, raw);
	trail_digest_format(raw, id);
	trail_free(buf);
	if (canon_len)
		*canon_len = len;
	return TRAIL_OK;
}

int trail_validator_approve(trail_validator *v, const json_t *record, trail_error *err)
{
	char id[72];
	uint8_t raw[32];
	if (v->nixline)
		return trail_error_set(err, TRAIL_EUSAGE,
				       "approved records must be loaded before the submission");
	if (!json_is_object(record))
		return trail_error_set(err, TRAIL_EDATA, "an approved record is not an object");
	if (record_id(record, id, raw, NULL))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	char *own;
	size_t len;
	const char *text = content(v, record, &len, &own);
	long ns = text ? trail_minhash(v->mh, text, len, v->sig) : -TRAIL_ENOMEM;
	trail_free(own);
	int rc = ns < 0 ? TRAIL_ENOMEM : TRAIL_OK;
	if (!rc && ns > 0) {
		uint64_t o = trail_ndindex_count(v->ix);
		rc = trail_ndindex_add(v->ix, v->sig, raw);
		if (!rc)
			rc = approved_add(v, raw, o);
	} else if (!rc)
		rc = idset_add(&v->ids, raw, 0);
	if (rc)
		return trail_error_set(err, rc, "cannot index approved record %s", id);
	v->napproved = trail_ndindex_count(v->ix);
	return TRAIL_OK;
}

int trail_validator_approve_id(trail_validator *v, const char *id, trail_error *err)
{
	uint8_t raw[32];
	if (trail_digest_parse(id, raw))
		return trail_error_set(err, TRAIL_EDATA, "not a record id: %.80s", id);
	if (idset_find(&v->ids, raw) >= 0)
		return TRAIL_OK;
	int rc = idset_add(&v->ids, raw, 0);
	return rc ? trail_error_set(err, rc, "out of memory") : TRAIL_OK;
}

int trail_validator_compact(trail_validator *v)
{
	return trail_ndindex_compact(v->ix);
}

/* ---- checks ------------------------------------------------------------------ */

static int add(json_t *reasons, json_t *r)
{
	return !r || json_array_append_new(reasons, r) ? -1 : 0;
}

static int check_schema(const trail_validator *v, const json_t *rec, json_t *R)
{
	static const char *const need[3][2] = {{"text", NULL}, {"prompt", "completion"}, {"messages", NULL}};
	const char *k;
	json_t *val;
	int chat = v->p->schema == TRAIL_SCHEMA_CHAT;
	if (!json_is_object(rec))
		return add(R, json_pack("{s:s,s:s}", "rule", "schema", "message",
					"a record is a JSON object"));
	for (int i = 0; i < 2 && need[v->p->schema][i]; i++)
		if (!json_object_get(rec, need[v->p->schema][i]) &&
		    add(R, json_pack("{s:s,s:s,s:s}", "rule", "schema", "field",
				     need[v->p->schema][i], "message", "missing")))
			return -1;
	json_object_foreach((json_t *)rec, k, val)
	{
		if (chat && !strcmp(k, "messages")) {
			char why[160];
			if (trail_chat_messages_check(val, why, sizeof why) &&
			    add(R, json_pack("{s:s,s:s,s:s}", "rule", "schema", "field", k, "message", why)))
				return -1;
			continue;
		}
		if (!json_is_string(val) &&
		    add(R, json_pack("{s:s,s:s,s:s}", "rule", "schema", "field", k, "message",
				     "not a string")))
			return -1;
	}
	return 0;
}

static unsigned pii_kinds(const trail_policy *p)
{
	unsigned k = 0;
	for (int i = 0; i < TRAIL_PII_KINDS; i++)
		k |= (unsigned)p->on[R_PII_EMAIL + i] << i;
	return k;
}

/* A string with its PII rewritten (NULL when out of memory), counts added per kind. */
static json_t *redact_str(const json_t *val, unsigned kinds, size_t counts[TRAIL_PII_KINDS])
{
	char *red;
	size_t rl, c[TRAIL_PII_KINDS];
	if (trail_pii_redact(json_string_value(val), json_string_length(val), kinds, &red, &rl, c))
		return NULL;
	json_t *s = json_stringn(red, rl);
	trail_free(red);
	for (int i = 0; s && i < TRAIL_PII_KINDS; i++)
		counts[i] += c[i];
	return s;
}

/* Rewrite PII in every string field (and a chat record's turns): a new record in *out, counts per kind. */
static int redact_record(const trail_validator *v, const json_t *rec, json_t **out,
			 size_t counts[TRAIL_PII_KINDS])
{
	const char *k;
	json_t *val;
	json_t *r = json_object();
	unsigned kinds = pii_kinds(v->p);
	for (int i = 0; i < TRAIL_PII_KINDS; i++)
		counts[i] = 0;
	if (!r)
		return -1;
	json_object_foreach((json_t *)rec, k, val)
	{
		json_t *nv;
		if (json_is_array(val)) { /* a chat record's messages, checked by the schema */
			size_t i;
			json_t *m, *c;
			if (!(nv = json_array()))
				goto fail;
			json_array_foreach(val, i, m)
			{
				json_t *nm = json_copy(m);
				if (!nm || !(c = redact_str(json_object_get(m, "content"), kinds, counts)) ||
				    json_object_set_new(nm, "content", c) || json_array_append_new(nv, nm)) {
					json_decref(nv);
					goto fail;
				}
			}
		} else if (!(nv = redact_str(val, kinds, counts)))
			goto fail;
		if (json_object_set_new(r, k, nv))
			goto fail;
	}
	*out = r;
	return 0;
fail:
	json_decref(r);
	return -1;
}

/* Count the PII of one string into counts. */
static int pii_count(const json_t *val, unsigned kinds, size_t counts[TRAIL_PII_KINDS])
{
	struct {
		trail_pii_match m[64];
	} buf;
	size_t len = json_string_length(val);
	long n = trail_pii_scan(json_string_value(val), len, kinds, buf.m, 64);
	if (n < 0)
		return -1;
	if ((size_t)n <= 64) {
		for (long i = 0; i < n; i++)
			counts[buf.m[i].kind]++;
		return 0;
	}
	/* Many: count by kind, one kind at a time. */
	for (int q = 0; q < TRAIL_PII_KINDS; q++)
		if ((kinds >> q) & 1) {
			long c = trail_pii_scan(json_string_value(val), len, 1u << q, NULL, 0);
			if (c < 0)
				return -1;
			counts[q] += (size_t)c;
		}
	return 0;
}

static int check_pii(const trail_validator *v, const json_t *rec, json_t *R)
{
	size_t counts[TRAIL_PII_KINDS] = {0};
	unsigned kinds = pii_kinds(v->p);
	const char *k;
	json_t *val;
	if (!kinds)
		return 0;
	json_object_foreach((json_t *)rec, k, val)
	{
		if (json_is_array(val)) { /* a chat record's messages */
			size_t i;
			json_t *m;
			json_array_foreach(val, i, m)
				if (pii_count(json_object_get(m, "content"), kinds, counts))
					return -1;
		} else if (pii_count(val, kinds, counts))
			return -1;
	}
	for (int i = 0; i < TRAIL_PII_KINDS; i++)
		if (counts[i] && add(R, json_pack("{s:s,s:I}", "rule", trail_pii_rule(i), "count",
						  (json_int_t)counts[i])))
			return -1;
	return 0;
}

static int check_license(const trail_validator *v, const json_t *rec, json_t *R)
{
	const trail_policy *p = v->p;
	const char *lic = json_string_value(json_object_get(rec, "license"));
	if (!lic)
		lic = v->license;
	if (!lic || !*lic)
		return p->license_required
			       ? add(R, json_pack("{s:s,s:s}", "rule", "license", "message",
						  "no license"))
			       : 0;
	if (!p->licenses.n)
		return 0;
	for (size_t i = 0; i < p->licenses.n; i++)
		if (!strcmp(p->licenses.v[i], lic))
			return 0;
	return add(R, json_pack("{s:s,s:s,s:s}", "rule", "license", "value", lic, "message",
				"not an allowed license"));
}

static json_t *dup_reason(const trail_validator *v, const char *rule, const uint8_t *id,
			  long line, double score)
{
	char of[72];
	trail_digest_format(id, of);
	json_t *r = json_pack("{s:s,s:s}", "rule", rule, "of", of);
	if (r && score >= 0)
		json_object_set_new(r, "score", json_real(round(score * 100) / 100));
	if (r && line > 0)
		json_object_set_new(r, "n", json_integer(line));
	(void)v;
	return r;
}

/* The index key of a record's text into v->key: 1, 0 when it has no words, -1 out of memory. */
static int text_key(trail_validator *v, const json_t *rec)
{
	char *own;
	size_t len;
	const char *text = content(v, rec, &len, &own);
	long ns = text ? trail_minhash(v->mh, text, len, v->sig) : -1;
	trail_free(own);
	if (ns <= 0)
		return ns < 0 ? -1 : 0;
	trail_ndindex_key(v->ix, v->sig, v->key);
	return 1;
}

/*
 * Exact and near duplicates; indexes the record for later ones. has_key:
 * 1 when key is the record's index key, 0 when its text has none, -1 to
 * make it from rec if it is needed.
 */
static int check_dups(trail_validator *v, const json_t *rec, const uint8_t raw[32], long n,
		      int has_key, const uint8_t *key, json_t *R)
{
	const trail_policy *p = v->p;
	long prev = idset_find(&v->ids, raw);
	int dup = prev >= 0;
	uint64_t ord;
	if (dup && p->on[R_DUPLICATE] &&
	    add(R, dup_reason(v, "duplicate", v->ids.id[prev], v->ids.line[prev], -1)))
		return -1;
	if (!dup && idset_add(&v->ids, raw, n))
		return -1;
	if (dup || !(p->on[R_NEAR] || p->on[R_DUPLICATE]))
		return 0;
	if (has_key < 0 && (has_key = text_key(v, rec)) > 0)
		key = v->key;
	if (has_key <= 0)
		return has_key;
	if (v->napproved && approved_find(v, raw) >= 0) {
		/* An exact copy of an approved record (the earliest with this id). */
		if (!p->on[R_DUPLICATE])
			return 0;
		return add(R, dup_reason(v, "duplicate", raw, 0, -1));
	}
	if (p->on[R_NEAR]) {
		double score;
		int f = trail_ndindex_query_key(v->ix, key, &ord, &score);
		if (f < 0)
			return -1;
		long line = f && ord >= v->napproved ? v->ixline[ord - v->napproved] : 0;
		if (f && add(R, dup_reason(v, "near-duplicate", trail_ndindex_id(v->ix, ord), line,
					   score)))
			return -1;
	}
	if (v->nixline == v->ixlinecap) {
		size_t nc = v->ixlinecap ? v->ixlinecap * 2 : 1024;
		long *nl = trail_realloc(v->ixline, nc * sizeof *nl);
		if (!nl)
			return -1;
		v->ixline = nl;
		v->ixlinecap = nc;
	}
	if (trail_ndindex_add_key(v->ix, key, raw))
		return -1;
	v->ixline[v->nixline++] = n;
	return 0;
}

static int any_quality(const trail_policy *p)
{
	for (int r = R_GQ_WORDS; r <= R_FW_NEWLINE; r++)
		if (p->on[r])
			return 1;
	return 0;
}

static json_t *verdict_of(const char *file, const char *id, long n)
{
	json_t *j = json_object();
	if (!j || json_object_set_new(j, "record", json_string(id)) ||
	    json_object_set_new(j, "n", json_integer(n)) ||
	    (file && json_object_set_new(j, "file", json_string(file)))) {
		json_decref(j);
		return NULL;
	}
	return j;
}

static json_t *verdict_new(const trail_validator *v, const char *id, long n)
{
	return verdict_of(v->source, id, n);
}

/*
 * A partial line (validate_shard.c has the format): the verdict's record,
 * n and file, the reasons before the duplicate checks (pre) and after them
 * (post), the redactions, and, when the duplicate checks apply ("dups"),
 * the record's index key if its text has one.
 */
static json_t *partial_line(const json_t *vd, json_t *R, size_t split, json_t *red, int dups, int has_key,
			    const uint8_t *key, size_t keylen)
{
	json_t *j = json_deep_copy(vd), *pre = json_array(), *post = json_array();
	for (size_t i = 0; pre && post && i < json_array_size(R); i++)
		if (json_array_append(i < split ? pre : post, json_array_get(R, i)))
			break;
	int bad = !j || !pre || !post || json_array_size(pre) + json_array_size(post) != json_array_size(R) ||
		  json_object_set_new(j, "pre", pre) || json_object_set_new(j, "post", post);
	pre = post = NULL;
	if (!bad && red && json_array_size(red))
		bad = json_object_set(j, "redacted", red);
	if (!bad && dups)
		bad = json_object_set_new(j, "dups", json_true());
	if (!bad && has_key > 0) {
		char *t = trail_malloc(trail_base64_len(keylen));
		if (t)
			trail_base64(key, keylen, t);
		bad = !t || json_object_set_new(j, "key", json_string(t));
		trail_free(t);
	}
	json_decref(pre);
	json_decref(post);
	if (bad) {
		json_decref(j);
		return NULL;
	}
	return j;
}

static int verdict_finish(trail_validator *v, json_t *verdict, json_t *R, json_t *redacted)
{
	size_t i;
	json_t *r;
	int ok = json_array_size(R) == 0;
	v->records++;
	if (ok)
		v->accepted++;
	else
		v->rejected++;
	json_array_foreach(R, i, r)
	{
		const char *name = json_string_value(json_object_get(r, "rule"));
		for (int q = 0; name && q < R_COUNT; q++)
			if (!strcmp(trail_rule_name_of(q), name)) {
				v->rule_count[q]++;
				break;
			}
	}
	if (json_object_set_new(verdict, "ok", json_boolean(ok)) ||
	    json_object_set(verdict, "reasons", R))
		return -1;
	if (redacted && json_array_size(redacted)) {
		v->redacted++;
		if (json_object_set(verdict, "redacted", redacted))
			return -1;
	}
	return 0;
}

int trail_validator_check(trail_validator *v, const json_t *record, long n, json_t **verdict,
			  json_t **accepted, trail_error *err)
{
	const trail_policy *p = v->p;
	json_t *R = json_array(), *rec = NULL, *red = NULL, *vd = NULL;
	char id[72];
	uint8_t raw[32];
	int rc = TRAIL_ENOMEM;
	*verdict = NULL;
	if (accepted)
		*accepted = NULL;
	if (!R || check_schema(v, record, R))
		goto out;
	int schema_ok = json_array_size(R) == 0;
	rec = json_incref((json_t *)record);
	if (schema_ok && v->redact) {
		size_t counts[TRAIL_PII_KINDS];
		json_t *r2;
		if (redact_record(v, record, &r2, counts))
			goto out;
		json_decref(rec);
		rec = r2;
		if (!(red = json_array()))
			goto out;
		for (int i = 0; i < TRAIL_PII_KINDS; i++)
			if (counts[i] && add(red, json_pack("{s:s,s:I}", "rule", trail_pii_rule(i),
							    "count", (json_int_t)counts[i])))
				goto out;
	}
	size_t clen, split = 0;
	int has_key = 0;
	if (record_id(rec, id, raw, &clen) || !(vd = verdict_new(v, id, n)))
		goto out;
	if (schema_ok) {
		if (p->on[R_SIZE]) {
			if ((long long)clen > p->max_bytes &&
			    add(R, json_pack("{s:s,s:I,s:I}", "rule", "size", "value",
					     (json_int_t)clen, "max", (json_int_t)p->max_bytes)))
				goto out;
		}
		if (p->on[R_LICENSE] && check_license(v, rec, R))
			goto out;
		split = json_array_size(R);
		if (v->partial && (p->on[R_NEAR] || p->on[R_DUPLICATE]) && (has_key = text_key(v, rec)) < 0)
			goto out;
		if (!v->partial && check_dups(v, rec, raw, n, -1, NULL, R))
			goto out;
		if (any_quality(p)) {
			char *own;
			size_t len;
			const char *text = content(v, rec, &len, &own);
			int q = text ? trail_quality_check_with(p, v->qs, text, len, R) : -1;
			trail_free(own);
			if (q)
				goto out;
		}
		if (!v->redact && check_pii(v, rec, R))
			goto out;
	}
	if (v->partial) {
		json_t *l = partial_line(vd, R, schema_ok ? split : json_array_size(R), red, schema_ok, has_key, v->key,
					 trail_ndindex_keylen(v->ix));
		if (!l)
			goto out;
		json_decref(vd);
		vd = l;
	} else if (verdict_finish(v, vd, R, red))
		goto out;
	if (accepted && !v->partial && json_array_size(R) == 0)
		*accepted = json_incref(rec);
	*verdict = vd;
	vd = NULL;
	rc = TRAIL_OK;
out:
	json_decref(R);
	json_decref(rec);
	json_decref(red);
	json_decref(vd);
	return rc ? trail_error_set(err, rc, "out of memory") : TRAIL_OK;
}

void trail_validator_set_partial(trail_validator *v, int on)
{
	v->partial = !!on;
}

const trail_policy *trail_validator_policy(const trail_validator *v)
{
	return v->p;
}

int trail_validator_partial_verdict(trail_validator *v, const json_t *line, json_t **verdict)
{
	uint8_t raw[32], key[sizeof v->key];
	size_t klen = trail_ndindex_keylen(v->ix), got = 0;
	const char *id = json_string_value(json_object_get(line, "record"));
	const char *file = json_string_value(json_object_get(line, "file"));
	const char *k = json_string_value(json_object_get(line, "key"));
	json_t *n = json_object_get(line, "n"), *pre = json_object_get(line, "pre"), *post = json_object_get(line, "post");
	json_t *red = json_object_get(line, "redacted"), *dups = json_object_get(line, "dups");
	*verdict = NULL;
	if (!id || trail_digest_parse(id, raw) || !json_is_integer(n) || !json_is_array(pre) || !json_is_array(post) ||
	    (red && !json_is_array(red)) || (dups && !json_is_true(dups)) ||
	    (k && (trail_unbase64(k, strlen(k), key, sizeof key, &got) || got != klen)))
		return TRAIL_EDATA;
	json_t *vd = verdict_of(file, id, (long)json_integer_value(n)), *R = json_copy(pre);
	int rc = !vd || !R ||
		 (dups && check_dups(v, NULL, raw, (long)json_integer_value(n), k ? 1 : 0, key, R)) ||
		 json_array_extend(R, post) || verdict_finish(v, vd, R, red);
	json_decref(R);
	if (rc) {
		json_decref(vd);
		return TRAIL_ENOMEM;
	}
	*verdict = vd;
	return TRAIL_OK;
}

/* Offset of the first byte that is not strict UTF-8, or len. */
static size_t utf8_bad(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned c = s[i];
		size_t n;
		unsigned min;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF)
			n = 1, min = 0x80;
		else if (c >= 0xE0 && c <= 0xEF)
			n = 2, min = 0x800;
		else if (c >= 0xF0 && c <= 0xF4)
			n = 3, min = 0x10000;
		else
			return i;
		unsigned cp = c & (0x3Fu >> n);
		for (size_t k = 1; k <= n; k++) {
			if (i + k >= len || (s[i + k] & 0xC0) != 0x80)
				return i;
			cp = cp << 6 | (s[i + k] & 0x3Fu);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return i;
		i += n + 1;
	}
	return len;
}

int trail_validator_check_line(trail_validator *v, const char *line, size_t len,
			       const char *source, long n, json_t **verdict, json_t **accepted,
			       trail_error *err)
{
	*verdict = NULL;
	if (accepted)
		*accepted = NULL;
	size_t bad = utf8_bad((const unsigned char *)line, len);
	if (bad < len) {
		char id[72];
		trail_digest_str(line, len, id);
		json_t *vd = verdict_new(v, id, n), *R = json_array(), *l = NULL;
		int rc = !vd || !R || add(R, json_pack("{s:s,s:I}", "rule", "utf8", "offset", (json_int_t)bad));
		if (!rc && v->partial) {
			rc = !(l = partial_line(vd, R, 1, NULL, 0, 0, NULL, 0));
			json_decref(vd);
			vd = l;
		} else if (!rc)
			rc = verdict_finish(v, vd, R, NULL);
		json_decref(R);
		if (rc) {
			json_decref(vd);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
		*verdict = vd;
		return TRAIL_OK;
	}
	json_t *rec;
	int rc = trail_json_parse(line, len, source, &rec, err);
	if (rc) {
		if (err)
			err->line = n;
		return rc;
	}
	rc = trail_validator_check(v, rec, n, verdict, accepted, err);
	json_decref(rec);
	return rc;
}

void trail_validator_note_malformed(trail_validator *v)
{
	v->malformed++;
}

uint64_t trail_validator_rejected(const trail_validator *v)
{
	return v->rejected;
}

json_t *trail_validator_summary(const trail_validator *v)
{
	json_t *rules = json_object();
	for (int q = 0; rules && q < R_COUNT; q++)
		if (v->rule_count[q])
			json_object_set_new(rules, trail_rule_name_of(q),
					    json_integer((json_int_t)v->rule_count[q]));
	return json_pack("{s:{s:I,s:I,s:I,s:I,s:I,s:o}}", "summary", "records",
			 (json_int_t)v->records, "accepted", (json_int_t)v->accepted, "rejected",
			 (json_int_t)v->rejected, "malformed", (json_int_t)v->malformed, "redacted",
			 (json_int_t)v->redacted, "rules", rules);
}

/* ---- GitHub annotations ------------------------------------------------------------- */

struct sbuf {
	char *s;
	size_t n, cap;
	int oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t nc = (b->cap + n + 1) * 2;
		char *ns = trail_realloc(b->s, nc);
		if (!ns) {
			b->oom = 1;
			return;
		}
		b->s = ns;
		b->cap = nc;
	}
	memcpy(b->s + b->n, s, n);
	b->n += n;
	b->s[b->n] = 0;
}

/* Workflow-command escaping; properties also escape ':' and ','. */
static void sb_esc(struct sbuf *b, const char *s, int property)
{
	for (; *s; s++) {
		const char *e = NULL;
		switch (*s) {
		case '%': e = "%25"; break;
		case '\r': e = "%0D"; break;
		case '\n': e = "%0A"; break;
		case ':': e = property ? "%3A" : NULL; break;
		case ',': e = property ? "%2C" : NULL; break;
		}
		if (e)
			sb_put(b, e, 3);
		else
			sb_put(b, s, 1);
	}
}

static void describe(struct sbuf *b, const json_t *r)
{
	const char *k;
	json_t *val;
	char tmp[128];
	int first = 1;
	json_object_foreach((json_t *)r, k, val)
	{
		if (!strcmp(k, "rule"))
			continue;
		sb_put(b, first ? ": " : ", ", 2);
		first = 0;
		sb_esc(b, k, 0);
		sb_put(b, " ", 1);
		if (json_is_string(val))
			sb_esc(b, json_string_value(val), 0);
		else if (json_is_integer(val))
			sb_put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%lld",
							 (long long)json_integer_value(val)));
		else if (json_is_real(val))
			sb_put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "%g", json_real_value(val)));
	}
}

char *trail_github_annotation(const char *file, long line, const char *title, const char *msg)
{
	struct sbuf b = {0};
	char tmp[64];
	sb_put(&b, "::error file=", 13);
	sb_esc(&b, file ? file : "-", 1);
	sb_put(&b, tmp, (size_t)snprintf(tmp, sizeof tmp, ",line=%ld", line));
	if (title) {
		sb_put(&b, ",title=", 7);
		sb_esc(&b, title, 1);
	}
	sb_put(&b, "::", 2);
	sb_esc(&b, msg, 0);
	sb_put(&b, "\n", 1);
	if (b.oom) {
		trail_free(b.s);
		return NULL;
	}
	return b.s;
}

char *trail_verdict_github(const json_t *verdict, const char *file)
{
	struct sbuf b = {0};
	size_t i;
	json_t *r;
	char tmp[64];
	sb_put(&b, "", 0);
	long n = (long)json_integer_value(json_object_get(verdict, "n"));
	json_array_foreach(json_object_get(verdict, "reasons"), i, r)
	{
		const char *rule = json_string_value(json_object_get(r, "rule"));
		sb_put(&b, "::error file=", 13);
		sb_esc(&b, file ? file : "-", 1);
		sb_put(&b, tmp, (size_t)snprintf(tmp, sizeof tmp, ",line=%ld,title=", n));
		sb_esc(&b, rule ? rule : "?", 1);
		sb_put(&b, "::", 2);
		sb_esc(&b, rule ? rule : "?", 0);
		describe(&b, r);
		sb_put(&b, "\n", 1);
	}
	if (b.oom) {
		trail_free(b.s);
		return NULL;
	}
	return b.s;
}

/* A reason that flags rather than rejects: personal data, or a copy. */
static int flags_record(const char *rule)
{
	if (!strcmp(rule, "duplicate") || !strcmp(rule, "near-duplicate"))
		return 1;
	for (int i = 0; i < TRAIL_PII_KINDS; i++)
		if (!strcmp(rule, trail_pii_rule(i)))
			return 1;
	return 0;
}

json_t *trail_verdict_flag(const json_t *verdict, const char *contributor, int *oom)
{
	const json_t *R = json_object_get(verdict, "reasons");
	const json_t *file = json_object_get(verdict, "file");
	size_t i;
	json_t *r;
	int flagged = 0;
	if (oom)
		*oom = 0;
	if (!contributor || !*contributor || !json_is_false(json_object_get(verdict, "ok")))
		return NULL;
	json_t *rules = json_array();
	json_array_foreach(R, i, r)
	{
		const char *rule = json_string_value(json_object_get(r, "rule"));
		if (!rule)
			continue;
		flagged |= flags_record(rule);
		if (rules && json_array_append_new(rules, json_string(rule))) {
			json_decref(rules);
			rules = NULL;
		}
	}
	json_t *f = rules ? json_pack("{s:s, s:s, s:i, s:O, s:o}", "type", "flags", "contributor", contributor,
				      flagged ? "flagged" : "rejected", 1, "record",
				      json_object_get(verdict, "record"), "rules", rules)
			  : NULL;
	if (f && json_is_string(file) && json_object_set(f, "file", (json_t *)file)) {
		json_decref(f);
		f = NULL;
	}
	if (f && json_object_set(f, "n", json_object_get(verdict, "n"))) {
		json_decref(f);
		f = NULL;
	}
	if (!f && oom)
		*oom = 1;
	return f;
}
