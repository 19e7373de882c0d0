#include <sched.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "core/core.h"

void trail_sha256(const void *buf, size_t len, uint8_t out[TRAIL_DIGEST_LEN])
{
	crypto_hash_sha256(out, buf, len);
}

void trail_hex(const uint8_t *in, size_t len, char *out)
{
	static const char hx[] = "0123456789abcdef";
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = hx[in[i] >> 4];
		out[2 * i + 1] = hx[in[i] & 15];
	}
	out[2 * len] = 0;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int trail_unhex(const char *in, size_t inlen, uint8_t *out, size_t outlen)
{
	if (inlen != 2 * outlen)
		return TRAIL_EDATA;
	for (size_t i = 0; i < outlen; i++) {
		int hi = hexval((unsigned char)in[2 * i]), lo = hexval((unsigned char)in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return TRAIL_EDATA;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return TRAIL_OK;
}

void trail_digest_format(const uint8_t d[TRAIL_DIGEST_LEN], char out[TRAIL_DIGEST_STRLEN])
{
	memcpy(out, "sha256:", 7);
	trail_hex(d, TRAIL_DIGEST_LEN, out + 7);
}

int trail_digest_parse(const char *s, uint8_t out[TRAIL_DIGEST_LEN])
{
	if (!s || strncmp(s, "sha256:", 7) || strlen(s) != 71)
		return TRAIL_EDATA;
	for (int i = 7; i < 71; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return TRAIL_EDATA;
	return trail_unhex(s + 7, 64, out, TRAIL_DIGEST_LEN);
}

void trail_digest_str(const void *buf, size_t len, char out[TRAIL_DIGEST_STRLEN])
{
	uint8_t d[TRAIL_DIGEST_LEN];
	trail_sha256(buf, len, d);
	trail_digest_format(d, out);
}

size_t trail_base64_len(size_t len)
{
	return sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
}

void trail_base64(const uint8_t *in, size_t len, char *out)
{
	sodium_bin2base64(out, trail_base64_len(len), in, len, sodium_base64_VARIANT_ORIGINAL);
}

int trail_unbase64(const char *in, size_t inlen, uint8_t *out, size_t maxout, size_t *outlen)
{
	const char *end;
	size_t n = 0;
	if (sodium_base642bin(out, maxout, in, inlen, NULL, &n, &end,
			      sodium_base64_VARIANT_ORIGINAL) != 0 ||
	    end != in + inlen)
		return TRAIL_EDATA;
	/* Refuse non-canonical encodings (stray bits in the last character). */
	if (n <= 3 * 1024) {
		char re[4200];
		trail_base64(out, n, re);
		if (strlen(re) != inlen || memcmp(re, in, inlen))
			return TRAIL_EDATA;
	}
	*outlen = n;
	return TRAIL_OK;
}

int trail_write_all(int fd, const void *buf, size_t len, const char *what, trail_error *err)
{
	const char *p = buf;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return trail_error_errno(err, TRAIL_EIO, errno, "%s: write", what);
		}
		p += w;
		len -= (size_t)w;
	}
	return TRAIL_OK;
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return trail_strdup(".");
	if (slash == path)
		return trail_strdup("/");
	return trail_strndup(path, (size_t)(slash - path));
}

int trail_fsync_dir(const char *dir, trail_error *err)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return trail_error_errno(err, TRAIL_EIO, errno, "%s: open directory", dir);
	int rc = TRAIL_OK;
	if (fsync(fd) < 0 && errno != EINVAL)
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s: fsync", dir);
	close(fd);
	return rc;
}

int trail_write_atomic(const char *path, const void *buf, size_t len, mode_t mode,
		       trail_error *err)
{
	size_t n = strlen(path);
	char *tmp = trail_malloc(n + 32);
	char *dir = dir_of(path);
	int rc = TRAIL_ENOMEM, fd = -1;
	if (!tmp || !dir)
		goto out;
	snprintf(tmp, n + 32, "%s.tmp.%ld", path, (long)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s: create", tmp);
		goto out;
	}
	if ((rc = trail_write_all(fd, buf, len, path, err)))
		goto fail;
	if (fchmod(fd, mode) < 0 || fsync(fd) < 0) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s: fsync", path);
		goto fail;
	}
	if (close(fd) < 0) {
		fd = -1;
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s: close", path);
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "%s: rename", path);
		goto fail;
	}
	rc = trail_fsync_dir(dir, err);
	goto out;
fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
out:
	trail_free(tmp);
	trail_free(dir);
	return rc;
}

int trail_read_fd(int fd, const char *source, size_t max, void **out, size_t *len,
		  trail_error *err)
{
	size_t cap = 4096, n = 0;
	char *buf = trail_malloc(cap);
	if (!buf)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (;;) {
		if (n + 1 >= cap) {
			size_t ncap = cap * 2;
			char *nb = trail_realloc(buf, ncap);
			if (!nb) {
				trail_free(buf);
				return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
			}
			buf = nb;
			cap = ncap;
		}
		ssize_t r = read(fd, buf + n, cap - n - 1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			trail_free(buf);
			return trail_error_errno(err, TRAIL_EIO, errno, "%s: read", source);
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (max && n > max) {
			trail_free(buf);
			return trail_error_at(err, TRAIL_ELIMIT, source, 0,
					      "input larger than %zu bytes", max);
		}
	}
	buf[n] = 0;
	*out = buf;
	*len = n;
	return TRAIL_OK;
}

int trail_read_file(const char *path, size_t max, void **out, size_t *len, trail_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return trail_error_errno(err, TRAIL_ENOINPUT, errno, "%s", path);
	int rc = trail_read_fd(fd, path, max, out, len, err);
	close(fd);
	return rc;
}

int trail_mkdirs(const char *path, mode_t mode, trail_error *err)
{
	char *p = trail_strdup(path);
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (char *s = p + 1;; s++) {
		if (*s == '/' || *s == 0) {
			char c = *s;
			*s = 0;
			if (mkdir(p, mode) < 0 && errno != EEXIST) {
				int e = errno;
				trail_free(p);
				return trail_error_errno(err, TRAIL_EIO, e, "%s: mkdir", path);
			}
			*s = c;
			if (!c)
				break;
		}
	}
	trail_free(p);
	return TRAIL_OK;
}

int trail_map_file(const char *path, trail_map *m, trail_error *err)
{
	struct stat st;
	m->data = NULL;
	m->len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return trail_error_errno(err, TRAIL_ENOINPUT, errno, "%s", path);
	if (fstat(fd, &st) < 0) {
		close(fd);
		return trail_error_errno(err, TRAIL_EIO, errno, "%s: stat", path);
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return trail_error_set(err, TRAIL_ENOINPUT, "%s: not a regular file", path);
	}
	if (st.st_size > 0) {
		void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (p == MAP_FAILED) {
			close(fd);
			return trail_error_errno(err, TRAIL_EIO, errno, "%s: mmap", path);
		}
		m->data = p;
		m->len = (size_t)st.st_size;
	}
	close(fd);
	return TRAIL_OK;
}

void trail_unmap(trail_map *m)
{
	if (m && m->data)
		munmap(m->data, m->len);
	if (m) {
		m->data = NULL;
		m->len = 0;
	}
}

size_t trail_capbuf_write(char *p, size_t size, size_t n, void *ctx)
{
	trail_capbuf *s = ctx;
	size_t k = size * n;
	if (s->b.n + k > s->max) {
		s->over = 1;
		return 0;
	}
	return trail_buf_put(&s->b, p, k) ? 0 : k;
}

void trail_capbuf_declare(trail_capbuf *s, const char *content_length)
{
	if (content_length && strtoull(content_length, NULL, 10) > s->max)
		s->over = 1;
}

void trail_capbuf_add(trail_capbuf *s, const void *p, size_t n)
{
	if (!s->over && (s->b.n + n > s->max || trail_buf_put(&s->b, p, n))) {
		s->over = 1;
		trail_buf_release(&s->b);
	}
}

int trail_listen_resolve(const char *listen, const char *want, struct addrinfo **out, trail_error *err)
{
	char host[256];
	const char *colon = strrchr(listen, ':');
	*out = NULL;
	if (!colon || colon == listen || strlen(listen) >= sizeof host || !colon[1])
		return trail_error_set(err, TRAIL_EUSAGE, "--listen wants %s", want);
	size_t hl = (size_t)(colon - listen);
	memcpy(host, listen, hl);
	host[hl] = 0;
	if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = 0;
	}
	struct addrinfo hints = {0};
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
	int g = getaddrinfo(host, colon + 1, &hints, out);
	if (g || !*out) {
		if (!g)
			*out = NULL;
		return trail_error_set(err, TRAIL_EUSAGE, "--listen %s: %s", listen, gai_strerror(g));
	}
	return TRAIL_OK;
}

int trail_buf_put(trail_buf *b, const void *data, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t c = b->cap ? b->cap * 2 : 256;
		while (c < b->n + n + 1)
			c *= 2;
		char *np = trail_realloc(b->p, c);
		if (!np)
			return TRAIL_ENOMEM;
		b->p = np;
		b->cap = c;
	}
	memcpy(b->p + b->n, data, n);
	b->n += n;
	b->p[b->n] = 0;
	return TRAIL_OK;
}

void trail_buf_release(trail_buf *b)
{
	trail_free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
}

char *trail_path(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = trail_malloc(la + lb + 2);
	if (!p)
		return NULL;
	memcpy(p, a, la);
	p[la] = '/';
	memcpy(p + la + 1, b, lb + 1);
	return p;
}

int trail_path_first(const char *dir, const char *a, const char *b, char **out)
{
	struct stat st;
	const char *names[] = {a, b};
	*out = NULL;
	for (int i = 0; i < 2; i++) {
		char *p = trail_path(dir, names[i]);
		if (!p)
			return TRAIL_ENOMEM;
		if (stat(p, &st) == 0) {
			*out = p;
			return TRAIL_OK;
		}
		trail_free(p);
	}
	return TRAIL_OK;
}

int trail_utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *e = p + n;
	while (p < e) {
		unsigned c = *p, need, min;
		if (c < 0x80) {
			p++;
			continue;
		} else if ((c & 0xE0) == 0xC0) {
			need = 1, min = 0x80, c &= 0x1F;
		} else if ((c & 0xF0) == 0xE0) {
			need = 2, min = 0x800, c &= 0x0F;
		} else if ((c & 0xF8) == 0xF0) {
			need = 3, min = 0x10000, c &= 0x07;
		} else {
			return 0;
		}
		if ((size_t)(e - p) <= need)
			return 0;
		for (unsigned i = 1; i <= need; i++) {
			if ((p[i] & 0xC0) != 0x80)
				return 0;
			c = c << 6 | (p[i] & 0x3F);
		}
		if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
			return 0;
		p += need + 1;
	}
	return 1;
}

int trail_cpu_count(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set))
		return 1;
	int n = CPU_COUNT(&set);
	return n > 0 ? n : 1;
}
