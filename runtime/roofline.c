/* roofline — see roofline.h. The measurements time each operation alone between two events on
 * one stream, after warm-up runs that bring the clocks up and let cuBLASLt pick its algorithm,
 * and keep the fastest: the figure is what the hardware can do, not what it does on average. */
#include "roofline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kiln_step.h"
#include "gemm.h"
#include "kcuda.h"

#define WARMUPS 3

/* What the measurements hold: everything but the driver and the context is released when they
 * end (free_work), those two by kroof_gpu_free. */
typedef struct kroof_gpu {
    kcuda cu;
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;
    CUevent ev[2];
    CUdeviceptr buf[3];
    kgemm *gemm;
} kroof_gpu;
typedef kroof_gpu meas;

static void free_work(meas *m)
{
    if (!m->ctx)
        return;
    m->cu.cuCtxSetCurrent(m->ctx);
    kgemm_free(m->gemm);
    m->gemm = NULL;
    for (int i = 0; i < 3; i++)
        if (m->buf[i])
            m->cu.cuMemFree(m->buf[i]);
    for (int i = 0; i < 2; i++)
        if (m->ev[i])
            m->cu.cuEventDestroy(m->ev[i]);
    if (m->stream)
        m->cu.cuStreamDestroy(m->stream);
    memset(m->buf, 0, sizeof m->buf);
    memset(m->ev, 0, sizeof m->ev);
    m->stream = NULL;
}

void kroof_gpu_free(kroof_gpu *m)
{
    if (!m)
        return;
    free_work(m);
    if (m->ctx)
        m->cu.cuDevicePrimaryCtxRelease(m->dev);
    if (m->cu.lib)
        kcuda_unload(&m->cu);
    free(m);
}

/* Milliseconds of the work between the two events. */
static int elapsed(meas *m, float *ms, kerr *err)
{
    KCU(&m->cu, cuEventSynchronize(m->ev[1]), err);
    KCU(&m->cu, cuEventElapsedTime(ms, m->ev[0], m->ev[1]), err);
    return 0;
}

static int copy_bandwidth(meas *m, kroof_hw *hw, kerr *err)
{
    const size_t n = KROOF_COPY_BYTES;
    KCU(&m->cu, cuMemAlloc(&m->buf[0], n), err);
    KCU(&m->cu, cuMemAlloc(&m->buf[1], n), err);
    KCU(&m->cu, cuMemsetD8(m->buf[0], 1, n), err);
    float best = 0;
    for (int i = 0; i < WARMUPS + KROOF_REPS; i++) {
        float ms;
        KCU(&m->cu, cuEventRecord(m->ev[0], m->stream), err);
        KCU(&m->cu, cuMemcpyDtoDAsync(m->buf[1], m->buf[0], n, m->stream), err);
        KCU(&m->cu, cuEventRecord(m->ev[1], m->stream), err);
        if (elapsed(m, &ms, err))
            return -1;
        if (i >= WARMUPS && ms > 0 && (best == 0 || ms < best))
            best = ms;
    }
    if (best <= 0)
        return kerr_add(err, "the copy bandwidth measurement took no time (the GPU's events "
                             "report %.3f ms for a 1 GiB copy)",
                        best);
    hw->copy_bw = 2.0 * (double)n / (best * 1e-3);
    KCU(&m->cu, cuMemFree(m->buf[0]), err);
    m->buf[0] = 0;
    KCU(&m->cu, cuMemFree(m->buf[1]), err);
    m->buf[1] = 0;
    return 0;
}

static int gemm_peak(meas *m, kroof_hw *hw, kerr *err)
{
    static const char why[] = "the bf16 GEMM peak (kiln bench's prefill roofline)";
    /* a standalone executable's target may have only the driver: no peak then, not a failure */
    kerr absent;
    kerr_clear(&absent);
    if (kgemm_loadable(why, &absent)) {
        snprintf(hw->gemm_missing, sizeof hw->gemm_missing, "%s", kerr_msg(&absent));
        return 0;
    }
    const int64_t N = KROOF_GEMM_N;
    const size_t bytes = (size_t)N * (size_t)N * 2;
    /* random values in [-1, 1): a zero matrix draws less power and runs faster than real data */
    uint16_t *h = malloc(bytes);
    if (!h)
        return kerr_add(err, "out of host memory for the GEMM peak's %zu MiB of inputs", bytes >> 20);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < (size_t)N * (size_t)N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = util_f32_to_bf16((float)(s >> 40) / (float)(1u << 23) - 1.0f);
    }
    CUresult rc = CUDA_SUCCESS;
    for (int i = 0; i < 3 && rc == CUDA_SUCCESS; i++)
        rc = m->cu.cuMemAlloc(&m->buf[i], bytes);
    if (rc == CUDA_SUCCESS)
        rc = m->cu.cuMemcpyHtoD(m->buf[0], h, bytes);
    if (rc == CUDA_SUCCESS)
        rc = m->cu.cuMemcpyHtoD(m->buf[1], h, bytes);
    free(h);
    if (rc != CUDA_SUCCESS)
        return kcuda_fail(&m->cu, rc, "the GEMM peak's buffers", __FILE__, __LINE__, err);
    if (!(m->gemm = kgemm_new(&m->cu, why, err)))
        return -1;
    float best = 0;
    for (int i = 0; i < WARMUPS + KROOF_REPS; i++) {
        float ms;
        KCU(&m->cu, cuEventRecord(m->ev[0], m->stream), err);
        if (kgemm_run(m->gemm, m->stream, 0, 0, 0, N, N, N, m->buf[0], N, m->buf[1], 0,
                      m->buf[2], N, err))
            return -1;
        KCU(&m->cu, cuEventRecord(m->ev[1], m->stream), err);
        if (elapsed(m, &ms, err))
            return -1;
        if (i >= WARMUPS && ms > 0 && (best == 0 || ms < best))
            best = ms;
    }
    if (best <= 0)
        return kerr_add(err, "the GEMM peak measurement took no time (the GPU's events report "
                             "%.3f ms for an %lld^3 GEMM)",
                        best, (long long)N);
    hw->gemm_flops = 2.0 * (double)N * (double)N * (double)N / (best * 1e-3);
    const double want = KROOF_SUSTAIN_MS / best;
    const int runs = want < 20 ? 20 : want > 1000 ? 1000 : (int)want;
    for (int i = 0; i < runs; i++) {
        if (i == runs / 2)
            KCU(&m->cu, cuEventRecord(m->ev[0], m->stream), err);
        if (kgemm_run(m->gemm, m->stream, 0, 0, 0, N, N, N, m->buf[0], N, m->buf[1], 0,
                      m->buf[2], N, err))
            return -1;
    }
    KCU(&m->cu, cuEventRecord(m->ev[1], m->stream), err);
    float run_ms;
    if (elapsed(m, &run_ms, err))
        return -1;
    if (run_ms > 0) {
        hw->gemm_sustained = 2.0 * (double)N * (double)N * (double)N * (runs - runs / 2) /
                             (run_ms * 1e-3);
        hw->gemm_sustained_runs = runs;
    }
    if (hw->sm_major * 10 + hw->sm_minor < 89)
        return 0;
    /* FP8: the same shape in e4m3 (the GEMM of kiln's W8A8 steps, unscaled: lower.c's
     * fp8_gemm_steps), on random bytes that are never NaN (bit 3 clear: the exponent's low bit).
     * Where cuBLASLt cannot run it, the FP8 peak is not measured (a message), not a failure. */
    uint8_t *q = malloc((size_t)N * (size_t)N);
    if (!q)
        return kerr_add(err, "out of host memory for the FP8 GEMM peak's inputs");
    for (size_t i = 0; i < (size_t)N * (size_t)N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        q[i] = (uint8_t)(s >> 56) & 0xf7;
    }
    rc = m->cu.cuMemcpyHtoD(m->buf[0], q, (size_t)N * (size_t)N);
    if (rc == CUDA_SUCCESS)
        rc = m->cu.cuMemcpyHtoD(m->buf[1], q, (size_t)N * (size_t)N);
    free(q);
    if (rc != CUDA_SUCCESS)
        return kcuda_fail(&m->cu, rc, "the FP8 GEMM peak's buffers", __FILE__, __LINE__, err);
    best = 0;
    for (int i = 0; i < WARMUPS + KROOF_REPS; i++) {
        float ms;
        kerr e;
        kerr_clear(&e);
        KCU(&m->cu, cuEventRecord(m->ev[0], m->stream), err);
        if (kgemm_run(m->gemm, m->stream, 0, 0, 1, N, N, N, m->buf[0], N, m->buf[1], 0,
                      m->buf[2], N, &e)) {
            fprintf(stderr, "kiln bench: the FP8 GEMM peak is not measured: %s\n", kerr_msg(&e));
            return 0;
        }
        KCU(&m->cu, cuEventRecord(m->ev[1], m->stream), err);
        if (elapsed(m, &ms, err))
            return -1;
        if (i >= WARMUPS && ms > 0 && (best == 0 || ms < best))
            best = ms;
    }
    if (best > 0)
        hw->gemm_fp8_flops = 2.0 * (double)N * (double)N * (double)N / (best * 1e-3);
    return 0;
}

static int measure(meas *m, kroof_hw *hw, kerr *err)
{
    if (kcuda_load(&m->cu, err))
        return -1;
    size_t mem = 0;
    KCU(&m->cu, cuDeviceGet(&m->dev, 0), err);
    KCU(&m->cu, cuDeviceGetName(hw->gpu, sizeof hw->gpu, m->dev), err);
    KCU(&m->cu, cuDeviceGetAttribute(&hw->sm_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                     m->dev), err);
    KCU(&m->cu, cuDeviceGetAttribute(&hw->sm_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                     m->dev), err);
    KCU(&m->cu, cuDeviceGetAttribute(&hw->sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, m->dev),
        err);
    KCU(&m->cu, cuDeviceTotalMem(&mem, m->dev), err);
    hw->memory = (double)mem;
    hw->driver_version = m->cu.driver_version;
    KCU(&m->cu, cuDevicePrimaryCtxRetain(&m->ctx, m->dev), err);
    KCU(&m->cu, cuCtxSetCurrent(m->ctx), err);
    KCU(&m->cu, cuStreamCreate(&m->stream, CU_STREAM_NON_BLOCKING), err);
    KCU(&m->cu, cuEventCreate(&m->ev[0], CU_EVENT_DEFAULT), err);
    KCU(&m->cu, cuEventCreate(&m->ev[1], CU_EVENT_DEFAULT), err);
    if (copy_bandwidth(m, hw, err) || gemm_peak(m, hw, err))
        return -1;
    return 0;
}

kroof_gpu *kroof_measure(kroof_hw *hw, kerr *err)
{
    memset(hw, 0, sizeof *hw);
    meas *m = xcalloc(1, sizeof *m);
    if (measure(m, hw, err)) {
        kroof_gpu_free(m);
        return NULL;
    }
    free_work(m);
    return m;
}

/* ---- what a step moves and computes, from the manifest ---- */

/* The kernel's family: "embed" for "k0_embed" (lower.c names kernels k<index>_<family>). */
static const char *family(const char *kernel)
{
    const char *u = strchr(kernel, '_');
    return u ? u + 1 : kernel;
}

/* An embedding gather: "embed", or "embed_part" (a rank's vocabulary rows under --tp). */
static int is_gather(const char *kernel)
{
    const char *f = family(kernel);
    return strcmp(f, "embed") == 0 || strcmp(f, "embed_part") == 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The weight of a prefill-sized linear and its input width k: a cuBLASLt step, or kiln's own
 * GEMM kernel (family "gemm", lower.c's gemm_step: gemm.cuh's first weight argument is the
 * matrix, the second the bias; gemm90.cuh reads it through a tensor map of the step's w). -1
 * for any other step. */
static int64_t gemm_weight(const ka_manifest *m, const ka_step *s, int64_t *k)
{
    if (s->kind == KA_GEMM) {
        *k = s->k;
        return s->w.kind == KA_ARG_WEIGHT ? s->w.i : -1;
    }
    if (s->kind != KA_KERNEL || strcmp(family(m->kernels[s->kernel].name), "gemm"))
        return -1;
    if (ka_step_has_tmap(s)) { /* w: a weight, or dequantised into scratch */
        *k = s->k;
        return s->w.kind == KA_ARG_WEIGHT ? s->w.i : -1;
    }
    for (int a = 0; a < s->nargs; a++)
        if (s->args[a].kind == KA_ARG_WEIGHT) {
            const ka_weight *w = &m->weights[s->args[a].i];
            *k = w->shape[w->ndim - 1];
            return s->args[a].i;
        }
    return -1;
}

static double elements(const ka_weight *w)
{
    double e = 1;
    for (int d = 0; d < w->ndim; d++)
        e *= (double)w->shape[d];
    return e;
}

void kroof_model_of(const ka_manifest *m, kroof_model *r)
{
    memset(r, 0, sizeof *r);
    r->elsize = 2; /* bf16 and f16, the two dtypes ka_read accepts */
    /* per weight: 1 gathered by an embedding kernel, 2 read in full, 4 the LM head */
    unsigned char *use = xcalloc((size_t)m->nweights + 1, 1);
    for (int i = 0; i < m->ndecode; i++) {
        const ka_step *s = &m->decode[i];
        if (s->kind == KA_GEMM) {
            if (s->w.kind == KA_ARG_WEIGHT)
                use[s->w.i] |= 2;
            if (s->bias.kind == KA_ARG_WEIGHT)
                use[s->bias.i] |= 2;
            continue;
        }
        if (s->kind != KA_KERNEL) /* a collective reads activations only */
            continue;
        int gather = is_gather(m->kernels[s->kernel].name);
        for (int a = 0; a < s->nargs; a++)
            if (s->args[a].kind == KA_ARG_WEIGHT)
                use[s->args[a].i] |= gather ? 1 : 2;
        if (ka_step_has_tmap(s) && s->w.kind == KA_ARG_WEIGHT) /* gemm90's w */
            use[s->w.i] |= 2;
    }
    int n_o = 0;
    for (int i = 0; i < m->nprefill; i++) {
        const ka_step *s = &m->prefill[i];
        int64_t k = 0, w = gemm_weight(m, s, &k);
        if (w < 0)
            continue;
        r->fp8_gemm |= m->weights[w].type == KA_W_E4M3;
        if (s->logits == KA_LOGITS_LAST)
            use[w] |= 4;
        if (ends_with(s->label, "attn.o") || ends_with(s->label, "attn.o.part")) {
            r->q_width += k;
            n_o++;
        }
    }
    for (int i = 0; i < m->nweights; i++) {
        const ka_weight *w = &m->weights[i];
        if (use[i] & 2) {
            r->weight_bytes += w->nbytes;
            if (use[i] & 4)
                r->head_params += elements(w);
            else if (w->ndim >= 2 && w->type != KA_W_F32 && w->type != KA_W_INT4SZ)
                r->matrix_params += elements(w) * (w->type == KA_W_INT4 ? 2 : 1); /* [N, K/2] */
        } else if (use[i] & 1) {
            r->gather_bytes += w->nbytes;
        }
    }
    free(use);
    for (int l = 0; l < m->n_layers; l++) /* a block's bytes over its tokens (e4m3 + scales too) */
        r->kv_bytes_per_token +=
            (ka_kv_block_bytes(m, l, 0) + ka_kv_block_bytes(m, l, 1)) / KILN_BLOCK;
    if (n_o == 0 && m->n_layers > 0) {
        r->q_width = (int64_t)m->hidden * m->n_layers;
        r->q_width_assumed = 1;
    }
}

double kroof_decode_bytes(const kroof_model *r, double ctx_sum)
{
    return (double)r->weight_bytes + (double)r->kv_bytes_per_token * ctx_sum;
}

double kroof_prefill_flops(const kroof_model *r, int64_t tokens)
{
    double t = (double)tokens, pairs = t * (t + 1) / 2; /* causal: query i sees keys 0..i */
    return 2 * t * r->matrix_params + 2 * r->head_params + 4 * (double)r->q_width * pairs;
}
