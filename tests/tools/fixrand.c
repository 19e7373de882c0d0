/* getrandom and getentropy from a fixed stream, so that two builds of trail given the
 * same inputs can be compared byte for byte (keys and nonces included). Test tool only. */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <pthread.h>
static uint64_t st = 0x9e3779b97f4a7c15ull;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
ssize_t getrandom(void *buf, size_t n, unsigned flags)
{
	(void)flags;
	pthread_mutex_lock(&mu);
	for (size_t i = 0; i < n; i++) {
		st += 0x9e3779b97f4a7c15ull;
		uint64_t z = st;
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		((unsigned char *)buf)[i] = (unsigned char)(z ^ (z >> 31));
	}
	pthread_mutex_unlock(&mu);
	return (ssize_t)n;
}
int getentropy(void *buf, size_t n) { return getrandom(buf, n, 0) == (ssize_t)n ? 0 : -1; }
