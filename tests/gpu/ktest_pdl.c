/* ktest_pdl — programmatic dependent launch (see ktest.h, kernels/common.cuh KILN_PDL_ENTER and
 * runtime/kcuda.c kcuda_launch): a chain of dependent kernels launched as the engine launches
 * them, each reading what the one before it wrote, compared with the CPU bit for bit.
 *
 * The chain ping-pongs between two buffers of [T, W] bf16: y = scale(x_k, s_i), then
 * x_(k+1) = binary add(y, x_k), CHAIN times; every kernel reads its predecessor's output (and
 * the add also the output of the kernel two launches back, which the wait covers only through
 * the transitivity common.cuh describes). It runs three ways: launched one by one on the stream,
 * captured into a CUDA graph (programmatic edges) and replayed twice from fresh inputs. With PDL
 * a kernel starts while its predecessor still runs, so a template that read before its
 * KILN_PDL_ENTER would read stale or poisoned values: the comparison is exact (TOL 0: float
 * products and sums rounded once to bf16, as the CPU does).
 *
 * A control shows the check can see a missing wait: the same chain with a scale kernel written
 * here WITHOUT the wait. Its mismatches are reported, not failed (whether the race shows depends
 * on the scheduling), and are expected to be many on an sm_90 GPU with PDL on; a control with no
 * mismatch means this test could not have caught a missing wait on this run.
 *
 * Below sm_90, or with KILN_PDL=0, the kernels launch without PDL and the chain must still match.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktest.h"
#include "../../kernels/kiln_step.h"

#define PDL_T 64
#define PDL_W 16384 /* T*W = 1M elements: 512 blocks of 256 threads, one wave on an H200 */
#define PDL_THREADS 256
#define CHAIN 48

static const char *pdl_src =
    "#include \"elementwise.cuh\"\n"
    "#define W 16384\n"
    "extern \"C\" __global__ void __launch_bounds__(256) k_scale(const kiln_step st, "
    "const kiln::bf16 *x, kiln::bf16 *out, float s)\n"
    "{ kiln::scale<kiln::bf16, W, 256>(st, x, out, s); }\n"
    "extern \"C\" __global__ void __launch_bounds__(256) k_add(const kiln_step st, "
    "const kiln::bf16 *a, const kiln::bf16 *b, kiln::bf16 *out)\n"
    "{ kiln::binary<kiln::bf16, W, 0, 0, 256>(st, a, b, out); }\n"
    "// the control: scale without KILN_PDL_ENTER (it still lets its dependents launch early)\n"
    "extern \"C\" __global__ void __launch_bounds__(256) k_scale_nowait(const kiln_step st, "
    "const kiln::bf16 *x, kiln::bf16 *out, float s)\n"
    "{\n"
    "#if __CUDA_ARCH__ >= 900\n"
    "    asm volatile(\"griddepcontrol.launch_dependents;\" ::: \"memory\");\n"
    "#endif\n"
    "    const long long idx = ((long long)blockIdx.x * 256 + threadIdx.x) * 8;\n"
    "    if (idx >= (long long)st.T * W) return;\n"
    "    float a[8];\n"
    "    kiln::load8(x + idx, a);\n"
    "    for (int i = 0; i < 8; i++) a[i] *= s;\n"
    "    kiln::store8(out + idx, a);\n"
    "}\n";

static float step_scale(int i) { return i % 2 ? -0.4f : 0.6f; }

/* The chain on the CPU, in place on x (bf16-valued floats). */
static void chain_cpu(float *x, size_t n)
{
    for (int i = 0; i < CHAIN; i++)
        for (size_t j = 0; j < n; j++) {
            float y = x[j] * step_scale(i);
            kt_round_bf16(&y, 1);
            float s = y + x[j];
            kt_round_bf16(&s, 1);
            x[j] = s;
        }
}

typedef struct pdl_bufs {
    CUdeviceptr x[2], y;
    CUstream stream; /* non-blocking, as the engine's: capture needs no legacy-stream sync */
} pdl_bufs;

/* Launches the chain on the stream (captured or not); returns the buffer holding the result,
 * or 0 after a failed launch (recorded as a failed case). */
static CUdeviceptr chain_launch(kt *t, CUfunction scale, CUfunction add, pdl_bufs *b, int pdl,
                                const char *name)
{
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = PDL_T;
    st.n_seqs = 1;
    unsigned grid = (unsigned)(((size_t)PDL_T * PDL_W + 8 * PDL_THREADS - 1) / (8 * PDL_THREADS));
    int cur = 0;
    for (int i = 0; i < CHAIN; i++) {
        float s = step_scale(i);
        void *a1[] = {&st, &b->x[cur], &b->y, &s};
        void *a2[] = {&st, &b->y, &b->x[cur], &b->x[1 - cur]};
        kerr e;
        kerr_clear(&e);
        if (kcuda_launch(&t->cu, scale, grid, 1, 1, PDL_THREADS, 0, b->stream, a1, pdl, &e) ||
            kcuda_launch(&t->cu, add, grid, 1, 1, PDL_THREADS, 0, b->stream, a2, pdl, &e)) {
            kt_result(t, name, 0, kerr_msg(&e));
            return 0;
        }
        cur = 1 - cur;
    }
    return b->x[cur];
}

/* Elements of got that differ from want. */
static size_t mismatches(const float *got, const float *want, size_t n)
{
    size_t bad = 0;
    for (size_t j = 0; j < n; j++)
        bad += !(got[j] == want[j]);
    return bad;
}

static void run_case(kt *t, CUfunction scale, CUfunction add, int pdl, int graph,
                     const char *name, int control)
{
    size_t n = (size_t)PDL_T * PDL_W;
    float *x0 = xmalloc(sizeof(float) * n), *want = xmalloc(sizeof(float) * n);
    kt_fill(t, x0, n, 1.0f);
    kt_round_bf16(x0, n);
    memcpy(want, x0, sizeof(float) * n);
    chain_cpu(want, n);
    uint16_t *h = kt_to_bf16(x0, n);
    pdl_bufs b = {{kt_upload(t, h, n * 2), kt_alloc(t, n * 2)}, kt_alloc(t, n * 2), NULL};
    /* the uploads and poisoning above ran on the legacy stream, which a non-blocking stream does
     * not wait for */
    if (t->cu.cuStreamSynchronize(NULL) != CUDA_SUCCESS ||
        t->cu.cuStreamCreate(&b.stream, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS) {
        kt_result(t, name, 0, "cuStreamSynchronize or cuStreamCreate failed");
        b.stream = NULL;
    }
    CUdeviceptr res = 0;
    int replays = graph ? 2 : 1, ok = b.stream != NULL;
    CUgraph g = NULL;
    CUgraphExec ge = NULL;
    if (ok && graph) {
        ok = t->cu.cuStreamBeginCapture(b.stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) ==
             CUDA_SUCCESS;
        res = ok ? chain_launch(t, scale, add, &b, pdl, name) : 0;
        ok = t->cu.cuStreamEndCapture(b.stream, &g) == CUDA_SUCCESS && ok && res;
        ok = ok && t->cu.cuGraphInstantiateWithFlags(&ge, g, 0) == CUDA_SUCCESS;
        if (!ok)
            kt_result(t, name, 0, "capturing or instantiating the graph failed");
    }
    uint16_t *gh = xmalloc(n * 2);
    for (int r = 0; ok && r < replays; r++) {
        if (r > 0) { /* fresh inputs, poisoned intermediates */
            ok = t->cu.cuMemcpyHtoDAsync(b.x[0], h, n * 2, b.stream) == CUDA_SUCCESS &&
                 t->cu.cuMemsetD8Async(b.x[1], 0xFF, n * 2, b.stream) == CUDA_SUCCESS &&
                 t->cu.cuMemsetD8Async(b.y, 0xFF, n * 2, b.stream) == CUDA_SUCCESS;
        }
        if (ok && graph)
            ok = t->cu.cuGraphLaunch(ge, b.stream) == CUDA_SUCCESS;
        else if (ok)
            ok = (res = chain_launch(t, scale, add, &b, pdl, name)) != 0;
        ok = ok && t->cu.cuStreamSynchronize(b.stream) == CUDA_SUCCESS;
        if (!ok) {
            kt_result(t, name, 0, "a launch or the chain failed on the GPU");
            break;
        }
        kt_download(t, gh, res, n * 2);
        float *got = kt_from_bf16(gh, n);
        if (control) {
            char d[160];
            size_t bad = mismatches(got, want, n);
            snprintf(d, sizeof d, "%zu of %zu elements differ without the wait (%s)", bad, n,
                     bad ? "the race shows: the check can see a missing wait"
                         : "no race seen this run");
            kt_result(t, name, 1, d);
        } else {
            char nm[200];
            snprintf(nm, sizeof nm, "%s%s", name, r ? " (replay 2)" : "");
            kt_check(t, nm, got, want, n, 0.0);
        }
        free(got);
    }
    if (ge)
        t->cu.cuGraphExecDestroy(ge);
    if (g)
        t->cu.cuGraphDestroy(g);
    if (b.stream)
        t->cu.cuStreamDestroy(b.stream);
    free(gh);
    free(h);
    free(x0);
    free(want);
    kt_free(t, b.x[0]), kt_free(t, b.x[1]), kt_free(t, b.y);
}

void ktest_pdl(kt *t)
{
    const char *name = "pdl/chain scale+add";
    if (!kt_want(t, name))
        return;
    CUmodule m = kt_module(t, name, pdl_src);
    if (t->compile_only || !m)
        return;
    CUfunction scale = kt_func(t, m, "k_scale"), add = kt_func(t, m, "k_add"),
               nowait = kt_func(t, m, "k_scale_nowait");
    int pdl = t->pdl;
    char nm[160];
    snprintf(nm, sizeof nm, "pdl/chain of %d, stream, PDL %s", 2 * CHAIN, pdl ? "on" : "off");
    run_case(t, scale, add, pdl, 0, nm, 0);
    snprintf(nm, sizeof nm, "pdl/chain of %d, CUDA graph, PDL %s", 2 * CHAIN, pdl ? "on" : "off");
    run_case(t, scale, add, pdl, 1, nm, 0);
    if (pdl) {
        run_case(t, nowait, add, pdl, 0, "pdl/control: scale without the wait, stream", 1);
        run_case(t, nowait, add, pdl, 1, "pdl/control: scale without the wait, graph", 1);
    }
    t->cu.cuModuleUnload(m);
}
