/* datanet-cat: the approved records of a datanet as of a tree size. */
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "data/data.h"

enum { O_HOME = 1 };

static const trail_opt opts[] = {
	{O_HOME, "home", 0, "DIR", "the store (default $TRAIL_HOME, else ./.trail)", "dir"},
	{0},
};

static const trail_cli cli = {
	.prog = "datanet-cat",
	.usage = "[--home DIR] NAME[@TREESIZE]...",
	.summary = "Print the approved records of a datanet as of a tree size, in ledger order, "
		   "each with record, contributor, bundle and entry.",
	.opts = opts,
};

static int print(void *ctx, const json_t *rec)
{
	char *line;
	if (trail_jcs(rec, &line, NULL, ctx))
		return TRAIL_EDATA;
	puts(line);
	trail_free(line);
	return ferror(stdout) ? TRAIL_EIO : TRAIL_OK;
}

int main(int argc, char **argv)
{
	trail_args a;
	trail_error err = {0};
	trail_store *s = NULL;
	const char *v, *home = NULL;
	int o, rc = TRAIL_OK;
	if (trail_init() || trail_args_init(&a, &cli, argc, argv, stdout))
		return 70;
	while ((o = trail_args_next(&a, &v, &err)) > 0)
		if (o == O_HOME)
			home = v;
	if (o == TRAIL_ARGS_ERROR)
		rc = TRAIL_EUSAGE;
	else if (o != TRAIL_ARGS_EXIT && a.nrest < 1)
		rc = trail_error_set(&err, TRAIL_EUSAGE, "missing NAME[@TREESIZE]");
	else if (o != TRAIL_ARGS_EXIT)
		rc = trail_store_open(trail_store_home(home), &s, &err);
	for (int i = 0; o != TRAIL_ARGS_EXIT && !rc && i < a.nrest; i++) {
		char *name;
		uint64_t size;
		if (!(rc = trail_datanet_spec(a.rest[i], &name, &size, &err))) {
			rc = trail_datanet_snapshot(s, name, size, print, &err, &err);
			trail_free(name);
		}
	}
	trail_store_free(s);
	trail_args_release(&a);
	return trail_cli_finish(&cli, rc ? trail_cli_report(&cli, &err, stderr) : 0);
}
