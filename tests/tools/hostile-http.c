/*
 * A static HTTP server for tests that misbehaves on purpose.
 *
 *   hostile-http DIR        listens on 127.0.0.1, prints its port, serves
 *                           DIR under /ok/ and misbehaves under:
 *     /big/...     a 16 MiB body for every path
 *     /trunc/...   the file, but the connection drops halfway through it
 *     /loop/...    a redirect to itself, forever
 *     /slow/...    the file, one byte a second
 *     /short/...   the file less its last byte (a well-formed, short answer)
 *     /status/...  500 for every path
 * Runs until killed.
 */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *dir;

struct body {
	char *p;
	size_t n;
	int mode; /* 't' truncate, 's' slow, 'b' big */
};

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct body *b = cls;
	if (b->mode == 'b') {
		size_t n = max < 65536 ? max : 65536;
		memset(buf, 'A', n);
		return (ssize_t)n;
	}
	if (b->mode == 't') {
		if (pos >= b->n / 2)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		max = max < b->n / 2 - pos ? max : b->n / 2 - pos;
	}
	if (pos >= b->n)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (b->mode == 's') {
		sleep(1);
		buf[0] = b->p[pos];
		return 1;
	}
	size_t n = b->n - pos < max ? b->n - pos : max;
	memcpy(buf, b->p + pos, n);
	return (ssize_t)n;
}

static void body_free(void *cls)
{
	struct body *b = cls;
	free(b->p);
	free(b);
}

static int load(const char *rel, struct body *b)
{
	char path[4096];
	if (strstr(rel, ".."))
		return -1;
	snprintf(path, sizeof path, "%s/%s", dir, rel);
	FILE *f = fopen(path, "rb");
	if (!f)
		return -1;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	b->p = malloc(n > 0 ? (size_t)n : 1);
	b->n = b->p && fread(b->p, 1, (size_t)n, f) == (size_t)n ? (size_t)n : 0;
	fclose(f);
	return b->p ? 0 : -1;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_len, void **state)
{
	(void)cls, (void)method, (void)version, (void)upload, (void)upload_len, (void)state;
	const char *slash = strchr(url + 1, '/');
	if (!slash)
		slash = url + strlen(url);
	size_t ml = (size_t)(slash - url - 1);
	const char *mode = url + 1, *rel = *slash ? slash + 1 : slash;
	struct MHD_Response *r;
	enum MHD_Result ret;
	unsigned status = MHD_HTTP_OK;
	struct body *b = calloc(1, sizeof *b);
	if (!b)
		return MHD_NO;
	if (ml == 4 && !memcmp(mode, "loop", 4)) {
		free(b);
		r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
		MHD_add_response_header(r, "Location", url);
		ret = MHD_queue_response(c, MHD_HTTP_FOUND, r);
		MHD_destroy_response(r);
		return ret;
	}
	if (ml == 6 && !memcmp(mode, "status", 6)) {
		free(b);
		r = MHD_create_response_from_buffer(5, "oops\n", MHD_RESPMEM_PERSISTENT);
		ret = MHD_queue_response(c, MHD_HTTP_INTERNAL_SERVER_ERROR, r);
		MHD_destroy_response(r);
		return ret;
	}
	if (ml == 3 && !memcmp(mode, "big", 3)) {
		b->mode = 'b';
		r = MHD_create_response_from_callback(16u << 20, 65536, reader, b, body_free);
	} else if (load(rel, b)) {
		free(b);
		r = MHD_create_response_from_buffer(10, "not found\n", MHD_RESPMEM_PERSISTENT);
		ret = MHD_queue_response(c, MHD_HTTP_NOT_FOUND, r);
		MHD_destroy_response(r);
		return ret;
	} else {
		if (ml == 5 && !memcmp(mode, "trunc", 5))
			b->mode = 't';
		else if (ml == 4 && !memcmp(mode, "slow", 4))
			b->mode = 's';
		else if (ml == 5 && !memcmp(mode, "short", 5) && b->n)
			b->n--;
		r = MHD_create_response_from_callback(b->n, 65536, reader, b, body_free);
	}
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: hostile-http DIR\n");
		return 64;
	}
	dir = argv[1];
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
						0, NULL, NULL, answer, NULL, MHD_OPTION_SOCK_ADDR, &sa,
						MHD_OPTION_END);
	if (!d) {
		fprintf(stderr, "hostile-http: error: cannot listen\n");
		return 69;
	}
	const union MHD_DaemonInfo *i = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	printf("%u\n", i ? i->port : 0);
	fflush(stdout);
	for (;;)
		pause();
}
