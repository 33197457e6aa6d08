/* ktest_moe — kernel tests of templates/moe.cuh (see ktest.h). Not written yet. */
#include "ktest.h"

void ktest_moe(kt *t) { (void)t; }
