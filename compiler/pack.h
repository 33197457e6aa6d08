/* pack — writes the weight shard: every weight the schedule reads, in runtime layout (fused
 * concatenations and interleaved views materialised) and in the compute dtype, into
 * shards/rank0-of-1.safetensors, with a progress bar on stderr. Streams one tensor at a time,
 * so memory holds at most one tensor (plus, for views that reorder, its source), and hashes the
 * data as it goes. */
#ifndef KILN_PACK_H
#define KILN_PACK_H

#include "kc.h"
#include "lower.h"

/* show_progress: draw the bar (when stderr is a terminal, or always when > 1). Fills the shard's
 * part of the manifest `m`: its header fingerprint, the chunked XXH3 of its data (computed from
 * the bytes as they are written) and the shard id, which the shard also carries in its
 * __metadata__ (artifact.h says how they bind the shard to model.kiln). */
int pack_shard(kc *c, const lowered *l, const char *path, int show_progress, ka_manifest *m,
               kerr *err);

/* The packed bytes of one constant node in dtype dt (BF16 or F16); for tests. NULL on error. */
void *pack_const(const kgraph *g, int id, st_dtype dt, kerr *err);

#endif
