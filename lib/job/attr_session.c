/*
 * Attribution sessions: open the model, adapter, tokenizer, index, training
 * records and span index once, check that they belong together, then
 * attribute events one by one; the proof chain of top records; building an
 * index for an existing model.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attr/attr.h"
#include "job/job.h"
#include "data/data.h"
#include "core/core.h"
#include "ledger/ledger.h"
#include "model/model.h"

struct trail_attr_session {
	trail_attr_ctx c;
	trail_model *m;
	trail_tokenizer *tk;
	trail_attr_index *x;
	trail_attr_proj *p;
	trail_dataset *d;
	json_t *recs;
	trail_span_index *sp;
	trail_store *store;
	char *index_path;
	int prove;
	uint8_t *skip; /* --exclude */
	float *centre; /* --centre */
};


static int oom(trail_error *err)
{
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

/* The records named by the "record" of each line of path (attr-score --flag-generic's flags lines). */
static int load_exclude(trail_attr_session *s, const char *path, trail_error *err)
{
	json_t *lines = NULL, *v;
	size_t N = s->d->n, i;
	int rc = trail_ndjson_slurp(path, (size_t)1 << 20, &lines, err);
	if (rc)
		return rc;
	if (!(s->skip = trail_calloc(N ? N : 1, 1))) {
		json_decref(lines);
		return oom(err);
	}
	json_array_foreach(lines, i, v) {
		const char *id = json_string_value(json_object_get(v, "record"));
		size_t j;
		if (!id) {
			rc = trail_error_at(err, TRAIL_EDATA, path, (long)i + 1, "a line without a \"record\" to exclude");
			break;
		}
		for (j = 0; j < N && strcmp(s->d->id[j], id); j++)
			;
		if (j == N) {
			rc = trail_error_at(err, TRAIL_EDATA, path, (long)i + 1, "record %s is not one of the training records", id);
			break;
		}
		s->c.nskip += !s->skip[j];
		s->skip[j] = 1;
	}
	json_decref(lines);
	s->c.skip = s->skip;
	return rc;
}

/* --centre: every record's mean score over the reference events of path, and its digest. */
static int load_centre(trail_attr_session *s, const char *path, trail_error *err)
{
	json_t *events = NULL;
	size_t N = trail_attr_index_info(s->x)->nrecords;
	int rc = trail_ndjson_slurp(path, (size_t)1 << 30, &events, err);
	if (rc)
		return rc;
	if (!(s->centre = trail_malloc((N ? N : 1) * sizeof *s->centre)))
		rc = oom(err);
	else if ((rc = trail_attr_centre(&s->c, events, s->centre, err))) {
		char msg[sizeof err->msg];
		snprintf(msg, sizeof msg, "%s", err->msg);
		trail_error_at(err, rc, path, 0, "%s", msg);
	} else {
		trail_digest_str(s->centre, N * sizeof *s->centre, s->c.centre_digest);
		s->c.centre = s->centre;
	}
	json_decref(events);
	return rc;
}

static int add_record(void *ctx, const json_t *rec)
{
	return json_array_append((json_t *)ctx, (json_t *)rec) ? TRAIL_ENOMEM : TRAIL_OK;
}

/* sha256 of DIR/NAME, the digest lora-serve and training.json give weights. */
static int file_digest(const char *dir, const char *name, char out[72], trail_error *err)
{
	char *p = trail_path(dir, name);
	trail_map mp;
	int rc;
	if (!p)
		return oom(err);
	if (!(rc = trail_map_file(p, &mp, err))) {
		trail_digest_str(mp.data, mp.len, out);
		trail_unmap(&mp);
	}
	trail_free(p);
	return rc;
}

/* The training records: an NDJSON file or a datanet snapshot. */
static int load_records(const trail_attr_opts *o, trail_store **store, json_t *recs, trail_error *err)
{
	int rc;
	if (o->data) {
		void *buf;
		size_t len;
		if ((rc = trail_read_file(o->data, (size_t)1 << 34, &buf, &len, err)))
			return rc;
		rc = trail_source_records(buf, len, o->data, 0, recs, err);
		trail_free(buf);
		return rc;
	}
	if (!o->datanet)
		return trail_error_set(err, TRAIL_EUSAGE, "the training records are needed: --data FILE or --datanet NAME@SIZE");
	char *name = NULL;
	uint64_t size = 0;
	if ((rc = trail_datanet_spec(o->datanet, &name, &size, err)) || (rc = trail_store_open(o->home, store, err))) {
		trail_free(name);
		return rc;
	}
	if (!size) {
		trail_ledger *l;
		if (!(rc = trail_ledger_open(*store, 0, &l, err))) {
			size = trail_ledger_size(l);
			trail_ledger_free(l);
		}
	}
	if (!rc)
		rc = trail_datanet_snapshot(*store, name, size, add_record, recs, err);
	trail_free(name);
	return rc;
}

static char *default_index(const trail_attr_opts *o)
{
	return trail_path(o->adapter ? o->adapter : o->model, "attribution.idx");
}

/* Model, adapter, tokenizer and the digests that identify them. */
static int load_model(const trail_attr_opts *o, trail_model **m, trail_tokenizer **tk, trail_attr_ident *id,
		      trail_error *err)
{
	int rc;
	memset(id, 0, sizeof *id);
	if (!o->model)
		return trail_error_set(err, TRAIL_EUSAGE, "--model DIR is required");
	if ((rc = trail_model_load(o->model, m, err)) || (rc = trail_base_digest(o->model, id->model, err)))
		return rc;
	/* a base without a tokenizer (a GGUF file without one) of 257 tokens is a byte model, as lora-serve takes it */
	if ((rc = trail_tokenizer_load(o->model, tk, err)) == TRAIL_ENOINPUT && trail_model_config(*m)->vocab_size == 257)
		rc = trail_tokenizer_bytes(tk) ? trail_error_set(err, TRAIL_ENOMEM, "out of memory") : TRAIL_OK;
	if (rc)
		return rc;
	if (o->adapter && ((rc = trail_model_load_adapter(*m, o->adapter, err)) ||
			   (rc = file_digest(o->adapter, "adapter_model.safetensors", id->adapter, err))))
		return rc;
	return TRAIL_OK;
}

int trail_attr_session_open(const trail_attr_opts *o, trail_attr_session **out, trail_error *err)
{
	trail_attr_session *s = trail_calloc(1, sizeof *s);
	trail_attr_ident id;
	int rc;
	*out = NULL;
	if (!s || !(s->recs = json_array())) {
		trail_free(s);
		return oom(err);
	}
	s->index_path = o->index ? trail_strdup(o->index) : default_index(o);
	if (!s->index_path) {
		rc = oom(err);
		goto fail;
	}
	if ((rc = load_model(o, &s->m, &s->tk, &id, err)) || (rc = trail_attr_index_open(s->index_path, &s->x, err)))
		goto fail;
	const trail_attr_info *in = trail_attr_index_info(s->x);
	if (strcmp(in->id.model, id.model)) {
		rc = trail_error_at(err, TRAIL_EDATA, s->index_path, 0, "the index is for base model %s, not %s (%s)",
				    in->id.model, id.model, o->model);
		goto fail;
	}
	if (strcmp(in->id.adapter, id.adapter)) {
		rc = trail_error_at(err, TRAIL_EDATA, s->index_path, 0, "the index is for adapter %s, not %s",
				    in->id.adapter[0] ? in->id.adapter : "(none)", id.adapter[0] ? id.adapter : "(none)");
		goto fail;
	}
	if ((rc = trail_attr_index_proj(s->x, s->m, &s->p, err)) || (rc = load_records(o, &s->store, s->recs, err)) ||
	    (rc = trail_dataset_from_records(s->recs, s->tk, &s->d, err)))
		goto fail;
	if (strcmp(s->d->root, in->id.root) || s->d->n != in->nrecords) {
		rc = trail_error_set(err, TRAIL_EDATA, "the training records (%zu, root %s) are not the index's (%llu, root %s)",
				     s->d->n, s->d->root, (unsigned long long)in->nrecords, in->id.root);
		goto fail;
	}
	/* the span index beside the index, else built now in a temporary file */
	char *spp = trail_malloc(strlen(s->index_path) + 6);
	if (!spp) {
		rc = oom(err);
		goto fail;
	}
	sprintf(spp, "%s.span", s->index_path);
	uint8_t root[32];
	size_t rl;
	trail_unbase64(s->d->root, strlen(s->d->root), root, 32, &rl);
	if (access(spp, F_OK) == 0) {
		if (!(rc = trail_span_open(spp, &s->sp, err)) && memcmp(trail_span_root(s->sp), root, 32))
			rc = trail_error_at(err, TRAIL_EDATA, spp, 0, "the span index is for another training set");
	} else {
		char tmp[] = "/tmp/trail-span.XXXXXX";
		const char *td = getenv("TMPDIR");
		char *path = trail_path(td && *td ? td : "/tmp", "trail-span.XXXXXX");
		int fd = path ? mkstemp(path) : -1;
		(void)tmp;
		if (fd < 0)
			rc = path ? trail_error_errno(err, TRAIL_EIO, errno, "%s", path) : oom(err);
		else {
			close(fd);
			if (!(rc = trail_span_build((const int32_t *const *)s->d->tok, s->d->len, s->d->n,
						    (uint32_t)trail_model_config(s->m)->vocab_size, root, path, err)))
				rc = trail_span_open(path, &s->sp, err);
			unlink(path);
		}
		trail_free(path);
	}
	trail_free(spp);
	if (rc)
		goto fail;
	s->prove = o->prove;
	if (o->prove && !s->store) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "--prove needs a datanet snapshot in a store (--datanet, --home)");
		goto fail;
	}
	s->c = (trail_attr_ctx){.model = s->m, .tk = s->tk, .index = s->x, .proj = s->p, .data = s->d, .records = s->recs,
				.spans = s->sp, .index_name = s->index_path, .method = o->method, .top = o->top,
				.min_span = o->min_span, .max_count = o->max_count, .near = o->near > 0 ? o->near : 0.8,
				.confidence = 1, .normalize = o->normalize};
	if (o->exclude && (rc = load_exclude(s, o->exclude, err)))
		goto fail;
	if (o->centre && (rc = load_centre(s, o->centre, err)))
		goto fail;
	if (!o->shards && (rc = trail_attr_noise_floor(&s->c, &s->c.floor, err)))
		goto fail;
	*out = s;
	return TRAIL_OK;
fail:
	trail_attr_session_free(s);
	return rc;
}

void trail_attr_session_free(trail_attr_session *s)
{
	if (!s)
		return;
	trail_model_free(s->m);
	trail_tokenizer_free(s->tk);
	trail_attr_index_free(s->x);
	trail_attr_proj_free(s->p);
	trail_dataset_free(s->d);
	json_decref(s->recs);
	trail_span_free(s->sp);
	trail_store_free(s->store);
	trail_free(s->index_path);
	trail_free(s->skip);
	trail_free(s->centre);
	trail_free(s);
}

const trail_attr_ctx *trail_attr_session_ctx(const trail_attr_session *s)
{
	return &s->c;
}

/* ---- proofs ---------------------------------------------------------------------------- */

static size_t rec_index(const trail_attr_session *s, const char *id, const char *who)
{
	for (size_t i = 0; i < s->d->n; i++)
		if (!strcmp(s->d->id[i], id) && (!who || (s->d->contributor[i] && !strcmp(s->d->contributor[i], who))))
			return i;
	return (size_t)-1;
}

/*
 * record -> bundle (inclusion of the record id in the bundle's record
 * root, in the transparency-dev test-case format) -> the signed
 * contribution entry -> its tlog-proof receipt against a signed checkpoint.
 */
static int prove_one(trail_attr_session *s, trail_ledger *l, size_t i, json_t **out, trail_error *err)
{
	json_t *r = json_array_get(s->recs, i);
	const char *bundle = json_string_value(json_object_get(r, "bundle"));
	json_t *ej = json_object_get(r, "entry");
	trail_bundle *b = NULL;
	json_t *entry = NULL;
	char bd[72], *receipt = NULL;
	int rc;
	if (!bundle || !json_is_integer(ej))
		return trail_error_set(err, TRAIL_EDATA, "record %s has no bundle or ledger entry", s->d->id[i]);
	uint64_t e = (uint64_t)json_integer_value(ej);
	if ((rc = trail_datanet_load_bundle(s->store, bundle, &b, bd, err)) ||
	    (rc = trail_ledger_get_json(l, e, &entry, err)) || (rc = trail_ledger_receipt(l, e, &receipt, err)))
		goto out;
	size_t n = json_array_size(b->ids), pos = n;
	trail_hash *leaves = trail_malloc((n ? n : 1) * sizeof *leaves);
	if (!leaves) {
		rc = oom(err);
		goto out;
	}
	for (size_t k = 0; k < n; k++) {
		uint8_t dg[32];
		const char *idk = json_string_value(json_array_get(b->ids, k));
		trail_digest_parse(idk, dg);
		trail_merkle_leaf(dg, 32, leaves[k]);
		if (pos == n && !strcmp(idk, s->d->id[i]))
			pos = k;
	}
	trail_merkle_mem *t = pos < n ? trail_merkle_mem_new(leaves, n) : NULL;
	trail_hash proof[TRAIL_MERKLE_MAXPROOF], root;
	size_t np = 0;
	if (pos == n)
		rc = trail_error_set(err, TRAIL_EDATA, "record %s is not in bundle %s", s->d->id[i], bundle);
	else if (!t)
		rc = oom(err);
	else if (!(rc = trail_merkle_prove_inclusion(trail_merkle_mem_get, t, pos, n, proof, &np, err))) {
		trail_merkle_root_of((const trail_hash *)leaves, n, root);
		char b64[64];
		json_t *pa = json_array();
		for (size_t k = 0; k < np; k++) {
			trail_base64(proof[k], 32, b64);
			json_array_append_new(pa, json_string(b64));
		}
		char rb[64], lb[64];
		trail_base64(root, 32, rb);
		trail_base64(leaves[pos], 32, lb);
		*out = json_pack("{s:s, s:s?, s:s, s:I, s:{s:I, s:I, s:s, s:s, s:o}, s:O, s:s}", "record", s->d->id[i],
				 "contributor", s->d->contributor[i], "bundle", bundle, "entry", (json_int_t)e, "record_proof",
				 "leafIdx", (json_int_t)pos, "treeSize", (json_int_t)n, "root", rb, "leafHash", lb, "proof",
				 pa, "contribution", entry, "receipt", receipt);
		if (!*out)
			rc = oom(err);
	}
	trail_merkle_mem_free(t);
	trail_free(leaves);
out:
	trail_bundle_free(b);
	json_decref(entry);
	trail_free(receipt);
	return rc;
}

static int add_proofs(trail_attr_session *s, json_t *rec, trail_error *err)
{
	trail_ledger *l;
	int rc = trail_ledger_open(s->store, 0, &l, err);
	if (rc)
		return rc;
	json_t *proofs = json_array(), *t;
	size_t k;
	json_array_foreach(json_object_get(rec, "top"), k, t) {
		size_t i = rec_index(s, json_string_value(json_object_get(t, "record")),
				     json_string_value(json_object_get(t, "contributor")));
		json_t *p = NULL;
		if (i == (size_t)-1)
			continue;
		if ((rc = prove_one(s, l, i, &p, err)))
			break;
		json_array_append_new(proofs, p);
	}
	trail_ledger_free(l);
	if (rc)
		json_decref(proofs);
	else
		json_object_set_new(rec, "proofs", proofs);
	return rc;
}

/*
 * The precision of the products the record's gradients took, and oneDNN's
 * instruction set, in its params: the bits depend on them.
 */
static int mark_precision(json_t *rec, trail_error *err)
{
	json_t *p = json_object_get(rec, "params");
	if (!json_is_object(p) ||
	    json_object_set_new(p, "precision", json_string(trail_precision_name(trail_compute_precision()))) ||
	    json_object_set_new(p, "isa", json_string(trail_compute_isa())))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	return TRAIL_OK;
}

int trail_attr_session_event(trail_attr_session *s, const json_t *event, json_t **out, trail_error *err)
{
	int rc = trail_attr_event(&s->c, event, out, err);
	if (!rc && (rc = mark_precision(*out, err))) {
		json_decref(*out);
		*out = NULL;
	}
	if (!rc && s->prove && (rc = add_proofs(s, *out, err))) {
		json_decref(*out);
		*out = NULL;
	}
	return rc;
}

void trail_attr_session_set_floor(trail_attr_session *s, float floor)
{
	s->c.floor = floor;
}

int trail_attr_session_from_scores(trail_attr_session *s, const json_t *event, const float *scores, json_t **out,
				   trail_error *err)
{
	int rc = trail_attr_event_from_scores(&s->c, event, scores, out, err);
	if (!rc && (rc = mark_precision(*out, err))) {
		json_decref(*out);
		*out = NULL;
	}
	if (!rc && s->prove && (rc = add_proofs(s, *out, err))) {
		json_decref(*out);
		*out = NULL;
	}
	return rc;
}

/* Each proof: the record's inclusion in its bundle, the entry's leaf in the receipt, the receipt itself. */
static int check_proofs(trail_attr_session *s, const json_t *proofs, trail_error *err)
{
	size_t k;
	json_t *p;
	const trail_verifier *v = s->store ? trail_store_operator_vkey(s->store) : NULL;
	json_array_foreach(proofs, k, p) {
		const char *rc_ = json_string_value(json_object_get(p, "receipt"));
		json_t *entry = json_object_get(p, "contribution");
		uint64_t idx;
		trail_hash leaf, mine;
		char *bytes = NULL;
		size_t bl;
		int rc;
		if (!rc_ || !entry || !v)
			return trail_error_set(err, TRAIL_EVERIFY, "proof %zu: no receipt, entry or log key", k);
		if ((rc = trail_merkle_check_json(json_object_get(p, "record_proof"), err)))
			return rc == TRAIL_EDATA ? trail_error_set(err, TRAIL_EVERIFY, "proof %zu: %s", k, err->msg) : rc;
		if ((rc = trail_receipt_verify(rc_, strlen(rc_), &v, 1, trail_store_origin(s->store), &idx, leaf, err)))
			return rc;
		if ((rc = trail_jcs(entry, &bytes, &bl, err)))
			return rc;
		trail_merkle_leaf(bytes, bl, mine);
		trail_free(bytes);
		if (memcmp(mine, leaf, 32) || idx != (uint64_t)json_integer_value(json_object_get(p, "entry")))
			return trail_error_set(err, TRAIL_EVERIFY, "proof %zu: the receipt is for another entry", k);
		if ((rc = trail_json_verify(entry, err)))
			return rc;
	}
	return TRAIL_OK;
}

/*
 * At the session's precision, which must be the record's (none recorded:
 * fp32, as before the field); the precision and instruction set are set
 * aside for the comparison.
 */
int trail_attr_session_verify(trail_attr_session *s, const json_t *record, trail_error *err)
{
	const char *pn = json_string_value(json_object_get(json_object_get(record, "params"), "precision"));
	const char *now = trail_precision_name(trail_compute_precision());
	if (strcmp(pn ? pn : "fp32", now))
		return trail_error_set(err, TRAIL_EVERIFY, "event %s: recorded at %s precision, recomputed at %s (--precision)",
				       json_string_value(json_object_get(record, "event")) ? json_string_value(json_object_get(record, "event")) : "?",
				       pn ? pn : "fp32", now);
	json_t *bare = json_deep_copy(record), *bp = json_object_get(bare, "params");
	if (!bare)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	json_object_del(bp, "precision");
	json_object_del(bp, "isa");
	int rc = trail_attr_verify(&s->c, bare, err);
	json_decref(bare);
	json_t *p = json_object_get(record, "proofs");
	if (!rc && p)
		rc = check_proofs(s, p, err);
	return rc;
}

/* ---- record ranges (shards) ------------------------------------------------------------ */

int trail_attr_range_parse(const char *s, int shard, trail_attr_range *r, trail_error *err)
{
	char *end;
	memset(r, 0, sizeof *r);
	errno = 0;
	if (shard) {
		long i = strtol(s, &end, 10), n = *end == '/' ? strtol(end + 1, &end, 10) : 0;
		if (errno || *end || n < 1 || n > 1 << 20 || i < 0 || i >= n)
			return trail_error_set(err, TRAIL_EUSAGE, "--shard: give I/N with 0 <= I < N ('%s')", s);
		r->i = (int)i, r->n = (int)n;
		return TRAIL_OK;
	}
	unsigned long long lo = strtoull(s, &end, 10), hi = 0;
	int ok = end != s && *end == ':' && s[0] != '-';
	const char *h = ok ? end + 1 : NULL;
	if (ok && *h) {
		hi = strtoull(h, &end, 10);
		ok = end != h && !*end && *h != '-' && hi > lo;
	}
	if (!ok || errno)
		return trail_error_set(err, TRAIL_EUSAGE, "--records: give LO:HI with LO < HI, or LO: ('%s')", s);
	r->lo = lo, r->hi = hi;
	return TRAIL_OK;
}

int trail_attr_range_resolve(const trail_attr_range *r, uint64_t N, size_t *lo, size_t *hi, trail_error *err)
{
	*lo = 0, *hi = (size_t)N;
	if (!r)
		return TRAIL_OK;
	if (r->n) {
		*lo = (size_t)(N * (uint64_t)r->i / (uint64_t)r->n);
		*hi = (size_t)(N * (uint64_t)(r->i + 1) / (uint64_t)r->n);
	} else {
		*lo = (size_t)r->lo;
		*hi = r->hi ? (size_t)r->hi : (size_t)N;
	}
	if (*lo >= *hi || *hi > N)
		return trail_error_set(err, TRAIL_EUSAGE, "records %zu:%zu: not a range of the %llu records", *lo, *hi,
				       (unsigned long long)N);
	return TRAIL_OK;
}

/* ---- building for an existing model ------------------------------------------------------ */

/* What training.json says of the rows: seq, and whether long records were split. */
static int training_seq(const char *dir, int *seq, int *split)
{
	char *p = trail_path(dir, "training.json");
	void *buf = NULL;
	size_t len;
	json_t *j = NULL;
	if (p && !trail_read_file(p, 1 << 30, &buf, &len, NULL) && !trail_json_parse(buf, len, p, &j, NULL)) {
		json_t *v = json_object_get(json_object_get(j, "hyperparameters"), "seq");
		if (json_is_integer(v) && !*seq)
			*seq = (int)json_integer_value(v);
		const char *mode = json_string_value(json_object_get(json_object_get(j, "long"), "mode"));
		if (mode && !strcmp(mode, "split"))
			*split = 1;
	}
	json_decref(j);
	trail_free(buf), trail_free(p);
	return TRAIL_OK;
}

int trail_attr_training_precision(const char *dir)
{
	char *p = trail_path(dir, "training.json");
	void *buf = NULL;
	size_t len;
	json_t *j = NULL;
	int prec = -1;
	if (p && !trail_read_file(p, 1 << 30, &buf, &len, NULL) && !trail_json_parse(buf, len, p, &j, NULL)) {
		const char *v = json_string_value(json_object_get(json_object_get(j, "hyperparameters"), "precision"));
		if (v && trail_precision_parse(v, &prec, NULL))
			prec = -1;
	}
	json_decref(j);
	trail_free(buf), trail_free(p);
	return prec;
}

/* The span index of dataset d, written to PATH.span beside the index at path. */
static int write_span_index(const char *path, const trail_dataset *d, trail_model *m, trail_error *err)
{
	uint8_t root[32];
	size_t rl;
	char *spp = trail_malloc(strlen(path) + 6);
	if (!spp)
		return oom(err);
	trail_unbase64(d->root, strlen(d->root), root, 32, &rl);
	sprintf(spp, "%s.span", path);
	int rc = trail_span_build((const int32_t *const *)d->tok, d->len, d->n,
				  (uint32_t)trail_model_config(m)->vocab_size, root, spp, err);
	trail_free(spp);
	return rc;
}

int trail_attr_build_index(const trail_attr_opts *o, const trail_attr_params *pp, int batch,
			   const char *const *ckpts, const double *ckpt_weights, size_t nckpts, trail_error *err)
{
	return trail_attr_build_shard(o, pp, batch, ckpts, ckpt_weights, nckpts, NULL, err);
}

/*
 * The build for model m (with its adapter, if any) and tokenizer tk as
 * loaded from o, identified by id: the records, the passes, the curvature
 * and the span index.
 */
static int build_with(const trail_attr_opts *o, const trail_attr_params *pp, int batch, const char *const *ckpts,
		      const double *ckpt_weights, size_t nckpts, const trail_attr_range *r, trail_model *m,
		      const trail_tokenizer *tk, trail_attr_ident id, trail_error *err)
{
	trail_model *cm = NULL;
	trail_dataset *d = NULL;
	trail_store *store = NULL;
	trail_attr_builder *b = NULL;
	json_t *recs = json_array();
	char *path = o->index ? trail_strdup(o->index) : default_index(o);
	int rc;
	if (!recs || !path) {
		rc = oom(err);
		goto out;
	}
	size_t lo = 0, hi = 0;
	if ((rc = load_records(o, &store, recs, err)) || (rc = trail_dataset_from_records(recs, tk, &d, err)))
		goto out;
	if ((rc = trail_attr_range_resolve(r, d->n, &lo, &hi, err)))
		goto out;
	memcpy(id.root, d->root, sizeof id.root - 1); /* base64 of 32 bytes: 44 characters */
	id.root[sizeof id.root - 1] = 0;
	trail_attr_params p = *pp;
	training_seq(o->adapter ? o->adapter : o->model, &p.seq, &p.split);
	if (!p.seq)
		p.seq = trail_model_config(m)->n_positions;
	if (p.split && (rc = trail_dataset_split(d, p.seq, err)))
		goto out;
	if (!p.targets && trail_model_has_lora(m))
		p.targets = trail_model_lora(m)->targets;
	if ((rc = r ? trail_attr_builder_new_shard(path, m, &id, &p, lo, hi, d->n, (int)nckpts + 1, &b, err)
		    : trail_attr_builder_new(path, m, &id, &p, d->n, (int)nckpts + 1, &b, err)))
		goto out;
	for (size_t c = 0; c < nckpts; c++) {
		/* a checkpoint: the same base with the checkpoint's adapter, or the checkpoint's model */
		if ((rc = o->adapter ? trail_model_load(o->model, &cm, err) : trail_model_load(ckpts[c], &cm, err)) ||
		    (o->adapter && (rc = trail_model_load_adapter(cm, ckpts[c], err))) ||
		    (rc = trail_attr_builder_pass(b, (int)c, cm, d, batch, ckpt_weights ? ckpt_weights[c] : 1.0, err)))
			goto out;
		trail_model_free(cm);
		cm = NULL;
	}
	if ((rc = trail_attr_builder_pass(b, (int)nckpts, m, d, batch, ckpt_weights && nckpts ? ckpt_weights[nckpts - 1] : 1.0, err)))
		goto out;
	rc = trail_attr_builder_finish(b, d, err);
	b = NULL;
	if (rc || r) /* a shard's span index is the merge's */
		goto out;
	rc = write_span_index(path, d, m, err);
out:
	trail_attr_builder_free(b);
	trail_model_free(cm);
	trail_dataset_free(d);
	trail_store_free(store);
	json_decref(recs);
	trail_free(path);
	return rc;
}

int trail_attr_build_shard(const trail_attr_opts *o, const trail_attr_params *pp, int batch,
			   const char *const *ckpts, const double *ckpt_weights, size_t nckpts,
			   const trail_attr_range *r, trail_error *err)
{
	trail_model *m = NULL;
	trail_tokenizer *tk = NULL;
	trail_attr_ident id;
	if (r && !o->index)
		return trail_error_set(err, TRAIL_EUSAGE, "a shard of the index needs its own file: give --index FILE");
	int rc = load_model(o, &m, &tk, &id, err);
	if (!rc)
		rc = build_with(o, pp, batch, ckpts, ckpt_weights, nckpts, r, m, tk, id, err);
	trail_model_free(m);
	trail_tokenizer_free(tk);
	return rc;
}

int trail_attr_build_index_for(const trail_attr_opts *o, const trail_attr_params *p, int batch, trail_model *m,
			       const trail_tokenizer *tk, const char *model_digest, trail_error *err)
{
	trail_attr_ident id;
	int rc;
	memset(&id, 0, sizeof id);
	if (!o->model)
		return trail_error_set(err, TRAIL_EUSAGE, "--model DIR is required");
	if (model_digest)
		snprintf(id.model, sizeof id.model, "%s", model_digest);
	else if ((rc = trail_base_digest(o->model, id.model, err)))
		return rc;
	if (o->adapter && (rc = file_digest(o->adapter, "adapter_model.safetensors", id.adapter, err)))
		return rc;
	return build_with(o, p, batch, NULL, NULL, 0, NULL, m, tk, id, err);
}

int trail_attr_merge_index(const trail_attr_opts *o, const char *const *shards, size_t n, trail_error *err)
{
	trail_model *m = NULL;
	trail_tokenizer *tk = NULL;
	trail_dataset *d = NULL;
	trail_store *store = NULL;
	json_t *recs = json_array();
	trail_attr_ident id;
	char *path = o->index ? trail_strdup(o->index) : default_index(o);
	int rc;
	if (!recs || !path) {
		rc = oom(err);
		goto out;
	}
	if ((rc = load_model(o, &m, &tk, &id, err)) || (rc = load_records(o, &store, recs, err)) ||
	    (rc = trail_dataset_from_records(recs, tk, &d, err)))
		goto out;
	memcpy(id.root, d->root, sizeof id.root - 1);
	id.root[sizeof id.root - 1] = 0;
	if ((rc = trail_attr_index_merge(shards, n, &id, path, err)))
		goto out;
	rc = write_span_index(path, d, m, err);
out:
	trail_model_free(m);
	trail_tokenizer_free(tk);
	trail_dataset_free(d);
	trail_store_free(store);
	json_decref(recs);
	trail_free(path);
	return rc;
}

/* ---- runs: events routed to their adapter's session ------------------------------------- */

typedef struct route {
	char *dir;        /* adapter directory, NULL: the base model alone */
	char *name;       /* its name under the adapters directory, or NULL */
	char digest[72];  /* of adapter_model.safetensors, "" for the base */
	char *records;    /* from training.json: a data file or NAME@SIZE, or NULL */
	int datanet;
} route;

typedef struct routes {
	route *r;
	size_t n, cap;
} routes;

static void routes_release(routes *rs)
{
	for (size_t i = 0; i < rs->n; i++)
		trail_free(rs->r[i].dir), trail_free(rs->r[i].name), trail_free(rs->r[i].records);
	trail_free(rs->r);
}

static int routes_add(routes *rs, const char *dir, const char *name, trail_error *err)
{
	if (rs->n == rs->cap) {
		size_t nc = rs->cap ? rs->cap * 2 : 8;
		route *r = trail_realloc(rs->r, nc * sizeof *r);
		if (!r)
			return oom(err);
		rs->r = r, rs->cap = nc;
	}
	route *r = &rs->r[rs->n];
	memset(r, 0, sizeof *r);
	if ((dir && !(r->dir = trail_strdup(dir))) || (name && !(r->name = trail_strdup(name))))
		return trail_free(r->dir), oom(err);
	rs->n++;
	return dir ? file_digest(dir, "adapter_model.safetensors", r->digest, err) : TRAIL_OK;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every directory under `adapters` with adapter_model.safetensors, by name. */
static int scan_adapters(routes *rs, const char *adapters, trail_error *err)
{
	DIR *dp = opendir(adapters);
	struct dirent *de;
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = TRAIL_OK;
	if (!dp)
		return trail_error_errno(err, errno == ENOENT ? TRAIL_ENOINPUT : TRAIL_EIO, errno, "%s", adapters);
	while (!rc && (de = readdir(dp))) {
		if (de->d_name[0] == '.')
			continue;
		char *d = trail_path(adapters, de->d_name), *w = d ? trail_path(d, "adapter_model.safetensors") : NULL;
		if (!w)
			rc = oom(err);
		else if (access(w, F_OK) == 0) {
			if (n == cap) {
				char **nn = trail_realloc(names, (cap = cap ? cap * 2 : 16) * sizeof *nn);
				if (!nn)
					rc = oom(err);
				else
					names = nn;
			}
			if (!rc && !(names[n++] = trail_strdup(de->d_name)))
				rc = oom(err);
		}
		trail_free(d), trail_free(w);
	}
	closedir(dp);
	if (!rc)
		qsort(names, n, sizeof *names, cmp_str);
	for (size_t i = 0; i < n && !rc; i++) {
		char *d = names[i] ? trail_path(adapters, names[i]) : NULL;
		rc = d ? routes_add(rs, d, names[i], err) : oom(err);
		trail_free(d);
	}
	for (size_t i = 0; i < n; i++)
		trail_free(names[i]);
	trail_free(names);
	return rc;
}

/* The training records a model or adapter directory's training.json names. */
static void training_records(route *r, const char *dir)
{
	char *p = trail_path(dir, "training.json");
	void *buf = NULL;
	size_t len;
	json_t *j = NULL;
	if (p && !trail_read_file(p, (size_t)1 << 30, &buf, &len, NULL) && !trail_json_parse(buf, len, p, &j, NULL)) {
		json_t *dn = json_object_get(j, "datanet");
		const char *name = json_string_value(json_object_get(dn, "name"));
		const char *file = json_string_value(json_object_get(json_object_get(j, "data"), "file"));
		char spec[512];
		if (name && json_is_integer(json_object_get(dn, "tree_size"))) {
			snprintf(spec, sizeof spec, "%s@%lld", name, (long long)json_integer_value(json_object_get(dn, "tree_size")));
			r->records = trail_strdup(spec);
			r->datanet = 1;
		} else if (file) {
			r->records = trail_strdup(file);
		}
	}
	json_decref(j);
	trail_free(buf), trail_free(p);
}

static size_t find_route(const routes *rs, const char *digest, const char *name, int base)
{
	for (size_t i = 0; i < rs->n; i++)
		if (base ? !rs->r[i].dir
			 : digest ? rs->r[i].dir && !strcmp(rs->r[i].digest, digest)
				  : rs->r[i].name && !strcmp(rs->r[i].name, name))
			return i;
	return (size_t)-1;
}

/* The route of one event: its adapter's digest, else its name, else an explicit none, else route 0. */
static int route_of(const routes *rs, const json_t *v, const char *adapters, size_t *out, trail_error *err)
{
	const json_t *e = json_object_get(v, "event"), *ev = json_is_object(e) ? e : v;
	json_t *ad = json_object_get(ev, "adapter_digest"), *an = json_object_get(ev, "adapter");
	const char *dg = json_string_value(ad), *nm = json_string_value(an);
	if (!json_is_object(ev))
		return trail_error_set(err, TRAIL_EDATA, "not an inference event (a JSON object)");
	if (!(dg && !strncmp(dg, "sha256:", 7)) && nm && !strncmp(nm, "sha256:", 7))
		dg = nm, nm = NULL;
	if (dg && strncmp(dg, "sha256:", 7))
		dg = NULL;
	if (dg)
		*out = find_route(rs, dg, NULL, 0);
	else if (nm && adapters)
		*out = find_route(rs, NULL, nm, 0);
	else if (json_is_null(ad) || json_is_null(an))
		*out = find_route(rs, NULL, NULL, 1);
	else
		*out = 0;
	if (*out != (size_t)-1)
		return TRAIL_OK;
	if (dg || (nm && adapters))
		return trail_error_set(err, TRAIL_EDATA, "event: adapter %s is not %s%s", dg ? dg : nm,
				       adapters ? "among the adapters in " : "the one given (--adapter; --adapters DIR routes "
									     "events to theirs)",
				       adapters ? adapters : "");
	return trail_error_set(err, TRAIL_EDATA, "event: no adapter, and no route to the base model");
}

int trail_attr_run(const trail_attr_opts *o, const char *adapters, const json_t *events, json_t **out,
		   size_t *bad, trail_error *err)
{
	routes rs = {0};
	size_t n = json_array_size(events), *to = trail_malloc((n ? n : 1) * sizeof *to);
	json_t *recs = json_array();
	trail_attr_session *s = NULL;
	int rc = TRAIL_OK;
	*out = NULL;
	*bad = (size_t)-1;
	if (!to || !recs) {
		rc = oom(err);
		goto out;
	}
	if ((rc = routes_add(&rs, o->adapter, NULL, err)) || (adapters && (rc = scan_adapters(&rs, adapters, err))) ||
	    (o->adapter && (rc = routes_add(&rs, NULL, NULL, err))))
		goto out;
	for (size_t i = 0; i < n && !rc; i++)
		if ((rc = route_of(&rs, json_array_get(events, i), adapters, &to[i], err)))
			*bad = i;
	for (size_t i = 0; i < n && !rc; i++)
		rc = json_array_append(recs, json_null()) ? oom(err) : TRAIL_OK;
	/* one session at a time: the routes in order, each with its events in theirs */
	for (size_t r = 0; r < rs.n && !rc; r++) {
		size_t first = 0;
		while (first < n && to[first] != r)
			first++;
		if (first == n)
			continue;
		trail_attr_opts so = *o;
		route *ro = &rs.r[r];
		so.adapter = ro->dir;
		so.index = r == 0 ? o->index : NULL;
		if (!o->data && !o->datanet) {
			training_records(ro, ro->dir ? ro->dir : o->model);
			if (!ro->records) {
				*bad = first;
				rc = trail_error_set(err, TRAIL_EUSAGE, "%s: training.json names no training records; give --data "
						     "or --datanet", ro->dir ? ro->dir : o->model);
				break;
			}
			so.data = ro->datanet ? NULL : ro->records;
			so.datanet = ro->datanet ? ro->records : NULL;
		}
		if ((rc = trail_attr_session_open(&so, &s, err))) {
			*bad = first;
			break;
		}
		for (size_t i = first; i < n && !rc; i++) {
			json_t *rec = NULL;
			if (to[i] != r)
				continue;
			if ((rc = trail_attr_session_event(s, json_array_get(events, i), &rec, err)))
				*bad = i;
			else
				json_array_set_new(recs, i, rec);
		}
		trail_attr_session_free(s);
		s = NULL;
	}
	if (!rc) {
		*out = recs;
		recs = NULL;
	}
out:
	trail_attr_session_free(s);
	routes_release(&rs);
	trail_free(to);
	json_decref(recs);
	return rc;
}

int trail_attr_record_batch(const char *home, const char *epoch, const json_t *records, const void *bytes,
			    size_t len, uint64_t *entry, trail_error *err)
{
	trail_store *st = NULL;
	trail_ledger *l = NULL;
	json_t *idx = json_array(), *e = NULL, *r;
	char dg[72];
	size_t i;
	int rc;
	if (!idx)
		return oom(err);
	json_array_foreach(records, i, r) {
		json_t *x = json_object_get(r, "index"), *y;
		size_t k;
		int seen = 0;
		json_array_foreach(idx, k, y) seen |= json_equal(x, y);
		if (x && !seen)
			json_array_append(idx, x);
	}
	/* sorted: the set of indexes, whatever the order of the events */
	for (size_t a = 1; a < json_array_size(idx); a++)
		for (size_t b = a; b > 0 && strcmp(json_string_value(json_array_get(idx, b - 1)),
						   json_string_value(json_array_get(idx, b))) > 0; b--) {
			json_t *t = json_incref(json_array_get(idx, b));
			json_array_set(idx, b, json_array_get(idx, b - 1));
			json_array_set_new(idx, b - 1, t);
		}
	if ((rc = trail_store_open(home, &st, err)) || (rc = trail_store_put(st, bytes, len, dg, err)))
		goto out;
	e = json_pack("{s:s, s:s?, s:I, s:s, s:O, s:O?}", "type", "attribution-batch", "epoch", epoch, "records",
		      (json_int_t)json_array_size(records), "records_object", dg, "indexes", idx, "method",
		      json_object_get(json_array_get(records, 0), "method"));
	if (!e) {
		rc = oom(err);
		goto out;
	}
	if (!(rc = trail_ledger_open(st, TRAIL_LEDGER_WRITE, &l, err)) && !(rc = trail_ledger_append(l, e, entry, err)))
		rc = trail_ledger_commit(l, err);
out:
	trail_ledger_free(l);
	trail_store_free(st);
	json_decref(e), json_decref(idx);
	return rc;
}
