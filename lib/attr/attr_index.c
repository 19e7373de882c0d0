/*
 * The attribution index: the builder (rows written into a mapped temporary
 * file, then the curvature statistics, the record table and the digest),
 * and opening an index with every size and the content digest checked.
 * The projections are attr_proj.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cblas.h>
#include <cpuid.h>
#include <immintrin.h>
#include <sodium.h>

#include "attr/attr.h"
#include "attr/attr_int.h"
#include "core/core.h"

/* ---- file layout ----------------------------------------------------------------- */

static size_t al64(size_t x)
{
	return (x + 63) & ~(size_t)63;
}

void trail_attr_layout(trail_attr_hdr *h, trail_attr_off *o)
{
	size_t N = h->nrecords, S = h->nsets, D = h->dim, L = h->nlayers;
	o->layers = 512;
	o->sets = al64(o->layers + L * 64);
	o->params = al64(o->sets + S * 16);
	o->scales = al64(o->params + S * h->nparams * 4);
	o->norms = al64(o->scales + S * N * 4);
	o->lambda = al64(o->norms + S * N * L * 4);
	o->chol = al64(o->lambda + 3 * L * 4);
	o->ekfac = al64(o->chol + (trail_attr_has_blocks(h) ? D * (D / L) * 4 : 0)); /* L blocks of (D/L)^2 */
	o->grads = al64(o->ekfac + L * trail_attr_ekfac_floats(h->k_in, h->k_out) * 4);
	o->records = al64(o->grads + S * N * D * 2);
	o->blob = o->records + N * 40;
	o->end = o->blob + h->blob;
}

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}
static uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}
static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static void hdr_write(uint8_t *b, const trail_attr_hdr *h)
{
	memset(b, 0, 480);
	memcpy(b, "TRLATTR\0", 8);
	put32(b + 8, TRAIL_ATTR_VERSION);
	put32(b + 12, 1);
	put64(b + 16, h->nrecords);
	put32(b + 24, (uint32_t)h->nlayers);
	put32(b + 28, (uint32_t)h->dim);
	put32(b + 32, (uint32_t)h->nsets);
	put32(b + 36, (uint32_t)h->k_in);
	put32(b + 40, (uint32_t)h->k_out);
	put32(b + 44, (uint32_t)h->targets);
	put64(b + 48, h->seed);
	memcpy(b + 56, &h->damping, 8);
	put64(b + 64, h->nparams);
	put64(b + 72, h->blob);
	put64(b + 80, h->filelen);
	put32(b + 88, (uint32_t)h->seq);
	memcpy(b + 96, h->id.model, 72);
	memcpy(b + 168, h->id.adapter, 72);
	memcpy(b + 240, h->id.root, 48);
	if (h->shard) { /* a shard: its range of the whole set (zero in a whole index) */
		put32(b + 92, 1);
		put64(b + 288, h->lo);
		put64(b + 296, h->lo + h->nrecords);
		put64(b + 304, h->total);
	}
}

static int hdr_read(const uint8_t *b, size_t len, trail_attr_hdr *h, const char *path, trail_error *err)
{
	if (len < 512 || memcmp(b, "TRLATTR\0", 8))
		return trail_error_at(err, TRAIL_EDATA, path, 0, "not an attribution index (bad magic)");
	if (get32(b + 8) != TRAIL_ATTR_VERSION)
		return trail_error_at(err, TRAIL_EDATA, path, 0,
				      "attribution index version %u; this build reads version %d: rebuild it with "
				      "attr-score --build-index", get32(b + 8), TRAIL_ATTR_VERSION);
	if (get32(b + 12) != 1)
		return trail_error_at(err, TRAIL_EDATA, path, 0, "unknown element type %u", get32(b + 12));
	memset(h, 0, sizeof *h);
	h->nrecords = get64(b + 16);
	h->nlayers = (int)get32(b + 24);
	h->dim = get32(b + 28);
	h->nsets = (int)get32(b + 32);
	h->k_in = (int)get32(b + 36);
	h->k_out = (int)get32(b + 40);
	h->targets = (int)get32(b + 44);
	h->seed = get64(b + 48);
	memcpy(&h->damping, b + 56, 8);
	h->nparams = get64(b + 64);
	h->blob = get64(b + 72);
	h->filelen = get64(b + 80);
	h->seq = (int)get32(b + 88);
	memcpy(h->id.model, b + 96, 72);
	memcpy(h->id.adapter, b + 168, 72);
	memcpy(h->id.root, b + 240, 48);
	h->id.model[71] = h->id.adapter[71] = h->id.root[47] = 0;
	h->shard = get32(b + 92) == 1;
	h->lo = get64(b + 288);
	h->total = get64(b + 304);
	if (get32(b + 92) > 1 || (h->shard ? h->lo + h->nrecords != get64(b + 296) || h->lo + h->nrecords > h->total
			  : h->lo || get64(b + 296) || h->total))
		return trail_error_at(err, TRAIL_EDATA, path, 0, "attribution index: a bad shard range");
	/* bound every size before any product of them is formed */
	if (!h->nrecords || h->nrecords > ((uint64_t)1 << 32) || h->nlayers < 1 || h->nlayers > 4096 ||
	    h->nsets < 1 || h->nsets > 1024 || h->k_in < 1 || h->k_in > 4096 || h->k_out < 1 || h->k_out > 4096 ||
	    h->dim != (size_t)h->nlayers * (size_t)h->k_in * (size_t)h->k_out || h->dim > TRAIL_ATTR_MAX_ROW ||
	    h->nparams > ((uint64_t)1 << 34) || h->blob > ((uint64_t)1 << 40) || h->filelen != len)
		return trail_error_at(err, TRAIL_EDATA, path, 0, "attribution index sizes do not add up "
				      "(truncated or altered: %zu bytes, the header says %llu)",
				      len, (unsigned long long)h->filelen);
	return TRAIL_OK;
}

static void content_digest(const uint8_t *b, size_t len, uint8_t out[32])
{
	crypto_hash_sha256_state st;
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, b, 480);
	crypto_hash_sha256_update(&st, b + 512, len - 512);
	crypto_hash_sha256_final(&st, out);
}

/* ---- the builder ------------------------------------------------------------------- */

struct trail_attr_builder {
	char *path, *tmp;
	int fd;
	uint8_t *map;
	size_t maplen;
	trail_attr_hdr h;
	trail_attr_off o;
	trail_attr_proj *proj;
	uint8_t *done; /* nsets x nrecords */
	float *rows;   /* batch scratch */
	size_t rowcap;
};

static int builder_make(const char *path, const trail_model *m, const trail_attr_ident *id,
			const trail_attr_params *p, size_t lo, size_t hi, size_t total, int nsets, int shard,
			trail_attr_builder **out, trail_error *err);

int trail_attr_builder_new(const char *path, const trail_model *m, const trail_attr_ident *id,
			   const trail_attr_params *p, size_t nrecords, int nsets,
			   trail_attr_builder **out, trail_error *err)
{
	return builder_make(path, m, id, p, 0, nrecords, nrecords, nsets, 0, out, err);
}

int trail_attr_builder_new_shard(const char *path, const trail_model *m, const trail_attr_ident *id,
				 const trail_attr_params *p, size_t lo, size_t hi, size_t total, int nsets,
				 trail_attr_builder **out, trail_error *err)
{
	return builder_make(path, m, id, p, lo, hi, total, nsets, 1, out, err);
}

static int builder_make(const char *path, const trail_model *m, const trail_attr_ident *id,
			const trail_attr_params *p, size_t lo, size_t hi, size_t total, int nsets, int shard,
			trail_attr_builder **out, trail_error *err)
{
	size_t nrecords = hi > lo ? hi - lo : 0;
	if (hi > total)
		return trail_error_set(err, TRAIL_EUSAGE, "records %zu:%zu of %zu are out of range", lo, hi, total);
	*out = NULL;
	if (!nrecords || nsets < 1 || nsets > 1024)
		return trail_error_set(err, TRAIL_EUSAGE, "an index needs records and 1 to 1024 gradient sets");
	trail_attr_builder *b = trail_calloc(1, sizeof *b);
	int rc;
	if (!b)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	b->fd = -1;
	size_t np = 0;
	trail_attr_hdr *h = &b->h;
	if (m) {
		if ((rc = trail_attr_proj_new(m, p, &b->proj, err)))
			goto fail;
		trail_model_params((trail_model *)m, &np);
		h->nlayers = b->proj->n;
		h->dim = b->proj->dim;
	} else { /* gradients from elsewhere: one block of k_out x k_in, rows added directly */
		if (p->k_in < 1 || p->k_out < 1 || (size_t)p->k_in * (size_t)p->k_out > TRAIL_ATTR_MAX_ROW) {
			rc = trail_error_set(err, TRAIL_EUSAGE, "dimensions %d x %d are out of range", p->k_in, p->k_out);
			goto fail;
		}
		h->nlayers = 1;
		h->dim = (size_t)p->k_in * (size_t)p->k_out;
	}
	h->nrecords = nrecords;
	h->shard = shard;
	h->lo = lo;
	h->total = total;
	h->nsets = nsets;
	h->k_in = m ? b->proj->k_in : p->k_in; /* the projection's: 0 x 0 asks for the automatic size */
	h->k_out = m ? b->proj->k_out : p->k_out;
	h->targets = p->targets;
	h->seed = p->seed;
	h->damping = p->damping > 0 ? p->damping : 0.1;
	h->nparams = np;
	h->seq = p->seq;
	h->id = *id;
	h->blob = 0; /* known at finish; the record table is the file's tail */
	trail_attr_layout(h, &b->o);
	b->path = trail_strdup(path);
	b->tmp = trail_malloc(strlen(path) + 16);
	b->done = trail_calloc((size_t)nsets * nrecords, 1);
	if (!b->path || !b->tmp || !b->done) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	sprintf(b->tmp, "%s.tmpXXXXXX", path);
	if ((b->fd = mkstemp(b->tmp)) < 0) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", path);
		b->tmp[0] = 0;
		goto fail;
	}
	b->maplen = b->o.records; /* the tail is appended at finish */
	if (ftruncate(b->fd, (off_t)b->maplen)) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->tmp);
		goto fail;
	}
	b->map = mmap(NULL, b->maplen, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
	if (b->map == MAP_FAILED) {
		b->map = NULL;
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->tmp);
		goto fail;
	}
	for (int l = 0; m && l < h->nlayers; l++) {
		uint8_t *e = b->map + b->o.layers + (size_t)l * 64;
		put32(e, (uint32_t)b->proj->L[l].in);
		put32(e + 4, (uint32_t)b->proj->L[l].out);
		put32(e + 8, (uint32_t)b->proj->L[l].index);
		memcpy(e + 16, b->proj->L[l].name, 40);
	}
	if (!m) {
		put32(b->map + b->o.layers, (uint32_t)p->k_in);
		put32(b->map + b->o.layers + 4, (uint32_t)p->k_out);
		put32(b->map + b->o.layers + 8, ~0u);
		memcpy(b->map + b->o.layers + 16, "external", 9);
	}
	*out = b;
	return TRAIL_OK;
fail:
	trail_attr_builder_free(b);
	return rc;
}

void trail_attr_builder_free(trail_attr_builder *b)
{
	if (!b)
		return;
	if (b->map)
		munmap(b->map, b->maplen);
	if (b->fd >= 0)
		close(b->fd);
	if (b->tmp && b->tmp[0])
		unlink(b->tmp);
	trail_attr_proj_free(b->proj);
	trail_free(b->path), trail_free(b->tmp), trail_free(b->done), trail_free(b->rows);
	trail_free(b);
}

int trail_attr_builder_set(trail_attr_builder *b, int set, trail_model *m, double weight, trail_error *err)
{
	size_t np = 0;
	const float *p = m ? trail_model_params(m, &np) : NULL;
	if (set < 0 || set >= b->h.nsets || np != b->h.nparams)
		return trail_error_set(err, TRAIL_EUSAGE, "gradient set %d: out of range or another model", set);
	memcpy(b->map + b->o.sets + (size_t)set * 16, &weight, 8);
	if (np)
		memcpy(b->map + b->o.params + (size_t)set * np * 4, p, np * 4);
	return TRAIL_OK;
}

int trail_attr_builder_add(trail_attr_builder *b, int set, size_t rec, const float *g, trail_error *err)
{
	const trail_attr_hdr *h = &b->h;
	if (set < 0 || set >= h->nsets || rec < h->lo || rec - h->lo >= h->nrecords)
		return trail_error_set(err, TRAIL_EUSAGE, "row %zu of set %d is out of range", rec, set);
	size_t D = h->dim, row = (size_t)set * h->nrecords + (rec - h->lo);
	float mx = 0;
	for (size_t i = 0; i < D; i++) {
		if (!isfinite(g[i]))
			return trail_error_set(err, TRAIL_EDATA, "record %zu: the gradient is not finite", rec);
		mx = fabsf(g[i]) > mx ? fabsf(g[i]) : mx;
	}
	/* rows are stored as g / scale with |g / scale| <= 1, where fp16 keeps 11 bits */
	float scale = mx > 0 ? mx : 1, inv = 1 / scale;
	uint16_t *dst = (uint16_t *)(b->map + b->o.grads) + row * D;
	float *norms = (float *)(b->map + b->o.norms) + row * (size_t)h->nlayers;
	size_t per = (size_t)h->k_in * (size_t)h->k_out;
	for (int l = 0; l < h->nlayers; l++) {
		double s = 0;
		for (size_t i = l * per; i < (l + 1) * per; i++) {
			dst[i] = trail_attr_f16(g[i] * inv);
			double v = (double)trail_attr_f32(dst[i]) * scale;
			s += v * v;
		}
		norms[l] = (float)s;
	}
	((float *)(b->map + b->o.scales))[row] = scale;
	b->done[row] = 1;
	return TRAIL_OK;
}

/* Whether record `rec` (of the whole set) is one of this index's (a shard holds a range). */
static int in_range(const trail_attr_builder *b, size_t rec)
{
	return rec >= b->h.lo && rec - b->h.lo < b->h.nrecords;
}

int trail_attr_builder_add_batch(trail_attr_builder *b, int set, trail_model *m, const size_t *recs,
				 const long *counts, int B, int T, trail_error *err)
{
	size_t need = (size_t)B * b->h.dim;
	int rc;
	if (b->rowcap < need) {
		float *r = trail_realloc(b->rows, need * sizeof *r);
		if (!r)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		b->rows = r;
		b->rowcap = need;
	}
	if ((rc = trail_attr_project(b->proj, m, B, T, counts, b->rows, err)))
		return rc;
	for (int i = 0; i < B; i++)
		if (in_range(b, recs[i]) && (rc = trail_attr_builder_add(b, set, recs[i], b->rows + (size_t)i * b->h.dim, err)))
			return rc;
	return TRAIL_OK;
}

/*
 * Records cut into windows (trail_dataset_split): a record's row is the sum
 * of its windows' projected gradients, the gradient of its summed loss over
 * every window, as training saw it. Windows come in record order, so one
 * running sum is enough.
 */
static int pass_windows(trail_attr_builder *b, int set, trail_model *m, const trail_dataset *d, int batch, int T,
			int32_t *x, int32_t *y, long *counts, trail_error *err)
{
	size_t D = b->h.dim, rows = trail_dataset_rows(d), cur = (size_t)-1, need = (size_t)batch * D;
	float *acc = trail_calloc(D, sizeof *acc);
	int rc = TRAIL_OK;
	if (!acc)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (b->rowcap < need) {
		float *r = trail_realloc(b->rows, need * sizeof *r);
		if (!r) {
			trail_free(acc);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
		b->rows = r;
		b->rowcap = need;
	}
	/* a shard starts at the batch of its first window, so every batch is the one the whole pass makes */
	size_t i0 = 0;
	while (i0 < rows && trail_dataset_row_record(d, i0) < b->h.lo)
		i0++;
	i0 -= i0 % (size_t)batch;
	for (size_t i = i0; i < rows && !rc && trail_dataset_row_record(d, i) < b->h.lo + b->h.nrecords;
	     i += (size_t)batch) {
		int nb = (int)(rows - i < (size_t)batch ? rows - i : (size_t)batch);
		long total = 0;
		for (int k = 0; k < nb; k++)
			total += counts[k] = trail_dataset_row(d, i + (size_t)k, T, x + (size_t)k * T, y + (size_t)k * T);
		float loss;
		if (total) {
			trail_model_zero_grad(m);
			if ((rc = trail_model_forward(m, x, y, nb, T, &loss, err)) || (rc = trail_model_backward(m, err)) ||
			    (rc = trail_attr_project(b->proj, m, nb, T, counts, b->rows, err)))
				break;
		} else {
			memset(b->rows, 0, (size_t)nb * D * sizeof *b->rows);
		}
		for (int k = 0; k < nb && !rc; k++) {
			size_t r = trail_dataset_row_record(d, i + (size_t)k);
			if (r != cur && cur != (size_t)-1) {
				if (in_range(b, cur))
					rc = trail_attr_builder_add(b, set, cur, acc, err);
				memset(acc, 0, D * sizeof *acc);
			}
			cur = r;
			for (size_t j = 0; j < D; j++)
				acc[j] += b->rows[(size_t)k * D + j];
		}
	}
	if (!rc && cur != (size_t)-1 && in_range(b, cur))
		rc = trail_attr_builder_add(b, set, cur, acc, err);
	trail_free(acc);
	return rc;
}

int trail_attr_builder_pass(trail_attr_builder *b, int set, trail_model *m, const trail_dataset *d,
			    int batch, double weight, trail_error *err)
{
	int T = b->h.seq, rc;
	const trail_model_cfg *c = trail_model_config(m);
	if (T < 2 || T > c->n_positions)
		T = c->n_positions;
	if (d->n != b->h.total)
		return trail_error_set(err, TRAIL_EUSAGE, "the dataset has %zu records, the index %llu", d->n,
				       (unsigned long long)b->h.total);
	if (batch < 1)
		batch = 1;
	int32_t *x = trail_malloc((size_t)batch * T * sizeof *x), *y = trail_malloc((size_t)batch * T * sizeof *y);
	size_t *recs = trail_malloc((size_t)batch * sizeof *recs);
	long *counts = trail_malloc((size_t)batch * sizeof *counts);
	if (!x || !y || !recs || !counts) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = trail_attr_builder_set(b, set, m, weight, err)))
		goto out;
	trail_model_keep_linear_io(m, 1);
	if (d->row_rec) {
		rc = pass_windows(b, set, m, d, batch, T, x, y, counts, err);
		goto out;
	}
	/* a shard's batches are the whole pass's that hold its records: the same rows, the same bits */
	for (size_t i = b->h.lo - b->h.lo % (size_t)batch; i < b->h.lo + b->h.nrecords; i += (size_t)batch) {
		int nb = (int)(d->n - i < (size_t)batch ? d->n - i : (size_t)batch);
		for (int k = 0; k < nb; k++) {
			trail_attr_fill(d, i + (size_t)k, T, x + (size_t)k * T, y + (size_t)k * T, &counts[k]);
			recs[k] = i + (size_t)k;
		}
		long total = 0;
		for (int k = 0; k < nb; k++)
			total += counts[k];
		float loss;
		if (!total) { /* nothing counts in any of these records: zero gradients */
			for (int k = 0; k < nb; k++) {
				if (!in_range(b, recs[k]))
					continue;
				float *z = trail_calloc(b->h.dim, sizeof *z);
				if (!z) {
					rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
					goto out;
				}
				rc = trail_attr_builder_add(b, set, recs[k], z, err);
				trail_free(z);
				if (rc)
					goto out;
			}
			continue;
		}
		trail_model_zero_grad(m);
		if ((rc = trail_model_forward(m, x, y, nb, T, &loss, err)) || (rc = trail_model_backward(m, err)) ||
		    (rc = trail_attr_builder_add_batch(b, set, m, recs, counts, nb, T, err)))
			goto out;
	}
out:
	trail_free(x), trail_free(y), trail_free(recs), trail_free(counts);
	return rc;
}

/* As training fills a row: the record's tokens, cut at T; targets where the loss counts. */
void trail_attr_fill(const trail_dataset *d, size_t r, int T, int32_t *x, int32_t *y, long *count)
{
	size_t n = d->len[r];
	long k = 0;
	for (int t = 0; t < T; t++) {
		x[t] = (size_t)t < n ? d->tok[r][t] : 0;
		y[t] = (size_t)t + 1 < n && trail_dataset_target(d, r, (size_t)t + 1) ? d->tok[r][t + 1] : -1;
		k += y[t] >= 0;
	}
	*count = k;
}

int trail_attr_builder_finish(trail_attr_builder *b, const trail_dataset *d, trail_error *err)
{
	trail_attr_hdr *h = &b->h;
	int rc = TRAIL_OK;
	uint8_t *tail = NULL;
	if (d->n != h->total) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "the dataset has %zu records, the index %llu", d->n,
				     (unsigned long long)h->total);
		goto out;
	}
	for (size_t i = 0; i < (size_t)h->nsets * h->nrecords; i++)
		if (!b->done[i]) {
			rc = trail_error_set(err, TRAIL_EUSAGE, "record %zu of gradient set %zu was never added",
					     (size_t)h->lo + i % h->nrecords, i / h->nrecords);
			goto out;
		}
	/* a shard's curvature is the whole set's, computed when the shards are merged */
	if (!h->shard && ((rc = trail_attr_curvature(b->map, h, &b->o, err)) ||
			  (rc = trail_attr_ekfac_curvature(b->map, h, &b->o, err))))
		goto out;
	/* the record table and contributor strings */
	size_t blob = 0, lo = h->lo, hi = h->lo + h->nrecords;
	for (size_t i = lo; i < hi; i++)
		if (d->contributor[i])
			blob += strlen(d->contributor[i]) + 1;
	h->blob = blob;
	trail_attr_layout(h, &b->o);
	h->filelen = b->o.end;
	size_t tl = b->o.end - b->o.records;
	if (!(tail = trail_calloc(tl ? tl : 1, 1))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	size_t off = 0;
	for (size_t i = lo; i < hi; i++) {
		uint8_t *e = tail + (i - lo) * 40;
		if (trail_digest_parse(d->id[i], e)) {
			rc = trail_error_set(err, TRAIL_EDATA, "record %zu has no valid id", i);
			goto out;
		}
		if (d->contributor[i]) {
			put64(e + 32, off);
			size_t n = strlen(d->contributor[i]) + 1;
			memcpy(tail + (b->o.blob - b->o.records) + off, d->contributor[i], n);
			off += n;
		} else
			put64(e + 32, ~(uint64_t)0);
	}
	hdr_write(b->map, h);
	if (pwrite(b->fd, tail, tl, (off_t)b->o.records) != (ssize_t)tl) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->tmp);
		goto out;
	}
	/* the digest over the mapping plus the tail */
	crypto_hash_sha256_state st;
	uint8_t dg[32];
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, b->map, 480);
	crypto_hash_sha256_update(&st, b->map + 512, b->o.records - 512);
	crypto_hash_sha256_update(&st, tail, tl);
	crypto_hash_sha256_final(&st, dg);
	memcpy(b->map + 480, dg, 32);
	if (msync(b->map, b->maplen, MS_SYNC) || fsync(b->fd)) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->tmp);
		goto out;
	}
	if (fchmod(b->fd, 0644) || rename(b->tmp, b->path)) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", b->path);
		goto out;
	}
	b->tmp[0] = 0;
	char *dir = trail_strdup(b->path), *slash = dir ? strrchr(dir, '/') : NULL;
	if (dir) {
		if (slash)
			*slash = 0;
		rc = trail_fsync_dir(slash ? (dir[0] ? dir : "/") : ".", err);
		trail_free(dir);
	}
out:
	trail_free(tail);
	trail_attr_builder_free(b);
	return rc;
}

/* ---- opening ------------------------------------------------------------------------ */

int trail_attr_index_open(const char *path, trail_attr_index **out, trail_error *err)
{
	trail_attr_index *x = trail_calloc(1, sizeof *x);
	int rc;
	*out = NULL;
	if (!x)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if ((rc = trail_map_file(path, &x->map, err)))
		goto fail;
	const uint8_t *b = x->map.data;
	trail_attr_hdr *h = &x->h;
	if ((rc = hdr_read(b, x->map.len, h, path, err)))
		goto fail;
	trail_attr_layout(h, &x->o);
	if (x->o.end != x->map.len) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "attribution index is %zu bytes, its sections %zu "
				    "(truncated or altered)", x->map.len, x->o.end);
		goto fail;
	}
	uint8_t dg[32];
	content_digest(b, x->map.len, dg);
	if (sodium_memcmp(dg, b + 480, 32)) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "attribution index digest mismatch: the file was altered");
		goto fail;
	}
	trail_digest_format(b + 480, x->info.digest);
	if (h->shard) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "records %llu:%llu of %llu: a shard of an attribution index, "
				    "not one to score with (merge the shards: attr-score --merge-index)",
				    (unsigned long long)h->lo, (unsigned long long)(h->lo + h->nrecords),
				    (unsigned long long)h->total);
		goto fail;
	}
	if (h->blob && ((const char *)b)[x->o.end - 1]) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "contributor strings are not terminated");
		goto fail;
	}
	for (uint64_t i = 0; i < h->nrecords; i++) {
		uint64_t off = get64(b + x->o.records + i * 40 + 32);
		if (off != ~(uint64_t)0 && off >= h->blob) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "record %llu: contributor offset out of range",
					    (unsigned long long)i);
			goto fail;
		}
	}
	x->scales = (const float *)(b + x->o.scales);
	x->norms = (const float *)(b + x->o.norms);
	x->lambda = (const float *)(b + x->o.lambda);
	x->chol = trail_attr_has_blocks(h) ? (const float *)(b + x->o.chol) : NULL;
	x->ekfac = (const float *)(b + x->o.ekfac);
	x->grads = (const uint16_t *)(b + x->o.grads);
	size_t per = h->dim / (size_t)h->nlayers;
	if (x->chol && !(x->cholt = trail_malloc(h->dim * per * sizeof *x->cholt))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t l = 0; x->chol && l < (size_t)h->nlayers; l++)
		for (size_t i = 0; i < per; i++)
			for (size_t j = 0; j < per; j++)
				x->cholt[l * per * per + j * per + i] = x->chol[l * per * per + i * per + j];
	trail_attr_info *in = &x->info;
	in->nrecords = h->nrecords;
	in->nlayers = h->nlayers;
	in->nsets = h->nsets;
	in->k_in = h->k_in;
	in->k_out = h->k_out;
	in->targets = h->targets;
	in->seq = h->seq;
	in->dim = h->dim;
	in->nparams = h->nparams;
	in->seed = h->seed;
	in->damping = h->damping;
	in->id = h->id;
	*out = x;
	return TRAIL_OK;
fail:
	trail_attr_index_free(x);
	return rc;
}

void trail_attr_index_free(trail_attr_index *x)
{
	if (!x)
		return;
	if (x->map.data)
		trail_unmap(&x->map);
	trail_free(x->cholt);
	trail_free(x);
}

const trail_attr_info *trail_attr_index_info(const trail_attr_index *x)
{
	return &x->info;
}

void trail_attr_index_record(const trail_attr_index *x, size_t i, char id[72], const char **contributor)
{
	const uint8_t *e = (const uint8_t *)x->map.data + x->o.records + i * 40;
	trail_digest_format(e, id);
	uint64_t off = get64(e + 32);
	*contributor = off == ~(uint64_t)0 ? NULL : (const char *)x->map.data + x->o.blob + off;
}

int trail_attr_index_proj(const trail_attr_index *x, const trail_model *m, trail_attr_proj **out,
			  trail_error *err)
{
	const trail_attr_hdr *h = &x->h;
	trail_attr_params p = {.seed = h->seed, .k_in = h->k_in, .k_out = h->k_out, .targets = h->targets};
	int rc = trail_attr_proj_new(m, &p, out, err);
	if (rc)
		return rc;
	size_t np;
	trail_model_params((trail_model *)m, &np);
	int ok = (*out)->n == h->nlayers && np == h->nparams;
	for (int l = 0; ok && l < h->nlayers; l++) {
		const uint8_t *e = (const uint8_t *)x->map.data + x->o.layers + (size_t)l * 64;
		ok = get32(e) == (uint32_t)(*out)->L[l].in && get32(e + 4) == (uint32_t)(*out)->L[l].out &&
		     get32(e + 8) == (uint32_t)(*out)->L[l].index;
	}
	if (!ok) {
		trail_attr_proj_free(*out);
		*out = NULL;
		return trail_error_set(err, TRAIL_EDATA, "the index was built for a model of another shape");
	}
	return TRAIL_OK;
}

/* ---- merging shards ------------------------------------------------------------------- */

typedef struct shard_in {
	const char *path;
	trail_map map;
	trail_attr_hdr h;
	trail_attr_off o;
} shard_in;

static int cmp_shard(const void *a, const void *b)
{
	const shard_in *x = *(shard_in *const *)a, *y = *(shard_in *const *)b;
	return x->h.lo < y->h.lo ? -1 : x->h.lo > y->h.lo;
}

/* One shard mapped and checked: sizes, digest, and that it is a shard. */
static int shard_open(shard_in *s, trail_error *err)
{
	int rc;
	if ((rc = trail_map_file(s->path, &s->map, err)))
		return rc;
	const uint8_t *b = s->map.data;
	if ((rc = hdr_read(b, s->map.len, &s->h, s->path, err)))
		return rc;
	trail_attr_layout(&s->h, &s->o);
	uint8_t dg[32];
	if (s->o.end != s->map.len)
		return trail_error_at(err, TRAIL_EDATA, s->path, 0, "attribution index is %zu bytes, its sections %zu "
				      "(truncated or altered)", s->map.len, s->o.end);
	content_digest(b, s->map.len, dg);
	if (sodium_memcmp(dg, b + 480, 32))
		return trail_error_at(err, TRAIL_EDATA, s->path, 0, "attribution index digest mismatch: the file was altered");
	if (!s->h.shard)
		return trail_error_at(err, TRAIL_EDATA, s->path, 0, "a whole attribution index, not a shard");
	return TRAIL_OK;
}

/* Everything but the range must be the first shard's: weights, records' root, projection, sets. */
static int shard_same(const shard_in *a, const shard_in *s, trail_error *err)
{
	const trail_attr_hdr *x = &a->h, *y = &s->h;
	const uint8_t *p = a->map.data, *q = s->map.data;
	const char *what = strcmp(x->id.root, y->id.root) ? "training set (root)"
			   : x->total != y->total ? "record count"
			   : strcmp(x->id.model, y->id.model) || strcmp(x->id.adapter, y->id.adapter) ? "model or adapter"
			   : x->nlayers != y->nlayers || x->dim != y->dim || x->nsets != y->nsets || x->k_in != y->k_in ||
					   x->k_out != y->k_out || x->targets != y->targets || x->seed != y->seed ||
					   x->damping != y->damping || x->nparams != y->nparams || x->seq != y->seq
			   ? "projection or gradient sets"
			   : memcmp(p + a->o.layers, q + s->o.layers, a->o.scales - a->o.layers) ? "layers or parameters"
			   : NULL;
	if (what)
		return trail_error_at(err, TRAIL_EDATA, s->path, 0, "a shard of another index than %s: the %s differs",
				      a->path, what);
	return TRAIL_OK;
}

int trail_attr_index_merge(const char *const *paths, size_t n, const trail_attr_ident *want, const char *path,
			   trail_error *err)
{
	shard_in *in = trail_calloc(n ? n : 1, sizeof *in);
	shard_in **by = trail_calloc(n ? n : 1, sizeof *by);
	char *tmp = trail_malloc(strlen(path) + 16);
	uint8_t *map = NULL;
	size_t maplen = 0;
	int fd = -1, rc = TRAIL_OK;
	if (!in || !by || !tmp) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	tmp[0] = 0;
	if (!n) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "no shards to merge");
		goto out;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		in[i].path = paths[i];
		by[i] = &in[i];
		if (!(rc = shard_open(&in[i], err)) && i)
			rc = shard_same(&in[0], &in[i], err);
	}
	if (!rc && want && (strcmp(want->root, in[0].h.id.root) || strcmp(want->model, in[0].h.id.model) ||
			    strcmp(want->adapter, in[0].h.id.adapter)))
		rc = trail_error_at(err, TRAIL_EDATA, in[0].path, 0, "the shards are of model %s, adapter %s and training "
				    "set %s, not %s, %s and %s", in[0].h.id.model, in[0].h.id.adapter[0] ? in[0].h.id.adapter : "(none)",
				    in[0].h.id.root, want->model, want->adapter[0] ? want->adapter : "(none)", want->root);
	if (rc)
		goto out;
	/* exactly once each: sorted by range, every one starting where the one before ends */
	qsort(by, n, sizeof *by, cmp_shard);
	uint64_t at = 0, total = in[0].h.total;
	for (size_t i = 0; i < n; i++) {
		const trail_attr_hdr *h = &by[i]->h;
		if (h->lo != at) {
			rc = h->lo > at ? trail_error_set(err, TRAIL_EDATA, "records %llu:%llu are in no shard",
							  (unsigned long long)at, (unsigned long long)h->lo)
					: trail_error_at(err, TRAIL_EDATA, by[i]->path, 0, "records %llu:%llu are also in %s%s",
							 (unsigned long long)h->lo, (unsigned long long)(at < h->lo + h->nrecords ? at : h->lo + h->nrecords),
							 by[i - 1]->path, by[i - 1]->h.lo == h->lo ? " (the same shard twice)" : "");
			goto out;
		}
		at += h->nrecords;
	}
	if (at != total) {
		rc = trail_error_set(err, TRAIL_EDATA, "records %llu:%llu are in no shard", (unsigned long long)at,
				     (unsigned long long)total);
		goto out;
	}
	/* the whole index: the first shard's header and tables, the rows and records in order */
	trail_attr_hdr h = in[0].h;
	trail_attr_off o;
	h.shard = 0, h.lo = 0, h.nrecords = total, h.total = total, h.blob = 0;
	for (size_t i = 0; i < n; i++)
		h.blob += in[i].h.blob;
	trail_attr_layout(&h, &o);
	h.filelen = o.end;
	sprintf(tmp, "%s.tmpXXXXXX", path);
	if ((fd = mkstemp(tmp)) < 0) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", path);
		tmp[0] = 0;
		goto out;
	}
	maplen = o.end;
	if (ftruncate(fd, (off_t)maplen)) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", tmp);
		goto out;
	}
	if ((map = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
		map = NULL;
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", tmp);
		goto out;
	}
	const uint8_t *b0 = in[0].map.data;
	memcpy(map + o.layers, b0 + in[0].o.layers, in[0].o.scales - in[0].o.layers); /* layers, sets, params */
	size_t D = h.dim, L = (size_t)h.nlayers, S = (size_t)h.nsets, boff = 0;
	for (size_t i = 0; i < n; i++) {
		const shard_in *s = by[i];
		const uint8_t *b = s->map.data;
		size_t lo = s->h.lo, m = s->h.nrecords;
		for (size_t set = 0; set < S; set++) {
			memcpy(map + o.scales + (set * total + lo) * 4, b + s->o.scales + set * m * 4, m * 4);
			memcpy(map + o.norms + (set * total + lo) * L * 4, b + s->o.norms + set * m * L * 4, m * L * 4);
			memcpy(map + o.grads + (set * total + lo) * D * 2, b + s->o.grads + set * m * D * 2, m * D * 2);
		}
		for (size_t r = 0; r < m; r++) {
			const uint8_t *e = b + s->o.records + r * 40;
			uint8_t *f = map + o.records + (lo + r) * 40;
			uint64_t off = get64(e + 32);
			memcpy(f, e, 32);
			put64(f + 32, off == ~(uint64_t)0 ? off : off + boff);
		}
		memcpy(map + o.blob + boff, b + s->o.blob, s->h.blob);
		boff += s->h.blob;
	}
	if ((rc = trail_attr_curvature(map, &h, &o, err)) || (rc = trail_attr_ekfac_curvature(map, &h, &o, err)))
		goto out;
	hdr_write(map, &h);
	uint8_t dg[32];
	content_digest(map, maplen, dg);
	memcpy(map + 480, dg, 32);
	if (msync(map, maplen, MS_SYNC) || fsync(fd)) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", tmp);
		goto out;
	}
	if (fchmod(fd, 0644) || rename(tmp, path)) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s", path);
		goto out;
	}
	tmp[0] = 0;
	char *dir = trail_strdup(path), *slash = dir ? strrchr(dir, '/') : NULL;
	if (dir) {
		if (slash)
			*slash = 0;
		rc = trail_fsync_dir(slash ? (dir[0] ? dir : "/") : ".", err);
		trail_free(dir);
	}
out:
	if (map)
		munmap(map, maplen);
	if (fd >= 0)
		close(fd);
	if (tmp && tmp[0])
		unlink(tmp);
	for (size_t i = 0; in && i < n; i++)
		if (in[i].map.data)
			trail_unmap(&in[i].map);
	trail_free(in), trail_free(by), trail_free(tmp);
	return rc;
}

int trail_attr_normalize_mode(const char *name)
{
	if (!strcmp(name, "none"))
		return TRAIL_ATTR_NORM_NONE;
	if (!strcmp(name, "unit"))
		return TRAIL_ATTR_NORM_UNIT;
	return -1;
}

void trail_attr_normalize(const trail_attr_index *x, float *scores, int nq, size_t lo, size_t hi)
{
	size_t N = x->h.nrecords, L = x->h.nlayers, last = (size_t)x->h.nsets - 1;
	const float *nr = x->norms + last * N * L;
	for (size_t i = lo; i < hi; i++) {
		double s = 0;
		for (size_t l = 0; l < L; l++)
			s += nr[i * L + l];
		float inv = s > 0 ? (float)(1 / sqrt(s)) : 0;
		for (int q = 0; q < nq; q++)
			scores[(size_t)q * (hi - lo) + (i - lo)] *= inv;
	}
}

/* ---- rows captured while training -------------------------------------------------- */

struct trail_attr_capture {
	trail_attr_builder *b;
	const trail_dataset *d;
	size_t n;        /* the dataset's rows */
	uint64_t B;
	uint64_t *last;  /* [n]: the run's row g of each row's last visit; UINT64_MAX: none in the window */
	float **acc;     /* split records: [records] the running sum of a record's windows, or NULL */
	uint32_t *left;  /* [records]: its windows not added yet */
	size_t captured;
};

void trail_attr_builder_set_ident(trail_attr_builder *b, const trail_attr_ident *id)
{
	b->h.id = *id;
}

void trail_attr_capture_free(trail_attr_capture *c)
{
	if (!c)
		return;
	for (size_t i = 0; c->acc && i < c->d->n; i++)
		trail_free(c->acc[i]);
	trail_free(c->acc), trail_free(c->left), trail_free(c->last);
	trail_free(c);
}

int trail_attr_capture_new(trail_attr_builder *b, const trail_dataset *d, int B, uint64_t seed, long from, long steps,
			   trail_attr_capture **out, trail_error *err)
{
	size_t n = trail_dataset_rows(d), *perm = NULL, seen = 0;
	*out = NULL;
	if (b->h.shard || b->h.nsets != 1 || d->n != b->h.total || B < 1 || from < 0 || !n)
		return trail_error_set(err, TRAIL_EUSAGE, "rows captured in training are for a whole index of one "
				       "gradient set over the run's records");
	trail_attr_capture *c = trail_calloc(1, sizeof *c);
	if (!c || !(c->last = trail_malloc(n * sizeof *c->last)) || !(perm = trail_malloc(n * sizeof *perm)))
		goto oom;
	c->b = b, c->d = d, c->n = n, c->B = (uint64_t)B;
	for (size_t i = 0; i < n; i++)
		c->last[i] = UINT64_MAX;
	if (d->row_rec) {
		if (!(c->acc = trail_calloc(d->n, sizeof *c->acc)) || !(c->left = trail_calloc(d->n, sizeof *c->left)))
			goto oom;
		for (size_t i = 0; i < n; i++)
			c->left[d->row_rec[i]]++;
	}
	/* each row's last visit: the epochs from the last one back, until every row is seen or the window starts */
	uint64_t g0 = (uint64_t)from * c->B, g1 = steps > from ? (uint64_t)steps * c->B : g0;
	for (uint64_t e = g1 > g0 ? (g1 - 1) / n : 0; g1 > g0; e--) {
		trail_train_order(perm, n, seed, e);
		uint64_t lo = e * n > g0 ? e * n : g0, hi = (e + 1) * n < g1 ? (e + 1) * n : g1;
		for (uint64_t g = lo; g < hi; g++) /* once each in an epoch */
			if (c->last[perm[g - e * n]] == UINT64_MAX)
				c->last[perm[g - e * n]] = g, seen++;
		if (seen == n || e == g0 / n)
			break;
	}
	trail_free(perm);
	*out = c;
	return TRAIL_OK;
oom:
	trail_free(perm);
	trail_attr_capture_free(c);
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

static float *scratch(trail_attr_builder *b, int B, trail_error *err)
{
	size_t need = (size_t)B * b->h.dim;
	if (b->rowcap < need) {
		float *r = trail_realloc(b->rows, need * sizeof *r);
		if (!r) {
			trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			return NULL;
		}
		b->rows = r;
		b->rowcap = need;
	}
	return b->rows;
}

/* Dataset row `row`'s projected gradient g: its record's row, or a window's share of it. */
static int capture_add(trail_attr_capture *c, size_t row, const float *g, trail_error *err)
{
	size_t D = c->b->h.dim;
	if (!c->acc)
		return trail_attr_builder_add(c->b, 0, row, g, err);
	size_t r = c->d->row_rec[row];
	if (c->left[r] == 1 && !c->acc[r]) /* one window: 0 + g, as the pass sums it */
		return c->left[r]--, trail_attr_builder_add(c->b, 0, r, g, err);
	if (!c->acc[r] && !(c->acc[r] = trail_calloc(D, sizeof *c->acc[r])))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (size_t j = 0; j < D; j++)
		c->acc[r][j] += g[j];
	if (--c->left[r])
		return TRAIL_OK;
	int rc = trail_attr_builder_add(c->b, 0, r, c->acc[r], err);
	trail_free(c->acc[r]);
	c->acc[r] = NULL;
	return rc;
}

static int capture_before(void *ctx, long step, const size_t *rows, const long *counts, int B, trail_error *err)
{
	const trail_attr_capture *c = ctx;
	(void)counts, (void)err;
	for (int b = 0; b < B; b++)
		if (c->last[rows[b]] == (uint64_t)step * c->B + (uint64_t)b)
			return 1;
	return 0;
}

static int capture_after(void *ctx, trail_model *m, long step, const size_t *rows, const long *counts, int B, int T,
			 trail_error *err)
{
	trail_attr_capture *c = ctx;
	float *g;
	int rc;
	if (T != c->b->h.seq || (uint64_t)B != c->B)
		return trail_error_set(err, TRAIL_EUSAGE, "the run's batch of %d x %d is not the capture's %llu x %d", B, T,
				       (unsigned long long)c->B, c->b->h.seq);
	if (!(g = scratch(c->b, B, err)) || (rc = trail_attr_project(c->b->proj, m, B, T, counts, g, err)))
		return g ? rc : TRAIL_ENOMEM;
	for (int b = 0; b < B; b++)
		if (c->last[rows[b]] == (uint64_t)step * c->B + (uint64_t)b) {
			if ((rc = capture_add(c, rows[b], g + (size_t)b * c->b->h.dim, err)))
				return rc;
			c->captured++;
		}
	return TRAIL_OK;
}

void trail_attr_capture_hook(trail_attr_capture *c, trail_train_hook *h)
{
	*h = (trail_train_hook){.before = capture_before, .after = capture_after, .ctx = c};
}

int trail_attr_capture_rest(trail_attr_capture *c, trail_model *m, int batch, size_t *captured, size_t *rest,
			    trail_error *err)
{
	trail_attr_builder *b = c->b;
	int T = b->h.seq, rc = TRAIL_OK;
	size_t D = b->h.dim, nrest = 0;
	if (batch < 1)
		batch = 1;
	int32_t *x = trail_malloc((size_t)batch * T * sizeof *x), *y = trail_malloc((size_t)batch * T * sizeof *y);
	size_t *idx = trail_malloc((size_t)batch * sizeof *idx);
	long *counts = trail_malloc((size_t)batch * sizeof *counts);
	float *g = scratch(b, batch, err);
	if (!x || !y || !idx || !counts || !g) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	trail_model_keep_linear_io(m, 1);
	/* the rows no step of the window visited, in dataset order, at m's weights */
	for (size_t i = 0; i < c->n && !rc;) {
		int nb = 0;
		long total = 0;
		for (; i < c->n && nb < batch; i++)
			if (c->last[i] == UINT64_MAX) {
				idx[nb] = i;
				total += counts[nb] = trail_dataset_row(c->d, i, T, x + (size_t)nb * T, y + (size_t)nb * T);
				nb++;
			}
		if (!nb)
			break;
		float loss;
		if (!total) {
			memset(g, 0, (size_t)nb * D * sizeof *g);
		} else {
			trail_model_zero_grad(m);
			if ((rc = trail_model_forward(m, x, y, nb, T, &loss, err)) || (rc = trail_model_backward(m, err)) ||
			    (rc = trail_attr_project(b->proj, m, nb, T, counts, g, err)))
				break;
		}
		for (int k = 0; k < nb && !rc; k++)
			rc = capture_add(c, idx[k], g + (size_t)k * D, err);
		nrest += (size_t)nb;
	}
	if (!rc)
		rc = trail_attr_builder_set(b, 0, m, 1.0, err);
	if (captured)
		*captured = c->captured;
	if (rest)
		*rest = nrest;
out:
	trail_free(x), trail_free(y), trail_free(idx), trail_free(counts);
	return rc;
}
