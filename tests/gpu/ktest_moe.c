/* ktest_moe — kernel tests of templates/moe.cuh (see ktest.h) against a CPU reference with the
 * semantics of op_moe / expert() in compiler/ref.c, computed in double from the kernel's exact
 * (bf16-rounded) inputs.
 *
 * Each configuration runs the chain the runtime runs: moe_route -> moe_gate_up (on the kernel's
 * idx) -> moe_down (on the kernel's idx, wts and hbuf), and checks each stage:
 *   "route idx"  exact match of the chosen experts and their order (descending probability,
 *                ties to the lower index). Inputs are redrawn per token until no decision of the
 *                reference is a NEAR tie (two different probabilities within 1e-4 relative at
 *                ranks <= TOPK): the kernel's float softmax (fast-math __expf, ~1e-6 relative)
 *                may order those differently from the double reference without being wrong.
 *                EXACT ties (identical router rows, the "ties" configuration) are kept: the kernel
 *                computes bit-identical logits for identical rows, so it must break them exactly
 *                as the reference does; the row says how many tie decisions were exercised.
 *   "route wts"  float output, rel L2 tol 1e-5: logits carry ~1e-7 absolute error (float sums of
 *                exact bf16 products), __expf ~1e-6 relative for |x| <= 10, the divisions a few
 *                ulp; 1e-5 is ~10x the worst single element and far below a wrong expert (~1).
 *   "gate_up"    hbuf (bf16) vs act(g)*u in double: tol 1e-2 (one bf16 rounding, rms ~1.1e-3).
 *   "down"       out (bf16) vs sum_k wts*down(hbuf) (+ add) in double, where the reference hbuf is
 *                rounded to bf16 as the kernel stores it: tol 1e-2 (one bf16 rounding).
 *   "deterministic" (some cases) moe_down run twice gives the same bytes.
 * The shared-expert gate is checked on its own ("moe/shared_gate ..."), also in place (out == y),
 * and in the chain as compiler/lower.c's low_moe runs it ("shared" cases): the add buffer holds
 * the shared expert's MLP output (its linears run as GEMV/GEMM, tested elsewhere), scaled in place
 * by moe_shared_gate when the expert has a gate (Qwen2-MoE; DeepSeek-V2's is added as is), then
 * added by moe_down: "down" checks sum_k wts*down(hbuf) + round(sigmoid(x . gate_w) * y).
 * Scales: x ~ U[-1,1); router ~ U * 4/sqrt(H) (logits rms ~1.3: decisive but not one-hot);
 * gate/up ~ U * 2/sqrt(H), down ~ U * 2/sqrt(I) (outputs of rms ~0.5).
 */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktest.h"
#include "util.h"
#include "../../kernels/kiln_step.h"


typedef struct mcase {
    int E, H, I, TOPK, renorm, act;
    int threads;
    int add;   /* 0: add = nullptr; 1: a separate [T,H] buffer; 2: in place (add == out) */
    int ties;  /* router rows 4 and 7 copy row 1, row 6 copies row 2 (needs E >= 8) */
    int det;   /* also check that moe_down is bit-for-bit repeatable */
    int shared; /* add == 1 only: the add buffer is a shared expert's output y, added as is (1)
                   or first scaled in place by moe_shared_gate: sigmoid(x . gate_w) * y (2) */
    int Ts[8]; /* token counts, 0-terminated (at most 7) */
} mcase;

/* "moe/E=8 top2 renorm silu H=264 I=200 +add T=5 route idx": the name of stage s of a case */
enum { N_STAGES = 5 };
static void case_name(char *buf, size_t size, const mcase *c, int T, int s)
{
    static const char *stage[N_STAGES] = {"route idx", "route wts", "gate_up", "down",
                                          "deterministic"};
    char th[32] = "";
    if (c->threads != 256)
        snprintf(th, sizeof th, " threads=%d", c->threads);
    snprintf(buf, size, "moe/E=%d top%d%s %s H=%d I=%d%s%s%s%s T=%d %s", c->E, c->TOPK,
             c->renorm ? " renorm" : "", kt_act_name(c->act), c->H, c->I,
             c->add == 1 ? " +add" : c->add == 2 ? " +add(in place)" : "",
             c->shared == 1 ? " shared" : c->shared == 2 ? " shared(gated)" : "",
             c->ties ? " ties" : "", th, T, stage[s]);
}

static double dotd(const float *a, const float *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static float *randv(kt *t, size_t n, float scale)
{
    float *x = xmalloc(sizeof(float) * (n ? n : 1));
    kt_fill(t, x, n, scale);
    kt_round_bf16(x, n);
    return x;
}

static CUdeviceptr up_bf16(kt *t, const float *x, size_t n)
{
    uint16_t *h = kt_to_bf16(x, n);
    CUdeviceptr d = kt_upload(t, h, sizeof(uint16_t) * n);
    free(h);
    return d;
}

static void down_bf16(kt *t, float *out, CUdeviceptr d, size_t n)
{
    uint16_t *h = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    kt_download(t, h, d, sizeof(uint16_t) * n);
    for (size_t i = 0; i < n; i++)
        out[i] = util_bf16_to_f32(h[i]);
    free(h);
}

/* Reference route of one token: probabilities p[E] (double softmax) and the order of the experts
 * by (probability desc, index asc) in ord[E]. Returns 1 when a decision at ranks <= TOPK is a
 * near tie (different probabilities within 1e-4 relative); counts exact ties in *exact. */
static int route_ref(const float *xt, const float *router, int E, int H, int TOPK, double *p,
                     int *ord, int *exact)
{
    double mx = -INFINITY, sum = 0;
    for (int e = 0; e < E; e++) {
        p[e] = dotd(xt, router + (size_t)e * H, H);
        if (p[e] > mx)
            mx = p[e];
    }
    for (int e = 0; e < E; e++)
        sum += p[e] = exp(p[e] - mx);
    for (int e = 0; e < E; e++)
        p[e] /= sum;
    for (int e = 0; e < E; e++) { /* insertion sort, stable: ties keep the lower index first */
        int j = e;
        while (j > 0 && p[ord[j - 1]] < p[e]) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = e;
    }
    int near = 0;
    for (int i = 0; i < TOPK && i + 1 < E; i++) {
        double a = p[ord[i]], b = p[ord[i + 1]];
        if (a == b)
            (*exact)++;
        else if (a - b < 1e-4 * a)
            near = 1;
    }
    return near;
}

static void moe_run(kt *t, const mcase *c, CUfunction f_route, CUfunction f_gu, CUfunction f_down,
                    CUfunction f_sg, int T)
{
    const int E = c->E, H = c->H, I = c->I, K = c->TOPK, TH = c->threads, WARPS = TH / 32;
    char nm[N_STAGES][240];
    int want = 0;
    for (int s = 0; s < N_STAGES; s++) {
        case_name(nm[s], sizeof nm[s], c, T, s);
        want |= (s < 4 || c->det) && kt_want(t, nm[s]);
    }
    if (!want)
        return;

    /* inputs */
    const size_t nx = (size_t)T * H, ngu = (size_t)E * 2 * I * H, ndn = (size_t)E * H * I;
    float *x = randv(t, nx, 1.0f);
    float *router = randv(t, (size_t)E * H, 4.0f / sqrtf((float)H));
    float *gu = randv(t, ngu, 2.0f / sqrtf((float)H));
    float *dn = randv(t, ndn, 2.0f / sqrtf((float)I));
    float *add = randv(t, nx, 1.0f);
    float *sgw = c->shared == 2 ? randv(t, (size_t)H, 4.0f / sqrtf((float)H)) : NULL;
    if (c->ties) {
        static const int dup[][2] = {{4, 1}, {7, 1}, {6, 2}};
        for (int i = 0; i < 3; i++)
            memcpy(router + (size_t)dup[i][0] * H, router + (size_t)dup[i][1] * H,
                   sizeof(float) * (size_t)H);
    }

    /* reference route; redraw a token's x while a decision is a near tie */
    double *p = xmalloc(sizeof(double) * (size_t)E);
    int *ord = xmalloc(sizeof(int) * (size_t)E);
    int *ridx = xmalloc(sizeof(int) * (size_t)T * K);
    float *rw = xmalloc(sizeof(float) * (size_t)T * K);
    double *rprob = xmalloc(sizeof(double) * (size_t)T * E);
    int exact = 0, redrawn = 0;
    for (int tk = 0; tk < T; tk++) {
        float *xt = x + (size_t)tk * H;
        for (int tries = 0;; tries++) {
            int ex = 0;
            if (!route_ref(xt, router, E, H, K, p, ord, &ex) || tries == 1000) {
                exact += ex;
                break;
            }
            kt_fill(t, xt, (size_t)H, 1.0f);
            kt_round_bf16(xt, (size_t)H);
            redrawn++;
        }
        double ks = 0;
        for (int k = 0; k < K; k++)
            ks += p[ord[k]];
        for (int k = 0; k < K; k++) {
            ridx[tk * K + k] = ord[k];
            rw[tk * K + k] = (float)(c->renorm ? p[ord[k]] / ks : p[ord[k]]);
        }
        memcpy(rprob + (size_t)tk * E, p, sizeof(double) * (size_t)E);
    }

    /* reference expert MLPs: hbuf (float, and rounded to bf16 as the kernel stores it), out */
    const size_t nh = (size_t)T * K * I;
    float *href = xmalloc(sizeof(float) * nh), *hr16 = xmalloc(sizeof(float) * nh);
    float *oref = xmalloc(sizeof(float) * nx);
    for (size_t pr = 0; pr < (size_t)T * K; pr++) {
        const float *xt = x + pr / K * H;
        const float *we = gu + (size_t)ridx[pr] * 2 * I * H;
        for (int j = 0; j < I; j++) {
            double g = dotd(xt, we + (size_t)j * H, H), u = dotd(xt, we + (size_t)(I + j) * H, H);
            href[pr * I + j] = (float)(kt_act(c->act, g) * u);
        }
    }
    memcpy(hr16, href, sizeof(float) * nh);
    kt_round_bf16(hr16, nh);
    for (int tk = 0; tk < T; tk++) {
        /* the gated shared expert's output as moe_shared_gate stores it (bf16) */
        const double sg = sgw ? 1.0 / (1.0 + exp(-dotd(x + (size_t)tk * H, sgw, H))) : 1.0;
        for (int n = 0; n < H; n++) {
            double s = c->add ? add[(size_t)tk * H + n] : 0.0;
            if (sgw)
                s = util_bf16_to_f32(util_f32_to_bf16((float)(sg * s)));
            for (int k = 0; k < K; k++) {
                const size_t pr = (size_t)tk * K + k;
                s += (double)rw[pr] *
                     dotd(hr16 + pr * I, dn + ((size_t)ridx[pr] * H + n) * I, I);
            }
            oref[(size_t)tk * H + n] = (float)s;
        }
    }

    /* device */
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = T;
    st.n_seqs = T;
    CUdeviceptr dx = up_bf16(t, x, nx), drouter = up_bf16(t, router, (size_t)E * H);
    CUdeviceptr dgu = up_bf16(t, gu, ngu), ddn = up_bf16(t, dn, ndn);
    CUdeviceptr didx = kt_alloc(t, sizeof(int) * (size_t)T * K);
    CUdeviceptr dwts = kt_alloc(t, sizeof(float) * (size_t)T * K);
    CUdeviceptr dh = kt_alloc(t, sizeof(uint16_t) * nh);
    CUdeviceptr dout = c->add == 2 ? up_bf16(t, add, nx) : kt_alloc(t, sizeof(uint16_t) * nx);
    CUdeviceptr dadd = c->add == 1 ? up_bf16(t, add, nx) : c->add == 2 ? dout : 0;

    void *a_route[] = {&st, &dx, &drouter, &didx, &dwts};
    kt_launch(t, f_route, "moe_route", (unsigned)T, 1, 1, (unsigned)TH, 0, a_route);
    int *gidx = xmalloc(sizeof(int) * (size_t)T * K);
    float *gw = xmalloc(sizeof(float) * (size_t)T * K);
    kt_download(t, gidx, didx, sizeof(int) * (size_t)T * K);
    kt_download(t, gw, dwts, sizeof(float) * (size_t)T * K);
    {
        int bad = 0, first = -1;
        for (int i = 0; i < T * K; i++)
            if (gidx[i] != ridx[i] && bad++ == 0)
                first = i;
        char d[256];
        if (bad) {
            const int tk = first / K, g = gidx[first], r = ridx[first];
            snprintf(d, sizeof d,
                     "%d of %d wrong; first token %d rank %d: got expert %d (p %.6g) want %d (p %.6g)",
                     bad, T * K, tk, first % K, g,
                     g >= 0 && g < E ? rprob[(size_t)tk * E + g] : NAN, r,
                     rprob[(size_t)tk * E + r]);
        } else {
            snprintf(d, sizeof d, "%d choices exact; %d exact-tie decisions; %d tokens redrawn (near ties)",
                     T * K, exact, redrawn);
        }
        int ok = t->compile_only || bad == 0;
        if (c->ties && exact == 0) { /* the configuration must exercise the tie rule */
            ok = 0;
            snprintf(d, sizeof d, "no exact-tie decision was exercised: fix the test's data");
        }
        if (kt_want(t, nm[0]))
            kt_result(t, nm[0], ok, d);
    }
    if (kt_want(t, nm[1]))
        kt_check(t, nm[1], gw, rw, (size_t)T * K, 1e-5);

    const unsigned gu_tiles = (unsigned)((I + 2 * WARPS - 1) / (2 * WARPS));
    void *a_gu[] = {&st, &dx, &didx, &dgu, &dh};
    kt_launch(t, f_gu, "moe_gate_up", (unsigned)(T * K), gu_tiles, 1, (unsigned)TH, 0, a_gu);
    float *gh = xmalloc(sizeof(float) * nh);
    down_bf16(t, gh, dh, nh);
    if (kt_want(t, nm[2]))
        kt_check(t, nm[2], gh, href, nh, 1e-2);

    CUdeviceptr dsgw = 0;
    if (sgw) { /* the shared expert's gate, in place on its output, before moe_down adds it */
        dsgw = up_bf16(t, sgw, (size_t)H);
        void *a_sg[] = {&st, &dx, &dsgw, &dadd, &dadd};
        kt_launch(t, f_sg, "moe_shared_gate", (unsigned)T, 1, 1, (unsigned)TH, 0, a_sg);
    }
    const unsigned dn_tiles = (unsigned)((H + 4 * WARPS - 1) / (4 * WARPS));
    void *a_dn[] = {&st, &dh, &didx, &dwts, &ddn, &dout, &dadd};
    kt_launch(t, f_down, "moe_down", (unsigned)T, dn_tiles, 1, (unsigned)TH, 0, a_dn);
    float *go = xmalloc(sizeof(float) * nx);
    down_bf16(t, go, dout, nx);
    if (kt_want(t, nm[3]))
        kt_check(t, nm[3], go, oref, nx, 1e-2);

    if (c->det && c->add != 2 && kt_want(t, nm[4])) {
        CUdeviceptr dout2 = kt_alloc(t, sizeof(uint16_t) * nx);
        void *a_dn2[] = {&st, &dh, &didx, &dwts, &ddn, &dout2, &dadd};
        kt_launch(t, f_down, "moe_down", (unsigned)T, dn_tiles, 1, (unsigned)TH, 0, a_dn2);
        uint16_t *o1 = xmalloc(sizeof(uint16_t) * nx), *o2 = xmalloc(sizeof(uint16_t) * nx);
        kt_download(t, o1, dout, sizeof(uint16_t) * nx);
        kt_download(t, o2, dout2, sizeof(uint16_t) * nx);
        size_t diff = 0, first = 0;
        for (size_t i = 0; i < nx; i++)
            if (o1[i] != o2[i] && diff++ == 0)
                first = i;
        char d[160];
        if (diff)
            snprintf(d, sizeof d, "%zu of %zu outputs differ between two runs; first [%zu]", diff,
                     nx, first);
        else
            snprintf(d, sizeof d, "two runs bit-identical (%zu outputs)", nx);
        kt_result(t, nm[4], t->compile_only || diff == 0, d);
        free(o1);
        free(o2);
        kt_free(t, dout2);
    }

    kt_free(t, dx);
    kt_free(t, drouter);
    kt_free(t, dgu);
    kt_free(t, ddn);
    kt_free(t, didx);
    kt_free(t, dwts);
    kt_free(t, dh);
    kt_free(t, dout);
    if (c->add == 1)
        kt_free(t, dadd);
    if (sgw)
        kt_free(t, dsgw);
    free(sgw);
    free(x);
    free(router);
    free(gu);
    free(dn);
    free(add);
    free(p);
    free(ord);
    free(ridx);
    free(rw);
    free(rprob);
    free(href);
    free(hr16);
    free(oref);
    free(gidx);
    free(gw);
    free(gh);
    free(go);
}

static void moe_config(kt *t, const mcase *c)
{
    /* one translation unit per configuration, shared by its token counts */
    char name[160], src[2560], sg[512] = "";
    snprintf(name, sizeof name, "moe/E=%d top%d%s %s H=%d I=%d threads=%d%s", c->E, c->TOPK,
             c->renorm ? " renorm" : "", kt_act_name(c->act), c->H, c->I, c->threads,
             c->shared == 2 ? " shared_gate" : "");
    int want = 0;
    for (int i = 0; c->Ts[i]; i++)
        for (int s = 0; s < N_STAGES; s++) {
            char full[240];
            case_name(full, sizeof full, c, c->Ts[i], s);
            want |= (s < 4 || c->det) && kt_want(t, full);
        }
    if (!want)
        return;
    assert(c->shared == 0 || c->add == 1);
    if (c->shared == 2)
        snprintf(sg, sizeof sg,
                 "extern \"C\" __global__ void __launch_bounds__(%d)\n"
                 "k_sg(const kiln_step st, const bf16 *x, const bf16 *gate_w, const bf16 *y, bf16 *out)\n"
                 "{ kiln::moe_shared_gate<bf16, %d, %d>(st, x, gate_w, y, out); }\n",
                 c->threads, c->H, c->threads);
    snprintf(src, sizeof src,
             "#include \"moe.cuh\"\n"
             "using kiln::bf16;\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_route(const kiln_step st, const bf16 *x, const bf16 *router, int *idx, float *wts)\n"
             "{ kiln::moe_route<bf16, %d, %d, %d, %s, %d>(st, x, router, idx, wts); }\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_gate_up(const kiln_step st, const bf16 *x, const int *idx, const bf16 *gate_up, bf16 *hbuf)\n"
             "{ kiln::moe_gate_up<bf16, %d, %d, %d, %d, %d, %d>(st, x, idx, gate_up, hbuf); }\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_down(const kiln_step st, const bf16 *hbuf, const int *idx, const float *wts,\n"
             "       const bf16 *down, bf16 *out, const bf16 *add)\n"
             "{ kiln::moe_down<bf16, %d, %d, %d, %d, %d>(st, hbuf, idx, wts, down, out, add); }\n"
             "%s",
             c->threads, c->E, c->H, c->TOPK, c->renorm ? "true" : "false", c->threads,
             c->threads, c->E, c->H, c->I, c->TOPK, c->act, c->threads,
             c->threads, c->E, c->H, c->I, c->TOPK, c->threads, sg);
    CUmodule mod = kt_module(t, name, src);
    if (!mod && !t->compile_only)
        return; /* the compile failure is recorded with its log */
    CUfunction fr = kt_func(t, mod, "k_route"), fg = kt_func(t, mod, "k_gate_up"),
               fd = kt_func(t, mod, "k_down");
    CUfunction fs = c->shared == 2 ? kt_func(t, mod, "k_sg") : NULL;
    for (int i = 0; c->Ts[i]; i++)
        moe_run(t, c, fr, fg, fd, fs, c->Ts[i]);
}

static void shared_gate_case(kt *t, int H, int T, int threads, int in_place)
{
    char name[160], src[1024];
    snprintf(name, sizeof name, "moe/shared_gate H=%d T=%d threads=%d%s", H, T, threads,
             in_place ? " in place" : "");
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"moe.cuh\"\n"
             "using kiln::bf16;\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_sg(const kiln_step st, const bf16 *x, const bf16 *gate_w, const bf16 *y, bf16 *out)\n"
             "{ kiln::moe_shared_gate<bf16, %d, %d>(st, x, gate_w, y, out); }\n",
             threads, H, threads);
    CUmodule mod = kt_module(t, name, src);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_sg");
    const size_t n = (size_t)T * H;
    float *x = randv(t, n, 1.0f), *gw = randv(t, (size_t)H, 4.0f / sqrtf((float)H));
    float *y = randv(t, n, 1.0f), *want = xmalloc(sizeof(float) * n), *got = xmalloc(sizeof(float) * n);
    for (int tk = 0; tk < T; tk++) {
        const double g = 1.0 / (1.0 + exp(-dotd(x + (size_t)tk * H, gw, H)));
        for (int j = 0; j < H; j++)
            want[(size_t)tk * H + j] = (float)(g * y[(size_t)tk * H + j]);
    }
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = T;
    st.n_seqs = T;
    CUdeviceptr dx = up_bf16(t, x, n), dgw = up_bf16(t, gw, (size_t)H), dy = up_bf16(t, y, n);
    CUdeviceptr dout = in_place ? dy : kt_alloc(t, sizeof(uint16_t) * n);
    void *args[] = {&st, &dx, &dgw, &dy, &dout};
    kt_launch(t, f, name, (unsigned)T, 1, 1, (unsigned)threads, 0, args);
    down_bf16(t, got, dout, n);
    kt_check(t, name, got, want, n, 1e-2);
    kt_free(t, dx);
    kt_free(t, dgw);
    kt_free(t, dy);
    if (!in_place)
        kt_free(t, dout);
    free(x);
    free(gw);
    free(y);
    free(want);
    free(got);
}

/* sparsemixer (Phi-3.5-MoE; compiler/graph.h kg_moe_routing) of one token's logits s[E], in
 * double: two rounds, each the largest logit among the experts not chosen (ties to the lower
 * index) with weight 1 / sum exp(s_e - m) over the experts e not chosen before whose
 * (m - s_e) / max(|s_e|, m) <= 2 eps. Returns 1 when a decision is near (two logits of a round's
 * top within 1e-4 relative, or a ratio within 1e-4 of the threshold), which the kernel's float
 * logits may decide the other way without being wrong: the token is then redrawn. */
static int sparsemixer_ref(const double *s, int E, double eps, int idx[2], double w[2])
{
    int near = 0, first = -1;
    for (int k = 0; k < 2; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (e != first && (best < 0 || s[e] > s[best]))
                best = e;
        const double m = s[best];
        double sum = 0;
        for (int e = 0; e < E; e++) {
            if (e == first)
                continue;
            if (e != best && fabs(m - s[e]) < 1e-4 * fabs(m))
                near = 1;
            const double r = (m - s[e]) / fmax(fabs(s[e]), m);
            if (fabs(r - 2 * eps) < 1e-4)
                near = 1;
            if (r <= 2 * eps)
                sum += exp(s[e] - m);
        }
        idx[k] = best;
        w[k] = 1.0 / sum;
        first = best;
    }
    return near;
}

/* moe_route_sparsemixer against sparsemixer_ref: the chosen experts exactly ("idx"), their
 * weights within rel L2 1e-5 ("wts", as moe_route's). Logits rms ~1.3, and with eps 0.25 (a
 * relative window of 0.5) most tokens mix several experts into a weight; eps 0.01 mostly none. */
static void sparsemixer_case(kt *t, int E, int H, int T, int threads, float eps)
{
    char name[160], nidx[200], nw[200], src[1024];
    snprintf(name, sizeof name, "moe/sparsemixer E=%d H=%d eps=%g threads=%d T=%d", E, H, eps,
             threads, T);
    snprintf(nidx, sizeof nidx, "%s idx", name);
    snprintf(nw, sizeof nw, "%s wts", name);
    if (!kt_want(t, nidx) && !kt_want(t, nw))
        return;
    snprintf(src, sizeof src,
             "#include \"moe.cuh\"\n"
             "using kiln::bf16;\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_sm(const kiln_step st, const bf16 *x, const bf16 *router, int *idx, float *wts, "
             "float jitter_eps)\n"
             "{ kiln::moe_route_sparsemixer<bf16, %d, %d, %d>(st, x, router, idx, wts, "
             "jitter_eps); }\n",
             threads, E, H, threads);
    CUmodule mod = kt_module(t, name, src);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_sm");
    const size_t n = (size_t)T * H;
    float *x = randv(t, n, 1.0f), *router = randv(t, (size_t)E * H, 4.0f / sqrtf((float)H));
    double *lg = xmalloc(sizeof(double) * (size_t)E), w2[2];
    int *ridx = xmalloc(sizeof(int) * (size_t)T * 2), i2[2], redrawn = 0;
    float *rw = xmalloc(sizeof(float) * (size_t)T * 2);
    for (int tk = 0; tk < T; tk++) {
        float *xt = x + (size_t)tk * H;
        for (int tries = 0;; tries++) {
            for (int e = 0; e < E; e++)
                lg[e] = dotd(xt, router + (size_t)e * H, H);
            if (!sparsemixer_ref(lg, E, eps, i2, w2) || tries == 1000)
                break;
            kt_fill(t, xt, (size_t)H, 1.0f);
            kt_round_bf16(xt, (size_t)H);
            redrawn++;
        }
        for (int k = 0; k < 2; k++) {
            ridx[tk * 2 + k] = i2[k];
            rw[tk * 2 + k] = (float)w2[k];
        }
    }
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = T;
    st.n_seqs = T;
    CUdeviceptr dx = up_bf16(t, x, n), dr = up_bf16(t, router, (size_t)E * H);
    CUdeviceptr didx = kt_alloc(t, sizeof(int) * (size_t)T * 2);
    CUdeviceptr dw = kt_alloc(t, sizeof(float) * (size_t)T * 2);
    void *args[] = {&st, &dx, &dr, &didx, &dw, &eps};
    kt_launch(t, f, name, (unsigned)T, 1, 1, (unsigned)threads, 0, args);
    int *gidx = xcalloc((size_t)T * 2, sizeof(int));
    float *gw = xcalloc((size_t)T * 2, sizeof(float));
    kt_download(t, gidx, didx, sizeof(int) * (size_t)T * 2);
    kt_download(t, gw, dw, sizeof(float) * (size_t)T * 2);
    int bad = 0, first = -1, mixed = 0;
    for (int i = 0; i < T * 2; i++) {
        if (gidx[i] != ridx[i] && bad++ == 0)
            first = i;
        mixed += rw[i] < 0.999f;
    }
    char d[256];
    if (bad)
        snprintf(d, sizeof d, "%d of %d wrong; first token %d round %d: got expert %d, want %d",
                 bad, T * 2, first / 2, first % 2, gidx[first], ridx[first]);
    else
        snprintf(d, sizeof d, "%d choices exact; %d weights below 1 (experts mixed); %d tokens "
                 "redrawn (near decisions)", T * 2, mixed, redrawn);
    if (kt_want(t, nidx))
        kt_result(t, nidx, t->compile_only || bad == 0, d);
    if (kt_want(t, nw))
        kt_check(t, nw, gw, rw, (size_t)T * 2, 1e-5);
    kt_free(t, dx);
    kt_free(t, dr);
    kt_free(t, didx);
    kt_free(t, dw);
    free(x);
    free(router);
    free(lg);
    free(ridx);
    free(rw);
    free(gidx);
    free(gw);
}

void ktest_moe(kt *t)
{
    static const mcase cases[] = {
        /* Mixtral-like: renormalised top-2 of 8; H and I not multiples of a block's rows */
        {.E = 8, .H = 264, .I = 200, .TOPK = 2, .renorm = 1, .act = KILN_ACT_SILU, .threads = 256,
         .add = 1, .det = 1, .Ts = {1, 5, 64, 300}},
        {.E = 4, .H = 128, .I = 96, .TOPK = 1, .renorm = 0, .act = KILN_ACT_GELU_TANH, .threads = 128,
         .Ts = {1, 5, 64}},
        {.E = 16, .H = 512, .I = 320, .TOPK = 4, .renorm = 0, .act = KILN_ACT_SILU, .threads = 256,
         .add = 1, .det = 1, .Ts = {1, 5, 64}},
        /* the tie rule: identical router rows tie exactly */
        {.E = 8, .H = 128, .I = 64, .TOPK = 2, .renorm = 1, .act = KILN_ACT_SILU, .threads = 256,
         .ties = 1, .Ts = {64}},
        /* Qwen1.5-MoE-like: 60 experts (not a multiple of 32), top-4, shared output added in place */
        {.E = 60, .H = 256, .I = 64, .TOPK = 4, .renorm = 0, .act = KILN_ACT_SILU, .threads = 256,
         .add = 2, .Ts = {5, 64}},
        /* the shared expert as low_moe runs it: Qwen2-MoE's gated (sigmoid(x . gate_w) scales it
         * in place, then moe_down adds it), DeepSeek-V2's added as is */
        {.E = 60, .H = 256, .I = 64, .TOPK = 4, .renorm = 0, .act = KILN_ACT_SILU, .threads = 256,
         .add = 1, .shared = 2, .Ts = {1, 5, 64}},
        {.E = 64, .H = 128, .I = 32, .TOPK = 6, .renorm = 0, .act = KILN_ACT_SILU, .threads = 128,
         .add = 1, .shared = 1, .Ts = {1, 7}},
        /* Qwen3-MoE-like: 128 experts, top-8 */
        {.E = 128, .H = 128, .I = 32, .TOPK = 8, .renorm = 1, .act = KILN_ACT_SILU, .threads = 256,
         .Ts = {5}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        moe_config(t, &cases[i]);
    shared_gate_case(t, 264, 5, 256, 0);
    shared_gate_case(t, 4096, 64, 128, 1);
    shared_gate_case(t, 128, 1, 256, 1);
    /* Phi-3.5-MoE's routing: (E, H, T, threads, jitter_eps) */
    sparsemixer_case(t, 16, 4096, 5, 256, 0.01f); /* Phi-3.5-MoE's shape and eps */
    sparsemixer_case(t, 4, 64, 64, 128, 0.25f);   /* the phimoe fixture's */
    sparsemixer_case(t, 40, 256, 7, 256, 0.25f);  /* E over 32: two experts per lane */
}
