/* ktest_sample — kernel tests of templates/sample.cuh (see ktest.h). Not written yet. */
#include "ktest.h"

void ktest_sample(kt *t) { (void)t; }
