#include <string.h>
#include <sys/stat.h>

#include <archive.h>
#include <archive_entry.h>
#include <sodium.h>

#include "data/data.h"
#include "core/core.h"
#include "ledger/ledger.h"

#define FORMAT "trail-bundle/1"
#define MANIFEST "manifest.json"
#define RECORDS "records.ndjson"

void trail_bundle_limits_default(trail_bundle_limits *l)
{
	l->max_entries = 16;
	l->max_bytes = (size_t)1 << 30;
	l->max_ratio = 200;
	l->max_record = (size_t)1 << 20;
}

int trail_record_id(const json_t *record, char id[72], trail_error *err)
{
	return trail_jcs_digest(record, id, err);
}

/* The RFC 9162 root over the records' ids (each leaf: the 32 digest bytes). */
static int records_root(const json_t *ids, trail_hash root, trail_error *err)
{
	size_t n = json_array_size(ids);
	trail_hash *leaves = trail_malloc((n ? n : 1) * sizeof *leaves);
	if (!leaves)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		uint8_t d[32];
		trail_digest_parse(json_string_value(json_array_get(ids, i)), d);
		trail_merkle_leaf(d, 32, leaves[i]);
	}
	int rc = trail_merkle_root_of((const trail_hash *)leaves, n, root);
	trail_free(leaves);
	return rc ? trail_error_set(err, rc, "merkle root failed") : TRAIL_OK;
}

/* ---- writing ----------------------------------------------------------- */

/*
 * The archive is written through this sink, which either collects the bytes
 * or compares them with an expected stream (reading checks that a bundle is
 * in the one form create would have written, without a second copy).
 */
struct sink {
	trail_buf out;
	const char *want; /* compare mode when not NULL */
	size_t wantlen, at;
	int differs;
};

static la_ssize_t write_cb(struct archive *a, void *ctx, const void *buf, size_t n)
{
	struct sink *s = ctx;
	(void)a;
	if (s->want) {
		if (s->at + n > s->wantlen || memcmp(s->want + s->at, buf, n))
			s->differs = 1;
		s->at += n;
		return (la_ssize_t)n;
	}
	return trail_buf_put(&s->out, buf, n) ? -1 : (la_ssize_t)n;
}

static int add_member(struct archive *a, const char *name, const void *data, size_t n)
{
	struct archive_entry *e = archive_entry_new();
	if (!e)
		return TRAIL_ENOMEM;
	archive_entry_set_pathname(e, name);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (la_int64_t)n);
	archive_entry_set_mtime(e, 0, 0);
	archive_entry_set_uid(e, 0);
	archive_entry_set_gid(e, 0);
	int ok = archive_write_header(a, e) == ARCHIVE_OK &&
		 (n == 0 || archive_write_data(a, data, n) == (la_ssize_t)n);
	archive_entry_free(e);
	return ok ? TRAIL_OK : TRAIL_EINTERNAL;
}

/*
 * The two members in name order, every header field fixed (nothing from the
 * clock, the user or the umask), no padding past the end-of-archive blocks.
 */
static int pack(const char *man, size_t mlen, const char *recs, size_t rlen, int zstd,
		struct sink *s, trail_error *err)
{
	struct archive *a = archive_write_new();
	int rc = TRAIL_OK;
	if (!a || archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
	    (zstd && archive_write_add_filter_zstd(a) != ARCHIVE_OK) ||
	    archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
	    archive_write_open(a, s, NULL, write_cb, NULL) != ARCHIVE_OK ||
	    add_member(a, MANIFEST, man, mlen) || add_member(a, RECORDS, recs, rlen) ||
	    archive_write_close(a) != ARCHIVE_OK)
		rc = a ? trail_error_set(err, TRAIL_EINTERNAL, "archive: %s",
					 archive_error_string(a) ? archive_error_string(a) : "write failed")
		       : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (a)
		archive_write_free(a);
	return rc;
}

/* records.ndjson: one canonical line per record; ids gets their digests. */
static int record_lines(const json_t *records, trail_buf *body, json_t *ids, trail_error *err)
{
	size_t i;
	json_t *r;
	json_array_foreach(records, i, r) {
		char *line, id[72];
		size_t ll;
		int rc;
		if (!json_is_object(r))
			return trail_error_set(err, TRAIL_EDATA, "record %zu is not a JSON object", i + 1);
		if ((rc = trail_jcs(r, &line, &ll, err)))
			return rc;
		trail_digest_str(line, ll, id);
		rc = trail_buf_put(body, line, ll) || trail_buf_put(body, "\n", 1) ||
		     (ids && json_array_append_new(ids, json_string(id)));
		trail_free(line);
		if (rc)
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	if (!body->p && trail_buf_put(body, "", 0))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	return TRAIL_OK;
}

int trail_bundle_create(const json_t *records, const char *datanet, const char *license,
			const json_t *source, const trail_signer *contributor, int zstd,
			void **out, size_t *len, trail_error *err)
{
	trail_buf body = {0};
	struct sink s = {.want = NULL};
	json_t *ids = json_array(), *man = NULL;
	char *mtext = NULL, b64[64];
	size_t mlen;
	trail_hash root;
	int rc;
	if (!ids)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if (!json_is_array(records) || !datanet) {
		rc = trail_error_set(err, TRAIL_EUSAGE, "a bundle needs an array of records and a datanet");
		goto out;
	}
	if ((rc = record_lines(records, &body, ids, err)) || (rc = records_root(ids, root, err)))
		goto out;
	trail_base64(root, 32, b64);
	man = json_pack("{s:s, s:s, s:s, s:I, s:s, s:s}", "format", FORMAT, "datanet", datanet,
			"contributor", trail_signer_vkey(contributor), "records",
			(json_int_t)json_array_size(records), "root", b64, "license",
			license ? license : "");
	if (!man || (source && json_object_set(man, "source", (json_t *)source))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = trail_json_sign(man, contributor, err)) || (rc = trail_jcs(man, &mtext, &mlen, err)) ||
	    (rc = pack(mtext, mlen, body.p, body.n, zstd, &s, err)))
		goto out;
	*out = s.out.p;
	*len = s.out.n;
	s.out.p = NULL;
out:
	trail_buf_release(&s.out);
	trail_buf_release(&body);
	trail_free(mtext);
	json_decref(man);
	json_decref(ids);
	return rc;
}

int trail_bundle_pack(const trail_bundle *b, int zstd, void **out, size_t *len, trail_error *err)
{
	trail_buf body = {0};
	struct sink s = {.want = NULL};
	char *mtext = NULL;
	size_t mlen;
	int rc;
	if ((rc = trail_jcs(b->manifest, &mtext, &mlen, err)) ||
	    (rc = record_lines(b->records, &body, NULL, err)) ||
	    (rc = pack(mtext, mlen, body.p, body.n, zstd, &s, err)))
		goto out;
	*out = s.out.p;
	*len = s.out.n;
	s.out.p = NULL;
out:
	trail_buf_release(&s.out);
	trail_buf_release(&body);
	trail_free(mtext);
	return rc;
}

/* ---- reading ------------------------------------------------------------ */

static int unsafe_name(const char *p)
{
	if (!p || !*p || p[0] == '/')
		return 1;
	for (const char *s = p; *s; s++)
		if (s[0] == '.' && s[1] == '.' && (s == p || s[-1] == '/') && (s[2] == 0 || s[2] == '/'))
			return 1;
	return 0;
}

/* Check the records against the signed manifest. */
static int check(trail_bundle *b, const char *rec, size_t rlen, const trail_bundle_limits *lim,
		 trail_error *err)
{
	json_t *m = b->manifest;
	const char *fmt = json_string_value(json_object_get(m, "format"));
	const char *who = json_string_value(json_object_get(m, "contributor"));
	const char *signer = json_string_value(json_object_get(m, "signer"));
	const char *root64 = json_string_value(json_object_get(m, "root"));
	json_t *count = json_object_get(m, "records");
	int rc;
	if (!fmt || strcmp(fmt, FORMAT))
		return trail_error_set(err, TRAIL_EDATA, "manifest: format is not %s", FORMAT);
	if (!who || !root64 || !json_is_integer(count) ||
	    !json_is_string(json_object_get(m, "datanet")))
		return trail_error_set(err, TRAIL_EDATA, "manifest: missing fields");
	if ((rc = trail_json_verify(m, err)))
		return trail_error_set(err, TRAIL_EVERIFY, "manifest signature: %s", err ? err->msg : "bad");
	if (!signer || strcmp(who, signer))
		return trail_error_set(err, TRAIL_EVERIFY, "manifest is not signed by its contributor");
	size_t line = 0;
	for (const char *p = rec, *end = rec + rlen; p < end;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		json_t *r;
		char *canon;
		size_t cl;
		line++;
		if (!nl)
			return trail_error_at(err, TRAIL_EDATA, RECORDS, (long)line, "unterminated line");
		if ((size_t)(nl - p) > lim->max_record)
			return trail_error_at(err, TRAIL_ELIMIT, RECORDS, (long)line, "record over %zu bytes",
					      lim->max_record);
		if ((rc = trail_json_parse(p, (size_t)(nl - p), RECORDS, &r, err)))
			return trail_error_at(err, TRAIL_EVERIFY, RECORDS, (long)line, "not JSON");
		if (!json_is_object(r) || trail_jcs(r, &canon, &cl, NULL)) {
			json_decref(r);
			return trail_error_at(err, TRAIL_EVERIFY, RECORDS, (long)line, "not a record object");
		}
		int same = cl == (size_t)(nl - p) && !memcmp(canon, p, cl);
		char id[72];
		trail_digest_str(canon, cl, id);
		trail_free(canon);
		if (!same) {
			json_decref(r);
			return trail_error_at(err, TRAIL_EVERIFY, RECORDS, (long)line, "record not in canonical form");
		}
		if (json_array_append_new(b->records, r) || json_array_append_new(b->ids, json_string(id)))
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		p = nl + 1;
	}
	if ((json_int_t)json_array_size(b->records) != json_integer_value(count))
		return trail_error_set(err, TRAIL_EVERIFY, "manifest names %lld records, bundle holds %zu",
				       (long long)json_integer_value(count), json_array_size(b->records));
	trail_hash root;
	char b64[64];
	if ((rc = records_root(b->ids, root, err)))
		return rc;
	trail_base64(root, 32, b64);
	if (strcmp(b64, root64))
		return trail_error_set(err, TRAIL_EVERIFY, "records do not match the manifest's Merkle root");
	return TRAIL_OK;
}

static int is_zstd(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	return len >= 4 && p[0] == 0x28 && p[1] == 0xb5 && p[2] == 0x2f && p[3] == 0xfd;
}

/* Bytes unpacked so far against the byte and compression-ratio limits. */
static int over_limits(size_t total, size_t packed, const trail_bundle_limits *lim,
		       trail_error *err)
{
	if (total > lim->max_bytes)
		return trail_error_set(err, TRAIL_ELIMIT, "more than %zu bytes unpacked", lim->max_bytes);
	/* small archives may compress well; a ratio means something past 1 MiB */
	if (total > ((size_t)1 << 20) && total / (packed ? packed : 1) > lim->max_ratio)
		return trail_error_set(err, TRAIL_ELIMIT, "compression ratio over %zu", lim->max_ratio);
	return TRAIL_OK;
}

/* A zstd bundle's tar stream, decompressed into memory under the limits. */
static int unzstd(const void *buf, size_t len, const trail_bundle_limits *lim, trail_buf *out,
		  trail_error *err)
{
	struct archive *a = archive_read_new();
	struct archive_entry *e;
	char block[65536];
	la_ssize_t n;
	int rc = TRAIL_OK;
	if (!a)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	archive_read_support_filter_zstd(a);
	archive_read_support_format_raw(a);
	if (archive_read_open_memory(a, buf, len) != ARCHIVE_OK ||
	    archive_read_next_header(a, &e) != ARCHIVE_OK) {
		rc = trail_error_set(err, TRAIL_EDATA, "not a bundle: %s", archive_error_string(a));
		goto out;
	}
	while ((n = archive_read_data(a, block, sizeof block)) > 0) {
		if ((rc = over_limits(out->n + (size_t)n, len, lim, err)))
			goto out;
		if (trail_buf_put(out, block, (size_t)n)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
	}
	if (n < 0)
		rc = trail_error_set(err, TRAIL_EDATA, "damaged zstd stream: %s", archive_error_string(a));
out:
	archive_read_free(a);
	return rc;
}

/* Is this the one archive that pack() writes for these members? */
static int canonical(const char *tar, size_t tarlen, const trail_buf *data, const json_t *man,
		     trail_error *err)
{
	struct sink s = {.want = tar, .wantlen = tarlen};
	char *mtext;
	size_t mlen;
	int rc = trail_jcs(man, &mtext, &mlen, err);
	if (rc)
		return rc;
	int same = mlen == data[0].n && !memcmp(mtext, data[0].p, mlen);
	trail_free(mtext);
	if (!same)
		return trail_error_set(err, TRAIL_EDATA, "%s is not canonical JSON", MANIFEST);
	if ((rc = pack(data[0].p, data[0].n, data[1].p, data[1].n, 0, &s, err)))
		return rc;
	if (s.differs || s.at != tarlen)
		return trail_error_set(err, TRAIL_EDATA,
				       "archive is not in canonical form (headers, order or padding differ)");
	return TRAIL_OK;
}

int trail_bundle_read(const void *buf, size_t len, const trail_bundle_limits *limits,
		      trail_bundle **out, trail_error *err)
{
	trail_bundle_limits lim;
	if (limits)
		lim = *limits;
	else
		trail_bundle_limits_default(&lim);
	*out = NULL;
	struct archive *a = NULL;
	struct archive_entry *e;
	trail_buf data[2] = {{0}, {0}}, unz = {0};
	trail_bundle *b = trail_calloc(1, sizeof *b);
	const char *tar = buf;
	size_t tarlen = len, entries = 0, total = 0;
	int rc = TRAIL_OK, r;
	if (!b || !(b->records = json_array()) || !(b->ids = json_array())) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if (is_zstd(buf, len)) {
		if ((rc = unzstd(buf, len, &lim, &unz, err)))
			goto out;
		tar = unz.p ? unz.p : "";
		tarlen = unz.n;
	}
	if (!(a = archive_read_new())) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	archive_read_support_format_tar(a);
	if (archive_read_open_memory(a, tar, tarlen) != ARCHIVE_OK) {
		rc = trail_error_set(err, TRAIL_EDATA, "not a bundle: %s", archive_error_string(a));
		goto out;
	}
	while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
		const char *name = archive_entry_pathname(e);
		mode_t type = archive_entry_filetype(e);
		if (++entries > lim.max_entries) {
			rc = trail_error_set(err, TRAIL_ELIMIT, "more than %zu archive members", lim.max_entries);
			goto out;
		}
		if (unsafe_name(name)) {
			rc = trail_error_set(err, TRAIL_EDATA, "unsafe member name '%s'", name ? name : "");
			goto out;
		}
		if (archive_entry_hardlink(e) || type == AE_IFLNK) {
			rc = trail_error_set(err, TRAIL_EDATA, "member '%s' is a link", name);
			goto out;
		}
		if (type != AE_IFREG) {
			rc = trail_error_set(err, TRAIL_EDATA, "member '%s' is not a regular file", name);
			goto out;
		}
		if (archive_entry_perm(e) & (S_ISUID | S_ISGID | S_ISVTX)) {
			rc = trail_error_set(err, TRAIL_EDATA, "member '%s' has setuid/setgid bits", name);
			goto out;
		}
		/* holes would unpack to zeros that the archive does not hold */
		if (archive_entry_sparse_count(e) > 0) {
			rc = trail_error_set(err, TRAIL_EDATA, "member '%s' is a sparse file", name);
			goto out;
		}
		if (archive_entry_size(e) < 0 || (size_t)archive_entry_size(e) > lim.max_bytes - total) {
			rc = trail_error_set(err, TRAIL_ELIMIT, "member '%s' is over the %zu-byte limit", name,
					     lim.max_bytes);
			goto out;
		}
		int k = !strcmp(name, MANIFEST) ? 0 : !strcmp(name, RECORDS) ? 1 : -1;
		if (k < 0 || data[k].p) {
			rc = trail_error_set(err, TRAIL_EDATA, "unexpected member '%s'", name);
			goto out;
		}
		char block[65536];
		la_ssize_t n;
		while ((n = archive_read_data(a, block, sizeof block)) > 0) {
			total += (size_t)n;
			if ((rc = over_limits(total, len, &lim, err)))
				goto out;
			if (trail_buf_put(&data[k], block, (size_t)n)) {
				rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
				goto out;
			}
		}
		if (n < 0) {
			rc = trail_error_set(err, TRAIL_EDATA, "member '%s': %s", name, archive_error_string(a));
			goto out;
		}
		if (!data[k].p && trail_buf_put(&data[k], "", 0)) {
			rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			goto out;
		}
	}
	if (r != ARCHIVE_EOF) {
		rc = trail_error_set(err, TRAIL_EDATA, "damaged archive: %s", archive_error_string(a));
		goto out;
	}
	if (!data[0].p || !data[1].p) {
		rc = trail_error_set(err, TRAIL_EDATA, "a bundle holds %s and %s", MANIFEST, RECORDS);
		goto out;
	}
	if ((rc = trail_json_parse(data[0].p, data[0].n, MANIFEST, &b->manifest, err)))
		goto out;
	if (!json_is_object(b->manifest)) {
		rc = trail_error_set(err, TRAIL_EDATA, "%s is not a JSON object", MANIFEST);
		goto out;
	}
	if ((rc = check(b, data[1].p, data[1].n, &lim, err)) ||
	    (rc = canonical(tar, tarlen, data, b->manifest, err)))
		goto out;
	*out = b;
	b = NULL;
out:
	if (a)
		archive_read_free(a);
	trail_buf_release(&unz);
	trail_buf_release(&data[0]);
	trail_buf_release(&data[1]);
	trail_bundle_free(b);
	return rc;
}

void trail_bundle_free(trail_bundle *b)
{
	if (!b)
		return;
	json_decref(b->manifest);
	json_decref(b->records);
	json_decref(b->ids);
	trail_free(b);
}
