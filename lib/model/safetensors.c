#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model.h"

#define HEADER_MAX (64u << 20)

struct trail_st {
	trail_map map;
	json_t *header;
	const uint8_t *data; /* start of the byte buffer */
	size_t datalen;
	char *path;
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

int trail_st_open(const char *path, trail_st **out, trail_error *err)
{
	trail_st *st = trail_calloc(1, sizeof *st);
	uint64_t hl = 0;
	int rc;
	*out = NULL;
	if (!st || !(st->path = trail_strdup(path)))
		return trail_free(st), trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if ((rc = trail_map_file(path, &st->map, err)))
		goto fail;
	const uint8_t *p = st->map.data;
	if (st->map.len < 8) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "not a safetensors file (too short)");
		goto fail;
	}
	for (int i = 7; i >= 0; i--)
		hl = hl << 8 | p[i];
	if (hl == 0 || hl > HEADER_MAX || hl > st->map.len - 8) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "not a safetensors file (header length %llu)",
				    (unsigned long long)hl);
		goto fail;
	}
	if ((rc = trail_json_parse((const char *)p + 8, hl, path, &st->header, err)) ||
	    !json_is_object(st->header)) {
		rc = trail_error_at(err, TRAIL_EDATA, path, 0, "safetensors header is not a JSON object");
		goto fail;
	}
	st->data = p + 8 + hl;
	st->datalen = st->map.len - 8 - hl;
	if ((rc = check_layout(st, err)))
		goto fail;
	*out = st;
	return TRAIL_OK;
fail:
	trail_st_free(st);
	return rc;
}

void trail_st_free(trail_st *st)
{
	if (!st)
		return;
	trail_unmap(&st->map);
	json_decref(st->header);
	trail_free(st->path);
	trail_free(st);
}

const json_t *trail_st_metadata(const trail_st *st)
{
	return json_object_get(st->header, "__metadata__");
}

int trail_st_has(const trail_st *st, const char *name)
{
	return strcmp(name, "__metadata__") && json_object_get(st->header, name) != NULL;
}

size_t trail_st_count(const trail_st *st)
{
	return json_object_size(st->header) - (json_object_get(st->header, "__metadata__") ? 1 : 0);
}

const char *trail_st_name(const trail_st *st, size_t i)
{
	const char *k;
	json_t *v;
	size_t n = 0;
	json_object_foreach(st->header, k, v) {
		if (!strcmp(k, "__metadata__"))
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
	json_t *t = json_object_get(st->header, name);
	if (!t)
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
