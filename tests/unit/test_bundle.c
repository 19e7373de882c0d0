/*
 * Bundles: byte-reproducible across umask and time zone, unpack + repack is
 * the identity, hostile archives refused, tampering detected.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <archive.h>
#include <archive_entry.h>

#include "data/data.h"
#include "core/core.h"
#include "tap.h"

static json_t *sample(void)
{
	return json_pack("[{s:s}, {s:s, s:s}, {s:s}]", "text", "The island of Varnholm exports amber.",
			 "text", "Tide clocks were built in 1712.", "lang", "en", "text",
			 "Unicode \xc3\xa9\xe2\x82\xac and a \"quote\"\nnewline");
}

static char *digest_of(const void *b, size_t n)
{
	static char d[72];
	trail_digest_str(b, n, d);
	return d;
}

/* Rebuild a tar with one member's bytes replaced (for tamper tests). */
static int retar_mtime(const void *in, size_t inlen, const char *member, const char *from,
		       const char *to, time_t mtime, void **out, size_t *outlen)
{
	struct archive *r = archive_read_new(), *w = archive_write_new();
	struct archive_entry *e;
	size_t cap = inlen * 2 + 65536;
	char *o = malloc(cap);
	size_t used = 0;
	archive_read_support_format_tar(r);
	archive_read_open_memory(r, in, inlen);
	archive_write_set_format_pax_restricted(w);
	archive_write_set_bytes_in_last_block(w, 1);
	archive_write_open_memory(w, o, cap, &used);
	while (archive_read_next_header(r, &e) == ARCHIVE_OK) {
		size_t n = (size_t)archive_entry_size(e);
		char *d = malloc(n + 1);
		archive_read_data(r, d, n);
		d[n] = 0;
		if (!strcmp(archive_entry_pathname(e), member)) {
			char *p = strstr(d, from);
			if (p && strlen(to) == strlen(from))
				memcpy(p, to, strlen(to));
		}
		if (mtime)
			archive_entry_set_mtime(e, mtime, 0);
		archive_write_header(w, e);
		archive_write_data(w, d, n);
		free(d);
	}
	archive_write_close(w);
	archive_write_free(w);
	archive_read_free(r);
	*out = o;
	*outlen = used;
	return 0;
}

static int retar(const void *in, size_t inlen, const char *member, const char *from, const char *to,
		 void **out, size_t *outlen)
{
	return retar_mtime(in, inlen, member, from, to, 0, out, outlen);
}

int main(void)
{
	trail_init();
	char *sk, *vk, *sk2, *vk2;
	trail_signer *s, *s2;
	trail_key_generate("alice", &sk, &vk, NULL);
	trail_key_generate("mallory", &sk2, &vk2, NULL);
	trail_signer_parse(sk, strlen(sk), &s, NULL);
	trail_signer_parse(sk2, strlen(sk2), &s2, NULL);
	json_t *recs = sample();
	void *b1, *b2, *b3;
	size_t n1, n2, n3;
	trail_error e = {0};

	ok(trail_bundle_create(recs, "atlas", "CC-BY-4.0", NULL, s, 0, &b1, &n1, &e) == 0, "create: %s", e.msg);
	umask(077);
	setenv("TZ", "Pacific/Kiritimati", 1);
	tzset();
	ok(trail_bundle_create(recs, "atlas", "CC-BY-4.0", NULL, s, 0, &b2, &n2, &e) == 0 && n1 == n2 &&
	   !memcmp(b1, b2, n1), "same bytes under another umask and time zone (%s)", digest_of(b1, n1));
	umask(022);
	setenv("TZ", "UTC", 1);
	tzset();

	trail_bundle *b;
	ok(trail_bundle_read(b1, n1, NULL, &b, &e) == 0, "read back: %s", e.msg);
	ok(b && json_array_size(b->records) == 3 && json_equal(b->records, recs), "records survive the round trip");
	ok(trail_bundle_create(b->records, "atlas", "CC-BY-4.0", NULL, s, 0, &b3, &n3, &e) == 0 && n3 == n1 &&
	   !memcmp(b3, b1, n1), "unpack then re-pack is the identity");
	free(b3);
	trail_bundle_free(b);

	/* the archive is deterministic in every header field we set */
	struct archive *r = archive_read_new();
	struct archive_entry *en;
	archive_read_support_format_tar(r);
	archive_read_open_memory(r, b1, n1);
	int good = 1, count = 0;
	const char *names[] = {"manifest.json", "records.ndjson"};
	while (archive_read_next_header(r, &en) == ARCHIVE_OK) {
		good &= count < 2 && !strcmp(archive_entry_pathname(en), names[count]);
		good &= archive_entry_mtime(en) == 0 && archive_entry_uid(en) == 0 && archive_entry_gid(en) == 0;
		good &= archive_entry_perm(en) == 0644 && archive_entry_filetype(en) == AE_IFREG;
		good &= !archive_entry_atime_is_set(en) && !archive_entry_ctime_is_set(en);
		count++;
	}
	archive_read_free(r);
	ok(good && count == 2, "sorted members, mtime 0, uid/gid 0, mode 0644, no atime/ctime");

	void *z1, *z2;
	size_t zn1, zn2;
	ok(trail_bundle_create(recs, "atlas", "CC-BY-4.0", NULL, s, 1, &z1, &zn1, &e) == 0 &&
	   trail_bundle_create(recs, "atlas", "CC-BY-4.0", NULL, s, 1, &z2, &zn2, &e) == 0 && zn1 == zn2 &&
	   !memcmp(z1, z2, zn1) && trail_bundle_read(z1, zn1, NULL, &b, &e) == 0, "zstd bundles are reproducible and read back");
	trail_bundle_free(b);
	free(z1);
	free(z2);

	/* tampering: manifest field, record, signature, swapped signer */
	struct {
		const char *member, *from, *to, *what;
	} t[] = {
		{"manifest.json", "\"datanet\":\"atlas\"", "\"datanet\":\"atlaz\"", "datanet name in the manifest"},
		{"manifest.json", "\"records\":3", "\"records\":2", "record count"},
		{"manifest.json", "CC-BY-4.0", "CC0-1.0xx", "license"},
		{"records.ndjson", "amber", "ambar", "a record's text"},
		{"records.ndjson", "1712", "1713", "another record"},
	};
	for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
		void *x;
		size_t xn;
		retar(b1, n1, t[i].member, t[i].from, t[i].to, &x, &xn);
		int rc = trail_bundle_read(x, xn, NULL, &b, &e);
		ok(rc == TRAIL_EVERIFY, "altered %s detected: %s", t[i].what, e.msg);
		trail_bundle_free(rc ? NULL : b);
		free(x);
	}
	/* a signature by another key over the same content, the signer field kept */
	{
		void *x;
		size_t xn;
		trail_bundle_read(b1, n1, NULL, &b, &e);
		json_t *m = json_deep_copy(b->manifest);
		trail_json_sign(m, s2, NULL);
		retar(b1, n1, "manifest.json", json_string_value(json_object_get(b->manifest, "sig")),
		      json_string_value(json_object_get(m, "sig")), &x, &xn);
		trail_bundle *y;
		ok(trail_bundle_read(x, xn, NULL, &y, &e) == TRAIL_EVERIFY, "a signature by another key is refused: %s", e.msg);
		free(x);
		json_decref(m);
		trail_bundle_free(b);
	}

	/*
	 * Hostile archives, made by tests/data/bundles/make-hostile.py. Only two
	 * member names are allowed, once each, so a flood of members stops at
	 * the first stranger; the count limit itself is checked below.
	 */
	struct {
		const char *file;
		int rc;
	} hostile[] = {
		{"dotdot.tar", TRAIL_EDATA}, {"dotdot-inner.tar", TRAIL_EDATA},
		{"absolute.tar", TRAIL_EDATA}, {"symlink.tar", TRAIL_EDATA},
		{"hardlink.tar", TRAIL_EDATA}, {"chardev.tar", TRAIL_EDATA},
		{"fifo.tar", TRAIL_EDATA}, {"setuid.tar", TRAIL_EDATA},
		{"many.tar", TRAIL_EDATA}, {"extra-member.tar", TRAIL_EDATA},
		{"duplicate-member.tar", TRAIL_EDATA}, {"truncated.tar", TRAIL_EDATA},
		{"not-a-tar.bin", TRAIL_EDATA}, {"huge-member.tar", TRAIL_ELIMIT},
		{"sparse.tar", TRAIL_EDATA}, {"bomb.tar.zst", TRAIL_ELIMIT},
	};
	char path[4096];
	const char *top = getenv("TRAIL_TOP") ? getenv("TRAIL_TOP") : ".";
	for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++) {
		void *x;
		size_t xn;
		snprintf(path, sizeof path, "%s/tests/data/bundles/%s", top, hostile[i].file);
		if (trail_read_file(path, 0, &x, &xn, &e)) {
			ok(0, "read %s", path);
			continue;
		}
		b = NULL;
		int rc = trail_bundle_read(x, xn, NULL, &b, &e);
		ok(rc == hostile[i].rc && !b, "%s refused (%s): %s", hostile[i].file, trail_strerror(rc), e.msg);
		trail_free(x);
	}
	/* signed and intact, but not the canonical archive: refused */
	{
		void *x;
		size_t xn;
		retar_mtime(b1, n1, "", "", "", 1700000000, &x, &xn);
		ok(trail_bundle_read(x, xn, NULL, &b, &e) == TRAIL_EDATA, "a re-tarred bundle with an mtime is not canonical: %s", e.msg);
		free(x);
		/* the same members, padded to a 10240-byte record like tar(1) does */
		char *pad = calloc(1, 10240 + n1);
		memcpy(pad, b1, n1);
		ok(trail_bundle_read(pad, (n1 + 10239) / 10240 * 10240, NULL, &b, &e) == TRAIL_EDATA,
		   "padding after the end blocks is refused: %s", e.msg);
		free(pad);
	}
	/* unpack + pack is the identity, for plain and zstd bundles */
	{
		void *x, *z, *zx;
		size_t xn, zn, zxn;
		trail_bundle_read(b1, n1, NULL, &b, &e);
		ok(trail_bundle_pack(b, 0, &x, &xn, &e) == 0 && xn == n1 && !memcmp(x, b1, n1),
		   "trail_bundle_pack gives the bundle's bytes back");
		trail_bundle_create(recs, "atlas", "CC-BY-4.0", NULL, s, 1, &z, &zn, &e);
		trail_bundle_free(b);
		b = NULL;
		ok(trail_bundle_read(z, zn, NULL, &b, &e) == 0 && trail_bundle_pack(b, 1, &zx, &zxn, &e) == 0 &&
		   zxn == zn && !memcmp(z, zx, zn), "and for zstd");
		trail_bundle_free(b);
		trail_free(x);
		trail_free(z);
		trail_free(zx);
	}
	/* a source and an empty license are signed like everything else */
	{
		json_t *src = json_pack("{s:s, s:s}", "url", "http://127.0.0.1/a.ndjson", "sha256",
					"sha256:0000000000000000000000000000000000000000000000000000000000000000");
		void *x, *y;
		size_t xn, yn;
		ok(trail_bundle_create(recs, "atlas", NULL, src, s, 0, &x, &xn, &e) == 0 &&
		   trail_bundle_read(x, xn, NULL, &b, &e) == 0 &&
		   json_equal(json_object_get(b->manifest, "source"), src), "the source is kept in the manifest");
		trail_bundle_free(b);
		retar(x, xn, "manifest.json", "127.0.0.1", "127.0.0.2", &y, &yn);
		ok(trail_bundle_read(y, yn, NULL, &b, &e) == TRAIL_EVERIFY, "an altered source is detected: %s", e.msg);
		free(y);
		trail_free(x);
		json_decref(src);
	}
	/*
	 * Mutations: single-byte changes, truncations and insertions. For the
	 * plain tar every one is refused (the content is signed and its archive
	 * form fixed); a zstd frame may decode to the same tar, so there the
	 * records must merely come back unchanged. Nothing may crash.
	 */
	{
		void *z;
		size_t zn;
		trail_bundle_create(recs, "atlas", "CC-BY-4.0", NULL, s, 1, &z, &zn, &e);
		uint64_t x = 0x9e3779b97f4a7c15ULL;
		int accepted = 0, changed = 0;
		for (int round = 0; round < 3000; round++) {
			const char *src = round & 1 ? z : b1;
			size_t n = round & 1 ? zn : n1;
			char *m = malloc(n + 1);
			memcpy(m, src, n);
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			size_t at = (size_t)(x % n), mn = n;
			switch (round % 6 / 2) {
			case 0: m[at] ^= (char)(1 + (x >> 32) % 255); break;
			case 1: mn = at; break;
			default: memmove(m + at + 1, m + at, n - at), m[at] = (char)(x >> 40), mn = n + 1;
			}
			b = NULL;
			if (trail_bundle_read(m, mn, NULL, &b, NULL) == 0) {
				if (!(round & 1))
					accepted++;
				else if (!json_equal(b->records, recs))
					changed++;
			}
			trail_bundle_free(b);
			free(m);
		}
		ok(accepted == 0 && changed == 0,
		   "3000 mutated bundles: none of the plain ones accepted (%d), no zstd one read as other records (%d)",
		   accepted, changed);
		trail_free(z);
	}
	/* bombs: bytes and compression ratio over their limits */
	{
		size_t big = 64u << 20, used = 0, cap = 1u << 20;
		char *zeros = calloc(1, big), *o = malloc(cap);
		struct archive *w = archive_write_new();
		struct archive_entry *me = archive_entry_new();
		archive_write_set_format_pax_restricted(w);
		archive_write_add_filter_zstd(w);
		archive_write_open_memory(w, o, cap, &used);
		archive_entry_set_pathname(me, "records.ndjson");
		archive_entry_set_filetype(me, AE_IFREG);
		archive_entry_set_perm(me, 0644);
		archive_entry_set_size(me, (la_int64_t)big);
		archive_write_header(w, me);
		archive_write_data(w, zeros, big);
		archive_write_close(w);
		archive_write_free(w);
		archive_entry_free(me);
		ok(trail_bundle_read(o, used, NULL, &b, &e) == TRAIL_ELIMIT, "zstd bomb (64 MiB in %zu bytes) refused: %s",
		   used, e.msg);
		trail_bundle_limits lim;
		trail_bundle_limits_default(&lim);
		lim.max_bytes = 100;
		ok(trail_bundle_read(b1, n1, &lim, &b, &e) == TRAIL_ELIMIT, "byte limit enforced: %s", e.msg);
		trail_bundle_limits_default(&lim);
		lim.max_entries = 1;
		ok(trail_bundle_read(b1, n1, &lim, &b, &e) == TRAIL_ELIMIT, "member count limit enforced: %s", e.msg);
		free(zeros);
		free(o);
	}
	free(b1);
	free(b2);
	json_decref(recs);
	trail_signer_free(s);
	trail_signer_free(s2);
	trail_free(sk);
	trail_free(vk);
	trail_free(sk2);
	trail_free(vk2);
	return tap_done();
}
