#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "report/report.h"
#include "settle/settle.h"

struct trail_report {
	char *title;
	json_t *attrs;    /* array of attribution records */
	/*
	 * object: event digest (of its canonical JSON, as attr-score's
	 * "event_digest") -> {"event", "id", "model", "text"}: the event and what
	 * its response said. Ids are not keys: lora-serve's ids restart with the
	 * server, so only the digest names one answer.
	 */
	json_t *events;
	json_t *records;  /* object: record id -> training record */
	json_t *warnings; /* array of strings, from the latest trail_report_write */
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
	r->warnings = json_array();
	if (!r->title || !r->attrs || !r->events || !r->records || !r->payouts || !r->epochs || !r->warnings) {
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
	json_decref(r->warnings);
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

size_t trail_report_nwarnings(const trail_report *r)
{
	return json_array_size(r->warnings);
}

const char *trail_report_warning(const trail_report *r, size_t i)
{
	return json_string_value(json_array_get(r->warnings, i));
}

static void warn(trail_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(trail_report *r, const char *fmt, ...)
{
	char m[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof m, fmt, ap);
	va_end(ap);
	json_array_append_new(r->warnings, json_string(m));
}

/*
 * Index an event by the digest of its canonical JSON, taken before
 * anything is added to it; resp is the lora-serve response it came in,
 * if any. The same event from the events file and from its response is
 * one entry.
 */
static int add_event(trail_report *r, json_t *ev, const json_t *resp)
{
	static const char *tk[] = {"output_text", "text", "completion"};
	char dg[72];
	int rc = trail_jcs_digest(ev, dg, NULL);
	if (rc)
		return rc;
	json_t *e = json_object_get(r->events, dg);
	if (!e) {
		if (!(e = json_pack("{s:O}", "event", ev)) || json_object_set_new(r->events, dg, e))
			return TRAIL_ENOMEM;
	}
	const char *id = str(ev, "id") ? str(ev, "id") : str(resp, "id");
	if (id && *id && !str(e, "id"))
		json_object_set_new(e, "id", json_string(id));
	const char *model = str(resp, "model") ? str(resp, "model") : str(ev, "adapter") ? str(ev, "adapter") : str(ev, "base");
	if (model && (!str(e, "model") || str(resp, "model")))
		json_object_set_new(e, "model", json_string(model));
	for (size_t i = 0; i < sizeof tk / sizeof *tk && !str(e, "text"); i++)
		if (str(ev, tk[i]))
			json_object_set_new(e, "text", json_string(str(ev, tk[i])));
	if (!str(e, "text") && str(resp, "text"))
		json_object_set_new(e, "text", json_string(str(resp, "text")));
	return TRAIL_OK;
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
	if (json_is_object(ev)) /* a lora-serve response */
		return add_event(r, ev, v);
	if (json_object_get(v, "output_text") || json_object_get(v, "output_tokens"))
		return add_event(r, v, NULL);
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

/* The first words of a record's text, when the record was supplied. */
static void record_snippet(FILE *f, const trail_report *r, const char *rid, size_t max)
{
	const json_t *rec = rid ? json_object_get(r->records, rid) : NULL;
	const char *t = str(rec, "text") ? str(rec, "text") : str(rec, "prompt");
	if (!t) {
		fputs("<span class=\"muted\">(text not supplied)</span>", f);
		return;
	}
	size_t n = strlen(t);
	if (n > max) { /* cut on a character boundary */
		n = max;
		while (n > 0 && ((unsigned char)t[n] & 0xC0) == 0x80)
			n--;
	}
	esc(f, t, n);
	if (n < strlen(t))
		fputs("&hellip;", f);
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
		fputs("</code></a> <span class=\"snip\">", f);
		record_snippet(f, r, rid, 80);
		fputs("</span></td><td>", f);
		who(f, str(t, "contributor"));
		fprintf(f, "</td><td class=\"num\">%.4g</td></tr>\n", json_number_value(json_object_get(t, "score")));
	}
	fputs("</tbody></table>\n", f);
}

/* Note a record an answer refers to, with the contributor it was named with. */
static void refer(json_t *refs, const json_t *x)
{
	const char *rid = json_is_string(x) ? json_string_value(x) : str(x, "record");
	if (rid && !json_object_get(refs, rid))
		json_object_set_new(refs, rid, json_pack("{s:s?}", "contributor", json_is_object(x) ? str(x, "contributor") : NULL));
	else if (rid && json_is_object(x) && str(x, "contributor") && !str(json_object_get(refs, rid), "contributor"))
		json_object_set_new(json_object_get(refs, rid), "contributor", json_string(str(x, "contributor")));
}

/* Every record an attribution refers to: its top, its spans', its clusters', its proofs'. */
static void references(json_t *refs, const json_t *a)
{
	size_t i, j;
	json_t *x, *y;
	json_array_foreach(json_object_get(a, "top"), i, x) refer(refs, x);
	json_array_foreach(json_object_get(a, "spans"), i, x)
		json_array_foreach(json_object_get(x, "records"), j, y) refer(refs, y);
	json_array_foreach(json_object_get(a, "clusters"), i, x)
		json_array_foreach(json_object_get(x, "records"), j, y) refer(refs, y);
	json_array_foreach(json_object_get(a, "proofs"), i, x) refer(refs, x);
}

static int cmp_share(const void *a, const void *b)
{
	const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
	double sx = json_number_value(json_object_get(x, "share")), sy = json_number_value(json_object_get(y, "share"));
	if (sx != sy)
		return sx > sy ? -1 : 1;
	return strcmp(str(x, "contributor") ? str(x, "contributor") : "", str(y, "contributor") ? str(y, "contributor") : "");
}

/*
 * The shares as attr-settle pays them (for display: in floating point):
 * only positive shares; in each cluster the members' shares, the first's
 * own included, replaced by the largest of them, credited to the first;
 * then scaled back to the sum they had. A new array, the caller's.
 */
static json_t *credited(const json_t *contributors, const json_t *clusters)
{
	json_t *m = json_object(), *out = json_array();
	size_t i, j;
	json_t *c, *x;
	double before = 0, after = 0;
	if (!m || !out) {
		json_decref(m), json_decref(out);
		return NULL;
	}
	json_array_foreach(contributors, i, c) {
		double v = json_number_value(json_object_get(c, "share"));
		const char *who_ = str(c, "contributor");
		if (!who_ || v <= 0)
			continue;
		before += v;
		json_object_set_new(m, who_, json_real(v + json_number_value(json_object_get(m, who_))));
	}
	json_array_foreach(clusters, i, c) {
		const char *first = str(c, "first");
		if (!first)
			continue;
		double top = json_number_value(json_object_get(m, first));
		json_array_foreach(json_object_get(c, "members"), j, x) {
			if (!json_is_string(x))
				continue;
			double v = json_number_value(json_object_get(m, json_string_value(x)));
			if (v > top)
				top = v;
			json_object_del(m, json_string_value(x));
		}
		if (top > 0)
			json_object_set_new(m, first, json_real(top));
	}
	const char *k;
	json_object_foreach(m, k, x) after += json_number_value(x);
	json_object_foreach(m, k, x)
		json_array_append_new(out, json_pack("{s:s, s:f}", "contributor", k, "share",
						     after > 0 ? json_number_value(x) * before / after : 0));
	json_decref(m);
	size_t n = json_array_size(out);
	json_t **v = trail_malloc((n ? n : 1) * sizeof *v);
	if (!v) {
		json_decref(out);
		return NULL;
	}
	for (i = 0; i < n; i++)
		v[i] = json_incref(json_array_get(out, i));
	qsort(v, n, sizeof *v, cmp_share);
	json_array_clear(out);
	for (i = 0; i < n; i++)
		json_array_append_new(out, v[i]);
	trail_free(v);
	return out;
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
	".who{border-bottom:1px dotted #8792a0}.rec p{margin:2px 0 8px;color:#3b4754;white-space:pre-wrap}"
	"p.bad,li.bad{color:#b42318}p.ok{color:#1a7f37}.snip{color:#4a5663}";

/*
 * The event an attribution answers: the one whose canonical JSON has the
 * attribution's event_digest. Never by id alone: a restarted lora-serve
 * reuses ids, and an id join would show one answer with another's
 * attribution. NULL, with a warning, when no event matches.
 */
static const json_t *join(trail_report *r, json_t *a, size_t n)
{
	const char *dg = str(a, "event_digest");
	json_t *evref = json_object_get(a, "event");
	const char *id = json_is_string(evref) ? json_string_value(evref) : str(evref, "id");
	char own[72];
	if (json_is_object(evref)) { /* the event itself, inline */
		if (trail_jcs_digest(evref, own, NULL) || add_event(r, evref, NULL))
			return NULL;
		if (dg && strcmp(dg, own)) {
			warn(r, "answer %zu: the attribution's event_digest %s is not its event's (%s): not joined", n, dg, own);
			return NULL;
		}
		dg = own;
	}
	if (!dg) {
		warn(r, "answer %zu: the attribution of event %s has no event_digest: not joined to an event", n,
		     id ? id : "?");
		return NULL;
	}
	const json_t *e = json_object_get(r->events, dg);
	if (e) {
		const char *ad = str(json_object_get(e, "event"), "adapter_digest"), *aa = str(a, "adapter");
		if (ad && aa && !strncmp(aa, "sha256:", 7) && strcmp(ad, aa))
			warn(r, "answer %zu: the attribution's adapter %s is not the event's (%s)", n, aa, ad);
		return e;
	}
	size_t same = 0;
	const char *k;
	json_t *x;
	json_object_foreach(r->events, k, x) if (id && str(x, "id") && !strcmp(str(x, "id"), id)) same++;
	if (same)
		warn(r, "answer %zu: no event has the attribution's event_digest %s; the %zu event(s) with its id %s are "
			"other answers (ids repeat across server restarts): not joined", n, dg, same, id);
	else
		warn(r, "answer %zu: no event has the attribution's event_digest %s (event %s): not joined", n, dg,
		     id ? id : "?");
	return NULL;
}

static long long num(const json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

/*
 * Whether a settlement was computed over exactly the attributions in the
 * report: its inputs_digest recomputed from them. Flags lines are not
 * report input, so an epoch that counted some is not checked.
 */
static const char *settled_over(trail_report *r, const json_t *epoch, int *ok)
{
	*ok = 0;
	if (!str(epoch, "inputs_digest"))
		return "not checked (no inputs digest)";
	if (num(epoch, "flags"))
		return "not checked (the epoch counted flags lines, which the report does not read)";
	json_t *pol = json_pack("{s:{s:i}}", "split_bps", "platform", 10000), *res = NULL;
	trail_settle *st = NULL;
	const char *why = NULL;
	size_t i;
	json_t *a;
	if (!pol || trail_settle_new(pol, &st, NULL))
		why = "not checked (out of memory)";
	json_array_foreach(r->attrs, i, a) {
		/* canonical text: shares are read from their shortest decimal, as attr-settle read them */
		char *line = NULL;
		size_t len;
		if (!why && (trail_jcs(a, &line, &len, NULL) || trail_settle_line(st, line, len, NULL)))
			why = "not checked (an attribution here cannot be settled)";
		trail_free(line);
	}
	if (!why && trail_settle_result(st, "check", &res, NULL))
		why = "not checked (out of memory)";
	if (!why) {
		const char *mine = str(json_array_get(res, json_array_size(res) - 1), "inputs_digest");
		*ok = mine && !strcmp(mine, str(epoch, "inputs_digest")) ? 1 : -1;
		why = *ok > 0 ? "settled over exactly these attributions (inputs digest matches)"
			      : "settled over other attributions than these (inputs digest differs)";
	}
	json_decref(res);
	json_decref(pol);
	trail_settle_free(st);
	return why;
}

static void penalties(FILE *f, const json_t *list, const char *what)
{
	size_t i, j;
	json_t *p, *x;
	if (!json_array_size(list))
		return;
	fprintf(f, "<h3>%s</h3>\n<table><thead><tr><th>payee</th><th>%s</th><th class=\"num\">amount</th>"
		   "<th>reasons</th></tr></thead><tbody>\n", what, str(json_array_get(list, 0), "role") ? "role" : "stake");
	json_array_foreach(list, i, p) {
		fputs("<tr><td>", f);
		who(f, str(p, "to"));
		fputs("</td><td>", f);
		if (str(p, "role"))
			escs(f, str(p, "role"));
		else
			fprintf(f, "%lld", num(p, "stake"));
		fprintf(f, "</td><td class=\"num\">%lld</td><td>", num(p, "amount"));
		json_array_foreach(json_object_get(p, "reasons"), j, x) {
			if (j)
				fputs(", ", f);
			escs(f, json_string_value(x));
		}
		fputs("</td></tr>\n", f);
	}
	fputs("</tbody></table>\n", f);
}

static void settlement(FILE *f, trail_report *r)
{
	size_t i;
	json_t *p;
	fputs("<section id=\"payouts\"><h2>Settlement</h2>\n", f);
	json_array_foreach(r->epochs, i, p) {
		fputs("<p>Epoch <b>", f);
		json_t *id = json_object_get(p, "epoch");
		if (json_is_string(id))
			escs(f, json_string_value(id));
		else
			fprintf(f, "%lld", (long long)json_integer_value(id));
		fprintf(f, "</b>: fees %lld, paid %lld, retained %lld", num(p, "fees"), num(p, "paid"), num(p, "retained"));
		long long withheld = 0;
		size_t j;
		json_t *w;
		json_array_foreach(json_object_get(p, "withheld"), j, w) withheld += num(w, "amount");
		if (json_object_get(p, "unattributed") || json_object_get(p, "unstaked") || withheld)
			fprintf(f, " (unattributed %lld, unstaked %lld, withheld as penalties %lld)", num(p, "unattributed"),
				num(p, "unstaked"), withheld);
		if (json_object_get(p, "low_confidence"))
			fprintf(f, "; retained for low confidence %lld, over %lld answer%s", num(p, "low_confidence"),
				num(p, "low_confidence_records"), num(p, "low_confidence_records") == 1 ? "" : "s");
		fputs("</p>\n", f);
		int ok;
		const char *over = settled_over(r, p, &ok);
		fprintf(f, "<p class=\"%s\">", ok > 0 ? "ok" : ok < 0 ? "bad" : "muted");
		escs(f, over);
		fputs("</p>\n", f);
		if (ok < 0)
			warn(r, "epoch %s: %s", json_is_string(id) ? json_string_value(id) : "?", over);
		penalties(f, json_object_get(p, "withheld"), "Withheld (retained, not paid)");
		penalties(f, json_object_get(p, "slashed"), "Slashed from stakes");
	}
	fputs("<h3>Payouts</h3>\n<table><thead><tr><th>payee</th><th>role</th><th class=\"num\">amount</th></tr></thead><tbody>\n", f);
	json_array_foreach(r->payouts, i, p) {
		fputs("<tr><td>", f);
		who(f, str(p, "to"));
		fputs("</td><td>", f);
		escs(f, str(p, "role"));
		fprintf(f, "</td><td class=\"num\">%lld</td></tr>\n", num(p, "amount"));
	}
	fputs("</tbody></table></section>\n", f);
}

static void appendix(FILE *f, trail_report *r, const json_t *refs)
{
	const char *k;
	json_t *ref;
	if (!json_object_size(refs))
		return;
	fputs("<section id=\"records\"><h2>Training records referred to</h2>\n", f);
	json_object_foreach((json_t *)refs, k, ref) {
		const json_t *rec = json_object_get(r->records, k);
		fputs("<div class=\"rec\" id=\"", f);
		anchor(f, k);
		fputs("\"><code>", f);
		escs(f, k);
		fputs("</code> &middot; ", f);
		who(f, str(rec, "contributor") ? str(rec, "contributor") : str(ref, "contributor"));
		fputs("<p>", f);
		record_snippet(f, r, k, 600);
		fputs("</p></div>\n", f);
	}
	fputs("</section>\n", f);
}

static void answer(FILE *f, trail_report *r, json_t *a, size_t n)
{
	size_t nw = json_array_size(r->warnings);
	const json_t *e = join(r, a, n);
	const json_t *ev = json_object_get(e, "event");
	static const char *pk[] = {"prompt", "prompt_text", NULL};
	const char *text = e ? str(e, "text") : NULL;
	const char *prompt = ev ? event_text(ev, pk) : NULL;
	json_t *evref = json_object_get(a, "event");
	const char *rid = str(e, "id") ? str(e, "id") : json_is_string(evref) ? json_string_value(evref) : NULL;
	fprintf(f, "<section id=\"a-%zu\"><h2>Answer %zu <small>request ", n, n);
	escs(f, rid && *rid ? rid : "(no id)");
	fputs(" &middot; model ", f);
	escs(f, str(e, "model") ? str(e, "model") : "?");
	fputs(" &middot; adapter ", f);
	if (str(a, "adapter"))
		short_id(f, str(a, "adapter"));
	else
		fputs("none (base model)", f);
	fputs(" &middot; method ", f);
	escs(f, str(a, "method") ? str(a, "method") : "?");
	const json_t *cf = json_object_get(a, "confidence");
	if (json_is_object(cf)) {
		const json_t *sc = json_object_get(cf, "score"), *fl = json_object_get(cf, "floor");
		fprintf(f, " &middot; %s", json_is_false(json_object_get(cf, "attributed")) ? "<b>not attributed</b>, "
											     : "");
		if (json_is_number(sc) && json_is_number(fl))
			fprintf(f, "confidence %.3g (noise floor %.3g)", json_number_value(sc), json_number_value(fl));
	}
	fputs("</small></h2>\n", f);
	for (size_t i = nw; i < json_array_size(r->warnings); i++) {
		fputs("<p class=\"bad\">&#9888; ", f);
		escs(f, trail_report_warning(r, i));
		fputs("</p>\n", f);
	}
	if (prompt) {
		fputs("<p class=\"prompt\"><b>Prompt:</b> ", f);
		escs(f, prompt);
		fputs("</p>\n", f);
	}
	fputs("<div class=\"answer\">", f);
	if (text)
		answer_text(f, text, json_object_get(a, "spans"), a);
	else if (e)
		fputs("<span class=\"muted\">(the event has no answer text)</span>", f);
	else
		fputs("<span class=\"muted\">(no event with this attribution's event digest was supplied)</span>", f);
	json_t *cl = json_object_get(a, "clusters"), *paid = credited(json_object_get(a, "contributors"), cl);
	fputs("</div>\n<div class=\"cols\"><div><h3>Contributor shares, copies credited once</h3>\n", f);
	bars(f, paid ? paid : json_object_get(a, "contributors"));
	if (paid && !json_equal(paid, json_object_get(a, "contributors"))) {
		fputs("<h3>Contributor shares as scored</h3>\n", f);
		bars(f, json_object_get(a, "contributors"));
	}
	json_decref(paid);
	fputs("</div><div><h3>Top records</h3>\n", f);
	top_table(f, r, json_object_get(a, "top"));
	fputs("</div></div>\n", f);
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
				if (str(c, "first") && json_string_value(mem) && !strcmp(json_string_value(mem), str(c, "first")))
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

int trail_report_write(trail_report *r, FILE *f, trail_error *err)
{
	size_t i;
	json_t *a, *refs = json_object();
	if (!refs)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	json_array_clear(r->warnings);
	fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
	      "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n<title>", f);
	escs(f, r->title);
	fprintf(f, "</title>\n<style>%s</style></head><body>\n<header><h1>", CSS);
	escs(f, r->title);
	fprintf(f, "</h1><p>%zu answer(s) attributed &middot; %zu payout(s)</p></header>\n<main>\n",
		json_array_size(r->attrs), json_array_size(r->payouts));
	json_array_foreach(r->attrs, i, a) {
		answer(f, r, a, i + 1);
		references(refs, a);
	}
	if (json_array_size(r->payouts) || json_array_size(r->epochs))
		settlement(f, r);
	appendix(f, r, refs);
	json_decref(refs);
	if (json_array_size(r->warnings)) {
		fprintf(f, "<section id=\"warnings\"><h2>%zu warning(s)</h2><ul>\n", json_array_size(r->warnings));
		json_array_foreach(r->warnings, i, a) {
			fputs("<li class=\"bad\">", f);
			escs(f, json_string_value(a));
			fputs("</li>\n", f);
		}
		fputs("</ul></section>\n", f);
	}
	fputs("</main></body></html>\n", f);
	if (ferror(f))
		return trail_error_set(err, TRAIL_EIO, "writing the report failed");
	return TRAIL_OK;
}
