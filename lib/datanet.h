/*
 * Datanets: named datasets of signed contributions, recorded in the ledger.
 *
 * Ledger entries (all signed JSON objects, see key.h):
 *   datanet       {"type":"datanet","name","schema":"text|instruct","license",
 *                  "owner":<verifier key>,"policy_object":<digest>?} by the owner
 *   contribution  {"type":"contribution","datanet","bundle":<digest>,
 *                  "contributor","records","root","license","source"?} by the
 *                  contributor; the bundle is an object in the store
 *   approval      {"type":"approval","datanet","contribution":<entry index>,
 *                  "bundle","decision":"approve|reject","reason"?} by the owner;
 *                  the latest decision for a contribution counts
 *   validation    {"type":"validation","datanet","bundle","report_object",
 *                  "accepted","rejected"} by whoever ran the validation
 *
 * A snapshot NAME@SIZE is the approved records as of tree size SIZE, in
 * ledger order of their contributions, then bundle order: the exact set a
 * model is trained on. Each record comes with "record" (its id),
 * "contributor", "bundle" and "entry" beside its own fields.
 *
 * Ownership: JSON values returned through `json_t **` are new references.
 */
#ifndef TRAIL_DATANET_H
#define TRAIL_DATANET_H

#include <stdint.h>

#include <jansson.h>

#include "bundle.h"
#include "ledger.h"

/* Split "NAME[@SIZE]"; size 0 when absent. *name is trail_malloc'd. */
int trail_datanet_spec(const char *arg, char **name, uint64_t *size, trail_error *err);

/* Record fields that are reserved for snapshot output. */
int trail_datanet_check_record(const json_t *rec, const char *schema, trail_error *err);

int trail_datanet_create(trail_store *s, const char *name, const char *schema,
			 const char *license, const json_t *policy, const trail_signer *owner,
			 uint64_t *entry, trail_error *err);

/* The datanet entry of `name` as of tree size `size` (0: all). */
int trail_datanet_find(trail_ledger *l, const char *name, uint64_t size, json_t **def,
		       uint64_t *entry, trail_error *err);

/*
 * Add a bundle as a contribution, all or nothing: verified, stored as an
 * object, recorded in a signed entry and committed. *receipt gets
 * {"datanet","entry","bundle","records","checkpoint"}.
 */
int trail_datanet_contribute(trail_store *s, const char *name, const void *bundle, size_t len,
			     const trail_signer *contributor, json_t **receipt, trail_error *err);

/* The owner's decision on the contribution recorded at ledger entry `contribution`. */
int trail_datanet_decide(trail_store *s, const char *name, uint64_t contribution, int approve,
			 const char *reason, const trail_signer *owner, uint64_t *entry,
			 trail_error *err);

/* A signed validation entry; report (the verdict lines) is stored as an object. */
int trail_datanet_record_validation(trail_store *s, const char *name, const char *bundle,
				    const void *report, size_t len, long accepted, long rejected,
				    const trail_signer *signer, uint64_t *entry, trail_error *err);

/*
 * A bundle named by a file path or by the "sha256:" digest of an object in
 * the store (s may be NULL for paths), read and verified.
 */
int trail_datanet_load_bundle(trail_store *s, const char *ref, trail_bundle **out,
			      char digest[72], trail_error *err);
/* The ledger entry that contributed bundle `digest` to datanet `name`. */
int trail_datanet_contribution_of(trail_store *s, const char *name, const char *digest,
				  uint64_t *entry, trail_error *err);
/* The datanet entry and its policy (NULL when it has none). */
int trail_datanet_policy(trail_store *s, const char *name, json_t **def, json_t **policy,
			 trail_error *err);

/* Called once per approved record of a snapshot; a non-zero return stops. */
typedef int (*trail_datanet_record_fn)(void *ctx, const json_t *record);
int trail_datanet_snapshot(trail_store *s, const char *name, uint64_t size,
			   trail_datanet_record_fn fn, void *ctx, trail_error *err);

#endif
