/* ktest — see ktest.h. `kiln-ktest [FILTER]` runs every kernel test case (or those whose name
 * contains FILTER) on GPU 0 and prints a summary table last; exit status 1 on any failure.
 *
 * Without a GPU (or with --compile-only) it still compiles every case's translation unit with
 * NVRTC for sm_80 and sm_90a, so CI proves the templates instantiate; the device calls then do
 * nothing and no comparison is made. `kiln-ktest --bench gemv` runs no cases: it prints the GEMV's
 * weight bandwidth on the Llama-3 shapes, old kernel against new (tests/gpu/ktest_gemv.c);
 * `kiln-ktest --bench gemm` prints kiln's GEMM against cuBLASLt (tests/gpu/ktest_gemm.c);
 * `kiln-ktest --bench skinny` the skinny GEMM (9 to 64 rows) against cuBLASLt, `--bench
 * skinny_int4` its INT4 form (tests/gpu/ktest_skinny.c); `--bench dequant` the prefill's
 * dequantising kernels (tests/gpu/ktest_gemv.c). `kiln-ktest --help` says so. */
#include "ktest.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knvrtc.h"
#include "lower.h"

static void die(kt *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ktest: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    (void)t;
    exit(2);
}

#define CK(call)                                                                                \
    do {                                                                                        \
        kerr e_;                                                                                \
        kerr_clear(&e_);                                                                        \
        if (kcuda_check_(t, (t->cu.call), #call, __LINE__, &e_))                                \
            die(t, "%s", kerr_msg(&e_));                                                        \
    } while (0)

static int kcuda_check_(kt *t, CUresult rc, const char *call, int line, kerr *e)
{
    if (rc == CUDA_SUCCESS)
        return 0;
    return kcuda_fail(&t->cu, rc, call, "ktest.c", line, e);
}

/* `src` compiled for each of `archs` in compile-only mode, else for this GPU and loaded. */
static CUmodule module_for(kt *t, const char *name, const char *src, const char *const *archs)
{
    char *tmpl = util_path_join(t->root, "templates");
    char *kern = util_path_join(t->root, "kernels");
    const char *inc[] = {tmpl, kern, NULL};
    const char *one[] = {t->arch, NULL};
    if (!t->compile_only)
        archs = one;
    CUmodule m = NULL;
    for (int i = 0; archs[i]; i++) {
        nvrtc_result r;
        kerr e;
        kerr_clear(&e);
        if (nvrtc_compile(src, name, archs[i], inc, &r, &e)) {
            kt_result(t, name, 0, "NVRTC compile failed (log above)");
            fprintf(stderr, "%s\n--- source ---\n%s\n", kerr_msg(&e), src);
            continue;
        }
        if (t->compile_only)
            t->compiled++;
        else
            CK(cuModuleLoadData(&m, r.code));
        nvrtc_result_free(&r);
    }
    free(tmpl);
    free(kern);
    return m;
}

CUmodule kt_module(kt *t, const char *name, const char *src)
{
    static const char *const both[] = {"sm_80", "sm_90a", NULL};
    return module_for(t, name, src, both);
}

CUmodule kt_module_sm90a(kt *t, const char *name, const char *src)
{
    static const char *const hopper[] = {"sm_90a", NULL};
    if (!kt_sm90a(t)) /* a test bug: the case must check kt_sm90a first */
        die(t, "%s: an sm_90a-only kernel on %s", name, t->arch);
    return module_for(t, name, src, hopper);
}

int kt_sm90a(const kt *t) { return t->compile_only || strcmp(t->arch, "sm_90a") == 0; }

int kt_sm_at_least(const kt *t, int sm) { return t->compile_only || atoi(t->arch + 3) >= sm; }

int kt_stream_depth(int K, int wbits)
{
    kc c;
    memset(&c, 0, sizeof c);
    c.sm90 = 1;
    c.smem_block = lower_smem_optin(90);
    return lower_gemv_stream_depth(&c, K, 2, wbits);
}

CUfunction kt_func(kt *t, CUmodule m, const char *name)
{
    CUfunction f = NULL;
    if (t->compile_only || !m)
        return NULL;
    CK(cuModuleGetFunction(&f, m, name));
    return f;
}

CUdeviceptr kt_alloc(kt *t, size_t bytes)
{
    if (t->compile_only)
        return 0;
    CUdeviceptr d;
    CK(cuMemAlloc(&d, bytes ? bytes : 16));
    CK(cuMemsetD8(d, 0xFF, bytes ? bytes : 16));
    return d;
}

CUdeviceptr kt_upload(kt *t, const void *host, size_t bytes)
{
    if (t->compile_only)
        return 0;
    CUdeviceptr d = kt_alloc(t, bytes);
    if (bytes)
        CK(cuMemcpyHtoD(d, host, bytes));
    return d;
}

void kt_download(kt *t, void *host, CUdeviceptr d, size_t bytes)
{
    if (t->compile_only) {
        memset(host, 0, bytes);
        return;
    }
    CK(cuStreamSynchronize(t->stream));
    if (bytes)
        CK(cuMemcpyDtoH(host, d, bytes));
}

void kt_free(kt *t, CUdeviceptr d)
{
    if (!t->compile_only)
        CK(cuMemFree(d));
}

void kt_launch(kt *t, CUfunction f, const char *name, unsigned gx, unsigned gy, unsigned gz,
               unsigned bx, size_t smem, void **args)
{
    if (t->compile_only)
        return;
    if (!f)
        die(t, "kernel %s: no function (its module failed to compile)", name);
    if (smem > 48 * 1024)
        CK(cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)smem));
    kerr e;
    kerr_clear(&e);
    if (kcuda_launch(&t->cu, f, gx, gy, gz, bx, (unsigned)smem, t->stream, args, t->pdl, &e))
        die(t, "kernel %s: %s", name, kerr_msg(&e));
    CUresult rc = t->cu.cuStreamSynchronize(t->stream);
    if (rc != CUDA_SUCCESS) {
        char b[200];
        die(t, "kernel %s (grid %u,%u,%u block %u smem %zu) failed: %s", name, gx, gy, gz, bx,
            smem, kcuda_errstr(&t->cu, rc, b, sizeof b));
    }
}

void kt_cu(kt *t, CUresult rc, const char *call, const char *file, int line)
{
    if (rc == CUDA_SUCCESS)
        return;
    kerr e;
    kerr_clear(&e);
    kcuda_fail(&t->cu, rc, call, file, line, &e);
    die(t, "%s", kerr_msg(&e));
}

double kt_rel_l2_bf16(kt *t, CUdeviceptr got, CUdeviceptr want, size_t n)
{
    uint16_t *a = xmalloc(2 * n), *b = xmalloc(2 * n);
    CK(cuStreamSynchronize(t->stream));
    CK(cuMemcpyDtoH(a, got, 2 * n));
    CK(cuMemcpyDtoH(b, want, 2 * n));
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double u = util_bf16_to_f32(a[i]), v = util_bf16_to_f32(b[i]);
        num += (u - v) * (u - v);
        den += v * v;
    }
    free(a);
    free(b);
    return sqrt(num / (den > 0 ? den : 1));
}

kgemm *kt_cublaslt(kt *t, const char *why)
{
    kerr e;
    kerr_clear(&e);
    kgemm *g = kgemm_new(&t->cu, why, &e);
    if (!g)
        fprintf(stderr, "%s: %s\n", why, kerr_msg(&e));
    return g;
}

/* Milliseconds of what enqueue(t, ctx) puts on t->stream: the best of `reps` after a warm-up. */
static double best_ms(kt *t, int reps, void (*enqueue)(kt *t, void *ctx), void *ctx)
{
    CUevent ev[2];
    CK(cuEventCreate(&ev[0], 0));
    CK(cuEventCreate(&ev[1], 0));
    float best = 0;
    for (int r = 0; r <= reps; r++) { /* r = 0: the warm-up */
        float ms = 0;
        CK(cuEventRecord(ev[0], t->stream));
        enqueue(t, ctx);
        CK(cuEventRecord(ev[1], t->stream));
        CK(cuEventSynchronize(ev[1]));
        CK(cuEventElapsedTime(&ms, ev[0], ev[1]));
        if (r > 0 && (best == 0 || ms < best))
            best = ms;
    }
    CK(cuEventDestroy(ev[0]));
    CK(cuEventDestroy(ev[1]));
    return best;
}

typedef struct copy_job {
    CUdeviceptr dst, src;
    size_t n;
} copy_job;

static void enqueue_copy(kt *t, void *ctx)
{
    const copy_job *c = ctx;
    CK(cuMemcpyDtoDAsync(c->dst, c->src, c->n, t->stream));
}

double kt_copy_bw(kt *t)
{
    copy_job c = {.n = (size_t)1 << 30};
    CK(cuMemAlloc(&c.src, c.n));
    CK(cuMemAlloc(&c.dst, c.n));
    CK(cuMemsetD8(c.src, 1, c.n));
    const double ms = best_ms(t, 5, enqueue_copy, &c);
    CK(cuMemFree(c.src));
    CK(cuMemFree(c.dst));
    return ms > 0 ? 2.0 * (double)c.n / (ms * 1e-3) : 0;
}

static void enqueue_graph(kt *t, void *ctx) { CK(cuGraphLaunch(*(CUgraphExec *)ctx, t->stream)); }

double kt_graph_ms(kt *t, CUgraph g, int replays)
{
    CUgraphExec ge;
    CK(cuGraphInstantiateWithFlags(&ge, g, 0));
    const double ms = best_ms(t, replays, enqueue_graph, &ge);
    CK(cuGraphExecDestroy(ge));
    return ms;
}

float kt_randf(kt *t)
{
    /* xorshift64*: reproducible from the seed printed at start */
    t->rng ^= t->rng >> 12;
    t->rng ^= t->rng << 25;
    t->rng ^= t->rng >> 27;
    uint64_t r = t->rng * 2685821657736338717ull;
    return (float)((double)(r >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

void kt_fill(kt *t, float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = kt_randf(t) * scale;
}

uint16_t *kt_to_bf16(const float *x, size_t n)
{
    uint16_t *o = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        o[i] = util_f32_to_bf16(x[i]);
    return o;
}

float *kt_from_bf16(const uint16_t *x, size_t n)
{
    float *o = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        o[i] = util_bf16_to_f32(x[i]);
    return o;
}

void kt_round_bf16(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = util_bf16_to_f32(util_f32_to_bf16(x[i]));
}

uint16_t *kt_to_dt(float *x, size_t n, int f16)
{
    uint16_t *o = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        o[i] = f16 ? util_f32_to_f16(x[i]) : util_f32_to_bf16(x[i]);
        x[i] = f16 ? util_f16_to_f32(o[i]) : util_bf16_to_f32(o[i]);
    }
    return o;
}

static void add_row(kt *t, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    t->summary = xrealloc(t->summary, t->summary_len + (size_t)n + 1);
    memcpy(t->summary + t->summary_len, line, (size_t)n + 1);
    t->summary_len += (size_t)n;
}

void kt_result(kt *t, const char *name, int ok, const char *detail)
{
    if (t->compile_only && ok)
        return;
    t->cases++;
    if (!ok)
        t->failures++;
    add_row(t, "%-48s %-4s %s\n", name, ok ? "ok" : "FAIL", detail);
    printf("%s %s %s\n", ok ? "ok  " : "FAIL", name, detail);
    fflush(stdout);
}

int kt_check(kt *t, const char *name, const float *got, const float *want, size_t n, double tol)
{
    if (t->compile_only)
        return 1;
    double num = 0, den = 0;
    size_t bad = 0, first = (size_t)-1, nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) {
            nan++;
            if (first == (size_t)-1)
                first = i;
            continue;
        }
        double d = (double)got[i] - (double)want[i];
        num += d * d;
        den += (double)want[i] * want[i];
        if (fabs(d) > 1e-2 + 5e-2 * fabs(want[i])) {
            if (first == (size_t)-1)
                first = i;
            bad++;
        }
    }
    double rel = sqrt(num / (den > 0 ? den : 1));
    int ok = nan == 0 && rel <= tol;
    char detail[256];
    if (first != (size_t)-1)
        snprintf(detail, sizeof detail, "rel_l2 %.2e (tol %.0e), %zu non-finite, %zu far; first at [%zu]: got %g want %g",
                 rel, tol, nan, bad, first, got[first], want[first]);
    else
        snprintf(detail, sizeof detail, "rel_l2 %.2e (tol %.0e), n=%zu", rel, tol, n);
    kt_result(t, name, ok, detail);
    return ok;
}

double kt_act(int which, double x)
{
    switch (which) {
    case KILN_ACT_SILU: return x / (1.0 + exp(-x));
    case KILN_ACT_GELU: return 0.5 * x * (1.0 + erf(x * M_SQRT1_2));
    case KILN_ACT_GELU_TANH:
        return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    default: return x > 0 ? x : 0;
    }
}

const char *kt_act_name(int which)
{
    static const char *n[] = {"silu", "gelu", "gelu_tanh", "relu"};
    return n[which & 3];
}

int kt_want(kt *t, const char *name) { return !t->filter || strstr(name, t->filter); }

static void run_all(kt *t)
{
    ktest_elementwise(t);
    ktest_gemv(t);
    ktest_skinny(t);
    ktest_gemm(t);
    ktest_attention(t);
    ktest_mla(t);
    ktest_moe(t);
    ktest_sample(t);
    ktest_collective(t);
    ktest_pdl(t);
}

int main(int argc, char **argv)
{
    kt ts, *t = &ts;
    memset(t, 0, sizeof ts);
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: kiln-ktest [--compile-only] [FILTER]\n"
               "       kiln-ktest --bench gemv|gemm|skinny|skinny_int4|dequant\n\n"
               "Runs kiln's kernel test cases (templates/*.cuh, each compiled with NVRTC as\n"
               "kilnc compiles it) on GPU 0 against CPU references, those whose name contains\n"
               "FILTER (or $KTEST_FILTER) only, and prints a table; exit status 1 on a failure.\n"
               "Without a GPU, or with --compile-only, it compiles every case for sm_80 and\n"
               "sm_90a and runs nothing. --bench runs no cases: it measures one kernel family on\n"
               "the Llama-3 shapes against its ceiling (copy bandwidth, cuBLASLt). KILN_ROOT\n"
               "names the tree whose templates/ and kernels/ are compiled; KTEST_SEED repeats a\n"
               "run's inputs; KILN_PDL=0 turns programmatic dependent launch off.\n");
        return 0;
    }
    int ai = 1;
    if (argc > 1 && strcmp(argv[1], "--compile-only") == 0) {
        t->compile_only = 1;
        ai++;
    }
    /* --bench gemv|gemm|skinny|skinny_int4|dequant: tests/gpu/ktest_<family>.c's benchmark
     * instead of the cases */
    static const struct {
        const char *family;
        int (*run)(kt *);
    } benches[] = {{"gemv", ktest_gemv_bench}, {"gemm", ktest_gemm_bench},
                   {"skinny", ktest_skinny_bench}, {"skinny_int4", ktest_skinny_int4_bench},
                   {"dequant", ktest_dequant_bench}};
    const char *bench = NULL;
    int (*bench_run)(kt *) = NULL;
    if (argc > ai && strcmp(argv[ai], "--bench") == 0) {
        for (size_t i = 0; argc > ai + 1 && i < sizeof benches / sizeof benches[0]; i++)
            if (strcmp(argv[ai + 1], benches[i].family) == 0)
                bench_run = benches[i].run;
        if (!bench_run)
            die(t, "--bench: expected the family to benchmark, gemv, gemm, skinny, skinny_int4 "
                   "or dequant; got %s",
                argc > ai + 1 ? argv[ai + 1] : "nothing");
        bench = argv[ai + 1];
        ai += 2;
    }
    t->filter = argc > ai ? argv[ai] : getenv("KTEST_FILTER");
    const char *root = getenv("KILN_ROOT");
    t->root = root && *root ? root : ".";
    t->rng = 88172645463325252ull;
    kerr e;
    kerr_clear(&e);
    if (bench && t->compile_only)
        die(t, "--bench %s measures kernels on a GPU: it has no compile-only mode", bench);
    if (!t->compile_only && kcuda_load(&t->cu, &e)) {
        if (bench)
            die(t, "--bench %s needs a GPU: %s", bench, kerr_msg(&e));
        printf("ktest: no GPU (%s)\nktest: compiling every kernel case for sm_80 and sm_90a "
               "instead; NOTHING IS RUN OR COMPARED\n",
               kerr_msg(&e));
        t->compile_only = 1;
    }
    if (t->compile_only) {
        strcpy(t->arch, "sm_90a");
        run_all(t);
        printf("ktest: compile-only: %d translation units compiled, %d failed\n", t->compiled,
               t->failures);
        return t->failures ? 1 : 0;
    }
    CUdevice dev;
    int maj = 0, min = 0;
    char name[256];
    CK(cuDeviceGet(&dev, 0));
    CK(cuDeviceGetAttribute(&maj, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
    CK(cuDeviceGetAttribute(&min, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev));
    CK(cuDeviceGetAttribute(&t->sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    CK(cuDeviceGetName(name, sizeof name, dev));
    CK(cuDevicePrimaryCtxRetain(&t->ctx, dev));
    CK(cuCtxSetCurrent(t->ctx));
    CK(cuStreamCreate(&t->stream, 0));
    snprintf(t->arch, sizeof t->arch, "sm_%d%d%s", maj, min, maj == 9 ? "a" : "");
    if (kcuda_pdl_wanted(maj, &t->pdl, &e)) /* the cases are compiled for this GPU's own SM */
        die(t, "%s", kerr_msg(&e));
    const char *seed = getenv("KTEST_SEED");
    unsigned long long s0 = seed ? strtoull(seed, NULL, 10) : (unsigned long long)(util_now() * 1e6);
    t->rng = s0 ? s0 : 88172645463325252ull;
    printf("ktest: %s (%s), NVRTC %s, seed %llu (KTEST_SEED to repeat), programmatic dependent "
           "launch %s (KILN_PDL)\n",
           name, t->arch, nvrtc_version_str(), s0, t->pdl ? "on" : "off");
    if (bench)
        return bench_run(t) ? 1 : 0;
    run_all(t);
    printf("\n%-48s %-4s %s\n%s", "KERNEL CASE", "", "RESULT", t->summary ? t->summary : "");
    printf("ktest: %d cases, %d failed (%s, seed %llu)\n", t->cases, t->failures, name, s0);
    return t->failures ? 1 : 0;
}
