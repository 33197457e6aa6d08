/* shard — tensor parallelism (being written). */
#include "passes.h"

int pass_shard(kc *c, kerr *err)
{
    if (c->tp == 0)
        return 0;
    return kerr_add(err, "--tp: the shard pass is not written yet");
}
