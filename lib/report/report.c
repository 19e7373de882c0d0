#include <math.h>
#include <string.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "report/report.h"

struct trail_report {
	char *title;
	json_t *attrs;    /* array of attribution records */
	json_t *events;   /* object: id -> event (with its response fields) */
	json_t *records;  /* object: record id -> training record */
	json_t *payouts;  /* array */
	json_t *epochs;   /* array */
	const trail_verifier *const *vs;
	size_t nv;
};

trail_report *trail_report_new(const char *title)
{
	trail_report *r = trail_calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->title = trail_strdup(title ? title : "trail attribution report");
	r->attrs = json_array();
	r->events = json_object();
	r->records = json_object();
	r->payouts = json_array();
	r->epochs = json_array();
	if (!r->title || !r->attrs || !r->events || !r->records || !r->payouts || !r->epochs) {
		trail_report_free(r);
		return NULL;
	}
	return r;
}

void trail_report_free(trail_report *r)
{
	if (!r)
		return;
	trail_free(r->title);
	json_decref(r->attrs);
	json_decref(r->events);
	json_decref(r->records);
	json_decref(r->payouts);
	json_decref(r->epochs);
	trail_free(r);
}

void trail_report_set_verifiers(trail_report *r, const trail_verifier *const *vs, size_t n)
{
	r->vs = vs;
	r->nv = n;
}

static const char *str(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

/* Index an event under every name an attribution record may use for it. */
static void add_event(trail_report *r, json_t *ev, const json_t *resp)
{
	static const char *keys[] = {"id", "event_id", "request_digest", "digest"};
	char dg[72];
	for (int pass = 0; pass < 2; pass++) {
		const json_t *o = pass ? resp : ev;
		for (size_t i = 0; o && i < sizeof keys / sizeof *keys; i++)
			if (str(o, keys[i]))
				json_object_set(r->events, str(o, keys[i]), ev);
	}
	if (trail_jcs_digest(ev, dg, NULL) == TRAIL_OK)
		json_object_set(r->events, dg, ev);
}

int trail_report_add(trail_report *r, json_t *v, trail_error *err)
{
	const char *type = str(v, "type");
	if (!json_is_object(v))
		return trail_error_set(err, TRAIL_EDATA, "not a JSON object");
	if (json_is_array(json_object_get(v, "contributors")))
		return json_array_append(r->attrs, v) ? TRAIL_ENOMEM : TRAIL_OK;
	if (type && !strcmp(type, "payout"))
		return json_array_append(r->payouts, v) ? TRAIL_ENOMEM : TRAIL_OK;
	if (type && !strcmp(type, "epoch"))
		return json_array_append(r->epochs, v) ? TRAIL_ENOMEM : TRAIL_OK;
	json_t *ev = json_object_get(v, "event");
	if (json_is_object(ev)) { /* a lora-serve response */
		json_t *e = json_deep_copy(ev);
		if (!e)
			return TRAIL_ENOMEM;
		if (!json_object_get(e, "output_text") && str(v, "text"))
			json_object_set(e, "output_text", json_object_get(v, "text"));
		add_event(r, e, v);
		json_decref(e);
		return TRAIL_OK;
	}
	if (json_object_get(v, "output_text") || json_object_get(v, "output_tokens")) {
		add_event(r, v, NULL);
		return TRAIL_OK;
	}
	if (str(v, "record") && (str(v, "text") || str(v, "prompt")))
		return json_object_set(r->records, str(v, "record"), v) ? TRAIL_ENOMEM : TRAIL_OK;
	return trail_error_set(err, TRAIL_EDATA,
			       "not an attribution record, event, training record or settlement line");
}

/* ---- HTML ------------------------------------------------------------- */

static void esc(FILE *f, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		switch (s[i]) {
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '&': fputs("&amp;", f); break;
		case '"': fputs("&quot;", f); break;
		case '\'': fputs("&#39;", f); break;
		default: fputc(s[i], f);
		}
	}
}

static void escs(FILE *f, const char *s)
{
	if (s)
		esc(f, s, strlen(s));
}

/* An id safe in an HTML id attribute: "r-" + the hex of a digest. */
static void anchor(FILE *f, const char *record)
{
	fputs("r-", f);
	if (record && !strncmp(record, "sha256:", 7))
		record += 7;
	for (const char *p = record; p && *p; p++)
		if ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))
			fputc(*p, f);
}

/* Contributors are verifier keys: show the name, keep the key as a title. */
static void who(FILE *f, const char *c)
{
	if (!c) {
		fputs("?", f);
		return;
	}
	const char *plus = strchr(c, '+');
	fputs("<span class=\"who\" title=\"", f);
	escs(f, c);
	fputs("\">", f);
	esc(f, c, plus ? (size_t)(plus - c) : strlen(c));
	fputs("</span>", f);
}

static unsigned hue(const char *s)
{
	uint8_t d[32];
	trail_sha256(s ? s : "", s ? strlen(s) : 0, d);
	return (unsigned)(d[0] << 8 | d[1]) % 360;
}

static void short_id(FILE *f, const char *rec)
{
	if (rec && !strncmp(rec, "sha256:", 7))
		fprintf(f, "%.12s", rec + 7);
	else
		escs(f, rec);
}

static const char *event_text(const json_t *ev, const char *const *keys)
{
	for (; *keys; keys++)
		if (str(ev, *keys))
			return str(ev, *keys);
	return NULL;
}

/* The answer text with each span's text highlighted, in order of appearance. */
static void answer_text(FILE *f, const char *text, const json_t *spans, const json_t *rec)
{
	size_t pos = 0, n = strlen(text);
	size_t i;
	json_t *s;
	json_array_foreach(spans, i, s) {
		const char *st = str(s, "text");
		if (!st || !*st)
			continue;
		const char *hit = strstr(text + pos, st);
		if (!hit)
			continue;
		esc(f, text + pos, (size_t)(hit - text) - pos);
		json_t *recs = json_object_get(s, "records");
		json_t *first = json_array_get(recs, 0);
		const char *rid = json_is_string(first) ? json_string_value(first) : str(first, "record");
		const char *c = json_is_object(first) ? str(first, "contributor") : NULL;
		fprintf(f, "<a class=\"span\" style=\"--h:%u\" href=\"#", hue(c));
		anchor(f, rid);
		fprintf(f, "\" title=\"%lld occurrence(s) in training data", (long long)json_integer_value(json_object_get(s, "count")));
		if (c) {
			fputs("; first contributor ", f);
			escs(f, c);
		}
		fputs("\">", f);
		esc(f, hit, strlen(st));
		fputs("</a>", f);
		pos = (size_t)(hit - text) + strlen(st);
	}
	esc(f, text + pos, n - pos);
	(void)rec;
}

static void bars(FILE *f, const json_t *contributors)
{
	size_t n = json_array_size(contributors), i;
	json_t *c;
	if (!n) {
		fputs("<p class=\"muted\">no contributor had positive influence</p>\n", f);
		return;
	}
	if (n > 12)
		n = 12;
	fprintf(f, "<svg class=\"bars\" viewBox=\"0 0 420 %zu\" role=\"img\" aria-label=\"contributor shares\">\n",
		n * 26 + 4);
	json_array_foreach(contributors, i, c) {
		if (i >= n)
			break;
		double share = json_number_value(json_object_get(c, "share"));
		const char *who_ = str(c, "contributor");
		const char *plus = who_ ? strchr(who_, '+') : NULL;
		double w = share > 0 ? share * 250 : 0;
		fprintf(f, "<g transform=\"translate(0,%zu)\"><title>", i * 26 + 2);
		escs(f, who_);
		fprintf(f, "</title><text x=\"0\" y=\"16\" class=\"lbl\">");
		if (who_)
			esc(f, who_, plus ? (size_t)(plus - who_) : strlen(who_));
		fprintf(f, "</text><rect x=\"110\" y=\"3\" width=\"%.1f\" height=\"18\" rx=\"3\" "
			   "style=\"fill:hsl(%u,55%%,55%%)\"/><text x=\"%.1f\" y=\"16\" class=\"val\">%.1f%%</text></g>\n",
			w, hue(who_), 114 + w, share * 100);
	}
	fputs("</svg>\n", f);
}

static void top_table(FILE *f, trail_report *r, const json_t *top)
{
	size_t i;
	json_t *t;
	fputs("<table><thead><tr><th>record</th><th>contributor</th><th class=\"num\">score</th></tr></thead><tbody>\n", f);
	json_array_foreach(top, i, t) {
		if (i >= 10)
			break;
		const char *rid = str(t, "record");
		fputs("<tr><td><a href=\"#", f);
		anchor(f, rid);
		fputs("\"><code>", f);
		short_id(f, rid);
		fputs("</code></a></td><td>", f);
		who(f, str(t, "contributor"));
		fprintf(f, "</td><td class=\"num\">%.4g</td></tr>\n", json_number_value(json_object_get(t, "score")));
		if (rid && !json_object_get(r->records, rid)) {
			/* remember it for the appendix even without its text */
			json_t *stub = json_pack("{s:s, s:s?}", "record", rid, "contributor", str(t, "contributor"));
			if (stub)
				json_object_set_new(r->records, rid, stub);
		}
	}
	fputs("</tbody></table>\n", f);
}

/* Every tlog-proof receipt inside v, checked offline. */
static void receipts(FILE *f, trail_report *r, const json_t *v, int *nshown)
{
	if (json_is_string(v) && !strncmp(json_string_value(v), "c2sp.org/tlog-proof@v1\n", 23)) {
		const char *s = json_string_value(v);
		uint64_t idx = 0;
		trail_hash leaf;
		trail_error e = {0};
		const char *status, *cls;
		if (!r->nv) {
			status = "not checked (no log key given)";
			cls = "warn";
		} else if (trail_receipt_verify(s, strlen(s), r->vs, r->nv, NULL, &idx, leaf, &e) == TRAIL_OK) {
			status = "verified";
			cls = "ok";
		} else {
			status = e.msg[0] ? e.msg : "failed";
			cls = "bad";
		}
		fprintf(f, "<li class=\"%s\">ledger entry %llu &rarr; inclusion proof &rarr; signed checkpoint: ",
			cls, (unsigned long long)idx);
		escs(f, status);
		fputs("</li>\n", f);
		(*nshown)++;
		return;
	}
	size_t i;
	const char *k;
	json_t *x;
	if (json_is_array(v))
		json_array_foreach(v, i, x) receipts(f, r, x, nshown);
	else if (json_is_object(v))
		json_object_foreach((json_t *)v, k, x) receipts(f, r, x, nshown);
}

static void proof_chain(FILE *f, trail_report *r, const json_t *a)
{
	json_t *p = json_object_get(a, "proofs");
	if (!p)
		p = json_object_get(a, "proof");
	fputs("<h3>Proof chain</h3>\n<ol class=\"chain\">\n", f);
	int shown = 0;
	size_t i;
	json_t *x;
	if (json_is_array(p))
		json_array_foreach(p, i, x) {
			if (str(x, "record")) {
				fputs("<li>record <code>", f);
				short_id(f, str(x, "record"));
				fputs("</code>", f);
				if (str(x, "bundle")) {
					fputs(" &rarr; bundle <code>", f);
					short_id(f, str(x, "bundle"));
					fputs("</code>", f);
				}
				if (json_is_integer(json_object_get(x, "entry")))
					fprintf(f, " &rarr; contribution entry %lld",
						(long long)json_integer_value(json_object_get(x, "entry")));
				fputs("</li>\n", f);
			}
			receipts(f, r, x, &shown);
		}
	else if (p)
		receipts(f, r, p, &shown);
	if (!shown)
		fputs("<li class=\"warn\">no proof attached (run attr-score --prove)</li>\n", f);
	fputs("</ol>\n", f);
}

static const char CSS[] =
	"body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}"
	"header{background:#1d2a38;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}"
	"header p{margin:4px 0 0;color:#b8c4d0}main{max-width:1040px;margin:0 auto;padding:16px 32px}"
	"section{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:16px 20px;margin:16px 0}"
	"h2{font-size:18px;margin:0 0 8px}h2 small{font-weight:normal;color:#637180;font-size:13px}"
	"h3{font-size:14px;margin:14px 0 6px;color:#3b4754;text-transform:uppercase;letter-spacing:.04em}"
	".prompt{color:#4a5663;margin:4px 0}.answer{background:#f3f6fa;border-radius:6px;padding:10px 12px;white-space:pre-wrap}"
	"a.span{background:hsl(var(--h),80%,88%);border-bottom:2px solid hsl(var(--h),60%,45%);color:inherit;text-decoration:none}"
	".cols{display:flex;gap:24px;flex-wrap:wrap}.cols>div{flex:1 1 420px}"
	"table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e6eaef}"
	"td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}code{font:12px ui-monospace,monospace}"
	".bars{width:100%;max-width:420px}.bars .lbl{font-size:12px}.bars .val{font-size:12px;fill:#3b4754}"
	".chain li.ok{color:#1a7f37}.chain li.bad{color:#b42318}.chain li.warn{color:#9a6700}.muted{color:#8792a0}"
	".who{border-bottom:1px dotted #8792a0}.rec p{margin:2px 0 8px;color:#3b4754;white-space:pre-wrap}";

int trail_report_write(trail_report *r, FILE *f, trail_error *err)
{
	size_t i;
	json_t *a;
	fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
	      "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n<title>", f);
	escs(f, r->title);
	fprintf(f, "</title>\n<style>%s</style></head><body>\n<header><h1>", CSS);
	escs(f, r->title);
	fprintf(f, "</h1><p>%zu answer(s) attributed &middot; %zu payout(s)</p></header>\n<main>\n",
		json_array_size(r->attrs), json_array_size(r->payouts));
	json_array_foreach(r->attrs, i, a) {
		json_t *evref = json_object_get(a, "event");
		json_t *ev = json_is_object(evref) ? evref
			     : json_is_string(evref) ? json_object_get(r->events, json_string_value(evref))
						     : NULL;
		static const char *tk[] = {"output_text", "text", "completion", NULL};
		static const char *pk[] = {"prompt", "prompt_text", NULL};
		const char *text = ev ? event_text(ev, tk) : str(a, "text");
		const char *prompt = ev ? event_text(ev, pk) : str(a, "prompt");
		fprintf(f, "<section id=\"a-%zu\"><h2>Answer %zu <small>", i + 1, i + 1);
		escs(f, str(a, "adapter") ? str(a, "adapter") : "base model");
		fputs(" &middot; method ", f);
		escs(f, str(a, "method") ? str(a, "method") : "?");
		fputs("</small></h2>\n", f);
		if (prompt) {
			fputs("<p class=\"prompt\"><b>Prompt:</b> ", f);
			escs(f, prompt);
			fputs("</p>\n", f);
		}
		fputs("<div class=\"answer\">", f);
		if (text)
			answer_text(f, text, json_object_get(a, "spans"), a);
		else
			fputs("<span class=\"muted\">(answer text not supplied: pass the events or responses too)</span>", f);
		fputs("</div>\n<div class=\"cols\"><div><h3>Contributor shares</h3>\n", f);
		bars(f, json_object_get(a, "contributors"));
		fputs("</div><div><h3>Top records</h3>\n", f);
		top_table(f, r, json_object_get(a, "top"));
		fputs("</div></div>\n", f);
		json_t *cl = json_object_get(a, "clusters");
		if (json_array_size(cl)) {
			size_t j;
			json_t *c;
			fputs("<h3>Copies credited once</h3><ul>\n", f);
			json_array_foreach(cl, j, c) {
				fputs("<li>credited to ", f);
				who(f, str(c, "first"));
				fputs("; also submitted by", f);
				size_t m;
				json_t *mem;
				json_array_foreach(json_object_get(c, "members"), m, mem) {
					if (str(c, "first") && json_string_value(mem) &&
					    !strcmp(json_string_value(mem), str(c, "first")))
						continue;
					fputc(' ', f);
					who(f, json_string_value(mem));
				}
				fputs("</li>\n", f);
			}
			fputs("</ul>\n", f);
		}
		proof_chain(f, r, a);
		fputs("</section>\n", f);
	}
	if (json_array_size(r->payouts) || json_array_size(r->epochs)) {
		json_t *p;
		fputs("<section id=\"payouts\"><h2>Settlement</h2>\n", f);
		json_array_foreach(r->epochs, i, p) {
			fputs("<p>Epoch <b>", f);
			json_t *id = json_object_get(p, "epoch");
			if (json_is_string(id))
				escs(f, json_string_value(id));
			else
				fprintf(f, "%lld", (long long)json_integer_value(id));
			fprintf(f, "</b>: fees %lld, paid %lld, retained %lld</p>\n",
				(long long)json_integer_value(json_object_get(p, "fees")),
				(long long)json_integer_value(json_object_get(p, "paid")),
				(long long)json_integer_value(json_object_get(p, "retained")));
		}
		fputs("<table><thead><tr><th>payee</th><th>role</th><th class=\"num\">amount</th></tr></thead><tbody>\n", f);
		json_array_foreach(r->payouts, i, p) {
			fputs("<tr><td>", f);
			who(f, str(p, "to"));
			fputs("</td><td>", f);
			escs(f, str(p, "role"));
			fprintf(f, "</td><td class=\"num\">%lld</td></tr>\n",
				(long long)json_integer_value(json_object_get(p, "amount")));
		}
		fputs("</tbody></table></section>\n", f);
	}
	if (json_object_size(r->records)) {
		const char *k;
		json_t *rec;
		fputs("<section id=\"records\"><h2>Training records</h2>\n", f);
		json_object_foreach(r->records, k, rec) {
			fputs("<div class=\"rec\" id=\"", f);
			anchor(f, k);
			fputs("\"><code>", f);
			escs(f, k);
			fputs("</code> &middot; ", f);
			who(f, str(rec, "contributor"));
			const char *t = str(rec, "text") ? str(rec, "text") : str(rec, "prompt");
			if (t) {
				fputs("<p>", f);
				esc(f, t, strlen(t) > 600 ? 600 : strlen(t));
				if (strlen(t) > 600)
					fputs("&hellip;", f);
				fputs("</p>", f);
			}
			fputs("</div>\n", f);
		}
		fputs("</section>\n", f);
	}
	fputs("</main></body></html>\n", f);
	if (ferror(f))
		return trail_error_set(err, TRAIL_EIO, "writing the report failed");
	return TRAIL_OK;
}
