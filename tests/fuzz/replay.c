/*
 * Plain replay driver for the libFuzzer harnesses: runs
 * LLVMFuzzerTestOneInput once on every file of each directory argument,
 * so the committed corpora are exercised by an ordinary build. A crash or
 * abort in the harness is the failure; otherwise prints one TAP line per
 * directory.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads a whole file; NULL on error. Empty files give a 1-byte buffer. */
static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, n = 0;
	uint8_t *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap)
			break;
		uint8_t *nb = realloc(buf, cap *= 2);
		if (!nb)
			free(buf);
		buf = nb;
	}
	if (buf && ferror(f)) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	*len = n;
	return buf;
}

int main(int argc, char **argv)
{
	int t = 0, failed = 0;
	for (int a = 1; a < argc; a++) {
		struct dirent **ents;
		int n = scandir(argv[a], &ents, NULL, alphasort);
		if (n < 0) {
			printf("not ok %d - cannot read directory %s\n", ++t, argv[a]);
			failed = 1;
			continue;
		}
		long replayed = 0, unreadable = 0;
		for (int i = 0; i < n; i++) {
			char path[4096];
			struct stat st;
			snprintf(path, sizeof path, "%s/%s", argv[a], ents[i]->d_name);
			if (ents[i]->d_name[0] != '.' && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
				size_t len;
				uint8_t *buf = slurp(path, &len);
				if (buf) {
					/* A copy of exactly len bytes, so overreads are caught. */
					uint8_t *exact = malloc(len ? len : 1);
					if (exact) {
						memcpy(exact, buf, len);
						LLVMFuzzerTestOneInput(exact, len);
						replayed++;
					}
					free(exact);
					free(buf);
				} else {
					printf("# cannot read %s\n", path);
					unreadable++;
				}
			}
			free(ents[i]);
		}
		free(ents);
		if (unreadable) {
			printf("not ok %d - %ld unreadable inputs in %s\n", ++t, unreadable, argv[a]);
			failed = 1;
		} else {
			printf("ok %d - replayed %ld inputs from %s\n", ++t, replayed, argv[a]);
		}
	}
	printf("1..%d\n", t);
	return failed;
}
