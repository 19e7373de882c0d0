/*
 * Settlement throughput. Records are generated in attr-score's shape (event
 * and model digests, usage, three contributors, three top records, a
 * cluster in one record of ten) over 1,000 contributors.
 *
 *   bench_settle gen N      N records on stdout (for the program's pipe)
 *   bench_settle engine N   N records through trail_settle_line, timing only
 *                           the settlement calls; one JSON line of figures
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "settle/settle.h"

static uint64_t rs = 88172645463325252ULL;
static uint64_t rnd(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return rs;
}

static void hex(char *o, int n)
{
	for (int i = 0; i < n; i++)
		o[i] = "0123456789abcdef"[rnd() & 15];
	o[n] = 0;
}

/* record i as one line (with its newline) into b; returns its length */
static int record(char *b, size_t cap, uint64_t i)
{
	char ev[65], md[65], r[3][17];
	int c[3];
	hex(ev, 64);
	hex(md, 64);
	for (int k = 0; k < 3; k++) {
		hex(r[k], 16);
		c[k] = (int)(rnd() % 1000);
	}
	unsigned a = 400000000 + (unsigned)(rnd() % 300000000), bb = (1000000000 - a) * 2 / 3, cc = 1000000000 - a - bb;
	char cl[200] = "";
	if (i % 10 == 0)
		snprintf(cl, sizeof cl, ",\"clusters\":[{\"records\":[\"sha256:%s\"],\"members\":[\"contrib-%04d\",\"contrib-%04d\"],\"first\":\"contrib-%04d\"}]",
			 r[0], c[0], c[1], c[1]);
	return snprintf(b, cap,
			"{\"event\":\"sha256:%s\",\"model\":\"sha256:%s\",\"method\":\"influence\","
			"\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":0},"
			"\"top\":[{\"record\":\"sha256:%s\",\"contributor\":\"contrib-%04d\",\"score\":%d.%03d},"
			"{\"record\":\"sha256:%s\",\"contributor\":\"contrib-%04d\",\"score\":%d.%03d},"
			"{\"record\":\"sha256:%s\",\"contributor\":\"contrib-%04d\",\"score\":-0.%03d}],"
			"\"contributors\":[{\"contributor\":\"contrib-%04d\",\"share\":0.%09u},"
			"{\"contributor\":\"contrib-%04d\",\"share\":0.%09u},{\"contributor\":\"contrib-%04d\",\"share\":0.%09u}]%s}\n",
			ev, md, (int)(rnd() % 2000), (int)(rnd() % 500), r[0], c[0], (int)(rnd() % 9), (int)(rnd() % 1000), r[1],
			c[1], (int)(rnd() % 3), (int)(rnd() % 1000), r[2], c[2], (int)(rnd() % 1000), c[0], a, c[1], bb, c[2], cc,
			cl);
}

static double clock_s(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double now(void)
{
	return clock_s(CLOCK_MONOTONIC);
}

/* this thread's CPU time: steadier than wall time on a shared machine */
static double cpu(void)
{
	return clock_s(CLOCK_THREAD_CPUTIME_ID);
}

int main(int argc, char **argv)
{
	if (argc != 3 || (strcmp(argv[1], "gen") && strcmp(argv[1], "engine"))) {
		fprintf(stderr, "usage: bench_settle gen|engine N\n");
		return 64;
	}
	uint64_t n = strtoull(argv[2], NULL, 10);
	enum { BATCH = 65536 };
	size_t cap = (size_t)BATCH * 1024;
	char *buf = malloc(cap);
	int *len = malloc(BATCH * sizeof *len);
	if (!buf || !len)
		return 70;
	if (!strcmp(argv[1], "gen")) {
		for (uint64_t i = 0; i < n;) {
			size_t off = 0;
			for (int k = 0; k < BATCH && i < n; k++, i++)
				off += (size_t)record(buf + off, cap - off, i);
			fwrite(buf, 1, off, stdout);
		}
		return fflush(stdout) ? 74 : 0;
	}
	trail_settle *s;
	trail_error err = {0};
	if (trail_init()) /* libsodium picks its fastest BLAKE2b here */
		return 70;
	json_t *pol = json_pack("{s:i, s:i, s:{s:i, s:i, s:i, s:i}, s:{s:i, s:i}, s:{s:i, s:f, s:i}}", "fee_per_1k_prompt", 100,
				"fee_per_1k_completion", 300, "split_bps", "platform", 1000, "model", 2000, "stakers", 1000,
				"contributors", 6000, "stakes", "contrib-0001", 5000, "contrib-0002", 100, "penalty",
				"max_poisoning", 0, "min_influence", -1e9, "slash_bps", 100);
	if (trail_settle_new(pol, &s, &err)) {
		fprintf(stderr, "bench_settle: %s\n", err.msg);
		return 70;
	}
	double t = 0, tc = 0;
	uint64_t bytes = 0;
	for (uint64_t i = 0; i < n;) {
		size_t off = 0;
		int m = 0;
		for (; m < BATCH && i < n; m++, i++)
			off += (size_t)(len[m] = record(buf + off, cap - off, i));
		double t0 = now(), c0 = cpu();
		off = 0;
		for (int k = 0; k < m; k++) {
			if (trail_settle_line(s, buf + off, (size_t)len[k] - 1, &err)) {
				fprintf(stderr, "bench_settle: %s\n", err.msg);
				return 70;
			}
			off += (size_t)len[k];
		}
		t += now() - t0;
		tc += cpu() - c0;
		bytes += off;
	}
	double t0 = now();
	json_t *res;
	if (trail_settle_result(s, "bench", &res, &err)) {
		fprintf(stderr, "bench_settle: %s\n", err.msg);
		return 70;
	}
	double tr = now() - t0;
	json_t *ep = json_array_get(res, json_array_size(res) - 1);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"records\":%llu,\"bytes_per_record\":%.0f,\"seconds\":%.3f,\"records_per_s\":%.0f,\"cpu_seconds\":%.3f,\"records_per_cpu_s\":%.0f,\"mb_per_cpu_s\":%.1f,"
	       "\"result_seconds\":%.4f,\"payees\":%zu,\"fees\":%lld,\"paid\":%lld,\"retained\":%lld,\"peak_rss_kb\":%ld}\n",
	       (unsigned long long)n, (double)bytes / (double)n, t, (double)n / t, tc, (double)n / tc, (double)bytes / tc / 1e6, tr,
	       trail_settle_payees(s), (long long)json_integer_value(json_object_get(ep, "fees")),
	       (long long)json_integer_value(json_object_get(ep, "paid")),
	       (long long)json_integer_value(json_object_get(ep, "retained")), ru.ru_maxrss);
	json_decref(res);
	json_decref(pol);
	trail_settle_free(s);
	free(buf);
	free(len);
	return 0;
}
