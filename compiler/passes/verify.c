/* verify — the IR's invariants, checked after building and after every pass (graph.c holds
 * the rules; this is the pass-shaped entry point). */
#include "passes.h"

int pass_verify(kc *c, kerr *err) { return graph_verify(c->g, err); }
