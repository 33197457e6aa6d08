/* ktest_gemv — kernel tests of templates/gemv.cuh (see ktest.h). Not written yet. */
#include "ktest.h"

void ktest_gemv(kt *t) { (void)t; }
