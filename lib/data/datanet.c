#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "core/core.h"

static const char *str(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

/*
 * A datanet name: 1-128 bytes of UTF-8 without '@' (it starts a tree size),
 * spaces, control characters, quotes, '/' or '\', so that it needs no
 * escaping in canonical JSON and entries can be found by their bytes.
 */
static int check_name(const char *s, size_t n, trail_error *err)
{
	if (n == 0 || n > 128)
		return trail_error_set(err, TRAIL_EUSAGE, "a datanet name has 1 to 128 bytes");
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f || s[i] == '/' || s[i] == '"' ||
		    s[i] == '\\' || s[i] == '@')
			return trail_error_set(err, TRAIL_EUSAGE,
					       "'%.*s': a datanet name has no spaces, quotes, '@', '/' or '\\'",
					       (int)n, s);
	if (!trail_utf8_valid(s, n))
		return trail_error_set(err, TRAIL_EUSAGE, "a datanet name is UTF-8");
	return TRAIL_OK;
}

int trail_datanet_spec(const char *arg, char **name, uint64_t *size, trail_error *err)
{
	const char *at = strrchr(arg, '@');
	int rc;
	*size = 0;
	*name = NULL;
	if (at) {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(at + 1, &end, 10);
		if (end == at + 1 || *end || v < 1 || errno || at[1] == '-' || at[1] == '+')
			return trail_error_set(err, TRAIL_EUSAGE, "'%s': the tree size after @ is a positive integer", arg);
		*size = (uint64_t)v;
	}
	size_t n = at ? (size_t)(at - arg) : strlen(arg);
	if ((rc = check_name(arg, n, err)))
		return rc;
	*name = trail_strndup(arg, n);
	return *name ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

int trail_datanet_check_record(const json_t *rec, const char *schema, trail_error *err)
{
	static const char *reserved[] = {"record", "contributor", "bundle", "entry"};
	const char *k;
	json_t *v;
	if (!json_is_object(rec))
		return trail_error_set(err, TRAIL_EDATA, "a record is a JSON object");
	for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++)
		if (json_object_get(rec, reserved[i]))
			return trail_error_set(err, TRAIL_EDATA, "record field '%s' is reserved", reserved[i]);
	int chat = !strcmp(schema, "chat");
	json_object_foreach((json_t *)rec, k, v)
		if (!json_is_string(v) && !(chat && !strcmp(k, "messages")))
			return trail_error_set(err, TRAIL_EDATA, "record field '%s' is not a string", k);
	if (chat) {
		char why[160];
		if (trail_chat_messages_check(json_object_get(rec, "messages"), why, sizeof why))
			return trail_error_set(err, TRAIL_EDATA, "schema chat: %s", why);
	}
	if (!strcmp(schema, "text") && !str(rec, "text"))
		return trail_error_set(err, TRAIL_EDATA, "schema text: the record has no \"text\"");
	if (!strcmp(schema, "instruct") && (!str(rec, "prompt") || !str(rec, "completion")))
		return trail_error_set(err, TRAIL_EDATA,
				       "schema instruct: the record needs \"prompt\" and \"completion\"");
	return TRAIL_OK;
}

/* Does this entry's text name the datanet? A cheap filter before parsing. */
static int mentions(const char *e, size_t n, const char *name)
{
	char pat[160];
	int k = snprintf(pat, sizeof pat, "\"%s\"", name);
	return k > 0 && (size_t)k < sizeof pat && memmem(e, n, pat, (size_t)k) != NULL;
}

/* Entry i parsed, if it is a signed entry of `type` for datanet `name`. */
static int entry_of(trail_ledger *l, uint64_t i, const char *type, const char *name, json_t **out,
		    trail_error *err)
{
	char *e;
	size_t n;
	int rc = trail_ledger_get(l, i, &e, &n, err);
	*out = NULL;
	if (rc)
		return rc;
	if (mentions(e, n, name) && mentions(e, n, type)) {
		json_t *j;
		if (trail_json_parse(e, n, "log/data", &j, NULL) == TRAIL_OK) {
			const char *t = str(j, "type");
			const char *dn = str(j, !strcmp(type, "datanet") ? "name" : "datanet");
			if (t && dn && !strcmp(t, type) && !strcmp(dn, name) && !trail_json_verify(j, NULL))
				*out = j;
			else
				json_decref(j);
		}
	}
	trail_free(e);
	return TRAIL_OK;
}

int trail_datanet_find(trail_ledger *l, const char *name, uint64_t size, json_t **def,
		       uint64_t *entry, trail_error *err)
{
	uint64_t n = trail_ledger_size(l);
	if (size && size < n)
		n = size;
	*def = NULL;
	for (uint64_t i = 0; i < n; i++) {
		int rc = entry_of(l, i, "datanet", name, def, err);
		if (rc)
			return rc;
		if (*def) {
			if (entry)
				*entry = i;
			return TRAIL_OK;
		}
	}
	return trail_error_set(err, TRAIL_ENOINPUT, "no datanet named '%s'%s", name,
			       size ? " at that tree size" : "");
}

static int append_signed(trail_ledger *l, json_t *e, const trail_signer *s, uint64_t *idx,
			 trail_error *err)
{
	int rc;
	if ((rc = trail_json_sign(e, s, err)) || (rc = trail_ledger_append(l, e, idx, err)) ||
	    (rc = trail_ledger_commit(l, err)))
		return rc;
	return TRAIL_OK;
}

int trail_datanet_create(trail_store *s, const char *name, const char *schema,
			 const char *license, const json_t *policy, const trail_signer *owner,
			 uint64_t *entry, trail_error *err)
{
	trail_ledger *l = NULL;
	json_t *e = NULL, *old = NULL;
	char pd[72];
	int rc;
	if (trail_schema_parse(schema) < 0)
		return trail_error_set(err, TRAIL_EUSAGE, "schema '%s': text, instruct or chat", schema);
	if ((rc = check_name(name, strlen(name), err)))
		return rc;
	if ((rc = trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, err)))
		return rc;
	if (trail_datanet_find(l, name, 0, &old, NULL, NULL) == TRAIL_OK) {
		rc = trail_error_set(err, TRAIL_EDATA, "datanet '%s' already exists", name);
		goto out;
	}
	e = json_pack("{s:s, s:s, s:s, s:s, s:s}", "type", "datanet", "name", name, "schema", schema,
		      "license", license ? license : "", "owner", trail_signer_vkey(owner));
	if (!e) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if (policy) {
		char *p;
		size_t pl;
		trail_policy *pol;
		/* a policy datanet-validate would refuse later is refused now */
		if ((rc = trail_policy_from_json(policy, "policy", trail_schema_parse(schema), &pol, err)))
			goto out;
		trail_policy_free(pol);
		if ((rc = trail_jcs(policy, &p, &pl, err)))
			goto out;
		rc = trail_store_put(s, p, pl, pd, err);
		trail_free(p);
		if (rc || (rc = json_object_set_new(e, "policy_object", json_string(pd)) ? TRAIL_ENOMEM : 0))
			goto out;
	}
	rc = append_signed(l, e, owner, entry, err);
out:
	json_decref(old);
	json_decref(e);
	trail_ledger_free(l);
	return rc;
}

int trail_datanet_contribute(trail_store *s, const char *name, const void *bundle, size_t len,
			     const trail_signer *contributor, json_t **receipt, trail_error *err)
{
	trail_bundle *b = NULL;
	trail_ledger *l = NULL;
	json_t *def = NULL, *e = NULL;
	char digest[72], *note = NULL, *proof = NULL;
	uint64_t idx;
	int rc;
	*receipt = NULL;
	if ((rc = trail_bundle_read(bundle, len, NULL, &b, err)))
		return rc;
	json_t *m = b->manifest;
	const char *schema;
	if (strcmp(str(m, "datanet"), name)) {
		rc = trail_error_set(err, TRAIL_EDATA, "the bundle is for datanet '%s', not '%s'",
				     str(m, "datanet"), name);
		goto out;
	}
	if (strcmp(str(m, "contributor"), trail_signer_vkey(contributor))) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "the bundle was signed by another key");
		goto out;
	}
	/* Store the object first: an object nothing refers to is harmless. */
	if ((rc = trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, err)) ||
	    (rc = trail_datanet_find(l, name, 0, &def, NULL, err)))
		goto out;
	schema = str(def, "schema");
	size_t i;
	json_t *r;
	json_array_foreach(b->records, i, r)
		if ((rc = trail_datanet_check_record(r, schema, err))) {
			trail_error_at(err, rc, "records.ndjson", (long)i + 1, "%s", err ? err->msg : "");
			goto out;
		}
	if ((rc = trail_store_put(s, bundle, len, digest, err)))
		goto out;
	e = json_pack("{s:s, s:s, s:s, s:s, s:O, s:O, s:O}", "type", "contribution", "datanet", name,
		      "bundle", digest, "contributor", trail_signer_vkey(contributor), "records",
		      json_object_get(m, "records"), "root", json_object_get(m, "root"), "license",
		      json_object_get(m, "license"));
	if (!e || (json_object_get(m, "source") &&
		   json_object_set(e, "source", json_object_get(m, "source")))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = append_signed(l, e, contributor, &idx, err)) ||
	    (rc = trail_ledger_checkpoint(l, &note, err)) ||
	    (rc = trail_ledger_receipt(l, idx, &proof, err)))
		goto out;
	*receipt = json_pack("{s:s, s:I, s:s, s:O, s:s, s:s}", "datanet", name, "entry", (json_int_t)idx,
			     "bundle", digest, "records", json_object_get(m, "records"), "checkpoint", note,
			     "proof", proof);
	if (!*receipt)
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
out:
	trail_free(note);
	trail_free(proof);
	json_decref(e);
	json_decref(def);
	trail_ledger_free(l);
	trail_bundle_free(b);
	return rc;
}

int trail_datanet_decide(trail_store *s, const char *name, uint64_t contribution, int approve,
			 const char *reason, const trail_signer *owner, uint64_t *entry,
			 trail_error *err)
{
	return trail_datanet_approve_records(s, name, contribution, approve, NULL, reason, owner,
					     entry, err);
}

static int cmp_size(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	return x < y ? -1 : x > y;
}

/*
 * The 0-based positions of a "rejected" list [{"n": N, "record": id}...]
 * (N 1-based in records.ndjson) whose ids match the bundle's ids, sorted
 * and distinct. *bad (if not NULL) gets the first entry that does not fit.
 */
static int rejected_set(const json_t *list, const json_t *ids, size_t **out, size_t *n,
			const json_t **bad)
{
	size_t i, k = 0;
	json_t *x;
	*out = NULL;
	*n = 0;
	if (bad)
		*bad = NULL;
	if (!json_array_size(list))
		return TRAIL_OK;
	size_t *v = trail_calloc(json_array_size(list), sizeof *v);
	if (!v)
		return TRAIL_ENOMEM;
	json_array_foreach(list, i, x) {
		json_t *jn = json_object_get(x, "n");
		json_int_t pos = json_is_integer(jn) ? json_integer_value(jn) : 0;
		const char *id = json_string_value(json_object_get(x, "record"));
		const char *want = pos >= 1 && (size_t)pos <= json_array_size(ids)
					   ? json_string_value(json_array_get(ids, (size_t)pos - 1))
					   : NULL;
		if (!id || !want || strcmp(id, want)) {
			if (bad && !*bad)
				*bad = x;
			continue;
		}
		v[k++] = (size_t)pos - 1;
	}
	qsort(v, k, sizeof *v, cmp_size);
	for (i = 0; i < k; i++)
		if (!*n || v[*n - 1] != v[i])
			v[(*n)++] = v[i];
	*out = v;
	return TRAIL_OK;
}

static int in_set(const size_t *set, size_t n, size_t pos)
{
	return n && bsearch(&pos, set, n, sizeof *set, cmp_size) != NULL;
}

int trail_datanet_approve_records(trail_store *s, const char *name, uint64_t contribution,
				  int approve, const json_t *rejected, const char *reason,
				  const trail_signer *owner, uint64_t *entry, trail_error *err)
{
	trail_ledger *l = NULL;
	trail_bundle *b = NULL;
	json_t *def = NULL, *c = NULL, *e = NULL, *rej = NULL;
	size_t *set = NULL, nset = 0;
	int rc;
	if (rejected && (!approve || !json_is_array(rejected)))
		return trail_error_set(err, TRAIL_EUSAGE, "only an approval names rejected records");
	if ((rc = trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, err)) ||
	    (rc = trail_datanet_find(l, name, 0, &def, NULL, err)))
		goto out;
	if (strcmp(str(def, "owner"), trail_signer_vkey(owner))) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "only the owner of '%s' can approve or reject", name);
		goto out;
	}
	if (contribution >= trail_ledger_size(l) ||
	    (rc = entry_of(l, contribution, "contribution", name, &c, err)) || !c) {
		rc = rc ? rc : trail_error_set(err, TRAIL_ENOINPUT,
					       "entry %" PRIu64 " is not a contribution to '%s'",
					       contribution, name);
		goto out;
	}
	if (json_array_size(rejected)) {
		/* the records named must be the bundle's, and some must be left */
		void *buf;
		size_t len;
		const json_t *bad;
		if ((rc = trail_store_get(s, str(c, "bundle"), &buf, &len, err)))
			goto out;
		rc = trail_bundle_read(buf, len, NULL, &b, err);
		trail_free(buf);
		if (rc || (rc = rejected_set(rejected, b->ids, &set, &nset, &bad)
				     ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : 0))
			goto out;
		if (bad) {
			json_t *jn = json_object_get(bad, "n");
			const char *id = json_string_value(json_object_get(bad, "record"));
			rc = trail_error_set(err, TRAIL_EUSAGE, "record %s (n %lld) is not in bundle %s",
					     id ? id : "?", json_is_integer(jn) ? (long long)json_integer_value(jn) : 0,
					     str(c, "bundle"));
			goto out;
		}
		if (nset == json_array_size(b->ids)) {
			rc = trail_error_set(err, TRAIL_EUSAGE,
					     "every record of the bundle is rejected: reject it instead");
			goto out;
		}
		/* in bundle order, each once */
		if (!(rej = json_array())) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
		for (size_t k = 0; k < nset; k++)
			if (json_array_append_new(rej, json_pack("{s:I, s:O}", "n", (json_int_t)set[k] + 1, "record",
							     json_array_get(b->ids, set[k])))) {
				rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
				goto out;
			}
	}
	e = json_pack("{s:s, s:s, s:I, s:s, s:s}", "type", "approval", "datanet", name,
		      "contribution", (json_int_t)contribution, "bundle", str(c, "bundle"),
		      "decision", approve ? "approve" : "reject");
	if (!e || (reason && json_object_set_new(e, "reason", json_string(reason))) ||
	    (json_array_size(rej) && json_object_set(e, "rejected", rej))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	rc = append_signed(l, e, owner, entry, err);
out:
	trail_free(set);
	trail_bundle_free(b);
	json_decref(rej);
	json_decref(e);
	json_decref(c);
	json_decref(def);
	trail_ledger_free(l);
	return rc;
}

int trail_datanet_record_validation(trail_store *s, const char *name, const char *bundle,
				    const void *report, size_t len, long accepted, long rejected,
				    const trail_signer *signer, uint64_t *entry, trail_error *err)
{
	trail_ledger *l = NULL;
	json_t *def = NULL, *e = NULL;
	char rd[72];
	int rc;
	if ((rc = trail_store_put(s, report, len, rd, err)) ||
	    (rc = trail_ledger_open(s, TRAIL_LEDGER_WRITE, &l, err)) ||
	    (rc = trail_datanet_find(l, name, 0, &def, NULL, err)))
		goto out;
	e = json_pack("{s:s, s:s, s:s?, s:s, s:I, s:I}", "type", "validation", "datanet", name, "bundle",
		      bundle, "report_object", rd, "accepted", (json_int_t)accepted, "rejected",
		      (json_int_t)rejected);
	rc = e ? append_signed(l, e, signer, entry, err) : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
out:
	json_decref(e);
	json_decref(def);
	trail_ledger_free(l);
	return rc;
}

struct contrib {
	uint64_t entry;
	int approved;
	char bundle[72];
	json_t *e;        /* the signed contribution entry */
	json_t *rejected; /* the approval's "rejected" record ids, or NULL */
};

struct trail_datanet_iter {
	trail_store *store;
	char *name;
	uint64_t size;
	struct contrib *cs;
	size_t nc, k; /* contributions; the one being read */
	trail_bundle *b;
	size_t i; /* next record of b */
	size_t *skip; /* b's rejected records (0-based), sorted */
	size_t nskip;
};

/* Contributions are collected in ledger order: binary search by entry. */
static struct contrib *find_contrib(struct contrib *cs, size_t n, uint64_t entry)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (cs[mid].entry < entry)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && cs[lo].entry == entry ? &cs[lo] : NULL;
}

/* Collect the contributions to `name` below `n` and the owner's latest decisions. */
static int scan(trail_ledger *l, trail_datanet_iter *it, uint64_t start, uint64_t n,
		const char *owner, trail_error *err)
{
	size_t cap = 0;
	for (uint64_t i = start + 1; i < n; i++) {
		json_t *e;
		int rc;
		if ((rc = entry_of(l, i, "contribution", it->name, &e, err)))
			return rc;
		if (e && str(e, "bundle") && str(e, "contributor") &&
		    !strcmp(str(e, "contributor"), str(e, "signer"))) {
			if (it->nc == cap) {
				struct contrib *nb = trail_realloc(it->cs, (cap = cap ? 2 * cap : 16) * sizeof *nb);
				if (!nb) {
					json_decref(e);
					return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
				}
				it->cs = nb;
			}
			struct contrib *c = &it->cs[it->nc++];
			c->entry = i;
			c->approved = 0;
			c->e = e;
			c->rejected = NULL;
			snprintf(c->bundle, sizeof c->bundle, "%s", str(e, "bundle"));
			continue;
		}
		json_decref(e);
		if ((rc = entry_of(l, i, "approval", it->name, &e, err)))
			return rc;
		/* the owner's latest decision on a contribution, for that bundle, counts */
		json_t *ci = json_object_get(e, "contribution");
		struct contrib *c = e && str(e, "signer") && !strcmp(str(e, "signer"), owner) &&
					    json_is_integer(ci) && json_integer_value(ci) >= 0
				    ? find_contrib(it->cs, it->nc, (uint64_t)json_integer_value(ci))
				    : NULL;
		if (c && str(e, "bundle") && !strcmp(str(e, "bundle"), c->bundle)) {
			c->approved = str(e, "decision") && !strcmp(str(e, "decision"), "approve");
			json_decref(c->rejected);
			json_t *rj = json_object_get(e, "rejected");
			c->rejected = c->approved && json_is_array(rj) ? json_incref(rj) : NULL;
		}
		json_decref(e);
	}
	return TRAIL_OK;
}

int trail_datanet_iter_open(trail_store *s, const char *name, uint64_t size,
			    trail_datanet_iter **out, trail_error *err)
{
	trail_ledger *l = NULL;
	json_t *def = NULL;
	uint64_t start;
	int rc;
	trail_datanet_iter *it = trail_calloc(1, sizeof *it);
	*out = NULL;
	if (!it || !(it->name = trail_strdup(name))) {
		trail_free(it);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	it->store = s;
	if ((rc = trail_ledger_open(s, 0, &l, err)))
		goto out;
	uint64_t n = trail_ledger_size(l);
	if (size > n) {
		rc = trail_error_set(err, TRAIL_ENOINPUT,
				     "tree size %" PRIu64 " is beyond the ledger (%" PRIu64 ")", size, n);
		goto out;
	}
	it->size = size ? size : n;
	if ((rc = trail_datanet_find(l, name, it->size, &def, &start, err)) ||
	    (rc = scan(l, it, start, it->size, str(def, "owner"), err)))
		goto out;
	*out = it;
	it = NULL;
out:
	trail_datanet_iter_free(it);
	json_decref(def);
	trail_ledger_free(l);
	return rc;
}

uint64_t trail_datanet_iter_size(const trail_datanet_iter *it)
{
	return it->size;
}

/* An approved bundle, checked against the entry that contributed it. */
static int open_bundle(trail_datanet_iter *it, const struct contrib *c, trail_error *err)
{
	void *buf;
	size_t len;
	int rc;
	if ((rc = trail_store_get(it->store, c->bundle, &buf, &len, err)))
		return rc;
	rc = trail_bundle_read(buf, len, NULL, &it->b, err);
	trail_free(buf);
	if (rc)
		return trail_error_at(err, rc, c->bundle, 0, "%s", err ? err->msg : "");
	json_t *m = it->b->manifest;
	if (strcmp(str(m, "datanet"), it->name) || strcmp(str(m, "contributor"), str(c->e, "contributor")) ||
	    !json_equal(json_object_get(m, "records"), json_object_get(c->e, "records")) ||
	    !json_equal(json_object_get(m, "root"), json_object_get(c->e, "root")))
		return trail_error_set(err, TRAIL_EVERIFY,
				       "entry %" PRIu64 ": bundle %s does not match its contribution entry",
				       c->entry, c->bundle);
	it->i = 0;
	trail_free(it->skip);
	if (rejected_set(c->rejected, it->b->ids, &it->skip, &it->nskip, NULL))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	return TRAIL_OK;
}

int trail_datanet_iter_next(trail_datanet_iter *it, json_t **rec, trail_error *err)
{
	int rc;
	*rec = NULL;
	for (;;) {
		/* records the approval left out are not in the snapshot */
		while (it->b && it->i < json_array_size(it->b->records) &&
		       in_set(it->skip, it->nskip, it->i))
			it->i++;
		if (it->b && it->i < json_array_size(it->b->records))
			break;
		trail_bundle_free(it->b);
		it->b = NULL;
		while (it->k < it->nc && !it->cs[it->k].approved)
			it->k++;
		if (it->k == it->nc)
			return TRAIL_OK;
		if ((rc = open_bundle(it, &it->cs[it->k++], err)))
			return rc;
	}
	const struct contrib *c = &it->cs[it->k - 1];
	size_t i = it->i++;
	json_t *o = json_copy(json_array_get(it->b->records, i));
	if (!o || json_object_set(o, "record", json_array_get(it->b->ids, i)) ||
	    json_object_set(o, "contributor", json_object_get(c->e, "contributor")) ||
	    json_object_set_new(o, "bundle", json_string(c->bundle)) ||
	    json_object_set_new(o, "entry", json_integer((json_int_t)c->entry))) {
		json_decref(o);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	*rec = o;
	return TRAIL_OK;
}

void trail_datanet_iter_free(trail_datanet_iter *it)
{
	if (!it)
		return;
	for (size_t k = 0; k < it->nc; k++) {
		json_decref(it->cs[k].e);
		json_decref(it->cs[k].rejected);
	}
	trail_free(it->skip);
	trail_free(it->cs);
	trail_bundle_free(it->b);
	trail_free(it->name);
	trail_free(it);
}

int trail_datanet_snapshot(trail_store *s, const char *name, uint64_t size,
			   trail_datanet_record_fn fn, void *ctx, trail_error *err)
{
	trail_datanet_iter *it;
	json_t *r;
	int rc = trail_datanet_iter_open(s, name, size, &it, err);
	while (!rc && !(rc = trail_datanet_iter_next(it, &r, err)) && r) {
		rc = fn(ctx, r);
		json_decref(r);
	}
	trail_datanet_iter_free(it);
	return rc;
}

int trail_datanet_load_bundle(trail_store *s, const char *ref, trail_bundle **out,
			      char digest[72], trail_error *err)
{
	void *buf;
	size_t len;
	uint8_t d[32];
	int rc = trail_digest_parse(ref, d) == TRAIL_OK && s
			 ? trail_store_get(s, ref, &buf, &len, err)
			 : trail_read_file(ref, (size_t)1 << 30, &buf, &len, err);
	if (rc)
		return rc;
	trail_digest_str(buf, len, digest);
	rc = trail_bundle_read(buf, len, NULL, out, err);
	trail_free(buf);
	return rc ? trail_error_at(err, rc, ref, err ? err->line : 0, "%s", err ? err->msg : "") : rc;
}

int trail_datanet_contribution_of(trail_store *s, const char *name, const char *digest,
				  uint64_t *entry, trail_error *err)
{
	trail_ledger *l;
	int rc = trail_ledger_open(s, 0, &l, err);
	if (rc)
		return rc;
	rc = trail_error_set(err, TRAIL_ENOINPUT, "bundle %s was not contributed to '%s'", digest, name);
	for (uint64_t i = trail_ledger_size(l); i-- > 0;) {
		json_t *e;
		if (entry_of(l, i, "contribution", name, &e, NULL) == TRAIL_OK && e &&
		    str(e, "bundle") && !strcmp(str(e, "bundle"), digest)) {
			*entry = i;
			rc = TRAIL_OK;
			trail_error_clear(err);
		}
		json_decref(e);
		if (!rc)
			break;
	}
	trail_ledger_free(l);
	return rc;
}

int trail_datanet_policy(trail_store *s, const char *name, json_t **def, json_t **policy,
			 trail_error *err)
{
	trail_ledger *l;
	int rc = trail_ledger_open(s, 0, &l, err);
	*policy = NULL;
	if (rc)
		return rc;
	rc = trail_datanet_find(l, name, 0, def, NULL, err);
	trail_ledger_free(l);
	const char *pd = rc ? NULL : str(*def, "policy_object");
	if (pd) {
		void *b;
		size_t n;
		if (!(rc = trail_store_get(s, pd, &b, &n, err))) {
			rc = trail_json_parse(b, n, pd, policy, err);
			trail_free(b);
		}
	}
	return rc;
}
