/* ktest_collective — kernel tests of templates/collective.cuh (see ktest.h): the one-shot
 * peer-to-peer all-reduce, with R ranks simulated on one GPU. Each rank gets its own x, y and
 * state (exchange buffer, flags, epochs: kernels/kiln_p2p.h), the kiln_p2p of every rank points
 * at all of them, and the R launches go to R streams, so they run at once and meet at the
 * kernel's flags exactly as R GPUs would (the pointers are local instead of a peer's).
 *
 * Each case runs three epochs (both halves of the double buffer, the epoch counters advancing,
 * the last one in place: y == x) with fresh inputs, and requires every rank's y to be bit for bit
 * the float sum in rank order rounded once to bf16 — the same on every rank. The cases of one
 * rank count share their state, as all-reduces of many sizes do in the engine. Counts cover one
 * decode row, a tail that is not a multiple of 8, more vectors than the grid has threads (the
 * threads loop) and fewer than it has blocks. A kernel that never meets its peers traps after
 * KILN_P2P_POLLS polls, which fails the case instead of hanging the run. */
#include "ktest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/kiln_p2p.h"

#define P2P_SRC(DT)                                                                             \
    "#include \"collective.cuh\"\n"                                                             \
    "extern \"C\" __global__ void __launch_bounds__(%d) k(const " DT " *x, " DT " *y, "          \
    "long long count, const kiln_p2p p)\n"                                                      \
    "{ kiln::allreduce_p2p<" DT ", %d>(x, y, count, p); }\n"

/* A driver call of this file's own launches (kt_launch runs one stream and synchronises). */
static int ok_cu(kt *t, CUresult rc, const char *call, const char *name)
{
    if (rc == CUDA_SUCCESS)
        return 1;
    char b[200], d[320];
    snprintf(d, sizeof d, "%s failed: %s", call, kcuda_errstr(&t->cu, rc, b, sizeof b));
    kt_result(t, name, 0, d);
    return 0;
}

/* One case: `count` elements on R ranks whose state (p, st) has run earlier cases, three epochs
 * (the last in place). Returns 0 when a driver call failed (the context may be unusable). */
static int t_count(kt *t, CUfunction f, int R, long long count, const kiln_p2p *p,
                   const CUstream *st, const CUdeviceptr *x, const CUdeviceptr *y)
{
    char name[160], detail[256] = "";
    snprintf(name, sizeof name, "collective/allreduce_p2p bf16 ranks=%d count=%lld", R, count);
    if (!kt_want(t, name))
        return 1;
    size_t bytes = sizeof(uint16_t) * (size_t)count;
    uint16_t *in = xmalloc(bytes * (size_t)R), *got = xmalloc(bytes), *want = xmalloc(bytes);
    int ok = 1, cu_ok = 1;
    for (int epoch = 0; epoch < 3 && ok && cu_ok; epoch++) {
        int in_place = epoch == 2;
        for (size_t i = 0; i < (size_t)count * (size_t)R; i++)
            in[i] = util_f32_to_bf16(kt_randf(t) * 4.f);
        for (long long i = 0; i < count; i++) { /* the kernel's sum: rank order, float, once */
            float sum = util_bf16_to_f32(in[i]);
            for (int r = 1; r < R; r++)
                sum += util_bf16_to_f32(in[(size_t)r * (size_t)count + (size_t)i]);
            want[i] = util_f32_to_bf16(sum);
        }
        for (int r = 0; r < R && cu_ok; r++)
            cu_ok = ok_cu(t, t->cu.cuMemcpyHtoD(x[r], in + (size_t)r * (size_t)count, bytes),
                          "cuMemcpyHtoD", name) &&
                    ok_cu(t, t->cu.cuMemsetD8(y[r], 0xFF, bytes), "cuMemsetD8", name);
        /* the ranks' streams are non-blocking: they do not wait for the legacy stream, where
         * the copy's DMA and the poison may still be running (count 300007's 600 KB lost that
         * race once, on an H200 shared with other work: y[0] still 0xffff after the kernel) */
        if (cu_ok)
            cu_ok = ok_cu(t, t->cu.cuStreamSynchronize(NULL), "cuStreamSynchronize", name);
        for (int r = 0; r < R && cu_ok; r++) {
            CUdeviceptr in_r = x[r], out = in_place ? x[r] : y[r];
            long long n = count;
            void *args[] = {&in_r, &out, &n, (void *)&p[r]};
            cu_ok = ok_cu(t, t->cu.cuLaunchKernel(f, KILN_P2P_BLOCKS, 1, 1, KILN_P2P_THREADS, 1,
                                                  1, 0, st[r], args, NULL),
                          "cuLaunchKernel", name);
        }
        for (int r = 0; r < R && cu_ok; r++) /* a trap (peers never met) shows here */
            cu_ok = ok_cu(t, t->cu.cuStreamSynchronize(st[r]), "the kernel", name);
        for (int r = 0; r < R && ok && cu_ok; r++) {
            kt_download(t, got, in_place ? x[r] : y[r], bytes);
            for (long long i = 0; i < count; i++)
                if (got[i] != want[i]) {
                    snprintf(detail, sizeof detail,
                             "epoch %d%s, rank %d: first difference at [%lld]: got 0x%04x (%g) "
                             "want 0x%04x (%g)",
                             epoch, in_place ? " (in place)" : "", r, i, got[i],
                             util_bf16_to_f32(got[i]), want[i], util_bf16_to_f32(want[i]));
                    ok = 0;
                    break;
                }
        }
    }
    if (cu_ok)
        kt_result(t, name, ok, ok ? "3 epochs (the last in place): bit-exact on every rank"
                                  : detail);
    free(in), free(got), free(want);
    return cu_ok;
}

/* R ranks' x, y and state, shared by every count in turn (the grid and counters carry over, as
 * in the engine, where decode and prefill all-reduces of many sizes share them). */
static void t_ranks(kt *t, CUfunction f, int R, const long long *counts, int ncounts)
{
    long long cap = 0;
    for (int i = 0; i < ncounts; i++)
        cap = counts[i] > cap ? counts[i] : cap;
    cap = (cap + 7) / 8 * 8;
    size_t bytes = sizeof(uint16_t) * (size_t)cap, buf = 2 * bytes;
    size_t flags = sizeof(unsigned) * KILN_P2P_BLOCKS * KILN_P2P_MAX_RANKS;
    size_t state = buf + flags + sizeof(unsigned) * KILN_P2P_BLOCKS;
    CUdeviceptr x[KILN_P2P_MAX_RANKS], y[KILN_P2P_MAX_RANKS], mem[KILN_P2P_MAX_RANKS];
    CUstream st[KILN_P2P_MAX_RANKS];
    kiln_p2p p[KILN_P2P_MAX_RANKS];
    memset(p, 0, sizeof p);
    for (int r = 0; r < R; r++) {
        x[r] = kt_alloc(t, bytes);
        y[r] = kt_alloc(t, bytes);
        mem[r] = kt_alloc(t, state);
        if (!ok_cu(t, t->cu.cuMemsetD8(mem[r], 0, state), "cuMemsetD8", "collective/setup") ||
            !ok_cu(t, t->cu.cuStreamCreate(&st[r], CU_STREAM_NON_BLOCKING), "cuStreamCreate",
                   "collective/setup"))
            return;
    }
    for (int r = 0; r < R; r++) {
        for (int q = 0; q < R; q++) {
            p[r].buf[q] = mem[q];
            p[r].flags[q] = mem[q] + buf;
        }
        p[r].epoch = mem[r] + buf + flags;
        p[r].cap = cap;
        p[r].rank = r;
        p[r].nranks = R;
    }
    for (int i = 0; i < ncounts; i++)
        if (!t_count(t, f, R, counts[i], p, st, x, y))
            return; /* the context is unusable after a trap: leave the rest to the summary */
    for (int r = 0; r < R; r++) {
        kt_free(t, x[r]), kt_free(t, y[r]), kt_free(t, mem[r]);
        t->cu.cuStreamDestroy(st[r]);
    }
}

void ktest_collective(kt *t)
{
    /* f16 instantiates too (the engine runs it for f16 models; the sums are bf16's code) */
    char src[1024];
    snprintf(src, sizeof src, P2P_SRC("kiln::f16"), KILN_P2P_THREADS, KILN_P2P_THREADS);
    if (kt_module(t, "collective/allreduce_p2p f16", src) && !t->compile_only)
        kt_result(t, "collective/allreduce_p2p f16 compiles", 1, "NVRTC");
    snprintf(src, sizeof src, P2P_SRC("kiln::bf16"), KILN_P2P_THREADS, KILN_P2P_THREADS);
    CUmodule mod = kt_module(t, "collective/allreduce_p2p bf16", src);
    if (t->compile_only || !mod)
        return;
    CUfunction f = kt_func(t, mod, "k");
    /* one decode row; a tail (count % 8); one vector per thread and more; a partial last block
     * and blocks with nothing to do (the grid is fixed) */
    static const long long counts[] = {4096, 3 * 4096 + 5, 8 * 4096, 300007, 24, 3};
    static const int ranks[] = {1, 2, 4, 8};
    for (size_t i = 0; i < sizeof ranks / sizeof ranks[0]; i++)
        t_ranks(t, f, ranks[i], counts, (int)(sizeof counts / sizeof counts[0]));
}
