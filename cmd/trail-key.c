/* trail-key: Ed25519 keys and signed notes (C2SP signed-note). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "ledger/ledger.h"

enum { O_DIR = 1, O_TEXT, O_WITNESS };

static const trail_opt opts[] = {
	{O_DIR, "dir", 'C', "DIR", "generate: write the key files into DIR (default .)", "dir"},
	{O_TEXT, "text", 't', NULL, "verify: print the signed text when it verifies", NULL},
	{O_WITNESS, "witness", 'w', NULL, "generate, public: the key's cosigner (witness) key, type 0x04", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "trail-key",
	.usage = "generate [-C DIR] [--witness] NAME\npublic [--witness] KEYFILE\nsign KEYFILE... < TEXT\n"
		 "verify [--text] VKEY|PUBFILE... < NOTE",
	.summary = "Create Ed25519 keys, sign and verify notes in the C2SP signed-note format.",
	.subcommands = "generate public sign verify",
	.opts = opts,
};

#define NOTE_MAX (1u << 20)

/*
 * verify: a note verifies if a note key signed it or a cosigner key
 * (type 0x04) cosigned it; keys[i] is a trail_verifier when cos[i] is 0.
 */
static int verify(const char *in, size_t inlen, void **keys, const int *cos, int nkeys,
		  char **body, size_t *bodylen, trail_error *err)
{
	const trail_verifier *vs[64];
	const trail_cosigner *cs[64];
	size_t nv = 0, nc = 0, got = 0;
	for (int i = 0; i < nkeys && i < 64; i++)
		cos[i] ? (void)(cs[nc++] = keys[i]) : (void)(vs[nv++] = keys[i]);
	int rc = nv ? trail_note_open(in, inlen, vs, nv, body, bodylen, err) : TRAIL_EVERIFY;
	/* a bad signature by a given note key fails, whatever else verifies */
	if (rc == TRAIL_OK || rc == TRAIL_EDATA || !nc || (nv && err && !strncmp(err->msg, "bad signature", 13)))
		return rc;
	trail_error e = {0};
	if ((rc = trail_cosignatures_count(in, inlen, cs, nc, &got, &e)))
		return trail_error_set(err, rc, "%s", e.msg);
	if (!got)
		return trail_error_set(err, TRAIL_EVERIFY, "note not signed or cosigned by any given key");
	/* the cosigned text: up to the last blank line */
	size_t n = inlen;
	if (n >= 2 && in[n - 1] == '\n' && in[n - 2] == '\n')
		n--;
	while (n >= 2 && !(in[n - 1] == '\n' && in[n - 2] == '\n'))
		n--;
	*bodylen = n - 1;
	return (*body = trail_strndup(in, n - 1)) ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

static int run(trail_args *a, const char *dir, int text, int witness, trail_error *err)
{
	const char *cmd = a->rest[0];
	char **args = a->rest + 1;
	int nargs = a->nrest - 1, rc = TRAIL_OK;
	if (!strcmp(cmd, "generate")) {
		char *vkey;
		if (nargs != 1)
			return trail_error_set(err, TRAIL_EUSAGE, "generate takes one NAME");
		if ((rc = witness ? trail_witness_key_create_files(dir, args[0], &vkey, err)
				  : trail_key_create_files(dir, args[0], &vkey, err)))
			return rc;
		printf("%s\n", vkey);
		trail_free(vkey);
		return TRAIL_OK;
	}
	if (!strcmp(cmd, "public")) {
		trail_signer *s = NULL;
		if (nargs != 1)
			return trail_error_set(err, TRAIL_EUSAGE, "public takes one KEYFILE");
		char *cv = NULL;
		if ((rc = trail_signer_load(args[0], &s, err)) ||
		    (witness && (rc = trail_cosigner_vkey(s, &cv, err)))) {
			trail_signer_free(s);
			return rc;
		}
		printf("%s\n", cv ? cv : trail_signer_vkey(s));
		trail_free(cv);
		trail_signer_free(s);
		return TRAIL_OK;
	}
	int sign = !strcmp(cmd, "sign");
	if (!sign && strcmp(cmd, "verify"))
		return trail_error_set(err, TRAIL_EUSAGE, "unknown command '%s'", cmd);
	if (nargs < 1)
		return trail_error_set(err, TRAIL_EUSAGE, "%s needs at least one key", cmd);
	void **keys = trail_calloc((size_t)nargs, sizeof *keys);
	int *cos = trail_calloc((size_t)nargs, sizeof *cos);
	char *in = NULL, *out = NULL, *body = NULL;
	size_t inlen, outlen;
	if (!keys || !cos) {
		trail_free(keys);
		trail_free(cos);
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	}
	for (int i = 0; i < nargs && !rc; i++) {
		rc = sign ? trail_signer_load(args[i], (trail_signer **)&keys[i], err)
			  : trail_verifier_load(args[i], (trail_verifier **)&keys[i], err);
		/* a witness's key (type 0x04) verifies cosignatures */
		if ((rc == TRAIL_EDATA || rc == TRAIL_ENOINPUT) && !sign &&
		    trail_cosigner_load(args[i], (trail_cosigner **)&keys[i], NULL) == TRAIL_OK)
			rc = TRAIL_OK, cos[i] = 1;
	}
	if (!rc)
		rc = trail_read_fd(0, "<stdin>", NOTE_MAX, (void **)&in, &inlen, err);
	if (!rc && sign)
		rc = trail_note_sign(in, inlen, (const trail_signer *const *)keys, (size_t)nargs,
				     &out, &outlen, err);
	else if (!rc)
		rc = verify(in, inlen, keys, cos, nargs, &body, &outlen, err);
	if (!rc && (sign || text))
		fwrite(sign ? out : body, 1, outlen, stdout);
	for (int i = 0; i < nargs; i++)
		sign ? trail_signer_free(keys[i])
		: cos[i] ? trail_cosigner_free(keys[i]) : trail_verifier_free(keys[i]);
	trail_free(keys);
	trail_free(cos);
	trail_free(in);
	trail_free(out);
	trail_free(body);
	return rc;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	const char *dir = ".", *v;
	int text = 0, witness = 0, o, rc;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while ((o = trail_args_next(&a, &v, &err)) > 0) {
		if (o == O_DIR)
			dir = v;
		else if (o == O_TEXT)
			text = 1;
		else if (o == O_WITNESS)
			witness = 1;
	}
	if (o == TRAIL_ARGS_EXIT)
		rc = TRAIL_OK;
	else if (o == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (a.nrest < 1)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "missing command");
	else
		rc = run(&a, dir, text, witness, &err);
	trail_args_release(&a);
	int status = rc ? trail_cli_report(&cli, &err, stderr) : 0;
	return trail_cli_finish(&cli, status);
}
