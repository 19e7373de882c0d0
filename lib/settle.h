/*
 * Settlement: an epoch's fees paid out in exact integer minor units.
 *
 * Input: attribution records (attr-score's output); settlement reads
 *   "usage"        {"prompt_tokens","completion_tokens"}: the fee
 *   "contributors" [{"contributor","share"}]: positive shares only are paid
 *   "clusters"     [{"members":[...],"first":c}]: copies credited once, to
 *                  the earliest contributor of the cluster
 *   "top"          [{"contributor","score"}]: negative scores count toward
 *                  the negative-influence penalty
 * and optional flags {"contributor","rejected","flagged","poisoning"}.
 *
 * Arithmetic: fee numerators and contributor weights (shares at 1e9 scale)
 * are summed exactly in 128-bit integers, so the result does not depend on
 * input order; every split uses largest-remainder rounding with ties broken
 * by payee name; payouts + retained = fees is asserted on every run.
 * Memory grows with payees, not records.
 *
 * Ownership: the settlement handle owns everything it accumulates.
 */
#ifndef TRAIL_SETTLE_H
#define TRAIL_SETTLE_H

#include <jansson.h>

#include "trail.h"

typedef struct trail_settle trail_settle;

/*
 * The policy: {"fee_per_1k_prompt", "fee_per_1k_completion" (integers),
 * "split_bps": {"platform","model","stakers","contributors"} (sum 10000),
 * "platform": name, "model_owner": name, "stakes": {contributor: amount},
 * "penalty": {"max_rejected","max_flagged","max_poisoning","min_influence",
 * "slash_bps"}}. Unknown keys are TRAIL_EDATA.
 */
int trail_settle_new(const json_t *policy, trail_settle **out, trail_error *err);
void trail_settle_free(trail_settle *s);

/* Account one attribution record; TRAIL_EDATA names what is wrong with it. */
int trail_settle_add(trail_settle *s, const json_t *rec, trail_error *err);
/* Account one flags line {"contributor","rejected","flagged","poisoning"}. */
int trail_settle_flag(trail_settle *s, const json_t *flags, trail_error *err);

/*
 * The result: an array of {"type":"payout","to","role","amount"} (amount > 0,
 * sorted by role then payee), {"type":"slash","to","amount"} and, last,
 * {"type":"epoch","epoch","fees","paid","retained","records","inputs_digest",
 * "policy_digest","digest"}. TRAIL_EINTERNAL if conservation failed.
 */
int trail_settle_result(trail_settle *s, const char *epoch, json_t **out, trail_error *err);

/*
 * With a store: settle `epoch` exactly once. If the ledger holds a
 * settlement for it with the same inputs and policy, *out is the recorded
 * result (no new entry); with other inputs, TRAIL_EVERIFY. Otherwise the
 * result is stored as an object and a `settlement` entry (signed by key when
 * given) is appended: the commit point, so a crash before it leaves nothing
 * and a re-run settles once. The writer lock is taken without waiting
 * (TRAIL_EUNAVAIL while another run holds it).
 */
struct trail_store;
struct trail_signer;
int trail_settle_record(trail_settle *s, struct trail_store *st, const char *epoch,
			const struct trail_signer *key, json_t **out, int *recorded, trail_error *err);

#endif
