/* pack — writes the weight shard: every weight the schedule reads, in runtime layout (fused
 * concatenations and interleaved views materialised) and in the compute dtype, into
 * shards/rank0-of-1.safetensors, with a progress bar on stderr. Streams one tensor at a time,
 * so memory holds at most one tensor (plus, for views that reorder, its source). */
#ifndef KILN_PACK_H
#define KILN_PACK_H

#include "kc.h"
#include "lower.h"

/* show_progress: draw the bar (when stderr is a terminal, or always when > 1). */
int pack_shard(kc *c, const lowered *l, const char *path, int show_progress,
               uint64_t *header_fnv, kerr *err);

/* The packed bytes of one constant node in dtype dt (BF16 or F16); for tests. NULL on error. */
void *pack_const(const kgraph *g, int id, st_dtype dt, kerr *err);

#endif
