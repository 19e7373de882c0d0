/*
 * I/O fault injection for tests, loaded with LD_PRELOAD:
 *   TRAIL_FAULT=op:N:ERR   the N-th call (1-based) of op fails with ERR
 * op is one of write, pwrite, fsync, fdatasync, rename; ERR is EIO or ENOSPC.
 * A failing write reports the error without writing anything.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int fail_now(const char *op)
{
	static int count[8];
	static const char *ops[] = {"write", "pwrite", "fsync", "fdatasync", "rename"};
	const char *f = getenv("TRAIL_FAULT");
	char name[16];
	int n, e;
	if (!f)
		return 0;
	char err[16];
	if (sscanf(f, "%15[^:]:%d:%15s", name, &n, err) != 3 || strcmp(name, op))
		return 0;
	e = strcmp(err, "ENOSPC") ? EIO : ENOSPC;
	for (int i = 0; i < 5; i++)
		if (!strcmp(ops[i], op) && ++count[i] == n) {
			errno = e;
			return 1;
		}
	return 0;
}

#define REAL(ret, name, ...) \
	static ret (*real)(__VA_ARGS__); \
	if (!real) \
		real = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, name)

ssize_t write(int fd, const void *b, size_t n)
{
	REAL(ssize_t, "write", int, const void *, size_t);
	return fail_now("write") ? -1 : real(fd, b, n);
}

ssize_t pwrite(int fd, const void *b, size_t n, off_t off)
{
	REAL(ssize_t, "pwrite", int, const void *, size_t, off_t);
	return fail_now("pwrite") ? -1 : real(fd, b, n, off);
}

ssize_t pwrite64(int fd, const void *b, size_t n, off_t off)
{
	REAL(ssize_t, "pwrite64", int, const void *, size_t, off_t);
	return fail_now("pwrite") ? -1 : real(fd, b, n, off);
}

int fsync(int fd)
{
	REAL(int, "fsync", int);
	return fail_now("fsync") ? -1 : real(fd);
}

int fdatasync(int fd)
{
	REAL(int, "fdatasync", int);
	return fail_now("fdatasync") ? -1 : real(fd);
}

int rename(const char *a, const char *b)
{
	REAL(int, "rename", const char *, const char *);
	return fail_now("rename") ? -1 : real(a, b);
}
