/* test_invariant — kilnc compile --batch-invariant, proved without a GPU:
 *
 *   - lowered with it, llama, bloom, gemma, mixtral, qwen2_moe and deepseek_v2 (MoE, a shared
 *     expert, MLA) have no step chosen by the row count: the prefill schedule is the default
 *     kiln-GEMM lowering's prefill without its GEMV variants (every linear, the LM head's too,
 *     on kiln's GEMM at any rows), the decode schedule its decode without the GEMM variants
 *     (every linear on the GEMV at any batch, in row groups of LOWER_GEMV_GROUP_INVARIANT),
 *     every other step the same; the default lowering's GEMV launches one row group;
 *   - `kilnc compile --batch-invariant` of llama and deepseek_v2 compiles for sm_80 (NVRTC
 *     instantiates the grouped GEMV), its manifest says batch_invariant and kiln's GEMM, and
 *     `kiln inspect` says so (and says the default is not); the option is refused with --gemm
 *     cublaslt and --tp 2, naming why, and only compile takes it.
 * The manifest field's checks are in test_artifact, the scheduler's split steps in test_sched,
 * the grouped GEMV's rows in tests/gpu/ktest_gemv.c, and the tokens and logits of a model run
 * among 63 others in tests/gpu/run.sh's "batch invariance" section.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "artifact.h"
#include "lower.h"
#include "pipeline.h"
#include "testutil.h"

#define FIX "tests/fixtures/"
#define MAX_SEQS 64 /* the decode GEMV then runs up to 8 row groups */

static const char *KILNC, *KILN;

static const char *fixtures[] = {"llama", "bloom", "gemma", "mixtral", "qwen2_moe",
                                 "deepseek_v2"};

static void lower_with(kc *c, const char *name, int invariant)
{
    char dir[256];
    snprintf(dir, sizeof dir, FIX "%s", name);
    kc_opts o = {.need_weights = 1, .max_seq_len = 128, .max_seqs = MAX_SEQS, .max_tokens = 96,
                 .gemm_kiln = 1, .batch_invariant = invariant};
    kerr err;
    kerr_clear(&err);
    if (kc_open(c, dir, &o, &err) || kc_run(c, NULL, NULL, NULL, &err))
        fail_msg("%s: %s", name, kerr_msg(&err));
}

/* The grid dimension at T tokens of S sequences, as the runtime computes it (artifact.h), on a
 * device of 132 SMs. */
static long grid_at(const ka_grid *g, long T, long S)
{
    long v = g->t * T + g->s * S + g->add + 132L * g->sm;
    return (v + g->div - 1) / g->div;
}

static int is_kernel(const lowered *l, const ka_step *s, const char *op)
{
    return s->kind == KA_KERNEL && strstr(l->m.kernels[s->kernel].name, op) != NULL;
}

/* `call` (a kiln::gemv instance) with its MMAX, the 4th template argument, set to `mmax`. */
static void gemv_with_mmax(const char *call, int mmax, char *out, size_t cap)
{
    const char *p = call;
    for (int i = 0; i < 3; i++) {
        p = strstr(p, ", ");
        assert_non_null(p);
        p += 2;
    }
    const char *e = strstr(p, ", ");
    assert_non_null(e);
    snprintf(out, cap, "%.*s%d%s", (int)(p - call), call, mmax, e);
}

/* Whether the invariant build keeps a default step of size `z` in its prefill (`decode` 0: the
 * GEMM path, whatever the rows) or decode schedule (the GEMV path): the skinny GEMM (mid) in
 * neither. */
static int kept(ka_size z, int decode)
{
    if (z == KA_SIZE_ANY)
        return 1;
    if (z == KA_SIZE_MID)
        return 0;
    return decode ? z == KA_SIZE_SMALL : z != KA_SIZE_SMALL;
}

/* The invariant schedule `got` is the default schedule `ref` without the steps `kept` drops,
 * with every size condition gone and every other field the same, but the GEMV's groups: MMAX
 * LOWER_GEMV_GROUP_INVARIANT and grid x. Returns the linears kept. */
static int expect_kept(const char *fx, const char *which, const lowered *lr, const ka_step *ref,
                       int nref, const lowered *lg, const ka_step *got, int ngot, int decode)
{
    int k = 0, linears = 0;
    for (int i = 0; i < nref; i++) {
        if (!kept(ref[i].size, decode))
            continue;
        if (k == ngot)
            fail_msg("%s %s: ends at step %d, the default's step %d (%s) is missing", fx, which,
                     k, i, ref[i].label);
        const ka_step *s = &got[k++];
        if (s->size != KA_SIZE_ANY)
            fail_msg("%s %s step %d (%s): size %d, expected no condition", fx, which, k - 1,
                     s->label, (int)s->size);
        assert_int_equal(s->kind, ref[i].kind);
        assert_string_equal(s->label, ref[i].label);
        assert_int_equal(s->logits, ref[i].logits);
        assert_int_equal(s->rows, ref[i].rows);
        if (s->kind == KA_KERNEL && is_kernel(lg, s, "_gemv")) {
            char want[1024];
            gemv_with_mmax(lr->inst_call[ref[i].kernel], LOWER_GEMV_GROUP_INVARIANT, want,
                           sizeof want);
            assert_string_equal(lg->inst_call[s->kernel], want);
            assert_memory_equal(&s->grid[1], &ref[i].grid[1], 2 * sizeof s->grid[0]);
            assert_int_equal(s->nargs, ref[i].nargs);
        } else if (s->kind == KA_KERNEL) {
            assert_string_equal(lg->inst_call[s->kernel], lr->inst_call[ref[i].kernel]);
            assert_memory_equal(s->grid, ref[i].grid, sizeof s->grid);
            assert_int_equal(s->nargs, ref[i].nargs);
        }
        linears += ref[i].size != KA_SIZE_ANY && !is_kernel(lg, s, "_act_mul") &&
                   !is_kernel(lg, s, "_attn_decode");
    }
    if (k != ngot)
        fail_msg("%s %s: %d steps, the default less the steps of other sizes has %d", fx,
                 which, ngot, k);
    return linears;
}

static void test_schedules(void **state)
{
    (void)state;
    for (size_t f = 0; f < ARRAY_LEN(fixtures); f++) {
        const char *fx = fixtures[f];
        kc cd, ci;
        lower_with(&cd, fx, 0);
        lower_with(&ci, fx, 1);
        const lowered *ld = cd.low, *li = ci.low;
        assert_int_equal(ld->m.batch_invariant, 0);
        assert_int_equal(li->m.batch_invariant, 1);
        assert_int_equal(li->m.gemm_kiln, 1);
        int pre = expect_kept(fx, "prefill", ld, ld->m.prefill, ld->m.nprefill, li,
                              li->m.prefill, li->m.nprefill, 0);
        int dec = expect_kept(fx, "decode", ld, ld->m.decode, ld->m.ndecode, li, li->m.decode,
                              li->m.ndecode, 1);
        if (pre == 0 || dec == 0)
            fail_msg("%s: %d prefill and %d decode linears (the test proves nothing)", fx, pre,
                     dec);
        /* by kernel: no GEMV in prefill; no GEMM and no act_mul (its epilogue) in decode */
        for (int i = 0; i < li->m.nprefill; i++)
            if (is_kernel(li, &li->m.prefill[i], "_gemv"))
                fail_msg("%s prefill step %d (%s) is a GEMV", fx, i, li->m.prefill[i].label);
        for (int i = 0; i < li->m.ndecode; i++) {
            const ka_step *s = &li->m.decode[i];
            if (s->kind == KA_GEMM || is_kernel(li, s, "_gemm") || is_kernel(li, s, "_act_mul"))
                fail_msg("%s decode step %d (%s) is a GEMM or act_mul", fx, i, s->label);
        }
        /* the GEMV's grid: x the row groups of LOWER_GEMV_GROUP_INVARIANT rows (one in the
         * default build's GEMV steps, which run up to gemv_max rows), y the tiles */
        int gemvs = 0;
        for (int i = 0; i < li->m.ndecode; i++) {
            const ka_step *s = &li->m.decode[i];
            if (!is_kernel(li, s, "_gemv"))
                continue;
            gemvs++;
            const long rows[] = {1, 7, 8, 9, 17, MAX_SEQS};
            for (size_t r = 0; r < ARRAY_LEN(rows); r++) {
                assert_int_equal(grid_at(&s->grid[0], rows[r], rows[r]),
                                 (rows[r] + LOWER_GEMV_GROUP_INVARIANT - 1) /
                                     LOWER_GEMV_GROUP_INVARIANT);
                assert_int_equal(grid_at(&s->grid[1], rows[r], rows[r]),
                                 grid_at(&s->grid[1], 1, 1));
                assert_int_equal(grid_at(&s->grid[2], rows[r], rows[r]), 1);
            }
        }
        assert_int_equal(gemvs, dec);
        for (int i = 0; i < ld->m.ndecode; i++)
            if (is_kernel(ld, &ld->m.decode[i], "_gemv"))
                for (long r = 1; r <= ld->m.gemv_max; r++)
                    assert_int_equal(grid_at(&ld->m.decode[i].grid[0], r, r), 1);
        kc_free(&cd);
        kc_free(&ci);
    }
}

static void test_cli(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    const char *fx[] = {"llama", "deepseek_v2"};
    for (size_t f = 0; f < ARRAY_LEN(fx); f++) {
        char src[256], out[512];
        snprintf(src, sizeof src, FIX "%s", fx[f]);
        snprintf(out, sizeof out, "%s/%s", tmp, fx[f]);
        const char *args[] = {"compile", src, "-o", out, "--batch-invariant", "--sm", "80",
                              "--max-seq-len", "64", "--max-batch", "64", "--max-tokens", "96",
                              NULL};
        tu_run r = tu_run_bin(tmp, KILNC, args);
        EXPECT_CODE(r, 0);
        tu_run_free(&r);
        char mk[600];
        snprintf(mk, sizeof mk, "%s/model.kiln", out);
        kerr err;
        kerr_clear(&err);
        ka_file *kf = ka_read(mk, &err);
        if (!kf)
            fail_msg("%s: %s", fx[f], kerr_msg(&err));
        assert_int_equal(kf->m.batch_invariant, 1);
        assert_int_equal(kf->m.gemm_kiln, 1);
        assert_int_equal(kf->m.max_seqs, 64);
        ka_file_free(kf);
        const char *ia[] = {"inspect", out, "--schedule", NULL};
        r = tu_run_bin(tmp, KILN, ia);
        EXPECT_CODE(r, 0);
        assert_contains(r.out, "batching     invariant (kilnc compile --batch-invariant)");
        assert_contains(r.out, "gemm         kiln (kilnc compile --gemm kiln): 0 cuBLASLt steps");
        assert_not_contains(r.out, "gemv_max]"); /* no step chosen by the rows */
        assert_contains(r.out, "_gemv\n");
        assert_contains(r.out, "_gemm\n");
        tu_run_free(&r);
    }
    /* the default says it is not invariant */
    char out[512];
    snprintf(out, sizeof out, "%s/llama_default", tmp);
    const char *args[] = {"compile", FIX "llama", "-o", out, "--gemm", "kiln", "--sm", "80", NULL};
    tu_run r = tu_run_bin(tmp, KILNC, args);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    const char *ia[] = {"inspect", out, NULL};
    r = tu_run_bin(tmp, KILN, ia);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "batching     a row's logits may differ in their last bits with the "
                           "batch around it (kilnc compile --batch-invariant makes them "
                           "invariant)\n");
    tu_run_free(&r);
    tu_rmrf(tmp);
}

static void test_cli_refusals(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    /* cuBLASLt picks its algorithm by the rows: refused, in either order */
    const char *c1[] = {"compile", FIX "llama", "-o", tmp, "--batch-invariant", "--gemm",
                        "cublaslt", NULL};
    const char *c2[] = {"compile", FIX "llama", "-o", tmp, "--gemm=cublaslt", "--batch-invariant",
                        NULL};
    const char **cs[] = {c1, c2};
    for (size_t i = 0; i < ARRAY_LEN(cs); i++) {
        tu_run r = tu_run_bin(tmp, KILNC, cs[i]);
        EXPECT_CODE(r, 2);
        assert_starts_with(r.err, "kilnc compile: error: --batch-invariant needs kiln's own GEMM "
                                  "(cuBLASLt picks its algorithm by the number of rows, so a "
                                  "row's result depends on the batch): drop --gemm cublaslt\n");
        tu_run_free(&r);
    }
    const char *tp[] = {"compile", FIX "llama", "-o", tmp, "--batch-invariant", "--tp", "2", NULL};
    tu_run r = tu_run_bin(tmp, KILNC, tp);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc compile: error: --batch-invariant with --tp 2: the "
                              "all-reduces sum the ranks' parts in an order NCCL picks by "
                              "message size");
    tu_run_free(&r);
    /* only compile takes it */
    const char *graph[] = {"graph", FIX "llama", "--batch-invariant", NULL};
    r = tu_run_bin(tmp, KILNC, graph);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc graph: error: unknown option '--batch-invariant'\n");
    tu_run_free(&r);
    const char *help[] = {"compile", "--help", NULL};
    r = tu_run_bin(tmp, KILNC, help);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "  --batch-invariant  every request's tokens and logits");
    tu_run_free(&r);
    tu_rmrf(tmp);
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_invariant");
    KILN = tu_binary("KILN", "test_invariant");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedules),
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_cli_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
