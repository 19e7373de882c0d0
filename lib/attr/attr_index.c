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
	o->chol = al64(o->lambda + 2 * L * 4);
	o->grads = al64(o->chol + D * (D / L) * 4); /* L blocks of (D/L)^2 */
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
	/* bound every size before any product of them is formed */
	if (!h->nrecords || h->nrecords > ((uint64_t)1 << 32) || h->nlayers < 1 || h->nlayers > 4096 ||
	    h->nsets < 1 || h->nsets > 1024 || h->k_in < 1 || h->k_in > 4096 || h->k_out < 1 || h->k_out > 4096 ||
	    h->dim != (size_t)h->nlayers * (size_t)h->k_in * (size_t)h->k_out || h->dim > TRAIL_ATTR_MAX_DIM ||
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

int trail_attr_builder_new(const char *path, const trail_model *m, const trail_attr_ident *id,
			   const trail_attr_params *p, size_t nrecords, int nsets,
			   trail_attr_builder **out, trail_error *err)
{
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
		if (p->k_in < 1 || p->k_out < 1 || (size_t)p->k_in * (size_t)p->k_out > TRAIL_ATTR_MAX_DIM) {
			rc = trail_error_set(err, TRAIL_EUSAGE, "dimensions %d x %d are out of range", p->k_in, p->k_out);
			goto fail;
		}
		h->nlayers = 1;
		h->dim = (size_t)p->k_in * (size_t)p->k_out;
	}
	h->nrecords = nrecords;
	h->nsets = nsets;
	h->k_in = p->k_in;
	h->k_out = p->k_out;
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
	if (set < 0 || set >= h->nsets || rec >= h->nrecords)
		return trail_error_set(err, TRAIL_EUSAGE, "row %zu of set %d is out of range", rec, set);
	size_t D = h->dim, row = (size_t)set * h->nrecords + rec;
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
		if ((rc = trail_attr_builder_add(b, set, recs[i], b->rows + (size_t)i * b->h.dim, err)))
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
	for (size_t i = 0; i < rows && !rc; i += (size_t)batch) {
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
				rc = trail_attr_builder_add(b, set, cur, acc, err);
				memset(acc, 0, D * sizeof *acc);
			}
			cur = r;
			for (size_t j = 0; j < D; j++)
				acc[j] += b->rows[(size_t)k * D + j];
		}
	}
	if (!rc && cur != (size_t)-1)
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
	if (d->n != b->h.nrecords)
		return trail_error_set(err, TRAIL_EUSAGE, "the dataset has %zu records, the index %llu", d->n,
				       (unsigned long long)b->h.nrecords);
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
	for (size_t i = 0; i < d->n; i += (size_t)batch) {
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
		y[t] = (size_t)t + 1 < n && t + 1 >= d->first[r] ? d->tok[r][t + 1] : -1;
		k += y[t] >= 0;
	}
	*count = k;
}

int trail_attr_builder_finish(trail_attr_builder *b, const trail_dataset *d, trail_error *err)
{
	trail_attr_hdr *h = &b->h;
	int rc = TRAIL_OK;
	uint8_t *tail = NULL;
	if (d->n != h->nrecords) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "the dataset has %zu records, the index %llu", d->n,
				     (unsigned long long)h->nrecords);
		goto out;
	}
	for (size_t i = 0; i < (size_t)h->nsets * h->nrecords; i++)
		if (!b->done[i]) {
			rc = trail_error_set(err, TRAIL_EUSAGE, "record %zu of gradient set %zu was never added",
					     i % h->nrecords, i / h->nrecords);
			goto out;
		}
	if ((rc = trail_attr_curvature(b->map, h, &b->o, err)))
		goto out;
	/* the record table and contributor strings */
	size_t blob = 0;
	for (size_t i = 0; i < d->n; i++)
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
	for (size_t i = 0; i < d->n; i++) {
		uint8_t *e = tail + i * 40;
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
	x->chol = (const float *)(b + x->o.chol);
	x->grads = (const uint16_t *)(b + x->o.grads);
	size_t per = h->dim / (size_t)h->nlayers;
	if (!(x->cholt = trail_malloc(h->dim * per * sizeof *x->cholt))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	for (size_t l = 0; l < (size_t)h->nlayers; l++)
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
