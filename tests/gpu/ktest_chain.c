/* kiln-ktest --bench chain: a decode step's chain of GEMVs (batch 1, bf16) as one persistent
 * kernel (tests/gpu/stream_chain.cuh) against the same chain as a CUDA graph of gemv.cuh launches
 * with PDL, the way kiln runs a decode step today. The question it answers before any of kiln is
 * rebuilt around it: what share of the copy bandwidth does each reach over a model's layers, and
 * what does a grid barrier cost against a kernel boundary (the "+4" rows: four empty steps a
 * layer, barriers in the one, PDL launches of an empty kernel in the other, standing for a
 * layer's norms, rope and attention).
 *
 * Before timing, the persistent kernel is checked on random data against a double-precision
 * reference of every stage (each from the kernel's own bf16 input), at every ring shape timed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktest.h"
#include "util.h"
#include "../../kernels/kiln_step.h"

enum { SEG = 2048, MAXST = 8, REPLAYS = 5 };

typedef struct cshape {
    int N, K;
} cshape;

typedef struct chain {
    const char *name;
    int layers, KMAX;
    cshape st[4]; /* a layer's qkv, o, gate_up (not gated here: N rows out), down */
} chain;

/* The device side of a chain: per layer its weights, per stage its x and y. */
typedef struct cbuf {
    int n;                   /* stages */
    int N[MAXST * 64], K[MAXST * 64];
    CUdeviceptr w[MAXST * 64], x[MAXST * 64], y[MAXST * 64];
    CUdeviceptr stages, bar, x0;
} cbuf;

/* kiln::chain_stage's layout on the host */
typedef struct hstage {
    CUdeviceptr w, x, y;
    int N, K;
} hstage;

typedef struct ring {
    int warps, depth, bar; /* bar: stream_chain.cuh's grid_barrier variant */
    int pdl;               /* a launch per stage with PDL (stream_chain.cuh's PDL 1) */
} ring;

static const ring rings[] = {{16, 2, 1, 0}, {8, 4, 0, 0}, {8, 4, 1, 0}, {8, 4, 2, 0},
                             {8, 2, 1, 1},  {4, 4, 1, 1}};

static int sm_count(kt *t)
{
    CUdevice dev;
    int n = 0;
    KT_CU(t, cuDeviceGet(&dev, 0)); /* kiln-ktest runs on device 0 */
    KT_CU(t, cuDeviceGetAttribute(&n, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    return n;
}

static unsigned ring_smem(const ring *r, int kmax)
{
    return (unsigned)(r->warps * r->depth * SEG * 2 + kmax * 2 + r->warps * r->depth * 8);
}

/* The persistent kernel for ring r: tests/gpu/stream_chain.cuh (text: it is not on NVRTC's
 * include path) and a wrapper. */
static CUfunction chain_func(kt *t, const char *proto, const ring *r, int kmax)
{
    char src[512], name[96];
    snprintf(src, sizeof src,
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_chain(const kiln::chain_stage *s, int n, unsigned *bar)\n"
             "{\n    kiln::stream_chain<%d, %d, %d, %d, %d, %d>(s, n, bar);\n}\n",
             r->warps * 32, r->warps, r->depth, SEG, kmax, r->bar, r->pdl);
    snprintf(name, sizeof name, "chain warps=%d depth=%d KMAX=%d bar=%d pdl=%d", r->warps,
             r->depth, kmax, r->bar, r->pdl);
    char *all = xasprintf("%s\n%s", proto, src);
    CUmodule m = kt_module_sm90a(t, name, all);
    free(all);
    if (!m)
        return NULL;
    CUfunction f = kt_func(t, m, "k_chain");
    if (f)
        KT_CU(t, cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                    (int)ring_smem(r, kmax)));
    return f;
}

/* Stages of `layers` layers of c (nops: empty stages a layer, before qkv, two after it, one
 * after o), each stage's x the previous stage's y where it has K elements, else x0. Weights:
 * `fill` (a 32-bit pattern) or, with fill 0, random values of scale 1/sqrt(K). */
static void cbuf_make(kt *t, cbuf *b, const chain *c, int layers, int nops, unsigned fill)
{
    memset(b, 0, sizeof *b);
    size_t xmax = 0;
    for (int i = 0; i < 4; i++)
        xmax = (size_t)c->st[i].K > xmax ? (size_t)c->st[i].K : xmax;
    KT_CU(t, cuMemAlloc(&b->x0, xmax * 2));
    KT_CU(t, cuMemsetD8(b->x0, 0x3c, xmax * 2));
    CUdeviceptr prev = 0;
    int prevn = 0;
    for (int l = 0; l < layers; l++)
        for (int i = 0; i < 4; i++) {
            if (nops && (i == 0 || i == 1 || i == 2))
                for (int k = 0; k < (i == 1 ? 2 : 1); k++)
                    b->N[b->n++] = 0; /* an empty step: a barrier, or an empty kernel */
            const int N = c->st[i].N, K = c->st[i].K, s = b->n++;
            b->N[s] = N;
            b->K[s] = K;
            KT_CU(t, cuMemAlloc(&b->w[s], (size_t)N * K * 2));
            if (fill) {
                KT_CU(t, cuMemsetD32Async(b->w[s], fill, (size_t)N * K / 2, t->stream));
            } else {
                float *w = xmalloc(sizeof(float) * (size_t)N * K);
                kt_fill(t, w, (size_t)N * K, 1.0f / sqrtf((float)K));
                uint16_t *h = kt_to_bf16(w, (size_t)N * K);
                KT_CU(t, cuMemcpyHtoD(b->w[s], h, (size_t)N * K * 2));
                free(h);
                free(w);
            }
            KT_CU(t, cuMemAlloc(&b->y[s], (size_t)N * 2));
            KT_CU(t, cuMemsetD8(b->y[s], 0, (size_t)N * 2));
            b->x[s] = prev && prevn >= K ? prev : b->x0;
            prev = b->y[s];
            prevn = N;
        }
    if (!fill) { /* random x0 */
        float *x = xmalloc(sizeof(float) * xmax);
        kt_fill(t, x, xmax, 1.0f);
        uint16_t *h = kt_to_bf16(x, xmax);
        KT_CU(t, cuMemcpyHtoD(b->x0, h, xmax * 2));
        free(h);
        free(x);
    }
    hstage *h = xmalloc(sizeof(hstage) * (size_t)b->n);
    for (int s = 0; s < b->n; s++)
        h[s] = (hstage){b->w[s], b->x[s], b->y[s], b->N[s], b->K[s]};
    KT_CU(t, cuMemAlloc(&b->stages, sizeof(hstage) * (size_t)b->n));
    KT_CU(t, cuMemcpyHtoD(b->stages, h, sizeof(hstage) * (size_t)b->n));
    free(h);
    KT_CU(t, cuMemAlloc(&b->bar, 256));
    KT_CU(t, cuStreamSynchronize(t->stream));
}

static void cbuf_free(kt *t, cbuf *b)
{
    for (int s = 0; s < b->n; s++)
        if (b->N[s]) {
            kt_free(t, b->w[s]);
            kt_free(t, b->y[s]);
        }
    kt_free(t, b->x0);
    kt_free(t, b->stages);
    kt_free(t, b->bar);
}

/* The persistent kernel's chain, captured with the reset of its barrier counter; with r->pdl a
 * launch per stage (PDL on), an empty stage being an empty kernel that triggers first (nop). */
static CUgraph chain_graph(kt *t, CUfunction f, const ring *r, int kmax, cbuf *b, int sms,
                           CUfunction nop)
{
    CUgraph g;
    int n = b->n;
    void *args[] = {&b->stages, &n, &b->bar};
    kerr e;
    kerr_clear(&e);
    KT_CU(t, cuStreamBeginCapture(t->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    KT_CU(t, cuMemsetD32Async(b->bar, 0, 64, t->stream));
    int rc = 0;
    if (!r->pdl)
        rc = kcuda_launch(&t->cu, f, (unsigned)sms, 1, 1, (unsigned)r->warps * 32,
                          ring_smem(r, kmax), t->stream, args, 0, &e);
    for (int s = 0; r->pdl && s < b->n && rc == 0; s++) {
        CUdeviceptr one = b->stages + (CUdeviceptr)s * sizeof(hstage);
        int n1 = 1;
        void *a1[] = {&one, &n1, &b->bar};
        kiln_step st;
        memset(&st, 0, sizeof st);
        void *na[] = {&st};
        rc = b->N[s] ? kcuda_launch(&t->cu, f, (unsigned)sms, 1, 1, (unsigned)r->warps * 32,
                                    ring_smem(r, kmax), t->stream, a1, 1, &e)
                     : kcuda_launch(&t->cu, nop, 1, 1, 1, 32, 0, t->stream, na, 1, &e);
    }
    KT_CU(t, cuStreamEndCapture(t->stream, &g));
    if (rc) {
        fprintf(stderr, "bench chain: %s\n", kerr_msg(&e));
        exit(2);
    }
    return g;
}

/* Microseconds of one grid barrier of ring r's kernel f with nothing streaming: a chain of
 * 256 empty stages. */
static double barrier_us(kt *t, CUfunction f, const ring *r, int kmax, int sms)
{
    enum { NB = 256 };
    cbuf b;
    memset(&b, 0, sizeof b);
    b.n = NB;
    hstage *h = xcalloc(NB, sizeof(hstage));
    KT_CU(t, cuMemAlloc(&b.stages, sizeof(hstage) * NB));
    KT_CU(t, cuMemcpyHtoD(b.stages, h, sizeof(hstage) * NB));
    free(h);
    KT_CU(t, cuMemAlloc(&b.bar, 256));
    CUgraph g = chain_graph(t, f, r, kmax, &b, sms, NULL);
    const double ms = kt_graph_ms(t, g, REPLAYS);
    KT_CU(t, cuGraphDestroy(g));
    kt_free(t, b.stages);
    kt_free(t, b.bar);
    return ms * 1e3 / (NB - 1);
}

/* Each stage of the chain just run against the double-precision product of its weight (copied
 * back) and its x (the kernel's own bf16 input, copied back). */
static int chain_check(kt *t, cbuf *b, const char *label)
{
    int ok = 1;
    for (int s = 0; s < b->n; s++) {
        if (!b->N[s])
            continue;
        const int N = b->N[s], K = b->K[s];
        uint16_t *wh = xmalloc(sizeof(uint16_t) * (size_t)N * K), *xh = xmalloc(2 * (size_t)K),
                 *yh = xmalloc(2 * (size_t)N);
        kt_download(t, wh, b->w[s], (size_t)N * K * 2);
        kt_download(t, xh, b->x[s], (size_t)K * 2);
        kt_download(t, yh, b->y[s], (size_t)N * 2);
        float *w = kt_from_bf16(wh, (size_t)N * K), *x = kt_from_bf16(xh, (size_t)K),
              *y = kt_from_bf16(yh, (size_t)N), *want = xmalloc(sizeof(float) * (size_t)N);
        for (int n = 0; n < N; n++) {
            double d = 0;
            for (int k = 0; k < K; k++)
                d += (double)w[(size_t)n * K + k] * x[k];
            want[n] = (float)d;
        }
        char name[160];
        snprintf(name, sizeof name, "chain %s stage %d N=%d K=%d", label, s, N, K);
        ok &= kt_check(t, name, y, want, (size_t)N, 4e-3);
        free(wh), free(xh), free(yh), free(w), free(x), free(y), free(want);
    }
    return ok;
}

/* The chain as kiln runs a decode step: a graph of gemv.cuh launches at lower.c's block size
 * (PDL on when t->pdl), gate_up gated (SiLU, N/2 outputs, as the decode schedule's gemv), and an
 * empty kernel per empty stage. */
static double graph_ms(kt *t, const chain *c, cbuf *b, CUfunction nop)
{
    CUfunction f[4];
    unsigned th[4];
    for (int i = 0; i < 4; i++) {
        char name[96];
        const int gated = i == 2;
        th[i] = (unsigned)gemv_threads(c->st[i].N, c->st[i].K, gated, 0, 0);
        snprintf(name, sizeof name, "chain %s gemv %d", c->name, i);
        CUmodule m = gemv_module(t, name, NULL, "gemv", "kiln::bf16", c->st[i].N, c->st[i].K, 8, 0,
                                 gated, KILN_ACT_SILU, 0, (int)th[i], 0, 0);
        if (!m)
            return -1;
        f[i] = kt_func(t, m, "k_gemv");
    }
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = st.n_seqs = 1;
    int M = 1;
    CUdeviceptr nob = 0;
    kerr e;
    kerr_clear(&e);
    CUgraph g;
    KT_CU(t, cuStreamBeginCapture(t->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    int rc = 0;
    for (int s = 0, i = 0; s < b->n && rc == 0; s++) {
        if (!b->N[s]) {
            void *na[] = {&st};
            rc = kcuda_launch(&t->cu, nop, 1, 1, 1, 32, 0, t->stream, na, t->pdl, &e);
            continue;
        }
        /* the gated gate_up writes N/2 outputs: down's x is their first K */
        void *args[] = {&st, &b->x[s], &b->w[s], &nob, &b->y[s], &M};
        rc = kcuda_launch(&t->cu, f[i], 1, gemv_blocks(b->N[s], i == 2), 1, th[i], 0, t->stream,
                          args, t->pdl, &e);
        i = (i + 1) % 4;
    }
    KT_CU(t, cuStreamEndCapture(t->stream, &g));
    if (rc) {
        fprintf(stderr, "bench chain: %s\n", kerr_msg(&e));
        KT_CU(t, cuGraphDestroy(g));
        return -1;
    }
    const double ms = kt_graph_ms(t, g, REPLAYS);
    KT_CU(t, cuGraphDestroy(g));
    return ms;
}

int ktest_chain_bench(kt *t)
{
    static const chain chains[] = {
        {"8B", 32, 14336, {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}}},
        {"1B", 16, 8192, {{3072, 2048}, {2048, 2048}, {16384, 2048}, {2048, 8192}}},
        /* the bytes of the 8B layers in INT4 (a quarter of the rows), bf16 work per byte */
        {"8B/4", 32, 14336, {{1536, 4096}, {1024, 4096}, {7168, 4096}, {1024, 14336}}},
    };
    const int nrings = (int)(sizeof rings / sizeof rings[0]);
    const int sms = sm_count(t);
    if (!kt_sm90a(t)) {
        fprintf(stderr, "bench chain: the persistent kernel needs sm_90a (cp.async.bulk)\n");
        return -1;
    }
    CUmodule nm = kt_module(t, "chain nop",
                            "#include \"common.cuh\"\n"
                            "extern \"C\" __global__ void k_nop(const kiln_step st)\n"
                            "{\n    KILN_PDL_ENTER();\n    (void)st;\n}\n");
    CUfunction nop = nm ? kt_func(t, nm, "k_nop") : NULL;
    /* the empty kernel of the PDL-first chains: lets its dependent launch before it waits */
    CUmodule nm2 = kt_module(t, "chain nop2",
                             "#include \"common.cuh\"\n"
                             "extern \"C\" __global__ void k_nop2(const kiln_step st)\n"
                             "{\n    (void)st;\n"
                             "    asm volatile(\"griddepcontrol.launch_dependents;\""
                             " ::: \"memory\");\n"
                             "    asm volatile(\"griddepcontrol.wait;\" ::: \"memory\");\n}\n");
    CUfunction nop2 = nm2 ? kt_func(t, nm2, "k_nop2") : NULL;
    if (!nop || !nop2)
        return -1;
    char *path = util_path_join(t->root, "tests/gpu/stream_chain.cuh");
    kerr e;
    kerr_clear(&e);
    char *proto = util_read_file(path, NULL, &e);
    free(path);
    if (!proto) {
        fprintf(stderr, "bench chain: %s (run from the repository root or set KILN_ROOT)\n",
                kerr_msg(&e));
        return -1;
    }
    const double copy_bw = kt_copy_bw(t);
    printf("bench chain: batch-1 decode GEMVs of each layer (qkv, o, gate_up, down), bf16, as one "
           "persistent kernel (stream_chain.cuh: %d blocks, one an SM, a ring of D units of %d "
           "bytes a warp) against a CUDA graph of gemv.cuh launches (PDL %s). +4: four empty "
           "steps a layer (barriers / empty kernels). Ratio: weight bytes over the time, over "
           "the copy bandwidth %.0f GB/s.\n",
           sms, SEG * 2, t->pdl ? "on" : "off", copy_bw / 1e9);
    int rc = 0;
    for (size_t ci = 0; ci < sizeof chains / sizeof chains[0] && rc == 0; ci++) {
        const chain *c = &chains[ci];
        CUfunction f[sizeof rings / sizeof rings[0]];
        for (int r = 0; r < nrings; r++)
            if (!(f[r] = chain_func(t, proto, &rings[r], c->KMAX))) {
                free(proto);
                return -1;
            }
        /* correctness: one layer of random weights (and its empty steps), every ring */
        cbuf b;
        cbuf_make(t, &b, c, 1, 1, 0);
        for (int r = 0; r < nrings && rc == 0; r++) {
            for (int s = 0; s < b.n; s++)
                if (b.N[s])
                    KT_CU(t, cuMemsetD8(b.y[s], 0xff, (size_t)b.N[s] * 2));
            CUgraph g = chain_graph(t, f[r], &rings[r], c->KMAX, &b, sms, nop2);
            kt_graph_ms(t, g, 1);
            KT_CU(t, cuGraphDestroy(g));
            char label[64];
            snprintf(label, sizeof label, "%s warps=%d D=%d bar=%d", c->name, rings[r].warps,
                     rings[r].depth, rings[r].bar);
            if (!chain_check(t, &b, label))
                rc = -1;
        }
        cbuf_free(t, &b);
        if (rc)
            break;
        if (ci == 0)
            for (int r = 0; r < nrings; r++)
                if (!rings[r].pdl)
                    printf("  grid barrier alone, W=%d D=%d bar=%d: %.2f us\n", rings[r].warps,
                           rings[r].depth, rings[r].bar,
                           barrier_us(t, f[r], &rings[r], c->KMAX, sms));
        size_t lbytes = 0;
        for (int i = 0; i < 4; i++)
            lbytes += (size_t)c->st[i].N * c->st[i].K * 2;
        printf("%s: %d layers of %.1f MB (copy time %.1f us a layer)\n", c->name, c->layers,
               (double)lbytes / 1e6, (double)lbytes / copy_bw * 1e6);
        for (int nops = 0; nops <= 4 && rc == 0; nops += 4) {
            /* weights: 0.0115, -0.0115, ...: finite sums */
            cbuf_make(t, &b, c, c->layers, nops, 0xbc3c3c3cu);
            const double gms = graph_ms(t, c, &b, nop);
            if (gms < 0) {
                rc = -1;
                break;
            }
#define ROW(label, ms)                                                                             \
    printf("  %-28s %7.1f us a layer  %.3f of copy\n", label, (ms) * 1e3 / c->layers,            \
           (double)lbytes * c->layers / ((ms) * 1e-3) / copy_bw)
            char label[64];
            snprintf(label, sizeof label, "graph of launches%s", nops ? " +4" : "");
            ROW(label, gms);
            for (int r = 0; r < nrings; r++) {
                CUgraph g = chain_graph(t, f[r], &rings[r], c->KMAX, &b, sms, nop2);
                const double ms = kt_graph_ms(t, g, REPLAYS);
                KT_CU(t, cuGraphDestroy(g));
                if (rings[r].pdl)
                    snprintf(label, sizeof label, "PDL-first launches W=%d D=%d%s", rings[r].warps,
                             rings[r].depth, nops ? " +4" : "");
                else
                    snprintf(label, sizeof label, "persistent W=%d D=%d bar=%d%s",
                             rings[r].warps, rings[r].depth, rings[r].bar, nops ? " +4" : "");
                ROW(label, ms);
            }
#undef ROW
            cbuf_free(t, &b);
        }
    }
    free(proto);
    return rc || t->failures ? -1 : 0;
}
