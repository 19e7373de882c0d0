/* trail-key: Ed25519 keys and signed notes (C2SP signed-note). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "ledger/ledger.h"

enum { O_DIR = 1, O_TEXT };

static const trail_opt opts[] = {
	{O_DIR, "dir", 'C', "DIR", "generate: write the key files into DIR (default .)", "dir"},
	{O_TEXT, "text", 't', NULL, "verify: print the signed text when it verifies", NULL},
	{0},
};

static const trail_cli cli = {
	.prog = "trail-key",
	.usage = "generate [-C DIR] NAME\npublic KEYFILE\nsign KEYFILE... < TEXT\n"
		 "verify [--text] VKEY|PUBFILE... < NOTE",
	.summary = "Create Ed25519 keys, sign and verify notes in the C2SP signed-note format.",
	.subcommands = "generate public sign verify",
	.opts = opts,
};

#define NOTE_MAX (1u << 20)

static int run(trail_args *a, const char *dir, int text, trail_error *err)
{
	const char *cmd = a->rest[0];
	char **args = a->rest + 1;
	int nargs = a->nrest - 1, rc = TRAIL_OK;
	if (!strcmp(cmd, "generate")) {
		char *vkey;
		if (nargs != 1)
			return trail_error_set(err, TRAIL_EUSAGE, "generate takes one NAME");
		if ((rc = trail_key_create_files(dir, args[0], &vkey, err)))
			return rc;
		printf("%s\n", vkey);
		trail_free(vkey);
		return TRAIL_OK;
	}
	if (!strcmp(cmd, "public")) {
		trail_signer *s;
		if (nargs != 1)
			return trail_error_set(err, TRAIL_EUSAGE, "public takes one KEYFILE");
		if ((rc = trail_signer_load(args[0], &s, err)))
			return rc;
		printf("%s\n", trail_signer_vkey(s));
		trail_signer_free(s);
		return TRAIL_OK;
	}
	int sign = !strcmp(cmd, "sign");
	if (!sign && strcmp(cmd, "verify"))
		return trail_error_set(err, TRAIL_EUSAGE, "unknown command '%s'", cmd);
	if (nargs < 1)
		return trail_error_set(err, TRAIL_EUSAGE, "%s needs at least one key", cmd);
	void **keys = trail_calloc((size_t)nargs, sizeof *keys);
	char *in = NULL, *out = NULL, *body = NULL;
	size_t inlen, outlen;
	if (!keys)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (int i = 0; i < nargs && !rc; i++)
		rc = sign ? trail_signer_load(args[i], (trail_signer **)&keys[i], err)
			  : trail_verifier_load(args[i], (trail_verifier **)&keys[i], err);
	if (!rc)
		rc = trail_read_fd(0, "<stdin>", NOTE_MAX, (void **)&in, &inlen, err);
	if (!rc && sign)
		rc = trail_note_sign(in, inlen, (const trail_signer *const *)keys, (size_t)nargs,
				     &out, &outlen, err);
	else if (!rc)
		rc = trail_note_open(in, inlen, (const trail_verifier *const *)keys, (size_t)nargs,
				     &body, &outlen, err);
	if (!rc && (sign || text))
		fwrite(sign ? out : body, 1, outlen, stdout);
	for (int i = 0; i < nargs; i++)
		sign ? trail_signer_free(keys[i]) : trail_verifier_free(keys[i]);
	trail_free(keys);
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
	int text = 0, o, rc;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while ((o = trail_args_next(&a, &v, &err)) > 0) {
		if (o == O_DIR)
			dir = v;
		else if (o == O_TEXT)
			text = 1;
	}
	if (o == TRAIL_ARGS_EXIT)
		rc = TRAIL_OK;
	else if (o == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (a.nrest < 1)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "missing command");
	else
		rc = run(&a, dir, text, &err);
	trail_args_release(&a);
	int status = rc ? trail_cli_report(&cli, &err, stderr) : 0;
	return trail_cli_finish(&cli, status);
}
