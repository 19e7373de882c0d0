/* trail-log: the tamper-evident ledger (RFC 9162 Merkle tree, C2SP checkpoints). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "ledger/ledger.h"

enum { O_HOME = 1, O_ORIGIN, O_KEY, O_BATCH, O_SIZE, O_JSON, O_PROGRESS, O_NOPROGRESS, O_URL, O_TIMEOUT,
       O_LISTEN, O_LOG, O_STATE, O_WITNESS, O_QUORUM };

static const trail_opt opts[] = {
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail)", "dir"},
	{O_ORIGIN, "origin", 0, "NAME", "init: the log's origin line; verify-proof: the log receipts must be from", NULL},
	{O_KEY, "key", 'k', "KEY", "init: operator key file; verify-proof: verifier key (repeatable); witness: the witness's key file", "file"},
	{O_BATCH, "batch", 'b', NULL, "append: share one fsync among many entries", NULL},
	{O_SIZE, "size", 's', "S", "prove: tree size to prove against (JSON output)", NULL},
	{O_JSON, "json", 'j', NULL, "prove: print the transparency-dev JSON form", NULL},
	{O_PROGRESS, "progress", 0, NULL, "verify: always show progress on stderr", NULL},
	{O_NOPROGRESS, "no-progress", 0, NULL, "verify: never show progress", NULL},
	{O_URL, "url", 'u', "URL", "verify, verify-proof: check the log served as tiles at URL", NULL},
	{O_TIMEOUT, "timeout", 0, "S", "with --url, cosign: seconds each transfer may take (default 30)", NULL},
	{O_LISTEN, "listen", 'l', "HOST:PORT", "witness: where to serve POST /add-checkpoint (port 0: any free one)", NULL},
	{O_LOG, "log", 0, "VKEY", "witness: a log to cosign for, VKEY or ORIGIN=VKEY (repeatable)", NULL},
	{O_STATE, "state", 0, "DIR", "witness: the directory keeping the latest checkpoint cosigned per log", "dir"},
	{O_WITNESS, "witness", 'w', "W", "cosign: URL=VKEY of a witness; verify, verify-proof: a witness's cosigner key (repeatable)", NULL},
	{O_QUORUM, "quorum", 'q', "N", "verify, verify-proof: cosignatures needed from distinct --witness keys (default: all)", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "trail-log",
	.usage = "init [--origin NAME] [--key KEYFILE]\nappend [--batch] [FILE...]\n"
		 "show [FROM[..TO]]\nget N\ncheckpoint\nprove N [--size S] [--json]\n"
		 "consistency M N\nverify\nverify-proof [--key VKEY]... [--origin NAME] FILE...\n"
		 "tiles DIR\nverify --url URL [--key VKEY]... [--origin NAME]\n"
		 "verify-proof --url URL [--key VKEY]... [--origin NAME] [FILE...]\n"
		 "witness --listen HOST:PORT --key KEYFILE --log VKEY... --state DIR\n"
		 "cosign --witness URL=VKEY... [--timeout S]\n"
		 "verify-proof --witness VKEY... [--quorum N] [--key VKEY]... FILE...\n"
		 "verify --url URL --witness VKEY... [--quorum N] [--key VKEY]...",
	.summary = "Append to, prove and verify the store's tamper-evident ledger.",
	.subcommands = "init append show get checkpoint prove consistency verify verify-proof tiles witness cosign",
	.opts = opts,
};

struct conf {
	const char *home, *origin, *key, *keys[16], *url, *listen, *state, *logs[16], *wit[16];
	int nkeys, batch, json, progress, nlogs, nwit, quorum;
	long timeout;
	uint64_t size;
	int has_size;
};

static int num(const char *s, uint64_t *v, trail_error *err)
{
	long long x;
	int rc = trail_parse_long(s, 0, INT64_MAX, &x, "index", err);
	*v = (uint64_t)x;
	return rc;
}

static int print_json(json_t *j, trail_error *err)
{
	char *s;
	int rc = j ? trail_jcs(j, &s, NULL, err) : TRAIL_ENOMEM;
	json_decref(j);
	if (!rc) {
		puts(s);
		trail_free(s);
	}
	return rc;
}

static void progress(void *ctx, uint64_t done, uint64_t total)
{
	trail_progress *p = ctx;
	(void)total;
	trail_progress_set(p, done);
}

static void log_line(void *ctx, const char *line)
{
	(void)ctx;
	fprintf(stderr, "trail-log: witness: %s\n", line);
}

static void refusal(void *ctx, const char *why)
{
	(void)ctx;
	fprintf(stderr, "trail-log: error: %s\n", why);
}

/* witness: serve add-checkpoint until SIGTERM or SIGINT. */
static int cmd_witness(struct conf *c, trail_error *err)
{
	char *cv = NULL;
	trail_witness *w = NULL;
	trail_witness_server *srv = NULL;
	int rc, sig;
	if (!c->listen || !c->key || !c->nlogs || !c->state)
		return trail_error_set(err, TRAIL_EUSAGE, "witness needs --listen, --key, --log and --state");
	if (!(rc = trail_witness_load(c->state, c->key, c->logs, (size_t)c->nlogs, &w, &cv, err))) {
		/* signals are taken by sigwait alone: every thread starts with them blocked */
		sigset_t sigs;
		sigemptyset(&sigs);
		sigaddset(&sigs, SIGTERM);
		sigaddset(&sigs, SIGINT);
		signal(SIGPIPE, SIG_IGN);
		pthread_sigmask(SIG_BLOCK, &sigs, NULL);
		if (!(rc = trail_witness_server_start(w, c->listen, log_line, NULL, &srv, err))) {
			printf("{\"listen\":\"%s\",\"port\":%d,\"witness\":\"%s\"}\n", c->listen,
			       trail_witness_server_port(srv), cv);
			fflush(stdout);
			while (sigwait(&sigs, &sig) == 0 && sig != SIGTERM && sig != SIGINT)
				;
			trail_witness_server_stop(srv);
			fprintf(stderr, "trail-log: witness: stopped\n");
		}
	}
	trail_witness_free(w);
	trail_free(cv);
	return rc;
}

/* Print a checkpoint note or receipt with the cosignatures stored for it. */
static int print_cosigned(trail_store *s, char *doc, trail_error *err)
{
	char *out;
	size_t n;
	int rc = trail_cosigned_attach(s, doc, strlen(doc), &out, &n, err);
	if (!rc) {
		fwrite(out, 1, n, stdout);
		trail_free(out);
	}
	return rc;
}

static int run(trail_args *a, struct conf *c, trail_error *err)
{
	const char *cmd = a->rest[0];
	char **arg = a->rest + 1;
	int n = a->nrest - 1, rc;
	trail_store *s = NULL;
	if (!strcmp(cmd, "init")) {
		if (n)
			return trail_error_set(err, TRAIL_EUSAGE, "init takes no arguments");
		if ((rc = trail_store_init(c->home, c->origin, c->key, err)) ||
		    (rc = trail_store_open(c->home, &s, err)))
			return rc;
		rc = print_json(json_pack("{s:s, s:s, s:s}", "store", c->home, "origin",
					  trail_store_origin(s), "operator",
					  trail_verifier_str(trail_store_operator_vkey(s))), err);
		trail_store_free(s);
		return rc;
	}
	if (!strcmp(cmd, "witness"))
		return n ? trail_error_set(err, TRAIL_EUSAGE, "witness takes no arguments") : cmd_witness(c, err);
	if (c->quorum && !c->nwit)
		return trail_error_set(err, TRAIL_EUSAGE, "--quorum counts --witness keys: give some");
	trail_ledger *l = NULL;
	uint64_t x = 0, y = 0;
	int writer = !strcmp(cmd, "append");
	if (c->url && strcmp(cmd, "verify") && strcmp(cmd, "verify-proof"))
		return trail_error_set(err, TRAIL_EUSAGE, "--url is for verify and verify-proof");
	if (!strcmp(cmd, "verify-proof") || (c->url && !strcmp(cmd, "verify"))) {
		if (!n && !c->url)
			return trail_error_set(err, TRAIL_EUSAGE, "verify-proof needs FILE...");
		if (c->url && cmd[6] == 0 && n)
			return trail_error_set(err, TRAIL_EUSAGE, "verify --url takes no FILE");
		trail_proofs_opts po = {c->home, c->keys, (size_t)c->nkeys, c->origin, c->wit, (size_t)c->nwit,
					(size_t)c->quorum, c->url, c->timeout};
		int bad = 0;
		rc = trail_proofs_verify(&po, (const char *const *)arg, (size_t)n, stdout, &bad, err);
		return rc ? rc : bad ? trail_error_set(err, TRAIL_EVERIFY, "a proof is invalid") : TRAIL_OK;
	}
	if ((rc = trail_store_open(c->home, &s, err)) ||
	    (rc = trail_ledger_open(s, writer ? TRAIL_LEDGER_WRITE : 0, &l, err)))
		goto out;
	uint64_t size = trail_ledger_size(l);
	if (writer) {
		rc = n == 0 ? trail_ledger_append_ndjson(l, stdin, "<stdin>", c->batch, stdout, err) : TRAIL_OK;
		for (int i = 0; i < n && !rc; i++) {
			FILE *f = strcmp(arg[i], "-") ? fopen(arg[i], "r") : stdin;
			rc = f ? trail_ledger_append_ndjson(l, f, arg[i], c->batch, stdout, err)
			       : trail_error_errno(err, TRAIL_ENOINPUT, errno, "%s", arg[i]);
			if (f && f != stdin)
				fclose(f);
		}
	} else if (!strcmp(cmd, "show") || !strcmp(cmd, "get")) {
		int get = cmd[0] == 'g';
		char *dots = n == 1 ? strstr(arg[0], "..") : NULL;
		if (dots)
			*dots = 0;
		if (get ? n != 1 : n > 1)
			rc = trail_error_set(err, TRAIL_EUSAGE, "%s", get ? "get takes N" : "show takes [FROM[..TO]]");
		else if (n && !(rc = num(arg[0], &x, err)) && dots && dots[2])
			rc = num(dots + 2, &y, err);
		y = get ? x : (dots && dots[2]) ? y : (n && !dots) ? x : size ? size - 1 : 0;
		if (!rc && n && x >= size)
			rc = trail_error_set(err, TRAIL_ENOINPUT, "no entry %" PRIu64 " (size %" PRIu64 ")", x, size);
		else if (!rc && x > y)
			rc = trail_error_set(err, TRAIL_EUSAGE, "show FROM..TO: FROM is after TO");
		for (uint64_t i = x; !rc && i <= y && i < size; i++) {
			char *e;
			if (!(rc = trail_ledger_get(l, i, &e, NULL, err))) {
				puts(e);
				trail_free(e);
			}
		}
	} else if (!strcmp(cmd, "tiles") && n == 1) {
		trail_tiles_stats st;
		if (!(rc = trail_tiles_write(l, arg[0], &st, err)) && !(rc = trail_cosigned_publish(s, arg[0], err)))
			rc = print_json(json_pack("{s:s, s:I, s:I, s:I}", "dir", arg[0], "kept",
						  (json_int_t)st.kept, "size", (json_int_t)st.size,
						  "written", (json_int_t)st.written), err);
	} else if (!strcmp(cmd, "cosign") && n == 0) {
		rc = trail_ledger_cosign(l, s, c->wit, (size_t)c->nwit, c->timeout, stdout, refusal, NULL, err);
	} else if (!strcmp(cmd, "checkpoint") && n == 0) {
		char *note;
		if (!(rc = trail_ledger_checkpoint(l, &note, err))) {
			rc = print_cosigned(s, note, err);
			trail_free(note);
		}
	} else if (!strcmp(cmd, "prove") && n == 1) {
		json_t *j;
		char *r;
		if ((rc = num(arg[0], &x, err)))
			goto out;
		if (c->json || c->has_size) {
			if (!(rc = trail_ledger_proof_json(l, x, c->has_size ? c->size : size, &j, err)))
				rc = print_json(j, err);
		} else if (!(rc = trail_ledger_receipt(l, x, &r, err))) {
			rc = print_cosigned(s, r, err);
			trail_free(r);
		}
	} else if (!strcmp(cmd, "consistency") && n == 2) {
		json_t *j;
		if (!(rc = num(arg[0], &x, err)) && !(rc = num(arg[1], &y, err)) &&
		    !(rc = trail_ledger_consistency_json(l, x, y, &j, err)))
			rc = print_json(j, err);
	} else if (!strcmp(cmd, "verify") && n == 0) {
		trail_progress *p = trail_progress_new(stderr, c->progress, "verify", size);
		rc = trail_ledger_verify(l, progress, p, err);
		trail_progress_free(p);
		trail_hash root;
		char b[64];
		trail_ledger_root(l, size, root, NULL);
		trail_base64(root, 32, b);
		if (!rc)
			printf("{\"ok\":true,\"root\":\"%s\",\"size\":%" PRIu64 "}\n", b, size);
	} else {
		rc = trail_error_set(err, TRAIL_EUSAGE, "unknown command or wrong arguments: %s", cmd);
	}
out:
	/* A damaged ledger is a failed verification for the verify command. */
	if (rc == TRAIL_EDATA && !strcmp(cmd, "verify"))
		rc = err ? (err->code = TRAIL_EVERIFY) : TRAIL_EVERIFY;
	trail_ledger_free(l);
	trail_store_free(s);
	return rc;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	struct conf c = {.progress = -1};
	const char *v;
	int o, rc = TRAIL_OK;
	long long z;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while (!rc && (o = trail_args_next(&a, &v, &err)) > 0) {
		switch (o) {
		case O_HOME: c.home = v; break;
		case O_ORIGIN: c.origin = v; break;
		case O_KEY:
			c.key = v;
			if (c.nkeys < 16)
				c.keys[c.nkeys++] = v;
			break;
		case O_BATCH: c.batch = 1; break;
		case O_SIZE:
			rc = trail_parse_long(v, 0, INT64_MAX, &z, "--size", &err);
			c.size = (uint64_t)z;
			c.has_size = 1;
			break;
		case O_JSON: c.json = 1; break;
		case O_PROGRESS: c.progress = 1; break;
		case O_NOPROGRESS: c.progress = 0; break;
		case O_URL: c.url = v; break;
		case O_LISTEN: c.listen = v; break;
		case O_STATE: c.state = v; break;
		case O_LOG:
			if (c.nlogs == 16)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "at most 16 --log");
			else
				c.logs[c.nlogs++] = v;
			break;
		case O_WITNESS:
			if (c.nwit == 16)
				rc = trail_error_set(&err, TRAIL_EUSAGE, "at most 16 --witness");
			else
				c.wit[c.nwit++] = v;
			break;
		case O_QUORUM:
			rc = trail_parse_long(v, 1, 16, &z, "--quorum", &err);
			c.quorum = (int)z;
			break;
		case O_TIMEOUT:
			rc = trail_parse_long(v, 1, 86400, &z, "--timeout", &err);
			c.timeout = (long)z;
			break;
		}
	}
	c.home = trail_store_home(c.home);
	if (rc || o == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (o == TRAIL_ARGS_EXIT)
		rc = TRAIL_OK;
	else if (a.nrest < 1)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "missing command");
	else
		rc = run(&a, &c, &err);
	trail_args_release(&a);
	int status = rc ? trail_cli_report(&cli, &err, stderr) : 0;
	return trail_cli_finish(&cli, status);
}
