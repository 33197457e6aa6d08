/* pack — writes the weight shards: every weight the schedule reads, in runtime layout (fused
 * concatenations and interleaved views materialised) and in the compute dtype, or quantised for
 * a linear weight that lower.c finds packable (pack_qblock: FP8 or INT4), one file per rank
 * (shards/rank<r>-of-<tp>.safetensors: the same tensor names and shapes on every rank, each with
 * its own parts of the SHARD constants), with a progress bar on stderr. Ranks are packed on
 * parallel threads; each streams one tensor at a time, so memory holds at most one tensor per
 * thread (plus, for views that reorder, its source), and hashes the data as it goes. */
#ifndef KILN_PACK_H
#define KILN_PACK_H

#include "kc.h"
#include "lower.h"
#include "quant.h"

/* Writes OUT_DIR/shards/ (created) with m->tp shards at m->shards[r].path (lower sets both).
 * show_progress: draw the bar (when stderr is a terminal, or always when > 1). Fills every
 * shard's entry of the manifest `m`: its header fingerprint, the chunked XXH3 of its data
 * (computed from the bytes as they are written) and the shard id, which the shard also carries
 * in its __metadata__ (artifact.h says how they bind the shards to model.kiln), and
 * m->shard_chunk. */
int pack_shards(kc *c, const lowered *l, const char *out_dir, int show_progress, ka_manifest *m,
                kerr *err);

/* Whether constant `id` can be packed for rank `rank` as a quantised weight (templates/gemv.cuh:
 * gemv_fp8's e4m3 bytes and float scales per row, or gemv_int4's 4-bit values with scales and
 * zero points per row and group): its value is the quantised numbers of weights that quant.h
 * made (quant_rows: a published FP8 or INT4 checkpoint's, --quant fp8's), all of one kind, moved
 * only by ops that keep rows whole or cut K at block edges. Returns the K block of the scales (0
 * for one per row) and sets *kind, or -1 and QROWS_NONE when it cannot. */
int64_t pack_qblock(const kc *c, int id, int rank, qrows_kind *kind);

/* The packed bytes of one constant node for rank `rank` (0..g->tp-1) in dtype dt (BF16 or F16);
 * for tests. NULL on error. */
void *pack_const(const kgraph *g, int id, int rank, st_dtype dt, kerr *err);

#endif
