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
 *                  "bundle","decision":"approve|reject","reason"?,
 *                  "rejected":[{"n","record"}...]?} by the owner; the latest
 *                  decision for a contribution counts; an approval with
 *                  "rejected" approves the bundle's other records
 *   validation    {"type":"validation","datanet","bundle","report_object",
 *                  "accepted","rejected"} by whoever ran the validation
 *
 * A snapshot NAME@SIZE is the approved records as of tree size SIZE (the
 * first SIZE ledger entries), in ledger order of their contributions, then
 * bundle order: the exact set a model is trained on. Each record comes with
 * "record" (its id), "contributor", "bundle" and "entry" (the contribution's
 * ledger index) beside its own fields. A record contributed twice appears
 * twice, once per contribution.
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

/*
 * A record for `schema`: a JSON object of string fields holding the
 * schema's fields, and none of those a snapshot adds (record, contributor,
 * bundle, entry). Extra fields are allowed.
 */
int trail_datanet_check_record(const json_t *rec, const char *schema, trail_error *err);

/*
 * A signed datanet entry by `owner`; TRAIL_EDATA if the name is taken,
 * TRAIL_EUSAGE for a bad name or schema. policy (may be NULL) must be one
 * trail_policy_from_json accepts (TRAIL_EDATA naming the key if not); it is
 * stored as an object in canonical form.
 */
int trail_datanet_create(trail_store *s, const char *name, const char *schema,
			 const char *license, const json_t *policy, const trail_signer *owner,
			 uint64_t *entry, trail_error *err);

/* The datanet entry of `name` as of tree size `size` (0: all). */
int trail_datanet_find(trail_ledger *l, const char *name, uint64_t size, json_t **def,
		       uint64_t *entry, trail_error *err);

/*
 * Add a bundle as a contribution, all or nothing: verified, stored as an
 * object, recorded in a signed entry and committed. The bundle must be
 * for `name`, signed by `contributor`, and its records must fit the
 * datanet's schema. Concurrent contributors wait for the ledger's writer
 * lock. *receipt gets {"datanet","entry","bundle","records","checkpoint",
 * "proof"}: the checkpoint note of the tree holding the entry and the
 * entry's C2SP tlog-proof, both verifiable offline.
 */
int trail_datanet_contribute(trail_store *s, const char *name, const void *bundle, size_t len,
			     const trail_signer *contributor, json_t **receipt, trail_error *err);

/* The owner's decision on the contribution recorded at ledger entry `contribution`. */
int trail_datanet_decide(trail_store *s, const char *name, uint64_t contribution, int approve,
			 const char *reason, const trail_signer *owner, uint64_t *entry,
			 trail_error *err);
/*
 * The same; an approval may leave records out: `rejected` (NULL or an
 * array of {"n": position in records.ndjson from 1, "record": its id},
 * not all of the bundle) goes into the entry, in bundle order, and those
 * records are not in snapshots while this decision is the latest. A
 * position names one copy of a record the bundle holds twice.
 * TRAIL_EUSAGE for a record not in the bundle at that position, or for
 * rejecting every record (reject the bundle instead).
 */
int trail_datanet_approve_records(trail_store *s, const char *name, uint64_t contribution,
				  int approve, const json_t *rejected, const char *reason,
				  const trail_signer *owner, uint64_t *entry, trail_error *err);

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

/*
 * Snapshots. trail_datanet_iter_open reads the ledger as of tree size `size`
 * (0: the committed tree now) and finds the contributions the owner had
 * approved by then (the latest decision counts); trail_datanet_iter_next
 * gives their records one by one, *rec a new reference, NULL at the end.
 * A bundle that does not match its contribution entry (datanet,
 * contributor, record count, root) stops the read with TRAIL_EVERIFY.
 * Entries appended after `size` change nothing: the same store, name and
 * size give the same records in the same order.
 */
typedef struct trail_datanet_iter trail_datanet_iter;
int trail_datanet_iter_open(trail_store *s, const char *name, uint64_t size,
			    trail_datanet_iter **out, trail_error *err);
int trail_datanet_iter_next(trail_datanet_iter *it, json_t **rec, trail_error *err);
/* The tree size the snapshot is read at (the ledger's size when 0 was given). */
uint64_t trail_datanet_iter_size(const trail_datanet_iter *it);
void trail_datanet_iter_free(trail_datanet_iter *it);

/*
 * The same, through a callback called once per record; a non-zero return
 * stops the walk and is returned.
 */
typedef int (*trail_datanet_record_fn)(void *ctx, const json_t *record);
int trail_datanet_snapshot(trail_store *s, const char *name, uint64_t size,
			   trail_datanet_record_fn fn, void *ctx, trail_error *err);

#endif
