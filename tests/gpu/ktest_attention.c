/* ktest_attention — kernel tests of templates/attention.cuh (see ktest.h). Not written yet. */
#include "ktest.h"

void ktest_attention(kt *t) { (void)t; }
