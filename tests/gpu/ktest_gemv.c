/* ktest_gemv — kernel tests of templates/gemv.cuh (see ktest.h) against a CPU reference, and
 * `kiln-ktest --bench gemv`: the weight bandwidth of the GEMV on the Llama-3 8B and 1B shapes,
 * with a 16-bit weight, an FP8 one (gemv_fp8, weight + scale bytes) and an INT4 one (gemv_int4,
 * G = 128, weight + sz bytes).
 *
 * gemv (16-bit weight). Inputs are drawn in float and rounded through the storage type (bf16,
 * or f16 in some cases), so the reference (double accumulation) sees exactly the kernel's
 * inputs. x ~ U[-1, 1), w ~ U[-1, 1) * 2/sqrt(K), bias ~ U[-0.5, 0.5): every output has an rms
 * of about 0.67, a useful range for the activations of the gated cases. Every case launches the
 * grid of the template's launch rule with the block size lower.c picks (lower_gemv_threads)
 * unless it names one: the cases cover every M of 1..8 (and 9..16 with MMAX = 16), gated and
 * not, bias, float output, N that is not a multiple of the 16-row tile, K shorter than one
 * 128-element step, K not a multiple of it, K = 14336, and split-K over 1 to 16 warps.
 *
 * gemv_fp8 (e4m3 weight bytes in the kernel's order k, k+2, k+1, k+3 per four elements, float
 * scales [N, ceil(K / SBC)]): the same shapes of case with SBC == K (a scale per row, applied
 * in the epilogue) and SBC = 64 or 128 with K not a multiple of it (block scales, applied to
 * each 64-element group's chain), K shorter than one 256-element step and not a multiple of
 * it, K = 14336, split-K over 1 to 16 warps, bf16 and f16. The weights are either realistic
 * (the U[-1, 1) * 2/sqrt(K) matrix quantised with fp8_e4m3_from_f32 at a scale of absmax/448
 * per row and K block, as kilnc --quant fp8 does) or bytes drawn uniformly over the 254
 * non-NaN e4m3 values (zeros of both signs, subnormals, +-448) with scales ~ s * U[0.5, 1) for
 * s = 1, 1e-6 and 1e3 (no bias there: it would hide the tiny outputs; no f16 output at s = 1e3
 * or in the gated uniform cases, whose outputs exceed f16's 65504). The reference is
 * sum_k x[m, k] * e4m3(q[n, k]) * scale[n, k / SBC] in double (each K block's sum of exact
 * products times its scale), plus the bias.
 *
 * gemv_int4 (nibbles, and per group of G columns of a row a DT scale s and a zero point z, in
 * the kernel's layout; templates/gemv.cuh): nibbles uniform over 0..15, zero points uniform over
 * 0..16, scales s * U[0.5, 1) rounded to DT for s = 0.25/sqrt(K) (outputs of rms ~0.7), 1e-3,
 * 1e-6 (f16: subnormal scales and weights) and 1e3 (bf16 or float output only); G = 32, 64, 128,
 * 256 and K; every M of 1..8 and 9..16, gated and not, bias, float output, bf16 and f16, N not a
 * multiple of the tile, K = 32, 64, 96 (shorter than one 512-element step), 640 and 4224 (a
 * partial step), 4096, 8192 and 14336, split-K over 1 to 8 warps. The reference sums x times
 * the weight values the kernel multiplies, by gemv_int4's rule: (q - z) * s for G % 128 == 0 (its
 * factored path: the exact float product of an integer of at most 5 bits and a DT value), else
 * DT((q - z) * s) (util_f32_to_bf16/f16 of that product is the one rounding, as in the kernel).
 * The block is lower_gemv_threads at gemv_int4's step of 512 elements.
 *
 * Tolerances (relative L2 over the whole output), the same for all three kernels:
 *   - stored in bf16: 1e-2. One rounding of the output is a relative error of at most 2^-9
 *     (rms about 2^-9/sqrt(3) = 1.1e-3); the float accumulation adds ~1e-7. 1e-2 is ~9x the
 *     expected error and far below what an indexing bug gives (~1).
 *   - stored in f16: the same 1e-2 (f16 rounding is 8x finer).
 *   - stored in float (OUT_F32, the logits): 1e-5. The products of two 16-bit values are exact
 *     in float (8 + 8 or 11 + 11 significant bits), and so are those of a 16-bit x and an e4m3
 *     weight (8 + 4 or 11 + 4 bits: gemv_fp8 turns each byte into the DT number of the same
 *     value, exactly) or of a 16-bit x and gemv_int4's DT weight, so the error is the
 *     summation's: inside one step (gemv: 128 elements, at most 8 chained mma; gemv_fp8: one
 *     64-element group, 4 chained mma; gemv_int4: one 128-element group, 8) the tensor cores
 *     add with truncation (each a relative error of ~2^-23 of that chain's partial sum), then
 *     the chains (gemv_fp8 with block scales: each times its scale, one float rounding), the
 *     steps and the warps' partials are added in float with rounding, and gemv_fp8 with a scale
 *     per row multiplies the sum once. The partial sums have independent signs, so their
 *     errors do not add up in one direction: ~1e-7 relative for K = 4096, as with the float
 *     FMAs the kernel had before. 1e-5 leaves a wide margin and still catches a dropped group
 *     of 32 (~1e-2) or a bf16-rounded output (~1e-3). The gated f32 case adds the fast-math
 *     silu (__expf and a fast division: a few ulp, ~1e-6).
 * Each case also checks that the rows of y past M (a buffer sized for MMAX rows) are untouched.
 * gemv_invariance checks batch invariance: row 0 of a launch with M rows equals, bit for bit,
 * a launch with that row alone (the split-K order depends on N, K and the block, never on M).
 * gemv_groups checks the row groups (M > MMAX, kilnc --batch-invariant's decode GEMV): at M = 1,
 * 7, 8, 9, 17, 64 and 200 every row equals, bit for bit, the same row launched alone (M = 1 on
 * that row's x and y), nothing past row M is written, and the rows match the reference. Both
 * run for gemv, gemv_fp8 and gemv_int4.
 * gemv_fp8/exact proves the byte conversion bit for bit, subnormals included: float output, x
 * rows one-hot (row m = e_k for 16 chosen k covering every k mod 4, every K block and the last
 * partial step), and every weight column k holding all 254 non-NaN byte values down its rows
 * (neighbouring columns differ, so a wrong byte permutation reads a wrong value). Each output
 * is then one product q * 1 in the tensor cores (exact) times its scale in float (one
 * rounding), so it must equal fp8_e4m3_to_f32(q) * scale computed in float, for power-of-two
 * scales and for others; zeros compare equal whatever their sign (the kernel's sums start at
 * +0, and +0 + -0 = +0).
 * gemv_int4/exact does the same for the INT4 conversion: x rows one-hot at 16 columns covering
 * every k mod 8, every group of 128 and the last, partial step of K = 640; column k holds q =
 * (n + 7k) % 16 at row n (every nibble value, neighbours differ), row n's zero point in group b
 * is (3n + b) % 17 (every z), so each output must equal the CPU's int4_value bit for bit: for
 * G = 128 and K (the factored path) the exact (q - z) * s (the chain's sum q - z is exact, then
 * one float product), for G = 32 and 64 DT((q - z) * s), each for power-of-two scales and for
 * others (whose products the general path rounds to DT).
 * dequant_int4 is checked bit for bit against those values and for nothing written past N * K.
 * dequant_fp8 is checked bit for bit against util_f32_to_bf16 / util_f32_to_f16 (both round to
 * nearest even, as the device conversions do) of fp8_e4m3_to_f32(q) * scale in float, and for
 * nothing written past N * K elements.
 * quant_fp8_rows (x rows to e4m3 for the W8A8 GEMM; cvt to e4m3 exists on sm_89 and up only,
 * so below that its cases are not run and a line says so; compile-only builds them for sm_80
 * too, where the template traps) runs bf16 and f16 x at K = 16, 64, 4096, 4112 (not a multiple
 * of the block's 8 * THREADS elements) and 14336, with lower.c's block size (row_threads: one
 * thread per 8 elements, 32 to 256) and at 1024 threads for K = 4112 and 14336, at M = 1, 3 and
 * 64, launched by its rule (grid M). Row m is, by m % 4: U[-1, 1) with one -3 (the amax is a
 * negative element), all zeros, one 1000 among +-(1000/448) * 2^[-12, -5) (bytes that are e4m3
 * subnormals and zeros), U[-1, 1) * 2^-8 .. 2^8. Checks, on the DT-rounded inputs: scale[m]
 * within 1e-6 relative of amax / 448 in double (the kernel's division is fast-math's, a few
 * ulp), exactly 1 for the zero row; every byte, un-permuted, equal to fp8_e4m3_from_f32(x /
 * scale[m]) computed in float with the kernel's own scale, or one code away where that
 * quotient lies within 1e-5 relative of the midpoint between the two codes (the fast-math
 * division may round across it; such ties are counted in the case's line); every element of
 * magnitude amax gives +-448 (0x7e / 0xfe); and the 64 bytes of q and 64 scales past M rows
 * keep their poison.
 */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktest.h"
#include "util.h"
#include "lower.h"
#include "quant.h"
#include "../../kernels/kiln_gemm.h"
#include "../../kernels/kiln_step.h"


typedef struct gcase {
    int N, K, mmax;
    int ms[17]; /* the rows M to run (one kernel for all), 0-terminated */
    int bias, gated, act, f32;
    int threads; /* 0: lower.c's block size for the shape */
    int f16;     /* storage type f16 instead of bf16 */
    int sbc;     /* 0: gemv; else gemv_fp8 with this SBC (K: a scale per row) */
    float wsc;   /* gemv_fp8: 0 quantises U[-1, 1) * 2/sqrt(K) (scales absmax/448); else uniform
                  * non-NaN bytes with scales ~ wsc * U[0.5, 1). gemv_int4: scales ~ wsc *
                  * U[0.5, 1), or 0.25/sqrt(K) * U[0.5, 1) for wsc 0 */
    int g4;      /* 0: gemv or gemv_fp8; else gemv_int4 with G = g4 (K: one group per row) */
} gcase;

/* A byte drawn uniformly over the 254 non-NaN e4m3 values (all but 0x7f and 0xff). */
static uint8_t fp8_rand(kt *t)
{
    for (;;) {
        int b = (int)((kt_randf(t) + 1.0f) * 128.0f) & 255;
        if ((b & 0x7f) != 0x7f)
            return (uint8_t)b;
    }
}

/* q ([N, K] e4m3 bytes in natural order) and g->scale uploaded in gemv_fp8's layout (each
 * aligned group of four elements k..k+3 stored as k, k+2, k+1, k+3); g->w gets q's values. */
static void fp8_upload(kt *t, gweights *g, const uint8_t *q)
{
    const size_t n = (size_t)g->N * g->K;
    uint8_t *p = xmalloc(n);
    for (size_t i = 0; i < n; i += 4) {
        p[i] = q[i];
        p[i + 1] = q[i + 2];
        p[i + 2] = q[i + 1];
        p[i + 3] = q[i + 3];
    }
    for (size_t i = 0; i < n; i++)
        g->w[i] = fp8_e4m3_to_f32(q[i]);
    g->dw = kt_upload(t, p, n);
    g->ds = kt_upload(t, g->scale, sizeof(float) * (size_t)g->N * g->kb);
    free(p);
}

/* A 16-bit DT number to float. */
static float dt_f32(uint16_t h, int f16) { return f16 ? util_f16_to_f32(h) : util_bf16_to_f32(h); }

/* The value gemv_int4 multiplies for nibble q, zero point z and DT scale bits s in groups of G
 * (templates/gemv.cuh): (q - z) * s, exact in float (at most 5 + 11 significant bits), for
 * G % 128 == 0 (its factored path); else DT((q - z) * s), the conversion the one rounding, as on
 * the GPU. */
static float int4_value(int q, int z, uint16_t s, int f16, int G)
{
    const float v = (float)(q - z) * dt_f32(s, f16);
    if (G % 128 == 0)
        return v;
    return dt_f32(f16 ? util_f32_to_f16(v) : util_f32_to_bf16(v), f16);
}

/* q ([N, K] nibbles 0..15 in natural order), z ([N, K/G] zero points 0..16) and s ([N, K/G] DT
 * scale bits) uploaded in gemv_int4's layout: each aligned group of 8 elements k..k+7 one
 * little-endian word, element k+2j in nibble j and k+2j+1 in nibble j+4; sz[e] = {(s, s),
 * (B + z, B + z)}, B = 128 (bf16) or 1024 (f16). g->w gets the values of int4_value. */
static void int4_upload(kt *t, gweights *g, const uint8_t *q, const uint8_t *z, const uint16_t *s,
                        int f16)
{
    const size_t n = (size_t)g->N * g->K, kg = (size_t)(g->K / g->g4), ne = (size_t)g->N * kg;
    uint8_t *p = xmalloc(n / 2);
    for (size_t i = 0; i < n; i += 8) {
        uint32_t wd = 0;
        for (int j = 0; j < 4; j++)
            wd |= (uint32_t)q[i + 2 * j] << 4 * j | (uint32_t)q[i + 2 * j + 1] << (16 + 4 * j);
        for (int b = 0; b < 4; b++)
            p[i / 2 + b] = (uint8_t)(wd >> 8 * b);
    }
    uint32_t *sz = xmalloc(sizeof(uint32_t) * 2 * ne);
    for (size_t e = 0; e < ne; e++) {
        const uint16_t bz = f16 ? util_f32_to_f16(1024.0f + z[e]) : util_f32_to_bf16(128.0f + z[e]);
        sz[2 * e] = s[e] | (uint32_t)s[e] << 16;
        sz[2 * e + 1] = bz | (uint32_t)bz << 16;
    }
    for (size_t i = 0; i < n; i++) {
        const size_t e = i / (size_t)g->K * kg + i % (size_t)g->K / (size_t)g->g4;
        g->w[i] = int4_value(q[i], z[e], s[e], f16, g->g4);
    }
    g->dw = kt_upload(t, p, n / 2);
    g->ds = kt_upload(t, sz, sizeof(uint32_t) * 2 * ne);
    free(p);
    free(sz);
}

/* An integer drawn uniformly from 0..n-1. */
static int int_rand(kt *t, int n)
{
    const int v = (int)((kt_randf(t) + 1.0f) * 0.5f * (float)n);
    return v < n ? v : n - 1;
}

/* A fresh weight [N, K]: U[-1, 1) * 2/sqrt(K) in the storage type (sbc 0), or gemv_fp8's with
 * SBC = sbc, quantised from that matrix (wsc 0) or uniform bytes with scales ~ wsc, or (g4)
 * gemv_int4's with G = g4: nibbles uniform over 0..15, per (row, group) a zero point uniform
 * over 0..16 and a DT scale ~ (wsc, or 0.25/sqrt(K) for wsc 0) * U[0.5, 1). */
void gweights_make(kt *t, gweights *g, int N, int K, int f16, int sbc, float wsc, int g4)
{
    const size_t n = (size_t)N * K;
    memset(g, 0, sizeof *g);
    g->N = N;
    g->K = K;
    g->sbc = sbc;
    g->g4 = g4;
    g->w = xmalloc(sizeof(float) * n);
    if (g4) {
        const size_t ne = (size_t)N * (K / g4);
        const float sc = wsc ? wsc : 0.25f / sqrtf((float)K);
        uint8_t *q = xmalloc(n), *z = xmalloc(ne);
        uint16_t *s = xmalloc(sizeof(uint16_t) * ne);
        for (size_t i = 0; i < n; i++)
            q[i] = (uint8_t)int_rand(t, 16);
        for (size_t e = 0; e < ne; e++) {
            const float v = sc * (0.75f + 0.25f * kt_randf(t));
            z[e] = (uint8_t)int_rand(t, 17);
            s[e] = f16 ? util_f32_to_f16(v) : util_f32_to_bf16(v);
        }
        int4_upload(t, g, q, z, s, f16);
        free(q);
        free(z);
        free(s);
        return;
    }
    if (!sbc) {
        kt_fill(t, g->w, n, 2.0f / sqrtf((float)K));
        uint16_t *h = kt_to_dt(g->w, n, f16);
        g->dw = kt_upload(t, h, sizeof(uint16_t) * n);
        free(h);
        return;
    }
    g->kb = (K + sbc - 1) / sbc;
    g->scale = xmalloc(sizeof(float) * (size_t)N * g->kb);
    uint8_t *q = xmalloc(n);
    if (wsc) {
        for (size_t i = 0; i < n; i++)
            q[i] = fp8_rand(t);
        for (size_t i = 0; i < (size_t)N * g->kb; i++)
            g->scale[i] = wsc * (0.75f + 0.25f * kt_randf(t));
    } else {
        kt_fill(t, g->w, n, 2.0f / sqrtf((float)K));
        for (int r = 0; r < N; r++)
            for (int b = 0; b < g->kb; b++) {
                const float *wr = g->w + (size_t)r * K;
                const int k0 = b * sbc, k1 = k0 + sbc < K ? k0 + sbc : K;
                float amax = 0;
                for (int k = k0; k < k1; k++)
                    amax = fabsf(wr[k]) > amax ? fabsf(wr[k]) : amax;
                const float s = amax > 0 ? amax / FP8_E4M3_MAX : 1.0f;
                g->scale[(size_t)r * g->kb + b] = s;
                for (int k = k0; k < k1; k++)
                    q[(size_t)r * K + k] = fp8_e4m3_from_f32(wr[k] / s);
            }
    }
    fp8_upload(t, g, q);
    free(q);
}

void gweights_free(kt *t, gweights *g)
{
    kt_free(t, g->dw);
    if (g->sbc || g->g4)
        kt_free(t, g->ds);
    free(g->w);
    free(g->scale);
}

/* The double-precision GEMV of M rows of x: want[m, o] = sum_k x[m, k] * w[n, k] (times
 * scale[n, k / sbc] for gemv_fp8) + b[n] (b may be NULL); gated: act(gate) * up. */
void gemv_ref(const float *x, const gweights *g, const float *b, int M, int gated, int act,
              float *want)
{
    const int N = g->N, K = g->K, NOUT = gated ? N / 2 : N;
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * K;
        for (int o = 0; o < NOUT; o++) {
            double acc[2] = {0, 0};
            for (int r = 0; r < (gated ? 2 : 1); r++) {
                const int n = o + r * NOUT;
                const float *wn = g->w + (size_t)n * K;
                double s = 0;
                if (g->sbc) { /* each K block's sum times its scale */
                    const float *sn = g->scale + (size_t)n * g->kb;
                    for (int kb = 0; kb < g->kb; kb++) {
                        const int k1 = (kb + 1) * g->sbc < K ? (kb + 1) * g->sbc : K;
                        double sb = 0;
                        for (int k = kb * g->sbc; k < k1; k++)
                            sb += (double)xm[k] * wn[k];
                        s += sb * sn[kb];
                    }
                } else {
                    for (int k = 0; k < K; k++)
                        s += (double)xm[k] * wn[k];
                }
                acc[r] = s + (b ? b[n] : 0.0);
            }
            want[(size_t)m * NOUT + o] = (float)(gated ? kt_act(act, acc[0]) * acc[1] : acc[0]);
        }
    }
}

/* The kernel's arguments into args: gemv's (st, x, w, bias, y, M), or gemv_fp8's (st, x, w,
 * scale, bias, y, M), or gemv_int4's (st, x, w, sz, bias, y, M). */
static void gemv_args(void *args[7], kiln_step *st, CUdeviceptr *x, gweights *g, CUdeviceptr *b,
                      CUdeviceptr *y, int *m)
{
    int i = 0;
    args[i++] = st;
    args[i++] = x;
    args[i++] = &g->dw;
    if (g->sbc || g->g4)
        args[i++] = &g->ds;
    args[i++] = b;
    args[i++] = y;
    args[i] = m;
}

/* The case's kernel: an extern "C" wrapper k_gemv of one instance of template fn (prefix:
 * source put before it, or NULL): gemv's signature, or with sbc gemv_fp8's (SBC = sbc), or with
 * g4 gemv_int4's (G = g4). */
static CUmodule gemv_module(kt *t, const char *name, const char *prefix, const char *fn,
                            const char *dt, int N, int K, int mmax, int bias, int gated, int act,
                            int f32, int threads, int sbc, int g4)
{
    char src[1024], wt[64], sp[32] = "", sa[16] = "", st[16] = "";
    snprintf(wt, sizeof wt, "%s", sbc || g4 ? "unsigned char" : dt);
    if (sbc) {
        snprintf(sp, sizeof sp, " const float *scale,");
        snprintf(sa, sizeof sa, " scale,");
        snprintf(st, sizeof st, ", %d", sbc);
    } else if (g4) {
        snprintf(sp, sizeof sp, " const uint2 *sz,");
        snprintf(sa, sizeof sa, " sz,");
        snprintf(st, sizeof st, ", %d", g4);
    }
    snprintf(src, sizeof src,
             "#include \"gemv.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_gemv(const kiln_step st, const %s *x, const %s *w,%s const %s *bias, void *y, "
             "int M)\n"
             "{\n"
             "    kiln::%s<%s, %d, %d, %d, %s, %s, %d, %s, %d%s>(st, x, w,%s bias, y, M);\n"
             "}\n",
             threads, dt, wt, sp, dt, fn, dt, N, K, mmax, bias ? "true" : "false",
             gated ? "true" : "false", act, f32 ? "true" : "false", threads, st, sa);
    if (!prefix)
        return kt_module(t, name, src);
    char *all = xasprintf("%s\n%s", prefix, src);
    CUmodule m = kt_module(t, name, all);
    free(all);
    return m;
}

/* Tiles of the launch rule (templates/gemv.cuh): one block per 16-row tile (grid y) and row
 * group (grid x: gemv_groups). */
static unsigned gemv_blocks(int N, int gated)
{
    return (unsigned)KILN_GEMV_TILES(N, gated);
}

static unsigned gemv_groups(int M, int mmax) { return (unsigned)((M + mmax - 1) / mmax); }

/* One launch of a case's kernel f with M rows, checked against the reference. */
static void gemv_check(kt *t, const gcase *c, CUfunction f, int TH, int M, const char *name)
{
    if (t->compile_only)
        return; /* gemv_case compiled the kernel; the inputs and the reference would be unused */
    const int N = c->N, K = c->K, MMAX = c->mmax;
    const int NOUT = c->gated ? N / 2 : N;
    float *x = xmalloc(sizeof(float) * (size_t)M * K);
    float *b = xmalloc(sizeof(float) * (size_t)N);
    gweights g;
    kt_fill(t, x, (size_t)M * K, 1.0f);
    gweights_make(t, &g, N, K, c->f16, c->sbc, c->wsc, c->g4);
    kt_fill(t, b, (size_t)N, 0.5f);
    uint16_t *x16 = kt_to_dt(x, (size_t)M * K, c->f16);
    uint16_t *b16 = kt_to_dt(b, (size_t)N, c->f16);

    /* y is sized for MMAX rows so that a write to a row >= M shows (it stays poisoned). */
    const size_t esz = c->f32 ? 4 : 2;
    const size_t ybytes = (size_t)MMAX * NOUT * esz, used = (size_t)M * NOUT * esz;
    CUdeviceptr dx = kt_upload(t, x16, sizeof(uint16_t) * (size_t)M * K);
    CUdeviceptr db = c->bias ? kt_upload(t, b16, sizeof(uint16_t) * (size_t)N) : 0;
    CUdeviceptr dy = kt_alloc(t, ybytes);
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = M;
    st.n_seqs = M;
    int m_arg = M;
    void *args[7];
    gemv_args(args, &st, &dx, &g, &db, &dy, &m_arg);
    kt_launch(t, f, name, gemv_groups(M, MMAX), gemv_blocks(N, c->gated), 1, (unsigned)TH, 0,
              args);
    unsigned char *ybuf = xmalloc(ybytes);
    kt_download(t, ybuf, dy, ybytes);

    float *got = xmalloc(sizeof(float) * (size_t)M * NOUT);
    for (size_t i = 0; i < (size_t)M * NOUT; i++) {
        if (c->f32) {
            memcpy(&got[i], ybuf + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, ybuf + 2 * i, 2);
            got[i] = c->f16 ? util_f16_to_f32(h) : util_bf16_to_f32(h);
        }
    }

    float *want = xmalloc(sizeof(float) * (size_t)M * NOUT);
    gemv_ref(x, &g, c->bias ? b : NULL, M, c->gated, c->act, want);

    /* rows M..MMAX-1 of y must still hold the poison (all bytes 0xFF) */
    size_t touched = 0, first = 0;
    for (size_t i = used; i < ybytes && !t->compile_only; i++)
        if (ybuf[i] != 0xFF && touched++ == 0)
            first = i;
    if (touched) {
        char d[200];
        snprintf(d, sizeof d, "wrote %zu bytes past row M=%d (first at output row %zu, col %zu)",
                 touched, M, first / esz / NOUT, first / esz % NOUT);
        kt_result(t, name, 0, d);
    } else {
        kt_check(t, name, got, want, (size_t)M * NOUT, c->f32 ? 1e-5 : 1e-2);
    }

    kt_free(t, dx);
    if (db)
        kt_free(t, db);
    kt_free(t, dy);
    gweights_free(t, &g);
    free(x);
    free(b);
    free(x16);
    free(b16);
    free(ybuf);
    free(got);
    free(want);
}

/* The template a case instantiates, and " SBC=..." for gemv_fp8, " G=..." for gemv_int4 (empty
 * for gemv). */
static const char *gemv_fn(int sbc, int g4)
{
    return sbc ? "gemv_fp8" : g4 ? "gemv_int4" : "gemv";
}

static void sbc_label(char *out, size_t n, int sbc, int g4, int K)
{
    const char *what = sbc ? "SBC" : "G";
    const int v = sbc ? sbc : g4;
    if (!v)
        out[0] = 0;
    else if (v == K)
        snprintf(out, n, " %s=K", what);
    else
        snprintf(out, n, " %s=%d", what, v);
}

/* lower.c's block size for a kernel (sbc: gemv_fp8, g4: gemv_int4, neither: gemv), the one place
 * this file asks for it: lower_gemv_threads with the kernel's step (128, 256 or 512 elements: the
 * same bytes of weight a step). */
static int gemv_threads(int N, int K, int gated, int sbc, int g4)
{
    return lower_gemv_threads(N, K, gated, sbc ? 256 : g4 ? 512 : 128);
}

/* A case: its kernel compiled once, run for each M of c->ms. */
static void gemv_case(kt *t, const gcase *c)
{
    const int TH = c->threads ? c->threads : gemv_threads(c->N, c->K, c->gated, c->sbc, c->g4);
    char opts[160];
    int at = 0;
    opts[0] = 0;
    if (c->mmax != 8)
        at += snprintf(opts + at, sizeof opts - at, " MMAX=%d", c->mmax);
    if (c->gated)
        at += snprintf(opts + at, sizeof opts - at, " gated %s", kt_act_name(c->act));
    if (c->bias)
        at += snprintf(opts + at, sizeof opts - at, " bias");
    if (c->f32)
        at += snprintf(opts + at, sizeof opts - at, " f32");
    if (c->f16)
        at += snprintf(opts + at, sizeof opts - at, " f16");
    if (c->sbc || c->g4) {
        char sl[32];
        sbc_label(sl, sizeof sl, c->sbc, c->g4, c->K);
        at += snprintf(opts + at, sizeof opts - at, "%s", sl);
        if (c->wsc)
            at += snprintf(opts + at, sizeof opts - at, "%s scale~%g", c->sbc ? " bytes" : "",
                           c->wsc);
    }
    snprintf(opts + at, sizeof opts - at, " threads=%d", TH);
    CUmodule mod = NULL;
    int compiled = 0;
    for (int i = 0; i < 16 && c->ms[i]; i++) {
        char name[240];
        snprintf(name, sizeof name, "%s/N=%d K=%d M=%d%s", gemv_fn(c->sbc, c->g4), c->N, c->K,
                 c->ms[i], opts);
        if (!kt_want(t, name))
            continue;
        if (!compiled) {
            mod = gemv_module(t, name, NULL, gemv_fn(c->sbc, c->g4),
                              c->f16 ? "kiln::f16" : "kiln::bf16", c->N, c->K, c->mmax, c->bias,
                              c->gated, c->act, c->f32, TH, c->sbc, c->g4);
            compiled = 1;
        }
        if (!mod && !t->compile_only)
            return; /* the compile failure is recorded with its log */
        gemv_check(t, c, kt_func(t, mod, "k_gemv"), TH, c->ms[i], name);
    }
}

/* Batch invariance: the first row of y from a launch with M rows of x equals, bit for bit, the
 * one from a launch with that row alone (same kernel, float output, split-K on). sbc: gemv_fp8
 * with that SBC (realistic weights); g4: gemv_int4 with G = g4; both 0: gemv. */
static void gemv_invariance(kt *t, int N, int K, int M, int mmax, int sbc, int g4)
{
    const int TH = gemv_threads(N, K, 0, sbc, g4);
    char name[200], sl[32];
    sbc_label(sl, sizeof sl, sbc, g4, K);
    snprintf(name, sizeof name, "%s/invariance N=%d K=%d M=%d vs 1 MMAX=%d%s threads=%d",
             gemv_fn(sbc, g4), N, K, M, mmax, sl, TH);
    if (!kt_want(t, name))
        return;
    CUmodule mod = gemv_module(t, name, NULL, gemv_fn(sbc, g4), "kiln::bf16", N, K, mmax, 0, 0, 0,
                               1, TH, sbc, g4);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_gemv");
    float *x = xmalloc(sizeof(float) * (size_t)M * K);
    gweights g;
    kt_fill(t, x, (size_t)M * K, 1.0f);
    gweights_make(t, &g, N, K, 0, sbc, 0, g4);
    uint16_t *x16 = kt_to_dt(x, (size_t)M * K, 0);
    CUdeviceptr dx = kt_upload(t, x16, sizeof(uint16_t) * (size_t)M * K);
    CUdeviceptr db = 0, dy = kt_alloc(t, (size_t)mmax * N * 4);
    kiln_step st;
    memset(&st, 0, sizeof st);
    float *y[2];
    for (int i = 0; i < 2; i++) {
        int m_arg = i == 0 ? M : 1;
        st.T = st.n_seqs = m_arg;
        void *args[7];
        gemv_args(args, &st, &dx, &g, &db, &dy, &m_arg);
        kt_launch(t, f, name, gemv_groups(m_arg, mmax), gemv_blocks(N, 0), 1, (unsigned)TH, 0,
                  args);
        y[i] = xmalloc(sizeof(float) * (size_t)N);
        kt_download(t, y[i], dy, sizeof(float) * (size_t)N);
    }
    int differ = -1;
    for (int n = 0; n < N && differ < 0; n++)
        if (memcmp(&y[0][n], &y[1][n], sizeof(float)) != 0)
            differ = n;
    char d[200];
    if (differ >= 0)
        snprintf(d, sizeof d, "row 0 differs at column %d: %.9g with M=%d, %.9g alone", differ,
                 y[0][differ], M, y[1][differ]);
    else
        snprintf(d, sizeof d, "row 0 identical with M=%d and alone (%d columns)", M, N);
    kt_result(t, name, differ < 0, d);
    kt_free(t, dx);
    kt_free(t, dy);
    gweights_free(t, &g);
    free(x);
    free(x16);
    free(y[0]);
    free(y[1]);
}

/* Row groups: one kernel launched at each M of ms (up to MG rows, grid x = ceil(M / mmax)); every
 * row of y equals, bit for bit, that row launched alone (M = 1, x and y offset to the row), rows
 * past M keep the poison, and the rows at the largest M match the double reference. sbc:
 * gemv_fp8 with that SBC (realistic weights); g4: gemv_int4 with G = g4; both 0: gemv. */
enum { MG = 200 };
static void gemv_groups_case(kt *t, int N, int K, int mmax, int gated, int bias, int f32, int sbc,
                             int g4, const int *ms, int nms)
{
    const int TH = gemv_threads(N, K, gated, sbc, g4), NOUT = gated ? N / 2 : N;
    const size_t esz = f32 ? 4 : 2, row = (size_t)NOUT * esz;
    char base[200], sl[32];
    sbc_label(sl, sizeof sl, sbc, g4, K);
    snprintf(base, sizeof base, "%s/groups N=%d K=%d MMAX=%d%s%s%s%s threads=%d",
             gemv_fn(sbc, g4), N, K, mmax, gated ? " gated silu" : "", bias ? " bias" : "",
             f32 ? " f32" : "", sl, TH);
    if (!kt_want(t, base))
        return;
    CUmodule mod = gemv_module(t, base, NULL, gemv_fn(sbc, g4), "kiln::bf16", N, K, mmax, bias,
                               gated, KILN_ACT_SILU, f32, TH, sbc, g4);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_gemv");
    float *x = xmalloc(sizeof(float) * (size_t)MG * K);
    float *b = xmalloc(sizeof(float) * (size_t)N);
    gweights g;
    kt_fill(t, x, (size_t)MG * K, 1.0f);
    gweights_make(t, &g, N, K, 0, sbc, 0, g4);
    kt_fill(t, b, (size_t)N, 0.5f);
    uint16_t *x16 = kt_to_dt(x, (size_t)MG * K, 0);
    uint16_t *b16 = kt_to_dt(b, (size_t)N, 0);
    CUdeviceptr dx = kt_upload(t, x16, sizeof(uint16_t) * (size_t)MG * K);
    CUdeviceptr db = bias ? kt_upload(t, b16, sizeof(uint16_t) * (size_t)N) : 0;
    /* y has MG + 8 rows, so that a write past row M shows at every M */
    const size_t ybytes = (MG + 8) * row;
    CUdeviceptr dy = kt_alloc(t, ybytes), dalone = kt_alloc(t, ybytes);
    kiln_step st;
    memset(&st, 0, sizeof st);
    /* every row alone: M = 1 on row r's x and y */
    for (int r = 0; r < MG; r++) {
        CUdeviceptr xr = dx + (CUdeviceptr)r * K * 2, yr = dalone + (CUdeviceptr)r * row;
        int one = 1;
        st.T = st.n_seqs = 1;
        void *args[7];
        gemv_args(args, &st, &xr, &g, &db, &yr, &one);
        kt_launch(t, f, base, 1, gemv_blocks(N, gated), 1, (unsigned)TH, 0, args);
    }
    unsigned char *alone = xmalloc(ybytes), *got = xmalloc(ybytes);
    kt_download(t, alone, dalone, ybytes);
    for (int i = 0; i < nms; i++) {
        const int M = ms[i];
        char name[240], d[240];
        snprintf(name, sizeof name, "%s M=%d vs M=1", base, M);
        if (!t->compile_only) { /* back to the poison */
            CUresult rc = t->cu.cuMemsetD8(dy, 0xFF, ybytes);
            if (rc != CUDA_SUCCESS) {
                kt_result(t, name, 0, "cuMemsetD8 of y failed");
                continue;
            }
        }
        st.T = st.n_seqs = M;
        int m_arg = M;
        void *args[7];
        gemv_args(args, &st, &dx, &g, &db, &dy, &m_arg);
        kt_launch(t, f, name, gemv_groups(M, mmax), gemv_blocks(N, gated), 1, (unsigned)TH, 0,
                  args);
        kt_download(t, got, dy, ybytes);
        size_t differ = (size_t)-1, touched = 0;
        for (size_t k = 0; k < (size_t)M * row && differ == (size_t)-1; k++)
            if (got[k] != alone[k])
                differ = k;
        for (size_t k = (size_t)M * row; k < ybytes && !t->compile_only; k++)
            touched += got[k] != 0xFF;
        if (differ != (size_t)-1)
            snprintf(d, sizeof d, "row %zu (group %zu) differs from that row alone at column %zu",
                     differ / row, differ / row / (size_t)mmax, differ % row / esz);
        else if (touched)
            snprintf(d, sizeof d, "wrote %zu bytes past row M=%d", touched, M);
        else
            snprintf(d, sizeof d, "%d rows identical to each row alone (%u groups)", M,
                     gemv_groups(M, mmax));
        kt_result(t, name, differ == (size_t)-1 && !touched, d);
    }
    /* the rows alone against the reference (so the groups are right, not only alike) */
    float *gf = xmalloc(sizeof(float) * (size_t)MG * NOUT);
    float *want = xmalloc(sizeof(float) * (size_t)MG * NOUT);
    for (size_t k = 0; k < (size_t)MG * NOUT; k++) {
        if (f32) {
            memcpy(&gf[k], alone + 4 * k, 4);
        } else {
            uint16_t h;
            memcpy(&h, alone + 2 * k, 2);
            gf[k] = util_bf16_to_f32(h);
        }
    }
    if (!t->compile_only)
        gemv_ref(x, &g, bias ? b : NULL, MG, gated, KILN_ACT_SILU, want);
    char name[240];
    snprintf(name, sizeof name, "%s rows 0..%d alone vs reference", base, MG - 1);
    kt_check(t, name, gf, want, (size_t)MG * NOUT, f32 ? 1e-5 : 1e-2);
    kt_free(t, dx);
    if (db)
        kt_free(t, db);
    kt_free(t, dy);
    kt_free(t, dalone);
    gweights_free(t, &g);
    free(x);
    free(b);
    free(x16);
    free(b16);
    free(alone);
    free(got);
    free(gf);
    free(want);
}

/* gemv_fp8/exact (see the top of the file): x rows one-hot at 16 columns ks, every column of w
 * holding all 254 non-NaN bytes down its rows, float output compared bit for bit with
 * fp8_e4m3_to_f32(q) * scale (a zero equal to either zero), with power-of-two scales and then
 * others (one launch each). */
static void gemv_fp8_exact(kt *t, int f16, int sbc)
{
    enum { N = 264, K = 336, M = 16 };
    /* every k mod 4, every 64-element block, and the last, partial step (k >= 256) */
    static const int ks[M] = {0, 1, 2, 3, 17, 46, 63, 64, 129, 130, 191, 254, 257, 300, 334, 335};
    const int TH = gemv_threads(N, K, 0, sbc, 0);
    char base[200], sl[32];
    sbc_label(sl, sizeof sl, sbc, 0, K);
    snprintf(base, sizeof base, "gemv_fp8/exact N=%d K=%d M=%d MMAX=16 f32%s%s threads=%d", N, K,
             M, f16 ? " f16" : "", sl, TH);
    if (!kt_want(t, base))
        return;
    CUmodule mod = gemv_module(t, base, NULL, "gemv_fp8", f16 ? "kiln::f16" : "kiln::bf16", N, K,
                               16, 0, 0, 0, 1, TH, sbc, 0);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_gemv");
    uint8_t vals[254];
    int nv = 0;
    for (int v = 0; v < 256; v++)
        if ((v & 0x7f) != 0x7f)
            vals[nv++] = (uint8_t)v;
    /* column k holds vals[(n + 37k) % 254] at row n: all of them in rows 0..253, and a value
     * other than its neighbours' */
    uint8_t *q = xmalloc((size_t)N * K);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            q[(size_t)n * K + k] = vals[(n + 37 * k) % 254];
    uint16_t *x16 = xcalloc((size_t)M * K, sizeof(uint16_t));
    for (int m = 0; m < M; m++)
        x16[(size_t)m * K + ks[m]] = f16 ? 0x3c00 : 0x3f80; /* 1.0 */
    gweights g;
    memset(&g, 0, sizeof g);
    g.N = N;
    g.K = K;
    g.sbc = sbc;
    g.kb = (K + sbc - 1) / sbc;
    g.w = xmalloc(sizeof(float) * (size_t)N * K);
    g.scale = xmalloc(sizeof(float) * (size_t)N * g.kb);
    CUdeviceptr dx = kt_upload(t, x16, sizeof(uint16_t) * (size_t)M * K), db = 0;
    CUdeviceptr dy = kt_alloc(t, sizeof(float) * (size_t)M * N);
    float *y = xmalloc(sizeof(float) * (size_t)M * N);
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = st.n_seqs = M;
    for (int p = 0; p < 2; p++) {
        /* 2^-6 .. 2^6, then [1.01, 1.99) times those (never a power of two) */
        for (int i = 0; i < N * g.kb; i++)
            g.scale[i] = ldexpf(p == 0 ? 1.0f : 1.5f + 0.49f * kt_randf(t), i % 13 - 6);
        fp8_upload(t, &g, q);
        int m_arg = M;
        void *args[7];
        char name[240], d[240];
        snprintf(name, sizeof name, "%s scales %s", base, p == 0 ? "pow2" : "non-pow2");
        gemv_args(args, &st, &dx, &g, &db, &dy, &m_arg);
        kt_launch(t, f, name, 1, gemv_blocks(N, 0), 1, (unsigned)TH, 0, args);
        kt_download(t, y, dy, sizeof(float) * (size_t)M * N);
        size_t bad = 0, first = 0;
        float fw = 0;
        for (int m = 0; m < M && !t->compile_only; m++)
            for (int n = 0; n < N; n++) {
                const size_t i = (size_t)m * N + n;
                const float want = g.w[(size_t)n * K + ks[m]] * g.scale[n * g.kb + ks[m] / sbc];
                if (memcmp(&y[i], &want, sizeof want) != 0 && !(y[i] == 0 && want == 0) &&
                    bad++ == 0) {
                    first = i;
                    fw = want;
                }
            }
        if (bad) {
            const int m = (int)(first / N), n = (int)(first % N);
            snprintf(d, sizeof d,
                     "%zu of %d outputs not exact; first [m=%d (k=%d), n=%d]: byte 0x%02x "
                     "scale %a: got %a want %a",
                     bad, M * N, m, ks[m], n, q[(size_t)n * K + ks[m]],
                     g.scale[n * g.kb + ks[m] / sbc], y[first], fw);
        } else {
            snprintf(d, sizeof d, "%d outputs exact (254 byte values at each of %d columns)",
                     M * N, M);
        }
        kt_result(t, name, bad == 0, d);
        kt_free(t, g.dw);
        kt_free(t, g.ds);
    }
    kt_free(t, dx);
    kt_free(t, dy);
    free(g.w);
    free(g.scale);
    free(q);
    free(x16);
    free(y);
}

/* Appends to src (size n) an extern "C" wrapper `fn` of one dequantising kernel as lower.c
 * writes it: dequant_int4 (int4) with group blk, else dequant_fp8 with scales per blk columns,
 * THREADS th, out in f16 or bf16. */
static void dequant_src(char *src, size_t n, const char *fn, int int4, int f16, int N, int K,
                        int blk, int th)
{
    const char *dt = f16 ? "kiln::f16" : "kiln::bf16";
    const size_t len = strlen(src);
    snprintf(src + len, n - len,
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "%s(const kiln_step st, const unsigned char *w, const %s *scale, %s *out)\n"
             "{\n"
             "    kiln::%s<%s, %d, %d, %d, %d>(st, w, scale, out);\n"
             "}\n",
             th, fn, int4 ? "uint2" : "float", dt, int4 ? "dequant_int4" : "dequant_fp8", dt, N,
             K, blk, th);
}

/* dequant_fp8 of a weight [N, K] (realistic for wsc 0, else uniform bytes with scales ~ wsc):
 * every element bit for bit the CPU's conversion of fp8_e4m3_to_f32(q) * scale, and nothing
 * written in the 64 elements past the end. */
static void dequant_case(kt *t, int N, int K, int sbc, int f16, int TH, float wsc)
{
    enum { PAD = 64 };
    char name[200], sl[32], kind[40], src[512] = "#include \"gemv.cuh\"\n";
    sbc_label(sl, sizeof sl, sbc, 0, K);
    if (wsc)
        snprintf(kind, sizeof kind, " bytes scale~%g", wsc);
    else
        snprintf(kind, sizeof kind, " quantised");
    snprintf(name, sizeof name, "dequant_fp8/N=%d K=%d%s%s%s threads=%d", N, K, sl,
             f16 ? " f16" : "", kind, TH);
    if (!kt_want(t, name))
        return;
    dequant_src(src, sizeof src, "k_dequant", 0, f16, N, K, sbc, TH);
    CUmodule mod = kt_module(t, name, src);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_dequant");
    gweights g;
    gweights_make(t, &g, N, K, f16, sbc, wsc, 0);
    const size_t n = (size_t)N * K;
    CUdeviceptr dy = kt_alloc(t, sizeof(uint16_t) * (n + PAD));
    kiln_step st;
    memset(&st, 0, sizeof st);
    void *args[] = {&st, &g.dw, &g.ds, &dy};
    kt_launch(t, f, name, (unsigned)((n / 16 + TH - 1) / TH), 1, 1, (unsigned)TH, 0, args);
    uint16_t *y = xmalloc(sizeof(uint16_t) * (n + PAD));
    kt_download(t, y, dy, sizeof(uint16_t) * (n + PAD));
    size_t bad = 0, first = 0, touched = 0;
    for (size_t i = 0; i < n && !t->compile_only; i++) {
        const float v = g.w[i] * g.scale[i / K * g.kb + i % K / sbc];
        const uint16_t want = f16 ? util_f32_to_f16(v) : util_f32_to_bf16(v);
        if (y[i] != want && bad++ == 0)
            first = i;
    }
    for (size_t i = n; i < n + PAD && !t->compile_only; i++)
        touched += y[i] != 0xFFFF;
    char d[240];
    if (bad) {
        const float v = g.w[first] * g.scale[first / K * g.kb + first % K / sbc];
        snprintf(d, sizeof d,
                 "%zu of %zu elements differ; first [%zu, %zu]: got 0x%04x want 0x%04x (%a)", bad,
                 n, first / K, first % K, y[first], f16 ? util_f32_to_f16(v) : util_f32_to_bf16(v),
                 v);
    } else if (touched) {
        snprintf(d, sizeof d, "wrote %zu elements past N*K", touched);
    } else {
        snprintf(d, sizeof d, "%zu elements exact", n);
    }
    kt_result(t, name, !bad && !touched, d);
    kt_free(t, dy);
    gweights_free(t, &g);
    free(y);
}

/* gemv_int4/exact (see the top of the file): x rows one-hot at 16 columns ks, column k of w
 * holding q = (n + 7k) % 16 at row n (every q in rows 0..15, neighbours differ), zero points
 * (3n + group) % 17 (every z down a group's rows), float output compared bit for bit with the CPU's
 * int4_value (a zero equal to either zero): the exact (q - z) * s for G % 128 == 0, else
 * DT((q - z) * s), with power-of-two scales and then others. */
static void gemv_int4_exact(kt *t, int f16, int G)
{
    enum { N = 264, K = 640, M = 16 };
    /* every k mod 8, every group of 128, and the last, partial step (k >= 512) */
    static const int ks[M] = {0, 1, 2, 3, 4, 5, 6, 7, 45, 130, 263, 300, 407, 513, 600, 639};
    const int TH = gemv_threads(N, K, 0, 0, G), kg = K / G;
    char base[200], sl[32];
    sbc_label(sl, sizeof sl, 0, G, K);
    snprintf(base, sizeof base, "gemv_int4/exact N=%d K=%d M=%d MMAX=16 f32%s%s threads=%d", N, K,
             M, f16 ? " f16" : "", sl, TH);
    if (!kt_want(t, base))
        return;
    CUmodule mod = gemv_module(t, base, NULL, "gemv_int4", f16 ? "kiln::f16" : "kiln::bf16", N, K,
                               16, 0, 0, 0, 1, TH, 0, G);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_gemv");
    uint8_t *q = xmalloc((size_t)N * K), *z = xmalloc((size_t)N * kg);
    uint16_t *s = xmalloc(sizeof(uint16_t) * (size_t)N * kg);
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < K; k++)
            q[(size_t)n * K + k] = (uint8_t)((n + 7 * k) % 16);
        for (int b = 0; b < kg; b++)
            z[(size_t)n * kg + b] = (uint8_t)((3 * n + b) % 17);
    }
    uint16_t *x16 = xcalloc((size_t)M * K, sizeof(uint16_t));
    for (int m = 0; m < M; m++)
        x16[(size_t)m * K + ks[m]] = f16 ? 0x3c00 : 0x3f80; /* 1.0 */
    gweights g;
    memset(&g, 0, sizeof g);
    g.N = N;
    g.K = K;
    g.g4 = G;
    g.w = xmalloc(sizeof(float) * (size_t)N * K);
    CUdeviceptr dx = kt_upload(t, x16, sizeof(uint16_t) * (size_t)M * K), db = 0;
    CUdeviceptr dy = kt_alloc(t, sizeof(float) * (size_t)M * N);
    float *y = xmalloc(sizeof(float) * (size_t)M * N);
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = st.n_seqs = M;
    for (int p = 0; p < 2; p++) {
        /* 2^-6 .. 2^6, then [1.01, 1.99) times those (the products then round) */
        for (int i = 0; i < N * kg; i++) {
            const float v = ldexpf(p == 0 ? 1.0f : 1.5f + 0.49f * kt_randf(t), i % 13 - 6);
            s[i] = f16 ? util_f32_to_f16(v) : util_f32_to_bf16(v);
        }
        int4_upload(t, &g, q, z, s, f16);
        int m_arg = M;
        void *args[7];
        char name[240], d[240];
        snprintf(name, sizeof name, "%s scales %s", base, p == 0 ? "pow2" : "non-pow2");
        gemv_args(args, &st, &dx, &g, &db, &dy, &m_arg);
        kt_launch(t, f, name, 1, gemv_blocks(N, 0), 1, (unsigned)TH, 0, args);
        kt_download(t, y, dy, sizeof(float) * (size_t)M * N);
        size_t bad = 0, first = 0;
        float fw = 0;
        for (int m = 0; m < M && !t->compile_only; m++)
            for (int n = 0; n < N; n++) {
                const size_t i = (size_t)m * N + n;
                const float want = g.w[(size_t)n * K + ks[m]];
                if (memcmp(&y[i], &want, sizeof want) != 0 && !(y[i] == 0 && want == 0) &&
                    bad++ == 0) {
                    first = i;
                    fw = want;
                }
            }
        if (bad) {
            const int m = (int)(first / N), n = (int)(first % N);
            const size_t e = (size_t)n * kg + ks[m] / G;
            snprintf(d, sizeof d,
                     "%zu of %d outputs not exact; first [m=%d (k=%d), n=%d]: q=%d z=%d scale %a: "
                     "got %a want %a",
                     bad, M * N, m, ks[m], n, q[(size_t)n * K + ks[m]], z[e], dt_f32(s[e], f16),
                     y[first], fw);
        } else {
            snprintf(d, sizeof d, "%d outputs exact (16 nibble values at each of %d columns)",
                     M * N, M);
        }
        kt_result(t, name, bad == 0, d);
        kt_free(t, g.dw);
        kt_free(t, g.ds);
    }
    kt_free(t, dx);
    kt_free(t, dy);
    free(g.w);
    free(q);
    free(z);
    free(s);
    free(x16);
    free(y);
}

/* dequant_int4 of a weight [N, K] (gweights_make's INT4 weight with scales ~ wsc): every element
 * bit for bit the CPU's DT((q - z) * s) (g.w's int4_value, exact or already DT, rounded to DT),
 * and nothing written in the 64 elements past the end. */
static void dequant_int4_case(kt *t, int N, int K, int G, int f16, int TH, float wsc)
{
    enum { PAD = 64 };
    char name[200], sl[32], src[512] = "#include \"gemv.cuh\"\n";
    sbc_label(sl, sizeof sl, 0, G, K);
    snprintf(name, sizeof name, "dequant_int4/N=%d K=%d%s%s scale~%g threads=%d", N, K, sl,
             f16 ? " f16" : "", wsc ? wsc : 0.25 / sqrt((double)K), TH);
    if (!kt_want(t, name))
        return;
    dequant_src(src, sizeof src, "k_dequant", 1, f16, N, K, G, TH);
    CUmodule mod = kt_module(t, name, src);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_dequant");
    gweights g;
    gweights_make(t, &g, N, K, f16, 0, wsc, G);
    const size_t n = (size_t)N * K;
    CUdeviceptr dy = kt_alloc(t, sizeof(uint16_t) * (n + PAD));
    kiln_step st;
    memset(&st, 0, sizeof st);
    void *args[] = {&st, &g.dw, &g.ds, &dy};
    kt_launch(t, f, name, (unsigned)((n / 32 + TH - 1) / TH), 1, 1, (unsigned)TH, 0, args);
    uint16_t *y = xmalloc(sizeof(uint16_t) * (n + PAD));
    kt_download(t, y, dy, sizeof(uint16_t) * (n + PAD));
    /* g.w holds (q - z) * s, exact in float or already rounded to DT: its conversion to DT is
     * the kernel's one rounding either way (signed zeros and subnormals too) */
    size_t bad = 0, first = 0, touched = 0;
    for (size_t i = 0; i < n && !t->compile_only; i++) {
        const uint16_t want = f16 ? util_f32_to_f16(g.w[i]) : util_f32_to_bf16(g.w[i]);
        if (y[i] != want && bad++ == 0)
            first = i;
    }
    for (size_t i = n; i < n + PAD && !t->compile_only; i++)
        touched += y[i] != 0xFFFF;
    char d[240];
    if (bad) {
        snprintf(d, sizeof d,
                 "%zu of %zu elements differ; first [%zu, %zu]: got 0x%04x want 0x%04x (%a)", bad,
                 n, first / K, first % K, y[first],
                 f16 ? util_f32_to_f16(g.w[first]) : util_f32_to_bf16(g.w[first]), g.w[first]);
    } else if (touched) {
        snprintf(d, sizeof d, "wrote %zu elements past N*K", touched);
    } else {
        snprintf(d, sizeof d, "%zu elements exact", n);
    }
    kt_result(t, name, !bad && !touched, d);
    kt_free(t, dy);
    gweights_free(t, &g);
    free(y);
}

/* quant_fp8_rows (see the top of the file). Row m's kind, by m % 4 (M = 1 runs the first): */
enum { QROW_NEG_AMAX, QROW_ZERO, QROW_HUGE_TINY, QROW_RANDOM };

/* Row r of x ([K] floats, rounded through the storage type by the caller): kind r % 4. */
static void quant_row(kt *t, float *x, int K, int r)
{
    switch (r % 4) {
    case QROW_NEG_AMAX: /* U[-1, 1) and one -3: the largest magnitude is negative */
        kt_fill(t, x, (size_t)K, 1.0f);
        x[(size_t)((kt_randf(t) + 1.0f) * 0.5f * (float)K) % K] = -3.0f;
        break;
    case QROW_ZERO:
        memset(x, 0, sizeof(float) * (size_t)K);
        break;
    case QROW_HUGE_TINY: { /* one 1000, the rest +-s * 2^[-12, -5) for s = 1000/448: e4m3
                            * subnormals (below 2^-6), zeros (below 2^-10) and small normals */
        const float s = 1000.0f / 448.0f;
        for (int k = 0; k < K; k++) {
            const float e = -8.5f + 3.5f * kt_randf(t);
            x[k] = (kt_randf(t) < 0 ? -s : s) * exp2f(e);
        }
        x[(size_t)((kt_randf(t) + 1.0f) * 0.5f * (float)K) % K] = 1000.0f;
        break;
    }
    default: /* U[-1, 1) times 2^-8 .. 2^8 by row */
        kt_fill(t, x, (size_t)K, exp2f((float)(r * 5 % 17 - 8)));
        break;
    }
}

/* One launch of quant_fp8_rows<DT, K, TH> (f) on M rows of quant_row's kinds: the scales, the
 * bytes and the poison past M rows (see the top of the file); the detail counts the ties. */
static void quant_check(kt *t, CUfunction f, int K, int TH, int M, int f16, const char *name)
{
    if (t->compile_only)
        return; /* quant_case compiled the kernel; the reference would be unused */
    enum { PAD = 64 }; /* bytes of q and floats of scale past M rows that must stay poisoned */
    const size_t n = (size_t)M * K;
    float *x = xmalloc(sizeof(float) * n);
    for (int m = 0; m < M; m++)
        quant_row(t, x + (size_t)m * K, K, m);
    uint16_t *x16 = kt_to_dt(x, n, f16);
    CUdeviceptr dx = kt_upload(t, x16, sizeof(uint16_t) * n);
    CUdeviceptr dq = kt_alloc(t, n + PAD);
    CUdeviceptr ds = kt_alloc(t, sizeof(float) * ((size_t)M + PAD));
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = M;
    st.n_seqs = M;
    int m_arg = M;
    void *args[] = {&st, &dx, &dq, &ds, &m_arg};
    kt_launch(t, f, name, (unsigned)M, 1, 1, (unsigned)TH, 0, args);
    uint8_t *q = xmalloc(n + PAD);
    float *sc = xmalloc(sizeof(float) * ((size_t)M + PAD));
    uint32_t *scbits = xmalloc(sizeof(uint32_t) * ((size_t)M + PAD));
    kt_download(t, q, dq, n + PAD);
    kt_download(t, scbits, ds, sizeof(float) * ((size_t)M + PAD));
    memcpy(sc, scbits, sizeof(float) * ((size_t)M + PAD));

    static const int perm[4] = {0, 2, 1, 3}; /* element k + i is byte k + perm[i] */
    size_t touched = 0, ties = 0, badbytes = 0, bad448 = 0;
    int badscale = -1;
    char d[300] = "";
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * K;
        const uint8_t *qr = q + (size_t)m * K;
        float amax = 0;
        for (int k = 0; k < K; k++)
            amax = fmaxf(amax, fabsf(xr[k]));
        const double want = amax > 0 ? amax / 448.0 : 1.0;
        const float s = sc[m];
        const int sok = amax > 0 ? isfinite(s) && fabs(s - want) <= 1e-6 * want : s == 1.0f;
        if (!sok) {
            if (badscale < 0) {
                badscale = m;
                snprintf(d, sizeof d, "row %d: scale %a, want %a (amax %g)", m, s, want, amax);
            }
            continue; /* its bytes are judged against a scale that is already wrong */
        }
        for (int k = 0; k < K; k++) {
            const uint8_t got = qr[(k & ~3) + perm[k & 3]];
            const float v = xr[k] / s;
            const uint8_t b = fp8_e4m3_from_f32(v);
            int ok = got == b;
            if (!ok && !((got ^ b) & 0x80) && abs((got & 0x7f) - (b & 0x7f)) == 1) {
                /* one code off: allowed where v is at a midpoint within the fast-math
                 * division's error */
                const double mid = 0.5 * ((double)fp8_e4m3_to_f32(got) + fp8_e4m3_to_f32(b));
                ok = fabs(v - mid) <= 1e-5 * fabs(mid);
                ties += ok;
            }
            if (amax > 0 && fabsf(xr[k]) == amax && got != (xr[k] < 0 ? 0xfe : 0x7e)) {
                ok = 0;
                bad448++;
            }
            if (!ok && badbytes++ == 0 && badscale < 0)
                snprintf(d, sizeof d,
                         "row %d element %d: x %a / scale %a = %a: got byte 0x%02x (%g) want "
                         "0x%02x (%g)",
                         m, k, xr[k], s, v, got, fp8_e4m3_to_f32(got), b, fp8_e4m3_to_f32(b));
        }
    }
    for (size_t i = n; i < n + PAD; i++)
        touched += q[i] != 0xFF;
    for (size_t i = (size_t)M; i < (size_t)M + PAD; i++)
        touched += scbits[i] != 0xFFFFFFFFu;
    const int ok = badscale < 0 && !badbytes && !touched;
    if (ok)
        snprintf(d, sizeof d, "%d scales, %zu bytes right; %zu ties (one code off at a midpoint)",
                 M, n, ties);
    else {
        char more[120];
        snprintf(more, sizeof more, "%s%zu bytes wrong (%zu at +-amax not +-448), %zu bytes or "
                 "scales written past row M=%d", d[0] ? "; " : "", badbytes, bad448, touched, M);
        strncat(d, more, sizeof d - strlen(d) - 1);
    }
    kt_result(t, name, ok, d);
    kt_free(t, dx);
    kt_free(t, dq);
    kt_free(t, ds);
    free(x);
    free(x16);
    free(q);
    free(sc);
    free(scbits);
}

/* lower.c's block size for quant_fp8_rows (row_threads): a thread per 8 elements, 32 to 256. */
static int quant_threads(int K)
{
    const int th = (K / 8 + 31) / 32 * 32;
    return th < 32 ? 32 : th > 256 ? 256 : th;
}

/* quant_fp8_rows<DT, K, TH> compiled once, run at M = 1, 3 and 64 (TH 0: quant_threads(K)). */
static void quant_case(kt *t, int K, int TH, int f16)
{
    static const int ms[] = {1, 3, 64};
    const char *dt = f16 ? "kiln::f16" : "kiln::bf16";
    if (!TH)
        TH = quant_threads(K);
    CUmodule mod = NULL;
    int compiled = 0;
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        char name[160], src[512];
        snprintf(name, sizeof name, "quant_fp8_rows/K=%d M=%d%s threads=%d", K, ms[i],
                 f16 ? " f16" : "", TH);
        if (!kt_want(t, name))
            continue;
        if (!compiled) {
            snprintf(src, sizeof src,
                     "#include \"gemv.cuh\"\n"
                     "extern \"C\" __global__ void __launch_bounds__(%d)\n"
                     "k_quant(const kiln_step st, const %s *x, unsigned char *q, float *scale, "
                     "int M)\n"
                     "{\n"
                     "    kiln::quant_fp8_rows<%s, %d, %d>(st, x, q, scale, M);\n"
                     "}\n",
                     TH, dt, dt, K, TH);
            mod = kt_module(t, name, src);
            compiled = 1;
        }
        if (!mod && !t->compile_only)
            return; /* the compile failure is recorded with its log */
        quant_check(t, kt_func(t, mod, "k_quant"), K, TH, ms[i], f16, name);
    }
}

/* gemv_stream (templates/gemv_stream.cuh, sm_90a) at lower.c's launch (kernels/kiln_gemm.h's
 * KILN_GEMV_STREAM_*, lower_gemv_stream_seg's unit, ring depth `depth` or, 0, that of a build
 * for sm_90 alone: lower_gemv_stream_depth) on one row of x, against gemv_ref;
 * with `chain`, the same launch twice back to back on the stream (PDL on), the second's x the
 * first's y (NOUT == K), so that the second's early weight loads and its wait on the first are
 * exercised; y poisoned, every output checked. norm 1: the RMS norm folded in (x normalised
 * with a weight, 1 + it with uo, as rms_norm rounds it, before the product); 2: of round(x +
 * res), which must also come back exactly in res_out. fp8: gemv_stream_fp8, the weight
 * quantised to e4m3 with a scale per row (gweights_make's). */
typedef struct {
    int N, K, gated, act, bias, f32, f16, chain, norm, uo, depth, fp8;
    int int4; /* gemv_stream_int4 (groups of KILN_GEMV_STREAM_INT4_G) */
    int xexp; /* x times 2^xexp (bf16's range past f16's: gemv_stream_fp8's staging) */
} stream_spec;

static void stream_case(kt *t, const stream_spec *c)
{
    const int N = c->N, K = c->K, gated = c->gated, act = c->act, bias = c->bias, f32 = c->f32;
    const int f16 = c->f16, chain = c->chain, norm = c->norm, uo = c->uo, depth = c->depth;
    const int fp8 = c->fp8, int4 = c->int4;
    const int wb = fp8 ? 8 : int4 ? 4 : 16;
    const int NOUT = gated ? N / 2 : N, W = KILN_GEMV_STREAM_WARPS(wb);
    const char *form = fp8 ? "_fp8" : int4 ? "_int4" : "";
    const int D = depth ? depth : kt_stream_depth(K, wb);
    const int SEG = lower_gemv_stream_seg(K, wb), blocks = KILN_GEMV_STREAM_BLOCKS;
    const int smem = KILN_GEMV_STREAM_SMEM(W, D, SEG, K, 2, wb);
    char name[200], src[1024];
    char xs[32] = "";
    if (c->xexp)
        snprintf(xs, sizeof xs, " x*2^%d", c->xexp);
    snprintf(name, sizeof name, "gemv_stream%s N=%d K=%d SEG=%d D=%d%s%s%s%s%s%s%s%s", form, N,
             K, SEG, D, gated ? " gated" : "", bias ? " bias" : "",
             f32 ? " f32" : "", f16 ? " f16" : "", chain ? " chained" : "",
             norm == 1 ? " norm" : norm == 2 ? " residual norm" : "", uo ? " (1 + w)" : "", xs);
    if (!kt_want(t, name) || (!t->compile_only && !kt_sm90a(t)))
        return;
    assert((!chain || NOUT == K) && !(chain && norm));
    const char *dt = f16 ? "kiln::f16" : "kiln::bf16";
    char wp[64];
    if (fp8 || int4)
        snprintf(wp, sizeof wp, "const unsigned char *w, const %s",
                 fp8 ? "float *scale" : "uint2 *scale");
    else
        snprintf(wp, sizeof wp, "const %s *w", dt);
    snprintf(src, sizeof src,
             "#include \"gemv_stream.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_gs(const kiln_step st, const %s *x, const %s *res, const %s *nw, %s *res_out, "
             "float eps, %s, const %s *bias, void *y, int M)\n"
             "{\n    kiln::gemv_stream%s<%s, %d, %d, %s, %s, %d, %s, %d, %d, %d, %d, %d, %s>(st, "
             "x, res, nw, res_out, eps, w, %sbias, y, M);\n}\n",
             32 * W, dt, dt, dt, dt, wp, dt, form, dt, N, K,
             bias ? "true" : "false", gated ? "true" : "false", act, f32 ? "true" : "false", W, D,
             SEG, blocks, norm, uo ? "true" : "false", fp8 || int4 ? "scale, " : "");
    CUmodule m = kt_module_sm90a(t, name, src);
    if (!m || t->compile_only)
        return;
    CUfunction f = kt_func(t, m, "k_gs");
    KT_CU(t, cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem));
    float *x = xmalloc(sizeof(float) * (size_t)K), *b = xmalloc(sizeof(float) * (size_t)N);
    kt_fill(t, x, (size_t)K, 1.0f);
    for (int i = 0; i < K && c->xexp; i++)
        x[i] = ldexpf(x[i], c->xexp);
    kt_fill(t, b, (size_t)N, 0.5f);
    uint16_t *x16 = kt_to_dt(x, (size_t)K, f16), *b16 = kt_to_dt(b, (size_t)N, f16);
    /* the norm's residual and weight, and what the kernel must compute from them: s = round(x +
     * res) and x' = round(s * rsqrt(mean(s^2) + eps) * w), rms_norm's arithmetic */
    const float eps = 1e-5f;
    float *r = xmalloc(sizeof(float) * (size_t)K), *nwf = xmalloc(sizeof(float) * (size_t)K);
    float *sum = xmalloc(sizeof(float) * (size_t)K);
    kt_fill(t, r, (size_t)K, 1.0f);
    kt_fill(t, nwf, (size_t)K, 0.5f);
    for (int i = 0; i < K && !uo; i++)
        nwf[i] += 1.0f;
    uint16_t *r16 = kt_to_dt(r, (size_t)K, f16), *nw16 = kt_to_dt(nwf, (size_t)K, f16);
    if (norm) {
        double ss = 0;
        for (int i = 0; i < K; i++) {
            sum[i] = norm == 2 ? x[i] + r[i] : x[i];
            free(kt_to_dt(&sum[i], 1, f16));
            ss += (double)sum[i] * sum[i];
        }
        const float inv = 1.0f / sqrtf((float)(ss / K) + eps);
        for (int i = 0; i < K; i++) /* the reference's x: the normalised row, rounded */
            x[i] = sum[i] * inv * (uo ? 1.0f + nwf[i] : nwf[i]);
        free(kt_to_dt(x, (size_t)K, f16));
    }
    gweights g;
    gweights_make(t, &g, N, K, f16, fp8 ? K : 0, 0, int4 ? KILN_GEMV_STREAM_INT4_G : 0);
    const size_t esz = f32 ? 4 : 2;
    CUdeviceptr dx = kt_upload(t, x16, 2 * (size_t)K);
    CUdeviceptr db = bias ? kt_upload(t, b16, 2 * (size_t)N) : 0;
    CUdeviceptr dr = norm == 2 ? kt_upload(t, r16, 2 * (size_t)K) : 0;
    CUdeviceptr dnw = norm ? kt_upload(t, nw16, 2 * (size_t)K) : 0;
    CUdeviceptr dro = norm == 2 ? kt_alloc(t, 2 * (size_t)K) : 0;
    CUdeviceptr dy = kt_alloc(t, (size_t)NOUT * esz);
    CUdeviceptr dy2 = chain ? kt_alloc(t, (size_t)NOUT * esz) : 0;
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = st.n_seqs = 1;
    int one = 1;
    float e0 = eps;
    CUdeviceptr none = 0;
    void *args[11] = {&st, &dx, &dr, &dnw, &dro, &e0, &g.dw, &db, &dy, &one};
    void *args2[11] = {&st, &dy, &none, &none, &none, &e0, &g.dw, &db, &dy2, &one};
    if (fp8 || int4) { /* the scales (INT4: the sz pairs) after w */
        memmove(&args[8], &args[7], 3 * sizeof(void *));
        memmove(&args2[8], &args2[7], 3 * sizeof(void *));
        args[7] = args2[7] = &g.ds;
    }
    kerr e;
    kerr_clear(&e);
    int rc = kcuda_launch(&t->cu, f, (unsigned)blocks, 1, 1, 32u * W, (unsigned)smem, t->stream,
                          args, t->pdl, &e);
    if (rc == 0 && chain)
        rc = kcuda_launch(&t->cu, f, (unsigned)blocks, 1, 1, 32u * W, (unsigned)smem, t->stream,
                          args2, t->pdl, &e);
    if (rc)
        kt_result(t, name, 0, kerr_msg(&e));
    KT_CU(t, cuStreamSynchronize(t->stream));
    float *got = xmalloc(sizeof(float) * (size_t)NOUT);
    float *want = xmalloc(sizeof(float) * (size_t)NOUT);
    unsigned char *yb = xmalloc((size_t)NOUT * esz);
    for (int pass = 0; pass < (chain ? 2 : 1) && rc == 0; pass++) {
        kt_download(t, yb, pass ? dy2 : dy, (size_t)NOUT * esz);
        for (int i = 0; i < NOUT; i++) {
            if (f32) {
                memcpy(&got[i], yb + 4 * (size_t)i, 4);
            } else {
                uint16_t h;
                memcpy(&h, yb + 2 * (size_t)i, 2);
                got[i] = f16 ? util_f16_to_f32(h) : util_bf16_to_f32(h);
            }
        }
        gemv_ref(x, &g, bias ? b : NULL, 1, gated, act, want);
        char pn[220];
        snprintf(pn, sizeof pn, "%s%s", name, pass ? " (second)" : "");
        kt_check(t, pn, got, want, (size_t)NOUT, f32 ? 1e-5 : 1e-2);
        if (chain && pass == 0) /* the second launch's x: the first's y, as it reads it */
            memcpy(x, got, sizeof(float) * (size_t)K);
    }
    if (rc == 0 && norm == 2) { /* the residual sum, exactly */
        uint16_t *ro = xmalloc(2 * (size_t)K);
        kt_download(t, ro, dro, 2 * (size_t)K);
        float *rof = xmalloc(sizeof(float) * (size_t)K);
        for (int i = 0; i < K; i++)
            rof[i] = f16 ? util_f16_to_f32(ro[i]) : util_bf16_to_f32(ro[i]);
        char rn[220];
        snprintf(rn, sizeof rn, "%s (res_out)", name);
        kt_check(t, rn, rof, sum, (size_t)K, 0);
        free(ro), free(rof);
    }
    kt_free(t, dx);
    CUdeviceptr opt[] = {db, dr, dnw, dro, dy2};
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++)
        if (opt[i])
            kt_free(t, opt[i]);
    kt_free(t, dy);
    gweights_free(t, &g);
    free(x), free(b), free(x16), free(b16), free(got), free(want), free(yb);
    free(r), free(nwf), free(sum), free(r16), free(nw16);
}

void ktest_gemv(kt *t)
{
#define M1_8 {1, 2, 3, 4, 5, 6, 7, 8}
    static const gcase cases[] = {
        /* every M of the decode GEMV, gated and not; K = 520 ends in a partial step (65 chunks
         * of 8, not a multiple of 16) */
        {.N = 1000, .K = 520, .mmax = 8, .ms = M1_8, .bias = 1},
        {.N = 1998, .K = 520, .mmax = 8, .ms = M1_8, .gated = 1, .act = KILN_ACT_SILU},
        {.N = 64, .K = 64, .mmax = 8, .ms = {1, 3, 8}},
        {.N = 96, .K = 24 * 8, .mmax = 8, .ms = {1, 3, 8}},
        {.N = 4096, .K = 4096, .mmax = 8, .ms = {1, 3, 8}},
        {.N = 2048, .K = 2048, .mmax = 8, .ms = {1, 8}},
        /* tails: N not a multiple of the 16-row tile, fewer outputs than one tile; K shorter
         * than one 32-element group, and than one step */
        {.N = 1001, .K = 64, .mmax = 8, .ms = {3}, .bias = 1},
        {.N = 3, .K = 64, .mmax = 8, .ms = {2}},
        {.N = 37, .K = 8, .mmax = 8, .ms = {8}, .bias = 1},
        {.N = 40, .K = 24, .mmax = 8, .ms = {5}},
        {.N = 96, .K = 192, .mmax = 4, .ms = {4}},
        /* split-K: off (one warp), 2 and 16 warps; a long K (the 8B down projection's) */
        {.N = 1000, .K = 512, .mmax = 8, .ms = {3}, .threads = 32},
        {.N = 1000, .K = 520, .mmax = 8, .ms = {7}, .bias = 1, .threads = 64},
        {.N = 1000, .K = 4096, .mmax = 8, .ms = {8}, .threads = 512},
        {.N = 256, .K = 14336, .mmax = 8, .ms = {1, 8}, .bias = 1},
        {.N = 200, .K = 14336, .mmax = 8, .ms = {5}, .threads = 32},
        /* MMAX = 16: two column tiles (M over 8), and one (M up to 8) */
        {.N = 1000, .K = 520, .mmax = 16, .ms = {5, 9, 16}, .bias = 1},
        {.N = 1998, .K = 512, .mmax = 16, .ms = {13}, .gated = 1, .act = KILN_ACT_GELU},
        /* gated: w = [gate; up], N/2 outputs */
        {.N = 4096, .K = 4096, .mmax = 8, .ms = {3}, .gated = 1, .act = KILN_ACT_SILU},
        {.N = 1998, .K = 512, .mmax = 8, .ms = {8}, .bias = 1, .gated = 1, .act = KILN_ACT_GELU_TANH},
        {.N = 128, .K = 64, .mmax = 8, .ms = {1}, .gated = 1, .act = KILN_ACT_SILU},
        {.N = 256, .K = 128, .mmax = 8, .ms = {3}, .gated = 1, .act = KILN_ACT_GELU, .threads = 128},
        {.N = 512, .K = 256, .mmax = 8, .ms = {2}, .gated = 1, .act = KILN_ACT_SILU, .f32 = 1},
        {.N = 2 * 8192, .K = 2048, .mmax = 8, .ms = {8}, .gated = 1, .act = KILN_ACT_SILU},
        /* f16 storage */
        {.N = 1000, .K = 512, .mmax = 8, .ms = {3}, .bias = 1, .f16 = 1},
        {.N = 1998, .K = 520, .mmax = 8, .ms = {8}, .gated = 1, .act = KILN_ACT_RELU, .f16 = 1},
        {.N = 1000, .K = 512, .mmax = 16, .ms = {11}, .f16 = 1},
        /* logits: float output, large N */
        {.N = 32000, .K = 2048, .mmax = 8, .ms = {1}, .f32 = 1},
        {.N = 32000, .K = 1024, .mmax = 8, .ms = {8}, .f32 = 1},
        {.N = 151936, .K = 512, .mmax = 1, .ms = {1}, .f32 = 1},
        {.N = 151936, .K = 512, .mmax = 4, .ms = {3}, .f32 = 1, .threads = 128},
        /* gemv_fp8: every M, gated and not, a scale per row (SBC = K) and block scales; K = 336
         * is one whole 256-element step and a partial one (21 chunks of 16), 5.25 blocks of 64 */
        {.N = 1000, .K = 336, .mmax = 8, .ms = M1_8, .bias = 1, .sbc = 336},
        {.N = 1998, .K = 336, .mmax = 8, .ms = M1_8, .gated = 1, .act = KILN_ACT_SILU, .sbc = 64},
        {.N = 1000, .K = 336, .mmax = 8, .ms = {2, 5}, .sbc = 128},
        {.N = 4096, .K = 4096, .mmax = 8, .ms = {1, 8}, .sbc = 4096},
        {.N = 4096, .K = 4096, .mmax = 8, .ms = {8}, .sbc = 128},
        /* MMAX = 16: every M of 9..16; K = 4160 = 4096 + 64 (32.5 blocks of 128) */
        {.N = 1000, .K = 4160, .mmax = 16, .ms = {9, 10, 11, 12, 13, 14, 15, 16}, .bias = 1,
         .sbc = 128},
        {.N = 1998, .K = 528, .mmax = 16, .ms = {5, 16}, .gated = 1, .act = KILN_ACT_GELU, .sbc = 528},
        /* tails: N not a multiple of the tile, fewer outputs than one tile; K of one 16-byte
         * chunk, of one 64-element group, and shorter than one step */
        {.N = 1001, .K = 64, .mmax = 8, .ms = {3}, .bias = 1, .sbc = 64},
        {.N = 3, .K = 16, .mmax = 8, .ms = {2}, .sbc = 16},
        {.N = 37, .K = 192, .mmax = 8, .ms = {8}, .bias = 1, .sbc = 64},
        {.N = 40, .K = 208, .mmax = 8, .ms = {5}, .sbc = 128},
        /* split-K over 1, 2, 4, 8 and 16 warps; the 8B down projection's K */
        {.N = 1000, .K = 1024, .mmax = 8, .ms = {3}, .threads = 32, .sbc = 128},
        {.N = 1000, .K = 528, .mmax = 8, .ms = {7}, .bias = 1, .threads = 64, .sbc = 528},
        {.N = 1000, .K = 4096, .mmax = 8, .ms = {8}, .threads = 128, .sbc = 64},
        {.N = 1000, .K = 4160, .mmax = 8, .ms = {5}, .threads = 256, .sbc = 4160},
        {.N = 1000, .K = 4096, .mmax = 8, .ms = {8}, .threads = 512, .sbc = 128},
        {.N = 256, .K = 14336, .mmax = 8, .ms = {1, 8}, .bias = 1, .sbc = 14336},
        {.N = 200, .K = 14336, .mmax = 8, .ms = {5}, .threads = 32, .sbc = 128},
        {.N = 256, .K = 14336, .mmax = 16, .ms = {16}, .threads = 512, .sbc = 128},
        /* gated */
        {.N = 8192, .K = 4096, .mmax = 8, .ms = {3}, .gated = 1, .act = KILN_ACT_SILU, .sbc = 128},
        {.N = 512, .K = 256, .mmax = 8, .ms = {2}, .gated = 1, .act = KILN_ACT_SILU, .f32 = 1,
         .sbc = 256},
        /* f16 */
        {.N = 1000, .K = 336, .mmax = 8, .ms = {1, 3, 8}, .bias = 1, .f16 = 1, .sbc = 336},
        {.N = 1998, .K = 4160, .mmax = 8, .ms = {5}, .gated = 1, .act = KILN_ACT_SILU, .f16 = 1,
         .sbc = 128},
        {.N = 1000, .K = 528, .mmax = 16, .ms = {11}, .f16 = 1, .sbc = 64},
        /* logits: float output */
        {.N = 32000, .K = 1024, .mmax = 8, .ms = {1, 8}, .f32 = 1, .sbc = 1024},
        {.N = 32000, .K = 1024, .mmax = 8, .ms = {8}, .f32 = 1, .sbc = 128},
        /* bytes over the whole e4m3 range (zeros, subnormals, +-448), scales ~1, ~1e-6, ~1e3 */
        {.N = 1000, .K = 336, .mmax = 8, .ms = {1, 8}, .f32 = 1, .sbc = 336, .wsc = 1},
        {.N = 1000, .K = 336, .mmax = 8, .ms = {3}, .f32 = 1, .sbc = 64, .wsc = 1},
        {.N = 1000, .K = 4160, .mmax = 16, .ms = {13}, .sbc = 128, .wsc = 1},
        {.N = 1000, .K = 528, .mmax = 8, .ms = {4}, .f16 = 1, .sbc = 528, .wsc = 1},
        {.N = 1998, .K = 336, .mmax = 8, .ms = {6}, .gated = 1, .act = KILN_ACT_SILU, .sbc = 64,
         .wsc = 1},
        {.N = 1000, .K = 336, .mmax = 8, .ms = {2}, .sbc = 64, .wsc = 1e-6f},
        {.N = 1000, .K = 4096, .mmax = 8, .ms = {8}, .f16 = 1, .sbc = 4096, .wsc = 1e-6f},
        {.N = 1000, .K = 528, .mmax = 8, .ms = {5}, .f32 = 1, .sbc = 128, .wsc = 1e-6f},
        {.N = 1000, .K = 336, .mmax = 8, .ms = {7}, .sbc = 336, .wsc = 1e3f},
        {.N = 1000, .K = 4160, .mmax = 8, .ms = {1}, .f32 = 1, .sbc = 64, .wsc = 1e3f},
        {.N = 1998, .K = 528, .mmax = 8, .ms = {3}, .gated = 1, .act = KILN_ACT_SILU, .sbc = 128,
         .wsc = 1e3f},
        /* gemv_int4: every M, gated and not, bf16 and f16, G = 32, 128 and K; K = 640 is one whole
         * 512-element step and a partial one (20 chunks of 32) */
        {.N = 1000, .K = 640, .mmax = 8, .ms = M1_8, .bias = 1, .g4 = 128},
        {.N = 1998, .K = 640, .mmax = 8, .ms = M1_8, .gated = 1, .act = KILN_ACT_SILU, .g4 = 32},
        {.N = 1000, .K = 640, .mmax = 8, .ms = M1_8, .bias = 1, .f16 = 1, .g4 = 32},
        {.N = 1000, .K = 640, .mmax = 8, .ms = {2, 5}, .g4 = 640},
        {.N = 4096, .K = 4096, .mmax = 8, .ms = {1, 8}, .g4 = 128},
        {.N = 4096, .K = 4096, .mmax = 8, .ms = {8}, .g4 = 4096},
        /* G = 256 (factored: a group spans two 128-element chains) and G = 64 (the general path,
         * at MMAX = 16 and f16) */
        {.N = 1000, .K = 4096, .mmax = 8, .ms = {1, 8}, .f32 = 1, .g4 = 256},
        {.N = 1000, .K = 4224, .mmax = 16, .ms = {9, 16}, .f16 = 1, .g4 = 64},
        /* MMAX = 16: every M of 9..16; K = 4224 = 4096 + 128 (8.25 steps) */
        {.N = 1000, .K = 4224, .mmax = 16, .ms = {9, 10, 11, 12, 13, 14, 15, 16}, .bias = 1,
         .g4 = 128},
        {.N = 1000, .K = 4224, .mmax = 16, .ms = {9, 10, 11, 12, 13, 14, 15, 16}, .f16 = 1,
         .g4 = 32},
        {.N = 1998, .K = 640, .mmax = 16, .ms = {5, 16}, .gated = 1, .act = KILN_ACT_GELU, .g4 = 640},
        /* tails: N not a multiple of the tile, fewer outputs than one tile; K of one 16-byte
         * chunk (32), two (64) and three (96) */
        {.N = 1001, .K = 64, .mmax = 8, .ms = {3}, .bias = 1, .g4 = 32},
        {.N = 3, .K = 64, .mmax = 8, .ms = {2}, .g4 = 64},
        {.N = 37, .K = 96, .mmax = 8, .ms = {8}, .bias = 1, .g4 = 32},
        {.N = 40, .K = 96, .mmax = 8, .ms = {5}, .g4 = 96},
        {.N = 40, .K = 32, .mmax = 8, .ms = {4}, .f16 = 1, .g4 = 32},
        /* split-K over 1, 2, 4 and 8 warps (gemv_int4's most: lower_gemv_threads); the 8B down
         * projection's K; 1B down's shape, where the rule takes 8 warps, not gemv's 16 */
        {.N = 1000, .K = 1024, .mmax = 8, .ms = {3}, .threads = 32, .g4 = 128},
        {.N = 1000, .K = 640, .mmax = 8, .ms = {7}, .bias = 1, .threads = 64, .g4 = 640},
        {.N = 1000, .K = 4096, .mmax = 8, .ms = {8}, .threads = 128, .g4 = 32},
        {.N = 1000, .K = 4224, .mmax = 8, .ms = {5}, .threads = 256, .g4 = 4224},
        {.N = 1000, .K = 8192, .mmax = 8, .ms = {8}, .threads = 256, .g4 = 128},
        {.N = 256, .K = 14336, .mmax = 8, .ms = {1, 8}, .bias = 1, .g4 = 128},
        {.N = 200, .K = 14336, .mmax = 8, .ms = {5}, .threads = 32, .g4 = 32},
        {.N = 256, .K = 14336, .mmax = 16, .ms = {16}, .threads = 256, .g4 = 14336},
        {.N = 2048, .K = 8192, .mmax = 8, .ms = {1, 7}, .g4 = 128},
        /* gated */
        {.N = 8192, .K = 4096, .mmax = 8, .ms = {3}, .gated = 1, .act = KILN_ACT_SILU, .g4 = 128},
        {.N = 512, .K = 256, .mmax = 8, .ms = {2}, .gated = 1, .act = KILN_ACT_SILU, .f32 = 1,
         .g4 = 32},
        {.N = 1998, .K = 4224, .mmax = 8, .ms = {5}, .gated = 1, .act = KILN_ACT_SILU, .f16 = 1,
         .g4 = 128},
        /* logits: float output */
        {.N = 32000, .K = 1024, .mmax = 8, .ms = {1, 8}, .f32 = 1, .g4 = 128},
        {.N = 32000, .K = 1024, .mmax = 8, .ms = {8}, .f32 = 1, .g4 = 1024},
        /* scales ~1e-3, ~1e-6 (f16: subnormal scales and weights) and ~1e3 (no f16 output: the
         * sums exceed 65504) */
        {.N = 1000, .K = 640, .mmax = 8, .ms = {1, 8}, .f32 = 1, .g4 = 32, .wsc = 1e-3f},
        {.N = 1000, .K = 4096, .mmax = 8, .ms = {8}, .f32 = 1, .f16 = 1, .g4 = 128, .wsc = 1e-6f},
        {.N = 1000, .K = 640, .mmax = 8, .ms = {3}, .g4 = 128, .wsc = 1e-6f},
        {.N = 1000, .K = 640, .mmax = 8, .ms = {7}, .g4 = 640, .wsc = 1e3f},
        {.N = 1998, .K = 640, .mmax = 8, .ms = {3}, .gated = 1, .act = KILN_ACT_SILU, .g4 = 32,
         .wsc = 1e3f},
        {.N = 1000, .K = 4224, .mmax = 8, .ms = {1}, .f32 = 1, .f16 = 1, .g4 = 4224, .wsc = 1e3f},
    };
#undef M1_8
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        gemv_case(t, &cases[i]);
    /* gemv_stream: the Llama-3 1B/8B shapes (SEG 2048, several units a row, more outputs than
     * warps and fewer), a gated MLP, logits, units of 1792, 768, 1536 and 40 elements (lanes
     * idle in a unit's last pass), f16 and bias, chained launches */
    stream_case(t, &(stream_spec){.N = 3072, .K = 2048});
    stream_case(t, &(stream_spec){.N = 4096, .K = 4096, .chain = 1});
    stream_case(t, &(stream_spec){.N = 2 * 14336, .K = 4096, .gated = 1, .act = KILN_ACT_SILU});
    stream_case(t, &(stream_spec){.N = 4096, .K = 14336, .bias = 1});
    stream_case(t, &(stream_spec){.N = 200, .K = 8192});
    stream_case(t, &(stream_spec){.N = 32000, .K = 2048, .f32 = 1});
    stream_case(t, &(stream_spec){.N = 6144, .K = 3072, .gated = 1, .act = KILN_ACT_GELU_TANH,
                                  .bias = 1, .chain = 1});
    stream_case(t, &(stream_spec){.N = 896, .K = 3584, .bias = 1});
    stream_case(t, &(stream_spec){.N = 1000, .K = 768, .bias = 1, .f16 = 1});
    stream_case(t, &(stream_spec){.N = 1998, .K = 1536, .gated = 1, .act = KILN_ACT_SILU,
                                  .f16 = 1});
    stream_case(t, &(stream_spec){.N = 64, .K = 40, .bias = 1});
    stream_case(t, &(stream_spec){.N = 128, .K = 64, .gated = 1, .act = KILN_ACT_SILU, .chain = 1});
    /* the RMS norm folded in: Llama-3 8B's qkv (plain, the first layer's) and gate/up (after a
     * residual), gemma's 1 + w, f16, a unit of 40 elements */
    stream_case(t, &(stream_spec){.N = 6144, .K = 4096, .norm = 1});
    stream_case(t, &(stream_spec){.N = 2 * 14336, .K = 4096, .gated = 1, .act = KILN_ACT_SILU,
                                  .norm = 2});
    stream_case(t, &(stream_spec){.N = 3072, .K = 2048, .bias = 1, .norm = 2, .uo = 1});
    stream_case(t, &(stream_spec){.N = 1000, .K = 768, .f16 = 1, .norm = 2});
    stream_case(t, &(stream_spec){.N = 64, .K = 40, .bias = 1, .norm = 2, .uo = 1});
    /* the shallowest and a middle ring, as builds with a target of less shared memory run them
     * (lower_gemv_stream_depth): chained, wrapping the ring many times, with the norm folded in */
    stream_case(t, &(stream_spec){.N = 4096, .K = 4096, .chain = 1,
                                  .depth = KILN_GEMV_STREAM_DMIN});
    stream_case(t, &(stream_spec){.N = 4096, .K = 14336, .bias = 1,
                                  .depth = KILN_GEMV_STREAM_DMIN});
    stream_case(t, &(stream_spec){.N = 2 * 14336, .K = 4096, .gated = 1, .act = KILN_ACT_SILU,
                                  .norm = 2, .depth = 3});
    /* gemv_stream_fp8: the Llama-3 8B layer (qkv with its norm, o chained, gate/up after a
     * residual, down in units of 3584), x staged in blocks of 512 past K (1040: units of 65
     * chunks, lanes idle; 48: one pass of 3 chunks), f16, bias, f32, the shallowest ring */
    stream_case(t, &(stream_spec){.N = 6144, .K = 4096, .norm = 1, .fp8 = 1});
    stream_case(t, &(stream_spec){.N = 4096, .K = 4096, .chain = 1, .fp8 = 1});
    stream_case(t, &(stream_spec){.N = 2 * 14336, .K = 4096, .gated = 1, .act = KILN_ACT_SILU,
                                  .norm = 2, .fp8 = 1});
    stream_case(t, &(stream_spec){.N = 4096, .K = 14336, .bias = 1, .fp8 = 1});
    stream_case(t, &(stream_spec){.N = 1998, .K = 1040, .gated = 1, .act = KILN_ACT_GELU_TANH,
                                  .bias = 1, .f16 = 1, .norm = 2, .uo = 1, .fp8 = 1});
    stream_case(t, &(stream_spec){.N = 300, .K = 48, .bias = 1, .f32 = 1, .fp8 = 1});
    stream_case(t, &(stream_spec){.N = 4096, .K = 14336, .norm = 2, .depth = KILN_GEMV_STREAM_DMIN,
                                  .fp8 = 1});
    /* x past f16's range and far below it: the f16 staging's power of two */
    stream_case(t, &(stream_spec){.N = 4096, .K = 4096, .fp8 = 1, .xexp = 40});
    stream_case(t, &(stream_spec){.N = 1000, .K = 14336, .f32 = 1, .fp8 = 1, .xexp = -40});
    /* gemv_stream_int4: the Llama-3 8B layer as above (down in units of 7168), units of 1280
     * (40 chunks: a round's rows 8..15 partly empty) and 256 (8 chunks), f16, bias, f32, the
     * shallowest ring */
    stream_case(t, &(stream_spec){.N = 6144, .K = 4096, .norm = 1, .int4 = 1});
    stream_case(t, &(stream_spec){.N = 4096, .K = 4096, .chain = 1, .int4 = 1});
    stream_case(t, &(stream_spec){.N = 2 * 14336, .K = 4096, .gated = 1, .act = KILN_ACT_SILU,
                                  .norm = 2, .int4 = 1});
    stream_case(t, &(stream_spec){.N = 4096, .K = 14336, .bias = 1, .int4 = 1});
    stream_case(t, &(stream_spec){.N = 1998, .K = 1280, .gated = 1, .act = KILN_ACT_GELU_TANH,
                                  .bias = 1, .f16 = 1, .norm = 2, .uo = 1, .int4 = 1});
    stream_case(t, &(stream_spec){.N = 300, .K = 256, .bias = 1, .f32 = 1, .int4 = 1});
    stream_case(t, &(stream_spec){.N = 4096, .K = 14336, .norm = 2, .depth = KILN_GEMV_STREAM_DMIN,
                                  .int4 = 1});
    gemv_invariance(t, 2048, 2048, 8, 8, 0, 0);
    gemv_invariance(t, 1000, 14336, 7, 16, 0, 0);
    gemv_invariance(t, 2048, 2048, 8, 8, 2048, 0);
    gemv_invariance(t, 1000, 14336, 7, 16, 128, 0);
    gemv_invariance(t, 2048, 2048, 8, 8, 0, 128);
    gemv_invariance(t, 1000, 14336, 7, 16, 0, 32);
    static const int ms[] = {1, 7, 8, 9, 17, 64, 200};
    const int nms = (int)(sizeof ms / sizeof ms[0]);
    /* the logits' shape (float), a gated MLP with bias (bf16, K ending in a partial step), a
     * plain linear at lower.c's 16 warps; and at MMAX = 16, the groups of a --batch-invariant
     * decode schedule (LOWER_GEMV_GROUP_INVARIANT): float logits, gated, 16 warps */
    gemv_groups_case(t, 1000, 520, 8, 0, 0, 1, 0, 0, ms, nms);
    gemv_groups_case(t, 1998, 520, 8, 1, 1, 0, 0, 0, ms, nms);
    gemv_groups_case(t, 2048, 2048, 8, 0, 0, 0, 0, 0, ms, nms);
    gemv_groups_case(t, 1000, 512, LOWER_GEMV_GROUP_INVARIANT, 0, 1, 1, 0, 0, ms, nms);
    gemv_groups_case(t, 1998, 520, LOWER_GEMV_GROUP_INVARIANT, 1, 1, 0, 0, 0, ms, nms);
    gemv_groups_case(t, 2048, 2048, LOWER_GEMV_GROUP_INVARIANT, 0, 0, 0, 0, 0, ms, nms);
    /* gemv_fp8 at MMAX = 16 (LOWER_GEMV_GROUP_INVARIANT): float logits with block scales, a
     * gated MLP with bias and a scale per row */
    gemv_groups_case(t, 1000, 512, LOWER_GEMV_GROUP_INVARIANT, 0, 1, 1, 128, 0, ms, nms);
    gemv_groups_case(t, 1998, 528, LOWER_GEMV_GROUP_INVARIANT, 1, 1, 0, 528, 0, ms, nms);
    /* gemv_int4 at MMAX = 16: float logits with G = 128, a gated MLP with bias and G = 32; K = 640
     * ends in a partial 512-element step */
    gemv_groups_case(t, 1000, 640, LOWER_GEMV_GROUP_INVARIANT, 0, 1, 1, 0, 128, ms, nms);
    gemv_groups_case(t, 1998, 640, LOWER_GEMV_GROUP_INVARIANT, 1, 1, 0, 0, 32, ms, nms);
    /* the byte conversion, bit for bit, for each DT and kind of scale */
    for (int f16 = 0; f16 < 2; f16++) {
        gemv_fp8_exact(t, f16, 336);
        gemv_fp8_exact(t, f16, 64);
        gemv_fp8_exact(t, f16, 128);
    }
    /* dequant_fp8: N * K / 16 chunks never a multiple of the block, so the last block is partial */
    dequant_case(t, 100, 336, 336, 0, 256, 1);
    dequant_case(t, 37, 4160, 128, 0, 128, 0);
    dequant_case(t, 100, 336, 128, 1, 256, 1);
    dequant_case(t, 63, 4160, 4160, 1, 256, 1e-6f);
    dequant_case(t, 50, 528, 64, 0, 64, 1e3f);
    dequant_case(t, 37, 4160, 4160, 1, 128, 0);
    /* gemv_int4's conversion bit for bit, for each DT and G; and dequant_int4 (N * K / 32 chunks
     * never a multiple of the block) */
    for (int f16 = 0; f16 < 2; f16++) {
        gemv_int4_exact(t, f16, 32);
        gemv_int4_exact(t, f16, 64);
        gemv_int4_exact(t, f16, 128);
        gemv_int4_exact(t, f16, 640);
    }
    dequant_int4_case(t, 100, 640, 128, 0, 256, 0);
    dequant_int4_case(t, 37, 4224, 32, 0, 128, 1e3f);
    dequant_int4_case(t, 100, 640, 640, 1, 256, 0);
    dequant_int4_case(t, 63, 4224, 4224, 1, 256, 1e-6f);
    dequant_int4_case(t, 50, 96, 32, 0, 64, 1e-6f);
    dequant_int4_case(t, 37, 14336, 128, 1, 128, 1e-3f);
    /* quant_fp8_rows (cvt to e4m3: sm_89 and up) at lower.c's block size and at 1024 threads;
     * K = 4112 (514 chunks of 8) ends in a partial pass of the block at both */
    if (!kt_sm_at_least(t, 89)) {
        printf("ktest: quant_fp8_rows needs sm_89 (cvt to e4m3), the GPU is %s: its cases are "
               "not run\n", t->arch);
        return;
    }
    for (int f16 = 0; f16 < 2; f16++) {
        quant_case(t, 16, 0, f16);
        quant_case(t, 64, 0, f16);
        quant_case(t, 4096, 0, f16);
        quant_case(t, 14336, 0, f16);
        quant_case(t, 4112, 0, f16);
        quant_case(t, 4112, 1024, f16);
        quant_case(t, 14336, 1024, f16);
    }
}


/* ---------------------------------------------------------------- kiln-ktest --bench gemv */

/* A driver call of the benchmark; on failure it says which and the benchmark stops. */
#define BCK(call)                                                                               \
    do {                                                                                        \
        CUresult rc_ = t->cu.call;                                                              \
        if (rc_ != CUDA_SUCCESS) {                                                              \
            char b_[200];                                                                       \
            fprintf(stderr, "bench gemv: %s failed: %s\n", #call,                               \
                    kcuda_errstr(&t->cu, rc_, b_, sizeof b_));                                  \
            return -1;                                                                          \
        }                                                                                       \
    } while (0)

typedef struct bshape {
    const char *name;
    int N, K, gated, f32;
} bshape;

typedef struct bbuf {
    CUdeviceptr x, y, w[64]; /* w: copies, cycled so that every launch reads its weights from HBM */
    int copies;
} bbuf;

/* The microseconds per launch of f, as a CUDA graph of 64 launches (as decode runs them: the time
 * includes the gap between two kernels of a graph), the best of 5 replays after a warm-up. soff:
 * 0 for gemv; for gemv_fp8 the offset of the scales in each weight copy, for gemv_int4 of the
 * sz entries. */
static int bench_one(kt *t, CUfunction f, unsigned gx, unsigned gy, unsigned threads, const bbuf *b,
                     int M, size_t soff, double *us)
{
    enum { LAUNCHES = 64, REPLAYS = 5 };
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = st.n_seqs = M;
    CUdeviceptr db = 0;
    int m_arg = M;
    CUgraph g;
    BCK(cuStreamBeginCapture(t->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    for (int i = 0; i < LAUNCHES; i++) {
        CUdeviceptr dw = b->w[i % b->copies], ds = dw + soff;
        void *a16[] = {&st, (void *)&b->x, &dw, &db, (void *)&b->y, &m_arg};
        void *a8[] = {&st, (void *)&b->x, &dw, &ds, &db, (void *)&b->y, &m_arg};
        void **args = soff ? a8 : a16;
        BCK(cuLaunchKernel(f, gx, gy, 1, threads, 1, 1, 0, t->stream, args, NULL));
    }
    BCK(cuStreamEndCapture(t->stream, &g));
    const double best = kt_graph_ms(t, g, REPLAYS);
    BCK(cuGraphDestroy(g));
    *us = best * 1e3 / LAUNCHES;
    return 0;
}

/* gemv_fp8 on the same weight copies at lower.c's block size, M = 1 and 8, with a scale per row
 * and with one per 128 elements of K: each copy's bytes [0, N*K) are the e4m3 weight (0x3c:
 * 1.5), its float scales follow at the next 256-byte boundary (0x3c3c3c3c: 0.0115; they fit in
 * the bf16 copy's N*K*2 bytes). GB/s counts the weight and scale bytes. */
static int bench_fp8(kt *t, const bshape *s, const bbuf *b, double copy_bw)
{
    const int rule = gemv_threads(s->N, s->K, s->gated, 1, 0);
    const size_t soff = ((size_t)s->N * s->K + 255) & ~(size_t)255;
    for (int v = 0; v < 2; v++) {
        const int sbc = v == 0 ? s->K : 128, kb = (s->K + sbc - 1) / sbc;
        const size_t bytes = (size_t)s->N * s->K + (size_t)s->N * kb * 4;
        char name[160];
        snprintf(name, sizeof name, "bench %s gemv_fp8 SBC=%d", s->name, sbc);
        CUmodule m = gemv_module(t, name, NULL, "gemv_fp8", "kiln::bf16", s->N, s->K, 8, 0,
                                 s->gated, KILN_ACT_SILU, s->f32, rule, sbc, 0);
        if (!m)
            return -1;
        CUfunction f = kt_func(t, m, "k_gemv");
        double us[2];
        for (int i = 0; i < 2; i++)
            if (bench_one(t, f, 1, gemv_blocks(s->N, s->gated), (unsigned)rule, b, i ? 8 : 1, soff,
                          &us[i]))
                return -1;
#define GBS(k) (us[k] > 0 ? (double)bytes / (us[k] * 1e-6) / 1e9 : 0.0)
        printf("  fp8 %-8s M=1 %5.0f GB/s %.2f %5.1f us | M=8 %5.0f GB/s %.2f %5.1f us "
               "(%.1f MB of weight + scales)\n",
               v == 0 ? "row" : "blk128", GBS(0), GBS(0) * 1e9 / copy_bw, us[0], GBS(1),
               GBS(1) * 1e9 / copy_bw, us[1], (double)bytes / 1e6);
#undef GBS
    }
    return 0;
}

/* gemv_int4 with G = 128 on the same weight copies at lower.c's block size: MMAX 8 at M = 1 and
 * 8, and MMAX 16 (lower.c's decode steps of more than 8 rows) at M = 16 and 64 (4 row groups,
 * each converting the whole weight). Each copy's bytes [0, N*K/2) are the weight (0x3c: nibbles
 * 12 and 3), its sz entries follow at the next 256-byte boundary (0x3c3c bf16 pairs: scale
 * 0.0115 and B + z = 0.0115, finite values; they fit in the bf16 copy's N*K*2 bytes). GB/s
 * counts the weight and sz bytes (once per launch, whatever M). */
static int bench_int4(kt *t, const bshape *s, const bbuf *b, double copy_bw)
{
    enum { G = 128 };
    static const int ms[4] = {1, 8, 16, 64};
    const int rule = gemv_threads(s->N, s->K, s->gated, 0, G);
    const size_t soff = ((size_t)s->N * s->K / 2 + 255) & ~(size_t)255;
    const size_t bytes = (size_t)s->N * s->K / 2 + (size_t)s->N * (s->K / G) * 8;
    CUfunction f[2];
    for (int v = 0; v < 2; v++) {
        char name[160];
        snprintf(name, sizeof name, "bench %s gemv_int4 G=%d MMAX=%d", s->name, G, 8 << v);
        CUmodule m = gemv_module(t, name, NULL, "gemv_int4", "kiln::bf16", s->N, s->K, 8 << v, 0,
                                 s->gated, KILN_ACT_SILU, s->f32, rule, 0, G);
        if (!m)
            return -1;
        f[v] = kt_func(t, m, "k_gemv");
    }
    double us[4];
    for (int i = 0; i < 4; i++) {
        const int mmax = i < 2 ? 8 : 16;
        if (bench_one(t, f[i / 2], (unsigned)gemv_groups(ms[i], mmax),
                      gemv_blocks(s->N, s->gated), (unsigned)rule, b, ms[i], soff, &us[i]))
            return -1;
    }
#define GBS(k) (us[k] > 0 ? (double)bytes / (us[k] * 1e-6) / 1e9 : 0.0)
    printf("  int4 G=%-3d M=1 %5.0f GB/s %.2f %5.1f us | M=8 %5.0f GB/s %.2f %5.1f us | MMAX16 "
           "M=16 %5.0f GB/s %.2f %5.1f us | M=64 %5.0f GB/s %.2f %5.1f us "
           "(%.1f MB of weight + sz)\n",
           G, GBS(0), GBS(0) * 1e9 / copy_bw, us[0], GBS(1), GBS(1) * 1e9 / copy_bw, us[1],
           GBS(2), GBS(2) * 1e9 / copy_bw, us[2], GBS(3), GBS(3) * 1e9 / copy_bw, us[3],
           (double)bytes / 1e6);
#undef GBS
    return 0;
}

/* One shape: the old kernel (tests/gpu/gemv_v0.cuh, 256 threads) and the new one at lower.c's
 * block size for M = 1..8, the new one at the other block sizes, and MMAX = 16 for M = 1..16;
 * then gemv_fp8 (bench_fp8) and gemv_int4 (bench_int4). */
static int bench_shape(kt *t, const bshape *s, const char *v0_src, bbuf *b, double copy_bw)
{
    const int nout = s->gated ? s->N / 2 : s->N, rule = gemv_threads(s->N, s->K, s->gated, 0, 0);
    const size_t wbytes = (size_t)s->N * (size_t)s->K * 2;
    enum { NK = 6 };
    /* kernels: 0 old; 1 new at the rule; 2..4 new at 128, 256, 512 threads; 5 new MMAX = 16 */
    static const int alt[] = {128, 256, 512};
    CUfunction f[NK] = {0};
    unsigned th[NK], blocks[NK];
    for (int k = 0; k < NK; k++) {
        char name[160];
        th[k] = k == 0 ? 256u : k == 1 || k == 5 ? (unsigned)rule : (unsigned)alt[k - 2];
        const int v0_rpb = 8 * (s->gated ? 2 : 4); /* gemv_v0.cuh: 8 warps of 4 rows */
        blocks[k] = k == 0 ? (unsigned)((nout + v0_rpb - 1) / v0_rpb) : gemv_blocks(s->N, s->gated);
        snprintf(name, sizeof name, "bench %s kernel %d", s->name, k);
        CUmodule m = gemv_module(t, name, k == 0 ? v0_src : NULL, k == 0 ? "gemv_v0" : "gemv",
                                 "kiln::bf16", s->N, s->K, k == 5 ? 16 : 8, 0, s->gated, KILN_ACT_SILU,
                                 s->f32, (int)th[k], 0, 0);
        if (!m)
            return -1;
        f[k] = kt_func(t, m, "k_gemv");
    }
    b->copies = (int)((((size_t)512 << 20) + wbytes - 1) / wbytes);
    if (b->copies > 64)
        b->copies = 64;
    if (b->copies < 2)
        b->copies = 2;
    for (int i = 0; i < b->copies; i++) {
        BCK(cuMemAlloc(&b->w[i], wbytes));
        BCK(cuMemsetD8(b->w[i], 0x3c, wbytes)); /* bf16 0x3c3c = 0.0115 */
    }
    /* x and y: 64 rows (bench_int4's largest M) */
    BCK(cuMemAlloc(&b->x, (size_t)64 * s->K * 2));
    BCK(cuMemsetD8(b->x, 0x3c, (size_t)64 * s->K * 2));
    BCK(cuMemAlloc(&b->y, (size_t)64 * nout * 4));
    printf("%-10s %6d x %-6d %s threads %-3d (%d copies of the weights)\n", s->name, s->N, s->K,
           s->gated ? "gated" : s->f32 ? "f32  " : "     ", rule, b->copies);
    for (int M = 1; M <= 16; M++) {
        double us[NK];
        for (int k = 0; k < NK; k++) {
            us[k] = 0;
            /* the old kernel's grid is its tiles; gemv.cuh's is (row groups: 1, tiles) */
            if ((M <= 8 || k == 5) &&
                bench_one(t, f[k], k == 0 ? blocks[k] : 1, k == 0 ? 1 : blocks[k], th[k], b, M, 0,
                          &us[k]))
                return -1;
        }
#define GBS(k) (us[k] > 0 ? (double)wbytes / (us[k] * 1e-6) / 1e9 : 0.0)
        if (M <= 8)
            printf("  M=%-2d old %5.0f GB/s %.2f | new %5.0f GB/s %.2f %5.1f us x%.2f | "
                   "128: %5.0f  256: %5.0f  512: %5.0f | MMAX16: %5.0f\n",
                   M, GBS(0), GBS(0) * 1e9 / copy_bw, GBS(1), GBS(1) * 1e9 / copy_bw, us[1],
                   us[0] / us[1], GBS(2), GBS(3), GBS(4), GBS(5));
        else
            printf("  M=%-2d                         |                                     |"
                   "                                   | MMAX16: %5.0f GB/s %.2f\n",
                   M, GBS(5), GBS(5) * 1e9 / copy_bw);
#undef GBS
    }
    if (bench_fp8(t, s, b, copy_bw) || bench_int4(t, s, b, copy_bw))
        return -1;
    for (int i = 0; i < b->copies; i++)
        BCK(cuMemFree(b->w[i]));
    BCK(cuMemFree(b->x));
    BCK(cuMemFree(b->y));
    return 0;
}

int ktest_gemv_bench(kt *t)
{
    static const bshape shapes[] = {
        {"8B qkv", 6144, 4096, 0, 0},   {"8B o", 4096, 4096, 0, 0},
        {"8B gate_up", 28672, 4096, 1, 0}, {"8B down", 4096, 14336, 0, 0},
        {"8B lm_head", 128256, 4096, 0, 1}, {"1B qkv", 3072, 2048, 0, 0},
        {"1B o", 2048, 2048, 0, 0},     {"1B gate_up", 16384, 2048, 1, 0},
        {"1B down", 2048, 8192, 0, 0},  {"1B lm_head", 128256, 2048, 0, 1},
    };
    char *path = util_path_join(t->root, "tests/gpu/gemv_v0.cuh");
    kerr e;
    kerr_clear(&e);
    char *v0 = util_read_file(path, NULL, &e);
    if (!v0) {
        fprintf(stderr, "bench gemv: %s (run from the repository root or set KILN_ROOT)\n",
                kerr_msg(&e));
        free(path);
        return -1;
    }
    free(path);
    bbuf b;
    memset(&b, 0, sizeof b);
    const double copy_bw = kt_copy_bw(t);
    printf("bench gemv: weight bytes per second of each launch (in a CUDA graph of 64, so with "
           "the gaps between kernels), and as a ratio of the copy bandwidth %.0f GB/s.\n"
           "old = the FMA kernel of kiln 4ed27e5 (gemv_v0.cuh); new = gemv.cuh at lower.c's "
           "block size (xN = old time / new time), then at 128/256/512 threads; MMAX16 = the "
           "new kernel instantiated for up to 16 rows (GEMV_MAX 16); fp8 = gemv_fp8 (e4m3 weight) "
           "at lower.c's block size with a scale per row (row) or per 128 elements of K "
           "(blk128), bytes of weight + scales per second; int4 = gemv_int4 (G = 128), bytes of "
           "weight + sz per second (MMAX 8 at M = 1 and 8, MMAX 16 at M = 16 and 64).\n",
           copy_bw / 1e9);
    int rc = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] && rc == 0; i++)
        rc = bench_shape(t, &shapes[i], v0, &b, copy_bw);
    free(v0);
    return rc;
}

/* ---------------------------------------------------------------- kiln-ktest --bench dequant */

/* Microseconds of one launch of f (dequant_int4 or dequant_fp8 at 256 threads, the launch
 * lower.c's dequant_step makes: grid ceil(N * K / per / 256)): 8 launches captured back to back
 * in a CUDA graph, the best of 3 replays. */
static double dequant_us(kt *t, CUfunction f, int N, int K, int per, CUdeviceptr w, CUdeviceptr s,
                         CUdeviceptr out)
{
    enum { LAUNCHES = 8 };
    kiln_step st;
    memset(&st, 0, sizeof st);
    void *args[] = {&st, &w, &s, &out};
    kerr e;
    kerr_clear(&e);
    CUgraph g = NULL;
    KT_CU(t, cuStreamBeginCapture(t->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    int rc = 0;
    for (int i = 0; i < LAUNCHES && rc == 0; i++)
        rc = kcuda_launch(&t->cu, f, (unsigned)(((long long)N * K / per + 255) / 256), 1, 1, 256,
                          0, t->stream, args, t->pdl, &e);
    KT_CU(t, cuStreamEndCapture(t->stream, &g));
    if (rc) {
        fprintf(stderr, "bench dequant: %s\n", kerr_msg(&e));
        if (g)
            KT_CU(t, cuGraphDestroy(g));
        return -1;
    }
    const double ms = kt_graph_ms(t, g, 3);
    KT_CU(t, cuGraphDestroy(g));
    return ms * 1e3 / LAUNCHES;
}

int ktest_dequant_bench(kt *t)
{
    static const struct {
        const char *name;
        int N, K;
    } shapes[] = {{"8B qkv", 6144, 4096}, {"8B o", 4096, 4096}, {"8B gate_up", 28672, 4096},
                  {"8B down", 4096, 14336}, {"1B qkv", 3072, 2048}, {"1B down", 2048, 8192}};
    const double copy_bw = kt_copy_bw(t);
    printf("bench dequant: the prefill schedule's dequantising kernels (templates/gemv.cuh, "
           "bf16 out, 256 threads), bytes read and written per second of one launch (in a graph "
           "of 8) and that over the copy bandwidth %.0f GB/s (read and written): dequant_int4 "
           "(G 128: weight, sz, out), dequant_fp8 with a scale per row and per 128 elements of "
           "K (weight, scales, out).\n",
           copy_bw / 1e9);
    printf("%-10s %5s %5s | %8s %5s | %8s %5s | %8s %5s\n", "shape", "N", "K", "int4 us", "xcpy",
           "fp8 us", "xcpy", "blk us", "xcpy");
    int rc = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] && rc == 0; i++) {
        const int N = shapes[i].N, K = shapes[i].K;
        char src[1536] = "#include \"gemv.cuh\"\n", name[96];
        snprintf(name, sizeof name, "bench dequant %s", shapes[i].name);
        dequant_src(src, sizeof src, "k_i4", 1, 0, N, K, 128, 256);
        dequant_src(src, sizeof src, "k_f8", 0, 0, N, K, K, 256);
        dequant_src(src, sizeof src, "k_f8b", 0, 0, N, K, 128, 256);
        CUmodule mod = kt_module(t, name, src);
        if (!mod)
            return -1;
        const size_t n = (size_t)N * K;
        /* e4m3 0x38 = 1.0; sz (s, s) = (1, 1), (B + z, B + z) = (136, 136), read by FP8 as
         * floats 1.0039 and 136.03: finite values (the speed does not depend on them) */
        const size_t ns = (size_t)N * (K / 32) * 2;
        uint32_t *hs = xmalloc(sizeof(uint32_t) * ns);
        for (size_t k = 0; k < ns; k++)
            hs[k] = k & 1 ? 0x43084308u : 0x3F803F80u;
        CUdeviceptr w = kt_alloc(t, n), s = kt_upload(t, hs, sizeof(uint32_t) * ns),
                    out = kt_alloc(t, 2 * n);
        free(hs);
        KT_CU(t, cuMemsetD8(w, 0x38, n));
        const double ui4 = dequant_us(t, kt_func(t, mod, "k_i4"), N, K, 32, w, s, out);
        const double uf8 = dequant_us(t, kt_func(t, mod, "k_f8"), N, K, 16, w, s, out);
        const double ufb = dequant_us(t, kt_func(t, mod, "k_f8b"), N, K, 16, w, s, out);
        kt_free(t, w);
        kt_free(t, s);
        kt_free(t, out);
        if (ui4 < 0 || uf8 < 0 || ufb < 0) {
            rc = -1;
            break;
        }
        const double bi4 = n / 2.0 + (double)N * (K / 128) * 8 + 2.0 * n;
        const double bf8 = n + (double)N * 4 + 2.0 * n, bfb = n + (double)N * (K / 128) * 4 + 2.0 * n;
        printf("%-10s %5d %5d | %8.1f %5.2f | %8.1f %5.2f | %8.1f %5.2f\n", shapes[i].name, N, K,
               ui4, bi4 / (ui4 * 1e-6) / copy_bw, uf8, bf8 / (uf8 * 1e-6) / copy_bw, ufb,
               bfb / (ufb * 1e-6) / copy_bw);
        fflush(stdout);
    }
    return rc;
}
