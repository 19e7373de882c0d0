/*
 * Ed25519 keys and signed notes in the C2SP signed-note encodings.
 *
 *   signer key   PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>
 *   verifier key <name>+<hex key id>+<base64(0x01 || public key)>
 *   key id       first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key)
 *
 * A contributor's identity is its verifier key string.
 * Ownership: handles are freed with their *_free; strings returned through
 * `char **out` are trail_malloc'd.
 */
#ifndef TRAIL_KEY_H
#define TRAIL_KEY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "trail.h"

#define TRAIL_SIG_LEN 64

typedef struct trail_signer trail_signer;
typedef struct trail_verifier trail_verifier;

/*
 * Is `name` one trail gives a key (or a log origin): 1 to 256 bytes of
 * UTF-8 without Unicode spaces, '+' or control characters? NULL if so,
 * else what is wrong (a static string). Keys and notes made elsewhere need
 * only what C2SP signed-note asks: no Unicode spaces or '+'.
 */
const char *trail_key_name_problem(const char *name);

/* A new key pair for `name` (see trail_key_name_problem; TRAIL_EUSAGE if not). */
int trail_key_generate(const char *name, char **skey, char **vkey, trail_error *err);

/*
 * Write DIR/NAME.key (mode 0600) and DIR/NAME.pub for a new key; refuses to
 * overwrite either. *vkey (if not NULL) gets the verifier key.
 */
int trail_key_create_files(const char *dir, const char *name, char **vkey, trail_error *err);

int trail_signer_parse(const char *skey, size_t len, trail_signer **out, trail_error *err);
int trail_verifier_parse(const char *vkey, size_t len, trail_verifier **out, trail_error *err);
/* Load a NAME.key file. */
int trail_signer_load(const char *path, trail_signer **out, trail_error *err);
/* A verifier key given literally, or a file holding one (NAME.pub). */
int trail_verifier_load(const char *path_or_key, trail_verifier **out, trail_error *err);
void trail_signer_free(trail_signer *s);
void trail_verifier_free(trail_verifier *v);

const char *trail_signer_name(const trail_signer *s);
/* The signer's verifier key string (owned by the signer). */
const char *trail_signer_vkey(const trail_signer *s);
const char *trail_verifier_name(const trail_verifier *v);
const char *trail_verifier_str(const trail_verifier *v);
uint32_t trail_verifier_id(const trail_verifier *v);

void trail_sign(const trail_signer *s, const void *msg, size_t len, uint8_t sig[TRAIL_SIG_LEN]);
/* TRAIL_OK or TRAIL_EVERIFY. */
int trail_verify(const trail_verifier *v, const void *msg, size_t len,
		 const uint8_t sig[TRAIL_SIG_LEN]);

/*
 * Sign text into a note. The text must be UTF-8, non-empty, end with a
 * newline and hold no ASCII control character below U+0020 but newline
 * (C2SP signed-note; U+007F is allowed).
 */
int trail_note_sign(const char *text, size_t len, const trail_signer *const *signers,
		    size_t nsigners, char **note, size_t *notelen, trail_error *err);
/*
 * Open a note: TRAIL_OK if at least one of the given verifiers signed it
 * (signatures by unknown keys, of any algorithm and length, are ignored);
 * TRAIL_EVERIFY if none did or a known key's signature is bad; TRAIL_EDATA
 * naming the problem if it is not a note. One extra trailing newline is
 * accepted (a note never ends with a blank line). *text (if not NULL) gets
 * the signed text.
 */
int trail_note_open(const char *note, size_t len, const trail_verifier *const *vs, size_t nv,
		    char **text, size_t *textlen, trail_error *err);

/*
 * Signed JSON objects (ledger entries and manifests): "signer" is set to the
 * verifier key, "sig" to base64 of the Ed25519 signature over the canonical
 * JSON of the object without "sig".
 */
int trail_json_sign(json_t *obj, const trail_signer *s, trail_error *err);
/* Verify with the embedded "signer" key; TRAIL_EVERIFY on mismatch. */
int trail_json_verify(const json_t *obj, trail_error *err);

#endif
