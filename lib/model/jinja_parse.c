/*
 * Chat templates, first half: the arena, the preprocessing, the lexer and
 * the parser of the Jinja subset, each following @huggingface/jinja
 * (src/lexer.ts, src/parser.ts) step by step, since the bytes a template
 * renders to depend on its exact reading: the final newline dropped,
 * lstrip_blocks and trim_blocks applied to the raw source by pattern (also
 * inside string literals, as there), `{%-`/`-%}` trimming ECMAScript's
 * whitespace, the transformers `generation` tag removed, and operator
 * precedence as its parser has it (filters bind tighter than `is`, which
 * binds tighter than arithmetic). What it has no rule for is an error
 * naming the template's line.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_int.h"

struct trail_jblk {
	struct trail_jblk *next;
	size_t used, cap;
	max_align_t data[];
};

void *trail_jx_alloc(trail_jx *x, size_t n)
{
	n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
	struct trail_jblk *b = x->blk;
	if (!b || b->cap - b->used < n) {
		size_t cap = n > 60000 ? n : 60000;
		b = trail_malloc(sizeof *b + cap);
		if (!b)
			trail_jx_fail(x, TRAIL_ENOMEM, 0, "out of memory");
		b->cap = cap;
		b->used = 0;
		b->next = x->blk;
		x->blk = b;
	}
	void *p = (char *)b->data + b->used;
	b->used += n;
	memset(p, 0, n);
	return p;
}

void trail_jx_release(trail_jx *x)
{
	while (x->blk) {
		struct trail_jblk *n = x->blk->next;
		trail_free(x->blk);
		x->blk = n;
	}
}

void trail_jx_fail(trail_jx *x, int code, int line, const char *fmt, ...)
{
	char m[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof m, fmt, ap);
	va_end(ap);
	x->code = code;
	if (line > 0)
		trail_error_at(x->err, code, "chat_template", line, "%s", m);
	else
		trail_error_set(x->err, code, "chat_template: %s", m);
	longjmp(x->jb, 1);
}

int trail_jx_space(uint32_t c)
{
	if (c <= 32)
		return c == 32 || (c >= 9 && c <= 13);
	return c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
	       c == 0x202f || c == 0x205f || c == 0x3000 || c == 0xfeff;
}

uint32_t trail_jx_cp(const char *s, size_t n, size_t *i)
{
	const unsigned char *u = (const unsigned char *)s + *i;
	size_t k = u[0] < 0x80 ? 1 : u[0] >= 0xf0 ? 4 : u[0] >= 0xe0 ? 3 : u[0] >= 0xc0 ? 2 : 1;
	if (*i + k > n)
		k = 1;
	uint32_t c = k == 1 ? u[0] : u[0] & (0x7f >> k);
	for (size_t j = 1; j < k; j++)
		c = c << 6 | (u[j] & 0x3f);
	*i += k;
	return c;
}

/* ---- preprocessing: the source with the lines of each byte ---- */

typedef struct pre {
	char *s;
	int *ln;
	size_t n;
} pre;

static void pre_put(pre *p, char c, int line)
{
	p->s[p->n] = c;
	p->ln[p->n++] = line;
}

static int line_start(const pre *p, size_t i)
{
	if (i == 0)
		return 1;
	char c = p->s[i - 1];
	if (c == '\n' || c == '\r')
		return 1;
	/* U+2028, U+2029 end lines for ECMAScript's ^ with the m flag too */
	return i >= 3 && (unsigned char)p->s[i - 3] == 0xe2 && (unsigned char)p->s[i - 2] == 0x80 &&
	       ((unsigned char)p->s[i - 1] == 0xa8 || (unsigned char)p->s[i - 1] == 0xa9);
}

static size_t spaces_at(const char *s, size_t n, size_t i)
{
	size_t j = i;
	while (j < n) {
		size_t k = j;
		if (!trail_jx_space(trail_jx_cp(s, n, &k)))
			break;
		j = k;
	}
	return j - i;
}

static pre preprocess(trail_jx *x, const char *src, size_t n)
{
	pre a = {trail_jx_alloc(x, n + 1), trail_jx_alloc(x, (n + 1) * sizeof(int)), 0}, b;
	int line = 1;
	if (n && src[n - 1] == '\n')
		n--;
	/* lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1" */
	for (size_t i = 0; i < n;) {
		if (line_start(&a, a.n) && (src[i] == ' ' || src[i] == '\t')) {
			size_t j = i;
			while (j < n && (src[j] == ' ' || src[j] == '\t'))
				j++;
			if (j + 1 < n && src[j] == '{' && (src[j + 1] == '#' || src[j + 1] == '%' || src[j + 1] == '-')) {
				i = j;
				continue;
			}
			while (i < j)
				pre_put(&a, src[i++], line);
			continue;
		}
		pre_put(&a, src[i], line);
		if (src[i++] == '\n')
			line++;
	}
	/* trim_blocks: /([#%-]})\n/g -> "$1" */
	b = (pre){trail_jx_alloc(x, a.n + 1), trail_jx_alloc(x, (a.n + 1) * sizeof(int)), 0};
	for (size_t i = 0; i < a.n; i++) {
		pre_put(&b, a.s[i], a.ln[i]);
		if (i + 2 < a.n && (a.s[i] == '#' || a.s[i] == '%' || a.s[i] == '-') && a.s[i + 1] == '}' &&
		    a.s[i + 2] == '\n') {
			pre_put(&b, '}', a.ln[i + 1]);
			i += 2;
		}
	}
	/* the transformers {% generation %} tag: /{%(-?)\s*(?:end)?generation\s*(-?)%}(\s*)/gs */
	a.n = 0;
	size_t last = 0;
	for (size_t i = 0; i < b.n; i++) {
		if (b.s[i] != '{' || i + 1 >= b.n || b.s[i + 1] != '%')
			continue;
		size_t j = i + 2;
		int ls = j < b.n && b.s[j] == '-';
		j += ls;
		j += spaces_at(b.s, b.n, j);
		if (b.n - j >= 3 && !memcmp(b.s + j, "end", 3) && b.n - j >= 13 && !memcmp(b.s + j + 3, "generation", 10))
			j += 3;
		if (b.n - j < 10 || memcmp(b.s + j, "generation", 10))
			continue;
		j += 10;
		j += spaces_at(b.s, b.n, j);
		int rs = j < b.n && b.s[j] == '-';
		j += rs;
		if (b.n - j < 2 || b.s[j] != '%' || b.s[j + 1] != '}')
			continue;
		j += 2;
		size_t after = spaces_at(b.s, b.n, j), end = i;
		while (ls && end > last) {
			size_t k = end - 1;
			while (k > last && ((unsigned char)b.s[k] & 0xc0) == 0x80)
				k--;
			size_t q = k;
			if (!trail_jx_space(trail_jx_cp(b.s, b.n, &q)))
				break;
			end = k;
		}
		for (size_t k = last; k < end; k++)
			pre_put(&a, b.s[k], b.ln[k]);
		if (!rs)
			for (size_t k = j; k < j + after; k++)
				pre_put(&a, b.s[k], b.ln[k]);
		last = j + after;
		i = last - 1;
	}
	for (size_t k = last; k < b.n; k++)
		pre_put(&a, b.s[k], b.ln[k]);
	a.s[a.n] = 0;
	a.ln[a.n] = a.n ? a.ln[a.n - 1] : 1;
	return a;
}

/* ---- lexer ---- */

enum { T_TEXT, T_NUM, T_STR, T_IDENT, T_EQ, T_LP, T_RP, T_OST, T_CST, T_OEX, T_CEX, T_LB, T_RB, T_LC, T_RC,
       T_COMMA, T_DOT, T_COLON, T_PIPE, T_ADD, T_MUL, T_POW, T_CMP, T_UNARY, T_COMMENT };

static const char *const tok_name[] = {"text", "number", "string", "identifier", "'='", "'('", "')'", "'{%'",
				       "'%}'", "'{{'", "'}}'", "'['", "']'", "'{'", "'}'", "','", "'.'", "':'",
				       "'|'", "operator", "operator", "'**'", "comparison", "operator", "comment"};

typedef struct tok {
	int type, line;
	const char *s;
	size_t n;
} tok;

typedef struct lexer {
	trail_jx *x;
	pre p;
	size_t i;
	tok *t;
	size_t nt, cap;
} lexer;

static void push(lexer *L, int type, const char *s, size_t n, size_t at)
{
	if (L->nt == L->cap) {
		size_t cap = L->cap ? 2 * L->cap : 256;
		tok *t = trail_jx_alloc(L->x, cap * sizeof *t);
		if (L->nt)
			memcpy(t, L->t, L->nt * sizeof *t);
		L->t = t;
		L->cap = cap;
	}
	L->t[L->nt++] = (tok){type, L->p.ln[at < L->p.n ? at : L->p.n], s, n};
}

__attribute__((noreturn)) static void lex_fail(lexer *L, const char *what)
{
	trail_jx_fail(L->x, TRAIL_EDATA, L->p.ln[L->i < L->p.n ? L->i : L->p.n], "%s", what);
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static long hexn(const char *s, size_t have, int k)
{
	long v = 0;
	if ((size_t)k > have)
		return -1;
	for (int j = 0; j < k; j++) {
		int h = hexval(s[j]);
		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	return v;
}

static size_t put_utf8(char *o, uint32_t c)
{
	if (c < 0x80)
		return o[0] = (char)c, 1;
	if (c < 0x800)
		return o[0] = (char)(0xc0 | c >> 6), o[1] = (char)(0x80 | (c & 0x3f)), 2;
	if (c < 0x10000)
		return o[0] = (char)(0xe0 | c >> 12), o[1] = (char)(0x80 | (c >> 6 & 0x3f)), o[2] = (char)(0x80 | (c & 0x3f)), 3;
	o[0] = (char)(0xf0 | c >> 18), o[1] = (char)(0x80 | (c >> 12 & 0x3f));
	o[2] = (char)(0x80 | (c >> 6 & 0x3f)), o[3] = (char)(0x80 | (c & 0x3f));
	return 4;
}

static void lex_string(lexer *L, char q)
{
	const char *s = L->p.s;
	size_t n = L->p.n, at = L->i - 1;
	char *o = trail_jx_alloc(L->x, n - L->i + 1);
	size_t on = 0;
	for (;;) {
		if (L->i >= n)
			lex_fail(L, "unexpected end of the template in a string");
		char c = s[L->i];
		if (c == q)
			break;
		L->i++;
		if (c != '\\') {
			o[on++] = c;
			continue;
		}
		if (L->i >= n)
			lex_fail(L, "unexpected end of the template in a string");
		char e = s[L->i++];
		const char *m = strchr("n\nt\tr\rb\bf\fv\v''\"\"\\\\", e);
		if (e && m && (m - "n\nt\tr\rb\bf\fv\v''\"\"\\\\") % 2 == 0) {
			o[on++] = m[1];
		} else if (e == 'x' || e == 'u') {
			int k = e == 'x' ? 2 : 4;
			long v = hexn(s + L->i, n - L->i, k);
			if (v < 0)
				lex_fail(L, "invalid hexadecimal escape in a string");
			L->i += k;
			if (v >= 0xd800 && v < 0xdc00 && n - L->i >= 6 && s[L->i] == '\\' && s[L->i + 1] == 'u') {
				long lo = hexn(s + L->i + 2, n - L->i - 2, 4);
				if (lo >= 0xdc00 && lo < 0xe000) {
					v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
					L->i += 6;
				}
			}
			if (v >= 0xd800 && v < 0xe000)
				lex_fail(L, "a lone surrogate escape in a string is not supported");
			on += put_utf8(o + on, (uint32_t)v);
		} else {
			char m2[64];
			snprintf(m2, sizeof m2, "unexpected escaped character '%c' in a string", e);
			lex_fail(L, m2);
		}
	}
	L->i++;
	push(L, T_STR, o, on, at);
}

static int isword(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static int isdig(char c)
{
	return c >= '0' && c <= '9';
}

/* consumeWhile: the reference fails when the template ends while it still holds */
static void digits(lexer *L)
{
	while (L->i < L->p.n && isdig(L->p.s[L->i]))
		if (++L->i >= L->p.n)
			lex_fail(L, "unexpected end of the template");
}

static void strip_last_text(lexer *L)
{
	if (!L->nt || L->t[L->nt - 1].type != T_TEXT)
		return;
	tok *t = &L->t[L->nt - 1];
	size_t e = t->n;
	while (e) {
		size_t k = e - 1;
		while (k && ((unsigned char)t->s[k] & 0xc0) == 0x80)
			k--;
		size_t q = k;
		if (!trail_jx_space(trail_jx_cp(t->s, t->n, &q)))
			break;
		e = k;
	}
	t->n = e;
	if (!e)
		L->nt--;
}

static void skip_space(lexer *L)
{
	L->i += spaces_at(L->p.s, L->p.n, L->i);
}

static const struct { const char *s; int type; } rules[] = {
	{"{%", T_OST}, {"%}", T_CST}, {"{{", T_OEX}, {"}}", T_CEX}, {"(", T_LP}, {")", T_RP}, {"{", T_LC},
	{"}", T_RC}, {"[", T_LB}, {"]", T_RB}, {",", T_COMMA}, {".", T_DOT}, {":", T_COLON}, {"|", T_PIPE},
	{"<=", T_CMP}, {">=", T_CMP}, {"==", T_CMP}, {"!=", T_CMP}, {"<", T_CMP}, {">", T_CMP}, {"+", T_ADD},
	{"-", T_ADD}, {"~", T_ADD}, {"**", T_POW}, {"*", T_MUL}, {"//", T_MUL}, {"/", T_MUL}, {"%", T_MUL},
	{"=", T_EQ},
};

static void lex(lexer *L)
{
	const char *s = L->p.s;
	size_t n = L->p.n;
	int depth = 0;
	while (L->i < n) {
		int last = L->nt ? L->t[L->nt - 1].type : -1;
		if (last == -1 || last == T_CST || last == T_CEX || last == T_COMMENT) {
			size_t e = L->i;
			for (;;) {
				const char *p = memchr(s + e, '{', n - e);
				if (!p) {
					e = n;
					break;
				}
				e = (size_t)(p - s);
				if (e + 1 < n && (s[e + 1] == '%' || s[e + 1] == '{' || s[e + 1] == '#'))
					break;
				e++;
			}
			if (e > L->i) {
				push(L, T_TEXT, s + L->i, e - L->i, L->i);
				L->i = e;
				continue;
			}
		}
		if (s[L->i] == '{' && L->i + 1 < n) {
			char nx = s[L->i + 1];
			if (nx == '#') {
				size_t at = L->i;
				L->i += 2;
				int before = L->i < n && s[L->i] == '-';
				L->i += before;
				const char *e = NULL;
				for (size_t k = L->i; k + 1 < n; k++)
					if (s[k] == '#' && s[k + 1] == '}') {
						e = s + k;
						break;
					}
				if (!e)
					lex_fail(L, "missing end of comment tag");
				size_t cn = (size_t)(e - s) - L->i;
				int after = cn && s[L->i + cn - 1] == '-';
				if (before)
					strip_last_text(L);
				push(L, T_COMMENT, s + L->i, cn - after, at);
				L->i = (size_t)(e - s) + 2;
				if (after)
					skip_space(L);
				continue;
			}
			if (L->i + 2 < n && s[L->i + 2] == '-' && (nx == '%' || nx == '{')) {
				strip_last_text(L);
				push(L, nx == '%' ? T_OST : T_OEX, nx == '%' ? "{%" : "{{", 2, L->i);
				if (nx == '{')
					depth = 0;
				L->i += 3;
				continue;
			}
		}
		while (L->i < n) {
			size_t k = L->i;
			if (!trail_jx_space(trail_jx_cp(s, n, &k)))
				break;
			L->i = k;
			if (L->i >= n)
				lex_fail(L, "unexpected end of the template");
		}
		char c = s[L->i];
		if (c == '-' && L->i + 2 < n && s[L->i + 2] == '}' && (s[L->i + 1] == '%' || s[L->i + 1] == '}')) {
			push(L, s[L->i + 1] == '%' ? T_CST : T_CEX, s[L->i + 1] == '%' ? "%}" : "}}", 2, L->i);
			L->i += 3;
			skip_space(L);
			continue;
		}
		if (c == '-' || c == '+') {
			if (last == T_TEXT || last == -1)
				lex_fail(L, "unexpected character");
			if (last != T_IDENT && last != T_NUM && last != T_STR && last != T_RP && last != T_RB) {
				size_t at = L->i++;
				size_t d = L->i;
				digits(L);
				if (L->i > d && L->i + 1 < n && s[L->i] == '.' && isdig(s[L->i + 1])) {
					L->i++;
					digits(L);
				}
				push(L, L->i > d ? T_NUM : T_UNARY, s + at, L->i - at, at);
				continue;
			}
		}
		int hit = 0;
		for (size_t r = 0; r < sizeof rules / sizeof *rules && !hit; r++) {
			size_t k = strlen(rules[r].s);
			if (rules[r].type == T_CEX && depth > 0)
				continue;
			if (n - L->i >= k && !memcmp(s + L->i, rules[r].s, k)) {
				push(L, rules[r].type, rules[r].s, k, L->i);
				depth = rules[r].type == T_OEX ? 0 : rules[r].type == T_LC ? depth + 1 : rules[r].type == T_RC ? depth - 1 : depth;
				L->i += k;
				hit = 1;
			}
		}
		if (hit)
			continue;
		if (c == '\'' || c == '"') {
			L->i++;
			lex_string(L, c);
			continue;
		}
		if (isdig(c)) {
			size_t at = L->i;
			digits(L);
			if (last != T_DOT && L->i + 1 < n && s[L->i] == '.' && isdig(s[L->i + 1])) {
				L->i++;
				digits(L);
			}
			push(L, T_NUM, s + at, L->i - at, at);
			continue;
		}
		if (isword(c)) {
			size_t at = L->i;
			while (L->i < n && isword(s[L->i]))
				if (++L->i >= n)
					lex_fail(L, "unexpected end of the template");
			push(L, T_IDENT, s + at, L->i - at, at);
			continue;
		}
		lex_fail(L, "unexpected character");
	}
}

/* ---- parser ---- */

typedef struct parser {
	trail_jx *x;
	tok *t;
	size_t nt, i;
	int depth; /* of expressions and statements: a hostile template must not run the stack out */
} parser;

typedef struct nlist {
	trail_jnode **v;
	size_t n, cap;
} nlist;

static void nl_push(trail_jx *x, nlist *l, trail_jnode *nd)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 8;
		trail_jnode **v = trail_jx_alloc(x, cap * sizeof *v);
		if (l->n)
			memcpy(v, l->v, l->n * sizeof *v);
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = nd;
}

static int cur_line(parser *P)
{
	return P->nt ? P->t[P->i < P->nt ? P->i : P->nt - 1].line : 1;
}

__attribute__((noreturn, format(printf, 2, 0))) static void pfail(parser *P, const char *fmt, const char *arg)
{
	trail_jx_fail(P->x, TRAIL_EDATA, cur_line(P), fmt, arg);
}

static trail_jnode *node(parser *P, int kind)
{
	trail_jnode *nd = trail_jx_alloc(P->x, sizeof *nd);
	nd->kind = kind;
	nd->line = cur_line(P);
	return nd;
}

static int is(parser *P, int type)
{
	return P->i < P->nt && P->t[P->i].type == type;
}

static int is_id(parser *P, size_t off, const char *name)
{
	size_t j = P->i + off;
	return j < P->nt && P->t[j].type == T_IDENT && P->t[j].n == strlen(name) && !memcmp(P->t[j].s, name, P->t[j].n);
}

static int is_stmt(parser *P, const char *name)
{
	return is(P, T_OST) && is_id(P, 1, name);
}

static tok *expect(parser *P, int type)
{
	if (P->i >= P->nt)
		pfail(P, "unexpected end of the template, expected %s", tok_name[type]);
	if (P->t[P->i].type != type)
		trail_jx_fail(P->x, TRAIL_EDATA, cur_line(P), "expected %s, found %s", tok_name[type],
			      tok_name[P->t[P->i].type]);
	return &P->t[P->i++];
}

static void expect_id(parser *P, const char *name)
{
	if (!is_id(P, 0, name))
		pfail(P, "expected %s", name);
	P->i++;
}

static trail_jnode *expr(parser *P);
static trail_jnode *primary(parser *P);
static trail_jnode *any(parser *P);

static void body_until(parser *P, nlist *l, const char *a, const char *b, const char *c)
{
	while (!is_stmt(P, a) && !(b && is_stmt(P, b)) && !(c && is_stmt(P, c))) {
		if (P->i >= P->nt)
			pfail(P, "missing {%% %s %%}", a);
		nl_push(P->x, l, any(P));
	}
}

static void end_stmt(parser *P, const char *name)
{
	expect(P, T_OST);
	expect_id(P, name);
	expect(P, T_CST);
}

static trail_jnode *seq(parser *P, int prim)
{
	trail_jnode *first = prim ? primary(P) : expr(P);
	if (!is(P, T_COMMA))
		return first;
	nlist l = {0};
	nl_push(P->x, &l, first);
	while (is(P, T_COMMA)) {
		P->i++;
		nl_push(P->x, &l, prim ? primary(P) : expr(P));
	}
	trail_jnode *t = node(P, JN_TUPLE);
	t->l = l.v, t->nl = l.n;
	return t;
}

/* (a, b=c): call arguments, or parameters with defaults */
static void args(parser *P, trail_jnode ***out, size_t *n, int params)
{
	nlist l = {0};
	int kw = 0;
	expect(P, T_LP);
	while (!is(P, T_RP)) {
		if (P->i >= P->nt)
			pfail(P, "%s", "unexpected end of the template in an argument list");
		if (is(P, T_POW) || (is(P, T_MUL) && P->t[P->i].s[0] == '*'))
			pfail(P, "%s", "argument unpacking (* and **) is not supported");
		trail_jnode *a = expr(P);
		if (is(P, T_EQ)) {
			P->i++;
			if (a->kind != JN_IDENT)
				pfail(P, "%s", "expected an identifier before '='");
			trail_jnode *k = node(P, JN_KWARG);
			k->s = a->s, k->n = a->n, k->a = expr(P);
			a = k;
			kw = 1;
		} else if (kw) {
			pfail(P, "%s", params ? "non-default argument follows default argument"
					      : "positional arguments must come before keyword arguments");
		}
		if (params && a->kind != JN_IDENT && a->kind != JN_KWARG)
			pfail(P, "%s", "expected an identifier for a parameter");
		nl_push(P->x, &l, a);
		if (is(P, T_COMMA))
			P->i++;
	}
	P->i++;
	*out = l.v, *n = l.n;
}

static trail_jnode *member(parser *P, trail_jnode *obj)
{
	while (is(P, T_DOT) || is(P, T_LB)) {
		int computed = is(P, T_LB);
		P->i++;
		trail_jnode *m = node(P, JN_MEMBER), *prop;
		if (computed) {
			trail_jnode *sl[3] = {0};
			size_t ns = 0;
			int slice = 0;
			while (!is(P, T_RB)) {
				if (P->i >= P->nt)
					pfail(P, "%s", "unexpected end of the template in '[...]'");
				if (ns == 3)
					pfail(P, "%s", "expected 0-3 arguments for a slice");
				if (is(P, T_COLON)) {
					sl[ns++] = NULL;
					P->i++;
					slice = 1;
				} else {
					sl[ns++] = expr(P);
					if (is(P, T_COLON)) {
						P->i++;
						slice = 1;
					}
				}
			}
			if (!ns)
				pfail(P, "%s", "expected an index in '[]'");
			if (slice) {
				prop = node(P, JN_SLICE);
				prop->a = sl[0], prop->b = ns > 1 ? sl[1] : NULL, prop->c = ns > 2 ? sl[2] : NULL;
			} else {
				prop = sl[0];
			}
			expect(P, T_RB);
		} else {
			prop = primary(P);
			if (prop->kind != JN_IDENT && prop->kind != JN_INT)
				pfail(P, "%s", "expected an identifier or integer after '.'");
		}
		m->a = obj, m->b = prop, m->flag = computed;
		obj = m;
	}
	return obj;
}

static trail_jnode *call(parser *P, trail_jnode *callee)
{
	trail_jnode *c = node(P, JN_CALL);
	c->a = callee;
	args(P, &c->l, &c->nl, 0);
	trail_jnode *e = member(P, c);
	return is(P, T_LP) ? call(P, e) : e;
}

static int num_is(const tok *t, char c)
{
	return t->n == 1 && t->s[0] == c;
}

static trail_jnode *primary(parser *P)
{
	if (P->i >= P->nt)
		pfail(P, "%s", "unexpected end of the template in an expression");
	tok *t = &P->t[P->i++];
	trail_jnode *nd;
	switch (t->type) {
	case T_NUM: {
		char b[64];
		size_t k = t->n < sizeof b - 1 ? t->n : sizeof b - 1;
		memcpy(b, t->s, k);
		b[k] = 0;
		nd = node(P, memchr(t->s, '.', t->n) ? JN_FLOAT : JN_INT);
		nd->num = strtod(b, NULL);
		return nd;
	}
	case T_STR: {
		nd = node(P, JN_STR);
		size_t total = t->n, j = P->i;
		while (j < P->nt && P->t[j].type == T_STR)
			total += P->t[j++].n;
		char *s = trail_jx_alloc(P->x, total + 1);
		memcpy(s, t->s, t->n);
		for (total = t->n; is(P, T_STR); P->i++) {
			memcpy(s + total, P->t[P->i].s, P->t[P->i].n);
			total += P->t[P->i].n;
		}
		nd->s = s, nd->n = total;
		return nd;
	}
	case T_IDENT: {
		static const char *const unsupported[] = {"caller", "varargs", "kwargs"};
		for (size_t k = 0; k < 3; k++)
			if (t->n == strlen(unsupported[k]) && !memcmp(t->s, unsupported[k], t->n))
				pfail(P, "the special name %s is not supported", unsupported[k]);
		nd = node(P, JN_IDENT);
		nd->s = t->s, nd->n = t->n;
		return nd;
	}
	case T_LP:
		nd = seq(P, 0);
		expect(P, T_RP);
		return nd;
	case T_LB: {
		nlist l = {0};
		while (!is(P, T_RB)) {
			if (P->i >= P->nt)
				pfail(P, "%s", "unexpected end of the template in a list");
			nl_push(P->x, &l, expr(P));
			if (is(P, T_COMMA))
				P->i++;
		}
		P->i++;
		nd = node(P, JN_ARRAY);
		nd->l = l.v, nd->nl = l.n;
		return nd;
	}
	case T_LC: {
		nlist k = {0}, v = {0};
		while (!is(P, T_RC)) {
			if (P->i >= P->nt)
				pfail(P, "%s", "unexpected end of the template in a mapping");
			nl_push(P->x, &k, expr(P));
			expect(P, T_COLON);
			nl_push(P->x, &v, expr(P));
			if (is(P, T_COMMA))
				P->i++;
		}
		P->i++;
		nd = node(P, JN_OBJECT);
		nd->l = k.v, nd->l2 = v.v, nd->nl = k.n;
		return nd;
	}
	default:
		P->i--;
		pfail(P, "unexpected %s in an expression", tok_name[t->type]);
	}
}

static trail_jnode *unary_sign(parser *P)
{
	if ((is(P, T_UNARY) || is(P, T_ADD)) && (num_is(&P->t[P->i], '-') || num_is(&P->t[P->i], '+'))) {
		trail_jnode *u = node(P, JN_UNARY);
		u->s = P->t[P->i++].s, u->n = 1;
		if (++P->depth > 200)
			pfail(P, "%s", "expressions and statements nested more than 200 deep");
		u->a = unary_sign(P);
		P->depth--;
		return u;
	}
	trail_jnode *m = member(P, primary(P));
	return is(P, T_LP) ? call(P, m) : m;
}

static trail_jnode *filter_of(parser *P, trail_jnode *f)
{
	trail_jnode *id = primary(P);
	if (id->kind != JN_IDENT)
		pfail(P, "%s", "expected an identifier for the filter");
	f->s = id->s, f->n = id->n;
	if (is(P, T_LP)) {
		f->flag = 1;
		args(P, &f->l, &f->nl, 0);
		if (is(P, T_DOT) || is(P, T_LB) || is(P, T_LP))
			pfail(P, "%s", "a filter's result cannot be indexed or called");
	}
	return f;
}

static trail_jnode *filter_expr(parser *P)
{
	trail_jnode *o = unary_sign(P);
	while (is(P, T_PIPE)) {
		P->i++;
		trail_jnode *f = node(P, JN_FILTER);
		f->a = o;
		o = filter_of(P, f);
	}
	return o;
}

static trail_jnode *test_expr(parser *P)
{
	trail_jnode *o = filter_expr(P);
	while (is_id(P, 0, "is")) {
		P->i++;
		trail_jnode *t = node(P, JN_TEST);
		if (is_id(P, 0, "not"))
			t->flag = 1, P->i++;
		trail_jnode *id = primary(P);
		if (id->kind != JN_IDENT)
			pfail(P, "%s", "expected an identifier for the test");
		t->a = o, t->s = id->s, t->n = id->n;
		o = t;
	}
	return o;
}

static trail_jnode *binary(parser *P, tok *op, trail_jnode *l, trail_jnode *r)
{
	trail_jnode *b = node(P, JN_BINARY);
	b->s = op->s, b->n = op->n, b->a = l, b->b = r;
	return b;
}

static trail_jnode *power(parser *P)
{
	trail_jnode *l = test_expr(P);
	while (is(P, T_POW)) {
		tok *op = &P->t[P->i++];
		l = binary(P, op, l, test_expr(P));
	}
	return l;
}

static trail_jnode *mult(parser *P)
{
	trail_jnode *l = power(P);
	while (is(P, T_MUL)) {
		tok *op = &P->t[P->i++];
		l = binary(P, op, l, power(P));
	}
	return l;
}

static trail_jnode *add(parser *P)
{
	trail_jnode *l = mult(P);
	while (is(P, T_ADD)) {
		tok *op = &P->t[P->i++];
		l = binary(P, op, l, mult(P));
	}
	return l;
}

static trail_jnode *compare(parser *P)
{
	static tok notin = {T_IDENT, 0, "not in", 6};
	trail_jnode *l = add(P);
	for (;;) {
		tok *op;
		if (is_id(P, 0, "not") && is_id(P, 1, "in"))
			op = &notin, P->i += 2;
		else if (is_id(P, 0, "in") || is(P, T_CMP))
			op = &P->t[P->i++];
		else
			break;
		l = binary(P, op, l, add(P));
	}
	return l;
}

static trail_jnode *negation(parser *P)
{
	trail_jnode *r = NULL;
	while (is_id(P, 0, "not")) {
		trail_jnode *u = node(P, JN_UNARY);
		u->s = "not", u->n = 3;
		P->i++;
		if (++P->depth > 200)
			pfail(P, "%s", "expressions and statements nested more than 200 deep");
		u->a = negation(P);
		P->depth--;
		r = u;
	}
	return r ? r : compare(P);
}

static trail_jnode *logic_and(parser *P)
{
	trail_jnode *l = negation(P);
	while (is_id(P, 0, "and")) {
		tok *op = &P->t[P->i++];
		l = binary(P, op, l, negation(P));
	}
	return l;
}

static trail_jnode *logic_or(parser *P)
{
	trail_jnode *l = logic_and(P);
	while (is_id(P, 0, "or")) {
		tok *op = &P->t[P->i++];
		l = binary(P, op, l, logic_and(P));
	}
	return l;
}

static trail_jnode *expr1(parser *P);

static trail_jnode *expr(parser *P)
{
	if (++P->depth > 200)
		pfail(P, "%s", "expressions and statements nested more than 200 deep");
	trail_jnode *e = expr1(P);
	P->depth--;
	return e;
}

static trail_jnode *expr1(parser *P)
{
	trail_jnode *a = logic_or(P);
	if (!is_id(P, 0, "if"))
		return a;
	P->i++;
	trail_jnode *test = logic_or(P);
	if (is_id(P, 0, "else")) {
		P->i++;
		trail_jnode *t = node(P, JN_TERNARY);
		t->a = test, t->b = a, t->c = expr(P);
		return t;
	}
	trail_jnode *s = node(P, JN_SELECT);
	s->a = a, s->b = test;
	return s;
}

static trail_jnode *if_stmt(parser *P)
{
	trail_jnode *nd = node(P, JN_IF);
	nlist body = {0}, alt = {0};
	nd->a = expr(P);
	expect(P, T_CST);
	body_until(P, &body, "endif", "elif", "else");
	if (is_stmt(P, "elif")) {
		P->i += 2;
		nl_push(P->x, &alt, if_stmt(P));
	} else if (is_stmt(P, "else")) {
		P->i += 2;
		expect(P, T_CST);
		body_until(P, &alt, "endif", NULL, NULL);
	}
	nd->l = body.v, nd->nl = body.n, nd->l2 = alt.v, nd->nl2 = alt.n;
	return nd;
}

static trail_jnode *statement1(parser *P);

static trail_jnode *statement(parser *P)
{
	if (++P->depth > 200)
		pfail(P, "%s", "expressions and statements nested more than 200 deep");
	trail_jnode *nd = statement1(P);
	P->depth--;
	return nd;
}

static trail_jnode *statement1(parser *P)
{
	expect(P, T_OST);
	if (!is(P, T_IDENT))
		pfail(P, "%s", "expected a statement name after {%");
	tok *name = &P->t[P->i++];
	trail_jnode *nd;
	nlist body = {0}, alt = {0};
#define NAMED(w) (name->n == strlen(w) && !memcmp(name->s, w, name->n))
	if (NAMED("set")) {
		nd = node(P, JN_SET);
		nd->a = seq(P, 0);
		if (is(P, T_EQ)) {
			P->i++;
			nd->b = seq(P, 0);
		} else {
			expect(P, T_CST);
			body_until(P, &body, "endset", NULL, NULL);
			expect(P, T_OST);
			expect_id(P, "endset");
			nd->l = body.v, nd->nl = body.n;
		}
		expect(P, T_CST);
	} else if (NAMED("if")) {
		nd = if_stmt(P);
		end_stmt(P, "endif");
	} else if (NAMED("for")) {
		nd = node(P, JN_FOR);
		nd->a = seq(P, 1);
		if (nd->a->kind != JN_IDENT && nd->a->kind != JN_TUPLE)
			pfail(P, "%s", "expected an identifier or tuple as the loop variable");
		expect_id(P, "in");
		nd->b = expr(P);
		if (nd->b->kind == JN_SELECT)
			nd->c = nd->b->b, nd->b = nd->b->a;
		expect(P, T_CST);
		body_until(P, &body, "endfor", "else", NULL);
		if (is_stmt(P, "else")) {
			P->i += 2;
			expect(P, T_CST);
			body_until(P, &alt, "endfor", NULL, NULL);
		}
		nd->l = body.v, nd->nl = body.n, nd->l2 = alt.v, nd->nl2 = alt.n;
		end_stmt(P, "endfor");
	} else if (NAMED("macro")) {
		nd = node(P, JN_MACRO);
		trail_jnode *id = primary(P);
		if (id->kind != JN_IDENT)
			pfail(P, "%s", "expected an identifier after macro");
		nd->s = id->s, nd->n = id->n;
		args(P, &nd->l, &nd->nl, 1);
		expect(P, T_CST);
		body_until(P, &body, "endmacro", NULL, NULL);
		nd->l2 = body.v, nd->nl2 = body.n;
		end_stmt(P, "endmacro");
	} else if (NAMED("break") || NAMED("continue")) {
		nd = node(P, NAMED("break") ? JN_BREAK : JN_CONTINUE);
		expect(P, T_CST);
	} else if (NAMED("filter")) {
		nd = filter_of(P, node(P, JN_FILTERBLK));
		expect(P, T_CST);
		body_until(P, &body, "endfilter", NULL, NULL);
		nd->l2 = body.v, nd->nl2 = body.n;
		end_stmt(P, "endfilter");
	} else {
		char w[64];
		snprintf(w, sizeof w, "%.*s", (int)(name->n < 60 ? name->n : 60), name->s);
		P->i--;
		pfail(P, "the statement {%% %s %%} is not supported", w);
	}
#undef NAMED
	return nd;
}

static trail_jnode *any(parser *P)
{
	tok *t = &P->t[P->i];
	trail_jnode *nd;
	switch (t->type) {
	case T_COMMENT:
		P->i++;
		return node(P, JN_COMMENT);
	case T_TEXT:
		nd = node(P, JN_TEXT);
		nd->s = t->s, nd->n = t->n;
		P->i++;
		return nd;
	case T_OST:
		return statement(P);
	case T_OEX:
		P->i++;
		nd = expr(P);
		expect(P, T_CEX);
		return nd;
	default:
		pfail(P, "unexpected %s", tok_name[t->type]);
	}
}

trail_jnode **trail_jx_parse(trail_jx *x, const char *src, size_t n, size_t *count)
{
	lexer L = {x, preprocess(x, src, n), 0, NULL, 0, 0};
	x->lines = L.p.ln;
	lex(&L);
	parser P = {x, L.t, L.nt, 0, 0};
	nlist l = {0};
	while (P.i < P.nt)
		nl_push(x, &l, any(&P));
	*count = l.n;
	return l.v;
}
