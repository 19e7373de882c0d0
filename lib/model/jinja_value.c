/*
 * Chat templates, the values: making them, JSON in and out, their string
 * forms, equality and the string operations, each as @huggingface/jinja
 * (src/runtime.ts) has it, which is ECMAScript's where it shows: `==` is
 * JavaScript's loose equality on the values, `+` and `~` join the values'
 * own string forms (3.0 joins as "3" but prints as "3.0"), string lengths
 * and indices count UTF-16 units while slices count code points, tojson is
 * JSON.stringify with Python's separators, and a JSON object's members come
 * in JavaScript's order (integer-like keys first).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_int.h"

typedef trail_jv jv;
typedef trail_jenv env;
typedef trail_jsink sink;
typedef trail_jev ev;
typedef trail_jopt jopt;
#define is_obj trail_jv_is_obj
#define is_attr trail_jv_is_attr
#define is_arr trail_jv_is_arr
#define is_num trail_jv_is_num

const char *const trail_jv_type_name[] = {"undefined", "none", "boolean", "integer", "float", "string",
					  "list", "tuple", "mapping", "keyword arguments", "namespace", "function"};

/* ---- values ---- */

jv *trail_jv_mk(ev *E, int t)
{
	jv *v = trail_jx_alloc(E->x, sizeof *v);
	v->t = t;
	return v;
}

jv *trail_jv_mk_num(ev *E, int t, double d)
{
	jv *v = trail_jv_mk(E, t);
	v->num = d;
	return v;
}

jv *trail_jv_mk_bool(ev *E, int b)
{
	jv *v = trail_jv_mk(E, JV_BOOL);
	v->b = !!b;
	return v;
}

jv *trail_jv_mk_str(ev *E, const char *s, size_t n) /* s must outlive the render (the arena, the template) */
{
	jv *v = trail_jv_mk(E, JV_STR);
	v->s = s, v->n = n;
	return v;
}

jv *trail_jv_mk_strcopy(ev *E, const char *s, size_t n)
{
	char *p = trail_jx_alloc(E->x, n + 1);
	memcpy(p, s, n);
	return trail_jv_mk_str(E, p, n);
}

void trail_jv_push_v(ev *E, jv *a, jv *k, jv *val)
{
	if (a->nv == a->cap) {
		size_t cap = a->cap ? 2 * a->cap : 4;
		jv **nv = trail_jx_alloc(E->x, cap * sizeof *nv), **nk = trail_jx_alloc(E->x, cap * sizeof *nk);
		if (a->nv)
			memcpy(nv, a->v, a->nv * sizeof *nv), memcpy(nk, a->k, a->nv * sizeof *nk);
		a->v = nv, a->k = nk, a->cap = cap;
	}
	a->k[a->nv] = k;
	a->v[a->nv++] = val;
}

jv *trail_jv_obj_get(const jv *o, const char *k, size_t n)
{
	for (size_t i = 0; i < o->nv; i++)
		if (o->k[i]->n == n && !memcmp(o->k[i]->s, k, n))
			return o->v[i];
	return NULL;
}

void trail_jv_obj_set(ev *E, jv *o, jv *k, jv *val)
{
	for (size_t i = 0; i < o->nv; i++)
		if (o->k[i]->n == k->n && !memcmp(o->k[i]->s, k->s, k->n)) {
			o->v[i] = val;
			return;
		}
	trail_jv_push_v(E, o, k, val);
}

int trail_jv_truthy(const jv *v)
{
	switch (v->t) {
	case JV_UNDEF:
	case JV_NULL:
		return 0;
	case JV_BOOL:
		return v->b;
	case JV_INT:
	case JV_FLOAT:
		return v->num != 0 && !isnan(v->num);
	case JV_STR:
		return v->n > 0;
	case JV_ARRAY:
	case JV_TUPLE:
	case JV_OBJECT:
	case JV_KWARGS:
		return v->nv > 0;
	default:
		return 1;
	}
}

/* ---- output ---- */

void trail_jv_put(ev *E, sink *o, const char *s, size_t n)
{
	if (o->n + n + 1 > o->cap) {
		size_t cap = o->cap ? o->cap : 256;
		while (cap < o->n + n + 1)
			cap *= 2;
		char *p = trail_jx_alloc(E->x, cap);
		if (o->n)
			memcpy(p, o->p, o->n);
		o->p = p, o->cap = cap;
	}
	memcpy(o->p + o->n, s, n);
	o->n += n;
	o->p[o->n] = 0;
}

void trail_jv_puts(ev *E, sink *o, const char *s)
{
	trail_jv_put(E, o, s, strlen(s));
}

jv *trail_jv_sink_str(ev *E, sink *o)
{
	return o->n ? trail_jv_mk_str(E, o->p, o->n) : trail_jv_mk_str(E, "", 0);
}

/* Number.prototype.toString: the shortest digits that read back, in ECMAScript's layout */
static void js_num(double d, char *o)
{
	if (isnan(d)) {
		strcpy(o, "NaN");
		return;
	}
	if (isinf(d)) {
		strcpy(o, d < 0 ? "-Infinity" : "Infinity");
		return;
	}
	if (d == 0) {
		strcpy(o, "0");
		return;
	}
	char buf[48], dig[24];
	for (int p = 1; p <= 17; p++) {
		snprintf(buf, sizeof buf, "%.*e", p - 1, d);
		if (strtod(buf, NULL) == d)
			break;
	}
	const char *q = buf;
	int k = 0;
	if (*q == '-')
		*o++ = '-', q++;
	for (; *q && *q != 'e'; q++)
		if (*q != '.')
			dig[k++] = *q;
	int n = atoi(q + 1) + 1;
	while (k > 1 && dig[k - 1] == '0')
		k--;
	if (k <= n && n <= 21) {
		memcpy(o, dig, (size_t)k);
		memset(o + k, '0', (size_t)(n - k));
		o[n] = 0;
	} else if (0 < n && n <= 21) {
		memcpy(o, dig, (size_t)n);
		o[n] = '.';
		memcpy(o + n + 1, dig + n, (size_t)(k - n));
		o[k + 1] = 0;
	} else if (-6 < n && n <= 0) {
		o[0] = '0', o[1] = '.';
		memset(o + 2, '0', (size_t)-n);
		memcpy(o + 2 - n, dig, (size_t)k);
		o[2 - n + k] = 0;
	} else {
		int j = 0;
		o[j++] = dig[0];
		if (k > 1) {
			o[j++] = '.';
			memcpy(o + j, dig + 1, (size_t)(k - 1));
			j += k - 1;
		}
		sprintf(o + j, "e%c%d", n - 1 >= 0 ? '+' : '-', abs(n - 1));
	}
}

static void json_str(ev *E, sink *o, const char *s, size_t n, int ascii)
{
	trail_jv_put(E, o, "\"", 1);
	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		char b[16];
		const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\b' ? "\\b" : c == '\f' ? "\\f"
			: c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
		if (esc) {
			trail_jv_puts(E, o, esc);
			i++;
		} else if (c < 0x20) {
			snprintf(b, sizeof b, "\\u%04x", c);
			trail_jv_puts(E, o, b);
			i++;
		} else if (ascii && c >= 0x7f) {
			uint32_t cp = trail_jx_cp(s, n, &i);
			if (cp >= 0x10000)
				snprintf(b, sizeof b, "\\u%04x\\u%04x", 0xd800 + ((cp - 0x10000) >> 10),
					 0xdc00 + ((cp - 0x10000) & 0x3ff));
			else
				snprintf(b, sizeof b, "\\u%04x", cp);
			trail_jv_puts(E, o, b);
		} else {
			trail_jv_put(E, o, s + i, 1);
			i++;
		}
	}
	trail_jv_put(E, o, "\"", 1);
}


void trail_jv_to_json(ev *E, sink *o, const jv *v, const jopt *op, int depth, int undef_null, const trail_jnode *nd)
{
	char b[40];
	switch (v->t) {
	case JV_NULL:
		trail_jv_puts(E, o, "null");
		return;
	case JV_UNDEF:
		trail_jv_puts(E, o, undef_null ? "null" : "undefined");
		return;
	case JV_BOOL:
		trail_jv_puts(E, o, v->b ? "true" : "false");
		return;
	case JV_INT:
	case JV_FLOAT:
		if (!isfinite(v->num))
			strcpy(b, "null");
		else
			js_num(v->num, b);
		trail_jv_puts(E, o, b);
		return;
	case JV_STR:
		json_str(E, o, v->s, v->n, op->ascii);
		return;
	case JV_ARRAY:
	case JV_OBJECT:
	case JV_KWARGS:
	case JV_NS: {
		const char *is = op->item_sep ? op->item_sep->s : op->indent ? "," : ", ";
		size_t isn = op->item_sep ? op->item_sep->n : strlen(is);
		const char *ks = op->key_sep ? op->key_sep->s : ": ";
		size_t ksn = op->key_sep ? op->key_sep->n : 2;
		int arr = v->t == JV_ARRAY;
		trail_jv_put(E, o, arr ? "[" : "{", 1);
		for (size_t i = 0; i < v->nv; i++) {
			if (i)
				trail_jv_put(E, o, is, isn);
			if (op->indent) {
				trail_jv_put(E, o, "\n", 1);
				for (int j = 0; j < op->indent * (depth + 1); j++)
					trail_jv_put(E, o, " ", 1);
			}
			if (!arr) {
				json_str(E, o, v->k[i]->s, v->k[i]->n, op->ascii);
				trail_jv_put(E, o, ks, ksn);
			}
			trail_jv_to_json(E, o, v->v[i], op, depth + 1, undef_null, nd);
		}
		if (op->indent && v->nv) {
			trail_jv_put(E, o, "\n", 1);
			for (int j = 0; j < op->indent * depth; j++)
				trail_jv_put(E, o, " ", 1);
		}
		trail_jv_put(E, o, arr ? "]" : "}", 1);
		return;
	}
	default:
		JV_FAIL(E, nd, "cannot convert a %s to JSON", trail_jv_type_name[v->t]);
	}
}

/* RuntimeValue.toString: what {{ v }} prints */
void trail_jv_to_string(ev *E, sink *o, const jv *v, const trail_jnode *nd)
{
	char b[400];
	static const jopt plain = {0};
	switch (v->t) {
	case JV_UNDEF:
		trail_jv_puts(E, o, "undefined");
		return;
	case JV_NULL:
		trail_jv_puts(E, o, "null");
		return;
	case JV_BOOL:
		trail_jv_puts(E, o, v->b ? "true" : "false");
		return;
	case JV_INT:
		js_num(v->num, b);
		trail_jv_puts(E, o, b);
		return;
	case JV_FLOAT:
		if (v->num == 0 && signbit(v->num))
			strcpy(b, "-0.0");
		else if (isfinite(v->num) && v->num == floor(v->num) && fabs(v->num) < 1e21)
			snprintf(b, sizeof b, "%.1f", v->num);
		else
			js_num(v->num, b);
		trail_jv_puts(E, o, b);
		return;
	case JV_STR:
		trail_jv_put(E, o, v->s, v->n);
		return;
	case JV_FUNC:
		JV_FAIL(E, nd, "cannot print a function");
	default:
		trail_jv_to_json(E, o, v, &plain, 0, 0, nd);
	}
}

/* String(v.value): how + and ~ join values */
void trail_jv_value_str(ev *E, sink *o, const jv *v, const trail_jnode *nd)
{
	char b[40];
	switch (v->t) {
	case JV_INT:
	case JV_FLOAT:
		js_num(v->num, b);
		trail_jv_puts(E, o, b);
		return;
	case JV_ARRAY:
	case JV_TUPLE:
		for (size_t i = 0; i < v->nv; i++) {
			if (i)
				trail_jv_put(E, o, ",", 1);
			trail_jv_to_string(E, o, v->v[i], nd);
		}
		return;
	case JV_OBJECT:
	case JV_KWARGS:
	case JV_NS:
		trail_jv_puts(E, o, "[object Map]");
		return;
	default:
		trail_jv_to_string(E, o, v, nd);
	}
}

jv *trail_jv_concat(ev *E, const jv *a, const jv *b, const trail_jnode *nd)
{
	sink o = {0};
	if (a->t != JV_UNDEF)
		trail_jv_value_str(E, &o, a, nd);
	if (b->t != JV_UNDEF)
		trail_jv_value_str(E, &o, b, nd);
	return trail_jv_sink_str(E, &o);
}

/* ---- equality: JavaScript's == and === on the values ---- */

static double str_number(const char *s, size_t n)
{
	size_t i = 0, e = n;
	while (i < e) {
		size_t k = i;
		if (!trail_jx_space(trail_jx_cp(s, n, &k)))
			break;
		i = k;
	}
	while (e > i && trail_jx_space((unsigned char)s[e - 1]))
		e--;
	if (i == e)
		return 0;
	char b[64];
	if (e - i >= sizeof b)
		return NAN;
	memcpy(b, s + i, e - i);
	b[e - i] = 0;
	const char *p = b + (b[0] == '+' || b[0] == '-');
	if (!strcmp(p, "Infinity"))
		return b[0] == '-' ? -INFINITY : INFINITY;
	if ((p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) && p == b)
		return (double)strtoull(b, NULL, 16);
	for (const char *c = p; *c; c++)
		if (!strchr("0123456789.eE+-", *c))
			return NAN;
	char *end;
	double d = strtod(b, &end);
	return *end ? NAN : d;
}

int trail_jv_loose_eq(ev *E, const jv *a, const jv *b, const trail_jnode *nd)
{
	int an = a->t == JV_UNDEF || a->t == JV_NULL, bn = b->t == JV_UNDEF || b->t == JV_NULL;
	if (an || bn)
		return an && bn;
	if (a->t == JV_BOOL)
		return trail_jv_loose_eq(E, trail_jv_mk_num(E, JV_INT, a->b), b, nd);
	if (b->t == JV_BOOL)
		return trail_jv_loose_eq(E, a, trail_jv_mk_num(E, JV_INT, b->b), nd);
	int ao = a->t >= JV_ARRAY, bo = b->t >= JV_ARRAY;
	if (ao && bo)
		return a == b;
	if (ao || bo) { /* an object against a primitive: its primitive (join, "[object Map]") */
		sink o = {0};
		trail_jv_value_str(E, &o, ao ? a : b, nd);
		jv *p = trail_jv_sink_str(E, &o);
		return ao ? trail_jv_loose_eq(E, p, b, nd) : trail_jv_loose_eq(E, a, p, nd);
	}
	if (a->t == JV_STR && b->t == JV_STR)
		return a->n == b->n && !memcmp(a->s, b->s, a->n);
	double x = a->t == JV_STR ? str_number(a->s, a->n) : a->num, y = b->t == JV_STR ? str_number(b->s, b->n) : b->num;
	return x == y;
}

int trail_jv_strict_eq(const jv *a, const jv *b)
{
	if (is_num(a) && is_num(b))
		return a->num == b->num;
	if (a->t != b->t)
		return (a->t == JV_ARRAY || a->t == JV_TUPLE) && a == b;
	switch (a->t) {
	case JV_UNDEF:
	case JV_NULL:
		return 1;
	case JV_BOOL:
		return a->b == b->b;
	case JV_STR:
		return a->n == b->n && !memcmp(a->s, b->s, a->n);
	default:
		return a == b;
	}
}

/* ---- strings: UTF-16 lengths and indices, code-point slices ---- */

size_t trail_jv_u16_len(const char *s, size_t n)
{
	size_t m = 0;
	for (size_t i = 0; i < n;)
		m += trail_jx_cp(s, n, &i) >= 0x10000 ? 2 : 1;
	return m;
}

size_t *trail_jv_cp_offsets(ev *E, const char *s, size_t n, size_t *count)
{
	size_t *o = trail_jx_alloc(E->x, (n + 1) * sizeof *o), c = 0;
	for (size_t i = 0; i < n;) {
		o[c++] = i;
		trail_jx_cp(s, n, &i);
	}
	o[c] = n;
	*count = c;
	return o;
}

size_t trail_jv_trim_start(const char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		size_t k = i;
		if (!trail_jx_space(trail_jx_cp(s, n, &k)))
			break;
		i = k;
	}
	return i;
}

size_t trail_jv_trim_end(const char *s, size_t n, size_t from)
{
	size_t e = n;
	while (e > from) {
		size_t k = e - 1;
		while (k > from && ((unsigned char)s[k] & 0xc0) == 0x80)
			k--;
		size_t q = k;
		if (!trail_jx_space(trail_jx_cp(s, n, &q)))
			break;
		e = k;
	}
	return e;
}

static int ascii_only(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return 0;
	return 1;
}

jv *trail_jv_case_map(ev *E, const jv *s, int up, const trail_jnode *nd)
{
	if (!ascii_only(s->s, s->n))
		JV_FAIL(E, nd, "upper and lower case beyond ASCII are not supported");
	char *p = trail_jx_alloc(E->x, s->n + 1);
	for (size_t i = 0; i < s->n; i++) {
		char c = s->s[i];
		p[i] = up && c >= 'a' && c <= 'z' ? (char)(c - 32) : !up && c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
	}
	return trail_jv_mk_str(E, p, s->n);
}

static int word_ch(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

jv *trail_jv_title(ev *E, const jv *s)
{
	char *p = trail_jx_alloc(E->x, s->n + 1);
	for (size_t i = 0; i < s->n; i++) {
		char c = s->s[i];
		p[i] = (i == 0 || !word_ch(s->s[i - 1])) && c >= 'a' && c <= 'z' ? (char)(c - 32) : c;
	}
	return trail_jv_mk_str(E, p, s->n);
}

const char *trail_jv_find(const char *h, size_t hn, const char *nd, size_t n)
{
	if (!n)
		return h;
	for (size_t i = 0; i + n <= hn; i++)
		if (h[i] == nd[0] && !memcmp(h + i, nd, n))
			return h + i;
	return NULL;
}

jv *trail_jv_split(ev *E, const jv *s, jv **a, size_t na, const trail_jnode *nd)
{
	const jv *sep = na > 0 ? a[0] : NULL, *max = na > 1 ? a[1] : NULL;
	if (sep && sep->t != JV_STR && sep->t != JV_NULL)
		JV_FAIL(E, nd, "split: sep must be a string or none");
	if (max && max->t != JV_INT)
		JV_FAIL(E, nd, "split: maxsplit must be an integer");
	double m = max ? max->num : -1;
	jv *r = trail_jv_mk(E, JV_ARRAY);
	if (!sep || sep->t == JV_NULL) {
		size_t i = trail_jv_trim_start(s->s, s->n);
		while (i < s->n) {
			size_t e = i;
			while (e < s->n) {
				size_t k = e;
				if (trail_jx_space(trail_jx_cp(s->s, s->n, &k)))
					break;
				e = k;
			}
			if (m >= 0 && (double)r->nv >= m) {
				trail_jv_push_v(E, r, NULL, trail_jv_mk_str(E, s->s + i, s->n - i));
				break;
			}
			trail_jv_push_v(E, r, NULL, trail_jv_mk_str(E, s->s + i, e - i));
			i = e + trail_jv_trim_start(s->s + e, s->n - e);
		}
		return r;
	}
	if (!sep->n)
		JV_FAIL(E, nd, "split: empty separator");
	size_t i = 0;
	for (;;) {
		const char *f = (m < 0 || (double)r->nv < m) ? trail_jv_find(s->s + i, s->n - i, sep->s, sep->n) : NULL;
		if (!f) {
			trail_jv_push_v(E, r, NULL, trail_jv_mk_str(E, s->s + i, s->n - i));
			return r;
		}
		trail_jv_push_v(E, r, NULL, trail_jv_mk_str(E, s->s + i, (size_t)(f - s->s) - i));
		i = (size_t)(f - s->s) + sep->n;
	}
}

jv *trail_jv_replace(ev *E, const jv *s, const jv *old, const jv *nw, double count)
{
	if (count == 0)
		return (jv *)s;
	double left = count < 0 || isnan(count) ? INFINITY : count;
	sink o = {0};
	size_t i = 0;
	if (!old->n) { /* between code points, and at both ends */
		while (left > 0 && i <= s->n) {
			trail_jv_put(E, &o, nw->s, nw->n);
			left--;
			if (i == s->n) {
				i++;
				break;
			}
			size_t k = i;
			trail_jx_cp(s->s, s->n, &k);
			trail_jv_put(E, &o, s->s + i, k - i);
			i = k;
		}
		if (i <= s->n)
			trail_jv_put(E, &o, s->s + i, s->n - i);
		return trail_jv_sink_str(E, &o);
	}
	while (left > 0) {
		const char *f = trail_jv_find(s->s + i, s->n - i, old->s, old->n);
		if (!f)
			break;
		trail_jv_put(E, &o, s->s + i, (size_t)(f - s->s) - i);
		trail_jv_put(E, &o, nw->s, nw->n);
		i = (size_t)(f - s->s) + old->n;
		left--;
	}
	trail_jv_put(E, &o, s->s + i, s->n - i);
	return trail_jv_sink_str(E, &o);
}

/* ---- JSON in: JavaScript's values, members in Object.entries order ---- */

static int index_key(const char *k, size_t n, double *v)
{
	if (!n || n > 10 || (n > 1 && k[0] == '0'))
		return 0;
	double d = 0;
	for (size_t i = 0; i < n; i++) {
		if (k[i] < '0' || k[i] > '9')
			return 0;
		d = d * 10 + (k[i] - '0');
	}
	*v = d;
	return d <= 4294967294.0;
}

jv *trail_jv_from_json(ev *E, const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		jv *o = trail_jv_mk(E, JV_OBJECT);
		const char *k;
		json_t *v;
		size_t nidx = 0;
		json_object_foreach((json_t *)j, k, v) {
			double d;
			if (index_key(k, strlen(k), &d))
				nidx++;
		}
		/* integer-like keys first, ascending; then the rest in their order */
		for (size_t pass = 0; pass < 2; pass++) {
			json_object_foreach((json_t *)j, k, v) {
				double d;
				int idx = index_key(k, strlen(k), &d);
				if (pass == 0 && idx) {
					size_t at = 0;
					while (at < o->nv) {
						double e;
						index_key(o->k[at]->s, o->k[at]->n, &e);
						if (e > d)
							break;
						at++;
					}
					trail_jv_push_v(E, o, NULL, NULL);
					memmove(o->k + at + 1, o->k + at, (o->nv - 1 - at) * sizeof *o->k);
					memmove(o->v + at + 1, o->v + at, (o->nv - 1 - at) * sizeof *o->v);
					o->k[at] = trail_jv_mk_strcopy(E, k, strlen(k));
					o->v[at] = trail_jv_from_json(E, v);
				} else if (pass == 1 && !idx) {
					trail_jv_push_v(E, o, trail_jv_mk_strcopy(E, k, strlen(k)), trail_jv_from_json(E, v));
				}
			}
		}
		(void)nidx;
		return o;
	}
	case JSON_ARRAY: {
		jv *a = trail_jv_mk(E, JV_ARRAY);
		for (size_t i = 0; i < json_array_size(j); i++)
			trail_jv_push_v(E, a, NULL, trail_jv_from_json(E, json_array_get(j, i)));
		return a;
	}
	case JSON_STRING:
		return trail_jv_mk_strcopy(E, json_string_value(j), json_string_length(j));
	case JSON_INTEGER:
		return trail_jv_mk_num(E, JV_INT, (double)json_integer_value(j));
	case JSON_REAL: {
		double d = json_real_value(j);
		return trail_jv_mk_num(E, d == floor(d) && isfinite(d) ? JV_INT : JV_FLOAT, d);
	}
	case JSON_TRUE:
	case JSON_FALSE:
		return trail_jv_mk_bool(E, json_is_true(j));
	default:
		return trail_jv_mk(E, JV_NULL);
	}
}
