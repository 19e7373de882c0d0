/*
 * Minimal TAP producer for the unit tests: each check prints "ok N - name"
 * or "not ok N - name"; tests/run counts the lines. A test program exits
 * non-zero when any check failed.
 */
#ifndef TRAIL_TAP_H
#define TRAIL_TAP_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_n, tap_failed;

#define ok(cond, ...) tap_ok(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define skip(...) (printf("ok %d - ", ++tap_n), printf(__VA_ARGS__), printf(" # SKIP\n"))
#define diag(...) (printf("# "), printf(__VA_ARGS__), printf("\n"))

__attribute__((format(printf, 4, 5))) static int tap_ok(int pass, const char *file, int line,
							const char *fmt, ...)
{
	va_list ap;
	printf("%sok %d - ", pass ? "" : "not ", ++tap_n);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	if (!pass) {
		printf("#   failed at %s:%d\n", file, line);
		tap_failed++;
	}
	fflush(stdout);
	return pass;
}

/* Compare two float arrays; reports the maximum absolute difference. */
static inline int tap_close(const float *a, const float *b, size_t n, double tol, double *maxdiff)
{
	double m = 0;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - (double)b[i]);
		if (!(d <= m))
			m = isnan(d) ? INFINITY : d;
	}
	if (maxdiff)
		*maxdiff = m;
	return m <= tol;
}

static inline int tap_done(void)
{
	printf("1..%d\n", tap_n);
	return tap_failed ? 1 : 0;
}

/* Long tests run only under `make check-full`. */
static inline int tap_full(void)
{
	const char *f = getenv("TRAIL_FULL");
	return f && *f && *f != '0';
}

#endif
