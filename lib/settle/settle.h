/*
 * Settlement: an epoch's fees paid out in exact integer minor units.
 *
 * Input lines (NDJSON; attr-settle(1) gives the full rules):
 *
 *   attribution record (attr-score's output); settlement reads only
 *     "event"        string, or object with a string "id"          (required)
 *     "usage"        {"prompt_tokens","completion_tokens"}          (required)
 *     "contributors" [{"contributor","share"}]; shares > 0 are paid (required)
 *     "model"        string or null: whose model answered
 *     "clusters"     [{"members":[c...],"first":c}]: in this answer every
 *                    member's share is credited to "first"
 *     "top"          [{"contributor","score"}]: negative scores add up
 *                    toward the negative-influence penalty
 *     "poisoning"    [c...]: one poisoning report per name
 *   flags line
 *     {"type":"flags","contributor","rejected","flagged","poisoning"}
 *                    counts, summed over lines
 *
 * Every other member is ignored. Shares and scores are read from their
 * decimal text as integers in units of 1e-9 (rounded toward zero); fees are
 * integers; nothing is computed in floating point. Per payee the handle
 * keeps exact 128-bit sums, so memory grows with the number of payees, not
 * of records, and the result does not depend on the order of the lines.
 *
 * Ownership: the handle owns everything it accumulates; results returned
 * through json_t ** are the caller's (json_decref). A handle is used by one
 * thread at a time.
 */
#ifndef TRAIL_SETTLE_H
#define TRAIL_SETTLE_H
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "core/core.h"

typedef struct trail_settle trail_settle;

/*
 * The policy:
 *   {"fee_per_1k_prompt": N, "fee_per_1k_completion": N,       minor units
 *    "split_bps": {"platform","model","stakers","contributors"},  sum 10000
 *    "platform": name, "model_owner": name, "model_owners": {model: name},
 *    "stakes": {name: amount},
 *    "penalty": {"max_rejected","max_flagged","max_poisoning": counts,
 *                "min_influence": number, "slash_bps": 0..10000}}
 * Only split_bps is required. Unknown keys and bad values: TRAIL_EDATA.
 * The policy is copied.
 */
int trail_settle_new(const json_t *policy, trail_settle **out, trail_error *err);
void trail_settle_free(trail_settle *s);

/*
 * Account one NDJSON line (without its newline): a record or a flags line.
 * A line of white space is skipped. TRAIL_EDATA (bad JSON, missing or
 * malformed field) or TRAIL_ELIMIT (a value or the epoch's fees out of
 * range) leave the sums as they were before the line.
 */
int trail_settle_line(trail_settle *s, const char *line, size_t len, trail_error *err);
/* The same for a value already parsed (it is serialised first). */
int trail_settle_add(trail_settle *s, const json_t *rec, trail_error *err);
/*
 * Every line of `in`; errors carry `src` and the line number. The longest
 * line accepted is 256 MiB.
 */
int trail_settle_read(trail_settle *s, FILE *in, const char *src, trail_error *err);
/*
 * The same with `threads` workers (1: trail_settle_read), each with its own
 * sums, added into s at the end: the result is the same whatever the
 * number of threads; an error names the first bad line in input order.
 */
int trail_settle_read_threads(trail_settle *s, FILE *in, const char *src, int threads, trail_error *err);

/* Attribution records accounted so far; payees known (named in the policy or the input). */
uint64_t trail_settle_records(const trail_settle *s);
size_t trail_settle_payees(const trail_settle *s);

/*
 * The result, as an array of output lines: one
 * {"type":"payout","to","role","amount"} per payee with amount > 0 (roles in
 * the order platform, model, stakers, contributor; payees by name, bytewise),
 * then {"type":"epoch","epoch","fees","paid","retained","records","flags",
 * "unattributed","unstaked","withheld":[...],"slashed":[...],
 * "inputs_digest","policy_digest","payouts_digest","digest"}.
 * paid + retained = fees is checked (with every other invariant):
 * TRAIL_EINTERNAL if it fails. May be called more than once.
 */
int trail_settle_result(trail_settle *s, const char *epoch, json_t **out, trail_error *err);

/* A table of a result for people. */
int trail_settle_print_text(const json_t *result, FILE *out);

/*
 * With a store: settle `epoch` exactly once. Takes the ledger's writer lock
 * without waiting (TRAIL_EUNAVAIL while another writer holds it). If the
 * ledger holds a settlement of `epoch` with the same inputs and policy,
 * *out is the recorded result and *recorded is set; with other inputs or
 * policy, TRAIL_EVERIFY. Otherwise the result is stored as an object and a
 * `settlement` entry, signed by `key` (else by the store's operator key), is
 * appended and committed: the commit point, so a crash before it leaves
 * nothing behind and a re-run settles once.
 */
struct trail_store;
struct trail_signer;
int trail_settle_record(trail_settle *s, struct trail_store *st, const char *epoch,
			const struct trail_signer *key, json_t **out, int *recorded, trail_error *err);

/*
 * The anchor of an input: the `attribution-batch` entry of the store's
 * ledger whose records_object is `digest` (the sha256 of the input's exact
 * bytes, "sha256:<hex>"), checked against what was read from it: `records`
 * attribution records and, when the entry names an epoch, `epoch`. With
 * `want` (not UINT64_MAX) only entry `want` is tried, and anything but a
 * matching attribution-batch entry there is TRAIL_EVERIFY. Found: *index
 * is the entry, and {"entry","records_object"} is added to the anchors
 * that trail_settle_record() writes into the settlement entry as
 * "batches"; a batch found whose epoch or record count differs is
 * TRAIL_EVERIFY. Not found (and no `want`): *index is UINT64_MAX, TRAIL_OK.
 */
int trail_settle_anchor(trail_settle *s, struct trail_store *st, const char *epoch, const char *digest,
			uint64_t records, uint64_t want, uint64_t *index, trail_error *err);

/*
 * Stakes posted in the ledger: a `stake` entry {"type":"stake","amount"}
 * signed by the staker (its "signer" is the staker's key) sets that
 * staker's stake to amount (an integer from 0 to 2^53-1) from then on.
 * trail_settle_post_stake appends and commits one (*index: its entry).
 */
int trail_settle_post_stake(struct trail_store *st, const struct trail_signer *staker, int64_t amount,
			    uint64_t *index, trail_error *err);
/* Whether the policy takes its stakes from the ledger ("stakes": "ledger"). */
int trail_settle_stakes_from_ledger(const trail_settle *s);
/*
 * Under such a policy: each staker's latest `stake` entry of the ledger
 * before the epoch's settlement entry (all of them when there is none yet,
 * so a re-run sees the stakes the first run saw), its signature checked
 * (TRAIL_EVERIFY otherwise). Each counts as an input line (the inputs
 * digest covers it) and {"entry","staker","amount"} goes into the
 * settlement entry as "stakes". Call once, before the result.
 */
int trail_settle_ledger_stakes(trail_settle *s, struct trail_store *st, const char *epoch, trail_error *err);

/* ---- shards (settle_shard.c) ------------------------------------------------------------- */

/*
 * An epoch settled in shards: each accounts a range of the lines of all the
 * inputs (in order, every line counted, blank ones too) and writes its
 * sums; the merge adds them into one handle, whose result is the one
 * pass's, byte for byte.
 *
 * Read `in` (named src in errors), whose first line is line *at of all the
 * inputs, accounting the lines in [lo, hi) (lo == hi: none) and advancing
 * *at past its lines; digest (unless NULL) gets the SHA-256 of its bytes.
 */
int trail_settle_read_range(trail_settle *s, FILE *in, const char *src, uint64_t *at, uint64_t lo, uint64_t hi,
			    char digest[TRAIL_DIGEST_STRLEN], trail_error *err);
/*
 * The partial, appended to out (canonical JSON, one value a line). Line 1:
 *   {"type":"settlement-partial","version":1,"epoch","policy":<digest of
 *    the policy's canonical JSON>,"inputs":[{"name","digest","lines"}],
 *    "lines":N,"lo","hi","payees":P,
 *    "sums":{"fees","lowconf","lowconf_records","adapter_records",
 *            "records","flag_lines": decimal strings,
 *            "inputs": hex of the inputs digest's sum,
 *            "input_records":[attribution records of each input in the range]}}
 * then P lines {"payee","acc","mfee","neg","rejected","flagged","poisoning",
 * "rec","flag"} (decimal strings: the handle's exact 128-bit sums,
 * settle_int.h; rec and flag booleans: named by a record, by a flags line).
 * records: input_records, an array of integers. A policy whose stakes are
 * the ledger's has them read by the merge, not by the shards.
 */
int trail_settle_partial(const trail_settle *s, const char *epoch, const json_t *inputs, const json_t *records,
			 uint64_t lines, uint64_t lo, uint64_t hi, trail_buf *out, trail_error *err);
/*
 * Add the partials (files, any order) into s, a handle of the same policy
 * with nothing accounted: each of `epoch`, the policy and the same inputs,
 * the ranges covering every line exactly once (TRAIL_EDATA naming a gap,
 * an overlap, a part given twice, a foreign or cut one). *inputs: the
 * partials' inputs, each with "records", its attribution records in all
 * (new reference), for trail_settle_anchor.
 */
int trail_settle_merge(trail_settle *s, const char *epoch, const char *const *paths, size_t n, json_t **inputs,
		       trail_error *err);

#endif
