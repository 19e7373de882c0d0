#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model.h"
#include "model/model_int.h"

#define HEADER_MAX (64u << 20)

/*
 * A checkpoint: one safetensors file; or Hugging Face's shards, an index
 * whose weight_map names the shard of every tensor; or a GGUF file under
 * Hugging Face's names.
 */
struct trail_st {
	trail_map map;
	json_t *header;
	const uint8_t *data; /* start of the byte buffer */
	size_t datalen;
	char *path;
	trail_gguf *gg;
	trail_st **shard;    /* [nshard] */
	size_t nshard;
	json_t *wmap;        /* tensor name -> shard index */
};

/* Bytes per element of a safetensors dtype; 0 if unknown. */
static size_t dtype_width(const char *dt)
{
	static const struct {
		const char *name;
		size_t w;
	} t[] = {{"F64", 8}, {"I64", 8}, {"U64", 8}, {"F32", 4}, {"I32", 4}, {"U32", 4}, {"F16", 2}, {"BF16", 2},
		 {"I16", 2}, {"U16", 2}, {"I8", 1}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
	for (size_t i = 0; dt && i < sizeof t / sizeof t[0]; i++)
		if (!strcmp(dt, t[i].name))
			return t[i].w;
	return 0;
}

typedef struct span {
	uint64_t b, e;
	const char *name;
} span;

static int by_begin(const void *x, const void *y)
{
	const span *a = x, *b = y;
	return a->b < b->b ? -1 : a->b > b->b ? 1 : a->e < b->e ? -1 : a->e > b->e;
}

/*
 * As the format requires: every entry has a known dtype, a shape of
 * non-negative integers and offsets whose length is the shape's byte size;
 * together the tensors cover the byte buffer exactly, without overlap. A
 * truncated or padded file fails here, before anything is read.
 */
static int check_layout(trail_st *st, trail_error *err)
{
	size_t n = json_object_size(st->header), k = 0;
	span *v = trail_malloc((n ? n : 1) * sizeof *v);
	const char *name;
	json_t *t;
	int rc = TRAIL_OK;
	if (!v)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	json_object_foreach(st->header, name, t) {
		if (!strcmp(name, "__metadata__")) {
			const char *mk;
			json_t *mv;
			int bad = !json_is_object(t);
			json_object_foreach(t, mk, mv) bad |= !json_is_string(mv);
			if (bad) {
				rc = trail_error_at(err, TRAIL_EDATA, st->path, 0, "__metadata__ must map names to strings");
				goto out;
			}
			continue;
		}
		json_t *sh = json_object_get(t, "shape"), *off = json_object_get(t, "data_offsets");
		size_t w = dtype_width(json_string_value(json_object_get(t, "dtype")));
		uint64_t cnt = 1;
		int ok = json_is_object(t) && w && json_is_array(sh) && json_array_size(sh) <= 8 && json_is_array(off) &&
			 json_array_size(off) == 2 && json_is_integer(json_array_get(off, 0)) &&
			 json_is_integer(json_array_get(off, 1));
		for (size_t i = 0; ok && i < json_array_size(sh); i++) {
			json_t *d = json_array_get(sh, i);
			ok = json_is_integer(d) && json_integer_value(d) >= 0 && json_integer_value(d) < ((json_int_t)1 << 40);
			if (ok && (cnt = cnt * (uint64_t)json_integer_value(d)) > ((uint64_t)1 << 50))
				ok = 0;
		}
		if (!ok) {
			rc = trail_error_at(err, TRAIL_EDATA, st->path, 0, "tensor %s: bad entry (dtype, shape, data_offsets)",
					    name);
			goto out;
		}
		json_int_t b = json_integer_value(json_array_get(off, 0)), e = json_integer_value(json_array_get(off, 1));
		if (b < 0 || e < b || (uint64_t)(e - b) != cnt * w) {
			rc = trail_error_at(err, TRAIL_EDATA, st->path, 0,
					    "tensor %s: data_offsets [%lld, %lld] do not hold its shape", name, (long long)b,
					    (long long)e);
			goto out;
		}
		v[k++] = (span){(uint64_t)b, (uint64_t)e, name};
	}
	qsort(v, k, sizeof *v, by_begin);
	uint64_t at = 0;
	for (size_t i = 0; i < k; i++) {
		if (v[i].b != at) {
			rc = trail_error_at(err, TRAIL_EDATA, st->path, 0, "tensor %s: %s at byte %llu", v[i].name,
					    v[i].b < at ? "overlaps another" : "a gap before it", (unsigned long long)v[i].b);
			goto out;
		}
		at = v[i].e;
	}
	if (at != st->datalen)
		rc = trail_error_at(err, TRAIL_EDATA, st->path, 0, "%s: the tensors need %llu bytes, the file has %zu",
				    at > st->datalen ? "truncated" : "trailing bytes", (unsigned long long)at, st->datalen);
out:
	trail_free(v);
	return rc;
}

/* The header and layout of the safetensors file in p[0..n). */
static int parse_st(trail_st *st, const uint8_t *p, size_t n, trail_error *err)
{
	uint64_t hl = 0;
	int rc;
	const char *path = st->path;
	if (n < 8)
		return trail_error_at(err, TRAIL_EDATA, path, 0, "not a safetensors file (too short)");
	for (int i = 7; i >= 0; i--)
		hl = hl << 8 | p[i];
	if (hl == 0 || hl > HEADER_MAX || hl > n - 8)
		return trail_error_at(err, TRAIL_EDATA, path, 0, "not a safetensors file (header length %llu)",
				      (unsigned long long)hl);
	if ((rc = trail_json_parse((const char *)p + 8, hl, path, &st->header, err)) || !json_is_object(st->header))
		return trail_error_at(err, TRAIL_EDATA, path, 0, "safetensors header is not a JSON object");
	st->data = p + 8 + hl;
	st->datalen = n - 8 - hl;
	return check_layout(st, err);
}

static trail_st *st_new(const char *path, trail_error *err)
{
	trail_st *st = trail_calloc(1, sizeof *st);
	if (!st || !(st->path = trail_strdup(path))) {
		trail_free(st);
		trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		return NULL;
	}
	return st;
}

int trail_st_parse(const void *buf, size_t len, const char *name, trail_st **out, trail_error *err)
{
	trail_st *st = st_new(name ? name : "safetensors", err);
	int rc;
	*out = NULL;
	if (!st)
		return TRAIL_ENOMEM;
	if ((rc = parse_st(st, buf, len, err))) {
		trail_st_free(st);
		return rc;
	}
	*out = st;
	return TRAIL_OK;
}

static int open_file(const char *path, trail_st **out, trail_error *err)
{
	trail_st *st = st_new(path, err);
	int rc;
	*out = NULL;
	if (!st)
		return TRAIL_ENOMEM;
	if ((rc = trail_map_file(path, &st->map, err)) || (rc = parse_st(st, st->map.data, st->map.len, err))) {
		trail_st_free(st);
		return rc;
	}
	*out = st;
	return TRAIL_OK;
}

/* A shard's file name: a plain name in the index's directory. */
static int plain_name(const char *s)
{
	return s && *s && *s != '.' && !strchr(s, '/') && !strchr(s, '\\') && strlen(s) < 256;
}

/*
 * Hugging Face's shards: every shard named in the weight_map opened and
 * checked, every tensor of every shard listed there for that shard, and
 * every listed tensor in its shard, so each tensor is found exactly once.
 */
static int open_sharded(const char *path, trail_st **out, trail_error *err)
{
	trail_st *st = st_new(path, err);
	void *buf = NULL;
	size_t len;
	json_t *ix = NULL, *files = json_object();
	char *dir = NULL;
	int rc;
	*out = NULL;
	if (!st || !files || !(st->wmap = json_object()) || !(dir = trail_strdup(path))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	char *sl = strrchr(dir, '/');
	if (sl)
		sl[sl == dir] = 0;
	else
		strcpy(dir, ".");
	if ((rc = trail_read_file(path, HEADER_MAX, &buf, &len, err)) || (rc = trail_json_parse(buf, len, path, &ix, err)))
		goto fail;
	json_t *wm = json_object_get(ix, "weight_map"), *v;
	const char *name;
	if (!json_is_object(wm) || !json_object_size(wm)) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "no weight_map object of tensor names to shard files");
		goto fail;
	}
	json_object_foreach(wm, name, v) {
		const char *f = json_string_value(v);
		if (!plain_name(f)) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "tensor %s: shard %s is not a file name in this directory",
					    name, f ? f : "(not a string)");
			goto fail;
		}
		if (!json_object_get(files, f) && json_object_set_new(files, f, json_integer((json_int_t)json_object_size(files)))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto fail;
		}
		if (json_object_size(files) > 65536) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "more than 65536 shards");
			goto fail;
		}
	}
	st->nshard = json_object_size(files);
	if (!(st->shard = trail_calloc(st->nshard, sizeof *st->shard))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	json_object_foreach(files, name, v) {
		char *sp = trail_path(dir, name);
		rc = sp ? open_file(sp, &st->shard[json_integer_value(v)], err) : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		trail_free(sp);
		if (rc)
			goto fail;
	}
	json_object_foreach(wm, name, v) {
		size_t k = (size_t)json_integer_value(json_object_get(files, json_string_value(v)));
		if (!trail_st_has(st->shard[k], name)) {
			rc = trail_error_at(err, TRAIL_EDATA, path, 0, "tensor %s is not in its shard %s", name, json_string_value(v));
			goto fail;
		}
		if (json_object_set_new(st->wmap, name, json_integer((json_int_t)k))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto fail;
		}
	}
	for (size_t k = 0; k < st->nshard; k++)
		for (size_t i = 0; i < trail_st_count(st->shard[k]); i++) {
			const char *t = trail_st_name(st->shard[k], i);
			json_t *w = json_object_get(st->wmap, t);
			if (!w || (size_t)json_integer_value(w) != k) {
				const char *sk = NULL, *o = NULL;
				json_object_foreach(files, name, v) {
					if ((size_t)json_integer_value(v) == k)
						sk = name;
					if (w && json_integer_value(v) == json_integer_value(w))
						o = name;
				}
				rc = w ? trail_error_at(err, TRAIL_EDATA, path, 0, "tensor %s is in shard %s and in shard %s", t, o, sk)
				       : trail_error_at(err, TRAIL_EDATA, path, 0, "tensor %s of shard %s is not in the weight_map", t, sk);
				goto fail;
			}
		}
	*out = st;
	st = NULL;
fail:
	trail_st_free(st);
	json_decref(ix);
	json_decref(files);
	trail_free(buf);
	trail_free(dir);
	return rc;
}

static int ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && !strcmp(s + a - b, suf);
}

int trail_st_open(const char *path, trail_st **out, trail_error *err)
{
	*out = NULL;
	if (ends_with(path, ".index.json"))
		return open_sharded(path, out, err);
	if (!trail_gguf_is(path))
		return open_file(path, out, err);
	trail_st *st = st_new(path, err);
	int rc;
	if (!st)
		return TRAIL_ENOMEM;
	if ((rc = trail_gguf_open(path, &st->gg, err)) || (rc = trail_gguf_bind(st->gg, err))) {
		trail_st_free(st);
		return rc;
	}
	*out = st;
	return TRAIL_OK;
}

const trail_gguf *trail_st_gguf(const trail_st *st)
{
	return st->gg;
}

void trail_st_free(trail_st *st)
{
	if (!st)
		return;
	trail_unmap(&st->map);
	json_decref(st->header);
	trail_gguf_free(st->gg);
	for (size_t i = 0; i < st->nshard; i++)
		trail_st_free(st->shard[i]);
	trail_free(st->shard);
	json_decref(st->wmap);
	trail_free(st->path);
	trail_free(st);
}

const json_t *trail_st_metadata(const trail_st *st)
{
	return json_object_get(st->header, "__metadata__");
}

int trail_st_has(const trail_st *st, const char *name)
{
	if (st->gg)
		return trail_gguf_find_hf(st->gg, name) >= 0;
	if (st->wmap)
		return json_object_get(st->wmap, name) != NULL;
	return strcmp(name, "__metadata__") && json_object_get(st->header, name) != NULL;
}

size_t trail_st_count(const trail_st *st)
{
	if (st->gg)
		return trail_gguf_count(st->gg);
	if (st->wmap)
		return json_object_size(st->wmap);
	return json_object_size(st->header) - (json_object_get(st->header, "__metadata__") ? 1 : 0);
}

const char *trail_st_name(const trail_st *st, size_t i)
{
	const char *k;
	json_t *v;
	size_t n = 0;
	if (st->gg)
		return trail_gguf_hf_name(st->gg, i);
	json_object_foreach(st->wmap ? st->wmap : st->header, k, v) {
		if (!strcmp(k, "__metadata__") && !st->wmap)
			continue;
		if (n++ == i)
			return k;
	}
	return NULL;
}

static float half_to_float(uint16_t h)
{
	uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, f;
	if (e == 0) {
		if (m == 0) {
			f = s;
		} else { /* subnormal */
			e = 1;
			while (!(m & 0x400)) {
				m <<= 1;
				e--;
			}
			m &= 0x3ff;
			f = s | (e + 112) << 23 | m << 13;
		}
	} else if (e == 31) {
		f = s | 0x7f800000 | m << 13;
	} else {
		f = s | (e + 112) << 23 | m << 13;
	}
	float out;
	memcpy(&out, &f, 4);
	return out;
}

int trail_st_read_f32(const trail_st *st, const char *name, const int64_t *shape, int ndim,
		      float *dst, trail_error *err)
{
	if (st->gg) {
		int i = trail_gguf_find_hf(st->gg, name);
		return i < 0 ? trail_error_at(err, TRAIL_EDATA, st->path, 0, "tensor %s is missing", name)
			     : trail_gguf_read_hf(st->gg, (size_t)i, shape, ndim, dst, err);
	}
	if (st->wmap) {
		json_t *k = json_object_get(st->wmap, name);
		return !k ? trail_error_at(err, TRAIL_EDATA, st->path, 0, "tensor %s is missing", name)
			  : trail_st_read_f32(st->shard[json_integer_value(k)], name, shape, ndim, dst, err);
	}
	json_t *t = json_object_get(st->header, name);
	if (!t || !strcmp(name, "__metadata__"))
		return trail_error_at(err, TRAIL_EDATA, st->path, 0, "tensor %s is missing", name);
	json_t *sh = json_object_get(t, "shape");
	const char *dt = json_string_value(json_object_get(t, "dtype"));
	size_t n = 1;
	int ok = json_is_array(sh) && json_array_size(sh) == (size_t)ndim;
	for (int i = 0; ok && i < ndim; i++) {
		ok = json_integer_value(json_array_get(sh, (size_t)i)) == shape[i];
		n *= (size_t)shape[i];
	}
	if (!ok) {
		char *got = json_dumps(sh, JSON_COMPACT), want[160];
		int w = snprintf(want, sizeof want, "[");
		for (int i = 0; i < ndim && w < (int)sizeof want - 24; i++)
			w += snprintf(want + w, sizeof want - (size_t)w, "%s%lld", i ? "," : "", (long long)shape[i]);
		snprintf(want + w, sizeof want - (size_t)w, "]");
		int rc = trail_error_at(err, TRAIL_EDATA, st->path, 0, "tensor %s has shape %s, expected %s", name,
					got ? got : "?", want);
		free(got);
		return rc;
	}
	json_t *off = json_object_get(t, "data_offsets");
	size_t b = (size_t)json_integer_value(json_array_get(off, 0));
	size_t e = (size_t)json_integer_value(json_array_get(off, 1));
	const uint8_t *p = st->data + b;
	size_t width = !dt ? 0 : !strcmp(dt, "F32") ? 4 : (!strcmp(dt, "F16") || !strcmp(dt, "BF16")) ? 2 : 0;
	if (!width)
		return trail_error_at(err, TRAIL_EDATA, st->path, 0, "tensor %s: dtype %s not supported (F32, F16, BF16)",
				      name, dt ? dt : "?");
	if (e - b != n * width)
		return trail_error_at(err, TRAIL_EDATA, st->path, 0, "tensor %s: %zu bytes for %zu elements", name,
				      e - b, n);
	if (width == 4) {
		memcpy(dst, p, n * 4);
	} else if (!strcmp(dt, "F16")) {
		for (size_t i = 0; i < n; i++)
			dst[i] = half_to_float((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
	} else {
		for (size_t i = 0; i < n; i++) {
			uint32_t f = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
			memcpy(&dst[i], &f, 4);
		}
	}
	return TRAIL_OK;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const trail_st_tensor *)a)->name, ((const trail_st_tensor *)b)->name);
}

int trail_st_write(const char *path, const trail_st_tensor *t, size_t n, const json_t *metadata,
		   trail_error *err)
{
	trail_st_tensor *s = trail_malloc((n ? n : 1) * sizeof *s);
	json_t *h = json_object();
	char *hj = NULL;
	size_t hl, off = 0;
	trail_buf out = {0};
	int rc = TRAIL_OK;
	if (!s || !h) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto done;
	}
	memcpy(s, t, n * sizeof *s);
	qsort(s, n, sizeof *s, by_name);
	for (size_t i = 0; i < n; i++) {
		size_t cnt = 1;
		json_t *shape = json_array();
		for (int d = 0; d < s[i].ndim; d++) {
			cnt *= (size_t)s[i].shape[d];
			json_array_append_new(shape, json_integer(s[i].shape[d]));
		}
		json_object_set_new(h, s[i].name, json_pack("{s:s, s:o, s:[I,I]}", "dtype", "F32", "shape", shape,
							   "data_offsets", (json_int_t)off, (json_int_t)(off + 4 * cnt)));
		off += 4 * cnt;
	}
	if (metadata)
		json_object_set(h, "__metadata__", (json_t *)metadata);
	if ((rc = trail_jcs(h, &hj, &hl, err)))
		goto done;
	size_t pad = (8 - hl % 8) % 8;
	uint8_t len8[8];
	for (int i = 0; i < 8; i++)
		len8[i] = (uint8_t)((hl + pad) >> (8 * i));
	if (trail_buf_put(&out, len8, 8) || trail_buf_put(&out, hj, hl) || trail_buf_put(&out, "        ", pad)) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		size_t cnt = 1;
		for (int d = 0; d < s[i].ndim; d++)
			cnt *= (size_t)s[i].shape[d];
		if (trail_buf_put(&out, s[i].data, 4 * cnt)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto done;
		}
	}
	rc = trail_write_atomic(path, out.p, out.n, 0644, err);
done:
	trail_buf_release(&out);
	trail_free(hj);
	trail_free(s);
	json_decref(h);
	return rc;
}
