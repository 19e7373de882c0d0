/*
 * The ledger's files, in the store's log/ directory:
 *
 *   data        entries, canonical JSON, each followed by '\n'
 *   index       u64 little-endian offset of each entry in data
 *   tree        every complete subtree hash, 32 bytes each, in post order
 *               (a Merkle mountain range): the node of level k covering
 *               leaves [j*2^k, (j+1)*2^k) sits at position
 *               2(m-1) - popcount(m-1) + k, with m = (j+1)*2^k
 *   head        "trail-ledger 1\nsize N\ndata D\nroot B64\n", replaced
 *               atomically after the three files above are synced: the
 *               committed tree. Bytes past it are an unacknowledged tail,
 *               cut by the next writer.
 *   checkpoint  the last checkpoint signed
 *   lock        flock'd by the one writer
 *
 * Appending n entries writes about 2n hashes: O(1) amortised. A subtree
 * hash is one pread, so roots and proofs cost O(log n) reads.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "core/core.h"
#include "ledger/ledger.h"

#define HEAD_MAX 4096
#define ENTRY_MAX (16u << 20)

typedef struct peak {
	unsigned level;
	trail_hash h;
} peak;

struct trail_ledger {
	trail_store *store;
	char *dir;
	int fd_data, fd_index, fd_tree, fd_lock;
	int writer;
	uint64_t size, data_len; /* committed */
	trail_hash root;         /* committed root */
	uint64_t psize;          /* committed + pending */
	trail_buf pdata, pindex, ptree;
	peak peaks[65], cpeaks[65];
	int npeaks, ncpeaks;
};

static uint64_t nodes_before(uint64_t m) /* hashes stored for m leaves */
{
	return 2 * m - (uint64_t)__builtin_popcountll(m);
}

static uint64_t node_pos(unsigned level, uint64_t index)
{
	uint64_t m = (index + 1) << level;
	return nodes_before(m - 1) + level;
}

static int pread_all(int fd, void *p, size_t n, uint64_t off, const char *what, trail_error *err)
{
	uint8_t *d = p;
	while (n) {
		ssize_t r = pread(fd, d, n, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return trail_error_errno(err, TRAIL_EIO, errno, "log/%s: read", what);
		}
		if (r == 0)
			return trail_error_set(err, TRAIL_EDATA, "log/%s: truncated", what);
		d += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return TRAIL_OK;
}

static int pwrite_all(int fd, const void *p, size_t n, uint64_t off, const char *what,
		      trail_error *err)
{
	const uint8_t *d = p;
	while (n) {
		ssize_t w = pwrite(fd, d, n, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return trail_error_errno(err, TRAIL_EIO, errno, "log/%s: write", what);
		}
		d += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return TRAIL_OK;
}

static int tree_get(void *ctx, unsigned level, uint64_t index, trail_hash out)
{
	trail_ledger *l = ctx;
	return pread_all(l->fd_tree, out, 32, node_pos(level, index) * 32, "tree", NULL);
}

static void root_of_peaks(const peak *pk, int n, trail_hash out)
{
	if (n == 0) {
		trail_sha256("", 0, out);
		return;
	}
	memcpy(out, pk[n - 1].h, 32);
	for (int i = n - 2; i >= 0; i--)
		trail_merkle_node(pk[i].h, out, out);
}

static int read_head(trail_ledger *l, trail_error *err)
{
	char *p = trail_path(l->dir, "head");
	void *b;
	size_t n;
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = trail_read_file(p, HEAD_MAX, &b, &n, NULL);
	trail_free(p);
	if (rc == TRAIL_ENOINPUT) {
		l->size = l->data_len = 0;
		trail_sha256("", 0, l->root);
		return TRAIL_OK;
	}
	if (rc)
		return trail_error_set(err, rc, "log/head: unreadable");
	unsigned long long size, data;
	char root[64];
	int used = 0;
	uint8_t r[40];
	size_t rl;
	if (sscanf(b, "trail-ledger 1\nsize %llu\ndata %llu\nroot %60s\n%n", &size, &data, root,
		   &used) != 3 ||
	    (size_t)used != n || trail_unbase64(root, strlen(root), r, sizeof r, &rl) || rl != 32) {
		trail_free(b);
		return trail_error_at(err, TRAIL_EDATA, "log/head", 0, "malformed ledger head");
	}
	trail_free(b);
	l->size = size;
	l->data_len = data;
	memcpy(l->root, r, 32);
	return TRAIL_OK;
}

static int write_head(trail_ledger *l, uint64_t size, uint64_t data, const trail_hash root,
		      trail_error *err)
{
	char b64[64], text[256];
	trail_base64(root, 32, b64);
	int n = snprintf(text, sizeof text, "trail-ledger 1\nsize %" PRIu64 "\ndata %" PRIu64
			 "\nroot %s\n", size, data, b64);
	char *p = trail_path(l->dir, "head");
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	int rc = trail_write_atomic(p, text, (size_t)n, 0644, err);
	trail_free(p);
	return rc;
}

static off_t fsize(int fd)
{
	struct stat st;
	return fstat(fd, &st) < 0 ? -1 : st.st_size;
}

/* The peaks of the committed tree: one per set bit of size, largest first. */
static int load_peaks(trail_ledger *l, trail_error *err)
{
	uint64_t start = 0;
	l->ncpeaks = 0;
	for (int k = 63; k >= 0; k--) {
		if (!(l->size >> k & 1))
			continue;
		peak *p = &l->cpeaks[l->ncpeaks++];
		p->level = (unsigned)k;
		int rc = pread_all(l->fd_tree, p->h, 32, node_pos((unsigned)k, start >> k) * 32,
				   "tree", err);
		if (rc)
			return rc;
		start += 1ULL << k;
	}
	memcpy(l->peaks, l->cpeaks, sizeof l->peaks);
	l->npeaks = l->ncpeaks;
	return TRAIL_OK;
}

static int open_file(trail_ledger *l, const char *name, int writer, int *fd, trail_error *err)
{
	char *p = trail_path(l->dir, name);
	if (!p)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	*fd = open(p, (writer ? O_RDWR | O_CREAT : O_RDONLY) | O_CLOEXEC, 0644);
	int e = errno;
	trail_free(p);
	if (*fd < 0) {
		if (!writer && e == ENOENT) {
			*fd = -2; /* empty ledger, never written */
			return TRAIL_OK;
		}
		return trail_error_errno(err, e == ENOENT ? TRAIL_ENOINPUT : TRAIL_EIO, e,
					 "log/%s: open", name);
	}
	return TRAIL_OK;
}

int trail_ledger_open(trail_store *s, int flags, trail_ledger **out, trail_error *err)
{
	*out = NULL;
	trail_ledger *l = trail_calloc(1, sizeof *l);
	if (!l)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	l->store = s;
	l->fd_data = l->fd_index = l->fd_tree = l->fd_lock = -1;
	l->writer = flags & TRAIL_LEDGER_WRITE;
	int rc = TRAIL_OK;
	if (!(l->dir = trail_path(trail_store_dir(s), "log"))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto fail;
	}
	if (l->writer) {
		if ((rc = open_file(l, "lock", 1, &l->fd_lock, err)))
			goto fail;
		int op = LOCK_EX | (flags & TRAIL_LEDGER_NOWAIT ? LOCK_NB : 0);
		while (flock(l->fd_lock, op) < 0) {
			if (errno == EINTR)
				continue;
			rc = errno == EWOULDBLOCK
				     ? trail_error_set(err, TRAIL_EUNAVAIL,
						       "the ledger is locked by another writer")
				     : trail_error_errno(err, TRAIL_EIO, errno, "log/lock");
			goto fail;
		}
	}
	if ((rc = open_file(l, "data", l->writer, &l->fd_data, err)) ||
	    (rc = open_file(l, "index", l->writer, &l->fd_index, err)) ||
	    (rc = open_file(l, "tree", l->writer, &l->fd_tree, err)) || (rc = read_head(l, err)))
		goto fail;
	if (l->size && (l->fd_data < 0 || l->fd_index < 0 || l->fd_tree < 0)) {
		rc = trail_error_set(err, TRAIL_EDATA, "log files missing");
		goto fail;
	}
	if (l->size) {
		off_t d = fsize(l->fd_data), x = fsize(l->fd_index), t = fsize(l->fd_tree);
		if (d < (off_t)l->data_len || x < (off_t)(8 * l->size) ||
		    t < (off_t)(32 * nodes_before(l->size))) {
			rc = trail_error_set(err, TRAIL_EDATA,
					     "log files are shorter than the committed head "
					     "(size %" PRIu64 "): the ledger is damaged", l->size);
			goto fail;
		}
	}
	if (l->writer) {
		/* Cut any unacknowledged tail left by a crashed writer. */
		if (ftruncate(l->fd_data, (off_t)l->data_len) < 0 ||
		    ftruncate(l->fd_index, (off_t)(8 * l->size)) < 0 ||
		    ftruncate(l->fd_tree, (off_t)(32 * nodes_before(l->size))) < 0) {
			rc = trail_error_errno(err, TRAIL_EIO, errno, "log: truncate");
			goto fail;
		}
	}
	if ((rc = load_peaks(l, err)))
		goto fail;
	trail_hash r;
	root_of_peaks(l->cpeaks, l->ncpeaks, r);
	if (sodium_memcmp(r, l->root, 32)) {
		rc = trail_error_set(err, TRAIL_EDATA,
				     "log/tree does not match the committed root: the ledger is damaged");
		goto fail;
	}
	if (l->size) {
		/* The last entry must still hash to its leaf (a cheap torn-write check). */
		trail_hash leaf, stored;
		char *e;
		size_t n;
		if ((rc = trail_ledger_get(l, l->size - 1, &e, &n, err)))
			goto fail;
		trail_merkle_leaf(e, n, leaf);
		trail_free(e);
		if ((rc = tree_get(l, 0, l->size - 1, stored)) == TRAIL_OK &&
		    sodium_memcmp(leaf, stored, 32))
			rc = trail_error_set(err, TRAIL_EDATA,
					     "entry %" PRIu64 " does not match its leaf hash: "
					     "the ledger is damaged", l->size - 1);
		if (rc)
			goto fail;
	}
	l->psize = l->size;
	*out = l;
	return TRAIL_OK;
fail:
	trail_ledger_free(l);
	return rc;
}

void trail_ledger_free(trail_ledger *l)
{
	if (!l)
		return;
	int *fds[] = {&l->fd_data, &l->fd_index, &l->fd_tree, &l->fd_lock};
	for (size_t i = 0; i < 4; i++)
		if (*fds[i] >= 0)
			close(*fds[i]); /* closing the lock fd releases the flock */
	trail_free(l->pdata.p);
	trail_free(l->pindex.p);
	trail_free(l->ptree.p);
	trail_free(l->dir);
	trail_free(l);
}

uint64_t trail_ledger_size(const trail_ledger *l)
{
	return l->psize;
}

static void discard_pending(trail_ledger *l)
{
	l->pdata.n = l->pindex.n = l->ptree.n = 0;
	l->psize = l->size;
	memcpy(l->peaks, l->cpeaks, sizeof l->peaks);
	l->npeaks = l->ncpeaks;
}

int trail_ledger_append(trail_ledger *l, const json_t *entry, uint64_t *index,
			trail_error *err)
{
	if (!l->writer)
		return trail_error_set(err, TRAIL_EINTERNAL, "ledger opened read-only");
	if (!json_is_object(entry) || !json_is_string(json_object_get(entry, "type")) ||
	    !json_string_length(json_object_get(entry, "type")))
		return trail_error_set(err, TRAIL_EDATA, "an entry is a JSON object with a string \"type\"");
	char *bytes;
	size_t n;
	int rc = trail_jcs(entry, &bytes, &n, err);
	if (rc)
		return rc;
	if (n > ENTRY_MAX) {
		trail_free(bytes);
		return trail_error_set(err, TRAIL_ELIMIT, "entry of %zu bytes is over the %u byte limit",
				       n, ENTRY_MAX);
	}
	uint64_t off = l->data_len + l->pdata.n;
	uint8_t le[8];
	for (int i = 0; i < 8; i++)
		le[i] = (uint8_t)(off >> (8 * i));
	peak *top;
	if (trail_buf_put(&l->pindex, le, 8) || trail_buf_put(&l->pdata, bytes, n) ||
	    trail_buf_put(&l->pdata, "\n", 1))
		goto oom;
	top = &l->peaks[l->npeaks++];
	top->level = 0;
	trail_merkle_leaf(bytes, n, top->h);
	if (trail_buf_put(&l->ptree, top->h, 32))
		goto oom;
	while (l->npeaks >= 2 && l->peaks[l->npeaks - 1].level == l->peaks[l->npeaks - 2].level) {
		peak *a = &l->peaks[l->npeaks - 2], *b = &l->peaks[l->npeaks - 1];
		trail_merkle_node(a->h, b->h, a->h);
		a->level++;
		l->npeaks--;
		if (trail_buf_put(&l->ptree, a->h, 32))
			goto oom;
	}
	trail_free(bytes);
	if (index)
		*index = l->psize;
	l->psize++;
	return TRAIL_OK;
oom:
	/* The pending buffers may now disagree with each other: drop the batch. */
	trail_free(bytes);
	discard_pending(l);
	return trail_error_set(err, TRAIL_ENOMEM, "out of memory (pending appends discarded)");
}

static int sync_fd(int fd, const char *what, trail_error *err)
{
	while (fdatasync(fd) < 0) {
		if (errno == EINTR)
			continue;
		return trail_error_errno(err, TRAIL_EIO, errno, "log/%s: fsync", what);
	}
	return TRAIL_OK;
}

int trail_ledger_commit(trail_ledger *l, trail_error *err)
{
	if (!l->writer || l->psize == l->size)
		return TRAIL_OK;
	trail_hash root;
	root_of_peaks(l->peaks, l->npeaks, root);
	uint64_t data_len = l->data_len + l->pdata.n;
	int rc;
	if ((rc = pwrite_all(l->fd_data, l->pdata.p, l->pdata.n, l->data_len, "data", err)) ||
	    (rc = pwrite_all(l->fd_index, l->pindex.p, l->pindex.n, 8 * l->size, "index", err)) ||
	    (rc = pwrite_all(l->fd_tree, l->ptree.p, l->ptree.n, 32 * nodes_before(l->size),
			     "tree", err)) ||
	    (rc = sync_fd(l->fd_data, "data", err)) || (rc = sync_fd(l->fd_index, "index", err)) ||
	    (rc = sync_fd(l->fd_tree, "tree", err)) ||
	    (rc = write_head(l, l->psize, data_len, root, err))) {
		discard_pending(l);
		return rc;
	}
	l->size = l->psize;
	l->data_len = data_len;
	memcpy(l->root, root, 32);
	memcpy(l->cpeaks, l->peaks, sizeof l->peaks);
	l->ncpeaks = l->npeaks;
	l->pdata.n = l->pindex.n = l->ptree.n = 0;
	return TRAIL_OK;
}

static int entry_range(trail_ledger *l, uint64_t i, uint64_t *off, uint64_t *len,
		       trail_error *err)
{
	uint8_t b[16];
	uint64_t a = 0, z = 0;
	int two = i + 1 < l->size;
	int rc = pread_all(l->fd_index, b, two ? 16 : 8, 8 * i, "index", err);
	if (rc)
		return rc;
	for (int k = 7; k >= 0; k--) {
		a = a << 8 | b[k];
		z = z << 8 | b[8 + k];
	}
	if (!two)
		z = l->data_len;
	if (z <= a || z - a - 1 > ENTRY_MAX || z > l->data_len)
		return trail_error_set(err, TRAIL_EDATA, "log/index: bad offsets for entry %" PRIu64, i);
	*off = a;
	*len = z - a - 1;
	return TRAIL_OK;
}

int trail_ledger_get(trail_ledger *l, uint64_t i, char **out, size_t *len, trail_error *err)
{
	uint64_t off = 0, n = 0;
	if (i >= l->size)
		return trail_error_set(err, TRAIL_ENOINPUT, "no entry %" PRIu64 " (size %" PRIu64 ")",
				       i, l->size);
	int rc = entry_range(l, i, &off, &n, err);
	if (rc)
		return rc;
	char *b = trail_malloc(n + 1);
	if (!b)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	if ((rc = pread_all(l->fd_data, b, n + 1, off, "data", err))) {
		trail_free(b);
		return rc;
	}
	if (b[n] != '\n') {
		trail_free(b);
		return trail_error_set(err, TRAIL_EDATA, "log/data: entry %" PRIu64 " is not terminated", i);
	}
	b[n] = 0;
	*out = b;
	if (len)
		*len = n;
	return TRAIL_OK;
}

int trail_ledger_get_json(trail_ledger *l, uint64_t i, json_t **out, trail_error *err)
{
	char *b;
	size_t n;
	int rc = trail_ledger_get(l, i, &b, &n, err);
	if (rc)
		return rc;
	rc = trail_json_parse(b, n, "log/data", out, err);
	trail_free(b);
	return rc;
}

int trail_ledger_leaf(trail_ledger *l, uint64_t i, trail_hash out, trail_error *err)
{
	if (i >= l->size)
		return trail_error_set(err, TRAIL_ENOINPUT, "no entry %" PRIu64, i);
	return pread_all(l->fd_tree, out, 32, node_pos(0, i) * 32, "tree", err);
}

int trail_ledger_root(trail_ledger *l, uint64_t size, trail_hash out, trail_error *err)
{
	if (size > l->size)
		return trail_error_set(err, TRAIL_ENOINPUT,
				       "tree size %" PRIu64 " is beyond the log (%" PRIu64 ")", size,
				       l->size);
	if (size == l->size) {
		memcpy(out, l->root, 32);
		return TRAIL_OK;
	}
	int rc = trail_merkle_root(tree_get, l, size, out);
	return rc ? trail_error_set(err, rc, "log/tree: read failed") : TRAIL_OK;
}

int trail_ledger_prove(trail_ledger *l, uint64_t index, uint64_t size,
		       trail_hash proof[TRAIL_MERKLE_MAXPROOF], size_t *nproof, trail_error *err)
{
	if (size > l->size || index >= size)
		return trail_error_set(err, TRAIL_EUSAGE,
				       "need index < size <= %" PRIu64 " (index %" PRIu64
				       ", size %" PRIu64 ")", l->size, index, size);
	return trail_merkle_prove_inclusion(tree_get, l, index, size, proof, nproof, err);
}

int trail_ledger_consistency(trail_ledger *l, uint64_t m, uint64_t n,
			     trail_hash proof[TRAIL_MERKLE_MAXPROOF], size_t *nproof,
			     trail_error *err)
{
	if (n > l->size || m > n)
		return trail_error_set(err, TRAIL_EUSAGE,
				       "need m <= n <= %" PRIu64 " (m %" PRIu64 ", n %" PRIu64 ")",
				       l->size, m, n);
	return trail_merkle_prove_consistency(tree_get, l, m, n, proof, nproof, err);
}

/* ---- checkpoints and receipts ----------------------------------------- */

/* Parse a checkpoint body: origin, size, base64 root (extension lines allowed). */
int trail_checkpoint_parse(const char *text, char **origin, uint64_t *size, trail_hash root,
			  trail_error *err)
{
	const char *l1 = strchr(text, '\n');
	const char *l2 = l1 ? strchr(l1 + 1, '\n') : NULL;
	const char *l3 = l2 ? strchr(l2 + 1, '\n') : NULL;
	if (!l3)
		return trail_error_set(err, TRAIL_EDATA, "malformed checkpoint");
	const char *s = l1 + 1;
	if (s == l2 || (*s == '0' && l2 - s > 1) || l2 - s > 20)
		return trail_error_set(err, TRAIL_EDATA, "malformed checkpoint size");
	uint64_t v = 0;
	for (; s < l2; s++) {
		if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
			return trail_error_set(err, TRAIL_EDATA, "malformed checkpoint size");
		v = v * 10 + (uint64_t)(*s - '0');
	}
	size_t rl;
	uint8_t r[40];
	if (trail_unbase64(l2 + 1, (size_t)(l3 - l2 - 1), r, sizeof r, &rl) || rl != 32)
		return trail_error_set(err, TRAIL_EDATA, "malformed checkpoint root");
	if (origin && !(*origin = trail_strndup(text, (size_t)(l1 - text))))
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	*size = v;
	memcpy(root, r, 32);
	return TRAIL_OK;
}

int trail_ledger_checkpoint(trail_ledger *l, char **note, trail_error *err)
{
	const trail_signer *op;
	int rc = trail_store_operator(l->store, &op, err);
	if (rc)
		return rc;
	char *path = trail_path(l->dir, "checkpoint");
	char *lockp = trail_path(l->dir, "checkpoint.lock");
	int lfd = -1;
	void *old = NULL;
	size_t oldlen;
	char *text = NULL, *n = NULL;
	if (!path || !lockp) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	lfd = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (lfd < 0 || flock(lfd, LOCK_EX) < 0) {
		rc = trail_error_errno(err, TRAIL_EIO, errno, "log/checkpoint.lock");
		goto out;
	}
	uint64_t last = 0;
	int have_last = 0;
	if (trail_read_file(path, HEAD_MAX, &old, &oldlen, NULL) == TRAIL_OK) {
		const trail_verifier *v = trail_store_operator_vkey(l->store);
		trail_hash lroot, mine;
		trail_error e = {0};
		if ((rc = trail_note_open(old, oldlen, &v, 1, &text, NULL, &e)) ||
		    (rc = trail_checkpoint_parse(text, NULL, &last, lroot, &e))) {
			trail_error_at(err, rc, "log/checkpoint", 0, "last checkpoint: %s", e.msg);
			goto out;
		}
		if (last > l->size || (rc = trail_ledger_root(l, last, mine, err)) ||
		    sodium_memcmp(mine, lroot, 32)) {
			rc = trail_error_set(err, TRAIL_EVERIFY,
					     "the log is inconsistent with its last checkpoint "
					     "(size %" PRIu64 "): refusing to sign", last);
			goto out;
		}
		have_last = 1;
		trail_free(text);
		text = NULL;
	}
	char b64[64];
	trail_base64(l->root, 32, b64);
	size_t cap = strlen(trail_store_origin(l->store)) + 128;
	if (!(text = trail_malloc(cap))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	int tl = snprintf(text, cap, "%s\n%" PRIu64 "\n%s\n", trail_store_origin(l->store),
			  l->size, b64);
	size_t nl;
	if ((rc = trail_note_sign(text, (size_t)tl, &op, 1, &n, &nl, err)))
		goto out;
	if (!have_last || l->size > last)
		if ((rc = trail_write_atomic(path, n, nl, 0644, err)))
			goto out;
	*note = n;
	n = NULL;
out:
	if (lfd >= 0)
		close(lfd);
	trail_free(old);
	trail_free(text);
	trail_free(n);
	trail_free(path);
	trail_free(lockp);
	return rc;
}

int trail_ledger_receipt(trail_ledger *l, uint64_t index, char **out, trail_error *err)
{
	char *note = NULL, *entry = NULL, *r = NULL;
	size_t elen, nproof;
	trail_hash proof[TRAIL_MERKLE_MAXPROOF];
	int rc;
	if ((rc = trail_ledger_get(l, index, &entry, &elen, err)) ||
	    (rc = trail_ledger_prove(l, index, l->size, proof, &nproof, err)) ||
	    (rc = trail_ledger_checkpoint(l, &note, err)))
		goto out;
	size_t cap = 64 + trail_base64_len(elen) + nproof * 48 + strlen(note);
	if (!(r = trail_malloc(cap))) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	size_t n = (size_t)snprintf(r, cap, "c2sp.org/tlog-proof@v1\nextra ");
	trail_base64((const uint8_t *)entry, elen, r + n);
	n += strlen(r + n);
	n += (size_t)snprintf(r + n, cap - n, "\nindex %" PRIu64 "\n", index);
	for (size_t i = 0; i < nproof; i++) {
		trail_base64(proof[i], 32, r + n);
		n += strlen(r + n);
		r[n++] = '\n';
	}
	snprintf(r + n, cap - n, "\n%s", note);
	*out = r;
	r = NULL;
out:
	trail_free(note);
	trail_free(entry);
	trail_free(r);
	return rc;
}

int trail_receipt_verify(const char *receipt, size_t len, const trail_verifier *const *vs,
			 size_t nv, const char *origin, uint64_t *index, trail_hash leaf,
			 trail_error *err)
{
	static const char hdr[] = "c2sp.org/tlog-proof@v1\n";
	const char *p = receipt, *end = receipt + len;
	trail_hash proof[TRAIL_MERKLE_MAXPROOF], root;
	size_t np = 0;
	uint8_t *extra = NULL;
	char *text = NULL, *corigin = NULL;
	int rc = TRAIL_EDATA, have_leaf = 0;
	if (len < sizeof hdr - 1 || memcmp(p, hdr, sizeof hdr - 1))
		return trail_error_set(err, TRAIL_EDATA, "not a tlog-proof (bad header)");
	p += sizeof hdr - 1;
	const char *nl = memchr(p, '\n', (size_t)(end - p));
	if (nl && nl - p > 6 && !memcmp(p, "extra ", 6)) {
		size_t el = (size_t)(nl - p - 6), got;
		if (!(extra = trail_malloc(el + 1)))
			return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		if (trail_unbase64(p + 6, el, extra, el + 1, &got)) {
			rc = trail_error_set(err, TRAIL_EDATA, "tlog-proof: bad extra data");
			goto out;
		}
		trail_merkle_leaf(extra, got, leaf);
		have_leaf = 1;
		p = nl + 1;
		nl = memchr(p, '\n', (size_t)(end - p));
	}
	uint64_t idx = 0;
	if (!nl || nl - p < 7 || memcmp(p, "index ", 6) || (p[6] == '0' && nl - p > 7)) {
		rc = trail_error_set(err, TRAIL_EDATA, "tlog-proof: bad index line");
		goto out;
	}
	for (const char *d = p + 6; d < nl; d++) {
		if (*d < '0' || *d > '9' || idx > (UINT64_MAX - 9) / 10) {
			rc = trail_error_set(err, TRAIL_EDATA, "tlog-proof: bad index line");
			goto out;
		}
		idx = idx * 10 + (uint64_t)(*d - '0');
	}
	p = nl + 1;
	for (;;) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl) {
			rc = trail_error_set(err, TRAIL_EDATA, "tlog-proof: no checkpoint");
			goto out;
		}
		if (nl == p)
			break;
		size_t hl;
		if (np == TRAIL_MERKLE_MAXPROOF ||
		    trail_unbase64(p, (size_t)(nl - p), proof[np], 32, &hl) || hl != 32) {
			rc = trail_error_set(err, TRAIL_EVERIFY, "tlog-proof: bad proof hash");
			goto out;
		}
		np++;
		p = nl + 1;
	}
	p = nl + 1;
	uint64_t size;
	if ((rc = trail_note_open(p, (size_t)(end - p), vs, nv, &text, NULL, err)) ||
	    (rc = trail_checkpoint_parse(text, &corigin, &size, root, err)))
		goto out;
	/* The same key may sign for several logs: the origin says which. */
	if (origin && strcmp(corigin, origin)) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "tlog-proof: the checkpoint is for log '%s', not '%s'",
				     corigin, origin);
		goto out;
	}
	if (!have_leaf) {
		rc = trail_error_set(err, TRAIL_EDATA, "tlog-proof: no entry (extra) to check");
		goto out;
	}
	rc = trail_merkle_verify_inclusion(idx, size, leaf, (const trail_hash *)proof, np, root, err);
	if (index)
		*index = idx;
out:
	trail_free(extra);
	trail_free(text);
	trail_free(corigin);
	return rc;
}

/* ---- streaming append ------------------------------------------------ */

int trail_ledger_append_ndjson(trail_ledger *l, FILE *in, const char *src, int batch,
			       FILE *receipts, trail_error *err)
{
	trail_ndjson *r = trail_ndjson_new(in, src, 0);
	uint64_t first = trail_ledger_size(l), idx;
	json_t *e;
	int rc;
	if (!r)
		return trail_error_set(err, TRAIL_ENOMEM, "out of memory");
	for (;;) {
		rc = trail_ndjson_next(r, &e, err);
		if (!rc && e) {
			rc = trail_ledger_append(l, e, &idx, err);
			if (rc) {
				char m[sizeof err->msg];
				memcpy(m, err->msg, sizeof m);
				trail_error_at(err, rc, src, trail_ndjson_lineno(r), "%s", m);
			}
			json_decref(e);
		}
		if (rc)
			break; /* the unacknowledged rest of the batch is discarded */
		struct pollfd p = {fileno(in), POLLIN, 0};
		/* Commit when unbatched, at a batch boundary, or when input stalls. */
		if (!e || !batch || trail_ledger_size(l) - first >= 4096 ||
		    (trail_ndjson_buffered(r) == 0 && poll(&p, 1, 0) == 0)) {
			if ((rc = trail_ledger_commit(l, err)))
				break;
			for (uint64_t i = first; i < trail_ledger_size(l); i++) {
				trail_hash leaf;
				char b[64];
				trail_ledger_leaf(l, i, leaf, NULL);
				trail_base64(leaf, 32, b);
				fprintf(receipts, "{\"index\":%" PRIu64 ",\"leaf\":\"%s\",\"size\":%" PRIu64 "}\n", i,
				       b, trail_ledger_size(l));
			}
			fflush(receipts);
			first = trail_ledger_size(l);
		}
		if (!e)
			break;
	}
	trail_ndjson_free(r);
	return rc;
}

/* ---- fsck -------------------------------------------------------------- */

static int check_ref(trail_ledger *l, uint64_t i, const char *key, const json_t *v,
		     trail_error *err)
{
	const char *d = json_string_value(v);
	if (!d)
		return trail_error_set(err, TRAIL_EVERIFY, "entry %" PRIu64 ": %s is not a digest", i, key);
	void *b;
	size_t n;
	trail_error e = {0};
	int rc = trail_store_get(l->store, d, &b, &n, &e);
	if (rc)
		return trail_error_set(err, TRAIL_EVERIFY, "entry %" PRIu64 ": %s: %s", i, key, e.msg);
	trail_free(b);
	return TRAIL_OK;
}

/*
 * Objects an entry refers to: members "bundle", "object", any "*_object",
 * and the elements of "objects".
 */
static int check_entry(trail_ledger *l, uint64_t i, const char *e, size_t n, trail_error *err)
{
	if (!memmem(e, n, "\"sig\":", 6) && !memmem(e, n, "object", 6) &&
	    !memmem(e, n, "\"bundle\":", 9))
		return TRAIL_OK;
	json_t *j;
	int rc = trail_json_parse(e, n, "log/data", &j, err);
	if (rc)
		return trail_error_set(err, TRAIL_EVERIFY, "entry %" PRIu64 ": not JSON", i);
	trail_error ve = {0};
	if (json_object_get(j, "sig") && (rc = trail_json_verify(j, &ve))) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "entry %" PRIu64 ": %s", i, ve.msg);
		goto out;
	}
	const char *k;
	json_t *v;
	json_object_foreach(j, k, v) {
		size_t kl = strlen(k);
		if (!strcmp(k, "bundle") || !strcmp(k, "object") ||
		    (kl > 7 && !strcmp(k + kl - 7, "_object"))) {
			if ((rc = check_ref(l, i, k, v, err)))
				goto out;
		} else if (!strcmp(k, "objects") && json_is_array(v)) {
			for (size_t x = 0; x < json_array_size(v); x++)
				if ((rc = check_ref(l, i, k, json_array_get(v, x), err)))
					goto out;
		}
	}
out:
	json_decref(j);
	return rc;
}

int trail_ledger_verify(trail_ledger *l, trail_ledger_progress_fn fn, void *ctx,
			trail_error *err)
{
	char *dp = trail_path(l->dir, "data"), *xp = trail_path(l->dir, "index"),
	     *tp = trail_path(l->dir, "tree");
	trail_map md = {0}, mx = {0}, mt = {0};
	int rc;
	peak pk[65];
	int npk = 0;
	if (!dp || !xp || !tp) {
		rc = trail_error_set(err, TRAIL_ENOMEM, "out of memory");
		goto out;
	}
	if (l->size == 0) {
		rc = TRAIL_OK;
		goto checkpoint;
	}
	if ((rc = trail_map_file(dp, &md, err)) || (rc = trail_map_file(xp, &mx, err)) ||
	    (rc = trail_map_file(tp, &mt, err)))
		goto out;
	if (md.len < l->data_len || mx.len < 8 * l->size || mt.len < 32 * nodes_before(l->size)) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "log files are shorter than the head");
		goto out;
	}
	madvise(md.data, md.len, MADV_SEQUENTIAL);
	const uint8_t *x = mx.data, *t = mt.data;
	const char *d = md.data;
	uint64_t pos = 0, prev_end = 0;
	for (uint64_t i = 0; i < l->size; i++) {
		uint64_t a = 0, z = 0;
		for (int k = 7; k >= 0; k--)
			a = a << 8 | x[8 * i + (unsigned)k];
		if (i + 1 < l->size)
			for (int k = 7; k >= 0; k--)
				z = z << 8 | x[8 * (i + 1) + (unsigned)k];
		else
			z = l->data_len;
		if (a != prev_end || z <= a || z > l->data_len || d[z - 1] != '\n') {
			rc = trail_error_set(err, TRAIL_EVERIFY, "entry %" PRIu64 ": bad offsets in log/index", i);
			goto out;
		}
		prev_end = z;
		peak *p = &pk[npk++];
		p->level = 0;
		trail_merkle_leaf(d + a, z - a - 1, p->h);
		if (sodium_memcmp(p->h, t + 32 * pos++, 32)) {
			rc = trail_error_set(err, TRAIL_EVERIFY,
					     "entry %" PRIu64 ": bytes do not match the leaf hash", i);
			goto out;
		}
		while (npk >= 2 && pk[npk - 1].level == pk[npk - 2].level) {
			trail_merkle_node(pk[npk - 2].h, pk[npk - 1].h, pk[npk - 2].h);
			pk[npk - 2].level++;
			npk--;
			if (sodium_memcmp(pk[npk - 1].h, t + 32 * pos++, 32)) {
				rc = trail_error_set(err, TRAIL_EVERIFY,
						     "tree node after entry %" PRIu64 " is wrong", i);
				goto out;
			}
		}
		if ((rc = check_entry(l, i, d + a, z - a - 1, err)))
			goto out;
		if (fn && (i & 0xffff) == 0)
			fn(ctx, i, l->size);
	}
	trail_hash root;
	root_of_peaks(pk, npk, root);
	if (sodium_memcmp(root, l->root, 32)) {
		rc = trail_error_set(err, TRAIL_EVERIFY, "the recomputed root differs from log/head");
		goto out;
	}
checkpoint:;
	char *cp = trail_path(l->dir, "checkpoint");
	void *note;
	size_t nl;
	if (cp && trail_read_file(cp, HEAD_MAX, &note, &nl, NULL) == TRAIL_OK) {
		const trail_verifier *v = trail_store_operator_vkey(l->store);
		char *text = NULL;
		uint64_t size;
		trail_hash croot, mine;
		trail_error e = {0};
		rc = trail_note_open(note, nl, &v, 1, &text, NULL, &e);
		if (!rc)
			rc = trail_checkpoint_parse(text, NULL, &size, croot, &e);
		if (!rc && (size > l->size || trail_ledger_root(l, size, mine, &e) ||
			    sodium_memcmp(mine, croot, 32)))
			rc = trail_error_set(err, TRAIL_EVERIFY,
					     "the log is inconsistent with log/checkpoint");
		else if (rc)
			rc = trail_error_set(err, rc == TRAIL_ENOMEM ? rc : TRAIL_EVERIFY,
					     "log/checkpoint: %s", e.msg);
		trail_free(text);
		trail_free(note);
	}
	trail_free(cp);
	if (fn && !rc)
		fn(ctx, l->size, l->size);
out:
	trail_unmap(&md);
	trail_unmap(&mx);
	trail_unmap(&mt);
	trail_free(dp);
	trail_free(xp);
	trail_free(tp);
	return rc;
}

/* ---- proofs as JSON ---------------------------------------------------- */

static json_t *b64json(const trail_hash h)
{
	char b[64];
	trail_base64(h, 32, b);
	return json_string(b);
}

static json_t *proof_array(const trail_hash *p, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < n; i++)
		json_array_append_new(a, b64json(p[i]));
	return a;
}

int trail_ledger_proof_json(trail_ledger *l, uint64_t index, uint64_t size, json_t **out,
			    trail_error *err)
{
	trail_hash proof[TRAIL_MERKLE_MAXPROOF], root, leaf;
	size_t n;
	int rc;
	if ((rc = trail_ledger_prove(l, index, size, proof, &n, err)) ||
	    (rc = trail_ledger_root(l, size, root, err)) || (rc = trail_ledger_leaf(l, index, leaf, err)))
		return rc;
	*out = json_pack("{s:I, s:I, s:o, s:o, s:o}", "leafIdx", (json_int_t)index, "treeSize",
			 (json_int_t)size, "root", b64json(root), "leafHash", b64json(leaf), "proof",
			 proof_array(proof, n));
	return *out ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

int trail_ledger_consistency_json(trail_ledger *l, uint64_t m, uint64_t n, json_t **out,
				  trail_error *err)
{
	trail_hash proof[TRAIL_MERKLE_MAXPROOF], r1, r2;
	size_t np;
	int rc;
	if ((rc = trail_ledger_consistency(l, m, n, proof, &np, err)) ||
	    (rc = trail_ledger_root(l, m, r1, err)) || (rc = trail_ledger_root(l, n, r2, err)))
		return rc;
	*out = json_pack("{s:I, s:I, s:o, s:o, s:o}", "size1", (json_int_t)m, "size2",
			 (json_int_t)n, "root1", b64json(r1), "root2", b64json(r2), "proof",
			 proof_array(proof, np));
	return *out ? TRAIL_OK : trail_error_set(err, TRAIL_ENOMEM, "out of memory");
}

int trail_proof_check(const char *buf, size_t len, const trail_verifier *const *vs, size_t nv,
		      const char *origin, trail_error *err)
{
	static const char hdr[] = "c2sp.org/tlog-proof@v1\n";
	if (len >= sizeof hdr - 1 && !memcmp(buf, hdr, sizeof hdr - 1)) {
		trail_hash leaf;
		if (nv == 0)
			return trail_error_set(err, TRAIL_EUSAGE,
					       "a tlog-proof needs the log's verifier key (--key)");
		return trail_receipt_verify(buf, len, vs, nv, origin, NULL, leaf, err);
	}
	return trail_merkle_check_text(buf, len, err);
}
