/*
 * GGUF, llama.cpp's model file (versions 2 and 3, little-endian): reading
 * it through a mapping, every count, length, offset and size checked
 * against the file before anything is touched, and writing it.
 *
 * Layout: "GGUF", u32 version, u64 tensor count, u64 key/value count;
 * the key/values (a string key, a u32 value type, the value; strings are
 * a u64 length and bytes, arrays a u32 element type, a u64 count and the
 * elements, possibly arrays again); the tensor infos (a string name, u32
 * n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64 offset into
 * the data); padding to general.alignment (32 when absent); the data, each
 * tensor at a multiple of the alignment.
 *
 * The Llama family maps onto Hugging Face's checkpoints one to one: a
 * tensor with ne [in, out] is nn.Linear's weight [out, in]; names as in
 * gguf_names below; the metadata as in trail_gguf_config. llama.cpp's
 * converter reorders the rows of q_proj and k_proj for architecture
 * "llama" (its rotary embedding pairs neighbouring rows, Hugging Face's the
 * two halves of a head): row h*hd + 2i + s of the file is row
 * h*hd + s*hd/2 + i of the checkpoint, which reading undoes and writing
 * does; "qwen2" is stored as it is.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "model/model_int.h"
#include "model/model.h"

enum { VT_U8, VT_I8, VT_U16, VT_I16, VT_U32, VT_I32, VT_F32, VT_BOOL, VT_STR, VT_ARR, VT_U64, VT_I64, VT_F64, VT_N };
static const char *const vt_name[VT_N] = {"u8",  "i8",    "u16",    "i16",   "u32", "i32", "f32",
					   "bool", "string", "array", "u64", "i64", "f64"};
static const unsigned vt_width[VT_N] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

#define MAX_DEPTH 3              /* arrays of arrays of arrays */
#define MAX_COUNT ((uint64_t)1 << 24) /* tensors, keys */
#define MAX_ELEMS ((uint64_t)1 << 50)

typedef struct gkv {
	const char *key; /* NUL-terminated copy */
	uint32_t type, atype; /* atype: the element type of an array */
	uint64_t alen;
	const uint8_t *val;   /* the value (an array: its first element) in the file */
} gkv;

typedef struct gten {
	char *name;
	uint32_t nd, type;
	uint64_t ne[4], off, size;
	char hf[96]; /* the Hugging Face name, or the GGUF name when it has none */
	int qk;      /* 1: q_proj, 2: k_proj rows to put back in Hugging Face's order */
} gten;

struct trail_gguf {
	trail_map map;
	const uint8_t *p;
	size_t n;
	char *path;
	uint32_t version;
	uint64_t nkv, nt;
	gkv *kv;
	gten *t;
	uint64_t align;
	size_t data; /* offset of the data section */
	int permute, nh, nkvh; /* the "llama" row order, and the head counts it needs */
};

/* ---- types ------------------------------------------------------------------------- */

/* The ggml types read here, and the names of some others for refusals. */
static const struct {
	uint32_t id;
	const char *name;
	unsigned blck, bytes; /* elements per block, bytes per block; 0: not read */
} ggml_types[] = {
	{TRAIL_GGUF_F32, "F32", 1, 4},   {TRAIL_GGUF_F16, "F16", 1, 2},   {2, "Q4_0", 0, 0},
	{3, "Q4_1", 0, 0},               {6, "Q5_0", 0, 0},               {7, "Q5_1", 0, 0},
	{TRAIL_GGUF_Q8_0, "Q8_0", 32, 34}, {9, "Q8_1", 0, 0},             {10, "Q2_K", 0, 0},
	{11, "Q3_K", 0, 0},              {12, "Q4_K", 0, 0},              {13, "Q5_K", 0, 0},
	{14, "Q6_K", 0, 0},              {15, "Q8_K", 0, 0},              {16, "IQ2_XXS", 0, 0},
	{17, "IQ2_XS", 0, 0},            {18, "IQ3_XXS", 0, 0},           {19, "IQ1_S", 0, 0},
	{20, "IQ4_NL", 0, 0},            {21, "IQ3_S", 0, 0},             {22, "IQ2_S", 0, 0},
	{23, "IQ4_XS", 0, 0},            {24, "I8", 0, 0},                {25, "I16", 0, 0},
	{26, "I32", 0, 0},               {27, "I64", 0, 0},               {28, "F64", 0, 0},
	{29, "IQ1_M", 0, 0},             {TRAIL_GGUF_BF16, "BF16", 1, 2}, {34, "TQ1_0", 0, 0},
	{35, "TQ2_0", 0, 0},
};

static int type_index(uint32_t id)
{
	for (size_t i = 0; i < sizeof ggml_types / sizeof *ggml_types; i++)
		if (ggml_types[i].id == id)
			return (int)i;
	return -1;
}

const char *trail_gguf_type_name(int type)
{
	int i = type_index((uint32_t)type);
	return i < 0 ? NULL : ggml_types[i].name;
}

static float h2f(uint16_t h)
{
	uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, f;
	if (e == 0) {
		if (m == 0) {
			f = s;
		} else { /* subnormal: normalise */
			e = 1;
			while (!(m & 0x400))
				m <<= 1, e--;
			f = s | (e + 112) << 23 | (m & 0x3ff) << 13;
		}
	} else if (e == 31) {
		f = s | 0x7f800000 | m << 13;
	} else {
		f = s | (e + 112) << 23 | m << 13;
	}
	float x;
	memcpy(&x, &f, 4);
	return x;
}

/* Round to nearest even, as numpy's float16 (and ggml's) do. */
static uint16_t f2h(float x)
{
	uint32_t f;
	memcpy(&f, &x, 4);
	uint32_t s = (f >> 16) & 0x8000, e = (f >> 23) & 0xff, m = f & 0x7fffff;
	if (e == 0xff)
		return (uint16_t)(s | 0x7c00 | (m ? 0x200 : 0));
	int ne = (int)e - 127 + 15;
	if (ne >= 31)
		return (uint16_t)(s | 0x7c00);
	if (ne <= 0) { /* subnormal or zero */
		if (ne < -10)
			return (uint16_t)s;
		m |= 0x800000;
		unsigned sh = (unsigned)(14 - ne);
		uint32_t h = m >> sh, rem = m & ((1u << sh) - 1), half = 1u << (sh - 1);
		if (rem > half || (rem == half && (h & 1)))
			h++;
		return (uint16_t)(s | h);
	}
	uint32_t h = (uint32_t)ne << 10 | m >> 13, rem = m & 0x1fff;
	if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
		h++; /* may carry into the exponent, up to infinity: right */
	return (uint16_t)(s | h);
}

static uint16_t f2bf(float x)
{
	uint32_t f;
	memcpy(&f, &x, 4);
	if ((f & 0x7fffffff) > 0x7f800000)
		return (uint16_t)((f >> 16) | 64); /* a quiet NaN */
	return (uint16_t)((f + (0x7fff + ((f >> 16) & 1))) >> 16);
}

static float bf2f(uint16_t b)
{
	uint32_t f = (uint32_t)b << 16;
	float x;
	memcpy(&x, &f, 4);
	return x;
}

float trail_gguf_half(uint16_t h)
{
	return h2f(h);
}

uint16_t trail_gguf_to_half(float x)
{
	return f2h(x);
}

uint16_t trail_gguf_to_bf16(float x)
{
	return f2bf(x);
}

/* ---- reading ------------------------------------------------------------------------ */

typedef struct cur {
	const uint8_t *p;
	size_t n, at;
} cur;

static uint64_t le(const uint8_t *p, unsigned w)
{
	uint64_t v = 0;
	for (unsigned i = w; i-- > 0;)
		v = v << 8 | p[i];
	return v;
}

static int need(const trail_gguf *g, const cur *c, uint64_t k, const char *what, trail_error *err)
{
	if (k > c->n - c->at)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "truncated: %s at byte %zu needs %llu bytes, the file has %zu",
				      what, c->at, (unsigned long long)k, c->n);
	return TRAIL_OK;
}

static int rd(const trail_gguf *g, cur *c, unsigned w, uint64_t *v, const char *what, trail_error *err)
{
	int rc = need(g, c, w, what, err);
	if (!rc) {
		*v = le(c->p + c->at, w);
		c->at += w;
	}
	return rc;
}

/* A string: its bytes stay in the file (*s, *len). */
static int rd_str(const trail_gguf *g, cur *c, const uint8_t **s, uint64_t *len, const char *what, trail_error *err)
{
	int rc = rd(g, c, 8, len, what, err);
	if (!rc && !(rc = need(g, c, *len, what, err))) {
		*s = c->p + c->at;
		c->at += (size_t)*len;
	}
	return rc;
}

/* Skip one value of type t, checking every length on the way. */
static int skip_value(const trail_gguf *g, cur *c, uint32_t t, int depth, const char *key, trail_error *err)
{
	uint64_t v, n;
	const uint8_t *s;
	if (t >= VT_N)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s: value type %u is not a GGUF type", key, t);
	if (t == VT_STR)
		return rd_str(g, c, &s, &v, key, err);
	if (t != VT_ARR) {
		int rc = need(g, c, vt_width[t], key, err);
		if (!rc && t == VT_BOOL && c->p[c->at] > 1)
			rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s: a bool of %u", key, c->p[c->at]);
		if (!rc)
			c->at += vt_width[t];
		return rc;
	}
	uint64_t at;
	int rc;
	if ((rc = rd(g, c, 4, &at, key, err)) || (rc = rd(g, c, 8, &n, key, err)))
		return rc;
	if (at >= VT_N)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s: array of type %llu, not a GGUF type", key,
				      (unsigned long long)at);
	if (at == VT_ARR && depth >= MAX_DEPTH)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s: arrays nested deeper than %d", key, MAX_DEPTH);
	/* every element takes at least one byte (a string eight): a count past that is a lie */
	uint64_t min = at == VT_STR || at == VT_ARR ? (at == VT_STR ? 8 : 12) : vt_width[at];
	if (n > (c->n - c->at) / min)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0,
				      "key %s: %llu elements of %s at byte %zu past end of file (%zu bytes)", key,
				      (unsigned long long)n, vt_name[at], c->at, c->n);
	if (at != VT_STR && at != VT_ARR) {
		c->at += (size_t)(n * min);
		if (at == VT_BOOL)
			for (uint64_t i = 0; i < n; i++)
				if (c->p[c->at - n + i] > 1)
					return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s: a bool of %u", key,
							      c->p[c->at - n + i]);
		return TRAIL_OK;
	}
	for (uint64_t i = 0; i < n; i++)
		if ((rc = skip_value(g, c, (uint32_t)at, depth + 1, key, err)))
			return rc;
	return TRAIL_OK;
}

static const gkv *kv_get(const trail_gguf *g, const char *key)
{
	for (uint64_t i = 0; i < g->nkv; i++)
		if (!strcmp(g->kv[i].key, key))
			return &g->kv[i];
	return NULL;
}

/* An integer of any integer type: 0 found, 1 absent; a wrong type or range is an error. */
static int kv_int(const trail_gguf *g, const char *key, int64_t *out, trail_error *err)
{
	const gkv *k = kv_get(g, key);
	if (!k)
		return 1;
	static const int sgn[VT_N] = {[VT_I8] = 1, [VT_I16] = 1, [VT_I32] = 1, [VT_I64] = 1};
	if (k->type > VT_I64 || k->type == VT_F32 || k->type == VT_BOOL || k->type == VT_STR || k->type == VT_ARR)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s is a %s, not an integer", key,
				      k->type < VT_N ? vt_name[k->type] : "?");
	unsigned w = vt_width[k->type];
	uint64_t v = le(k->val, w);
	if (sgn[k->type] && w < 8 && (v >> (8 * w - 1)) & 1)
		v |= ~(uint64_t)0 << (8 * w);
	if (!sgn[k->type] && v > INT64_MAX)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s: %llu is out of range", key, (unsigned long long)v);
	*out = (int64_t)v;
	return 0;
}

/* The shortest decimal that reads back as the same float: 1e-05, not 9.99999974737875e-06. */
static double short_float(float f)
{
	char b[32];
	for (int p = 1; p <= 9; p++) {
		snprintf(b, sizeof b, "%.*g", p, (double)f);
		if ((float)strtod(b, NULL) == f)
			return strtod(b, NULL);
	}
	return (double)f;
}

static int kv_num(const trail_gguf *g, const char *key, double *out, trail_error *err)
{
	const gkv *k = kv_get(g, key);
	if (!k)
		return 1;
	if (k->type == VT_F32) {
		uint32_t u = (uint32_t)le(k->val, 4);
		float f;
		memcpy(&f, &u, 4);
		*out = short_float(f);
		return 0;
	}
	if (k->type == VT_F64) {
		uint64_t u = le(k->val, 8);
		memcpy(out, &u, 8);
		return 0;
	}
	int64_t v;
	int rc = kv_int(g, key, &v, err);
	if (!rc)
		*out = (double)v;
	return rc;
}

/* A string value: its bytes in the file. */
static int kv_str(const trail_gguf *g, const char *key, const char **s, size_t *len, trail_error *err)
{
	const gkv *k = kv_get(g, key);
	if (!k)
		return 1;
	if (k->type != VT_STR)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s is a %s, not a string", key,
				      k->type < VT_N ? vt_name[k->type] : "?");
	*len = (size_t)le(k->val, 8);
	*s = (const char *)k->val + 8;
	return 0;
}

static int kv_bool(const trail_gguf *g, const char *key, int *out, trail_error *err)
{
	const gkv *k = kv_get(g, key);
	if (!k)
		return 1;
	if (k->type != VT_BOOL)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s is a %s, not a bool", key,
				      k->type < VT_N ? vt_name[k->type] : "?");
	*out = k->val[0];
	return 0;
}

static int check_tensors(trail_gguf *g, cur *c, trail_error *err);

int trail_gguf_parse(const void *buf, size_t len, const char *name, trail_gguf **out, trail_error *err)
{
	trail_gguf *g = trail_calloc(1, sizeof *g);
	int rc;
	*out = NULL;
	if (!g || !(g->path = trail_strdup(name ? name : "gguf"))) {
		trail_free(g);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	g->p = buf;
	g->n = len;
	cur c = {g->p, g->n, 0};
	uint64_t v;
	if (len < 4 || memcmp(buf, "GGUF", 4)) {
		rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "not a GGUF file (no GGUF magic)");
		goto fail;
	}
	c.at = 4;
	if ((rc = rd(g, &c, 4, &v, "the version", err)))
		goto fail;
	g->version = (uint32_t)v;
	if (v != 2 && v != 3) {
		rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "GGUF version %u: only versions 2 and 3 are read%s", g->version,
				    v > 0xffff ? " (a big-endian file?)" : v == 1 ? " (convert it again with a newer llama.cpp)" : "");
		goto fail;
	}
	if ((rc = rd(g, &c, 8, &g->nt, "the tensor count", err)) || (rc = rd(g, &c, 8, &g->nkv, "the key count", err)))
		goto fail;
	/* a key takes at least 12 bytes and a tensor info 24: counts past that are refused before allocating */
	if (g->nkv > MAX_COUNT || g->nt > MAX_COUNT || g->nkv > (len - c.at) / 13 || g->nt > (len - c.at) / 24) {
		rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "%llu keys and %llu tensors do not fit in %zu bytes",
				    (unsigned long long)g->nkv, (unsigned long long)g->nt, len);
		goto fail;
	}
	if (!(g->kv = trail_calloc(g->nkv + 1, sizeof *g->kv)) || !(g->t = trail_calloc(g->nt + 1, sizeof *g->t))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	for (uint64_t i = 0; i < g->nkv; i++) {
		const uint8_t *k;
		uint64_t kl, t;
		char what[48];
		snprintf(what, sizeof what, "key %llu", (unsigned long long)i);
		if ((rc = rd_str(g, &c, &k, &kl, what, err)))
			goto fail;
		if (!kl || kl > 65535 || memchr(k, 0, (size_t)kl)) {
			rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "%s: a key of %llu bytes", what, (unsigned long long)kl);
			goto fail;
		}
		gkv *e = &g->kv[i];
		if (!(e->key = trail_strndup((const char *)k, (size_t)kl))) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto fail;
		}
		if (kv_get(g, e->key) != e) {
			rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s appears twice", e->key);
			goto fail;
		}
		if ((rc = rd(g, &c, 4, &t, e->key, err)))
			goto fail;
		e->type = (uint32_t)t;
		e->val = g->p + c.at;
		if (t == VT_ARR && c.n - c.at >= 12) {
			e->atype = (uint32_t)le(g->p + c.at, 4);
			e->alen = le(g->p + c.at + 4, 8);
			e->val = g->p + c.at + 12;
		}
		if ((rc = skip_value(g, &c, e->type, 1, e->key, err)))
			goto fail;
	}
	int64_t al = 32;
	if ((rc = kv_int(g, "general.alignment", &al, err)) < 0)
		goto fail;
	const gkv *ak = kv_get(g, "general.alignment");
	if (ak && (ak->type != VT_U32 || al < 1 || al > (1 << 20) || (al & (al - 1)))) {
		rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "general.alignment %lld is not a power of two below 2^20 (u32)",
				    (long long)al);
		goto fail;
	}
	g->align = (uint64_t)al;
	if ((rc = check_tensors(g, &c, err)))
		goto fail;
	*out = g;
	return TRAIL_OK;
fail:
	trail_gguf_free(g);
	return rc;
}

/* ---- tensors ------------------------------------------------------------------------ */

typedef struct span {
	uint64_t b, e;
	uint64_t i;
} span;

static int by_off(const void *x, const void *y)
{
	const span *a = x, *b = y;
	return a->b < b->b ? -1 : a->b > b->b;
}

static int by_name(const void *x, const void *y)
{
	return strcmp((*(const gten *const *)x)->name, (*(const gten *const *)y)->name);
}

/* Tensor infos, then every name, shape, type, offset and size against the data section. */
static int check_tensors(trail_gguf *g, cur *c, trail_error *err)
{
	int rc;
	for (uint64_t i = 0; i < g->nt; i++) {
		gten *t = &g->t[i];
		const uint8_t *s;
		uint64_t sl, v;
		char what[48];
		snprintf(what, sizeof what, "tensor info %llu", (unsigned long long)i);
		if ((rc = rd_str(g, c, &s, &sl, what, err)))
			return rc;
		if (!sl || sl > 255 || memchr(s, 0, (size_t)sl))
			return trail_error_at(err, TRAIL_EDATA, g->path, 0, "%s: a name of %llu bytes", what, (unsigned long long)sl);
		if (!(t->name = trail_strndup((const char *)s, (size_t)sl)))
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		if ((rc = rd(g, c, 4, &v, t->name, err)))
			return rc;
		if (v < 1 || v > 4)
			return trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensor %s: %llu dimensions (1 to 4)", t->name,
					      (unsigned long long)v);
		t->nd = (uint32_t)v;
		uint64_t cnt = 1;
		for (uint32_t d = 0; d < t->nd; d++) {
			if ((rc = rd(g, c, 8, &t->ne[d], t->name, err)))
				return rc;
			if (t->ne[d] < 1 || t->ne[d] > ((uint64_t)1 << 40) || t->ne[d] > MAX_ELEMS / cnt)
				return trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensor %s: dimension %u is %llu (shape product past 2^50)",
						      t->name, d, (unsigned long long)t->ne[d]);
			cnt *= t->ne[d];
		}
		if ((rc = rd(g, c, 4, &v, t->name, err)) || (rc = rd(g, c, 8, &t->off, t->name, err)))
			return rc;
		t->type = (uint32_t)v;
		int ti = type_index(t->type);
		if (ti < 0)
			return trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensor %s: ggml type %u is not known", t->name, t->type);
		if (!ggml_types[ti].blck)
			return trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensor %s: type %s is not supported (F32, F16, BF16, Q8_0)",
					      t->name, ggml_types[ti].name);
		if (t->ne[0] % ggml_types[ti].blck)
			return trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensor %s: %s rows of %llu elements (blocks of %u)",
					      t->name, ggml_types[ti].name, (unsigned long long)t->ne[0], ggml_types[ti].blck);
		t->size = cnt / ggml_types[ti].blck * ggml_types[ti].bytes; /* below 2^56 */
	}
	gten **by = trail_malloc((g->nt + 1) * sizeof *by);
	if (!by)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (uint64_t i = 0; i < g->nt; i++)
		by[i] = &g->t[i];
	qsort(by, g->nt, sizeof *by, by_name);
	for (uint64_t i = 1; i < g->nt; i++)
		if (!strcmp(by[i]->name, by[i - 1]->name)) {
			rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensor %s appears twice", by[i]->name);
			trail_free(by);
			return rc;
		}
	trail_free(by);
	/* the data section starts at the next multiple of the alignment */
	uint64_t pad = (g->align - c->at % g->align) % g->align;
	if (g->nt && pad > c->n - c->at)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "truncated: the data section would start at byte %llu, the file has %zu",
				      (unsigned long long)(c->at + pad), c->n);
	g->data = c->at + (size_t)(pad > c->n - c->at ? c->n - c->at : pad);
	size_t dlen = c->n - g->data;
	span *v = trail_malloc((g->nt + 1) * sizeof *v);
	if (!v)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	rc = TRAIL_OK;
	for (uint64_t i = 0; i < g->nt && !rc; i++) {
		gten *t = &g->t[i];
		if (t->off % g->align)
			rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensor %s: offset %llu is not a multiple of the alignment %llu",
					    t->name, (unsigned long long)t->off, (unsigned long long)g->align);
		else if (t->off > dlen || t->size > dlen - t->off)
			rc = trail_error_at(err, TRAIL_EDATA, g->path, 0,
					    "tensor %s: data at offset %llu + size %llu past end of file (%zu bytes)", t->name,
					    (unsigned long long)t->off, (unsigned long long)t->size, c->n);
		v[i] = (span){t->off, t->off + t->size, i};
	}
	if (!rc) {
		qsort(v, g->nt, sizeof *v, by_off);
		for (uint64_t i = 1; i < g->nt && !rc; i++)
			if (v[i].b < v[i - 1].e)
				rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensors %s and %s overlap at data offset %llu",
						    g->t[v[i - 1].i].name, g->t[v[i].i].name, (unsigned long long)v[i].b);
	}
	trail_free(v);
	return rc;
}

int trail_gguf_open(const char *path, trail_gguf **out, trail_error *err)
{
	trail_map mp;
	int rc;
	*out = NULL;
	if ((rc = trail_map_file(path, &mp, err)))
		return rc;
	if ((rc = trail_gguf_parse(mp.data ? mp.data : "", mp.len, path, out, err))) {
		trail_unmap(&mp);
		return rc;
	}
	(*out)->map = mp;
	return TRAIL_OK;
}

int trail_gguf_is(const char *path)
{
	FILE *f = fopen(path, "rb");
	char m[4];
	int is = f && fread(m, 1, 4, f) == 4 && !memcmp(m, "GGUF", 4);
	if (f)
		fclose(f);
	return is;
}

void trail_gguf_free(trail_gguf *g)
{
	if (!g)
		return;
	for (uint64_t i = 0; g->kv && i < g->nkv; i++)
		trail_free((char *)g->kv[i].key);
	for (uint64_t i = 0; g->t && i < g->nt; i++)
		trail_free(g->t[i].name);
	trail_free(g->kv);
	trail_free(g->t);
	trail_unmap(&g->map);
	trail_free(g->path);
	trail_free(g);
}

uint32_t trail_gguf_version(const trail_gguf *g)
{
	return g->version;
}

size_t trail_gguf_count(const trail_gguf *g)
{
	return (size_t)g->nt;
}

size_t trail_gguf_kv_count(const trail_gguf *g)
{
	return (size_t)g->nkv;
}

const char *trail_gguf_kv_key(const trail_gguf *g, size_t i, int *type)
{
	if (i >= g->nkv)
		return NULL;
	if (type)
		*type = (int)g->kv[i].type;
	return g->kv[i].key;
}

int trail_gguf_tensor(const trail_gguf *g, size_t i, const char **name, int *type, int *nd, int64_t ne[4])
{
	if (i >= g->nt)
		return TRAIL_EUSAGE;
	const gten *t = &g->t[i];
	*name = t->name;
	*type = (int)t->type;
	*nd = (int)t->nd;
	for (int d = 0; d < 4; d++)
		ne[d] = d < (int)t->nd ? (int64_t)t->ne[d] : 1;
	return TRAIL_OK;
}

/* Row r (ne[0] elements) of tensor t as floats. */
static void read_row(const trail_gguf *g, const gten *t, uint64_t r, float *dst)
{
	size_t n = (size_t)t->ne[0];
	const uint8_t *p = g->p + g->data + t->off;
	switch (t->type) {
	case TRAIL_GGUF_F32:
		memcpy(dst, p + r * n * 4, n * 4);
		break;
	case TRAIL_GGUF_F16:
		p += r * n * 2;
		for (size_t i = 0; i < n; i++)
			dst[i] = h2f((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
		break;
	case TRAIL_GGUF_BF16:
		p += r * n * 2;
		for (size_t i = 0; i < n; i++)
			dst[i] = bf2f((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
		break;
	case TRAIL_GGUF_Q8_0: /* blocks of 32: an fp16 scale, then 32 int8 */
		p += r * (n / 32) * 34;
		for (size_t b = 0; b < n / 32; b++, p += 34) {
			float d = h2f((uint16_t)(p[0] | p[1] << 8));
			for (int j = 0; j < 32; j++)
				dst[32 * b + (size_t)j] = d * (float)(int8_t)p[2 + j];
		}
		break;
	}
}

int trail_gguf_read(const trail_gguf *g, size_t i, float *dst)
{
	if (i >= g->nt)
		return TRAIL_EUSAGE;
	const gten *t = &g->t[i];
	uint64_t rows = 1;
	for (uint32_t d = 1; d < t->nd; d++)
		rows *= t->ne[d];
	for (uint64_t r = 0; r < rows; r++)
		read_row(g, t, r, dst + r * t->ne[0]);
	return TRAIL_OK;
}

/* ---- the Llama family --------------------------------------------------------------- */

/* Hugging Face's names, per block then the rest, beside GGUF's. */
static const char *const gguf_names[][2] = {
	{"input_layernorm.weight", "attn_norm.weight"},
	{"self_attn.q_proj.weight", "attn_q.weight"},
	{"self_attn.q_proj.bias", "attn_q.bias"},
	{"self_attn.k_proj.weight", "attn_k.weight"},
	{"self_attn.k_proj.bias", "attn_k.bias"},
	{"self_attn.v_proj.weight", "attn_v.weight"},
	{"self_attn.v_proj.bias", "attn_v.bias"},
	{"self_attn.o_proj.weight", "attn_output.weight"},
	{"post_attention_layernorm.weight", "ffn_norm.weight"},
	{"mlp.gate_proj.weight", "ffn_gate.weight"},
	{"mlp.up_proj.weight", "ffn_up.weight"},
	{"mlp.down_proj.weight", "ffn_down.weight"},
};
static const char *const gguf_globals[][2] = {
	{"model.embed_tokens.weight", "token_embd.weight"},
	{"model.norm.weight", "output_norm.weight"},
	{"lm_head.weight", "output.weight"},
};
#define NNAMES (sizeof gguf_names / sizeof *gguf_names)
#define NGLOBALS (sizeof gguf_globals / sizeof *gguf_globals)

/* GGUF's name of Hugging Face's (from 0) or the reverse (from 1); 0 when it has none. */
static int map_name(const char *in, int from, char *out, size_t n)
{
	for (size_t i = 0; i < NGLOBALS; i++)
		if (!strcmp(in, gguf_globals[i][from]))
			return snprintf(out, n, "%s", gguf_globals[i][!from]) > 0;
	const char *pre = from ? "blk." : "model.layers.";
	size_t pl = strlen(pre);
	if (strncmp(in, pre, pl))
		return 0;
	char *e;
	unsigned long l = strtoul(in + pl, &e, 10);
	if (e == in + pl || *e != '.' || l > 1u << 20 || (in[pl] == '0' && e != in + pl + 1))
		return 0;
	for (size_t i = 0; i < NNAMES; i++)
		if (!strcmp(e + 1, gguf_names[i][from]))
			return snprintf(out, n, "%s%lu.%s", from ? "model.layers." : "blk.", l, gguf_names[i][!from]) > 0;
	return 0;
}

int trail_gguf_name(const char *hf, char *out, size_t n)
{
	return map_name(hf, 0, out, n);
}

static const char *arch_of(const trail_gguf *g, trail_error *err, int *rc)
{
	const char *s;
	size_t n;
	*rc = kv_str(g, "general.architecture", &s, &n, err);
	if (*rc > 0)
		*rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "no general.architecture");
	if (*rc)
		return NULL;
	if (n == 5 && !memcmp(s, "llama", 5))
		return "llama";
	if (n == 5 && !memcmp(s, "qwen2", 5))
		return "qwen2";
	*rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "general.architecture %.*s is not built in (llama, qwen2)",
			     (int)(n > 64 ? 64 : n), s);
	return NULL;
}

static int find(const trail_gguf *g, const char *name)
{
	for (uint64_t i = 0; i < g->nt; i++)
		if (!strcmp(g->t[i].name, name))
			return (int)i;
	return -1;
}

/* Does llama3 rope scaling (c's) give the divisors ff[h2] within float rounding? */
static int ff_match(const trail_model_cfg *c, const float *ff, int h2)
{
	float *w = trail_malloc((size_t)h2 * sizeof *w);
	int ok = w != NULL;
	if (ok)
		trail_rope_freq_factors(c, w);
	for (int i = 0; ok && i < h2; i++)
		ok = fabs((double)w[i] - ff[i]) <= 1e-5 * fabs((double)ff[i]);
	trail_free(w);
	return ok;
}

/*
 * rope_freqs.weight: llama.cpp's divisors of the rotary frequencies, which
 * its converter writes for Hugging Face's llama3 rope_scaling (and nothing
 * else). The parameters: trail.rope.llama3.* where trail wrote the file;
 * else recovered from the divisors, which are 1 for short wavelengths,
 * factor for long ones and 1 / ((1 - s) / factor + s) between, with s
 * linear in 1 / wavelength: s = orig / (wl (high - low)) - low / (high - low),
 * so two points between give orig / low and high / low (low_freq_factor
 * taken as 1, as Llama 3.1 and 3.2 have it; the same frequencies for any
 * low with the same ratios). Either way the parameters must give back the
 * file's divisors, else the file is refused. *out: the rope_scaling
 * object, or NULL when every divisor is 1 (no scaling).
 */
static int llama3_scaling(const trail_gguf *g, const char *arch, int64_t hd, json_t **out, trail_error *err)
{
	*out = NULL;
	const gten *t = &g->t[find(g, "rope_freqs.weight")];
	int64_t h2 = hd / 2;
	if (hd < 2 || hd % 2 || t->nd != 1 || (int64_t)t->ne[0] != h2)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "rope_freqs.weight has %llu values, expected %lld (head width / 2)",
				      (unsigned long long)t->ne[0], (long long)h2);
	float *ff = trail_malloc((size_t)h2 * sizeof *ff);
	if (!ff)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	trail_gguf_read(g, (size_t)(t - g->t), ff);
	int rc = TRAIL_OK, flat = 1;
	for (int64_t i = 0; i < h2; i++) {
		if (!(ff[i] >= 1 && ff[i] <= 1e6) || (i && ff[i] < ff[i - 1] * (1 - 1e-6))) {
			rc = trail_error_at(err, TRAIL_EDATA, g->path, 0,
					    "rope_freqs.weight[%lld] = %g: llama3 rope scaling has divisors from 1 up, not decreasing",
					    (long long)i, (double)ff[i]);
			goto out;
		}
		flat &= ff[i] == 1;
	}
	double theta;
	char key[96];
	snprintf(key, sizeof key, "%s.rope.freq_base", arch);
	if ((rc = kv_num(g, key, &theta, err)) > 0)
		theta = 10000;
	if (rc < 0)
		goto out;
	rc = TRAIL_OK;
	trail_model_cfg c = {.head_dim = (int)hd, .rope_theta = theta, .rope_type = TRAIL_ROPE_LLAMA3};
	double low, high, factor;
	int64_t orig;
	int kf = kv_num(g, "trail.rope.llama3.factor", &factor, err), kl = kv_num(g, "trail.rope.llama3.low_freq_factor", &low, err),
	    kh = kv_num(g, "trail.rope.llama3.high_freq_factor", &high, err),
	    ko = kv_int(g, "trail.rope.llama3.original_max_position_embeddings", &orig, err);
	if (kf < 0 || kl < 0 || kh < 0 || ko < 0) {
		rc = kf < 0 ? kf : kl < 0 ? kl : kh < 0 ? kh : ko;
		goto out;
	}
	if (!kf && !kl && !kh && !ko) {
		c.rope_factor = factor, c.rope_low = low, c.rope_high = high, c.rope_orig = (int)orig;
	} else if (flat) {
		goto out; /* every wavelength short: the frequencies are unscaled */
	} else {
		c.rope_factor = ff[h2 - 1];
		c.rope_low = 1;
		int64_t a = -1, b = -1, i1 = -1; /* the first and last divisors between 1 and factor; the last 1 */
		for (int64_t i = 0; i < h2; i++) {
			if (ff[i] > 1 + 1e-6 && ff[i] < c.rope_factor * (1 - 1e-6))
				b = i, a = a < 0 ? i : a;
			if (ff[i] <= 1 + 1e-6)
				i1 = i;
		}
		int64_t ctx = 0;
		snprintf(key, sizeof key, "%s.context_length", arch);
		if ((rc = kv_int(g, key, &ctx, err)) < 0)
			goto out;
		rc = TRAIL_OK;
		/* candidates, the first that gives the divisors back: Llama 3.1's, the context length's */
		double cand[4][2] = {{4, 8192}, {4, (double)ctx}, {0, 0}, {0, 0}};
		int nc = 2;
		if (a >= 0 && b > a && c.rope_factor > 1) { /* two points between */
			double sv[2], x[2];
			for (int k = 0; k < 2; k++) {
				int64_t i = k ? b : a;
				sv[k] = (1 / (double)ff[i] - 1 / c.rope_factor) / (1 - 1 / c.rope_factor);
				x[k] = pow(theta, -(double)(2 * i) / (double)hd) / (2 * M_PI); /* 1 / wavelength */
			}
			double slope = (sv[1] - sv[0]) / (x[1] - x[0]), off = slope * x[0] - sv[0]; /* s = slope x - off */
			if (off > 0 && slope > 0)
				cand[nc][0] = round((1 + 1 / off) * 1e4) / 1e4, cand[nc++][1] = (double)lround(slope / off);
		} else if (a >= 0 && c.rope_factor > 1) { /* one point between: with Llama 3.1's high_freq_factor 4 */
			double sv = (1 / (double)ff[a] - 1 / c.rope_factor) / (1 - 1 / c.rope_factor);
			cand[nc][0] = 4, cand[nc++][1] = (double)lround((3 * sv + 1) * 2 * M_PI * pow(theta, (double)(2 * a) / (double)hd));
		} else if (a < 0 && i1 + 1 < h2) { /* none between: any boundaries between the last 1 and the first factor */
			double wl1 = i1 < 0 ? 0 : 2 * M_PI * pow(theta, (double)(2 * i1) / (double)hd),
			       wl2 = 2 * M_PI * pow(theta, (double)(2 * (i1 + 1)) / (double)hd), o = ceil(wl2) - 1;
			if (o > wl1 && o >= 1)
				cand[nc][0] = o / 4 > wl1 ? 4 : wl1 > 0 ? (1 + o / wl1) / 2 : 4, cand[nc++][1] = o;
		}
		int k = nc;
		while (k-- > 0) { /* the fitted ones first */
			c.rope_high = cand[k][0];
			c.rope_orig = (int)cand[k][1];
			if (c.rope_high > 1 && c.rope_orig >= 1 && ff_match(&c, ff, (int)h2))
				break;
		}
	}
	if (!(c.rope_factor > 0) || !(c.rope_high > c.rope_low) || c.rope_orig < 1 || !ff_match(&c, ff, (int)h2)) {
		rc = trail_error_at(err, TRAIL_EDATA, g->path, 0,
				    "rope_freqs.weight is not llama3 rope scaling (the nearest: factor %g, low_freq_factor %g, "
				    "high_freq_factor %g, original_max_position_embeddings %d)",
				    c.rope_factor, c.rope_low, c.rope_high, c.rope_orig);
		goto out;
	}
	*out = json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3", "factor", c.rope_factor, "low_freq_factor",
			 c.rope_low, "high_freq_factor", c.rope_high, "original_max_position_embeddings", c.rope_orig);
	if (!*out)
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
out:
	trail_free(ff);
	return rc;
}

/*
 * The metadata as a config.json, read by llama.c like any other, so that a
 * GGUF base meets the same checks: <arch>.block_count, embedding_length,
 * feed_forward_length, attention.head_count(_kv), attention.key_length,
 * attention.layer_norm_rms_epsilon, rope.freq_base, rope.scaling.*,
 * context_length and vocab_size (else the embeddings' rows); tied when
 * there is no output.weight.
 */
int trail_gguf_config_json(const trail_gguf *g, json_t **out, trail_error *err)
{
	int rc;
	*out = NULL;
	const char *arch = arch_of(g, err, &rc);
	if (!arch)
		return rc;
	json_t *j = json_pack("{s:s, s:[s]}", "model_type", arch, "architectures",
			      !strcmp(arch, "llama") ? "LlamaForCausalLM" : "Qwen2ForCausalLM");
	if (!j)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	static const char *const ints[][2] = {
		{"block_count", "num_hidden_layers"},           {"embedding_length", "hidden_size"},
		{"feed_forward_length", "intermediate_size"},   {"attention.head_count", "num_attention_heads"},
		{"attention.head_count_kv", "num_key_value_heads"}, {"context_length", "max_position_embeddings"},
		{"vocab_size", "vocab_size"},                   {"attention.key_length", "head_dim"},
	};
	static const char *const nums[][2] = {{"attention.layer_norm_rms_epsilon", "rms_norm_eps"},
					      {"rope.freq_base", "rope_theta"}};
	char key[96];
	int64_t v;
	double d;
	rc = TRAIL_OK;
	for (size_t i = 0; !rc && i < sizeof ints / sizeof *ints; i++) {
		snprintf(key, sizeof key, "%s.%s", arch, ints[i][0]);
		if (!(rc = kv_int(g, key, &v, err)))
			json_object_set_new(j, ints[i][1], json_integer(v));
		else if (rc > 0)
			rc = TRAIL_OK;
	}
	for (size_t i = 0; !rc && i < sizeof nums / sizeof *nums; i++) {
		snprintf(key, sizeof key, "%s.%s", arch, nums[i][0]);
		if (!(rc = kv_num(g, key, &d, err)))
			json_object_set_new(j, nums[i][1], json_real(d));
		else if (rc > 0)
			rc = TRAIL_OK;
	}
	if (rc)
		goto out;
	/* the vocabulary: vocab_size, else the embeddings' rows */
	int te = find(g, "token_embd.weight");
	if (!json_object_get(j, "vocab_size") && te >= 0 && g->t[te].nd == 2)
		json_object_set_new(j, "vocab_size", json_integer((json_int_t)g->t[te].ne[1]));
	int64_t kl = 0, vl = 0, rd = 0;
	snprintf(key, sizeof key, "%s.attention.value_length", arch);
	int hv = kv_int(g, key, &vl, err);
	snprintf(key, sizeof key, "%s.rope.dimension_count", arch);
	int hr = hv < 0 ? hv : kv_int(g, key, &rd, err);
	if ((rc = hv < 0 ? hv : hr < 0 ? hr : 0))
		goto out;
	json_t *hd = json_object_get(j, "head_dim");
	kl = hd ? json_integer_value(hd) : 0;
	if (!hd && json_integer_value(json_object_get(j, "num_attention_heads")) > 0)
		kl = json_integer_value(json_object_get(j, "hidden_size")) / json_integer_value(json_object_get(j, "num_attention_heads"));
	if ((!hv && vl != kl) || (!hr && rd != kl)) {
		rc = trail_error_at(err, TRAIL_EDATA, g->path, 0,
				    "%s: value_length %lld or rope.dimension_count %lld differs from the head width %lld", arch,
				    (long long)(hv ? kl : vl), (long long)(hr ? kl : rd), (long long)kl);
		goto out;
	}
	const char *st;
	size_t sl;
	snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
	if ((rc = kv_str(g, key, &st, &sl, err)) < 0)
		goto out;
	if (!rc && !(sl == 4 && !memcmp(st, "none", 4))) {
		if (!(sl == 6 && !memcmp(st, "linear", 6))) {
			rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "%s: rope scaling %.*s (none and linear only)", key,
					    (int)(sl > 32 ? 32 : sl), st);
			goto out;
		}
		snprintf(key, sizeof key, "%s.rope.scaling.factor", arch);
		if ((rc = kv_num(g, key, &d, err))) {
			if (rc > 0)
				rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "linear rope scaling without %s", key);
			goto out;
		}
		json_object_set_new(j, "rope_scaling", json_pack("{s:s, s:f}", "rope_type", "linear", "factor", d));
	}
	rc = TRAIL_OK;
	if (find(g, "rope_freqs.weight") >= 0) {
		json_t *rs = NULL;
		if ((rc = llama3_scaling(g, arch, kl, &rs, err)))
			goto out;
		if (rs)
			json_object_set_new(j, "rope_scaling", rs);
	}
	json_object_set_new(j, "tie_word_embeddings", json_boolean(find(g, "output.weight") < 0));
	*out = j;
	return TRAIL_OK;
out:
	json_decref(j);
	return rc;
}

const char *trail_gguf_path(const trail_gguf *g)
{
	return g->path;
}

/* Present the tensors under Hugging Face's names, with the head counts the row order of q and k needs. */
int trail_gguf_bind(trail_gguf *g, trail_error *err)
{
	int rc;
	int64_t nh = 0, nkv = 0;
	char key[64];
	const char *arch = arch_of(g, err, &rc);
	if (!arch)
		return rc;
	g->permute = !strcmp(arch, "llama");
	snprintf(key, sizeof key, "%s.attention.head_count", arch);
	if ((rc = kv_int(g, key, &nh, err)) > 0 || (!rc && (nh < 1 || nh > 1 << 24)))
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "%s must be a positive integer", key);
	if (rc)
		return rc;
	snprintf(key, sizeof key, "%s.attention.head_count_kv", arch);
	if ((rc = kv_int(g, key, &nkv, err)) < 0)
		return rc;
	if (rc > 0)
		nkv = nh;
	if (nkv < 1 || nkv > nh)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "%s must be a positive integer up to the heads", key);
	g->nh = (int)nh;
	g->nkvh = (int)nkv;
	for (uint64_t i = 0; i < g->nt; i++) {
		gten *t = &g->t[i];
		if (!map_name(t->name, 1, t->hf, sizeof t->hf))
			snprintf(t->hf, sizeof t->hf, "%s", t->name);
		size_t l = strlen(t->hf);
		t->qk = 0;
		if (g->permute && l > 23 && !strcmp(t->hf + l - 23, "self_attn.q_proj.weight"))
			t->qk = 1;
		if (g->permute && l > 23 && !strcmp(t->hf + l - 23, "self_attn.k_proj.weight"))
			t->qk = 2;
	}
	return TRAIL_OK;
}

const char *trail_gguf_hf_name(const trail_gguf *g, size_t i)
{
	return i < g->nt ? g->t[i].hf : NULL;
}

int trail_gguf_find_hf(const trail_gguf *g, const char *hf)
{
	for (uint64_t i = 0; i < g->nt; i++)
		if (!strcmp(g->t[i].hf, hf))
			return (int)i;
	return -1;
}

/*
 * Tensor i as Hugging Face has it: shape [d0, d1] is ne [d1, d0]; q and k
 * rows back from llama.cpp's order.
 */
int trail_gguf_read_hf(const trail_gguf *g, size_t i, const int64_t *shape, int ndim, float *dst, trail_error *err)
{
	const gten *t = &g->t[i];
	int ok = (uint32_t)ndim == t->nd;
	for (int d = 0; ok && d < ndim; d++)
		ok = (int64_t)t->ne[ndim - 1 - d] == shape[d];
	if (!ok) {
		char got[96], want[96];
		int w = 0, x = 0;
		for (uint32_t d = 0; d < t->nd; d++)
			w += snprintf(got + w, sizeof got - (size_t)w, "%s%llu", d ? "," : "", (unsigned long long)t->ne[t->nd - 1 - d]);
		for (int d = 0; d < ndim && d < 4; d++)
			x += snprintf(want + x, sizeof want - (size_t)x, "%s%lld", d ? "," : "", (long long)shape[d]);
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensor %s (%s) has shape [%s], expected [%s]", t->name, t->hf,
				      got, want);
	}
	uint64_t rows = 1, hd = 0;
	for (uint32_t d = 1; d < t->nd; d++)
		rows *= t->ne[d];
	if (t->qk) {
		int heads = t->qk == 1 ? g->nh : g->nkvh;
		if (heads < 1 || rows % (uint64_t)heads || (rows / (uint64_t)heads) % 2)
			return trail_error_at(err, TRAIL_EDATA, g->path, 0, "tensor %s: %llu rows are not %d heads of an even width",
					      t->name, (unsigned long long)rows, heads);
		hd = rows / (uint64_t)heads;
	}
	for (uint64_t r = 0; r < rows; r++) {
		uint64_t src = r;
		if (hd) { /* checkpoint row h*hd + s*hd/2 + k sits at h*hd + 2k + s */
			uint64_t h = r / hd, w = r % hd, s = w / (hd / 2), k = w % (hd / 2);
			src = h * hd + 2 * k + s;
		}
		read_row(g, t, src, dst + r * t->ne[0]);
	}
	return TRAIL_OK;
}

/* ---- the tokenizer ------------------------------------------------------------------ */

/* A string array's elements as NUL-terminated copies (*out[n]); a NUL inside one is refused. */
static int str_array(const trail_gguf *g, const char *key, char ***out, size_t *n, trail_error *err)
{
	const gkv *k = kv_get(g, key);
	*out = NULL;
	*n = 0;
	if (!k)
		return 1;
	if (k->type != VT_ARR || k->atype != VT_STR)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s is not an array of strings", key);
	char **v = trail_calloc((size_t)k->alen + 1, sizeof *v);
	if (!v)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	const uint8_t *p = k->val;
	for (uint64_t i = 0; i < k->alen; i++) {
		uint64_t l = le(p, 8); /* checked when the file was opened */
		if (memchr(p + 8, 0, (size_t)l)) {
			trail_free(v);
			return trail_error_at(err, TRAIL_EDATA, g->path, 0, "%s[%llu] holds a NUL byte", key, (unsigned long long)i);
		}
		v[i] = (char *)p; /* filled in below, once all are known to be good */
		p += 8 + l;
	}
	for (uint64_t i = 0; i < k->alen; i++) {
		const uint8_t *q = (const uint8_t *)v[i];
		if (!(v[i] = trail_strndup((const char *)q + 8, (size_t)le(q, 8)))) {
			for (uint64_t j = 0; j < i; j++)
				trail_free(v[j]);
			trail_free(v);
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		}
	}
	*out = v;
	*n = (size_t)k->alen;
	return 0;
}

/* A numeric array (i32 or f32 as the caller asks, any integer type for i32) of length n. */
static int num_array(const trail_gguf *g, const char *key, size_t n, int32_t *iv, float *fv, trail_error *err)
{
	const gkv *k = kv_get(g, key);
	if (!k)
		return 1;
	int intt = k->atype <= VT_I32 || k->atype == VT_U64 || k->atype == VT_I64;
	if (k->type != VT_ARR || (fv && k->atype != VT_F32) || (iv && (!intt || k->atype == VT_F32)) || k->alen != n)
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "key %s is not an array of %zu %s", key, n,
				      fv ? "f32" : "integers");
	unsigned w = vt_width[k->atype];
	for (size_t i = 0; i < n; i++) {
		uint64_t u = le(k->val + i * w, w);
		if (fv) {
			uint32_t b = (uint32_t)u;
			memcpy(&fv[i], &b, 4);
		} else {
			iv[i] = (int32_t)u; /* token types are small; anything else is refused by the tokenizer */
			if (u > 255 && !(k->atype == VT_I32 && (int32_t)u < 0 && (int32_t)u > -256))
				iv[i] = -1;
		}
	}
	return 0;
}

void trail_tok_arrays_release(trail_tok_arrays *a)
{
	for (size_t i = 0; a->tok && i < a->n; i++)
		trail_free(a->tok[i]);
	for (size_t i = 0; a->merge && i < a->n_merges; i++)
		trail_free(a->merge[i]);
	trail_free(a->tok);
	trail_free(a->merge);
	trail_free(a->type);
	trail_free(a->score);
	trail_free(a->pre);
	trail_free(a->chat_template);
	memset(a, 0, sizeof *a);
}

/* The tokenizer.ggml.* arrays, checked for what they are (hf_tokenizer.c checks what they say). */
int trail_gguf_tok_arrays(const trail_gguf *g, trail_tok_arrays *out, trail_error *err)
{
	trail_tok_arrays a = {0};
	const char *s;
	size_t sl;
	int rc;
	int64_t v;
	memset(out, 0, sizeof *out);
	a.bos = a.eos = a.unk = -1;
	if ((rc = kv_str(g, "tokenizer.ggml.model", &s, &sl, err)) > 0)
		return trail_error_at(err, TRAIL_ENOINPUT, g->path, 0, "no tokenizer in the file (tokenizer.ggml.model)");
	if (rc)
		return rc;
	if (sl == 5 && !memcmp(s, "llama", 5))
		a.sp = 1;
	else if (!(sl == 4 && !memcmp(s, "gpt2", 4)))
		return trail_error_at(err, TRAIL_EDATA, g->path, 0, "tokenizer.ggml.model %.*s (gpt2 and llama only)",
				      (int)(sl > 32 ? 32 : sl), s);
	if (!a.sp) {
		if ((rc = kv_str(g, "tokenizer.ggml.pre", &s, &sl, err)) > 0)
			s = "default", sl = 7, rc = 0;
		if (rc || !(a.pre = trail_strndup(s, sl)))
			return rc ? rc : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	if ((rc = str_array(g, "tokenizer.ggml.tokens", &a.tok, &a.n, err)) > 0)
		rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "no tokenizer.ggml.tokens");
	if (rc)
		goto out;
	if (!(a.type = trail_malloc((a.n + 1) * sizeof *a.type)) || !(a.score = trail_malloc((a.n + 1) * sizeof *a.score))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = num_array(g, "tokenizer.ggml.token_type", a.n, a.type, NULL, err)) > 0)
		for (size_t i = 0; i < a.n; i++)
			a.type[i] = 1;
	if (rc < 0 || (rc = num_array(g, "tokenizer.ggml.scores", a.n, NULL, a.score, err)) < 0)
		goto out;
	if (rc > 0) {
		trail_free(a.score);
		a.score = NULL;
	}
	if ((rc = str_array(g, "tokenizer.ggml.merges", &a.merge, &a.n_merges, err)) < 0)
		goto out;
	static const char *const ids[3] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
					   "tokenizer.ggml.unknown_token_id"};
	int32_t *dst[3] = {&a.bos, &a.eos, &a.unk};
	for (int i = 0; i < 3; i++) {
		if ((rc = kv_int(g, ids[i], &v, err)) < 0)
			goto out;
		if (!rc && (v < 0 || (uint64_t)v >= a.n)) {
			rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "%s %lld is not a token", ids[i], (long long)v);
			goto out;
		}
		if (!rc)
			*dst[i] = (int32_t)v;
	}
	a.add_bos = a.sp; /* llama.cpp's defaults */
	if ((rc = kv_bool(g, "tokenizer.ggml.add_bos_token", &a.add_bos, err)) < 0 ||
	    (rc = kv_bool(g, "tokenizer.ggml.add_eos_token", &a.add_eos, err)) < 0)
		goto out;
	int prefix = 1;
	if ((rc = kv_bool(g, "tokenizer.ggml.add_space_prefix", &prefix, err)) < 0)
		goto out;
	if (a.sp && !prefix) {
		rc = trail_error_at(err, TRAIL_EDATA, g->path, 0, "tokenizer.ggml.add_space_prefix false is not supported");
		goto out;
	}
	if ((rc = kv_str(g, "tokenizer.chat_template", &s, &sl, err)) < 0)
		goto out;
	if (!rc && !(a.chat_template = trail_strndup(s, sl))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	*out = a;
	return TRAIL_OK;
out:
	trail_tok_arrays_release(&a);
	return rc;
}
