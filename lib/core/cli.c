#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"

enum { OPT_HELP = -100, OPT_VERSION = -101, OPT_COMPLETION = -102 };

static const trail_opt builtin[] = {
	{OPT_HELP, "help", 'h', NULL, "print this help and exit", NULL},
	{OPT_VERSION, "version", 0, NULL, "print the version and exit", NULL},
	{OPT_COMPLETION, "completion", 0, "SHELL", "print a completion script (bash, zsh, fish)",
	 "bash zsh fish"},
	{0, NULL, 0, NULL, NULL, NULL},
};

int trail_args_init(trail_args *a, const trail_cli *cli, int argc, char **argv, FILE *out)
{
	memset(a, 0, sizeof *a);
	a->cli = cli;
	a->argc = argc;
	a->argv = argv;
	a->i = 1;
	a->out = out ? out : stdout;
	a->rest = trail_calloc((size_t)(argc > 0 ? argc : 1), sizeof *a->rest);
	return a->rest ? TRAIL_OK : TRAIL_ENOMEM;
}

void trail_args_release(trail_args *a)
{
	trail_free(a->rest);
	a->rest = NULL;
	a->nrest = 0;
}

static const trail_opt *find_long(const trail_cli *cli, const char *name, size_t len)
{
	for (int pass = 0; pass < 2; pass++) {
		const trail_opt *o = pass ? builtin : cli->opts;
		for (; o && o->id; o++)
			if (strlen(o->name) == len && !strncmp(o->name, name, len))
				return o;
	}
	return NULL;
}

static const trail_opt *find_short(const trail_cli *cli, char c)
{
	for (int pass = 0; pass < 2; pass++) {
		const trail_opt *o = pass ? builtin : cli->opts;
		for (; o && o->id; o++)
			if (o->shortname && o->shortname == c)
				return o;
	}
	return NULL;
}

static int builtin_run(trail_args *a, const trail_opt *o, const char *val, trail_error *err)
{
	if (o->id == OPT_HELP)
		trail_cli_usage(a->cli, a->out);
	else if (o->id == OPT_VERSION)
		fprintf(a->out, "%s %s\n", a->cli->prog, TRAIL_VERSION);
	else if (trail_cli_completion(a->cli, val, a->out))
		return trail_error_set(err, TRAIL_EUSAGE, "unknown shell '%s' (bash, zsh, fish)", val),
		       TRAIL_ARGS_ERROR;
	return TRAIL_ARGS_EXIT;
}

int trail_args_next(trail_args *a, const char **val, trail_error *err)
{
	*val = NULL;
	if (a->bundle && *a->bundle) {
		const trail_opt *o = find_short(a->cli, *a->bundle);
		char c = *a->bundle++;
		if (!o) {
			trail_error_set(err, TRAIL_EUSAGE, "unknown option '-%c'", c);
			return TRAIL_ARGS_ERROR;
		}
		if (o->arg) {
			if (*a->bundle) {
				*val = a->bundle;
			} else if (a->i < a->argc) {
				*val = a->argv[a->i++];
			} else {
				trail_error_set(err, TRAIL_EUSAGE, "option '-%c' needs %s", c, o->arg);
				return TRAIL_ARGS_ERROR;
			}
			a->bundle = NULL;
		}
		return o->id < 0 ? builtin_run(a, o, *val, err) : o->id;
	}
	while (a->i < a->argc) {
		char *s = a->argv[a->i++];
		if (a->dashdash || s[0] != '-' || s[1] == 0) {
			a->rest[a->nrest++] = s;
			continue;
		}
		if (s[1] == '-' && s[2] == 0) {
			a->dashdash = 1;
			continue;
		}
		if (s[1] != '-') {
			a->bundle = s + 1;
			return trail_args_next(a, val, err);
		}
		const char *name = s + 2, *eq = strchr(name, '=');
		size_t len = eq ? (size_t)(eq - name) : strlen(name);
		const trail_opt *o = find_long(a->cli, name, len);
		if (!o) {
			trail_error_set(err, TRAIL_EUSAGE, "unknown option '--%.*s'", (int)len, name);
			return TRAIL_ARGS_ERROR;
		}
		if (o->arg) {
			if (eq) {
				*val = eq + 1;
			} else if (a->i < a->argc) {
				*val = a->argv[a->i++];
			} else {
				trail_error_set(err, TRAIL_EUSAGE, "option '--%s' needs %s", o->name, o->arg);
				return TRAIL_ARGS_ERROR;
			}
		} else if (eq) {
			trail_error_set(err, TRAIL_EUSAGE, "option '--%s' takes no argument", o->name);
			return TRAIL_ARGS_ERROR;
		}
		return o->id < 0 ? builtin_run(a, o, *val, err) : o->id;
	}
	return TRAIL_ARGS_END;
}

static void usage_opts(const trail_opt *o, FILE *out)
{
	for (; o && o->id; o++) {
		char left[64];
		int n = 0;
		if (o->shortname)
			n = snprintf(left, sizeof left, "-%c, ", o->shortname);
		snprintf(left + n, sizeof left - (size_t)n, "--%s%s%s", o->name, o->arg ? " " : "",
			 o->arg ? o->arg : "");
		fprintf(out, "  %-26s %s\n", left, o->help ? o->help : "");
	}
}

void trail_cli_usage(const trail_cli *cli, FILE *out)
{
	const char *u = cli->usage;
	int first = 1;
	while (u && *u) {
		const char *nl = strchr(u, '\n');
		size_t len = nl ? (size_t)(nl - u) : strlen(u);
		fprintf(out, "%s %s %.*s\n", first ? "usage:" : "      ", cli->prog, (int)len, u);
		first = 0;
		u += len + (nl ? 1 : 0);
	}
	if (cli->summary)
		fprintf(out, "\n%s\n", cli->summary);
	fprintf(out, "\noptions:\n");
	usage_opts(cli->opts, out);
	usage_opts(builtin, out);
	fprintf(out, "\nexit status: 0 ok, 1 check failed, 64 usage, 65 bad data, 66 no input,\n"
		     "69 unavailable, 70 internal, 74 i/o error, 75 retry. see %s(1).\n",
		cli->prog);
}

/* The option words of one table, as "--a --b -c". */
static void words(const trail_opt *o, FILE *out, const char *sep)
{
	for (; o && o->id; o++) {
		fprintf(out, "%s--%s", sep, o->name);
		if (o->shortname)
			fprintf(out, " -%c", o->shortname);
	}
}

static void bash_case(const trail_opt *o, FILE *out)
{
	for (; o && o->id; o++) {
		if (!o->arg)
			continue;
		fprintf(out, "\t--%s%s%c)\n", o->name, o->shortname ? "|-" : "",
			o->shortname ? o->shortname : ' ');
		if (!o->complete || !strcmp(o->complete, "file"))
			fprintf(out, "\t\tCOMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n");
		else if (!strcmp(o->complete, "dir"))
			fprintf(out, "\t\tCOMPREPLY=($(compgen -d -- \"$cur\")); return ;;\n");
		else
			fprintf(out, "\t\tCOMPREPLY=($(compgen -W \"%s\" -- \"$cur\")); return ;;\n",
				o->complete);
	}
}

static void fish_opts(const char *prog, const trail_opt *o, FILE *out)
{
	for (; o && o->id; o++) {
		fprintf(out, "complete -c %s -l %s", prog, o->name);
		if (o->shortname)
			fprintf(out, " -s %c", o->shortname);
		if (o->arg) {
			if (o->complete && !strcmp(o->complete, "dir"))
				fprintf(out, " -r -a '(__fish_complete_directories)'");
			else if (o->complete && strcmp(o->complete, "file"))
				fprintf(out, " -x -a '%s'", o->complete);
			else
				fprintf(out, " -r -F");
		}
		/* inside fish's single quotes only \' and \\ are escapes */
		fputs(" -d '", out);
		for (const char *h = o->help ? o->help : ""; *h; h++) {
			if (*h == '\'' || *h == '\\')
				fputc('\\', out);
			fputc(*h, out);
		}
		fputs("'\n", out);
	}
}

static void zsh_opts(const trail_opt *o, FILE *out)
{
	for (; o && o->id; o++) {
		const char *act = "";
		char buf[256];
		if (o->arg) {
			if (!o->complete || !strcmp(o->complete, "file"))
				act = ":file:_files";
			else if (!strcmp(o->complete, "dir"))
				act = ":directory:_files -/";
			else {
				snprintf(buf, sizeof buf, ":%s:(%s)", o->arg, o->complete);
				act = buf;
			}
		}
		/* zsh wants ' and ] escaped inside the description */
		fprintf(out, "    '--%s%s[", o->name, o->arg ? "=" : "");
		for (const char *h = o->help ? o->help : ""; *h; h++) {
			if (*h == '\'')
				fputs("'\\''", out);
			else if (*h == ']' || *h == '[')
				fprintf(out, "\\%c", *h);
			else
				fputc(*h, out);
		}
		fprintf(out, "]%s' \\\n", act);
		if (o->shortname)
			fprintf(out, "    '-%c%s' \\\n", o->shortname, act);
	}
}

int trail_cli_completion(const trail_cli *cli, const char *shell, FILE *out)
{
	const char *p = cli->prog;
	char fn[128];
	size_t j = 0;
	for (const char *c = p; *c && j + 1 < sizeof fn; c++)
		fn[j++] = (*c == '-') ? '_' : *c;
	fn[j] = 0;
	if (!strcmp(shell, "bash")) {
		fprintf(out, "# bash completion for %s (generated by %s --completion bash)\n", p, p);
		fprintf(out, "_%s() {\n\tlocal cur prev\n\tcur=\"${COMP_WORDS[COMP_CWORD]}\"\n"
			     "\tprev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n\tcase \"$prev\" in\n", fn);
		bash_case(cli->opts, out);
		bash_case(builtin, out);
		fprintf(out, "\tesac\n");
		if (cli->subcommands)
			fprintf(out, "\tif [ \"$COMP_CWORD\" -eq 1 ] && [[ \"$cur\" != -* ]]; then\n"
				     "\t\tCOMPREPLY=($(compgen -W \"%s\" -- \"$cur\")); return\n\tfi\n",
				cli->subcommands);
		fprintf(out, "\tif [[ \"$cur\" == -* ]]; then\n\t\tCOMPREPLY=($(compgen -W \"");
		words(cli->opts, out, " ");
		words(builtin, out, " ");
		fprintf(out, "\" -- \"$cur\"))\n\telse\n\t\tCOMPREPLY=($(compgen -f -- \"$cur\"))\n"
			     "\tfi\n}\ncomplete -o filenames -F _%s %s\n", fn, p);
	} else if (!strcmp(shell, "zsh")) {
		fprintf(out, "#compdef %s\n# zsh completion for %s (generated by %s --completion zsh)\n"
			     "_arguments -s \\\n", p, p, p);
		zsh_opts(cli->opts, out);
		zsh_opts(builtin, out);
		if (cli->subcommands)
			fprintf(out, "    '1:command:(%s)' \\\n", cli->subcommands);
		fprintf(out, "    '*:file:_files'\n");
	} else if (!strcmp(shell, "fish")) {
		fprintf(out, "# fish completion for %s (generated by %s --completion fish)\n", p, p);
		if (cli->subcommands)
			fprintf(out, "complete -c %s -n '__fish_use_subcommand' -f -a '%s'\n", p,
				cli->subcommands);
		fish_opts(p, cli->opts, out);
		fish_opts(p, builtin, out);
	} else {
		return TRAIL_EUSAGE;
	}
	return TRAIL_OK;
}

int trail_parse_long(const char *s, long long min, long long max, long long *out,
		     const char *what, trail_error *err)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return trail_error_set(err, TRAIL_EUSAGE, "%s: '%s' is not an integer in [%lld, %lld]",
				       what, s, min, max);
	*out = v;
	return TRAIL_OK;
}

int trail_parse_double(const char *s, double min, double max, double *out, const char *what,
		       trail_error *err)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= min && v <= max))
		return trail_error_set(err, TRAIL_EUSAGE, "%s: '%s' is not a number in [%g, %g]",
				       what, s, min, max);
	*out = v;
	return TRAIL_OK;
}

int trail_cli_report(const trail_cli *cli, const trail_error *err, FILE *f)
{
	fprintf(f, "%s: error: ", cli->prog);
	if (err->source[0]) {
		fprintf(f, "%s:", err->source);
		if (err->line > 0)
			fprintf(f, "%ld:", err->line);
		fputc(' ', f);
	}
	fprintf(f, "%s\n", err->msg[0] ? err->msg : trail_strerror(err->code));
	if (err->code == TRAIL_EUSAGE)
		fprintf(f, "%s: try '%s --help'\n", cli->prog, cli->prog);
	return trail_exit_status(err->code);
}

int trail_cli_finish(const trail_cli *cli, int status)
{
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "%s: error: <stdout>: write failed: %s\n", cli->prog, strerror(errno));
		return status ? status : 74;
	}
	return status;
}

struct trail_progress {
	FILE *f;
	const char *label;
	unsigned long long total, done;
	struct timespec start, last;
	int on;
};

static double since(const struct timespec *a)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - a->tv_sec) + (double)(now.tv_nsec - a->tv_nsec) * 1e-9;
}

trail_progress *trail_progress_new(FILE *f, int mode, const char *label, unsigned long long total)
{
	trail_progress *p = trail_calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->f = f;
	p->label = label;
	p->total = total;
	p->on = mode < 0 ? isatty(fileno(f)) : mode;
	clock_gettime(CLOCK_MONOTONIC, &p->start);
	p->last = p->start;
	p->last.tv_sec -= 1;
	return p;
}

static void draw(trail_progress *p)
{
	double t = since(&p->start);
	if (p->total) {
		double frac = (double)p->done / (double)p->total;
		int w = 30, fill = (int)(frac * w);
		fprintf(p->f, "\r%s [%.*s%*s] %3d%% %llu/%llu", p->label, fill,
			"##############################", w - fill, "", (int)(frac * 100), p->done,
			p->total);
		if (frac > 0 && frac < 1)
			fprintf(p->f, " eta %.0fs", t / frac - t);
	} else {
		fprintf(p->f, "\r%s %llu", p->label, p->done);
	}
	fprintf(p->f, " %.1fs\033[K", t);
	fflush(p->f);
}

void trail_progress_set(trail_progress *p, unsigned long long done)
{
	if (!p || !p->on)
		return;
	p->done = done;
	if (since(&p->last) < 0.2)
		return;
	clock_gettime(CLOCK_MONOTONIC, &p->last);
	draw(p);
}

void trail_progress_free(trail_progress *p)
{
	if (!p)
		return;
	if (p->on) {
		draw(p);
		fputc('\n', p->f);
	}
	trail_free(p);
}
