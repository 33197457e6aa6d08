/* test_lower — lower.c's check that every kernel step's arguments fit its kernel's parameters
 * (lower_check_args), proved without a GPU: the kinds the runtime packs into each C type are
 * accepted (the kiln_step by value, device pointers, int from I32/M/RANK, float from F32), and a
 * step with an argument of the wrong kind, one too few or one too many is refused naming the step,
 * the argument and the parameter. lower() runs it on every step it emits, so every fixture the
 * other tests compile passes through it; this file shows it can fail.
 */
#include "artifact.h"
#include "lower.h"
#include "testutil.h"

#define GEMV_PARAMS "const kiln_step st, const DT *x, const DT *w, const DT *bias, void *y, int M"

/* A step of the given argument kinds, labelled "L0.attn.o". */
static ka_step step_of(const ka_arg_kind *k, int n)
{
    ka_step s;
    memset(&s, 0, sizeof s);
    s.kind = KA_KERNEL;
    s.label = "L0.attn.o";
    for (int i = 0; i < n; i++)
        s.args[i] = (ka_arg){.kind = k[i]};
    s.nargs = n;
    return s;
}

static void expect_refused(const char *params, const ka_arg_kind *k, int n, const char *says)
{
    ka_step s = step_of(k, n);
    kerr err;
    kerr_clear(&err);
    assert_int_equal(lower_check_args(params, &s, &err), -1);
    assert_contains(kerr_msg(&err), "step 'L0.attn.o': ");
    assert_contains(kerr_msg(&err), says);
}

static void test_fits(void **state)
{
    (void)state;
    kerr err;
    kerr_clear(&err);
    const ka_arg_kind gemv[] = {KA_ARG_STEP, KA_ARG_BUF, KA_ARG_WEIGHT, KA_ARG_NULL,
                                KA_ARG_SCRATCH, KA_ARG_M};
    ka_step s = step_of(gemv, 6);
    assert_int_equal(lower_check_args(GEMV_PARAMS, &s, &err), 0);
    /* every pointer kind, int from I32 and RANK, float from F32 */
    const ka_arg_kind many[] = {KA_ARG_STEP,   KA_ARG_CONST,  KA_ARG_KV_K, KA_ARG_KV_V,
                                KA_ARG_LOGITS, KA_ARG_OUT,    KA_ARG_I32,  KA_ARG_RANK};
    s = step_of(many, 8);
    assert_int_equal(lower_check_args("const kiln_step st, const float *c, const DT *k, "
                                      "const unsigned char *v, float *logits, float *out, int a, "
                                      "int row0",
                                      &s, &err),
                     0);
    const ka_arg_kind f[] = {KA_ARG_STEP, KA_ARG_BUF, KA_ARG_BUF, KA_ARG_F32};
    s = step_of(f, 4);
    assert_int_equal(lower_check_args("const kiln_step st, const DT *x, DT *out, float s", &s, &err),
                     0);
}

static void test_refused(void **state)
{
    (void)state;
    /* a float where the pointer goes, a pointer where the int goes, the step struct elsewhere */
    const ka_arg_kind swapped[] = {KA_ARG_STEP, KA_ARG_F32, KA_ARG_WEIGHT, KA_ARG_NULL,
                                   KA_ARG_SCRATCH, KA_ARG_M};
    expect_refused(GEMV_PARAMS, swapped, 6, "argument 1 is ");
    expect_refused(GEMV_PARAMS, swapped, 6, "parameter 'const DT *x' of its kernel");
    const ka_arg_kind int_ptr[] = {KA_ARG_STEP, KA_ARG_BUF, KA_ARG_WEIGHT, KA_ARG_NULL,
                                   KA_ARG_SCRATCH, KA_ARG_BUF};
    expect_refused(GEMV_PARAMS, int_ptr, 6, "argument 5 is ");
    const ka_arg_kind no_step[] = {KA_ARG_BUF, KA_ARG_BUF, KA_ARG_WEIGHT, KA_ARG_NULL,
                                   KA_ARG_SCRATCH, KA_ARG_M};
    expect_refused(GEMV_PARAMS, no_step, 6, "argument 0 is ");
    const ka_arg_kind f[] = {KA_ARG_STEP, KA_ARG_BUF, KA_ARG_BUF, KA_ARG_I32};
    expect_refused("const kiln_step st, const DT *x, DT *out, float s", f, 4, "argument 3 is ");
    /* one too few, one too many */
    const ka_arg_kind gemv[] = {KA_ARG_STEP, KA_ARG_BUF, KA_ARG_WEIGHT, KA_ARG_NULL,
                                KA_ARG_SCRATCH, KA_ARG_M, KA_ARG_I32};
    expect_refused(GEMV_PARAMS, gemv, 5, "5 arguments for a kernel of 6 parameters");
    expect_refused(GEMV_PARAMS, gemv, 7, "7 arguments for a kernel of 6 parameters");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
