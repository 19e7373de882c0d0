/*
 * Chat templates, second half: scopes, filters, tests and rendering, following
 * @huggingface/jinja's runtime (src/runtime.ts) with its quirks:
 * strip/lstrip/rstrip take no characters (they trim ECMAScript's
 * whitespace whatever is passed), a for loop's scope outlives each
 * iteration, and output is cut back when break or continue leaves an
 * iteration. A construct the reference
 * rejects, or one this subset lacks (case mapping beyond ASCII, sorting,
 * call blocks), is an error naming the line, never a guess.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* ---- scopes ---- */

static env *env_new(ev *E, env *parent)
{
	env *e = trail_jx_alloc(E->x, sizeof *e);
	e->parent = parent;
	return e;
}

static void env_set(ev *E, env *e, const char *name, size_t len, jv *v)
{
	for (size_t i = 0; i < e->n; i++)
		if (e->len[i] == len && !memcmp(e->name[i], name, len)) {
			e->val[i] = v;
			return;
		}
	if (e->n == e->cap) {
		size_t cap = e->cap ? 2 * e->cap : 8;
		const char **nn = trail_jx_alloc(E->x, cap * sizeof *nn);
		size_t *nl = trail_jx_alloc(E->x, cap * sizeof *nl);
		jv **nv = trail_jx_alloc(E->x, cap * sizeof *nv);
		if (e->n) {
			memcpy(nn, e->name, e->n * sizeof *nn);
			memcpy(nl, e->len, e->n * sizeof *nl);
			memcpy(nv, e->val, e->n * sizeof *nv);
		}
		e->name = nn, e->len = nl, e->val = nv, e->cap = cap;
	}
	e->name[e->n] = name, e->len[e->n] = len, e->val[e->n++] = v;
}

static jv *env_get(ev *E, env *e, const char *name, size_t len)
{
	for (; e; e = e->parent)
		for (size_t i = 0; i < e->n; i++)
			if (e->len[i] == len && !memcmp(e->name[i], name, len))
				return e->val[i];
	return trail_jv_mk(E, JV_UNDEF);
}

static jv *fn(ev *E, int f, const jv *self)
{
	jv *v = trail_jv_mk(E, JV_FUNC);
	v->fn = f, v->self = self;
	return v;
}

/* The builtins of a value reached by name (string methods, dict methods, length); NULL: none */
static jv *builtin(ev *E, const jv *o, const char *p, size_t n)
{
	static const struct { const char *name; int f; } smeth[] = {
		{"upper", JF_UPPER}, {"lower", JF_LOWER}, {"strip", JF_STRIP}, {"title", JF_TITLE},
		{"capitalize", JF_CAPITALIZE}, {"rstrip", JF_RSTRIP}, {"lstrip", JF_LSTRIP},
		{"startswith", JF_STARTSWITH}, {"endswith", JF_ENDSWITH}, {"split", JF_SPLIT}, {"replace", JF_REPLACE}},
	ometh[] = {{"get", JF_GET}, {"items", JF_ITEMS}, {"keys", JF_KEYS}, {"values", JF_VALUES}};
#define IS(w) (n == strlen(w) && !memcmp(p, w, n))
	if (o->t == JV_STR) {
		if (IS("length"))
			return trail_jv_mk_num(E, JV_INT, (double)trail_jv_u16_len(o->s, o->n));
		for (size_t i = 0; i < sizeof smeth / sizeof *smeth; i++)
			if (IS(smeth[i].name))
				return fn(E, smeth[i].f, o);
	} else if (is_arr(o)) {
		if (IS("length"))
			return trail_jv_mk_num(E, JV_INT, (double)o->nv);
	} else if (is_obj(o)) {
		for (size_t i = 0; i < sizeof ometh / sizeof *ometh; i++)
			if (IS(ometh[i].name))
				return fn(E, ometh[i].f, o);
	}
#undef IS
	return NULL;
}

/* ---- evaluation ---- */

static jv *eval(ev *E, const trail_jnode *nd, env *en);
static void render(ev *E, trail_jnode *const *l, size_t n, env *en, sink *o);

static jv *items_of(ev *E, const jv *o)
{
	jv *r = trail_jv_mk(E, JV_ARRAY);
	for (size_t i = 0; i < o->nv; i++) {
		jv *p = trail_jv_mk(E, JV_ARRAY);
		trail_jv_push_v(E, p, NULL, o->k[i]);
		trail_jv_push_v(E, p, NULL, o->v[i]);
		trail_jv_push_v(E, r, NULL, p);
	}
	return r;
}

static jv *keys_of(ev *E, const jv *o, int values)
{
	jv *r = trail_jv_mk(E, JV_ARRAY);
	for (size_t i = 0; i < o->nv; i++)
		trail_jv_push_v(E, r, NULL, values ? o->v[i] : o->k[i]);
	return r;
}

static void strftime_js(ev *E, sink *o, const jv *f)
{
	static const char *const mon[] = {"January", "February", "March", "April", "May", "June", "July",
					  "August", "September", "October", "November", "December"};
	time_t t = E->now >= 0 ? (time_t)E->now : time(NULL);
	struct tm tm;
	localtime_r(&t, &tm);
	char b[16];
	for (size_t i = 0; i < f->n; i++) {
		char c = i + 1 < f->n && f->s[i] == '%' ? f->s[i + 1] : 0;
		if (!c || !strchr("YmdbBHM%", c)) {
			trail_jv_put(E, o, f->s + i, 1);
			continue;
		}
		i++;
		switch (c) {
		case 'Y': snprintf(b, sizeof b, "%d", tm.tm_year + 1900); break;
		case 'm': snprintf(b, sizeof b, "%02d", tm.tm_mon + 1); break;
		case 'd': snprintf(b, sizeof b, "%02d", tm.tm_mday); break;
		case 'H': snprintf(b, sizeof b, "%02d", tm.tm_hour); break;
		case 'M': snprintf(b, sizeof b, "%02d", tm.tm_min); break;
		case 'b': snprintf(b, sizeof b, "%.3s", mon[tm.tm_mon]); break;
		case 'B': snprintf(b, sizeof b, "%s", mon[tm.tm_mon]); break;
		default: strcpy(b, "%");
		}
		trail_jv_puts(E, o, b);
	}
}

static jv *call_macro(ev *E, const jv *f, jv **a, size_t na, const trail_jnode *nd)
{
	const trail_jnode *m = f->mac;
	jv *kw = na && a[na - 1]->t == JV_KWARGS ? a[--na] : NULL;
	size_t used = 0;
	if (++E->depth > 100)
		JV_FAIL(E, nd, "macros nested more than 100 deep");
	env *sc = env_new(E, f->menv);
	for (size_t i = 0; i < m->nl; i++) {
		const trail_jnode *p = m->l[i];
		jv *v = i < na ? a[i] : NULL;
		if (!v && kw && (v = trail_jv_obj_get(kw, p->s, p->n)))
			used++;
		env_set(E, sc, p->s, p->n, v ? v : trail_jv_mk(E, JV_UNDEF));
	}
	if (kw && used < kw->nv)
		JV_FAIL(E, nd, "macro '%.*s' takes no such keyword argument", (int)m->n, m->s);
	if (na > m->nl)
		JV_FAIL(E, nd, "macro '%.*s' takes not more than %zu argument(s)", (int)m->n, m->s, m->nl);
	for (size_t i = 0; i < m->nl; i++) {
		const trail_jnode *p = m->l[i];
		if (p->kind == JN_KWARG && i >= na && !(kw && trail_jv_obj_get(kw, p->s, p->n)))
			env_set(E, sc, p->s, p->n, eval(E, p->a, sc));
	}
	sink o = {0};
	render(E, m->l2, m->nl2, sc, &o);
	E->depth--;
	return trail_jv_sink_str(E, &o);
}

static jv *call(ev *E, const jv *f, jv **a, size_t na, const trail_jnode *nd)
{
	const jv *s = f->self;
	jv *a0 = na > 0 ? a[0] : NULL;
	switch (f->fn) {
	case JF_MACRO:
		return call_macro(E, f, a, na, nd);
	case JF_RAISE: {
		sink o = {0};
		if (a0)
			trail_jv_value_str(E, &o, a0, nd);
		trail_jx_fail(E->x, TRAIL_EDATA, nd->line, "the template raised: %.*s", (int)(o.n < 300 ? o.n : 300),
			      o.n ? o.p : "");
	}
	case JF_RANGE: {
		for (size_t i = 0; i < na; i++)
			if (a[i]->t != JV_INT)
				JV_FAIL(E, nd, "range() takes integers");
		if (!na || na > 3)
			JV_FAIL(E, nd, "range() takes 1 to 3 arguments");
		double start = na > 1 ? a0->num : 0, stop = na > 1 ? a[1]->num : a0->num, step = na > 2 ? a[2]->num : 1;
		if (step == 0)
			JV_FAIL(E, nd, "range() step must not be zero");
		if (fabs((stop - start) / step) > 1e6)
			JV_FAIL(E, nd, "range() of more than a million numbers");
		jv *r = trail_jv_mk(E, JV_ARRAY);
		for (double i = start; step > 0 ? i < stop : i > stop; i += step)
			trail_jv_push_v(E, r, NULL, trail_jv_mk_num(E, JV_INT, i));
		return r;
	}
	case JF_NAMESPACE: {
		jv *kw = na && a[na - 1]->t == JV_KWARGS ? a[--na] : NULL, *ns = trail_jv_mk(E, JV_NS);
		if (na > 1)
			JV_FAIL(E, nd, "namespace() takes at most 1 positional argument");
		if (na == 1) {
			if (is_obj(a0)) {
				for (size_t i = 0; i < a0->nv; i++)
					trail_jv_obj_set(E, ns, a0->k[i], a0->v[i]);
			} else if (is_arr(a0)) {
				for (size_t i = 0; i < a0->nv; i++) {
					jv *p = a0->v[i];
					if (!is_arr(p) || p->nv != 2 || p->v[0]->t != JV_STR)
						JV_FAIL(E, nd, "namespace() takes a mapping or [key, value] pairs");
					trail_jv_obj_set(E, ns, p->v[0], p->v[1]);
				}
			} else {
				JV_FAIL(E, nd, "namespace() of a %s", trail_jv_type_name[a0->t]);
			}
		}
		for (size_t i = 0; kw && i < kw->nv; i++)
			trail_jv_obj_set(E, ns, kw->k[i], kw->v[i]);
		return ns;
	}
	case JF_STRFTIME: {
		if (!a0 || a0->t != JV_STR)
			JV_FAIL(E, nd, "strftime_now() takes a format string");
		sink o = {0};
		strftime_js(E, &o, a0);
		return trail_jv_sink_str(E, &o);
	}
	case JF_UPPER:
	case JF_LOWER:
		return trail_jv_case_map(E, s, f->fn == JF_UPPER, nd);
	case JF_STRIP: {
		size_t i = trail_jv_trim_start(s->s, s->n);
		return trail_jv_mk_str(E, s->s + i, trail_jv_trim_end(s->s, s->n, i) - i);
	}
	case JF_LSTRIP: {
		size_t i = trail_jv_trim_start(s->s, s->n);
		return trail_jv_mk_str(E, s->s + i, s->n - i);
	}
	case JF_RSTRIP:
		return trail_jv_mk_str(E, s->s, trail_jv_trim_end(s->s, s->n, 0));
	case JF_TITLE:
		return trail_jv_title(E, s);
	case JF_CAPITALIZE: {
		if (s->n && (unsigned char)s->s[0] >= 0x80)
			JV_FAIL(E, nd, "capitalize beyond ASCII is not supported");
		jv *r = trail_jv_mk_strcopy(E, s->s, s->n);
		if (r->n && r->s[0] >= 'a' && r->s[0] <= 'z')
			((char *)r->s)[0] -= 32;
		return r;
	}
	case JF_STARTSWITH:
	case JF_ENDSWITH: {
		if (!a0)
			JV_FAIL(E, nd, "startswith()/endswith() takes an argument");
		jv one = *a0, *lone = &one, **pat = a0->t == JV_STR ? &lone : a0->v;
		size_t np = a0->t == JV_STR ? 1 : a0->nv;
		if (a0->t != JV_STR && !is_arr(a0))
			JV_FAIL(E, nd, "startswith()/endswith() takes a string or a tuple of strings");
		for (size_t i = 0; i < np; i++) {
			const jv *p = pat[i];
			if (p->t != JV_STR)
				JV_FAIL(E, nd, "startswith()/endswith() tuple elements must be strings");
			if (p->n <= s->n && !memcmp(f->fn == JF_STARTSWITH ? s->s : s->s + s->n - p->n, p->s, p->n))
				return trail_jv_mk_bool(E, 1);
		}
		return trail_jv_mk_bool(E, 0);
	}
	case JF_SPLIT:
		return trail_jv_split(E, s, a, na, nd);
	case JF_REPLACE: {
		if (na < 2)
			JV_FAIL(E, nd, "trail_jv_replace() takes at least two arguments");
		if (a[0]->t != JV_STR || a[1]->t != JV_STR)
			JV_FAIL(E, nd, "trail_jv_replace() arguments must be strings");
		const jv *count = NULL;
		if (na > 2)
			count = a[2]->t == JV_KWARGS ? trail_jv_obj_get(a[2], "count", 5) : a[2];
		if (count && count->t != JV_INT && count->t != JV_NULL)
			JV_FAIL(E, nd, "trail_jv_replace() count must be an integer or none");
		return trail_jv_replace(E, s, a[0], a[1], count && count->t == JV_INT ? count->num : -1);
	}
	case JF_GET: {
		if (!a0 || a0->t != JV_STR)
			JV_FAIL(E, nd, "get() takes a string key");
		jv *v = trail_jv_obj_get(s, a0->s, a0->n);
		return v ? v : na > 1 ? a[1] : trail_jv_mk(E, JV_NULL);
	}
	case JF_ITEMS:
		return items_of(E, s);
	case JF_KEYS:
	case JF_VALUES:
		return keys_of(E, s, f->fn == JF_VALUES);
	}
	JV_FAIL(E, nd, "not a function");
}

/* Positional arguments, then one keyword-arguments value when there are any */
static jv **eval_args(ev *E, trail_jnode *const *l, size_t n, env *en, size_t *na)
{
	jv **a = trail_jx_alloc(E->x, (n + 1) * sizeof *a), *kw = NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (l[i]->kind != JN_KWARG)
			a[k++] = eval(E, l[i], en);
	for (size_t i = 0; i < n; i++)
		if (l[i]->kind == JN_KWARG) {
			if (!kw)
				kw = trail_jv_mk(E, JV_KWARGS);
			if (trail_jv_obj_get(kw, l[i]->s, l[i]->n))
				JV_FAIL(E, l[i], "keyword argument '%.*s' given twice", (int)l[i]->n, l[i]->s);
			trail_jv_push_v(E, kw, trail_jv_mk_str(E, l[i]->s, l[i]->n), eval(E, l[i]->a, en));
		}
	if (kw)
		a[k++] = kw;
	*na = k;
	return a;
}

static jv *kwarg(const jv *const *a, size_t na, const char *name)
{
	return na && a[na - 1]->t == JV_KWARGS ? trail_jv_obj_get(a[na - 1], name, strlen(name)) : NULL;
}

static jv *pos(jv *const *a, size_t na, size_t i)
{
	size_t np = na && a[na - 1]->t == JV_KWARGS ? na - 1 : na;
	return i < np ? a[i] : NULL;
}

static double parse_int_js(const jv *s)
{
	size_t i = trail_jv_trim_start(s->s, s->n);
	int neg = 0;
	if (i < s->n && (s->s[i] == '+' || s->s[i] == '-'))
		neg = s->s[i++] == '-';
	double v = 0;
	size_t d = i;
	while (i < s->n && s->s[i] >= '0' && s->s[i] <= '9')
		v = v * 10 + (s->s[i++] - '0');
	return i == d ? NAN : neg ? -v : v;
}

static double parse_float_js(const jv *s)
{
	size_t i = trail_jv_trim_start(s->s, s->n), j = i;
	const char *p = s->s;
	if (j < s->n && (p[j] == '+' || p[j] == '-'))
		j++;
	if (s->n - j >= 8 && !memcmp(p + j, "Infinity", 8))
		return p[i] == '-' ? -INFINITY : INFINITY;
	size_t st = j, dg = 0;
	while (j < s->n && p[j] >= '0' && p[j] <= '9')
		j++, dg++;
	if (j < s->n && p[j] == '.')
		for (j++; j < s->n && p[j] >= '0' && p[j] <= '9'; j++)
			dg++;
	if (!dg)
		return NAN;
	if (j < s->n && (p[j] == 'e' || p[j] == 'E')) {
		size_t k = j + 1;
		if (k < s->n && (p[k] == '+' || p[k] == '-'))
			k++;
		if (k < s->n && p[k] >= '0' && p[k] <= '9') {
			while (k < s->n && p[k] >= '0' && p[k] <= '9')
				k++;
			j = k;
		}
	}
	(void)st;
	char b[128];
	if (j - i >= sizeof b)
		return NAN;
	memcpy(b, p + i, j - i);
	b[j - i] = 0;
	return strtod(b, NULL);
}

static jv *do_tojson(ev *E, const jv *v, jv *const *a, size_t na, const trail_jnode *nd)
{
	jopt op = {0};
	const jv *ind = kwarg((const jv *const *)a, na, "indent"), *asc = kwarg((const jv *const *)a, na, "ensure_ascii"),
		 *sk = kwarg((const jv *const *)a, na, "sort_keys"), *sep = kwarg((const jv *const *)a, na, "separators");
	if (ind && ind->t != JV_INT && ind->t != JV_NULL)
		JV_FAIL(E, nd, "tojson: indent must be an integer");
	if (asc && asc->t != JV_BOOL)
		JV_FAIL(E, nd, "tojson: ensure_ascii must be a boolean");
	if (sk && (sk->t != JV_BOOL || sk->b))
		JV_FAIL(E, nd, "tojson: sort_keys is not supported");
	if (sep && sep->t != JV_NULL) {
		if (!is_arr(sep) || sep->nv != 2 || sep->v[0]->t != JV_STR || sep->v[1]->t != JV_STR)
			JV_FAIL(E, nd, "tojson: separators must be two strings");
		op.item_sep = sep->v[0], op.key_sep = sep->v[1];
	}
	if (ind && ind->t == JV_INT) {
		if (ind->num < 0 || ind->num > 64)
			JV_FAIL(E, nd, "tojson: indent out of range");
		op.indent = (int)ind->num;
	}
	op.ascii = asc && asc->b;
	sink o = {0};
	trail_jv_to_json(E, &o, v, &op, 0, 1, nd);
	return trail_jv_sink_str(E, &o);
}

static jv *join_of(ev *E, const jv *v, const jv *sep, const trail_jnode *nd)
{
	sink o = {0};
	if (v->t == JV_STR) {
		size_t c, *off = trail_jv_cp_offsets(E, v->s, v->n, &c);
		for (size_t i = 0; i < c; i++) {
			if (i)
				trail_jv_put(E, &o, sep->s, sep->n);
			trail_jv_put(E, &o, v->s + off[i], off[i + 1] - off[i]);
		}
		return trail_jv_sink_str(E, &o);
	}
	for (size_t i = 0; i < v->nv; i++) { /* Array.prototype.join on the values: none and undefined as "" */
		if (i)
			trail_jv_put(E, &o, sep->s, sep->n);
		if (v->v[i]->t != JV_NULL && v->v[i]->t != JV_UNDEF)
			trail_jv_value_str(E, &o, v->v[i], nd);
	}
	return trail_jv_sink_str(E, &o);
}

static jv *indent(ev *E, const jv *s, const char *w, size_t wn, int first, int blank)
{
	sink o = {0};
	size_t i = 0, line = 0;
	for (;;) {
		const char *nl = memchr(s->s + i, '\n', s->n - i);
		size_t e = nl ? (size_t)(nl - s->s) : s->n;
		if ((first || line) && (blank || e > i))
			trail_jv_put(E, &o, w, wn);
		trail_jv_put(E, &o, s->s + i, e - i);
		if (!nl)
			break;
		trail_jv_put(E, &o, "\n", 1);
		i = e + 1;
		line++;
	}
	return trail_jv_sink_str(E, &o);
}

static jv *apply_filter(ev *E, jv *v, const trail_jnode *f, env *en)
{
	const char *p = f->s;
	size_t n = f->n;
#define IS(w) (n == strlen(w) && !memcmp(p, w, n))
	if (!f->flag) {
		if (IS("safe"))
			return v;
		if (IS("tojson"))
			return do_tojson(E, v, NULL, 0, f);
		if (is_arr(v)) {
			if (IS("list"))
				return v;
			if (IS("first") || IS("last")) {
				if (!v->nv)
					JV_FAIL(E, f, "first/last of an empty list");
				return v->v[IS("first") ? 0 : v->nv - 1];
			}
			if (IS("length"))
				return trail_jv_mk_num(E, JV_INT, (double)v->nv);
			if (IS("reverse")) {
				jv *r = trail_jv_mk(E, JV_ARRAY);
				for (size_t i = v->nv; i-- > 0;)
					trail_jv_push_v(E, r, NULL, v->v[i]);
				return r;
			}
			if (IS("join"))
				return join_of(E, v, trail_jv_mk_str(E, "", 0), f);
			if (IS("string")) {
				static const jopt plain = {0};
				sink o = {0};
				trail_jv_to_json(E, &o, v, &plain, 0, 0, f);
				return trail_jv_sink_str(E, &o);
			}
			if (IS("unique")) {
				jv *r = trail_jv_mk(E, JV_ARRAY);
				for (size_t i = 0; i < v->nv; i++) {
					size_t j = 0;
					while (j < r->nv && !trail_jv_strict_eq(r->v[j], v->v[i]))
						j++;
					if (j == r->nv)
						trail_jv_push_v(E, r, NULL, v->v[i]);
				}
				return r;
			}
		} else if (v->t == JV_STR) {
			if (IS("length"))
				return trail_jv_mk_num(E, JV_INT, (double)trail_jv_u16_len(v->s, v->n));
			if (IS("upper") || IS("lower"))
				return trail_jv_case_map(E, v, IS("upper"), f);
			if (IS("title"))
				return trail_jv_title(E, v);
			if (IS("capitalize"))
				return call(E, fn(E, JF_CAPITALIZE, v), NULL, 0, f);
			if (IS("trim"))
				return call(E, fn(E, JF_STRIP, v), NULL, 0, f);
			if (IS("indent"))
				return indent(E, v, "    ", 4, 0, 0);
			if (IS("join") || IS("string"))
				return v;
			if (IS("int")) {
				double d = parse_int_js(v);
				return trail_jv_mk_num(E, JV_INT, isnan(d) ? 0 : d);
			}
			if (IS("float")) {
				double d = parse_float_js(v);
				return trail_jv_mk_num(E, JV_FLOAT, isnan(d) ? 0 : d);
			}
		} else if (is_num(v)) {
			if (IS("abs"))
				return trail_jv_mk_num(E, v->t, fabs(v->num));
			if (IS("int"))
				return trail_jv_mk_num(E, JV_INT, trunc(v->num) + 0);
			if (IS("float"))
				return trail_jv_mk_num(E, JV_FLOAT, v->num);
			if (IS("string")) {
				sink o = {0};
				trail_jv_to_string(E, &o, v, f);
				return trail_jv_sink_str(E, &o);
			}
		} else if (is_obj(v)) {
			if (IS("items"))
				return items_of(E, v);
			if (IS("length"))
				return trail_jv_mk_num(E, JV_INT, (double)v->nv);
			jv *b = builtin(E, v, p, n);
			if (b)
				return call(E, b, NULL, 0, f);
		} else if (v->t == JV_BOOL) {
			if (IS("bool"))
				return trail_jv_mk_bool(E, v->b);
			if (IS("int") || IS("float"))
				return trail_jv_mk_num(E, IS("int") ? JV_INT : JV_FLOAT, v->b);
			if (IS("string"))
				return trail_jv_mk_str(E, v->b ? "true" : "false", v->b ? 4 : 5);
		}
		JV_FAIL(E, f, "the filter %.*s of a %s is not supported", (int)n, p, trail_jv_type_name[v->t]);
	}
	size_t na;
	jv **a = eval_args(E, f->l, f->nl, en, &na);
	if (IS("tojson"))
		return do_tojson(E, v, a, na, f);
	if (IS("join")) {
		jv *sep = pos(a, na, 0);
		if (!sep)
			sep = kwarg((const jv *const *)a, na, "separator");
		if (!sep)
			sep = trail_jv_mk_str(E, "", 0);
		if (v->t != JV_STR && !is_arr(v))
			JV_FAIL(E, f, "join of a %s", trail_jv_type_name[v->t]);
		if (sep->t != JV_STR)
			JV_FAIL(E, f, "join: the separator must be a string");
		return join_of(E, v, sep, f);
	}
	if (IS("default")) {
		jv *d = pos(a, na, 0), *b = pos(a, na, 1);
		if (!b)
			b = kwarg((const jv *const *)a, na, "boolean");
		if (b && b->t != JV_BOOL)
			JV_FAIL(E, f, "default: the flag must be a boolean");
		if (v->t == JV_UNDEF || (b && b->b && !trail_jv_truthy(v)))
			return d ? d : trail_jv_mk_str(E, "", 0);
		return v;
	}
	if (IS("int") || IS("float")) {
		int isint = IS("int");
		jv *d = pos(a, na, 0);
		if (!d)
			d = kwarg((const jv *const *)a, na, "default");
		if (!d)
			d = trail_jv_mk_num(E, isint ? JV_INT : JV_FLOAT, 0);
		if (v->t == JV_STR) {
			double x = isint ? parse_int_js(v) : parse_float_js(v);
			return isnan(x) ? d : trail_jv_mk_num(E, isint ? JV_INT : JV_FLOAT, x);
		}
		if (is_num(v))
			return trail_jv_mk_num(E, isint ? JV_INT : JV_FLOAT, isint ? trunc(v->num) + 0 : v->num);
		if (v->t == JV_BOOL)
			return trail_jv_mk_num(E, isint ? JV_INT : JV_FLOAT, v->b);
		JV_FAIL(E, f, "the filter %.*s of a %s", (int)n, p, trail_jv_type_name[v->t]);
	}
	if (is_arr(v) && IS("map")) {
		jv *attr = kwarg((const jv *const *)a, na, "attribute"), *d = kwarg((const jv *const *)a, na, "default");
		if (!attr)
			JV_FAIL(E, f, "map() without attribute= is not supported");
		if (attr->t != JV_STR)
			JV_FAIL(E, f, "map: attribute must be a string");
		if (memchr(attr->s, '.', attr->n))
			JV_FAIL(E, f, "map: dotted attributes are not supported");
		jv *r = trail_jv_mk(E, JV_ARRAY);
		for (size_t i = 0; i < v->nv; i++) {
			if (!is_attr(v->v[i]))
				JV_FAIL(E, f, "map: the items must be mappings");
			jv *x = trail_jv_obj_get(v->v[i], attr->s, attr->n);
			trail_jv_push_v(E, r, NULL, x ? x : d ? d : trail_jv_mk(E, JV_UNDEF));
		}
		return r;
	}
	if (v->t == JV_STR && IS("indent")) {
		jv *w = pos(a, na, 0), *first = pos(a, na, 1), *blank = pos(a, na, 2);
		if (!w)
			w = kwarg((const jv *const *)a, na, "width");
		if (!first)
			first = kwarg((const jv *const *)a, na, "first");
		if (!blank)
			blank = kwarg((const jv *const *)a, na, "blank");
		if (w && w->t != JV_INT && w->t != JV_STR)
			JV_FAIL(E, f, "indent: width must be an integer or a string");
		char sp[256];
		const char *ws = sp;
		size_t wn = 4;
		if (w && w->t == JV_STR)
			ws = w->s, wn = w->n;
		else
			wn = w ? (w->num < 0 ? 0 : w->num > 255 ? 255 : (size_t)w->num) : 4;
		memset(sp, ' ', sizeof sp);
		return indent(E, v, ws, wn, first && trail_jv_truthy(first), blank && trail_jv_truthy(blank));
	}
	if (v->t == JV_STR && IS("replace")) {
		jv **b = trail_jx_alloc(E->x, (na + 2) * sizeof *b);
		size_t nb = 0;
		for (size_t i = 0; i < na; i++)
			if (a[i]->t != JV_KWARGS)
				b[nb++] = a[i];
		b[nb++] = na && a[na - 1]->t == JV_KWARGS ? a[na - 1] : trail_jv_mk(E, JV_KWARGS);
		return call(E, fn(E, JF_REPLACE, v), b, nb, f);
	}
	if (is_obj(v)) {
		jv *b = builtin(E, v, p, n);
		if (b && b->t == JV_FUNC)
			return call(E, b, a, na, f);
	}
	JV_FAIL(E, f, "the filter %.*s(...) of a %s is not supported", (int)n, p, trail_jv_type_name[v->t]);
#undef IS
}

static int test(ev *E, const trail_jnode *nd, const jv *v)
{
	const char *p = nd->s;
	size_t n = nd->n;
#define IS(w) (n == strlen(w) && !memcmp(p, w, n))
	if (IS("boolean")) return v->t == JV_BOOL;
	if (IS("callable")) return v->t == JV_FUNC;
	if (IS("odd") || IS("even")) {
		if (v->t != JV_INT)
			JV_FAIL(E, nd, "cannot test odd or even of a %s", trail_jv_type_name[v->t]);
		return (fmod(v->num, 2) != 0) == IS("odd");
	}
	if (IS("false")) return v->t == JV_BOOL && !v->b;
	if (IS("true")) return v->t == JV_BOOL && v->b;
	if (IS("none")) return v->t == JV_NULL;
	if (IS("string")) return v->t == JV_STR;
	if (IS("number")) return is_num(v);
	if (IS("integer")) return v->t == JV_INT;
	if (IS("iterable")) return v->t == JV_ARRAY || v->t == JV_STR;
	if (IS("mapping")) return is_obj(v);
	if (IS("sequence")) return is_arr(v) || is_obj(v) || v->t == JV_STR;
	if (IS("defined")) return v->t != JV_UNDEF;
	if (IS("undefined")) return v->t == JV_UNDEF;
	if (IS("lower") || IS("upper")) {
		if (v->t != JV_STR)
			JV_FAIL(E, nd, "cannot test lower or upper of a %s", trail_jv_type_name[v->t]);
		jv *m = trail_jv_case_map(E, v, IS("upper"), nd);
		return !memcmp(m->s, v->s, v->n);
	}
#undef IS
	JV_FAIL(E, nd, "the test %.*s is not supported", (int)n, p);
}

static jv *slice(ev *E, const jv *o, const trail_jnode *sl, env *en)
{
	jv *bv[3] = {eval(E, sl->a, en), eval(E, sl->b, en), eval(E, sl->c, en)};
	if (!is_arr(o) && o->t != JV_STR)
		JV_FAIL(E, sl, "a slice of a %s", trail_jv_type_name[o->t]);
	for (int i = 0; i < 3; i++)
		if (bv[i]->t != JV_INT && bv[i]->t != JV_UNDEF)
			JV_FAIL(E, sl, "slice bounds must be integers");
	size_t cnt, *off = NULL;
	if (o->t == JV_STR)
		off = trail_jv_cp_offsets(E, o->s, o->n, &cnt);
	else
		cnt = o->nv;
	double len = (double)cnt, step = bv[2]->t == JV_INT ? bv[2]->num : 1, start, stop;
	int dir = step > 0 ? 1 : step < 0 ? -1 : 0;
	if (dir >= 0) {
		start = bv[0]->t == JV_INT ? bv[0]->num : 0;
		stop = bv[1]->t == JV_INT ? bv[1]->num : len;
		start = start < 0 ? fmax(len + start, 0) : fmin(start, len);
		stop = stop < 0 ? fmax(len + stop, 0) : fmin(stop, len);
	} else {
		start = bv[0]->t == JV_INT ? bv[0]->num : len - 1;
		stop = bv[1]->t == JV_INT ? bv[1]->num : -1;
		start = start < 0 ? fmax(len + start, -1) : fmin(start, len - 1);
		stop = stop < -1 ? fmax(len + stop, -1) : fmin(stop, len - 1);
	}
	jv *r = trail_jv_mk(E, o->t == JV_STR ? JV_STR : JV_ARRAY);
	sink s = {0};
	for (double i = start; dir * i < dir * stop; i += step) {
		size_t k = (size_t)i;
		if (o->t == JV_STR)
			trail_jv_put(E, &s, o->s + off[k], off[k + 1] - off[k]);
		else
			trail_jv_push_v(E, r, NULL, o->v[k]);
	}
	if (o->t == JV_STR)
		return trail_jv_sink_str(E, &s);
	return r;
}

static jv *member(ev *E, const trail_jnode *nd, env *en)
{
	jv *o = eval(E, nd->a, en), *prop, *v = NULL;
	if (nd->flag && nd->b->kind == JN_SLICE)
		return slice(E, o, nd->b, en);
	if (nd->flag)
		prop = eval(E, nd->b, en);
	else if (nd->b->kind == JN_INT)
		prop = trail_jv_mk_num(E, JV_INT, nd->b->num);
	else
		prop = trail_jv_mk_str(E, nd->b->s, nd->b->n);
	if (is_attr(o)) {
		if (prop->t != JV_STR)
			JV_FAIL(E, nd, "a mapping's member must be named by a string, not a %s", trail_jv_type_name[prop->t]);
		v = trail_jv_obj_get(o, prop->s, prop->n);
		if (!v && o->t != JV_NS)
			v = builtin(E, o, prop->s, prop->n);
	} else if (is_arr(o) || o->t == JV_STR) {
		if (prop->t == JV_INT) {
			double len = o->t == JV_STR ? (double)trail_jv_u16_len(o->s, o->n) : (double)o->nv, i = prop->num;
			if (i < 0)
				i += len;
			if (i >= 0 && i < len && i == floor(i)) {
				if (is_arr(o))
					return o->v[(size_t)i];
				size_t u = 0, at = 0;
				while (at < o->n) {
					size_t k = at;
					uint32_t c = trail_jx_cp(o->s, o->n, &k);
					size_t w = c >= 0x10000 ? 2 : 1;
					if ((double)(u + w) > i) {
						if (w == 2)
							JV_FAIL(E, nd, "indexing into half of a character beyond U+FFFF is not supported");
						return trail_jv_mk_str(E, o->s + at, k - at);
					}
					u += w;
					at = k;
				}
			}
		} else if (prop->t == JV_STR) {
			v = builtin(E, o, prop->s, prop->n);
		} else {
			JV_FAIL(E, nd, "an index must be an integer or a string, not a %s", trail_jv_type_name[prop->t]);
		}
	} else {
		if (prop->t != JV_STR)
			JV_FAIL(E, nd, "a member must be named by a string, not a %s", trail_jv_type_name[prop->t]);
	}
	return v ? v : trail_jv_mk(E, JV_UNDEF);
}

static jv *binop(ev *E, const trail_jnode *nd, env *en)
{
	const char *op = nd->s;
	size_t on = nd->n;
#define OP(w) (on == strlen(w) && !memcmp(op, w, on))
	jv *l = eval(E, nd->a, en);
	if (OP("and"))
		return trail_jv_truthy(l) ? eval(E, nd->b, en) : l;
	if (OP("or"))
		return trail_jv_truthy(l) ? l : eval(E, nd->b, en);
	jv *r = eval(E, nd->b, en);
	if (OP("=="))
		return trail_jv_mk_bool(E, trail_jv_loose_eq(E, l, r, nd));
	if (OP("!="))
		return trail_jv_mk_bool(E, !trail_jv_loose_eq(E, l, r, nd));
	if (is_num(l) && is_num(r) && !OP("~") && !OP("**")) {
		double a = l->num, b = r->num;
		int t = l->t == JV_FLOAT || r->t == JV_FLOAT ? JV_FLOAT : JV_INT;
		if (OP("+")) return trail_jv_mk_num(E, t, a + b);
		if (OP("-")) return trail_jv_mk_num(E, t, a - b);
		if (OP("*")) return trail_jv_mk_num(E, t, a * b);
		if (OP("/")) return trail_jv_mk_num(E, JV_FLOAT, a / b);
		if (OP("//")) return trail_jv_mk_num(E, t, floor(a / b));
		if (OP("%")) return trail_jv_mk_num(E, t, fmod(a, b));
		if (OP("<")) return trail_jv_mk_bool(E, a < b);
		if (OP(">")) return trail_jv_mk_bool(E, a > b);
		if (OP(">=")) return trail_jv_mk_bool(E, a >= b);
		if (OP("<=")) return trail_jv_mk_bool(E, a <= b);
	} else if (l->t == JV_UNDEF || r->t == JV_UNDEF) {
		if (r->t == JV_UNDEF && (OP("in") || OP("not in")))
			return trail_jv_mk_bool(E, OP("not in"));
		if (OP("~") && l->t != JV_NULL && r->t != JV_NULL)
			return trail_jv_concat(E, l, r, nd);
		JV_FAIL(E, nd, "cannot apply %.*s to an undefined value", (int)on, op);
	} else if (l->t == JV_NULL || r->t == JV_NULL) {
		JV_FAIL(E, nd, "cannot apply %.*s to none", (int)on, op);
	} else if (OP("~")) {
		return trail_jv_concat(E, l, r, nd);
	} else if (OP("**") && (is_num(l) || l->t == JV_BOOL) && (is_num(r) || r->t == JV_BOOL)) {
		double a = l->t == JV_BOOL ? l->b : l->num, b = r->t == JV_BOOL ? r->b : r->num;
		if (a == 0 && b < 0)
			JV_FAIL(E, nd, "0.0 cannot be raised to a negative power");
		double x = pow(a, b);
		if (!isfinite(x))
			JV_FAIL(E, nd, "exponentiation result is not a finite real number");
		return trail_jv_mk_num(E, l->t == JV_FLOAT || r->t == JV_FLOAT || b < 0 ? JV_FLOAT : JV_INT, x);
	} else if (is_arr(l) && is_arr(r)) {
		if (OP("+")) {
			jv *c = trail_jv_mk(E, JV_ARRAY);
			for (size_t i = 0; i < l->nv; i++)
				trail_jv_push_v(E, c, NULL, l->v[i]);
			for (size_t i = 0; i < r->nv; i++)
				trail_jv_push_v(E, c, NULL, r->v[i]);
			return c;
		}
	} else if (is_arr(r)) {
		int m = 0;
		for (size_t i = 0; i < r->nv && !m; i++)
			m = trail_jv_strict_eq(r->v[i], l);
		if (OP("in")) return trail_jv_mk_bool(E, m);
		if (OP("not in")) return trail_jv_mk_bool(E, !m);
	}
	if ((l->t == JV_STR || r->t == JV_STR) && OP("+"))
		return trail_jv_concat(E, l, r, nd);
	if (l->t == JV_STR && r->t == JV_STR && (OP("in") || OP("not in")))
		return trail_jv_mk_bool(E, (trail_jv_find(r->s, r->n, l->s, l->n) != NULL) == OP("in"));
	if (l->t == JV_STR && is_obj(r) && (OP("in") || OP("not in")))
		return trail_jv_mk_bool(E, (trail_jv_obj_get(r, l->s, l->n) != NULL) == OP("in"));
	JV_FAIL(E, nd, "the operator %.*s between a %s and a %s is not supported", (int)on, op, trail_jv_type_name[l->t],
	     trail_jv_type_name[r->t]);
#undef OP
}

static void assign(ev *E, const trail_jnode *target, jv *v, env *en)
{
	if (target->kind == JN_IDENT) {
		env_set(E, en, target->s, target->n, v);
	} else if (target->kind == JN_TUPLE) {
		if (!is_arr(v))
			JV_FAIL(E, target, "cannot unpack a %s", trail_jv_type_name[v->t]);
		if (v->nv != target->nl)
			JV_FAIL(E, target, "too %s items to unpack", target->nl > v->nv ? "few" : "many");
		for (size_t i = 0; i < target->nl; i++) {
			if (target->l[i]->kind != JN_IDENT)
				JV_FAIL(E, target, "cannot unpack into something that is not a name");
			env_set(E, en, target->l[i]->s, target->l[i]->n, v->v[i]);
		}
	} else if (target->kind == JN_MEMBER) {
		jv *o = eval(E, target->a, en);
		if (o->t != JV_NS)
			JV_FAIL(E, target, "cannot assign a member of a %s, only of a namespace", trail_jv_type_name[o->t]);
		if (target->flag || target->b->kind != JN_IDENT)
			JV_FAIL(E, target, "cannot assign a member that is not named");
		trail_jv_obj_set(E, o, trail_jv_mk_str(E, target->b->s, target->b->n), v);
	} else {
		JV_FAIL(E, target, "cannot assign to this expression");
	}
}

static void for_loop(ev *E, const trail_jnode *nd, env *en, sink *o)
{
	env *sc = env_new(E, en);
	jv *it = eval(E, nd->b, sc);
	if (!is_arr(it) && !is_obj(it))
		JV_FAIL(E, nd, "cannot loop over a %s", trail_jv_type_name[it->t]);
	if (is_obj(it))
		it = keys_of(E, it, 0);
	jv **items = trail_jx_alloc(E->x, (it->nv + 1) * sizeof *items);
	size_t n = 0;
	for (size_t i = 0; i < it->nv; i++) {
		jv *c = it->v[i];
		if (nd->a->kind == JN_TUPLE) {
			if (c->t != JV_ARRAY)
				JV_FAIL(E, nd, "cannot unpack a %s", trail_jv_type_name[c->t]);
			if (c->nv != nd->a->nl)
				JV_FAIL(E, nd, "too %s items to unpack", nd->a->nl > c->nv ? "few" : "many");
		}
		if (nd->c) {
			env *ls = env_new(E, sc);
			assign(E, nd->a, c, ls);
			if (!trail_jv_truthy(eval(E, nd->c, ls)))
				continue;
		}
		items[n++] = c;
	}
	int none = 1;
	for (size_t i = 0; i < n; i++) {
		static const char *const k[] = {"index", "index0", "revindex", "revindex0", "first", "last",
						"length", "previtem", "nextitem"};
		jv *loop = trail_jv_mk(E, JV_OBJECT);
		double d[] = {(double)i + 1, (double)i, (double)(n - i), (double)(n - i - 1)};
		for (int j = 0; j < 4; j++)
			trail_jv_push_v(E, loop, trail_jv_mk_str(E, k[j], strlen(k[j])), trail_jv_mk_num(E, JV_INT, d[j]));
		trail_jv_push_v(E, loop, trail_jv_mk_str(E, k[4], 5), trail_jv_mk_bool(E, i == 0));
		trail_jv_push_v(E, loop, trail_jv_mk_str(E, k[5], 4), trail_jv_mk_bool(E, i == n - 1));
		trail_jv_push_v(E, loop, trail_jv_mk_str(E, k[6], 6), trail_jv_mk_num(E, JV_INT, (double)n));
		trail_jv_push_v(E, loop, trail_jv_mk_str(E, k[7], 8), i > 0 ? items[i - 1] : trail_jv_mk(E, JV_UNDEF));
		trail_jv_push_v(E, loop, trail_jv_mk_str(E, k[8], 8), i + 1 < n ? items[i + 1] : trail_jv_mk(E, JV_UNDEF));
		env_set(E, sc, "loop", 4, loop);
		assign(E, nd->a, items[i], sc);
		size_t mark = o->n;
		render(E, nd->l, nd->nl, sc, o);
		if (E->ctl) { /* the iteration's output goes with it, as the reference's exception takes it */
			o->n = mark;
			if (o->p)
				o->p[mark] = 0;
			int brk = E->ctl == 1;
			E->ctl = 0;
			if (brk)
				break;
			continue;
		}
		none = 0;
	}
	if (none)
		render(E, nd->l2, nd->nl2, sc, o);
}

static jv *eval(ev *E, const trail_jnode *nd, env *en)
{
	if (!nd)
		return trail_jv_mk(E, JV_UNDEF);
	switch (nd->kind) {
	case JN_IDENT:
		return env_get(E, en, nd->s, nd->n);
	case JN_INT:
		return trail_jv_mk_num(E, JV_INT, nd->num);
	case JN_FLOAT:
		return trail_jv_mk_num(E, JV_FLOAT, nd->num);
	case JN_STR:
	case JN_TEXT:
		return trail_jv_mk_str(E, nd->s, nd->n);
	case JN_BINARY:
		return binop(E, nd, en);
	case JN_MEMBER:
		return member(E, nd, en);
	case JN_CALL: {
		size_t na;
		jv **a = eval_args(E, nd->l, nd->nl, en, &na), *f = eval(E, nd->a, en);
		if (f->t != JV_FUNC)
			JV_FAIL(E, nd, "cannot call a %s", trail_jv_type_name[f->t]);
		return call(E, f, a, na, nd);
	}
	case JN_FILTER:
		return apply_filter(E, eval(E, nd->a, en), nd, en);
	case JN_TEST: {
		int r = test(E, nd, eval(E, nd->a, en));
		return trail_jv_mk_bool(E, nd->flag ? !r : r);
	}
	case JN_TERNARY:
		return eval(E, trail_jv_truthy(eval(E, nd->a, en)) ? nd->b : nd->c, en);
	case JN_SELECT:
		return trail_jv_truthy(eval(E, nd->b, en)) ? eval(E, nd->a, en) : trail_jv_mk(E, JV_UNDEF);
	case JN_UNARY: {
		jv *a = eval(E, nd->a, en);
		if (nd->s[0] == 'n')
			return trail_jv_mk_bool(E, !trail_jv_truthy(a));
		if (!is_num(a) && a->t != JV_BOOL)
			JV_FAIL(E, nd, "unary %c of a %s", nd->s[0], trail_jv_type_name[a->t]);
		double x = (nd->s[0] == '-' ? -1 : 1) * (a->t == JV_BOOL ? a->b : a->num);
		return trail_jv_mk_num(E, a->t == JV_FLOAT ? JV_FLOAT : JV_INT, x);
	}
	case JN_ARRAY:
	case JN_TUPLE: {
		jv *r = trail_jv_mk(E, nd->kind == JN_ARRAY ? JV_ARRAY : JV_TUPLE);
		for (size_t i = 0; i < nd->nl; i++)
			trail_jv_push_v(E, r, NULL, eval(E, nd->l[i], en));
		return r;
	}
	case JN_OBJECT: {
		jv *r = trail_jv_mk(E, JV_OBJECT);
		for (size_t i = 0; i < nd->nl; i++) {
			jv *k = eval(E, nd->l[i], en);
			if (k->t != JV_STR)
				JV_FAIL(E, nd, "mapping keys must be strings, not a %s", trail_jv_type_name[k->t]);
			trail_jv_obj_set(E, r, k, eval(E, nd->l2[i], en));
		}
		return r;
	}
	case JN_MACRO: {
		jv *f = fn(E, JF_MACRO, NULL);
		f->mac = nd, f->menv = en;
		env_set(E, en, nd->s, nd->n, f);
		return trail_jv_mk(E, JV_NULL);
	}
	case JN_FILTERBLK: {
		sink o = {0};
		render(E, nd->l2, nd->nl2, en, &o);
		return apply_filter(E, trail_jv_sink_str(E, &o), nd, en);
	}
	case JN_BREAK:
	case JN_CONTINUE:
		E->ctl = nd->kind == JN_BREAK ? 1 : 2;
		return trail_jv_mk(E, JV_NULL);
	case JN_COMMENT:
		return trail_jv_mk(E, JV_NULL);
	}
	JV_FAIL(E, nd, "this construct is not supported");
}

static void render(ev *E, trail_jnode *const *l, size_t n, env *en, sink *o)
{
	for (size_t i = 0; i < n && !E->ctl; i++) {
		const trail_jnode *nd = l[i];
		switch (nd->kind) {
		case JN_TEXT:
			trail_jv_put(E, o, nd->s, nd->n);
			break;
		case JN_IF: {
			int t = trail_jv_truthy(eval(E, nd->a, en));
			if (!E->ctl)
				render(E, t ? nd->l : nd->l2, t ? nd->nl : nd->nl2, en, o);
			break;
		}
		case JN_FOR:
			for_loop(E, nd, en, o);
			break;
		case JN_SET: {
			jv *v;
			if (nd->b) {
				v = eval(E, nd->b, en);
			} else {
				sink b = {0};
				render(E, nd->l, nd->nl, en, &b);
				v = trail_jv_sink_str(E, &b);
			}
			if (!E->ctl)
				assign(E, nd->a, v, en);
			break;
		}
		case JN_COMMENT:
			break;
		default: {
			jv *v = eval(E, nd, en);
			if (!E->ctl && v->t != JV_NULL && v->t != JV_UNDEF)
				trail_jv_to_string(E, o, v, nd);
		}
		}
	}
}

int trail_jinja_render(const char *tmpl, size_t tlen, const json_t *vars, long long now, char **out, size_t *olen,
		       trail_error *err)
{
	trail_jx x = {0};
	ev E = {&x, 0, 0, now};
	x.err = err;
	*out = NULL;
	if (olen)
		*olen = 0;
	if (vars && !json_is_object(vars))
		return trail_error_set(err, TRAIL_EINTERNAL, "chat_template: the variables must be an object");
	if (setjmp(x.jb)) {
		trail_jx_release(&x);
		return x.code;
	}
	size_t n;
	trail_jnode **prog = trail_jx_parse(&x, tmpl, tlen, &n);
	env *g = env_new(&E, NULL);
	static const struct { const char *name; int f; } fns[] = {
		{"namespace", JF_NAMESPACE}, {"raise_exception", JF_RAISE}, {"range", JF_RANGE}, {"strftime_now", JF_STRFTIME}};
	for (size_t i = 0; i < 4; i++)
		env_set(&E, g, fns[i].name, strlen(fns[i].name), fn(&E, fns[i].f, NULL));
	env_set(&E, g, "true", 4, trail_jv_mk_bool(&E, 1));
	env_set(&E, g, "false", 5, trail_jv_mk_bool(&E, 0));
	env_set(&E, g, "none", 4, trail_jv_mk(&E, JV_NULL));
	env_set(&E, g, "True", 4, trail_jv_mk_bool(&E, 1));
	env_set(&E, g, "False", 5, trail_jv_mk_bool(&E, 0));
	env_set(&E, g, "None", 4, trail_jv_mk(&E, JV_NULL));
	if (vars) {
		const char *k;
		json_t *v;
		json_object_foreach((json_t *)vars, k, v) {
			size_t kn = strlen(k);
			char *kc = trail_jx_alloc(&x, kn + 1);
			memcpy(kc, k, kn);
			env_set(&E, g, kc, kn, trail_jv_from_json(&E, v));
		}
	}
	sink o = {0};
	render(&E, prog, n, g, &o);
	if (E.ctl)
		trail_jx_fail(&x, TRAIL_EDATA, 0, "break or continue outside a loop");
	char *r = trail_malloc(o.n + 1);
	if (!r)
		trail_jx_fail(&x, TRAIL_ENOMEM, 0, "out of memory");
	if (o.n)
		memcpy(r, o.p, o.n);
	r[o.n] = 0;
	*out = r;
	if (olen)
		*olen = o.n;
	trail_jx_release(&x);
	return TRAIL_OK;
}

int trail_chat_render(const char *tmpl, const json_t *messages, int add_generation_prompt, const json_t *extra,
		      char **out, trail_error *err)
{
	*out = NULL;
	if (!json_is_array(messages))
		return trail_error_set(err, TRAIL_EDATA, "messages must be an array");
	json_t *vars = extra ? json_deep_copy(extra) : json_object();
	if (!vars || !json_is_object(vars) || json_object_set(vars, "messages", (json_t *)messages) ||
	    json_object_set_new(vars, "add_generation_prompt", json_boolean(add_generation_prompt))) {
		json_decref(vars);
		return trail_error_set(err, extra && !json_is_object(extra) ? TRAIL_EINTERNAL : TRAIL_ENOMEM,
				       "chat_template: cannot build the variables");
	}
	int rc = trail_jinja_render(tmpl, strlen(tmpl), vars, -1, out, NULL, err);
	json_decref(vars);
	return rc;
}

/* The chat template and special tokens of tokenizer_config.json's bytes (file names it in errors) */
static int chat_config_parse(const void *buf, size_t len, const char *file, char **tmpl, json_t **vars,
			     trail_error *err)
{
	static const char *const special[] = {"bos_token", "eos_token", "unk_token", "sep_token",
					      "pad_token", "cls_token", "mask_token"};
	json_error_t je;
	json_t *c = json_loadb(buf, len, 0, &je), *t = c ? json_object_get(c, "chat_template") : NULL, *v = NULL;
	int rc = TRAIL_OK;
	if (!json_is_object(c)) {
		rc = trail_error_at(err, TRAIL_EDATA, file, je.line, "not a JSON object%s%s", c ? "" : ": ", c ? "" : je.text);
		goto out;
	}
	if (json_is_array(t)) {
		size_t i;
		json_t *e, *pick = NULL;
		json_array_foreach(t, i, e) if (json_is_string(json_object_get(e, "name")) &&
						  !strcmp(json_string_value(json_object_get(e, "name")), "default"))
			pick = json_object_get(e, "template");
		t = pick;
	}
	if (!json_is_string(t)) {
		rc = trail_error_set(err, TRAIL_ENOINPUT, "%s has no chat_template", file);
		goto out;
	}
	v = json_pack("{s:n,s:n}", "tools", "documents");
	*tmpl = trail_strdup(json_string_value(t));
	if (!v || !*tmpl) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < sizeof special / sizeof *special; i++) {
		json_t *s = json_object_get(c, special[i]);
		if (json_is_object(s))
			s = json_object_get(s, "content");
		if (json_is_string(s) && json_string_length(s) && json_object_set(v, special[i], s)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
	}
	*vars = v;
	v = NULL;
out:
	if (rc) {
		trail_free(*tmpl);
		*tmpl = NULL;
	}
	json_decref(v);
	json_decref(c);
	return rc;
}

int trail_chat_config(const char *dir, char **tmpl, json_t **vars, trail_error *err)
{
	*tmpl = NULL;
	*vars = NULL;
	char *p = trail_path(dir, "tokenizer_config.json");
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	void *buf;
	size_t len;
	int rc = trail_read_file(p, 16 << 20, &buf, &len, err);
	if (!rc) {
		rc = chat_config_parse(buf, len, "tokenizer_config.json", tmpl, vars, err);
		trail_free(buf);
	} else if (rc != TRAIL_ENOMEM) {
		rc = trail_error_set(err, TRAIL_ENOINPUT, "no tokenizer_config.json");
	}
	trail_free(p);
	return rc;
}

int trail_tokenizer_chat(const trail_tokenizer *t, char **tmpl, json_t **vars, trail_error *err)
{
	*tmpl = NULL;
	*vars = NULL;
	if (!t->config)
		return trail_error_set(err, TRAIL_ENOINPUT, "the tokenizer has no tokenizer_config.json");
	return chat_config_parse(t->config, t->config_len, "tokenizer_config.json", tmpl, vars, err);
}
