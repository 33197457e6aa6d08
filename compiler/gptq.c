/* gptq — see gptq.h. The Hessians, the factor and the rows' scratch are malloc'd and freed
 * here; gptq_calib is freed by its caller (bind_weights) once the weights are rounded. */
#include "gptq.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref.h"
#include "tokenizer/tokenizer.h"

/* ---------------------------------------------------------------- the factor */

/* The factor is blocked (FB columns at a time) so that its arithmetic runs from cache: the
 * Cholesky factor left-looking, each block column's update from the columns before it one
 * product C -= A B^T (sub_abt); the triangular inverse by column blocks, each block below the
 * diagonal one such product. Column by column, each column re-read the whole factor:
 * memory-bound (README: at K = 2048, 3.2 -> 0.5 s on two cores). */
#define FB 64   /* columns a block */
#define FKC 256 /* the products' k range kept in cache at once */

typedef double v4du __attribute__((vector_size(32), aligned(8))); /* a load from any double */

/* C[i][j] -= sum_k A[i][k] B[j][k] for i < m, j < n, k < kn (row strides lda, ldb, ldc): dot
 * products of contiguous rows, 4 of A by 2 of B in registers, over FKC-wide slices of k. */
UTIL_AVX2_CLONE static void sub_abt(int64_t m, int64_t n, int64_t kn, const double *A, int64_t lda,
                                    const double *B, int64_t ldb, double *C, int64_t ldc)
{
    for (int64_t k0 = 0; k0 < kn; k0 += FKC) {
        const int64_t k1 = k0 + FKC < kn ? k0 + FKC : kn, kv = k0 + (k1 - k0) / 4 * 4;
        for (int64_t i = 0; i < m; i += 4)
            for (int64_t j = 0; j < n; j += 2) {
                const int mi = m - i < 4 ? (int)(m - i) : 4, nj = n - j < 2 ? (int)(n - j) : 2;
                double d[4][2] = {{0}};
                if (mi == 4 && nj == 2) {
                    v4du acc[4][2] = {{{0}}};
                    for (int64_t k = k0; k < kv; k += 4) {
                        const v4du b0 = *(const v4du *)(B + j * ldb + k),
                                   b1 = *(const v4du *)(B + (j + 1) * ldb + k);
                        for (int r = 0; r < 4; r++) {
                            const v4du a = *(const v4du *)(A + (i + r) * lda + k);
                            acc[r][0] += a * b0;
                            acc[r][1] += a * b1;
                        }
                    }
                    for (int r = 0; r < 4; r++)
                        for (int c = 0; c < 2; c++)
                            d[r][c] = (acc[r][c][0] + acc[r][c][1]) + (acc[r][c][2] + acc[r][c][3]);
                } else {
                    for (int r = 0; r < mi; r++)
                        for (int c = 0; c < nj; c++)
                            for (int64_t k = k0; k < kv; k++)
                                d[r][c] += A[(i + r) * lda + k] * B[(j + c) * ldb + k];
                }
                for (int r = 0; r < mi; r++)
                    for (int c = 0; c < nj; c++) {
                        for (int64_t k = kv; k < k1; k++)
                            d[r][c] += A[(i + r) * lda + k] * B[(j + c) * ldb + k];
                        C[(i + r) * ldc + j + c] -= d[r][c];
                    }
            }
    }
}

/* Rows [i0, i1) of the Cholesky factor L (lower, in place in B [K, K]) in columns [j0, j1):
 * the update from columns [0, j0) (one sub_abt), then each row solved against the rows before
 * it, and a row of the diagonal block (i < j1) its own diagonal entry too. -1 when that is not
 * positive: H' is not positive definite. chol_part: the row blocks under the diagonal block,
 * rows [j1 + lo FB, j1 + hi FB). */
typedef struct choljob {
    double *B;
    int64_t K, j0, j1;
} choljob;

static int chol_rows(const choljob *q, int64_t i0, int64_t i1)
{
    double *B = q->B;
    const int64_t K = q->K, j0 = q->j0, j1 = q->j1;
    sub_abt(i1 - i0, j1 - j0, j0, B + i0 * K, K, B + j0 * K, K, B + i0 * K + j0, K);
    for (int64_t i = i0; i < i1; i++) {
        double *li = B + i * K;
        for (int64_t j = j0; j < j1 && j < i; j++) {
            const double *lj = B + j * K;
            double s = li[j];
            for (int64_t k = j0; k < j; k++)
                s -= li[k] * lj[k];
            li[j] = s / lj[j];
        }
        if (i < j1) {
            double d = li[i];
            for (int64_t k = j0; k < i; k++)
                d -= li[k] * li[k];
            if (!(d > 0) || !isfinite(d))
                return -1;
            li[i] = sqrt(d);
        }
    }
    return 0;
}

static void chol_part(void *ctx, int chunk, int64_t lo, int64_t hi)
{
    const choljob *q = ctx;
    (void)chunk;
    for (int64_t i0 = q->j1 + lo * FB; i0 < q->j1 + hi * FB && i0 < q->K; i0 += FB)
        (void)chol_rows(q, i0, i0 + FB < q->K ? i0 + FB : q->K); /* below: no diagonal */
}

/* X = L^-1 (lower) by column blocks, into U mirrored (U[i][j] = X[K-1-i][K-1-j]: U = P X P).
 * A column block J: its diagonal block inverted, then each block I below it,
 * X_IJ = L_II^-1 (-sum over J <= M < I of L_IM X_MJ), the sum one sub_abt against the column
 * block kept transposed (T[c][m] = X[m][J0 + c], m from 0). Block pairs p and nb-1-p in
 * [lo, hi). */
typedef struct invjob {
    const double *L;
    float *U;
    int64_t K;
} invjob;

static void inv_block(const invjob *q, double *T, int64_t J)
{
    const double *L = q->L;
    const int64_t K = q->K, j0 = J * FB, j1 = j0 + FB < K ? j0 + FB : K, w = j1 - j0;
    memset(T, 0, sizeof(double) * (size_t)(FB * K));
    for (int64_t i0 = j0; i0 < K; i0 += FB) {
        const int64_t i1 = i0 + FB < K ? i0 + FB : K;
        /* T[c][i] = -sum over m in [j0, i0) of L[i][m] X[m][j0 + c], rows i of the block */
        double S[FB][FB] = {{0}};
        if (i0 > j0)
            sub_abt(i1 - i0, w, i0 - j0, L + i0 * K + j0, K, T + j0, K, &S[0][0], FB);
        if (i0 == j0) /* the diagonal block: the identity's columns */
            for (int64_t c = 0; c < w; c++)
                S[c][c] = 1.0;
        /* forward substitution: X[i][j0 + c] = (S[i][c] - sum over i0 <= k < i of
         * L[i][k] X[k][j0 + c]) / L[i][i] */
        for (int64_t i = i0; i < i1; i++) {
            const double *li = L + i * K;
            for (int64_t c = 0; c < w; c++) {
                double s = S[i - i0][c];
                for (int64_t k = i0 > j0 + c ? i0 : j0 + c; k < i; k++)
                    s -= li[k] * T[c * K + k];
                const double x = j0 + c > i ? 0.0 : s / li[i];
                T[c * K + i] = x;
                if (j0 + c <= i)
                    q->U[(K - 1 - i) * K + (K - 1 - (j0 + c))] = (float)x;
            }
        }
    }
}

static void inv_part(void *ctx, int chunk, int64_t lo, int64_t hi)
{
    const invjob *q = ctx;
    const int64_t nb = (q->K + FB - 1) / FB;
    double *T = xmalloc(sizeof(double) * (size_t)(FB * q->K));
    (void)chunk;
    for (int64_t p = lo; p < hi; p++) {
        inv_block(q, T, p);
        if (nb - 1 - p != p)
            inv_block(q, T, nb - 1 - p);
    }
    free(T);
}

/* U [K, K] (float, upper; the strict lower triangle 0), U^T U = (H')^-1 for H' = H with dead
 * inputs set to 1 and 1% of the mean diagonal added, and dead[k] set for the inputs with H_kk
 * = 0. The upper Cholesky factor of an inverse, without forming the inverse: with P the
 * reversal of the K indices, P H' P = L L^T (Cholesky), so H' = V V^T with V = P L P upper, and
 * U = V^-1 = P L^-1 P (then U^T U = (V V^T)^-1). -1 when H' is not positive definite. */
static int factor(const float *H, int64_t K, float *U, unsigned char *dead)
{
    double *B = xcalloc((size_t)(K * K), sizeof(double)), mean = 0;
    for (int64_t i = 0; i < K; i++) {
        dead[i] = H[i * K + i] == 0;
        mean += dead[i] ? 1.0 : (double)H[i * K + i];
    }
    double damp = 0.01 * mean / (double)K;
    /* B = P H' P, lower triangle: B[i][j] = H'[K-1-i][K-1-j], read from H's upper triangle */
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j <= i; j++) {
            int64_t a = K - 1 - i, b = K - 1 - j; /* a <= b */
            B[i * K + j] = a == b ? (dead[a] ? 1.0 : (double)H[a * K + a]) + damp
                                  : (double)H[a * K + b];
        }
    for (int64_t j0 = 0; j0 < K; j0 += FB) {
        const int64_t j1 = j0 + FB < K ? j0 + FB : K;
        choljob cj = {B, K, j0, j1};
        if (chol_rows(&cj, j0, j1)) { /* the diagonal block first */
            free(B);
            return -1;
        }
        const int64_t below = (K - j1 + FB - 1) / FB; /* row blocks under it */
        if (below * FB * FB * j0 >= 1 << 22) /* enough work for the threads' start */
            util_parallel_for(below, chol_part, &cj);
        else
            chol_part(&cj, 0, 0, below);
    }
    memset(U, 0, sizeof(float) * (size_t)(K * K));
    invjob ij = {B, U, K};
    util_parallel_for(((K + FB - 1) / FB + 1) / 2, inv_part, &ij);
    free(B);
    return 0;
}

/* ---------------------------------------------------------------- the rows */

#define GPTQ_TILE 16 /* rows rounded together: each row of U read once a tile */

typedef struct gjob {
    const quant_grid *g;
    const float *U;
    const unsigned char *dead;
    float *w, *sc, *zp;
    int64_t K;
} gjob;

/* Row r of the tile starting at t0 failed (NaN or Inf, or an INT4 scale Inf): as it was. */
static void give_up(const gjob *q, int64_t r, const float *orig, unsigned char *ok)
{
    memcpy(q->w + r * q->K, orig, sizeof(float) * (size_t)q->K);
    q->sc[r * q->g->kb] = NAN;
    *ok = 0;
}

/* row[j] -= e u[j], j < n: a row's rounding error onto later columns, 8 at a time in vector
 * types (-O2's cost model keeps the plain loop scalar: a third of the speed on an 8B layer),
 * each element's multiply and subtract as the plain loop's. */
typedef float v8f __attribute__((vector_size(32), aligned(4))); /* a load from any float */

static inline void push_error(float *row, const float *u, float e, int64_t n)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        *(v8f *)(row + j) -= e * *(const v8f *)(u + j);
    for (; j < n; j++)
        row[j] -= e * u[j];
}

UTIL_AVX2_CLONE static void gptq_part(void *ctx, int chunk, int64_t lo, int64_t hi)
{
    const gjob *q = ctx;
    const quant_grid *g = q->g;
    const float *U = q->U;
    int64_t K = q->K, kb = g->kb;
    int i4 = g->mode == KC_QUANT_INT4;
    float *orig = xmalloc(sizeof(float) * (size_t)(GPTQ_TILE * K));
    float E[GPTQ_TILE][GPTQ_BLOCK];
    unsigned char ok[GPTQ_TILE];
    (void)chunk;
    for (int64_t t0 = lo; t0 < hi; t0 += GPTQ_TILE) {
        int nt = (int)(hi - t0 < GPTQ_TILE ? hi - t0 : GPTQ_TILE);
        for (int r = 0; r < nt; r++) {
            float *row = q->w + (t0 + r) * K;
            memcpy(orig + r * K, row, sizeof(float) * (size_t)K);
            ok[r] = 1;
            for (int64_t k = 0; k < K && ok[r]; k++)
                ok[r] = isfinite(row[k]) != 0;
            if (!ok[r]) { /* finite.c reports the row (or --allow-nonfinite) */
                q->sc[(t0 + r) * kb] = NAN;
                continue;
            }
            if (!i4)
                q->sc[t0 + r] = quant_fp8_scale(row, K); /* of the original row */
            for (int64_t k = 0; k < K; k++)
                if (q->dead[k])
                    row[k] = 0;
        }
        for (int64_t b0 = 0; b0 < K; b0 += GPTQ_BLOCK) {
            int64_t b1 = b0 + GPTQ_BLOCK < K ? b0 + GPTQ_BLOCK : K;
            for (int r = 0; r < nt; r++) {
                float *row = q->w + (t0 + r) * K, *sc = q->sc + (t0 + r) * kb,
                      *zp = i4 ? q->zp + (t0 + r) * kb : NULL;
                for (int64_t i = b0; i < b1 && ok[r]; i++) {
                    float s, z = 0, v;
                    if (i4) {
                        int64_t b = i / g->group;
                        /* a group within this block (or the whole row, met at column 0):
                         * every update from the columns before it has landed */
                        assert(i % g->group || i == 0 || (i - b0) + g->group <= GPTQ_BLOCK);
                        if (i % g->group == 0 &&
                            quant_int4_params(row + i, g->group, g->dt, &sc[b], &zp[b])) {
                            give_up(q, t0 + r, orig + r * K, &ok[r]);
                            break;
                        }
                        s = sc[b];
                        z = zp[b];
                        v = quant_int4_value(row[i], s, z);
                    } else {
                        v = quant_fp8_value(row[i], sc[0]);
                    }
                    float e = (row[i] - v) / U[i * K + i];
                    const float *u = U + i * K;
                    row[i] = v;
                    E[r][i - b0] = e;
                    if (e != 0)
                        push_error(row + i + 1, u + i + 1, e, b1 - i - 1);
                }
            }
            /* the block's errors onto the columns after it: U's row i read once a tile */
            for (int64_t i = b0; i < b1 && b1 < K; i++) {
                const float *u = U + i * K;
                for (int r = 0; r < nt; r++) {
                    float e = E[r][i - b0], *row = q->w + (t0 + r) * K;
                    if (ok[r] && e != 0)
                        push_error(row + b1, u + b1, e, K - b1);
                }
            }
        }
    }
    free(orig);
}

int gptq_round(const quant_grid *g, const float *H, float *w, int64_t rows, int64_t K, float *sc,
               float *zp)
{
    assert(g->mode == KC_QUANT_FP8 || g->mode == KC_QUANT_INT4);
    assert(g->mode == KC_QUANT_FP8 ? g->kb == 1 : g->group * g->kb == K);
    if (K == 0) { /* a weight of no columns: scale 1 (and zero point 0), as to nearest */
        for (int64_t r = 0; r < rows; r++) {
            sc[r] = 1.0f;
            if (zp)
                zp[r] = 0;
        }
        return 0;
    }
    float *U = xmalloc(sizeof(float) * (size_t)(K * K));
    unsigned char *dead = xmalloc((size_t)K);
    if (factor(H, K, U, dead)) {
        free(U);
        free(dead);
        return -1;
    }
    gjob q = {g, U, dead, w, sc, zp, K};
    util_parallel_for(rows, gptq_part, &q);
    free(U);
    free(dead);
    return 0;
}

/* ---------------------------------------------------------------- calibration */

struct gptq_calib {
    const kgraph *g;
    int n;        /* distinct linear inputs */
    int *node;    /* [n] their nodes */
    int64_t *k;   /* [n] their widths */
    float **H;    /* [n] [k, k], upper triangle filled */
    float **sums; /* gptq_hessian's sums for weights read from several inputs */
    int n_sums;
};

void gptq_calib_free(gptq_calib *cal)
{
    if (!cal)
        return;
    for (int i = 0; i < cal->n; i++)
        free(cal->H[i]);
    for (int i = 0; i < cal->n_sums; i++)
        free(cal->sums[i]);
    free(cal->node);
    free(cal->k);
    free(cal->H);
    free(cal->sums);
    free(cal);
}

static int input_index(const gptq_calib *cal, int node)
{
    for (int i = 0; i < cal->n; i++)
        if (cal->node[i] == node)
            return i;
    return -1;
}

const float *gptq_hessian(gptq_calib *cal, int weight)
{
    const kgraph *g = cal->g;
    int first = -1, many = 0;
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i].op == KG_LINEAR && g->nodes[i].in[1] == weight) {
            int d = input_index(cal, g->nodes[i].in[0]);
            assert(d >= 0);
            if (first < 0)
                first = d;
            else if (d != first)
                many = 1;
        }
    assert(first >= 0);
    if (!many)
        return cal->H[first];
    /* a weight shared by linears of different inputs: the GPTQ objective is their sum */
    int64_t K = cal->k[first];
    float *s = xcalloc((size_t)(K * K), sizeof(float));
    unsigned char *seen = xcalloc((size_t)cal->n, 1);
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i].op == KG_LINEAR && g->nodes[i].in[1] == weight) {
            int d = input_index(cal, g->nodes[i].in[0]);
            if (seen[d]++)
                continue;
            for (int64_t e = 0; e < K * K; e++)
                s[e] += cal->H[d][e];
        }
    free(seen);
    cal->sums = xrealloc(cal->sums, sizeof *cal->sums * (size_t)(cal->n_sums + 1));
    cal->sums[cal->n_sums++] = s;
    return s;
}

/* H += X^T X for one forward's X [n, K] (row-major, as the forward kept it), upper triangle:
 * entry (i, j) gets the sum over the forward's tokens, in token order and in double, of x_ti
 * x_tj. Tiles of 4 rows by 8 columns keep their 32 sums in registers (each lane of a v4d one
 * entry's sum, the same sum to the bit as one entry at a time), each token's 8 values of the
 * tile's columns loaded once for its 4 rows (with ref.c's tiles, the example model's calibration
 * went from 76 to 22 s on 2 cores), from a copy of X by panels of 8 columns (hjob.pan) so that a
 * tile reads contiguous memory: X's rows are K floats apart, a page or more each, and a tile
 * read one from each of n rows (an 8B-shaped layer's forwards and Hessians over 512 tokens on
 * 2 cores 19.0 / 17.8 -> 12.9 / 12.4 s, the same sums). The entries outside whole tiles (the
 * last K % 4 rows, K % 8 columns) one at a time, from X. A chunk's tile rows p and T-1-p go
 * together: equal work a pair. Measured and not kept: 64-row blocks over 256-column blocks and
 * the values converted to double once a forward, from X itself (16.6 -> 15.2 s on that layer);
 * the tile in a clone for Haswell with its adds fused into FMAs (exact products: the same sums)
 * by optimize("fp-contract=fast"): the example model's forwards and Hessians 19.5 -> 71.7 s (the
 * attribute's other effects, not looked into). */
#define HT_I 4
#define HT_J 8
typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16), aligned(4))); /* a load from any float */
typedef struct hjob {
    const float *x;
    const float *pan; /* x's whole-tile columns by panels of HT_J: pan[(p n + t) HT_J + l] =
                       * x[t][p HT_J + l], so that a tile reads contiguous memory */
    float *H;
    int64_t K, n;
} hjob;

static void hess_entry(const hjob *q, int64_t i, int64_t j)
{
    double s = 0;
    for (int64_t t = 0; t < q->n; t++)
        s += (double)q->x[t * q->K + i] * q->x[t * q->K + j];
    q->H[i * q->K + j] += (float)s;
}

UTIL_AVX2_CLONE static void hess_tile(const hjob *q, int64_t i0, int64_t j0)
{
    const int64_t K = q->K, n = q->n;
    const float *pj = q->pan + j0 * n, *pi = q->pan + (i0 - i0 % HT_J) * n + i0 % HT_J;
    v4d a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0}, a2 = {0}, b2 = {0}, a3 = {0}, b3 = {0};
    for (int64_t t = 0; t < n; t++) {
        const float *row = pj + t * HT_J, *xi = pi + t * HT_J;
        v4d lo = __builtin_convertvector(*(const v4f *)row, v4d);
        v4d hi = __builtin_convertvector(*(const v4f *)(row + 4), v4d);
        double x0 = xi[0], x1 = xi[1], x2 = xi[2], x3 = xi[3];
        a0 += x0 * lo;
        b0 += x0 * hi;
        a1 += x1 * lo;
        b1 += x1 * hi;
        a2 += x2 * lo;
        b2 += x2 * hi;
        a3 += x3 * lo;
        b3 += x3 * hi;
    }
    const v4d sums[HT_I][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
    for (int u = 0; u < HT_I; u++)
        for (int l = 0; l < HT_J; l++)
            if (j0 + l >= i0 + u)
                q->H[(i0 + u) * K + j0 + l] += (float)sums[u][l / 4][l % 4];
}

/* Tile row p: rows [p HT_I, p HT_I + HT_I), or the rows past the whole tiles one at a time. */
static void hess_rows(const hjob *q, int64_t p)
{
    int64_t K = q->K, i0 = p * HT_I, jt = K - K % HT_J; /* columns [jt, K): one at a time */
    if (i0 + HT_I > K) {
        for (int64_t i = i0; i < K; i++)
            for (int64_t j = i; j < K; j++)
                hess_entry(q, i, j);
        return;
    }
    for (int64_t j0 = i0 - i0 % HT_J; j0 < jt; j0 += HT_J)
        hess_tile(q, i0, j0);
    for (int64_t i = i0; i < i0 + HT_I; i++)
        for (int64_t j = jt > i ? jt : i; j < K; j++)
            hess_entry(q, i, j);
}

static void hess_part(void *ctx, int chunk, int64_t lo, int64_t hi)
{
    const hjob *q = ctx;
    int64_t T = (q->K + HT_I - 1) / HT_I;
    (void)chunk;
    for (int64_t p = lo; p < hi; p++) {
        hess_rows(q, p);
        if (T - 1 - p != p)
            hess_rows(q, T - 1 - p);
    }
}

/* Memory the machine has available (MemAvailable), or 0 when unknown. */
static double mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024.0;
}

/* The first `want` tokens of the calibration text (at most 64 bytes a token read), as `kiln
 * perplexity` encodes its text. */
static int64_t *calib_ids(kc *c, int want, int *n, kerr *err)
{
    size_t len;
    char *text = util_read_file(c->calib_path, &len, err);
    if (!text)
        return kerr_add(err, "--calibrate %s: cannot read the calibration text", c->calib_path),
               NULL;
    size_t cap = (size_t)want * 64 < TOK_MAX_TEXT ? (size_t)want * 64 : TOK_MAX_TEXT;
    if (len > cap) { /* cut at a character boundary */
        len = cap;
        while (len > 0 && ((unsigned char)text[len] & 0xC0) == 0x80)
            len--;
    }
    tokenizer *tok = tok_load(c->model_dir, err);
    int32_t *t32 = NULL;
    size_t nt = 0;
    if (!tok || tok_encode(tok, text, len, 1, &t32, &nt, err)) {
        kerr_add(err, "--calibrate %s: cannot tokenise it with %s's tokenizer", c->calib_path,
                 c->model_dir);
        free(text);
        tok_free(tok);
        return NULL;
    }
    free(text);
    tok_free(tok);
    if (nt < 2) {
        free(t32);
        return kerr_add(err, "--calibrate %s: the text encodes to %zu token%s; calibration needs "
                             "at least 2 (give more text)",
                        c->calib_path, nt, nt == 1 ? "" : "s"),
               NULL;
    }
    *n = nt < (size_t)want ? (int)nt : want;
    int64_t *ids = xmalloc(sizeof(int64_t) * (size_t)*n);
    for (int i = 0; i < *n; i++)
        ids[i] = t32[i];
    free(t32);
    return ids;
}

/* The calibration's forwards, sequences seq0 + [lo, hi) of L tokens, each on refs[p] (one per
 * thread: refs share only the graph and the read-only weights, as backend_ref's slots do). */
typedef struct fwdjob {
    ref **refs;
    const int64_t *ids;
    int nt, L, seq0;
    int *rc;
    kerr *errs;
} fwdjob;

static void fwd_part(void *ctx, int chunk, int64_t lo, int64_t hi)
{
    const fwdjob *q = ctx;
    (void)chunk;
    for (int64_t p = lo; p < hi; p++) {
        int off = (q->seq0 + (int)p) * q->L, len = q->nt - off < q->L ? q->nt - off : q->L;
        ref_reset(q->refs[p]);
        q->rc[p] = ref_forward(q->refs[p], q->ids + off, NULL, len, &q->errs[p]);
    }
}

/* H += X^T X for every input, from one forward's kept values. */
static void accumulate(gptq_calib *cal, const ref *r, int len)
{
    for (int d = 0; d < cal->n; d++) {
        int rows, cols;
        const float *x = ref_value(r, cal->node[d], &rows, &cols);
        int64_t K = cal->k[d];
        assert(x && rows == len && cols == K);
        const int64_t jt = K - K % HT_J;
        float *pan = xmalloc(sizeof(float) * (size_t)(jt * len + 1));
        for (int64_t t = 0; t < len; t++)
            for (int64_t j = 0; j < jt; j++)
                pan[(j / HT_J * len + t) * HT_J + j % HT_J] = x[t * K + j];
        hjob hj = {x, pan, cal->H[d], K, len};
        util_parallel_for((K + 2 * HT_I - 1) / (2 * HT_I), hess_part, &hj);
        free(pan);
    }
}

gptq_calib *gptq_calibrate(kc *c, const int *weights, int n, kerr *err)
{
    const kgraph *g = c->g;
    gptq_calib *cal = xcalloc(1, sizeof *cal);
    cal->g = g;
    cal->node = xmalloc(sizeof(int) * (size_t)(g->n ? g->n : 1));
    cal->k = xmalloc(sizeof(int64_t) * (size_t)(g->n ? g->n : 1));
    double bytes = 0, kmax = 0, ksum = 0;
    for (int w = 0; w < n; w++)
        for (int i = 0; i < g->n; i++)
            if (g->nodes[i].op == KG_LINEAR && g->nodes[i].in[1] == weights[w] &&
                input_index(cal, g->nodes[i].in[0]) < 0) {
                cal->node[cal->n] = g->nodes[i].in[0];
                cal->k[cal->n] = g->nodes[weights[w]].shape[1];
                bytes += (double)cal->k[cal->n] * (double)cal->k[cal->n] * sizeof(float);
                kmax = cal->k[cal->n] > kmax ? (double)cal->k[cal->n] : kmax;
                ksum += (double)cal->k[cal->n];
                cal->n++;
            }
    cal->H = xcalloc((size_t)(cal->n ? cal->n : 1), sizeof *cal->H); /* filled below */
    int64_t maxpos = 0;
    if (config_int(c->cfg, "max_position_embeddings", 1, 0, &maxpos, err)) {
        gptq_calib_free(cal);
        return NULL;
    }
    int L = maxpos > 0 && maxpos < GPTQ_SEQ ? (int)maxpos : GPTQ_SEQ;
    int P = util_cpus(UTIL_PAR_MAX); /* forwards at once */
    /* at most: the Hessians, each forward's kept inputs, and while a weight is rounded its
     * factor (double [K, K] and U, float) */
    double peak = bytes + (double)P * L * ksum * sizeof(float) + 12.0 * kmax * kmax;
    char b1[32], b2[32];
    double avail = mem_available();
    if (avail > 0 && peak > 0.9 * avail) {
        kerr_add(err, "--calibrate: GPTQ holds the Hessians of all %d linear inputs at once "
                      "(float [in, in] each), the inputs of %d forwards and one factor (12 bytes "
                      "x in^2 for the widest): %s, more than the %s this machine has available; "
                      "drop --calibrate (round to nearest) or run kilnc on a machine with more "
                      "memory (--calibrate-tokens does not change it)",
                 cal->n, P, util_human_bytes(peak, b1, sizeof b1),
                 util_human_bytes(avail, b2, sizeof b2));
        gptq_calib_free(cal);
        return NULL;
    }
    int nt = 0;
    int64_t *ids = calib_ids(c, c->calib_tokens ? c->calib_tokens : GPTQ_TOKENS, &nt, err);
    if (!ids) {
        gptq_calib_free(cal);
        return NULL;
    }
    int nseq = (nt + L - 1) / L;
    P = P < nseq ? P : nseq;
    fprintf(stderr, "kilnc: --calibrate: %d tokens of %s in %d sequences of up to %d, %d at once; "
                    "the Hessians of %d linear inputs: %s (float; %s at most)\n",
            nt, c->calib_path, nseq, L, P, cal->n, util_human_bytes(bytes, b1, sizeof b1),
            util_human_bytes(peak, b2, sizeof b2));
    double t0 = util_now();
    for (int d = 0; d < cal->n; d++)
        cal->H[d] = xcalloc((size_t)(cal->k[d] * cal->k[d]), sizeof(float));
    ref **refs = xcalloc((size_t)P, sizeof *refs);
    kerr *errs = xmalloc(sizeof *errs * (size_t)P);
    int *rcs = xcalloc((size_t)P, sizeof *rcs), rc = 0, last = 0;
    for (int d = 0; d < cal->n; d++) /* nothing after the last input is computed: no LM head */
        last = cal->node[d] > last ? cal->node[d] : last;
    for (int p = 0; p < P && !rc; p++) {
        if (!(refs[p] = ref_new(g, L, err)))
            rc = -1;
        for (int d = 0; refs[p] && d < cal->n; d++)
            ref_keep(refs[p], cal->node[d]);
        if (refs[p])
            ref_stop_after(refs[p], last);
    }
    /* P forwards at once, then their inputs added in sequence order: the sums do not depend
     * on P */
    for (int s0 = 0; !rc && s0 < nseq; s0 += P) {
        int np = nseq - s0 < P ? nseq - s0 : P;
        for (int p = 0; p < np; p++)
            kerr_clear(&errs[p]);
        fwdjob fj = {refs, ids, nt, L, s0, rcs, errs};
        util_parallel_for(np, fwd_part, &fj);
        for (int p = 0; p < np && !rc; p++) {
            if (rcs[p]) {
                rc = kerr_add(err, "%s", kerr_msg(&errs[p]));
                break;
            }
            int off = (s0 + p) * L;
            accumulate(cal, refs[p], nt - off < L ? nt - off : L);
        }
    }
    free(ids);
    for (int p = 0; p < P; p++)
        ref_free(refs[p]);
    free(refs);
    free(errs);
    free(rcs);
    for (int d = 0; !rc && d < cal->n; d++)
        for (int64_t e = 0; e < cal->k[d] * cal->k[d]; e++)
            if (!isfinite(cal->H[d][e])) {
                rc = kerr_add(err, "--calibrate: the calibration forward gave NaN or Inf at '%s' "
                                   "(a linear's input); GPTQ needs finite activations",
                              g->nodes[cal->node[d]].name);
                break;
            }
    if (rc) {
        kerr_add(err, "--calibrate %s: the calibration forward failed", c->calib_path);
        gptq_calib_free(cal);
        return NULL;
    }
    c->calib_ran = nt;
    fprintf(stderr, "kilnc: --calibrate: forwards and Hessians in %.1f s\n", util_now() - t0);
    return cal;
}
