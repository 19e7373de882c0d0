/*
 * Chat templates: small templates with the strings @huggingface/jinja
 * renders for them (whitespace control, trim_blocks/lstrip_blocks, loops,
 * namespaces, macros, filters, JavaScript's number and equality rules),
 * errors that name the line, tokenizer_config.json's chat_template, and
 * chat training records (the loss on the assistant's tokens only).
 *
 * With TRAIL_CHAT_CASES=FILE (tests/cli/chat-template.sh): FILE holds
 * tests/reference/chat_render.js's cases, one a line, {"name", "template",
 * "vars", "out" | "error"}; each is rendered here and must give the same
 * bytes, or fail where the reference failed. One check per case name.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "tap.h"
#include "model/model.h"
#include "job/job.h"

static char *render(const char *tmpl, const char *vars, trail_error *e)
{
	json_error_t je;
	json_t *v = vars ? json_loads(vars, 0, &je) : NULL;
	char *out = NULL;
	trail_error_clear(e);
	if (vars && !v) {
		diag("bad test JSON: %s", je.text);
		return NULL;
	}
	int rc = trail_jinja_render(tmpl, strlen(tmpl), v, 1700000000, &out, NULL, e);
	json_decref(v);
	return rc ? NULL : out;
}

/* A test's name: the template on one line */
static const char *name(const char *tmpl)
{
	static char b[80];
	size_t i = 0;
	for (; *tmpl && i < sizeof b - 4; tmpl++)
		b[i++] = *tmpl == '\n' ? '/' : *tmpl == '#' ? '=' : *tmpl;
	strcpy(b + i, *tmpl ? "..." : "");
	return b;
}

static void is(const char *tmpl, const char *vars, const char *want)
{
	trail_error e;
	char *got = render(tmpl, vars, &e);
	if (!ok(got && !strcmp(got, want), "%s", name(tmpl)))
		diag("got \"%s\" (%s), want \"%s\"", got ? got : "(error)", got ? "" : e.msg, want);
	trail_free(got);
}

static void fails(const char *tmpl, long line, const char *part)
{
	trail_error e;
	char *got = render(tmpl, "{\"n\": 1}", &e);
	ok(!got && e.code == TRAIL_EDATA && e.line == line && strstr(e.msg, part), "error at line %ld: %s", line, name(tmpl));
	if (got || e.line != line || !strstr(e.msg, part))
		diag("got %s, line %ld: %s", got ? got : "(error)", e.line, e.msg);
	trail_free(got);
}

static int cases(const char *file)
{
	void *buf;
	size_t len;
	trail_error e;
	if (trail_read_file(file, 0, &buf, &len, &e)) {
		ok(0, "read %s: %s", file, e.msg);
		return tap_done();
	}
	char last[200] = "", *p = buf;
	long n = 0, bad = 0, total = 0;
	for (char *nl; *p; p = nl + 1) {
		nl = strchr(p, '\n');
		if (!nl)
			nl = p + strlen(p);
		json_error_t je;
		json_t *c = json_loadb(p, (size_t)(nl - p), 0, &je);
		const char *name = json_string_value(json_object_get(c, "name"));
		if (!name)
			break;
		if (strcmp(name, last)) {
			if (*last)
				ok(!bad, "%s: %ld cases match the reference", last, n);
			snprintf(last, sizeof last, "%s", name);
			n = bad = 0;
		}
		const char *t = json_string_value(json_object_get(c, "template"));
		json_t *want = json_object_get(c, "out");
		char *out = NULL;
		size_t ol = 0;
		int rc = trail_jinja_render(t, strlen(t), json_object_get(c, "vars"), 1700000000, &out, &ol, &e);
		int same = want ? !rc && ol == json_string_length(want) && !memcmp(out, json_string_value(want), ol) : rc != 0;
		if (!same && bad++ < 3) {
			char *vars = json_dumps(json_object_get(c, "vars"), JSON_COMPACT);
			diag("%s: template %.300s", name, t);
			diag("  vars %.600s", vars);
			diag("  reference: %.600s", want ? json_string_value(want) : json_string_value(json_object_get(c, "error")));
			diag("  trail:     %.600s", rc ? e.msg : out);
			free(vars);
		}
		trail_free(out);
		json_decref(c);
		n++, total++;
		if (!*nl)
			break;
	}
	if (*last)
		ok(!bad, "%s: %ld cases match the reference", last, n);
	ok(total > 0, "%ld cases in all", total);
	trail_free(buf);
	return tap_done();
}

static int32_t *enc(const trail_tokenizer *tk, const char *s, size_t *n)
{
	int32_t *ids = NULL;
	trail_tokenizer_encode_ex(tk, s, strlen(s), TRAIL_TOKENIZE_SPECIAL, &ids, n, NULL);
	return ids;
}

/* Record 0 of d is the four pieces, prompt (no loss) and answer (loss) in turn, and end-of-text. */
static void pieces(const trail_tokenizer *tk, const trail_dataset *d, const char *const piece[4], const char *what)
{
	int32_t want[256];
	int target[256];
	size_t nw = 0;
	for (int k = 0; k < 4 && tk; k++) {
		size_t n;
		int32_t *ids = enc(tk, piece[k], &n);
		for (size_t i = 0; i < n && nw < 250; i++)
			want[nw] = ids[i], target[nw++] = k % 2;
		trail_free(ids);
	}
	if (tk)
		want[nw] = trail_tokenizer_eot(tk), target[nw++] = 0;
	int same = d && d->len[0] == nw && !memcmp(d->tok[0], want, nw * sizeof *want);
	ok(same, "%sthe record's tokens are the rendered turns' (%zu tokens)", what, nw);
	int mask_ok = same;
	for (size_t p = 0; same && p < nw; p++)
		mask_ok &= trail_dataset_target(d, 0, p) == target[p];
	ok(mask_ok, "%sonly the assistant's tokens are targets", what);
	int32_t x[64], y[64];
	long k = d ? trail_dataset_row(d, 0, 64, x, y) : 0, wantk = 0;
	for (size_t p = 1; p < nw; p++)
		wantk += target[p];
	ok(k == wantk && d && y[d->first[0] - 1] == want[d->first[0]], "%sa row's targets: %ld of them", what, k);
}

/* Chat records on tests/data/hf-bpe's tokenizer with a chat template of ours */
static void chat_records(void)
{
	const char *top = getenv("TRAIL_TOP") ? getenv("TRAIL_TOP") : ".";
	char dir[] = "/tmp/trail-chatrec-XXXXXX", src[4096];
	ok(mkdtemp(dir) != NULL, "a directory");
	snprintf(src, sizeof src, "%s/tests/data/hf-bpe/tokenizer.json", top);
	void *tj;
	size_t tl;
	if (!ok(!trail_read_file(src, 0, &tj, &tl, NULL), "read tests/data/hf-bpe/tokenizer.json"))
		return;
	char *p1 = trail_path(dir, "tokenizer.json"), *p2 = trail_path(dir, "tokenizer_config.json");
	const char *cfg = "{\"eos_token\": \"<|eos|>\", \"chat_template\": \"{% for m in messages %}<x>{{ m.role }}: "
			  "{{ m.content }}<|eos|>{% endfor %}{% if add_generation_prompt %}<x>assistant: {% endif %}\"}";
	trail_write_atomic(p1, tj, tl, 0644, NULL);
	trail_write_atomic(p2, cfg, strlen(cfg), 0644, NULL);
	trail_tokenizer *tk = NULL;
	trail_error e;
	ok(!trail_tokenizer_load(dir, &tk, &e), "a tokenizer with a chat template");
	json_t *recs = json_loads("[{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\","
				  "\"content\": \"yo\"}, {\"role\": \"user\", \"content\": \"ok\"}, {\"role\": "
				  "\"assistant\", \"content\": \"bye\"}]}, {\"text\": \"plain\"}]", 0, NULL);
	trail_dataset *d = NULL;
	ok(tk && !trail_dataset_from_records(recs, tk, &d, &e), "a dataset of a chat record and a text record: %s",
	   d ? "" : e.msg);
	/* the pieces: prompt (no loss), answer (loss), ... */
	const char *piece[] = {"<x>user: hi<|eos|><x>assistant: ", "yo<|eos|>", "<x>user: ok<|eos|><x>assistant: ",
			       "bye<|eos|>"};
	pieces(tk, d, piece, "");
	ok(d && trail_dataset_target(d, 1, 0) && trail_dataset_target(d, 1, 1), "the text record counts throughout");
	trail_dataset_free(d);
	json_decref(recs);
	/* a template that marks the last assistant turn only (as Qwen3's empty thinking block): the earlier
	 * turn is found in the whole rendering by its content and its closing text */
	cfg = "{\"eos_token\": \"<|eos|>\", \"chat_template\": \"{% for m in messages %}<x>{{ m.role }}: {% if m.role == "
	      "'assistant' and loop.last %}<t></t>{% endif %}{{ m.content }}<|eos|>{% endfor %}{% if add_generation_prompt "
	      "%}<x>assistant: {% endif %}\"}";
	trail_write_atomic(p2, cfg, strlen(cfg), 0644, NULL);
	trail_tokenizer_free(tk);
	tk = NULL;
	trail_tokenizer_load(dir, &tk, NULL);
	recs = json_loads("[{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\","
			  "\"content\": \"yo\"}, {\"role\": \"user\", \"content\": \"ok\"}, {\"role\": "
			  "\"assistant\", \"content\": \"bye\"}]}]", 0, NULL);
	d = NULL;
	ok(tk && !trail_dataset_from_records(recs, tk, &d, &e), "a template that marks the last turn: %s", d ? "" : e.msg);
	const char *marked[] = {"<x>user: hi<|eos|><x>assistant: ", "yo<|eos|>", "<x>user: ok<|eos|><x>assistant: ",
				"<t></t>bye<|eos|>"};
	pieces(tk, d, marked, "last turn marked: ");
	trail_dataset_free(d);
	json_decref(recs);
	/* a template that renders an earlier turn differently once more follow */
	cfg = "{\"chat_template\": \"{% for m in messages %}{{ m.content }}{% if loop.last %}.{% endif %}{% endfor %}\"}";
	trail_write_atomic(p2, cfg, strlen(cfg), 0644, NULL);
	trail_tokenizer_free(tk);
	trail_tokenizer_load(dir, &tk, NULL);
	recs = json_loads("[{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\","
			  "\"content\": \"b\"}, {\"role\": \"user\", \"content\": \"c\"}]}]", 0, NULL);
	d = NULL;
	ok(tk && trail_dataset_from_records(recs, tk, &d, &e) == TRAIL_EDATA && strstr(e.msg, "cannot be told apart") &&
	   e.line == 1, "such a template is refused for training: %s", e.msg);
	trail_dataset_free(d);
	trail_tokenizer_free(tk);
	/* no template at all */
	trail_tokenizer *bytes = NULL;
	trail_tokenizer_bytes(&bytes);
	ok(trail_dataset_from_records(recs, bytes, &d, &e) == TRAIL_EDATA && strstr(e.msg, "chat template"),
	   "no chat template: refused (%s)", e.msg);
	trail_tokenizer_free(bytes);
	json_decref(recs);
	unlink(p1), unlink(p2), rmdir(dir);
	trail_free(p1), trail_free(p2), trail_free(tj);
}

int main(void)
{
	if (getenv("TRAIL_CHAT_CASES"))
		return cases(getenv("TRAIL_CHAT_CASES"));

	/* whitespace: the final newline, trim_blocks, lstrip_blocks, - on either side, comments */
	is("a\n", NULL, "a");
	is("{% if true %}\nyes\n{% endif %}\n", NULL, "yes\n");
	is("x\n    {% if true %}y{% endif %}\n  {{ 1 }}", NULL, "x\ny  1");
	is("a   {{- 'b' -}}   c", NULL, "abc");
	is("a \n {%- if true -%} \n b {%- endif %}", NULL, "ab");
	is("a {#- note -#} b{# x #}\nc", NULL, "abc");
	is("{{ '-%}\n' }}", NULL, "-%}");
	/* values and JavaScript's rules */
	is("{{ 1.0 }} {{ 1.0 ~ '' }} {{ 2.5 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 2 ** 3 }} {{ 0.1 + 0.2 }}", NULL,
	   "1.0 1 2.5 3.5 3 -1 8 0.30000000000000004");
	is("{{ x }} {{ x|tojson }}", "{\"x\": 1e21}", "1e+21 1e+21");
	is("{{ '1' == 1 }} {{ true == 1 }} {{ none == undefined }} {{ [] == '' }} {{ 'a' + 1 }}", NULL,
	   "true true true true a1");
	is("{{ m|tojson }} {{ m }}", "{\"m\": {\"b\": [1, \"\\u00e9\"], \"2\": null, \"a\": true}}",
	   "{\"2\": null, \"b\": [1, \"\xc3\xa9\"], \"a\": true} {\"2\": null, \"b\": [1, \"\xc3\xa9\"], \"a\": true}");
	is("{{ s|length }} {{ s[3] }} {{ s[-1] }} {{ s[::-1] }}", "{\"s\": \"a\xf0\x9f\x98\x80" "b\"}", "4 b b b\xf0\x9f\x98\x80" "a");
	is("{{ s.strip('x') }}|{{ s|trim }}|{{ s.split() }}", "{\"s\": \"\xe3\x80\x80 x y\\t\"}", "x y|x y|[\"x\", \"y\"]");
	is("{{ 'a,b,,c'.split(',') }} {{ 'a-b-c'.replace('-', '+', 1) }} {{ 'ab'.replace('', '.') }}", NULL,
	   "[\"a\", \"b\", \"\", \"c\"] a+b-c .a.b.");
	/* statements */
	is("{% for m in ms %}{{ loop.index0 }}{{ m.role }}{% if not loop.last %},{% endif %}{% endfor %}",
	   "{\"ms\": [{\"role\": \"user\"}, {\"role\": \"assistant\"}]}", "0user,1assistant");
	is("{% for i in range(5) %}{{ i }}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}.{% endfor %}",
	   NULL, "0.2.");
	is("{% set ns = namespace(k=0) %}{% for i in [1, 2, 3] %}{% set ns.k = ns.k + i %}{% set j = i %}{% endfor %}{{ ns.k }}{{ j }}",
	   NULL, "6");
	is("{% macro f(a, b='B') %}<{{ a }}{{ b }}>{% endmacro %}{{ f(1) }}{{ f(2, b=3) }}", NULL, "<1B><23>");
	is("{% set x %}in{{ 1 }}{% endset %}{{ x|upper }}{% filter lower %}AB{% endfilter %}", NULL, "IN1ab");
	is("{{ 'a' if false }}{{ 'b' if false else 'c' }}{{ xs|map(attribute='n')|join('+') }}",
	   "{\"xs\": [{\"n\": 1}, {\"n\": 2}]}", "c1+2");
	is("{{ strftime_now('%Y-%m-%d') }}", NULL, "2023-11-14");
	/* errors name the line; nothing is guessed */
	fails("line one\n{{ raise_exception('no system messages') }}", 2, "no system messages");
	fails("a\nb\n{% call x() %}{% endcall %}", 3, "not supported");
	fails("{{ x + 1 }}", 1, "undefined");
	fails("{% if n %}\nnever closed", 2, "endif");
	fails("\n\n{{ 'x'|upper('y') }}", 3, "not supported");
	fails("{{ 'caf\xc3\xa9'|upper }}", 1, "ASCII");
	fails("{% for c in 'abc' %}{% endfor %}", 1, "loop over a string");
	/* hostile nesting is refused, not followed down the stack */
	static char deep[4 * 100000 + 16];
	strcpy(deep, "{{ ");
	for (int i = 0; i < 100000; i++)
		strcat(deep + 3 + i, "(");
	fails(deep, 1, "nested more than 200 deep");
	strcpy(deep, "{{ ");
	for (int i = 0; i < 50000; i++)
		memcpy(deep + 3 + 4 * i, "not ", 4), deep[3 + 4 * i + 4] = 0;
	strcat(deep + 3 + 4 * 50000, "x }}");
	fails(deep, 1, "nested more than 200 deep");
	deep[0] = 0;
	for (int i = 0; i < 20000; i++)
		memcpy(deep + 10 * i, "{% if 1 %}", 10), deep[10 * i + 10] = 0;
	fails(deep, 1, "nested more than 200 deep");

	/* tokenizer_config.json */
	char dir[] = "/tmp/trail-chat-XXXXXX", *t;
	json_t *v;
	trail_error e;
	ok(mkdtemp(dir) != NULL, "a directory");
	char *cfg = trail_path(dir, "tokenizer_config.json");
	const char *c = "{\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<s>\"}, \"eos_token\": \"</s>\","
			"\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"t\"}, {\"name\": \"default\","
			"\"template\": \"{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}"
			"{% if add_generation_prompt %}>{% endif %}{{ eos_token }}{{ tools }}\"}]}";
	ok(!trail_write_atomic(cfg, c, strlen(c), 0644, NULL), "write tokenizer_config.json");
	ok(!trail_chat_config(dir, &t, &v, &e), "read its chat_template");
	json_t *m = json_loads("[{\"role\": \"user\", \"content\": \"hi\"}]", 0, NULL);
	char *out = NULL;
	ok(!trail_chat_render(t, m, 1, v, &out, &e) && !strcmp(out, "<s>[hi]></s>"), "render it: %s", out ? out : e.msg);
	trail_free(out);
	trail_free(t);
	json_decref(v);
	c = "{\"eos_token\": \"</s>\"}";
	trail_write_atomic(cfg, c, strlen(c), 0644, NULL);
	ok(trail_chat_config(dir, &t, &v, &e) == TRAIL_ENOINPUT && !t && !v, "no chat_template: TRAIL_ENOINPUT (%s)", e.msg);
	unlink(cfg);
	rmdir(dir);
	trail_free(cfg);
	json_decref(m);
	chat_records();
	return tap_done();
}
