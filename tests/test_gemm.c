/* test_gemm — what runs the prefill-sized linears (kilnc compile --gemm kiln|cublaslt), proved
 * without a GPU:
 *
 *   - lowered with --gemm kiln, llama, mixtral, bloom, bert, qwen2_cls and deepseek_v2 hold no
 *     cuBLASLt step, and each cuBLASLt step of the default lowering is, at the same place in
 *     the same schedule, a launch of kiln's GEMM kernel (templates/gemm.cuh) with the same
 *     label, size and row conditions, the same operands, the shape in its template arguments
 *     and the grid kernels/kiln_gemm.h gives for it; everything else is the same step. When
 *     every target is sm_90a, the same holds of the Hopper kernel (templates/gemm90.cuh) and
 *     its own block, shared memory and grid;
 *   - the roofline (kiln bench) reads the same model from both;
 *   - an INT4 linear (--quant int4, an AWQ checkpoint) has, in the decode schedule of the default
 *     build and of --gemm kiln, gemm_skinny_int4 between its GEMV (up to gemv_max rows) and its
 *     GEMV of 16-row groups (past skinny_max), with lower_skinny_shape's launch; none with
 *     --batch-invariant or when no step has more than gemv_max rows;
 *   - when a target is sm_90 or newer (the default --sm has sm_90a), each 16-bit GEMV of up to
 *     gemv_max rows is two steps: templates/gemv_stream.cuh's for one row on sm_90+ code and
 *     gemv.cuh's for the other rows (the same operands, kernels/kiln_gemm.h's launch); none
 *     with --sm 80 alone or --batch-invariant;
 *   - `kilnc compile --gemm kiln` of those fixtures compiles for sm_80 and sm_90a (the default
 *     --sm) and `kiln inspect` says kiln and 0 cuBLASLt steps, the default says cublaslt and
 *     counts them; --gemm with another value, or none, is refused naming the flag; with
 *     --sm 90a alone, llama compiles with gemm90.cuh and keeps PTX for compute_90a;
 *   - an artifact with no cuBLASLt step started without a GPU fails on the GPU, not on
 *     cuBLASLt.
 * The kernel itself is tested on the GPU (tests/gpu/ktest_gemm.c), the models end to end by
 * tests/gpu/run.sh's "kiln GEMM" section.
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
#include "roofline.h"
#include "testutil.h"
#include "../kernels/kiln_gemm.h"

#define FIX "tests/fixtures/"

static const char *KILNC, *KILN;

static const char *fixtures[] = {"llama", "mixtral", "bloom", "bert", "qwen2_cls", "deepseek_v2"};
/* compiled by NVRTC through kilnc compile: mixtral's and bloom's LM heads (500 and 700 columns)
 * wait for the kernel to take an N that is not a multiple of 8 */
static const char *compiled[] = {"llama", "mixtral", "bloom", "bert", "qwen2_cls", "deepseek_v2"};

static void lower_opts(kc *c, const char *name, const kc_opts *o)
{
    char dir[256];
    snprintf(dir, sizeof dir, FIX "%s", name);
    kerr err;
    kerr_clear(&err);
    if (kc_open(c, dir, o, &err) || kc_run(c, NULL, NULL, NULL, &err))
        fail_msg("%s: %s", name, kerr_msg(&err));
}

static void lower_with(kc *c, const char *name, int gemm_kiln, int sm90a_only)
{
    kc_opts o = {.need_weights = 1, .max_seq_len = 128, .max_seqs = 4, .max_tokens = 64,
                 .gemm_kiln = gemm_kiln, .sm90a_only = sm90a_only};
    lower_opts(c, name, &o);
}

static int same_arg(const ka_arg *a, const ka_arg *b)
{
    return a->kind == b->kind && a->i == b->i && a->f == b->f;
}

/* The same argument in kiln's schedule (a) as in cuBLASLt's (b): a scratch offset the same (the
 * counters at its start) or moved by the one shift of kiln's temporaries (*shift, set by the first
 * that moves: the skinny GEMM's counters come before every node's temporaries, 256-byte blocks
 * of them). */
static int same_shifted(const ka_arg *a, const ka_arg *b, long long *shift)
{
    if (a->kind != KA_ARG_SCRATCH || b->kind != KA_ARG_SCRATCH || a->i == b->i)
        return same_arg(a, b);
    if (*shift < 0)
        *shift = a->i - b->i;
    return *shift > 0 && *shift % 256 == 0 && a->i - b->i == *shift;
}

/* The grid dimension at T tokens of S sequences, as the runtime computes it (artifact.h), on a
 * device of 132 SMs. */
static long grid_at(const ka_grid *g, long T, long S)
{
    long v = g->t * T + g->s * S + g->add + 132L * g->sm;
    return (v + g->div - 1) / g->div;
}

/* Step `k` (kiln) is kiln's GEMM doing what cuBLASLt step `c` does: gemm.cuh's, or gemm90.cuh's
 * when `h`. */
static void expect_kiln_gemm(const char *fx, const lowered *l, const ka_step *c, const ka_step *k,
                             long long *shift, int h)
{
    const int bm = h ? KILN_GEMM90_BM : KILN_GEMM_BM,
              bn = h ? KILN_GEMM90_BN(c->n) : KILN_GEMM_BN;
    const char *name = l->m.kernels[k->kernel].name;
    if (k->kind != KA_KERNEL || !strstr(name, "_gemm"))
        fail_msg("%s: step %s is %s, expected kiln's GEMM", fx, c->label,
                 k->kind == KA_KERNEL ? name : "not a kernel");
    assert_string_equal(k->label, c->label);
    /* past gemv_max rows; past skinny_max where kiln's schedule gives the linear a skinny step */
    assert_int_equal(c->size, KA_SIZE_LARGE);
    assert_true(k->size == KA_SIZE_LARGE || k->size == KA_SIZE_HUGE);
    assert_int_equal(k->rows, c->rows);
    assert_int_equal(k->logits, c->logits);
    assert_int_equal(l->m.kernels[k->kernel].block, h ? KILN_GEMM90_THREADS : KILN_GEMM_THREADS);
    assert_int_equal(l->m.kernels[k->kernel].smem,
                     h ? KILN_GEMM90_SMEM(2, bn) : KILN_GEMM_SMEM(2)); /* bf16 */
    /* wrapper: gemm.cuh's (M, x, w, bias, y); gemm90.cuh's (M, x's map, w's map, bias, y), the
     * step carrying the x, w, n, k and ldx its maps are made of */
    char want[256];
    assert_int_equal(k->nargs, 5);
    assert_int_equal(k->args[0].kind, KA_ARG_M);
    if (h) {
        assert_int_equal(k->args[1].kind, KA_ARG_TMAP);
        assert_int_equal(k->args[1].i, 0);
        assert_int_equal(k->args[2].kind, KA_ARG_TMAP);
        assert_int_equal(k->args[2].i, 1);
        assert_true(same_shifted(&k->x, &c->x, shift));
        assert_true(same_arg(&k->w, &c->w));
        assert_int_equal(k->n, c->n);
        assert_int_equal(k->k, c->k);
        assert_int_equal(k->ldx, c->ldx);
        snprintf(want, sizeof want,
                 "kiln::gemm90<DT, %s, %lld, %lld, %d>(M, tx, tw, bias, y, %lldLL)",
                 c->out_f32 ? "float" : "DT", (long long)c->n, (long long)c->k,
                 c->bias.kind != KA_ARG_NULL, (long long)c->ldy);
    } else {
        assert_true(same_shifted(&k->args[1], &c->x, shift));
        assert_true(same_arg(&k->args[2], &c->w));
        snprintf(want, sizeof want,
                 "kiln::gemm<DT, %s, %lld, %lld, %d>(M, x, %lldLL, w, bias, y, %lldLL)",
                 c->out_f32 ? "float" : "DT", (long long)c->n, (long long)c->k,
                 c->bias.kind != KA_ARG_NULL, (long long)c->ldx, (long long)c->ldy);
    }
    assert_true(same_arg(&k->args[3], &c->bias));
    assert_true(same_shifted(&k->args[4], &c->y, shift));
    assert_string_equal(l->inst_call[k->kernel], want);
    /* gemm.cuh: grid (ceil(N / BN), ceil(M / BM)), M the step's rows, at a few step sizes;
     * gemm90.cuh: one block an SM whatever M is (the sm term alone) */
    const long sizes[][2] = {{9, 1}, {64, 4}, {bm + 1, 2}, {3 * bm, 3}};
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
        long T = sizes[i][0], S = sizes[i][1], M = c->rows == KA_ROWS_S ? S : T;
        if (h) {
            const ka_grid sm = {0, 0, 0, 0, 1, 1};
            assert_memory_equal(&k->grid[0], &sm, sizeof sm);
        } else {
            assert_int_equal(grid_at(&k->grid[0], T, S), (c->n + bn - 1) / bn);
        }
        assert_int_equal(grid_at(&k->grid[1], T, S), h ? 1 : (M + bm - 1) / bm);
        assert_int_equal(grid_at(&k->grid[2], T, S), 1);
    }
}

/* kiln's schedule k is cuBLASLt's c with each GEMM step replaced by kiln's GEMM, and with the
 * skinny GEMM steps (size mid: kiln's GEMM for 9 to 64 rows) added after their linear's GEMV;
 * *nskinny counts those. */
static void compare_schedules(const char *fx, const char *which, const lowered *lc,
                              const ka_step *c, int nc, const lowered *lk, const ka_step *k,
                              int nk, int h, long long *shift, int *ngemm, int *nskinny)
{
    int j = 0;
    for (int i = 0; i < nc; i++, j++) {
        for (; j < nk && k[j].size == KA_SIZE_MID; j++) {
            /* the Hopper build's is gemm90.cuh's (wgmma, TMA) */
            if (k[j].kind != KA_KERNEL ||
                !ka_kernel_is(&lk->m.kernels[k[j].kernel], h ? "gemm90_skinny" : "gemm_skinny"))
                fail_msg("%s %s step %d (%s): size mid, not the skinny GEMM", fx, which, j,
                         k[j].label);
            assert_string_equal(k[j].label, c[i - 1].label);
            ++*nskinny;
        }
        if (j == nk)
            fail_msg("%s %s: kiln's schedule ends at step %d, cuBLASLt's has %d", fx, which, j,
                     nc);
        assert_int_not_equal(k[j].kind, KA_GEMM);
        if (c[i].kind == KA_GEMM) {
            expect_kiln_gemm(fx, lk, &c[i], &k[j], shift, h);
            ++*ngemm;
            continue;
        }
        assert_int_equal(k[j].kind, c[i].kind);
        assert_string_equal(k[j].label, c[i].label);
        if (c[i].kind == KA_KERNEL) {
            assert_string_equal(lk->inst_call[k[j].kernel], lc->inst_call[c[i].kernel]);
            for (int a = 0; a < c[i].nargs; a++)
                assert_true(same_shifted(&k[j].args[a], &c[i].args[a], shift));
        }
    }
    for (; j < nk && k[j].size == KA_SIZE_MID; j++)
        ++*nskinny;
    if (j != nk)
        fail_msg("%s %s: %d steps with cuBLASLt, %d with kiln's GEMM beyond its skinny steps", fx,
                 which, nc, nk);
}

static void test_steps_replace_cublaslt(void **state)
{
    (void)state;
    for (size_t f = 0; f < ARRAY_LEN(fixtures); f++)
        for (int h = 0; h < 2; h++) { /* every target sm_90a: the Hopper kernel */
            kc cc, ck;
            lower_with(&cc, fixtures[f], 0, h);
            lower_with(&ck, fixtures[f], 1, h);
            const lowered *lc = cc.low, *lk = ck.low;
            assert_int_equal(lc->m.gemm_kiln, 0);
            assert_int_equal(lk->m.gemm_kiln, 1);
            assert_int_equal(lower_gemm90(&ck), h);
            int n = 0, nsk = 0;
            long long shift = -1;
            compare_schedules(fixtures[f], "prefill", lc, lc->m.prefill, lc->m.nprefill, lk,
                              lk->m.prefill, lk->m.nprefill, h, &shift, &n, &nsk);
            compare_schedules(fixtures[f], "decode", lc, lc->m.decode, lc->m.ndecode, lk,
                              lk->m.decode, lk->m.ndecode, h, &shift, &n, &nsk);
            if (n == 0)
                fail_msg("%s: no cuBLASLt step to replace (the test proves nothing)", fixtures[f]);
            /* kiln's GEMM covers 9 to 64 rows with the skinny GEMM; cuBLASLt's builds do not */
            assert_int_equal(lc->m.skinny_max, 0);
            assert_int_equal(lk->m.skinny_max, KILN_SKINNY_MAX);
            if (nsk == 0)
                fail_msg("%s: kiln's GEMM schedule has no skinny GEMM step", fixtures[f]);
            /* the unit includes the GEMM's header only where its kernel is instantiated */
            char *src_c = codegen_source(lc, fixtures[f]), *src_k = codegen_source(lk, fixtures[f]);
            assert_null(strstr(src_c, "gemm.cuh"));
            assert_null(strstr(src_c, "gemm90.cuh"));
            assert_non_null(strstr(src_k, h ? "#include \"gemm90.cuh\"" : "#include \"gemm.cuh\""));
            assert_null(strstr(src_k, h ? "#include \"gemm.cuh\"" : "#include \"gemm90.cuh\""));
            free(src_c);
            free(src_k);
            /* kiln bench's roofline sees the same model */
            kroof_model rc, rk;
            kroof_model_of(&lc->m, &rc);
            kroof_model_of(&lk->m, &rk);
            assert_int_equal(rc.weight_bytes, rk.weight_bytes);
            assert_true(rc.matrix_params == rk.matrix_params);
            assert_true(rc.head_params == rk.head_params);
            assert_int_equal(rc.q_width, rk.q_width);
            assert_int_equal(rc.q_width_assumed, rk.q_width_assumed);
            kc_free(&cc);
            kc_free(&ck);
        }
}

/* The batch-1 GEMV (templates/gemv_stream.cuh): when a target is sm_90 or newer, each 16-bit
 * linear's GEMV of up to gemv_max rows becomes two steps in both schedules, gemv.cuh's (size
 * few: every row count up to gemv_max but one on sm_90+ code) and then gemv_stream's (size one),
 * with the same label, weight, bias, output, logits and rows, kernels/kiln_gemm.h's block and
 * grid, lower_gemv_stream_smem's shared memory, and the shape in its template arguments; the
 * unit includes gemv_stream.cuh. Where an RMS norm's output is read by that linear alone
 * (plan_norm_reader), the one-row step folds it (NORM 1, or 2 with a residual): it reads the
 * norm step's x, residual, weight, residual output and eps, the norm step runs at every other
 * row count (size not_one), and the GEMV's output does not overlap the norm's inputs (the plan
 * keeps them live). Otherwise it reads the GEMV's x and nulls. Ring depth: that of
 * lower_gemv_stream_depth. With sm_80 alone, --batch-invariant, a K past KILN_GEMV_STREAM_KMAX
 * or shared memory past the targets' limit: none; lower_gemv_stream_seg's units. */
static int overlap(const ka_arg *a, int64_t an, const ka_arg *b, int64_t bn)
{
    return a->kind == KA_ARG_BUF && b->kind == KA_ARG_BUF && a->i < b->i + bn && b->i < a->i + an;
}

static void expect_stream_pairs(const char *fx, const kc *c, const ka_step *st, int n,
                                int *pairs, int *folds, int *ropes, int *nfp8)
{
    const lowered *l = c->low;
    int not_one = 0;
    for (int i = 0; i < n; i++) {
        const ka_kernel *k = st[i].kind == KA_KERNEL ? &l->m.kernels[st[i].kernel] : NULL;
        if (k && ka_kernel_is(k, "rms_norm") && st[i].size == KA_SIZE_NOT_ONE)
            not_one++;
        const int fp8 = k && (ka_kernel_is(k, "gemv_stream_fp8") ||
                              ka_kernel_is(k, "gemv_stream_rope_fp8"));
        const int rope = k && (ka_kernel_is(k, "gemv_stream_rope") ||
                               ka_kernel_is(k, "gemv_stream_rope_fp8"));
        if (!k || (!rope && !fp8 && !ka_kernel_is(k, "gemv_stream")))
            continue;
        const ka_step *o = &st[i], *g = i > 0 ? &st[i - 1] : NULL;
        if (!g || g->kind != KA_KERNEL ||
            !ka_kernel_is(&l->m.kernels[g->kernel], fp8 ? "gemv_fp8" : "gemv"))
            fail_msg("%s step %d (%s): gemv_stream not after its gemv step", fx, i, o->label);
        assert_string_equal(o->label, g->label);
        assert_int_equal(o->size, KA_SIZE_ONE);
        /* FP8 in the decode schedule without cuBLASLt's FP8 GEMM: the GEMV at every other row */
        if (g->size != KA_SIZE_FEW && !(fp8 && g->size == KA_SIZE_NOT_ONE))
            fail_msg("%s step %d (%s): its gemv step of size %d", fx, i - 1, g->label, g->size);
        assert_int_equal(o->logits, g->logits);
        assert_int_equal(o->rows, g->rows);
        /* (st, x, res, nw, res_out, eps, w, bias, y, M) against gemv's (st, x, w, bias, y, M);
         * gemv_stream_rope's (st, x, res, nw, res_out, eps, w, bias, q_out, k_cache, v_cache,
         * inv_freq, rope_scale, dyn_base, dyn_factor, dyn_max_pos, M): expect_rope_folds; FP8:
         * the scale after w in both */
        assert_int_equal(o->nargs, (rope ? 17 : 10) + fp8);
        assert_int_equal(g->nargs, 6 + fp8);
        assert_true(same_arg(&o->args[0], &g->args[0]));
        for (int a = 2; a < g->nargs - (rope ? 2 : 0); a++)
            assert_true(same_arg(&o->args[a + 4], &g->args[a]));
        assert_true(same_arg(&o->args[o->nargs - 1], &g->args[g->nargs - 1]));
        assert_int_equal(k->block, 32 * KILN_GEMV_STREAM_WARPS(fp8 ? 8 : 16));
        assert_int_equal(grid_at(&o->grid[0], 1, 1), KILN_GEMV_STREAM_BLOCKS);
        assert_int_equal(grid_at(&o->grid[1], 1, 1), 1);
        long long N, K;
        int gated = 0, mode, nh, nkv, hd, d;
        char gt[8];
        const char *call = l->inst_call[o->kernel], *targs = strchr(call, '<');
        char want[48];
        snprintf(want, sizeof want, "kiln::gemv_stream%s%s<", rope ? "_rope" : "",
                 fp8 ? "_fp8" : "");
        if (strncmp(call, want, strlen(want)) != 0)
            fail_msg("%s: %s: not a call of %s>", fx, call, want);
        if (rope) {
            if (sscanf(targs, "<DT, %d, %d, %d, %*d, %*d, %*d, %lld, %*[a-z], "
                             "%*d, %d, %*d, %*d, %d,",
                       &nh, &nkv, &hd, &K, &d, &mode) != 6)
                fail_msg("%s: %s: no shape or norm in the template arguments", fx, call);
            N = (long long)(nh + 2 * nkv) * hd;
            (*ropes)++;
        } else {
            if (sscanf(targs, "<DT, %lld, %lld, %*[a-z], %7[a-z], %*d, %*[a-z], "
                             "%*d, %d, %*d, %*d, %d,",
                       &N, &K, gt, &d, &mode) != 5)
                fail_msg("%s: %s: no shape or norm in the template arguments", fx, call);
            gated = !strcmp(gt, "true");
        }
        assert_true(K <= KILN_GEMV_STREAM_KMAX);
        assert_int_equal(d, lower_gemv_stream_depth(c, K, 2, fp8 ? 8 : 16));
        assert_int_equal(k->smem, lower_gemv_stream_smem(c, K, 2, fp8 ? 8 : 16));
        (*nfp8) += fp8;
        (*pairs)++;
        if (mode == 0) {
            assert_true(same_arg(&o->args[1], &g->args[1]));
            for (int a = 2; a < 5; a++)
                assert_int_equal(o->args[a].kind, KA_ARG_NULL);
            continue;
        }
        /* the folded norm: the step before whose output is the GEMV's x */
        int r = i - 1;
        while (r >= 0 && !(st[r].kind == KA_KERNEL &&
                           ka_kernel_is(&l->m.kernels[st[r].kernel], "rms_norm") &&
                           same_arg(&st[r].args[4], &g->args[1])))
            r--;
        if (r < 0)
            fail_msg("%s step %d (%s): NORM %d but no norm writes its x", fx, i, o->label, mode);
        const ka_step *nm = &st[r];
        assert_int_equal(nm->size, KA_SIZE_NOT_ONE);
        assert_int_equal(mode, nm->args[2].kind == KA_ARG_NULL ? 1 : 2);
        assert_true(same_arg(&o->args[1], &nm->args[1]));
        assert_true(same_arg(&o->args[2], &nm->args[2]));
        assert_true(same_arg(&o->args[3], &nm->args[3]));
        assert_true(same_arg(&o->args[4], &nm->args[5]));
        assert_true(same_arg(&o->args[5], &nm->args[6]));
        int uo;
        if (sscanf(l->inst_call[nm->kernel], "kiln::rms_norm<DT, %*d, %*d, %*d, %d,", &uo) != 1)
            fail_msg("%s: %s: no unit offset", fx, l->inst_call[nm->kernel]);
        assert_non_null(strstr(call, uo ? ", true>(" : ", false>("));
        const int64_t xb = (int64_t)c->max_tokens * K * 2;
        const int64_t yb = (int64_t)c->max_tokens * (gated ? N / 2 : N) * 2;
        for (int a = 1; a < 3 && !rope; a++)
            if (overlap(&o->args[o->nargs - 2], yb, &o->args[a], xb))
                fail_msg("%s step %d (%s): y overlaps the norm's input %d", fx, i, o->label, a);
        (*folds)++;
    }
    assert_int_equal(not_one, *folds);
}

/* The rotation folded into the qkv linear (lower.c's plan_rope_fold): each gemv_stream_rope step of
 * the decode schedule (`ropes` of them) is followed by its layer's rope_kv at size not_one, with
 * the same cache, inv_freq and scalars, and by three attn_decode steps: size few reading
 * rope_kv's q_out, size one reading the rope step's q (the one-row scratch), both one instance,
 * and size large reading q_out (the instance of fewer key splits), all else the same. The
 * prefill schedule's rope_kv steps run at every size. */
static void expect_rope_folds(const char *fx, const kc *c, int ropes)
{
    const lowered *l = c->low;
    const ka_manifest *m = &l->m;
    int seen = 0;
    for (int i = 0; i < m->ndecode; i++) {
        const ka_step *o = &m->decode[i];
        if (o->kind != KA_KERNEL)
            continue;
        /* FP8: the weight's scale after it shifts the arguments by one */
        const int f = ka_kernel_is(&m->kernels[o->kernel], "gemv_stream_rope_fp8");
        if (!f && !ka_kernel_is(&m->kernels[o->kernel], "gemv_stream_rope"))
            continue;
        seen++;
        assert_int_equal(o->args[8 + f].kind, KA_ARG_SCRATCH);
        int r = i + 1;
        while (r < m->ndecode && !(m->decode[r].kind == KA_KERNEL &&
                                   ka_kernel_is(&m->kernels[m->decode[r].kernel], "rope_kv")))
            r++;
        if (r + 3 >= m->ndecode)
            fail_msg("%s decode step %d (%s): no rope_kv and attention after it", fx, i, o->label);
        const ka_step *rk = &m->decode[r], *a1 = &m->decode[r + 1], *a2 = &m->decode[r + 2],
                      *a3 = &m->decode[r + 3];
        assert_int_equal(rk->size, KA_SIZE_NOT_ONE);
        for (int a = 8; a < 15; a++) /* k_cache .. dyn_max_pos */
            assert_true(same_arg(&rk->args[a], &o->args[a + 1 + f]));
        assert_true(ka_kernel_is(&m->kernels[a1->kernel], "attn_decode"));
        assert_true(ka_kernel_is(&m->kernels[a3->kernel], "attn_decode"));
        assert_int_equal(a1->kernel, a2->kernel);
        assert_int_not_equal(a1->kernel, a3->kernel);
        assert_int_equal(a1->size, KA_SIZE_FEW);
        assert_int_equal(a2->size, KA_SIZE_ONE);
        assert_int_equal(a3->size, KA_SIZE_LARGE);
        assert_true(same_arg(&a1->args[1], &rk->args[7]));
        assert_true(same_arg(&a2->args[1], &o->args[8 + f]));
        assert_true(same_arg(&a3->args[1], &rk->args[7]));
        for (int a = 2; a < a1->nargs; a++) {
            assert_true(same_arg(&a1->args[a], &a2->args[a]));
            assert_true(same_arg(&a1->args[a], &a3->args[a]));
        }
    }
    assert_int_equal(seen, ropes);
    for (int i = 0; i < m->nprefill; i++)
        if (m->prefill[i].kind == KA_KERNEL &&
            ka_kernel_is(&m->kernels[m->prefill[i].kernel], "rope_kv"))
            assert_int_equal(m->prefill[i].size, KA_SIZE_ANY);
}

/* Where the rotation folds (plan_rope_fold), on sm_90a: a layer's fused [q | k | v] linear read by
 * nothing but its attention's rotations and v, unquantised, the 16-bit cache, head_dim a multiple
 * of 8, one rank. Qwen2's folds with its bias (the rope step takes the GEMV's); Qwen3's q and k
 * are normed per head first, and --kv-dtype fp8 writes the cache by rope_kv's per-head scales:
 * none there, nor with --quant int4 or --tp 2. --quant fp8 folds (gemv_stream_rope_fp8). */
static void test_rope_fold_where(void **state)
{
    (void)state;
    static const struct {
        const char *fx;
        int kv8;
        kc_quant quant;
        int tp, folds; /* folds: -1 every layer */
    } cases[] = {
        {"llama", 0, KC_QUANT_NONE, 0, -1}, {"qwen2", 0, KC_QUANT_NONE, 0, -1},
        {"qwen3", 0, KC_QUANT_NONE, 0, 0},  {"llama", 1, KC_QUANT_NONE, 0, 0},
        {"llama", 0, KC_QUANT_INT4, 0, 0},  {"llama", 0, KC_QUANT_NONE, 2, 0},
        {"llama", 0, KC_QUANT_FP8, 0, -1},  {"qwen2", 0, KC_QUANT_FP8, 0, -1},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        kc c;
        kc_opts o = {.need_weights = 1, .max_seq_len = 128, .max_seqs = 4, .max_tokens = 64,
                     .sm90a_only = 1, .sm90 = 1, .sm_fp8 = 1, .kv_fp8 = cases[i].kv8,
                     .quant_mode = cases[i].quant,
                     .tp = cases[i].tp, .smem_block = lower_smem_optin(90)};
        lower_opts(&c, cases[i].fx, &o);
        const lowered *l = c.low;
        int ropes = 0, bias = 0;
        for (int k = 0; k < l->m.ndecode; k++) {
            const ka_step *st = &l->m.decode[k];
            if (st->kind != KA_KERNEL)
                continue;
            const int f = ka_kernel_is(&l->m.kernels[st->kernel], "gemv_stream_rope_fp8");
            if (f || ka_kernel_is(&l->m.kernels[st->kernel], "gemv_stream_rope")) {
                ropes++;
                bias += st->args[7 + f].kind != KA_ARG_NULL;
                assert_int_equal(f, cases[i].quant == KC_QUANT_FP8);
            }
        }
        const int want = cases[i].folds < 0 ? c.g->n_layers : cases[i].folds;
        if (ropes != want)
            fail_msg("%s (kv8 %d, quant %d, tp %d): %d folded rotations, expected %d",
                     cases[i].fx, cases[i].kv8, cases[i].quant, cases[i].tp, ropes, want);
        assert_int_equal(bias, strcmp(cases[i].fx, "qwen2") ? 0 : ropes);
        if (ropes)
            expect_rope_folds(cases[i].fx, &c, ropes);
        kc_free(&c);
    }
}

static void test_gemv_stream_steps(void **state)
{
    (void)state;
    static const char *const fx[] = {"llama", "mixtral", "bloom", "gemma"};
    for (size_t f = 0; f < ARRAY_LEN(fx); f++)
        /* sm_90a; sm_80 and sm_90a; sm_80; --batch-invariant; --quant fp8 on sm_90a (cuBLASLt's
         * FP8 GEMM past the GEMV) and on sm_80 and sm_90a (the GEMV at every decode row) */
        for (int v = 0; v < 6; v++) {
            const int sm90a = v == 0 || v == 4;
            kc c;
            kc_opts o = {.need_weights = 1, .max_seq_len = 128, .max_seqs = 4, .max_tokens = 64,
                         .sm90a_only = sm90a, .sm90 = v != 2, .sm_fp8 = sm90a,
                         .batch_invariant = v == 3, .gemm_kiln = v == 3,
                         .quant_mode = v >= 4 ? KC_QUANT_FP8 : KC_QUANT_NONE,
                         .smem_block = lower_smem_optin(sm90a ? 90 : 80)};
            lower_opts(&c, fx[f], &o);
            const lowered *l = c.low;
            int pairs = 0, folds = 0, dfolds = 0, pre_ropes = 0, ropes = 0, pfp8 = 0, dfp8 = 0;
            expect_stream_pairs(fx[f], &c, l->m.prefill, l->m.nprefill, &pairs, &folds,
                                &pre_ropes, &pfp8);
            const int pre = pairs;
            expect_stream_pairs(fx[f], &c, l->m.decode, l->m.ndecode, &pairs, &dfolds, &ropes,
                                &dfp8);
            /* FP8: every linear but the LM head (llama: qkv, o, gate_up, down) */
            if (v < 4)
                assert_int_equal(pfp8 + dfp8, 0);
            else if (!strcmp(fx[f], "llama"))
                assert_true(pfp8 == 4 * c.g->n_layers && dfp8 == 4 * c.g->n_layers);
            else
                assert_true(pfp8 > 0 && dfp8 == pfp8);
            /* the rotation folds into the qkv linear in the decode schedule alone, where it is
             * rope_kv's (bloom: ALiBi, no rotation) */
            assert_int_equal(pre_ropes, 0);
            const int none = v == 2 || v == 3; /* no gemv_stream at all */
            assert_int_equal(ropes, none || !strcmp(fx[f], "bloom") ? 0 : c.g->n_layers);
            expect_rope_folds(fx[f], &c, ropes);
            /* llama and gemma fold both norms of a layer, mixtral the one before attention (its
             * MLP norm feeds the router too), bloom none (layer norms) */
            const int layers = c.g->n_layers;
            const int want = none || !strcmp(fx[f], "bloom") ? 0
                             : !strcmp(fx[f], "mixtral")         ? layers
                                                                 : 2 * layers;
            assert_int_equal(folds, want);
            assert_int_equal(dfolds, want);
            int sized = 0;
            for (int i = 0; i < l->m.ndecode; i++)
                sized += l->m.decode[i].size == KA_SIZE_ONE || l->m.decode[i].size == KA_SIZE_FEW;
            char *src = codegen_source(l, fx[f]);
            if (!none) {
                if (pre == 0 || pairs == pre)
                    fail_msg("%s: no gemv_stream step in the prefill (%d) or decode (%d) schedule",
                             fx[f], pre, pairs - pre);
                assert_non_null(strstr(src, "#include \"gemv_stream.cuh\""));
            } else {
                assert_int_equal(pairs, 0);
                assert_int_equal(sized, 0);
                assert_null(strstr(src, "gemv_stream.cuh"));
            }
            free(src);
            kc_free(&c);
        }
    kc cc;
    memset(&cc, 0, sizeof cc);
    cc.sm90 = 1;
    assert_true(lower_gemv_stream(&cc, 4096, 14336, 0, 16));
    assert_true(lower_gemv_stream(&cc, 4096, KILN_GEMV_STREAM_KMAX, 0, 16));
    assert_false(lower_gemv_stream(&cc, 4096, KILN_GEMV_STREAM_KMAX + 256, 0, 16));
    assert_false(lower_gemv_stream(&cc, 4095, 4096, 1, 16));
    assert_false(lower_gemv_stream(&cc, 4096, 4100, 0, 16));
#define SMEM_AT(d, seg, k) KILN_GEMV_STREAM_SMEM(KILN_GEMV_STREAM_WARPS(16), d, seg, k, 2, 16)
    /* feasible when the shallowest ring fits; the deepest that fits is taken */
    cc.smem_block = SMEM_AT(KILN_GEMV_STREAM_DMIN, 2048, KILN_GEMV_STREAM_KMAX) - 1;
    assert_false(lower_gemv_stream(&cc, 4096, KILN_GEMV_STREAM_KMAX, 0, 16));
    assert_true(lower_gemv_stream(&cc, 4096, 4096, 0, 16));
    cc.smem_block = SMEM_AT(KILN_GEMV_STREAM_DMIN, 2048, KILN_GEMV_STREAM_KMAX);
    assert_true(lower_gemv_stream(&cc, 4096, KILN_GEMV_STREAM_KMAX, 0, 16));
    assert_int_equal(lower_gemv_stream_depth(&cc, KILN_GEMV_STREAM_KMAX, 2, 16),
                     KILN_GEMV_STREAM_DMIN);
    cc.smem_block = SMEM_AT(3, 2048, 4096);
    assert_int_equal(lower_gemv_stream_depth(&cc, 4096, 2, 16), 3);
    cc.smem_block = SMEM_AT(3, 2048, 4096) - 1;
    assert_int_equal(lower_gemv_stream_depth(&cc, 4096, 2, 16), 2);
    cc.smem_block = 0;
    /* a block asks for more than half of a Hopper SM (228 KiB, 1 KiB reserved a block): one an
     * SM; as far as the targets allow; the shallowest ring of the longest K within that */
    assert_true(2 * (KILN_GEMV_STREAM_SMEM_SM + 1024) > 228 * 1024);
    assert_true(SMEM_AT(KILN_GEMV_STREAM_DMIN, 2048, KILN_GEMV_STREAM_KMAX) <=
                KILN_GEMV_STREAM_SMEM_SM);
    cc.smem_block = lower_smem_optin(90);
    assert_true(KILN_GEMV_STREAM_DMAX > KILN_GEMV_STREAM_DMIN);
    assert_int_equal(lower_gemv_stream_depth(&cc, KILN_GEMV_STREAM_KMAX, 2, 16),
                     KILN_GEMV_STREAM_DMAX);
    assert_int_equal(lower_gemv_stream_smem(&cc, 4096, 2, 16),
                     SMEM_AT(KILN_GEMV_STREAM_DMAX, 2048, 4096));
    assert_int_equal(lower_gemv_stream_smem(&cc, 1024, 2, 16), KILN_GEMV_STREAM_SMEM_SM);
    cc.smem_block = lower_smem_optin(80);
    assert_int_equal(lower_gemv_stream_smem(&cc, 14336, 2, 16),
                     SMEM_AT(KILN_GEMV_STREAM_DMAX, 2048, 14336));
    cc.smem_block = lower_smem_optin(89);
    assert_int_equal(lower_gemv_stream_depth(&cc, 4096, 2, 16), KILN_GEMV_STREAM_DMIN);
    assert_int_equal(lower_gemv_stream_smem(&cc, 4096, 2, 16), 99 * 1024);
    /* FP8 (8 bits): 4 KiB units of 16-element chunks */
    assert_int_equal(lower_gemv_stream_seg(14336, 8), 3584);
    assert_int_equal(lower_gemv_stream_seg(4096, 8), 4096);
    assert_int_equal(lower_gemv_stream_seg(4112, 8), 16);
    assert_int_equal(lower_gemv_stream_seg(1040, 8), 1040);
    cc.smem_block = lower_smem_optin(90);
    assert_true(lower_gemv_stream(&cc, 4096, 4112, 0, 8));
    assert_false(lower_gemv_stream(&cc, 4096, 4104, 0, 8));
    assert_true(lower_gemv_stream(&cc, 4096, 4104, 0, 16));
    assert_int_equal(lower_gemv_stream_smem(&cc, 14336, 2, 8),
                     KILN_GEMV_STREAM_SMEM(KILN_GEMV_STREAM_WARPS(8), KILN_GEMV_STREAM_DMAX, 3584,
                                           14336, 2, 8));
    assert_int_equal(KILN_GEMV_STREAM_SMEM(8, 4, 3584, 1040, 2, 8),
                     8 * 4 * 3584 + 1040 * 2 + 8 * 4 * 8);
    /* INT4 (4 bits, groups of 128): units of whole pairs of groups, at most 4 KiB of weight, each
     * with its groups' 8-byte (scale, zero) pairs */
    assert_int_equal(KILN_GEMV_STREAM_INT4_G, 128);
    assert_int_equal(lower_gemv_stream_seg(14336, 4), 7168);
    assert_int_equal(lower_gemv_stream_seg(4096, 4), 4096);
    assert_int_equal(lower_gemv_stream_seg(16384, 4), 8192);
    assert_int_equal(lower_gemv_stream_seg(1280, 4), 1280);
    assert_true(lower_gemv_stream(&cc, 4096, 14336, 1, 4));
    assert_true(lower_gemv_stream(&cc, 4096, 1280, 0, 4));
    assert_false(lower_gemv_stream(&cc, 4096, 640, 0, 4));
    assert_false(lower_gemv_stream(&cc, 4096, 4224, 0, 4));
    assert_int_equal(KILN_GEMV_STREAM_SMEM(8, 4, 7168, 14336, 2, 4),
                     8 * 4 * (3584 + 56 * 8) + 14336 * 2 + 8 * 4 * 8);
    /* 16 warps a block: at K 14336 a ring of 3 fits 227 KiB, at 4096 of 4 */
    assert_int_equal(KILN_GEMV_STREAM_WARPS(4), 16);
    assert_int_equal(lower_gemv_stream_depth(&cc, 14336, 2, 4), 3);
    assert_int_equal(lower_gemv_stream_depth(&cc, 4096, 2, 4), 4);
    assert_int_equal(lower_gemv_stream_smem(&cc, 14336, 2, 4),
                     KILN_GEMV_STREAM_SMEM(16, 3, 7168, 14336, 2, 4));
#undef SMEM_AT
    assert_int_equal(lower_gemv_stream_seg(14336, 16), 2048);
    assert_int_equal(lower_gemv_stream_seg(3584, 16), 1792);
    assert_int_equal(lower_gemv_stream_seg(64, 16), 64);
    assert_int_equal(lower_gemv_stream_seg(4104, 16), 1368);
    cc.batch_invariant = 1;
    assert_false(lower_gemv_stream(&cc, 4096, 4096, 0, 16));
    assert_false(lower_gemv_stream(&cc, 4096, 4096, 0, 8));
    assert_false(lower_gemv_stream(&cc, 4096, 4096, 0, 4));
}

/* An INT4 linear's decode steps (kilnc compile --quant int4, and a published AWQ checkpoint), in
 * the default build and with --gemm kiln: its GEMV of up to gemv_max rows (size small), then
 * gemm_skinny_int4 past them (size large; the same weight, sz and shape, G the GEMV's; warps,
 * splits and ring lower_skinny_shape's for the targets' shared memory; block, shared memory and
 * grid kernels/kiln_gemm.h's: row groups of 64 rows), and nothing else; its prefill steps, the
 * same kernel up to skinny_max rows and the dequantising GEMM past them. With --batch-invariant,
 * or when no step has more than gemv_max rows, none (the GEMV takes every decode step). */
static void test_int4_skinny_steps(void **state)
{
    (void)state;
    static const struct {
        const char *fx;
        kc_quant q;
    } cases[] = {{"llama", KC_QUANT_INT4}, {"llama_awq", KC_QUANT_NONE}};
    for (size_t f = 0; f < ARRAY_LEN(cases); f++)
        for (int mode = 0; mode < 4; mode++) { /* default, --gemm kiln, invariant, 8 tokens */
            kc c;
            kc_opts o = {.need_weights = 1, .max_seq_len = 128, .max_seqs = 1000,
                         .max_tokens = 1024, .quant_mode = cases[f].q,
                         .gemm_kiln = mode == 1 || mode == 2,
                         .batch_invariant = mode == 2};
            if (mode == 3)
                o.max_tokens = o.max_seqs = 8;
            lower_opts(&c, cases[f].fx, &o);
            const lowered *l = c.low;
            const ka_step *d = l->m.decode;
            int n4 = 0, nsk = 0;
            for (int i = 0; i < l->m.ndecode; i++) {
                if (d[i].kind != KA_KERNEL)
                    continue;
                if (ka_kernel_is(&l->m.kernels[d[i].kernel], "gemm_skinny_int4"))
                    nsk++;
                if (!ka_kernel_is(&l->m.kernels[d[i].kernel], "gemv_int4") ||
                    d[i].size != (mode >= 2 ? KA_SIZE_ANY : KA_SIZE_SMALL))
                    continue;
                n4++;
                if (mode >= 2)
                    continue;
                if (i + 1 >= l->m.ndecode)
                    fail_msg("%s: decode step %d (%s) ends the schedule", cases[f].fx, i,
                             d[i].label);
                const ka_step *k = &d[i + 1];
                if (k->kind != KA_KERNEL ||
                    !ka_kernel_is(&l->m.kernels[k->kernel], "gemm_skinny_int4") ||
                    k->size != KA_SIZE_LARGE || strcmp(k->label, d[i].label) != 0)
                    fail_msg("%s mode %d: after %s's GEMV, not its gemm_skinny_int4 (size large)",
                             cases[f].fx, mode, d[i].label);
                if (i + 2 < l->m.ndecode && strcmp(d[i + 2].label, d[i].label) == 0)
                    fail_msg("%s mode %d: %s has a third decode step", cases[f].fx, mode,
                             d[i].label);
                long long N, K, G, N2, K2, G2;
                int mmax, act, thr, warps, splits, stages;
                char gated[8], gated2[8];
                assert_int_equal(sscanf(l->inst_call[d[i].kernel],
                                        "kiln::gemv_int4<DT, %lld, %lld, %d, %*[a-z], %7[a-z], %d, "
                                        "%*[a-z], %d, %lld>",
                                        &N, &K, &mmax, gated, &act, &thr, &G),
                                 7);
                assert_int_equal(sscanf(l->inst_call[k->kernel],
                                        "kiln::gemm_skinny_int4<DT, %lld, %lld, %d, %*[a-z], "
                                        "%7[a-z], %d, %*[a-z], %d, %d, %d, %lld>",
                                        &N2, &K2, &mmax, gated2, &act, &warps, &splits, &stages,
                                        &G2),
                                 9);
                assert_true(N2 == N && K2 == K && G2 == G);
                assert_string_equal(gated2, gated);
                assert_int_equal(mmax, KILN_SKINNY_MAX);
                const int gt = strcmp(gated, "true") == 0;
                int w = 0, sp = 0, st = 0;
                lower_skinny_shape(N, K, gt, (int)G,
                                   c.smem_block ? c.smem_block : lower_smem_optin(80), &w, &sp,
                                   &st);
                assert_true(w == warps && sp == splits && st == stages && st >= 2);
                assert_int_equal(l->m.kernels[k->kernel].block, 32 * warps);
                assert_int_equal(l->m.kernels[k->kernel].smem,
                                 KILN_SKINNY4_SMEM(KILN_SKINNY_MAX, warps, stages, (int)G));
                const long units = KILN_SKINNY_UNITS(N, gt, G);
                for (long T = 9; T <= 1000; T += 55) { /* 9, 64, 119, ..., 999 rows */
                    assert_int_equal(grid_at(&k->grid[0], T, T), (T + 63) / 64);
                    assert_int_equal(grid_at(&k->grid[1], T, T), (units + warps - 1) / warps);
                    assert_int_equal(grid_at(&k->grid[2], T, T), splits);
                }
                /* (st, x, w, sz, bias, y, part, count, M): the GEMV's x, weight, sz, bias, y */
                assert_int_equal(k->nargs, 9);
                for (int a = 1; a <= 5; a++)
                    assert_true(same_arg(&k->args[a], &d[i].args[a]));
                assert_int_equal(k->args[8].kind, KA_ARG_M);
                assert_int_equal(k->args[7].kind, KA_ARG_SCRATCH);
                assert_int_equal(k->args[6].kind, splits > 1 ? KA_ARG_SCRATCH : KA_ARG_NULL);
                /* scratch for the most row groups a decode step has (max_seqs 1000: 16): the
                 * counters, [groups][units], before every node's temporaries (a region sized for
                 * one group fails here); the partials, [groups] x KILN_SKINNY_PART floats, before
                 * the node's next temporary (the weight dequantised for its prefill GEMM), where
                 * K has parts (not in these fixtures: K is one or two slices) */
                const long long groups = (o.max_seqs + KILN_SKINNY_MAX - 1) / KILN_SKINNY_MAX;
                const long long cend = k->args[7].i + 4 * groups * units;
                const ka_step *p = l->m.prefill;
                long long dq = -1;
                for (int j = 0; j < l->m.nprefill && dq < 0; j++)
                    if (p[j].kind == KA_KERNEL && strcmp(p[j].label, d[i].label) == 0 &&
                        ka_kernel_is(&l->m.kernels[p[j].kernel], "dequant_int4"))
                        dq = p[j].args[3].i;
                if (dq < 0)
                    fail_msg("%s: %s has no dequant_int4 step in prefill", cases[f].fx,
                             d[i].label);
                assert_true(cend <= dq);
                if (splits > 1) {
                    const long long pf =
                        KILN_SKINNY_PART(splits, units * KILN_SKINNY4_RT, KILN_SKINNY_MAX);
                    assert_true(k->args[6].i >= cend);
                    assert_true(k->args[6].i + 4 * groups * pf <= dq);
                }
                /* the prefill schedule: the same kernel on the same operands and counters for
                 * gemv_max < rows <= skinny_max (size mid), every other step of the linear but
                 * its GEMV (dequant_int4, the GEMM, act_mul) past skinny_max (size huge) */
                int pk = 0;
                for (int j = 0; j < l->m.nprefill; j++) {
                    if (strcmp(p[j].label, d[i].label) != 0)
                        continue;
                    if (p[j].kind == KA_KERNEL &&
                        ka_kernel_is(&l->m.kernels[p[j].kernel], "gemv_int4")) {
                        assert_int_equal(p[j].size, KA_SIZE_SMALL);
                    } else if (p[j].kind == KA_KERNEL &&
                               ka_kernel_is(&l->m.kernels[p[j].kernel], "gemm_skinny_int4")) {
                        pk++;
                        assert_int_equal(p[j].kernel, k->kernel);
                        assert_int_equal(p[j].size, KA_SIZE_MID);
                        for (int a = 1; a <= 5; a++)
                            assert_true(same_arg(&p[j].args[a], &k->args[a]));
                        assert_true(same_arg(&p[j].args[7], &k->args[7]));
                        assert_true(p[j].args[6].kind == KA_ARG_NULL || p[j].args[6].i < dq);
                    } else {
                        assert_int_equal(p[j].size, KA_SIZE_HUGE);
                    }
                }
                assert_int_equal(pk, 1);
            }
            if (n4 == 0)
                fail_msg("%s mode %d: no INT4 GEMV (the test proves nothing)", cases[f].fx, mode);
            if (mode < 2 && nsk != n4)
                fail_msg("%s mode %d: %d skinny INT4 steps for %d INT4 linears", cases[f].fx,
                         mode, nsk, n4);
            if (mode >= 2 && nsk)
                fail_msg("%s mode %d: %d skinny INT4 steps where none may run", cases[f].fx,
                         mode, nsk);
            /* mid steps (skinny_max): gemm_skinny's (--gemm kiln) and gemm_skinny_int4's in
             * prefill, where a prefill step can have more than gemv_max rows */
            assert_int_equal(l->m.skinny_max, mode < 2 ? KILN_SKINNY_MAX : 0);
            kc_free(&c);
        }
}

/* `kilnc compile` with cargs (exit 0), then `kiln inspect out --schedule` (exit 0): its run, for
 * the caller's assertions (tu_run_free it). */
static tu_run compile_schedule(const char *tmp, const char *const *cargs, const char *out)
{
    tu_run r = tu_run_bin(tmp, KILNC, cargs);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    const char *ia[] = {"inspect", out, "--schedule", NULL};
    r = tu_run_bin(tmp, KILN, ia);
    EXPECT_CODE(r, 0);
    return r;
}

/* --quant int4 with --gemm kiln on Hopper: a prompt's linears dequantise their INT4 weight into
 * scratch and run gemm90 on it, so a tensor-map step's w may be scratch. The lowering says so,
 * kiln bench's roofline counts the INT4 weights and not the scratch (the same model as the
 * cuBLASLt build's), and ka_read takes the artifact (kiln inspect). */
static void test_int4_gemm90_scratch_w(void **state)
{
    (void)state;
    kc cc, ck;
    kc_opts o = {.need_weights = 1, .max_seq_len = 128, .max_seqs = 4, .max_tokens = 256,
                 .quant_mode = KC_QUANT_INT4, .sm90a_only = 1};
    lower_opts(&cc, "llama", &o);
    o.gemm_kiln = 1;
    lower_opts(&ck, "llama", &o);
    int nscratch = 0;
    for (int i = 0; i < ck.low->m.nprefill; i++) {
        const ka_step *s = &ck.low->m.prefill[i];
        if (s->kind == KA_KERNEL && ka_step_has_tmap(s) && s->w.kind == KA_ARG_SCRATCH) {
            assert_true(i > 0 && ka_kernel_is(&ck.low->m.kernels[s[-1].kernel], "dequant_int4"));
            nscratch++;
        }
    }
    if (nscratch == 0)
        fail_msg("llama --quant int4 --gemm kiln: no gemm90 step on a dequantised weight (the "
                 "test proves nothing)");
    kroof_model rc, rk;
    kroof_model_of(&cc.low->m, &rc);
    kroof_model_of(&ck.low->m, &rk);
    assert_int_equal(rc.weight_bytes, rk.weight_bytes);
    assert_true(rc.matrix_params == rk.matrix_params);
    assert_int_equal(rc.q_width, rk.q_width);
    assert_int_equal(rc.q_width_assumed, rk.q_width_assumed);
    assert_int_equal(rc.fp8_gemm, rk.fp8_gemm);
    kc_free(&cc);
    kc_free(&ck);

    char *tmp = tu_tmpdir(), out[512];
    snprintf(out, sizeof out, "%s/llama_int4_sm90a", tmp);
    const char *args[] = {"compile", FIX "llama", "-o", out, "--quant", "int4", "--gemm", "kiln",
                          "--sm", "90a", "--max-seq-len", "64", NULL};
    tu_run r = compile_schedule(tmp, args, out);
    assert_contains(r.out, "_dequant_int4 [rows > skinny_max]");
    tu_run_free(&r);
    tu_rmrf(tmp);
}

static void test_cli_compile_inspect(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    for (size_t f = 0; f < ARRAY_LEN(compiled); f++) {
        char src[256], out[512];
        snprintf(src, sizeof src, FIX "%s", compiled[f]);
        snprintf(out, sizeof out, "%s/%s", tmp, compiled[f]);
        const char *args[] = {"compile", src, "-o", out, "--gemm", "kiln", "--max-seq-len", "64",
                              NULL};
        tu_run r = compile_schedule(tmp, args, out);
        assert_contains(r.out, "gemm         kiln (kilnc compile --gemm kiln): 0 cuBLASLt steps "
                               "(no cuBLASLt needed)\n");
        assert_contains(r.out, "_gemm [rows > skinny_max]");
        assert_contains(r.out, "_gemm_skinny [gemv_max < rows <= skinny_max]");
        assert_not_contains(r.out, " gemm n=");
        tu_run_free(&r);
        /* the source holds the GEMM instances */
        const char *sa[] = {"inspect", out, "--source", NULL};
        r = tu_run_bin(tmp, KILN, sa);
        EXPECT_CODE(r, 0);
        assert_contains(r.out, "#include \"gemm.cuh\"");
        assert_contains(r.out, "kiln::gemm<DT, ");
        tu_run_free(&r);
    }
    /* the default: cuBLASLt, its steps counted */
    char out[512];
    snprintf(out, sizeof out, "%s/llama_default", tmp);
    const char *args[] = {"compile", FIX "llama", "-o", out, "--sm", "80", NULL};
    tu_run r = tu_run_bin(tmp, KILNC, args);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    const char *ia[] = {"inspect", out, NULL};
    r = tu_run_bin(tmp, KILN, ia);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "gemm         cublaslt: 19 cuBLASLt steps (kiln loads libcublasLt)\n");
    tu_run_free(&r);
    /* a Hopper-only artifact: the wgmma GEMM, its PTX for compute_90a (compute_90 has no wgmma) */
    snprintf(out, sizeof out, "%s/llama_sm90a", tmp);
    const char *ha[] = {"compile", FIX "llama", "-o", out, "--gemm", "kiln", "--sm", "90a", NULL};
    r = tu_run_bin(tmp, KILNC, ha);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    const char *hi[] = {"inspect", out, NULL};
    r = tu_run_bin(tmp, KILN, hi);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "code         ptx.compute_90a (");
    assert_contains(r.out, "cubin.sm_90a (");
    tu_run_free(&r);
    const char *hs[] = {"inspect", out, "--source", NULL};
    r = tu_run_bin(tmp, KILN, hs);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "#include \"gemm90.cuh\"");
    assert_contains(r.out, "kiln::gemm90<DT, ");
    assert_not_contains(r.out, "kiln::gemm<DT, ");
    tu_run_free(&r);
    /* without a GPU a kiln-GEMM artifact fails on the driver, and says nothing of cuBLASLt */
    snprintf(out, sizeof out, "%s/llama", tmp);
    const char *ra[] = {"run", out, "--ids", "1,2,3", "--max-new", "2", NULL};
    r = tu_run_bin(tmp, KILN, ra);
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "no NVIDIA driver on this machine");
    assert_not_contains(r.err, "cuBLASLt");
    tu_run_free(&r);
    tu_rmrf(tmp);
}

static void test_cli_refuses_bad_values(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    const char *bad[][2] = {{"--gemm", "cutlass"}, {"--gemm", "Kiln"}, {"--gemm=", ""}};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        const char *args[] = {"compile", FIX "llama", "-o", tmp, bad[i][0],
                              bad[i][1][0] ? bad[i][1] : NULL, NULL};
        tu_run r = tu_run_bin(tmp, KILNC, args);
        EXPECT_CODE(r, 2);
        char want[128];
        snprintf(want, sizeof want,
                 "kilnc compile: error: --gemm: '%s' is not a GEMM (expected kiln or cublaslt)\n",
                 bad[i][1]);
        assert_starts_with(r.err, want);
        tu_run_free(&r);
    }
    const char *none[] = {"compile", FIX "llama", "-o", tmp, "--gemm", NULL};
    tu_run r = tu_run_bin(tmp, KILNC, none);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc compile: error: --gemm needs a value\n");
    tu_run_free(&r);
    /* an executable that needs only the driver cannot use cuBLASLt: said, not ignored */
    const char *sa[] = {"compile", FIX "llama", "-o", tmp, "--gemm", "cublaslt", "--standalone",
                        NULL};
    r = tu_run_bin(tmp, KILNC, sa);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc compile: error: --standalone runs on kiln's own GEMM");
    tu_run_free(&r);
    /* only compile takes it */
    const char *graph[] = {"graph", FIX "llama", "--gemm", "kiln", NULL};
    r = tu_run_bin(tmp, KILNC, graph);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc graph: error: unknown option '--gemm'\n");
    tu_run_free(&r);
    const char *help[] = {"compile", "--help", NULL};
    r = tu_run_bin(tmp, KILNC, help);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "--gemm cublaslt|kiln");
    tu_run_free(&r);
    tu_rmrf(tmp);
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_gemm");
    KILN = tu_binary("KILN", "test_gemm");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steps_replace_cublaslt),
        cmocka_unit_test(test_int4_skinny_steps),
        cmocka_unit_test(test_gemv_stream_steps),
        cmocka_unit_test(test_rope_fold_where),
        cmocka_unit_test(test_int4_gemm90_scratch_w),
        cmocka_unit_test(test_cli_compile_inspect),
        cmocka_unit_test(test_cli_refuses_bad_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
