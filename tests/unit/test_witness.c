/*
 * Witnesses: C2SP tlog-cosignature known answers, cosigner keys, quorum
 * counting, and the tlog-witness add-checkpoint rules (200, 400, 403, 404,
 * 409, 422) with the state surviving a reopen.
 *
 * The known answers were computed apart from trail, with Node's crypto
 * (OpenSSL Ed25519, SHA-256): seed bytes 0x00..0x1f, name
 * witness.example/w1, the checkpoint body of the C2SP tlog-cosignature
 * example, time 1679315147 (the example's own timestamp).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "ledger/ledger.h"
#include "tap.h"

static const char SKEY[] = "PRIVATE+KEY+witness.example/w1+3218362d+AQABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f";
static const char VKEY01[] = "witness.example/w1+3218362d+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4";
static const char VKEY04[] = "witness.example/w1+e75f6532+BAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4";
static const char BODY[] = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
static const char LINE[] = "\xe2\x80\x94 witness.example/w1 519lMgAAAABkGFDLBuRDazBLVac2NE+Y+IjbjQOcXLfF9CSDZVUIoS83rE1nFZsVE8YiWV6Ngr7lV8H6bdoBQGP/l73euDMQ9k+bBQ==\n";

/* A signed checkpoint of the first n leaves of a tree (leaf i = "<tag><i>"). */
static char *checkpoint(const trail_signer *log, const char *origin, char tag, size_t n,
			trail_merkle_mem **mem)
{
	trail_hash leaves[64], root;
	char b64[64], text[512], *note;
	for (size_t i = 0; i < n; i++) {
		char e[16];
		int l = snprintf(e, sizeof e, "%c%zu", tag, i);
		trail_merkle_leaf(e, (size_t)l, leaves[i]);
	}
	trail_merkle_root_of(leaves, n, root);
	trail_base64(root, 32, b64);
	int tl = snprintf(text, sizeof text, "%s\n%zu\n%s\n", origin, n, b64);
	if (trail_note_sign(text, (size_t)tl, &log, 1, &note, NULL, NULL))
		return NULL;
	if (mem)
		*mem = trail_merkle_mem_new(leaves, n);
	return note;
}

/* "old M\n" + the consistency proof from m to n in mem + "\n" + note. */
static char *request(uint64_t m, uint64_t n, trail_merkle_mem *mem, const char *note, int corrupt)
{
	trail_hash proof[TRAIL_MERKLE_MAXPROOF];
	size_t np = 0;
	if (m && m < n && trail_merkle_prove_consistency(trail_merkle_mem_get, mem, m, n, proof, &np, NULL))
		return NULL;
	if (corrupt && np)
		proof[np - 1][0] ^= 1;
	size_t cap = 64 + np * 48 + strlen(note);
	char *r = malloc(cap);
	size_t o = (size_t)snprintf(r, cap, "old %llu\n", (unsigned long long)m);
	for (size_t i = 0; i < np; i++) {
		trail_base64(proof[i], 32, r + o);
		o += strlen(r + o);
		r[o++] = '\n';
	}
	snprintf(r + o, cap - o, "\n%s", note);
	return r;
}

static int add(trail_witness *w, const char *req, trail_witness_reply *r)
{
	trail_error e = {0};
	memset(r, 0, sizeof *r);
	trail_witness_add_checkpoint(w, req, strlen(req), 1700000000, r, &e);
	if (r->status != 200)
		diag("%d: %s", r->status, e.msg);
	return r->status;
}

/* How many refused requests the witness kept in dir. */
static const char *count_refused(const char *dir)
{
	static char cnt[64];
	char cmd[256];
	snprintf(cmd, sizeof cmd, "ls '%s' | grep -c 'refused-'", dir);
	cnt[0] = 0;
	FILE *f = popen(cmd, "r");
	if (f && fgets(cnt, sizeof cnt, f))
		cnt[strcspn(cnt, "\n")] = 0;
	if (f)
		pclose(f);
	return cnt;
}

/* Concurrent requests for one log: each thread sends old -> its own size. */
typedef struct race {
	trail_witness *w;
	const char *req;
	int status;
} race;

static void *race_main(void *p)
{
	race *r = p;
	trail_witness_reply rep;
	r->status = add(r->w, r->req, &rep);
	trail_witness_reply_release(&rep);
	return NULL;
}

int main(void)
{
	trail_init();
	trail_signer *s = NULL;
	trail_cosigner *c = NULL;
	char *v = NULL, *line = NULL;
	uint64_t t = 0;

	/* --- known answers ------------------------------------------------------ */
	ok(trail_signer_parse(SKEY, strlen(SKEY), &s, NULL) == 0, "the witness key is an ordinary signer key");
	ok(!strcmp(trail_signer_vkey(s), VKEY01), "its note key is type 0x01");
	ok(trail_cosigner_vkey(s, &v, NULL) == 0 && !strcmp(v, VKEY04),
	   "its cosigner key is type 0x04 with id SHA-256(name || 0x0A || 0x04 || key)[:4]");
	trail_free(v);
	v = NULL;
	ok(trail_cosigner_parse(VKEY04, strlen(VKEY04), &c, NULL) == 0, "the cosigner key parses");
	ok(c && trail_cosigner_id(c) == 0xe75f6532 && !strcmp(trail_cosigner_name(c), "witness.example/w1"),
	   "with its name and key id");
	ok(trail_cosign(s, BODY, strlen(BODY), 1679315147, &line, NULL) == 0 && !strcmp(line, LINE),
	   "the cosignature line is the known answer, byte for byte");
	ok(trail_cosignature_verify(c, BODY, strlen(BODY), LINE, strlen(LINE), &t, NULL) == 0 &&
	   t == 1679315147, "the known cosignature verifies and carries its time");
	/* The spec's own example line: key id 8d66cf3f, time 1679315147. */
	{
		uint8_t raw[80];
		size_t n;
		const char *ex = "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==";
		ok(trail_unbase64(ex, strlen(ex), raw, sizeof raw, &n) == 0 && n == TRAIL_COSIG_LEN &&
		   raw[0] == 0x8d && raw[3] == 0x3f && raw[8] == 0x64 && raw[11] == 0xcb,
		   "the C2SP example's blob is key id || big-endian time || signature (76 bytes)");
	}
	trail_verifier *nv = NULL;
	trail_cosigner *bad = NULL;
	ok(trail_verifier_parse(VKEY04, strlen(VKEY04), &nv, NULL) == TRAIL_EDATA,
	   "a cosigner key is not taken as a note key");
	ok(trail_cosigner_parse(VKEY01, strlen(VKEY01), &bad, NULL) == TRAIL_EDATA,
	   "a note key is not taken as a cosigner key");
	{
		char k[128];
		snprintf(k, sizeof k, "%s", VKEY04);
		k[19] = k[19] == '0' ? '1' : '0';
		ok(trail_cosigner_parse(k, strlen(k), &bad, NULL) == TRAIL_EDATA, "a wrong key id is refused");
	}
	/* Every change of a byte of the signature blob, or of the text, is refused. */
	{
		size_t n = strlen(LINE), start = strlen("\xe2\x80\x94 witness.example/w1 "), accepted = 0;
		char *m = malloc(n + 1);
		for (size_t i = start; i < n - 3; i++) {
			memcpy(m, LINE, n + 1);
			m[i] = m[i] == 'A' ? 'B' : 'A';
			accepted += trail_cosignature_verify(c, BODY, strlen(BODY), m, n, NULL, NULL) == 0;
		}
		ok(accepted == 0, "every changed base64 character of the cosignature is refused");
		char body2[sizeof BODY];
		memcpy(body2, BODY, sizeof BODY);
		body2[30] ^= 1;
		ok(trail_cosignature_verify(c, body2, strlen(body2), LINE, n, NULL, NULL) == TRAIL_EVERIFY,
		   "a changed checkpoint is refused");
		free(m);
	}
	ok(trail_cosign(s, BODY, strlen(BODY), (uint64_t)1 << 63, &v, NULL) == TRAIL_EUSAGE,
	   "a time of 2^63 or more is not signed");
	v = NULL;

	/* --- counting cosignatures ------------------------------------------------ */
	trail_signer *log = NULL, *w2 = NULL, *other = NULL;
	char *sk, *vk, *v2 = NULL;
	trail_key_generate("log.example/a", &sk, &vk, NULL);
	trail_signer_parse(sk, strlen(sk), &log, NULL);
	trail_free(sk);
	trail_free(vk);
	trail_key_generate("witness.example/w2", &sk, &vk, NULL);
	trail_signer_parse(sk, strlen(sk), &w2, NULL);
	trail_free(sk);
	trail_free(vk);
	trail_key_generate("log.example/a", &sk, &vk, NULL);
	trail_signer_parse(sk, strlen(sk), &other, NULL);
	trail_free(sk);
	trail_free(vk);
	trail_cosigner *c2 = NULL;
	trail_cosigner_vkey(w2, &v2, NULL);
	trail_cosigner_parse(v2, strlen(v2), &c2, NULL);
	trail_merkle_mem *mem3, *mem5, *fork5, *mem8;
	char *cp3 = checkpoint(log, "log.example/a", 'e', 3, &mem3);
	char *cp5 = checkpoint(log, "log.example/a", 'e', 5, &mem5);
	char *fk5 = checkpoint(log, "log.example/a", 'f', 5, &fork5);
	char *cp8 = checkpoint(log, "log.example/a", 'e', 8, &mem8);
	char *cp5x = checkpoint(other, "log.example/a", 'e', 5, NULL);
	char *cpu = checkpoint(log, "log.example/unknown", 'e', 3, NULL);
	{
		const char *text_end = strstr(cp5, "\n\n");
		size_t tl = (size_t)(text_end - cp5) + 1;
		char *l1, *l2, *both, *tmp;
		size_t bl, n;
		trail_cosign(s, cp5, tl, 100, &l1, NULL);
		trail_cosign(w2, cp5, tl, 101, &l2, NULL);
		size_t ll = strlen(l1) + strlen(l2) + 1;
		char *lines = malloc(ll);
		snprintf(lines, ll, "%s%s", l1, l2);
		ok(trail_cosigned_merge(cp5, strlen(cp5), lines, &both, &bl, NULL) == 0, "cosignatures merge into the note");
		const trail_cosigner *cs[3] = {c, c2, c};
		const trail_verifier *lv = NULL;
		trail_verifier *lvp;
		trail_verifier_parse(trail_signer_vkey(log), strlen(trail_signer_vkey(log)), &lvp, NULL);
		lv = lvp;
		ok(trail_cosignatures_count(both, bl, cs, 2, &n, NULL) == 0 && n == 2, "two witnesses cosigned");
		ok(trail_cosignatures_count(both, bl, cs, 3, &n, NULL) == 0 && n == 2, "a witness given twice counts once");
		ok(trail_checkpoint_check_quorum(both, bl, &lv, 1, "log.example/a", cs, 2, 2, NULL, NULL) == 0,
		   "a quorum of 2 verifies");
		ok(trail_checkpoint_check_quorum(both, bl, &lv, 1, "log.example/a", cs, 2, 3, NULL, NULL) == TRAIL_EVERIFY,
		   "a quorum of 3 from two witnesses does not");
		ok(trail_checkpoint_check_quorum(both, bl, &lv, 1, "log.example/b", cs, 2, 1, NULL, NULL) == TRAIL_EVERIFY,
		   "nor under another origin");
		ok(trail_checkpoint_check_quorum(both, bl, &lv, 1, NULL, cs + 1, 1, 1, &n, NULL) == 0 && n == 1,
		   "cosignatures by witnesses not given are ignored");
		char *again;
		size_t al;
		trail_free(l1);
		trail_cosign(s, cp5, tl, 200, &l1, NULL);
		ok(trail_cosigned_merge(both, bl, l1, &again, &al, NULL) == 0 && strstr(again, l2) &&
		   strstr(again, l1) && al == bl, "a new cosignature by the same witness replaces its old one");
		trail_free(again);
		/* a cosignature moved onto another checkpoint does not verify */
		tmp = malloc(strlen(cp3) + ll);
		snprintf(tmp, strlen(cp3) + ll, "%s%s", cp3, lines);
		ok(trail_cosignatures_count(tmp, strlen(tmp), cs, 2, &n, NULL) == TRAIL_EVERIFY,
		   "a cosignature copied onto another checkpoint is refused");
		free(tmp);
		free(lines);
		trail_free(l1);
		trail_free(l2);
		trail_free(both);
		trail_verifier_free(lvp);
	}

	/* --- add-checkpoint ------------------------------------------------------- */
	char dir[] = "/tmp/trail-witness.XXXXXX";
	if (!mkdtemp(dir))
		return 70;
	trail_verifier *lvk = NULL;
	trail_verifier_parse(trail_signer_vkey(log), strlen(trail_signer_vkey(log)), &lvk, NULL);
	const trail_verifier *logs[1] = {lvk};
	trail_witness *w = NULL;
	trail_witness_reply r;
	ok(trail_witness_open(dir, s, logs, NULL, 1, &w, NULL) == 0, "a witness opens its state directory");
	char *q = request(0, 3, mem3, cp3, 0);
	ok(add(w, q, &r) == 200, "old 0: the first checkpoint is cosigned (200)");
	{
		const char *te = strstr(cp3, "\n\n");
		ok(r.body && trail_cosignature_verify(c, cp3, (size_t)(te - cp3) + 1, r.body, r.len, &t, NULL) == 0 &&
		   t == 1700000000, "the reply is a cosignature line that verifies");
	}
	trail_witness_reply_release(&r);
	free(q);
	q = request(0, 5, mem5, cp5, 0);
	ok(add(w, q, &r) == 409 && !strcmp(r.type, "text/x.tlog.size") && r.len == 2 && !memcmp(r.body, "3\n", 2),
	   "old 0 after size 3: 409, text/x.tlog.size, body \"3\\n\"");
	trail_witness_reply_release(&r);
	free(q);
	q = request(3, 5, mem5, cp5, 1);
	ok(add(w, q, &r) == 422, "a bad consistency proof: 422");
	trail_witness_reply_release(&r);
	free(q);
	q = request(3, 5, fork5, fk5, 0);
	ok(add(w, q, &r) == 422, "a fork grown past the cosigned size: its proof fails (422)");
	trail_witness_reply_release(&r);
	free(q);
	q = request(3, 5, mem5, cp5, 0);
	ok(add(w, q, &r) == 200, "old 3 with the proof to 5: cosigned");
	trail_witness_reply_release(&r);
	free(q);
	q = request(5, 5, mem5, cp5, 0);
	ok(add(w, q, &r) == 200, "the same checkpoint again: cosigned again");
	trail_witness_reply_release(&r);
	free(q);
	q = request(5, 5, fork5, fk5, 0);
	ok(add(w, q, &r) == 409 && strcmp(r.type, "text/x.tlog.size"), "a fork (same size, other root): 409");
	trail_witness_reply_release(&r);
	ok(!strcmp(count_refused(dir), "3"),
	   "each refused checkpoint the log signed is kept as evidence (the bad proof, the fork grown past 3, this fork)");
	add(w, q, &r);
	trail_witness_reply_release(&r);
	ok(!strcmp(count_refused(dir), "3"), "once per content");
	free(q);
	q = request(5, 3, mem3, cp3, 0);
	ok(add(w, q, &r) == 400, "a rollback (old 5, size 3): 400");
	trail_witness_reply_release(&r);
	free(q);
	q = request(3, 3, mem3, cp3, 0);
	ok(add(w, q, &r) == 409 && !memcmp(r.body, "5\n", 2), "a rollback claiming old 3: 409 naming 5");
	trail_witness_reply_release(&r);
	free(q);
	q = request(0, 3, NULL, cpu, 0);
	ok(add(w, q, &r) == 404, "an unknown origin: 404");
	trail_witness_reply_release(&r);
	free(q);
	q = request(5, 5, mem5, cp5x, 0);
	ok(add(w, q, &r) == 403, "signed by another key of the same name: 403");
	trail_witness_reply_release(&r);
	free(q);
	ok(add(w, "old 05\n\nx\n", &r) == 400, "old with a leading zero: 400");
	trail_witness_reply_release(&r);
	ok(add(w, "old 0\nnot-base64\n\nx\n", &r) == 400, "a proof line that is not a hash: 400");
	trail_witness_reply_release(&r);
	{
		char *q2 = request(5, 8, mem8, cp8, 0);
		char *hash = strchr(q2, '\n') + 1;
		char *q0 = malloc(strlen(q2) + 1);
		snprintf(q0, strlen(q2) + 1, "old 0\n%s", hash);
		ok(add(w, q0, &r) == 400, "a proof with old 0: 400");
		trail_witness_reply_release(&r);
		free(q0);
		free(q2);
	}
	trail_witness_free(w);
	/* The state survives: a new witness on the same directory. */
	ok(trail_witness_open(dir, s, logs, NULL, 1, &w, NULL) == 0, "the witness reopens");
	q = request(0, 8, mem8, cp8, 0);
	ok(add(w, q, &r) == 409 && !memcmp(r.body, "5\n", 2), "it remembers size 5");
	trail_witness_reply_release(&r);
	free(q);
	q = request(5, 5, fork5, fk5, 0);
	ok(add(w, q, &r) == 409, "and still refuses the fork");
	trail_witness_reply_release(&r);
	free(q);
	q = request(5, 8, mem8, cp8, 0);
	ok(add(w, q, &r) == 200, "and cosigns the log grown to 8");
	trail_witness_reply_release(&r);
	free(q);
	/*
	 * Checking old and recording the new size are one step: of requests
	 * racing from the same old size, exactly one is cosigned, the others
	 * get 409 (no rollback: the state only grows).
	 */
	{
		trail_merkle_mem *big;
		char *cps[8], *reqs[8];
		int rounds_ok = 1;
		for (int round = 0; round < 4; round++) {
			uint64_t base = 8 + (uint64_t)round * 8;
			pthread_t th[7];
			race rc[7];
			for (int i = 0; i < 7; i++) {
				cps[i] = checkpoint(log, "log.example/a", 'e', (size_t)(base + 1 + (uint64_t)i), &big);
				reqs[i] = request(base, base + 1 + (uint64_t)i, big, cps[i], 0);
				trail_merkle_mem_free(big);
				rc[i] = (race){w, reqs[i], 0};
			}
			for (int i = 0; i < 7; i++)
				pthread_create(&th[i], NULL, race_main, &rc[i]);
			int n200 = 0, n409 = 0, won = -1;
			for (int i = 0; i < 7; i++) {
				pthread_join(th[i], NULL);
				n200 += rc[i].status == 200;
				n409 += rc[i].status == 409;
				if (rc[i].status == 200)
					won = i;
			}
			rounds_ok &= n200 == 1 && n409 == 6;
			for (int i = 0; i < 7; i++) {
				trail_free(cps[i]);
				free(reqs[i]);
			}
			/* grow from the winner's size to the next round's base */
			char *cp = checkpoint(log, "log.example/a", 'e', (size_t)(base + 8), &big);
			char *q2 = request(base + 1 + (uint64_t)(won < 0 ? 0 : won), base + 8, big, cp, 0);
			trail_witness_reply rr;
			rounds_ok &= add(w, q2, &rr) == 200;
			trail_witness_reply_release(&rr);
			trail_merkle_mem_free(big);
			trail_free(cp);
			free(q2);
		}
		ok(rounds_ok, "7 racing requests from one old size: exactly one is cosigned, 6 get 409 (4 rounds)");
	}
	trail_witness_free(w);

	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd))
		diag("could not remove %s", dir);
	trail_merkle_mem_free(mem3);
	trail_merkle_mem_free(mem5);
	trail_merkle_mem_free(fork5);
	trail_merkle_mem_free(mem8);
	trail_free(cp3);
	trail_free(cp5);
	trail_free(fk5);
	trail_free(cp8);
	trail_free(cp5x);
	trail_free(cpu);
	trail_verifier_free(lvk);
	trail_cosigner_free(c);
	trail_cosigner_free(c2);
	trail_signer_free(s);
	trail_signer_free(log);
	trail_signer_free(w2);
	trail_signer_free(other);
	trail_free(v2);
	trail_free(line);
	printf("1..%d\n", tap_n);
	return tap_failed != 0;
}
