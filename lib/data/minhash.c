/*
 * Near duplicates: word shingles, MinHash signatures over xxHash, and the
 * LSH index with compact per-record storage.
 *
 * Index layout, per record (k = bands * rows permutations):
 *   ids    32 bytes       the record id, for reporting `of`
 *   sigs   k/4 bytes      the low 2 bits of each minimum (b-bit MinHash)
 *   bands  5 bytes/band   8-bit fingerprint + 32-bit ordinal, in a sorted
 *                         array per band with a 2^16-bucket directory
 * so 32 + 28 + 70 bytes at the default 14 x 8, plus the directories
 * (14 * 256 KiB in all) and, per band, a hash table of the keys of the
 * records added since the last merge (at most 1/32 of the index), each
 * key's records chained in order. A band's 32-bit key splits into 16 bits
 * of bucket, 8 of fingerprint and 8 used only while the record is recent;
 * two records are candidates when they share a band key (24 bits once
 * merged: a false candidate per ~2^24/N lookups), and every candidate is
 * scored from the 2-bit signatures.
 *
 * Work per query is bounded: a band contributes its BAND_CAP earliest
 * records with the key (a binary search finds them in the sorted array, the
 * chain holds them in order). Only a flood of near-identical records puts
 * more than that many behind one key, and then the earliest stand for the
 * rest: the best match among them is reported, the same on every run.
 */
#include <stdlib.h>
#include <string.h>

/*
 * xxHash's own header, inlined: the word and shingle hashes are a few bytes
 * each, and a call into the shared library per word costs more than the
 * hash. The values are XXH3's, the same as the library's.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "data/data_int.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MH_X86 1
#endif

/* mins[k] from k (padded to 16) permutations over n 32-bit shingle hashes. */
typedef void mh_kernel_fn(uint32_t *restrict mins, const struct trail_minhasher *m, int k,
			  const uint32_t *restrict xs, long n);
static mh_kernel_fn *pick_kernel(int which);

struct trail_minhasher {
	trail_nd_params p;
	int k;
	mh_kernel_fn *kernel; /* the fastest this CPU runs; all give the same minima */
	uint64_t a[TRAIL_ND_MAXPERM], b[TRAIL_ND_MAXPERM];
	uint32_t ahi[TRAIL_ND_MAXPERM], alo[TRAIL_ND_MAXPERM];
	uint32_t bhi[TRAIL_ND_MAXPERM], blo[TRAIL_ND_MAXPERM];
	uint32_t mins[TRAIL_ND_MAXPERM];
	char *low;        /* the text with ASCII letters folded */
	size_t lowcap;
	uint64_t *words;  /* word hashes */
	size_t wcap;
	uint32_t *xs;     /* shingle hashes folded to 32 bits */
	uint64_t *sh;     /* shingle hashes, for exact Jaccard */
	size_t shcap;
};

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

int trail_minhasher_new(const trail_nd_params *p, trail_minhasher **out)
{
	trail_minhasher *m;
	*out = NULL;
	if (p->bands < 1 || p->rows < 1 || p->bands * p->rows > TRAIL_ND_MAXPERM || p->shingle < 1)
		return TRAIL_EUSAGE;
	if (!(m = trail_calloc(1, sizeof *m)))
		return TRAIL_ENOMEM;
	m->p = *p;
	m->k = p->bands * p->rows;
	uint64_t s = p->seed ^ 0x6d696e68617368ull;
	for (int i = 0; i < TRAIL_ND_MAXPERM; i++) {
		uint64_t a = splitmix64(&s), b = splitmix64(&s);
		m->a[i] = a;
		m->b[i] = b;
		m->ahi[i] = (uint32_t)(a >> 32);
		m->alo[i] = (uint32_t)a;
		m->bhi[i] = (uint32_t)(b >> 32);
		m->blo[i] = (uint32_t)b;
	}
	m->kernel = pick_kernel(-1);
	*out = m;
	return TRAIL_OK;
}

void trail_minhasher_free(trail_minhasher *m)
{
	if (!m)
		return;
	trail_free(m->low);
	trail_free(m->words);
	trail_free(m->xs);
	trail_free(m->sh);
	trail_free(m);
}

/* Hash the words of text into m->words; returns the count or -ENOMEM. */
static long hash_words(trail_minhasher *m, const char *text, size_t len)
{
	if (len + 1 > m->lowcap) {
		char *nl = trail_realloc(m->low, len + 1);
		if (!nl)
			return -TRAIL_ENOMEM;
		m->low = nl;
		m->lowcap = len + 1;
	}
	/* At most one word per two bytes, plus one. */
	size_t maxw = len / 2 + 1;
	if (maxw > m->wcap) {
		uint64_t *nw = trail_realloc(m->words, maxw * sizeof *nw);
		uint32_t *nx = trail_realloc(m->xs, maxw * sizeof *nx);
		if (nw)
			m->words = nw;
		if (nx)
			m->xs = nx;
		if (!nw || !nx)
			return -TRAIL_ENOMEM;
		m->wcap = maxw;
	}
	/*
	 * Fold and classify 8 bytes at a time into a bit mask of word bytes
	 * (letters, digits, non-ASCII), 64 bytes per mask: a word ends at each
	 * 1->0 step and starts at the last 0->1 step before it, so there is no
	 * branch per byte.
	 */
	const unsigned char *u = (const unsigned char *)text;
	const unsigned char *s = (const unsigned char *)m->low;
	long n = 0;
	size_t open = 0; /* start of a word still open at the chunk's end */
	uint64_t carry = 0;
	for (size_t base = 0; base < len; base += 64) {
		size_t cnt = len - base < 64 ? len - base : 64;
		uint64_t w = 0;
		for (size_t k = 0; k < cnt; k += 8) {
			uint64_t x, y;
			if (cnt - k >= 8) {
				y = tx_fold(tx_load(u + base + k));
				tx_store(m->low + base + k, y);
			} else {
				y = tx_fold(tx_load_tail(u + base + k, cnt - k));
				for (size_t q = 0; q < cnt - k; q++)
					m->low[base + k + q] = (char)(y >> (8 * q));
			}
			x = (tx_range(y, 'a', 'z') | tx_range(y, '0', '9') | y) & TX_HIGH;
			w |= (uint64_t)tx_bits(x) << k;
		}
		uint64_t prev = w << 1 | carry;
		uint64_t starts = w & ~prev, ends = ~w & prev;
		if (cnt < 64)
			ends &= (2ull << cnt) - 1;
		while (ends) {
			unsigned e = (unsigned)__builtin_ctzll(ends);
			uint64_t below = starts & ((1ull << e) - 1);
			size_t st = below ? base + 63 - (size_t)__builtin_clzll(below) : open;
			m->words[n++] = XXH3_64bits(s + st, base + e - st);
			ends &= ends - 1;
		}
		if (w >> 63) {
			uint64_t last = starts;
			if (last)
				open = base + 63 - (size_t)__builtin_clzll(last);
		}
		carry = cnt == 64 ? w >> 63 : 0;
	}
	if (carry)
		m->words[n++] = XXH3_64bits(s + open, len - open);
	return n;
}

/* Shingle hashes of the word hashes, into m->xs (32-bit) and, if full, m->sh. */
static long shingle_hashes(trail_minhasher *m, long nw, int full)
{
	int w = m->p.shingle;
	long ns = nw >= w ? nw - w + 1 : (nw > 0);
	size_t span = (size_t)(nw >= w ? w : nw) * sizeof(uint64_t);
	if (full && (size_t)ns > m->shcap) {
		uint64_t *n2 = trail_realloc(m->sh, (size_t)ns * sizeof *n2);
		if (!n2)
			return -TRAIL_ENOMEM;
		m->sh = n2;
		m->shcap = (size_t)ns;
	}
	for (long i = 0; i < ns; i++) {
		uint64_t h = XXH3_64bits_withSeed(m->words + i, span, m->p.seed);
		m->xs[i] = (uint32_t)(h ^ (h >> 32));
		if (full)
			m->sh[i] = h;
	}
	return ns;
}

/*
 * mins[i] = min over shingles x of hi32(a[i] * x + b[i]): for 32-bit x and
 * uniform 64-bit a, b this is Dietzfelbinger's multiply-add-shift, strongly
 * universal into 32 bits.
 *
 * The reference loop. hi32(a x + b) for 32-bit x, with a = ahi:alo and
 * b = bhi:blo, is ahi x + bhi + hi32(alo x + blo) mod 2^32 (alo x + blo <
 * 2^64): one 32x32->64 and one 32-bit multiply instead of a 64-bit one.
 */
static void kernel_c(uint32_t *restrict mins, const struct trail_minhasher *m, int k,
		     const uint32_t *restrict xs, long n)
{
	for (long j = 0; j < n; j++) {
		uint32_t x = xs[j];
		for (int i = 0; i < k; i++) {
			uint32_t t = (uint32_t)(((uint64_t)m->alo[i] * x + m->blo[i]) >> 32);
			uint32_t v = m->ahi[i] * x + m->bhi[i] + t;
			mins[i] = v < mins[i] ? v : mins[i];
		}
	}
}

/*
 * The vector kernels take 8 or 16 permutations at a time over every
 * shingle, so the constants and minima stay in registers and the only load
 * per shingle is x. Compilers vectorise kernel_c poorly (a third of the
 * speed), hence the intrinsics.
 */
#ifdef MH_X86
/* AVX2: the split form above, 8 lanes; even and odd lanes' 64-bit halves apart. */
__attribute__((target("avx2"))) static void kernel_avx2(uint32_t *restrict mins,
							  const struct trail_minhasher *m, int k,
							  const uint32_t *restrict xs, long n)
{
	for (int i = 0; i < k; i += 8) {
		__m256i ah = _mm256_loadu_si256((const void *)(m->ahi + i));
		__m256i bh = _mm256_loadu_si256((const void *)(m->bhi + i));
		__m256i al = _mm256_loadu_si256((const void *)(m->alo + i));
		__m256i bl = _mm256_loadu_si256((const void *)(m->blo + i));
		__m256i alodd = _mm256_srli_epi64(al, 32), blodd = _mm256_srli_epi64(bl, 32);
		__m256i bleven = _mm256_and_si256(bl, _mm256_set1_epi64x(0xffffffff));
		__m256i mn = _mm256_loadu_si256((const void *)(mins + i));
		for (long j = 0; j < n; j++) {
			__m256i x = _mm256_set1_epi32((int)xs[j]);
			__m256i pe = _mm256_add_epi64(_mm256_mul_epu32(al, x), bleven);
			__m256i po = _mm256_add_epi64(_mm256_mul_epu32(alodd, x), blodd);
			__m256i t = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
			__m256i v = _mm256_add_epi32(_mm256_add_epi32(_mm256_mullo_epi32(ah, x), bh), t);
			mn = _mm256_min_epu32(mn, v);
		}
		_mm256_storeu_si256((void *)(mins + i), mn);
	}
}

/* AVX-512DQ: a x + b in 64-bit lanes with one 64-bit multiply, 16 at a time. */
__attribute__((target("avx512f,avx512dq"))) static void kernel_avx512(
	uint32_t *restrict mins, const struct trail_minhasher *m, int k,
	const uint32_t *restrict xs, long n)
{
	for (int i = 0; i < k; i += 16) {
		__m512i a0 = _mm512_loadu_si512(m->a + i), a1 = _mm512_loadu_si512(m->a + i + 8);
		__m512i b0 = _mm512_loadu_si512(m->b + i), b1 = _mm512_loadu_si512(m->b + i + 8);
		__m512i m0 = _mm512_cvtepu32_epi64(_mm256_loadu_si256((const void *)(mins + i)));
		__m512i m1 = _mm512_cvtepu32_epi64(_mm256_loadu_si256((const void *)(mins + i + 8)));
		for (long j = 0; j < n; j++) {
			__m512i x = _mm512_set1_epi64((long long)xs[j]);
			__m512i v0 = _mm512_add_epi64(_mm512_mullo_epi64(a0, x), b0);
			__m512i v1 = _mm512_add_epi64(_mm512_mullo_epi64(a1, x), b1);
			m0 = _mm512_min_epu64(m0, _mm512_srli_epi64(v0, 32));
			m1 = _mm512_min_epu64(m1, _mm512_srli_epi64(v1, 32));
		}
		_mm256_storeu_si256((void *)(mins + i), _mm512_cvtepi64_epi32(m0));
		_mm256_storeu_si256((void *)(mins + i + 8), _mm512_cvtepi64_epi32(m1));
	}
}
#endif

/* Kernel `which` (0 C, 1 AVX2, 2 AVX-512), or the best one for -1; NULL if unsupported. */
static mh_kernel_fn *pick_kernel(int which)
{
#ifdef MH_X86
	__builtin_cpu_init();
	int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
	int avx2 = __builtin_cpu_supports("avx2");
	if (which == 2 || which < 0)
		if (avx512)
			return kernel_avx512;
	if (which == 1 || which < 0)
		if (avx2)
			return kernel_avx2;
#endif
	return which <= 0 ? kernel_c : NULL;
}

int trail_minhasher_set_kernel(trail_minhasher *m, int which)
{
	mh_kernel_fn *f = pick_kernel(which);
	if (!f)
		return TRAIL_EUSAGE;
	m->kernel = f;
	return TRAIL_OK;
}

long trail_minhash(trail_minhasher *m, const char *text, size_t len, uint32_t *sig)
{
	long nw = hash_words(m, text, len);
	if (nw <= 0)
		return nw;
	long ns = shingle_hashes(m, nw, 0);
	if (ns < 0)
		return ns;
	int kp = (m->k + 15) & ~15;
	for (int i = 0; i < kp; i++)
		m->mins[i] = UINT32_MAX;
	m->kernel(m->mins, m, kp, m->xs, ns);
	memcpy(sig, m->mins, (size_t)m->k * sizeof *sig);
	return ns;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

long trail_shingles(trail_minhasher *m, const char *text, size_t len, const uint64_t **out)
{
	long nw = hash_words(m, text, len);
	*out = m->sh;
	if (nw <= 0)
		return nw;
	long ns = shingle_hashes(m, nw, 1);
	if (ns < 0)
		return ns;
	qsort(m->sh, (size_t)ns, sizeof *m->sh, cmp_u64);
	long u = 0;
	for (long i = 0; i < ns; i++)
		if (!u || m->sh[u - 1] != m->sh[i])
			m->sh[u++] = m->sh[i];
	*out = m->sh;
	return u;
}

double trail_jaccard(const uint64_t *a, size_t na, const uint64_t *b, size_t nb)
{
	size_t i = 0, j = 0, inter = 0;
	if (!na && !nb)
		return 1.0;
	while (i < na && j < nb) {
		if (a[i] < b[j])
			i++;
		else if (a[i] > b[j])
			j++;
		else
			inter++, i++, j++;
	}
	return (double)inter / (double)(na + nb - inter);
}

/* ---- the index ------------------------------------------------------------ */

#define DIRBITS 16
#define DIRSIZE (1u << DIRBITS)
#define DELTA_MIN 4096
#define BAND_CAP 32

/* A recent key: the first and last recent record with it (ordinal + 1); head 0: empty. */
struct rslot {
	uint32_t key, head, tail;
};

struct band {
	uint32_t *dir; /* DIRSIZE + 1 offsets into fp/ord; NULL while empty */
	uint8_t *fp;
	uint32_t *ord;
	size_t n;
	struct rslot *slots; /* recent keys, open addressing */
	size_t cap, nkeys;   /* cap: power of two, or 0 */
	uint32_t *next;      /* per recent record (ordinal - rbase): next with its key, + 1; 0 last */
};

struct trail_ndindex {
	trail_nd_params p;
	int k, sigbytes;
	uint8_t (*ids)[32];
	uint8_t *sigs;
	size_t n, cap;
	struct band *b;
	size_t recent; /* records not yet merged: ordinals n - recent .. n - 1 */
	size_t nextcap; /* of each band's next */
	uint32_t *cand;
	size_t ncand, candcap;
	uint32_t keys[64]; /* band keys of the last signature keyed */
};

int trail_ndindex_new(const trail_nd_params *p, trail_ndindex **out)
{
	trail_ndindex *ix;
	*out = NULL;
	if (p->bands < 1 || p->bands > 64 || p->rows < 1 || p->bands * p->rows > TRAIL_ND_MAXPERM)
		return TRAIL_EUSAGE;
	if (!(ix = trail_calloc(1, sizeof *ix)))
		return TRAIL_ENOMEM;
	ix->p = *p;
	ix->k = p->bands * p->rows;
	ix->sigbytes = (ix->k * 2 + 7) / 8;
	if (!(ix->b = trail_calloc((size_t)p->bands, sizeof *ix->b))) {
		trail_free(ix);
		return TRAIL_ENOMEM;
	}
	*out = ix;
	return TRAIL_OK;
}

void trail_ndindex_free(trail_ndindex *ix)
{
	if (!ix)
		return;
	for (int j = 0; j < ix->p.bands; j++) {
		trail_free(ix->b[j].dir);
		trail_free(ix->b[j].fp);
		trail_free(ix->b[j].ord);
		trail_free(ix->b[j].slots);
		trail_free(ix->b[j].next);
	}
	trail_free(ix->b);
	trail_free(ix->ids);
	trail_free(ix->sigs);
	trail_free(ix->cand);
	trail_free(ix);
}

uint64_t trail_ndindex_count(const trail_ndindex *ix)
{
	return ix->n;
}

const uint8_t *trail_ndindex_id(const trail_ndindex *ix, uint64_t ordinal)
{
	return ordinal < ix->n ? ix->ids[ordinal] : NULL;
}

size_t trail_ndindex_bytes(const trail_ndindex *ix)
{
	size_t t = sizeof *ix + (size_t)ix->p.bands * sizeof *ix->b;
	t += ix->cap * (32 + (size_t)ix->sigbytes) + ix->candcap * sizeof *ix->cand;
	for (int j = 0; j < ix->p.bands; j++) {
		const struct band *b = &ix->b[j];
		t += (b->dir ? (DIRSIZE + 1) * sizeof *b->dir : 0) + b->n * 5 +
		     b->cap * sizeof *b->slots + ix->nextcap * sizeof *b->next;
	}
	return t;
}

static void band_keys(trail_ndindex *ix, const uint32_t *sig)
{
	for (int j = 0; j < ix->p.bands; j++)
		ix->keys[j] = (uint32_t)(XXH3_64bits_withSeed(sig + j * ix->p.rows,
							      (size_t)ix->p.rows * 4,
							      ix->p.seed + (uint64_t)j) >> 32);
}

static void pack_sig(const trail_ndindex *ix, const uint32_t *sig, uint8_t *out)
{
	memset(out, 0, (size_t)ix->sigbytes);
	for (int i = 0; i < ix->k; i++)
		out[i >> 2] |= (uint8_t)((sig[i] & 3u) << ((i & 3) * 2));
}

/* b-bit estimate of the Jaccard similarity, clamped to [0, 1]. */
static double score(const trail_ndindex *ix, const uint8_t *x, const uint8_t *y)
{
	int diff = 0, i = 0;
	for (; i + 8 <= ix->sigbytes; i += 8) {
		uint64_t d = tx_load(x + i) ^ tx_load(y + i);
		diff += (int)tx_popcount((d | (d >> 1)) & 0x5555555555555555ull);
	}
	for (; i < ix->sigbytes; i++) {
		unsigned d = x[i] ^ y[i];
		diff += (int)tx_popcount((d | (d >> 1)) & 0x55u);
	}
	double m = (double)(ix->k - diff) / ix->k;
	double j = (m - 0.25) / 0.75;
	return j < 0 ? 0 : j > 1 ? 1 : j;
}

static inline size_t slot_of(uint32_t key, size_t cap)
{
	return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
}

static int cand_push(trail_ndindex *ix, uint32_t o)
{
	if (ix->ncand == ix->candcap) {
		size_t nc = ix->candcap ? ix->candcap * 2 : 64;
		uint32_t *c = trail_realloc(ix->cand, nc * sizeof *c);
		if (!c)
			return -1;
		ix->cand = c;
		ix->candcap = nc;
	}
	ix->cand[ix->ncand++] = o;
	return 0;
}

/* The slot of key in band b's recent table: its own or the empty one to take. */
static size_t rslot_find(const struct band *b, uint32_t key)
{
	size_t s = slot_of(key, b->cap);
	while (b->slots[s].head && b->slots[s].key != key)
		s = (s + 1) & (b->cap - 1);
	return s;
}

/*
 * Candidates sharing band j's key (in ix->keys) appended to ix->cand: the
 * `cap` earliest, merged records first (their ordinals are all lower).
 */
static int band_candidates(trail_ndindex *ix, int j, size_t cap)
{
	struct band *b = &ix->b[j];
	uint32_t key = ix->keys[j];
	size_t taken = 0;
	if (b->dir) {
		/* A bucket is sorted by fingerprint, then ordinal. */
		uint32_t bucket = key >> (32 - DIRBITS);
		uint8_t fp = (uint8_t)(key >> 8);
		size_t lo = b->dir[bucket], hi = b->dir[bucket + 1];
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (b->fp[mid] < fp)
				lo = mid + 1;
			else
				hi = mid;
		}
		for (size_t i = lo; i < b->dir[bucket + 1] && b->fp[i] == fp && taken < cap; i++, taken++)
			if (cand_push(ix, b->ord[i]))
				return -1;
	}
	if (b->cap) {
		size_t base = ix->n - ix->recent;
		const struct rslot *r = &b->slots[rslot_find(b, key)];
		for (uint32_t o = r->head; o && taken < cap; o = b->next[o - 1 - base], taken++)
			if (cand_push(ix, o - 1))
				return -1;
	}
	return 0;
}

size_t trail_ndindex_keylen(const trail_ndindex *ix)
{
	return (size_t)ix->p.bands * 4 + (size_t)ix->sigbytes;
}

void trail_ndindex_key(trail_ndindex *ix, const uint32_t *sig, uint8_t *key)
{
	band_keys(ix, sig);
	for (int j = 0; j < ix->p.bands; j++)
		for (int b = 0; b < 4; b++)
			key[j * 4 + b] = (uint8_t)(ix->keys[j] >> (8 * b));
	pack_sig(ix, sig, key + (size_t)ix->p.bands * 4);
}

/* A key's band keys into ix->keys; its packed signature follows them. */
static const uint8_t *unkey(trail_ndindex *ix, const uint8_t *key)
{
	for (int j = 0; j < ix->p.bands; j++)
		ix->keys[j] = (uint32_t)key[j * 4] | (uint32_t)key[j * 4 + 1] << 8 | (uint32_t)key[j * 4 + 2] << 16 |
			      (uint32_t)key[j * 4 + 3] << 24;
	return key + (size_t)ix->p.bands * 4;
}

int trail_ndindex_query(trail_ndindex *ix, const uint32_t *sig, uint64_t *ordinal, double *sc)
{
	uint8_t key[64 * 4 + TRAIL_ND_MAXPERM / 4];
	trail_ndindex_key(ix, sig, key);
	return trail_ndindex_query_key(ix, key, ordinal, sc);
}

int trail_ndindex_query_key(trail_ndindex *ix, const uint8_t *key, uint64_t *ordinal, double *sc)
{
	const uint8_t *packed = unkey(ix, key);
	ix->ncand = 0;
	for (int j = 0; j < ix->p.bands; j++)
		if (band_candidates(ix, j, BAND_CAP))
			return -TRAIL_ENOMEM;
	if (!ix->ncand)
		return 0;
	/*
	 * A record shared by several bands is scored once per band, which
	 * costs less than sorting the candidates to drop the repeats; ties go
	 * to the earliest record.
	 */
	int found = 0;
	double best = -1;
	for (size_t i = 0; i < ix->ncand; i++) {
		uint32_t o = ix->cand[i];
		double s = score(ix, packed, ix->sigs + (size_t)o * ix->sigbytes);
		if (s >= ix->p.threshold && (s > best || (s == best && o < *ordinal))) {
			best = s;
			*ordinal = o;
			found = 1;
		}
	}
	if (found)
		*sc = best;
	return found;
}

int trail_ndindex_contains(trail_ndindex *ix, const uint32_t *sig, const uint8_t id[32],
			   uint64_t *ordinal)
{
	/* An exact copy has the same signature, so it shares band 0. */
	band_keys(ix, sig);
	ix->ncand = 0;
	if (band_candidates(ix, 0, SIZE_MAX))
		return -TRAIL_ENOMEM;
	uint32_t best = UINT32_MAX;
	for (size_t i = 0; i < ix->ncand; i++)
		if (ix->cand[i] < best && !memcmp(ix->ids[ix->cand[i]], id, 32))
			best = ix->cand[i];
	if (best == UINT32_MAX)
		return 0;
	*ordinal = best;
	return 1;
}

/*
 * Room in every band for one more recent record, before any is changed, so
 * that an add either happens in full or not at all.
 */
static int recent_reserve(trail_ndindex *ix)
{
	if (ix->recent + 1 > ix->nextcap) {
		size_t nc = ix->nextcap ? ix->nextcap * 2 : 1024;
		for (int j = 0; j < ix->p.bands; j++) {
			uint32_t *nx = trail_realloc(ix->b[j].next, nc * sizeof *nx);
			if (!nx)
				return -1;
			ix->b[j].next = nx;
		}
		ix->nextcap = nc;
	}
	for (int j = 0; j < ix->p.bands; j++) {
		struct band *b = &ix->b[j];
		if ((b->nkeys + 1) * 2 <= b->cap)
			continue;
		size_t nc = b->cap ? b->cap * 2 : 1024;
		struct rslot *ns = trail_calloc(nc, sizeof *ns);
		if (!ns)
			return -1;
		for (size_t i = 0; i < b->cap; i++) {
			if (!b->slots[i].head)
				continue;
			size_t q = slot_of(b->slots[i].key, nc);
			while (ns[q].head)
				q = (q + 1) & (nc - 1);
			ns[q] = b->slots[i];
		}
		trail_free(b->slots);
		b->slots = ns;
		b->cap = nc;
	}
	return 0;
}

/* Append recent record o (the newest) to key's chain in band b; room is reserved. */
static void recent_insert(trail_ndindex *ix, struct band *b, uint32_t key, uint32_t o)
{
	size_t base = ix->n - ix->recent;
	struct rslot *r = &b->slots[rslot_find(b, key)];
	b->next[o - base] = 0;
	if (!r->head) {
		r->key = key;
		r->head = o + 1;
		b->nkeys++;
	} else {
		b->next[r->tail - 1 - base] = o + 1;
	}
	r->tail = o + 1;
}

/*
 * Merge band b's recent entries into its sorted arrays. Sort order is
 * (bucket, fingerprint, ordinal); recent ordinals are all newer than the
 * merged ones, so equal keys keep insertion order.
 */
static int band_merge(struct band *b, size_t recent, size_t base)
{
	size_t n = b->n + recent, k = 0;
	uint64_t *t = trail_malloc((recent ? recent : 1) * sizeof *t);
	uint8_t *fp = trail_malloc(n ? n : 1);
	uint32_t *ord = trail_malloc((n ? n : 1) * sizeof *ord);
	uint32_t *dir = trail_calloc(DIRSIZE + 1, sizeof *dir);
	if (!t || !fp || !ord || !dir) {
		trail_free(t);
		trail_free(fp);
		trail_free(ord);
		trail_free(dir);
		return -1;
	}
	for (size_t i = 0; i < b->cap; i++)
		for (uint32_t o = b->slots[i].head; o; o = b->next[o - 1 - base])
			t[k++] = (uint64_t)(b->slots[i].key >> 8) << 32 | (o - 1);
	n = b->n + k; /* k < recent only when an earlier merge of this band succeeded */
	qsort(t, k, sizeof *t, cmp_u64);
	/* Merge two streams keyed by 24 bits: bucket << 8 | fingerprint. */
	size_t i = 0, j = 0, o = 0;
	uint32_t bucket = 0;
	while (i < b->n || j < k) {
		uint32_t mk = UINT32_MAX;
		if (i < b->n) {
			while (b->dir[bucket + 1] <= i)
				bucket++;
			mk = bucket << 8 | b->fp[i];
		}
		if (j < k && (i == b->n || (uint32_t)(t[j] >> 32) < mk)) {
			uint32_t key24 = (uint32_t)(t[j] >> 32);
			fp[o] = (uint8_t)key24;
			ord[o] = (uint32_t)t[j];
			dir[(key24 >> 8) + 1]++;
			j++;
		} else {
			fp[o] = b->fp[i];
			ord[o] = b->ord[i];
			dir[bucket + 1]++;
			i++;
		}
		o++;
	}
	for (uint32_t q = 1; q <= DIRSIZE; q++)
		dir[q] += dir[q - 1];
	trail_free(t);
	trail_free(b->dir);
	trail_free(b->fp);
	trail_free(b->ord);
	trail_free(b->slots);
	b->dir = dir;
	b->fp = fp;
	b->ord = ord;
	b->n = n;
	b->slots = NULL;
	b->cap = b->nkeys = 0;
	return 0;
}

int trail_ndindex_compact(trail_ndindex *ix)
{
	if (!ix->recent)
		return TRAIL_OK;
	for (int j = 0; j < ix->p.bands; j++)
		if (band_merge(&ix->b[j], ix->recent, ix->n - ix->recent))
			return TRAIL_ENOMEM;
	ix->recent = 0;
	for (int j = 0; j < ix->p.bands; j++) {
		trail_free(ix->b[j].next);
		ix->b[j].next = NULL;
	}
	ix->nextcap = 0;
	return TRAIL_OK;
}

int trail_ndindex_add(trail_ndindex *ix, const uint32_t *sig, const uint8_t id[32])
{
	uint8_t key[64 * 4 + TRAIL_ND_MAXPERM / 4];
	trail_ndindex_key(ix, sig, key);
	return trail_ndindex_add_key(ix, key, id);
}

int trail_ndindex_add_key(trail_ndindex *ix, const uint8_t *key, const uint8_t id[32])
{
	if (ix->n >= UINT32_MAX - 1)
		return TRAIL_ELIMIT;
	if (ix->n == ix->cap) {
		/* Grow by a quarter: the arrays are most of the index. */
		size_t nc = ix->cap + ix->cap / 4 + 1024;
		uint8_t(*ids)[32] = trail_realloc(ix->ids, nc * 32);
		if (!ids)
			return TRAIL_ENOMEM;
		ix->ids = ids;
		uint8_t *sg = trail_realloc(ix->sigs, nc * (size_t)ix->sigbytes);
		if (!sg)
			return TRAIL_ENOMEM;
		ix->sigs = sg;
		ix->cap = nc;
	}
	size_t limit = ix->b[0].n / 32;
	if (ix->recent >= (limit > DELTA_MIN ? limit : DELTA_MIN)) {
		int rc = trail_ndindex_compact(ix);
		if (rc)
			return rc;
	}
	if (recent_reserve(ix))
		return TRAIL_ENOMEM;
	const uint8_t *packed = unkey(ix, key);
	uint32_t o = (uint32_t)ix->n;
	ix->n++;
	ix->recent++;
	for (int j = 0; j < ix->p.bands; j++)
		recent_insert(ix, &ix->b[j], ix->keys[j], o);
	memcpy(ix->ids[o], id, 32);
	memcpy(ix->sigs + (size_t)o * ix->sigbytes, packed, (size_t)ix->sigbytes);
	return TRAIL_OK;
}
