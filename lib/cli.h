/*
 * Command-line support shared by every program: one option table drives
 * parsing, --help and shell completion; error reporting in the house format
 * "prog: error: source:line: message"; a checked final write to stdout; a
 * progress bar on stderr.
 *
 * The library writes only to the streams the caller passes in.
 */
#ifndef TRAIL_CLI_H
#define TRAIL_CLI_H

#include <stdio.h>

#include "trail.h"

typedef struct trail_opt {
	int id;               /* returned by trail_args_next; > 0 */
	const char *name;     /* long name, without "--" */
	char shortname;       /* 0 when none */
	const char *arg;      /* argument placeholder ("FILE", "N"); NULL for a flag */
	const char *help;     /* one line */
	const char *complete; /* argument completion: "file", "dir", or words "a b c" */
} trail_opt;

typedef struct trail_cli {
	const char *prog;        /* program name */
	const char *usage;       /* usage lines after "usage: ", '\n' separated */
	const char *summary;     /* one sentence */
	const char *subcommands; /* space-separated, or NULL */
	const trail_opt *opts;   /* terminated by an entry with id 0 */
} trail_cli;

/* Parser state. Positional arguments are gathered in rest[0..nrest). */
typedef struct trail_args {
	const trail_cli *cli;
	int argc, i;
	char **argv;
	const char *bundle; /* remaining short flags in "-abc" */
	char **rest;
	int nrest;
	int dashdash;
	FILE *out; /* where --help, --version, --completion write */
} trail_args;

enum {
	TRAIL_ARGS_END = -1,   /* no more options; see rest/nrest */
	TRAIL_ARGS_ERROR = -2, /* usage error; err is set (TRAIL_EUSAGE) */
	TRAIL_ARGS_EXIT = -3,  /* --help/--version/--completion written: exit 0 */
};

/*
 * Initialise a parser. rest is allocated here and released by
 * trail_args_release. Options may follow positional arguments; "--" ends
 * options. Built in: -h/--help, --version, --completion bash|zsh|fish.
 */
int trail_args_init(trail_args *a, const trail_cli *cli, int argc, char **argv, FILE *out);
/* Next option: its id (>0), or a TRAIL_ARGS_* value. *val gets the argument. */
int trail_args_next(trail_args *a, const char **val, trail_error *err);
void trail_args_release(trail_args *a);

void trail_cli_usage(const trail_cli *cli, FILE *out);
int trail_cli_completion(const trail_cli *cli, const char *shell, FILE *out);

/* Parse helpers for option arguments; on failure set err (TRAIL_EUSAGE). */
int trail_parse_long(const char *s, long long min, long long max, long long *out,
		     const char *what, trail_error *err);
int trail_parse_double(const char *s, double min, double max, double *out,
		       const char *what, trail_error *err);

/*
 * Print "prog: error: [source:[line:]] message" to f and return the exit
 * status of err->code. A usage error adds a hint to run --help.
 */
int trail_cli_report(const trail_cli *cli, const trail_error *err, FILE *f);
/* Flush and check stdout; returns status, or 74 if the final write failed. */
int trail_cli_finish(const trail_cli *cli, int status);

/* Progress on stderr: shown when enabled (terminal by default). */
typedef struct trail_progress trail_progress;
/* mode: -1 auto (isatty), 0 off, 1 on. total 0 = unknown. */
trail_progress *trail_progress_new(FILE *f, int mode, const char *label, unsigned long long total);
void trail_progress_set(trail_progress *p, unsigned long long done);
void trail_progress_free(trail_progress *p); /* ends the line */

#endif
