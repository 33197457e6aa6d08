/* engine — see engine.h. */
#include "engine.h"

#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "hash.h"
#include "kcuda.h"
#include "safetensors.h"

#define ALIGN 256
#define STAGE (64u << 20) /* pinned staging buffer for weight uploads */
#define MAX_BUCKETS 16

struct kmodel {
    kcuda cu;
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;
    int cc_major, cc_minor;
    char devname[256];
    char desc[768];
    double load_s;

    ka_file *af;
    ka_manifest *m;
    CUmodule mod;
    CUfunction *fn;
    st_set *shard;
    hash_job *shard_job; /* hashing the mapped shard while it is uploaded */
    int esize;

    CUdeviceptr warena, consts, slab, scratch, logits, logits_all, out, meta, kv;
    size_t *woff, *coff;
    size_t logits_all_rows;
    size_t *kv_k, *kv_v; /* per layer offsets into kv */
    int nblocks, max_blocks; /* KV blocks (block 0: the padding rows' scratch); per sequence */

    /* the step arrays: device (inside meta) and a pinned host mirror */
    int cap_tok, cap_seq;
    int32_t *h_meta;
    size_t o_ids, o_pos, o_type, o_seq, o_slot, o_start, o_kvlen, o_bt, meta_bytes;
    kiln_step st;

    CUdeviceptr d_params, d_ids;
    kiln_sample *h_params;
    int32_t *h_ids;
    float *h_lp; /* pinned [max_seqs, vocab]: logits rows for logprobs (allocated on first use) */
    kgemm *gemm;
    CUgraphExec graphs[MAX_BUCKETS];
    int graphs_failed;
    km_opts o;
    kbackend kb; /* the step backend (km_backend) and what it reports */
    kb_info info;
};

const ka_manifest *km_manifest(const kmodel *m) { return m->m; }
const char *km_describe(const kmodel *m) { return m->desc; }
double km_load_seconds(const kmodel *m) { return m->load_s; }

#define CU(call)                                                                                \
    do {                                                                                        \
        CUresult rc_ = m->cu.call;                                                              \
        if (rc_ != CUDA_SUCCESS)                                                                \
            return kcuda_fail(&m->cu, rc_, #call, __FILE__, __LINE__, err);                     \
    } while (0)

static void init_backend(kmodel *m);

static size_t align_up(size_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* ---------------------------------------------------------------- loading */

static int pick_code(kmodel *m, const ka_blob **code, int *is_ptx, kerr *err)
{
    const ka_manifest *man = m->m;
    char want[32];
    *code = NULL;
    *is_ptx = 0;
    if (m->cc_major == 9 && m->cc_minor == 0) { /* Hopper: the arch-specific cubin first */
        *code = ka_find_blob(man, "cubin.sm_90a");
    }
    if (!*code) {
        snprintf(want, sizeof want, "cubin.sm_%d%d", m->cc_major, m->cc_minor);
        *code = ka_find_blob(man, want);
    }
    /* a cubin for an older minor of the same major runs too ("a" cubins only on their own) */
    for (int minor = m->cc_minor - 1; !*code && minor >= 0; minor--) {
        snprintf(want, sizeof want, "cubin.sm_%d%d", m->cc_major, minor);
        *code = ka_find_blob(man, want);
    }
    if (*code)
        return 0;
    char have[256] = "";
    size_t hl = 0;
    for (int i = 0; i < man->nblobs; i++)
        if (!strncmp(man->blobs[i].name, "cubin.", 6))
            hl += (size_t)snprintf(have + hl, sizeof have - hl, "%s%s", hl ? ", " : "",
                                   man->blobs[i].name + 6);
    for (int i = 0; i < man->nblobs; i++) {
        const ka_blob *b = &man->blobs[i];
        int v;
        if (sscanf(b->name, "ptx.compute_%d", &v) == 1 && v <= m->cc_major * 10 + m->cc_minor) {
            *code = b;
            *is_ptx = 1;
            if (!m->o.quiet)
                fprintf(stderr,
                        "kiln: note: this artifact has no cubin for sm_%d%d (it has %s); "
                        "JIT-compiling its PTX (%s) instead, which slows the start. Rebuild with "
                        "kilnc compile --sm %d%d for a native cubin.\n",
                        m->cc_major, m->cc_minor, have[0] ? have : "none", b->name + 4,
                        m->cc_major, m->cc_minor);
            return 0;
        }
    }
    return kerr_add(err,
                    "%s: no code for this GPU (%s, sm_%d%d): the artifact has cubins for %s and "
                    "no usable PTX. Rebuild it: kilnc compile MODEL_DIR -o OUT --sm %d%d",
                    m->af->path, m->devname, m->cc_major, m->cc_minor, have[0] ? have : "nothing",
                    m->cc_major, m->cc_minor);
}

/* Weights into one arena, through two pinned staging buffers so the copy out of the mapped
 * file overlaps the previous DMA. */
static int upload_weights(kmodel *m, kerr *err)
{
    const ka_manifest *man = m->m;
    size_t total = 0;
    m->woff = xcalloc((size_t)(man->nweights ? man->nweights : 1), sizeof(size_t));
    for (int i = 0; i < man->nweights; i++) {
        m->woff[i] = total;
        total += align_up((size_t)man->weights[i].nbytes);
    }
    CU(cuMemAlloc(&m->warena, total ? total : ALIGN));
    void *stage[2];
    CUevent ev[2];
    CU(cuMemAllocHost(&stage[0], STAGE));
    CU(cuMemAllocHost(&stage[1], STAGE));
    CU(cuEventCreate(&ev[0], CU_EVENT_DISABLE_TIMING));
    CU(cuEventCreate(&ev[1], CU_EVENT_DISABLE_TIMING));
    int b = 0, used[2] = {0, 0};
    for (int i = 0; i < man->nweights; i++) {
        const st_tensor *t = st_find(m->shard, man->weights[i].name);
        const unsigned char *src = t->data;
        size_t left = t->nbytes, at = 0;
        while (left) {
            size_t n = left < STAGE ? left : STAGE;
            if (used[b])
                CU(cuEventSynchronize(ev[b]));
            memcpy(stage[b], src + at, n);
            CU(cuMemcpyHtoDAsync(m->warena + m->woff[i] + at, stage[b], n, m->stream));
            CU(cuEventRecord(ev[b], m->stream));
            used[b] = 1;
            b ^= 1;
            at += n;
            left -= n;
        }
    }
    CU(cuStreamSynchronize(m->stream));
    m->cu.cuEventDestroy(ev[0]);
    m->cu.cuEventDestroy(ev[1]);
    m->cu.cuMemFreeHost(stage[0]);
    m->cu.cuMemFreeHost(stage[1]);
    return 0;
}

static int alloc_runtime(kmodel *m, kerr *err)
{
    const ka_manifest *man = m->m;
    /* constant tables */
    size_t ct = 0;
    m->coff = xcalloc((size_t)(man->nconsts ? man->nconsts : 1), sizeof(size_t));
    for (int i = 0; i < man->nconsts; i++) {
        m->coff[i] = ct;
        ct += align_up(sizeof(float) * (size_t)man->consts[i].n);
    }
    CU(cuMemAlloc(&m->consts, ct ? ct : ALIGN));
    for (int i = 0; i < man->nconsts; i++)
        if (man->consts[i].n)
            CU(cuMemcpyHtoD(m->consts + m->coff[i], man->consts[i].v,
                            sizeof(float) * (size_t)man->consts[i].n));
    CU(cuMemAlloc(&m->slab, man->slab_bytes ? (size_t)man->slab_bytes : ALIGN));
    CU(cuMemAlloc(&m->scratch, man->scratch_bytes ? (size_t)man->scratch_bytes : ALIGN));
    size_t V = (size_t)(man->vocab > 0 ? man->vocab : 1);
    CU(cuMemAlloc(&m->logits, sizeof(float) * V * (size_t)man->max_seqs));
    CU(cuMemAlloc(&m->out, sizeof(float) * (size_t)man->hidden * (size_t)man->max_seqs));
    /* step arrays */
    m->cap_tok = man->max_tokens > man->max_seqs ? man->max_tokens : man->max_seqs;
    m->cap_seq = man->max_seqs;
    m->max_blocks = (man->max_seq_len + KILN_BLOCK - 1) / KILN_BLOCK;
    size_t o = 0;
#define SLOT(field, n) (m->field = o, o += align_up(sizeof(int32_t) * (size_t)(n)))
    SLOT(o_ids, m->cap_tok);
    SLOT(o_pos, m->cap_tok);
    SLOT(o_type, m->cap_tok);
    SLOT(o_seq, m->cap_tok);
    SLOT(o_slot, m->cap_tok);
    SLOT(o_start, m->cap_seq + 1);
    SLOT(o_kvlen, m->cap_seq);
    SLOT(o_bt, (size_t)m->cap_seq * (size_t)m->max_blocks);
#undef SLOT
    m->meta_bytes = o;
    CU(cuMemAlloc(&m->meta, o));
    CU(cuMemsetD8(m->meta, 0, o));
    CU(cuMemAllocHost((void **)&m->h_meta, o));
    memset(m->h_meta, 0, o);
    m->st.max_blocks = m->max_blocks;
    m->st.tok_ids = m->meta + m->o_ids;
    m->st.tok_pos = m->meta + m->o_pos;
    m->st.tok_type = m->meta + m->o_type;
    m->st.tok_seq = m->meta + m->o_seq;
    m->st.tok_slot = m->meta + m->o_slot;
    m->st.seq_start = m->meta + m->o_start;
    m->st.seq_kvlen = m->meta + m->o_kvlen;
    m->st.block_table = m->meta + m->o_bt;
    CU(cuMemAlloc(&m->d_params, sizeof(kiln_sample) * (size_t)m->cap_seq));
    CU(cuMemAlloc(&m->d_ids, sizeof(int32_t) * (size_t)m->cap_seq));
    CU(cuMemAllocHost((void **)&m->h_params, sizeof(kiln_sample) * (size_t)m->cap_seq));
    CU(cuMemAllocHost((void **)&m->h_ids, sizeof(int32_t) * (size_t)m->cap_seq));

    /* the paged KV cache: what free memory allows, up to what the limits can use */
    size_t per_block = 0;
    m->kv_k = xcalloc((size_t)(man->n_layers ? man->n_layers : 1), sizeof(size_t));
    m->kv_v = xcalloc((size_t)(man->n_layers ? man->n_layers : 1), sizeof(size_t));
    for (int l = 0; l < man->n_layers; l++)
        per_block += 2 * (size_t)KILN_BLOCK * (size_t)man->layers[l].n_kv *
                     (size_t)man->layers[l].head_dim * (size_t)m->esize;
    if (man->n_layers) {
        size_t fr = 0, tot = 0;
        CU(cuMemGetInfo(&fr, &tot));
        long need = (long)man->max_seqs * m->max_blocks + 1;
        long fit = (long)((double)fr * m->o.kv_memory / (double)per_block);
        m->nblocks = (int)(fit < need ? fit : need);
        if (m->nblocks < 2)
            return kerr_add(err, "not enough GPU memory for the KV cache (%zu MiB free after the "
                                 "weights; one block of %d tokens needs %zu KiB): use a smaller "
                                 "model or raise --kv-memory",
                            fr >> 20, KILN_BLOCK, per_block >> 10);
        size_t o2 = 0;
        for (int l = 0; l < man->n_layers; l++) {
            size_t bytes = (size_t)m->nblocks * KILN_BLOCK * (size_t)man->layers[l].n_kv *
                           (size_t)man->layers[l].head_dim * (size_t)m->esize;
            m->kv_k[l] = o2;
            o2 += align_up(bytes);
            m->kv_v[l] = o2;
            o2 += align_up(bytes);
        }
        CU(cuMemAlloc(&m->kv, o2));
        CU(cuMemsetD8(m->kv, 0, o2));
    }
    return 0;
}

kmodel *km_load(const char *dir, const km_opts *o, kerr *err)
{
    double t0 = util_now();
    kmodel *m = xcalloc(1, sizeof *m);
    m->o = *o;
    if (m->o.kv_memory <= 0 || m->o.kv_memory > 1)
        m->o.kv_memory = 0.9;
    char *path = util_path_join(dir, "model.kiln");
    if (!util_is_dir(dir)) {
        kerr_add(err, "%s: not a folder (expected the output of kilnc compile)", dir);
        goto fail;
    }
    m->af = ka_read(path, err);
    if (!m->af)
        goto fail;
    m->m = &m->af->m;
    m->esize = 2;
    /* everything that can be checked without a GPU is checked first: ka_read has checked every
     * manifest field against its table, buffer or limit, so nothing below re-checks them */
    m->shard = ka_shard_open(m->af, dir, err);
    if (!m->shard)
        goto fail;
    /* the shard's data hash runs on the other cores from now until the weights are uploaded */
    int threads = util_cpus(HASH_MAX_THREADS) - 1;
    m->shard_job = ka_shard_hash_start(m->m, m->shard, threads < 1 ? 1 : threads);
    if (kcuda_load(&m->cu, err))
        goto fail;
    CUresult rc;
    if ((rc = m->cu.cuDeviceGet(&m->dev, 0)) ||
        (rc = m->cu.cuDeviceGetAttribute(&m->cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                         m->dev)) ||
        (rc = m->cu.cuDeviceGetAttribute(&m->cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                         m->dev)) ||
        (rc = m->cu.cuDeviceGetName(m->devname, sizeof m->devname, m->dev)) ||
        (rc = m->cu.cuDevicePrimaryCtxRetain(&m->ctx, m->dev)) ||
        (rc = m->cu.cuCtxSetCurrent(m->ctx)) ||
        (rc = m->cu.cuStreamCreate(&m->stream, CU_STREAM_NON_BLOCKING))) {
        kcuda_fail(&m->cu, rc, "device setup", __FILE__, __LINE__, err);
        goto fail;
    }
    const ka_blob *code;
    int is_ptx;
    if (pick_code(m, &code, &is_ptx, err))
        goto fail;
    if ((rc = m->cu.cuModuleLoadData(&m->mod, m->af->data + code->offset))) {
        kcuda_fail(&m->cu, rc, "cuModuleLoadData", __FILE__, __LINE__, err);
        goto fail;
    }
    m->fn = xcalloc((size_t)(m->m->nkernels ? m->m->nkernels : 1), sizeof(CUfunction));
    for (int i = 0; i < m->m->nkernels; i++) {
        if ((rc = m->cu.cuModuleGetFunction(&m->fn[i], m->mod, m->m->kernels[i].name))) {
            kerr_add(err, "%s: kernel '%s' is missing from the code for this GPU: rebuild",
                     path, m->m->kernels[i].name);
            goto fail;
        }
        if (m->m->kernels[i].smem > 48 * 1024 &&
            (rc = m->cu.cuFuncSetAttribute(m->fn[i], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                           m->m->kernels[i].smem))) {
            kcuda_fail(&m->cu, rc, "cuFuncSetAttribute(smem)", __FILE__, __LINE__, err);
            goto fail;
        }
    }
    double t_up = util_now();
    if (upload_weights(m, err))
        goto fail;
    double t_hash = util_now();
    uint64_t got = hash_finish(m->shard_job);
    m->shard_job = NULL;
    double t_done = util_now();
    if (ka_shard_hash_check(m->af, m->shard, got, err) || alloc_runtime(m, err))
        goto fail;
    m->gemm = kgemm_new(&m->cu, err);
    if (!m->gemm)
        goto fail;
    init_backend(m);
    m->load_s = util_now() - t0;
    char wb[32];
    size_t wbytes = 0;
    for (int i = 0; i < m->m->nweights; i++)
        wbytes += (size_t)m->m->weights[i].nbytes;
    snprintf(m->desc, sizeof m->desc,
             "%s (%s) on %s (sm_%d%d, %s%s): %s of weights (uploaded in %.2f s; their hash, on "
             "%d threads, verified %.0f ms after the upload), KV cache %d tokens in %d blocks",
             m->m->model_name, m->m->arch, m->devname, m->cc_major, m->cc_minor,
             is_ptx ? "PTX " : "", code->name, util_human_bytes((double)wbytes, wb, sizeof wb),
             t_hash - t_up, threads < 1 ? 1 : threads, (t_done - t_hash) * 1e3,
             (m->nblocks - 1) * KILN_BLOCK, m->nblocks - 1);
    free(path);
    return m;
fail:
    free(path);
    km_free(m);
    return NULL;
}

void km_free(kmodel *m)
{
    if (!m)
        return;
    if (m->cu.lib) {
        if (m->ctx)
            m->cu.cuCtxSetCurrent(m->ctx); /* the backend's free may run on another thread */
        for (int i = 0; i < MAX_BUCKETS; i++)
            if (m->graphs[i])
                m->cu.cuGraphExecDestroy(m->graphs[i]);
        kgemm_free(m->gemm);
        CUdeviceptr bufs[] = {m->warena, m->consts, m->slab, m->scratch, m->logits, m->logits_all,
                              m->out, m->meta, m->kv, m->d_params, m->d_ids};
        for (size_t i = 0; i < ARRAY_LEN(bufs); i++)
            if (bufs[i])
                m->cu.cuMemFree(bufs[i]);
        if (m->h_meta)
            m->cu.cuMemFreeHost(m->h_meta);
        if (m->h_params)
            m->cu.cuMemFreeHost(m->h_params);
        if (m->h_ids)
            m->cu.cuMemFreeHost(m->h_ids);
        if (m->h_lp)
            m->cu.cuMemFreeHost(m->h_lp);
        if (m->mod)
            m->cu.cuModuleUnload(m->mod);
        if (m->stream)
            m->cu.cuStreamDestroy(m->stream);
        if (m->ctx)
            m->cu.cuDevicePrimaryCtxRelease(m->dev);
        kcuda_unload(&m->cu);
    }
    hash_abort(m->shard_job); /* its threads read the mapping st_close unmaps */
    st_close(m->shard);
    ka_file_free(m->af);
    free(m->fn);
    free(m->woff);
    free(m->coff);
    free(m->kv_k);
    free(m->kv_v);
    free(m);
}

/* ---------------------------------------------------------------- running a schedule */

static CUdeviceptr ptr_of(kmodel *m, const ka_arg *a, CUdeviceptr logits)
{
    switch (a->kind) {
    case KA_ARG_BUF: return m->slab + (CUdeviceptr)a->i;
    case KA_ARG_SCRATCH: return m->scratch + (CUdeviceptr)a->i;
    case KA_ARG_WEIGHT: return m->warena + m->woff[a->i];
    case KA_ARG_CONST: return m->consts + m->coff[a->i];
    case KA_ARG_KV_K: return m->kv + m->kv_k[a->i];
    case KA_ARG_KV_V: return m->kv + m->kv_v[a->i];
    case KA_ARG_LOGITS: return logits;
    case KA_ARG_OUT: return m->out;
    default: return 0;
    }
}

static unsigned grid_dim(const ka_grid *g, int T, int S, int Q)
{
    long v = (long)g->t * T + (long)g->s * S + (long)g->q * Q + g->add;
    return (unsigned)((v + g->div - 1) / g->div);
}

/* Launches the steps of one schedule for T tokens of S sequences (Q: most tokens of one). */
static int run_steps(kmodel *m, const ka_step *steps, int n, int T, int S, int Q, int all_logits,
                     CUdeviceptr logits, kerr *err)
{
    const ka_manifest *man = m->m;
    int f16 = strcmp(man->dtype, "f16") == 0;
    kiln_step st = m->st;
    st.T = T;
    st.n_seqs = S;
    for (int i = 0; i < n; i++) {
        const ka_step *s = &steps[i];
        if ((s->logits == KA_LOGITS_LAST && all_logits) || (s->logits == KA_LOGITS_ALL && !all_logits))
            continue;
        int rows = s->rows == KA_ROWS_S ? S : T;
        if ((s->size == KA_SIZE_SMALL && rows > man->gemv_max) ||
            (s->size == KA_SIZE_LARGE && rows <= man->gemv_max))
            continue;
        if (s->kind == KA_GEMM) {
            if (kgemm_run(m->gemm, m->stream, f16, s->out_f32, rows, s->n, s->k,
                          ptr_of(m, &s->x, logits), s->ldx, ptr_of(m, &s->w, logits),
                          ptr_of(m, &s->bias, logits), ptr_of(m, &s->y, logits), s->ldy, err))
                return kerr_add(err, "in step %d (%s)", i, s->label);
            continue;
        }
        union {
            CUdeviceptr p;
            int i;
            float f;
        } val[KA_MAX_ARGS];
        void *params[KA_MAX_ARGS];
        for (int k = 0; k < s->nargs; k++) {
            const ka_arg *a = &s->args[k];
            switch (a->kind) {
            case KA_ARG_STEP: params[k] = &st; continue;
            case KA_ARG_I32: val[k].i = (int)a->i; break;
            case KA_ARG_F32: val[k].f = (float)a->f; break;
            case KA_ARG_M: val[k].i = rows; break;
            default: val[k].p = ptr_of(m, a, logits); break;
            }
            params[k] = &val[k];
        }
        unsigned gx = grid_dim(&s->grid[0], T, S, Q), gy = grid_dim(&s->grid[1], T, S, Q),
                 gz = grid_dim(&s->grid[2], T, S, Q);
        if (!gx || !gy || !gz)
            continue;
        const ka_kernel *kk = &man->kernels[s->kernel];
        CUresult rc = m->cu.cuLaunchKernel(m->fn[s->kernel], gx, gy, gz, (unsigned)kk->block, 1, 1,
                                           (unsigned)kk->smem, m->stream, params, NULL);
        if (rc != CUDA_SUCCESS) {
            kcuda_fail(&m->cu, rc, "cuLaunchKernel", __FILE__, __LINE__, err);
            return kerr_add(err, "launching %s for step %d (%s), grid %u,%u,%u", kk->name, i,
                            s->label, gx, gy, gz);
        }
    }
    return 0;
}

/* Uploads the used parts of the step arrays. */
static int upload_meta(kmodel *m, int T, int S, kerr *err)
{
    struct {
        size_t off, n;
    } parts[] = {{m->o_ids, (size_t)T},     {m->o_pos, (size_t)T},
                 {m->o_type, (size_t)T},    {m->o_seq, (size_t)T},
                 {m->o_slot, (size_t)T},    {m->o_start, (size_t)S + 1},
                 {m->o_kvlen, (size_t)S},   {m->o_bt, (size_t)S * (size_t)m->max_blocks}};
    for (size_t i = 0; i < ARRAY_LEN(parts); i++)
        CU(cuMemcpyHtoDAsync(m->meta + parts[i].off, (char *)m->h_meta + parts[i].off,
                             sizeof(int32_t) * parts[i].n, m->stream));
    return 0;
}

#define H(o) ((int32_t *)((char *)m->h_meta + (o)))

/* ---------------------------------------------------------------- the step */

/* Fills the host step arrays from the items: row r holds item r's tokens [start[r], start[r+1]);
 * rows n .. rows-1 are padding (one token each, at position 0, writing the scratch block 0 and
 * reading nothing else). Returns the tokens of the step; *q gets the most tokens of one row. */
static int fill_step(kmodel *m, const kb_item *items, int n, int rows, int *q)
{
    const ka_manifest *man = m->m;
    int32_t *ids = H(m->o_ids), *pos = H(m->o_pos), *typ = H(m->o_type), *sq = H(m->o_seq),
            *slot = H(m->o_slot), *start = H(m->o_start), *kvl = H(m->o_kvlen);
    int T = 0;
    *q = 1;
    for (int r = 0; r < rows; r++) {
        int32_t *bt = H(m->o_bt) + (size_t)r * (size_t)m->max_blocks;
        start[r] = T;
        if (r >= n) { /* padding */
            memset(bt, 0, sizeof(int32_t) * (size_t)m->max_blocks);
            ids[T] = pos[T] = typ[T] = slot[T] = 0;
            sq[T++] = r;
            kvl[r] = 1;
            continue;
        }
        /* the scheduler checked the items against kb_info: a violation is a kiln bug */
        const kb_item *it = &items[r];
        assert(it->n >= 1 && it->pos >= 0 && it->pos + it->n <= man->max_seq_len);
        assert(T + it->n <= m->cap_tok);
        assert(it->nblocks >= (it->pos + it->n + KILN_BLOCK - 1) / KILN_BLOCK &&
               it->nblocks <= m->max_blocks);
        for (int b = 0; b < m->max_blocks; b++) {
            bt[b] = b < it->nblocks ? it->blocks[b] : 0;
            assert(b >= it->nblocks || (bt[b] >= 1 && bt[b] <= m->info.kv_blocks));
        }
        for (int k = 0; k < it->n; k++) {
            int p = it->pos + k;
            assert(it->ids[k] >= 0 && it->ids[k] < man->vocab);
            ids[T] = it->ids[k];
            pos[T] = p;
            typ[T] = it->types ? it->types[k] : 0;
            sq[T] = r;
            slot[T] = man->n_layers ? bt[p / KILN_BLOCK] * KILN_BLOCK + p % KILN_BLOCK : -1;
            T++;
        }
        kvl[r] = it->pos + it->n;
        if (it->n > *q)
            *q = it->n;
    }
    start[rows] = T;
    return T;
}

/* Decode batches run in buckets of 1, 2, 4, ... rows, the last one max_seqs. */
static int bucket_rows(const kmodel *m, int n)
{
    int b = 1;
    while (b < n)
        b *= 2;
    return b < m->m->max_seqs ? b : m->m->max_seqs;
}

/* A graph slot per bucket: log2 of the bucket, rounded up (max_seqs, the only bucket that may
 * not be a power of two, is above every other). */
static int bucket_index(int rows)
{
    int i = 0;
    while ((1 << i) < rows)
        i++;
    return i;
}

/* The decode schedule for `rows` rows of one token each, replayed from the bucket's CUDA graph
 * (captured on first use; without graphs when capture fails or --no-graphs). */
static int decode_step(kmodel *m, int rows, kerr *err)
{
    const ka_manifest *man = m->m;
    int bi = bucket_index(rows);
    if (!m->o.no_graphs && !m->graphs_failed && bi < MAX_BUCKETS) {
        if (!m->graphs[bi]) {
            CUgraph g = NULL;
            CUresult rc =
                m->cu.cuStreamBeginCapture(m->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
            int ok = rc == CUDA_SUCCESS;
            kerr cap;
            kerr_clear(&cap);
            if (ok)
                ok = run_steps(m, man->decode, man->ndecode, rows, rows, 1, 0, m->logits, &cap) ==
                     0;
            if (rc == CUDA_SUCCESS)
                ok = m->cu.cuStreamEndCapture(m->stream, &g) == CUDA_SUCCESS && ok;
            if (ok)
                ok = m->cu.cuGraphInstantiateWithFlags(&m->graphs[bi], g, 0) == CUDA_SUCCESS;
            if (g)
                m->cu.cuGraphDestroy(g);
            if (!ok) {
                m->graphs[bi] = NULL;
                m->graphs_failed = 1;
                if (!m->o.quiet)
                    fprintf(stderr, "kiln: note: CUDA graph capture failed (%s); decoding without "
                                    "graphs\n",
                            cap.n ? kerr_msg(&cap) : "driver refused");
            }
        }
        if (m->graphs[bi]) {
            CU(cuGraphLaunch(m->graphs[bi], m->stream));
            return 0;
        }
    }
    return run_steps(m, man->decode, man->ndecode, rows, rows, 1, 0, m->logits, err);
}

/* The prefill schedule over the filled step (T tokens in n rows). With `all`, every position's
 * logits go to logits_all: the rows of items that asked for them are copied to the host, and the
 * last row of each sampling item to its row of the sampling buffer. */
static int prefill_step(kmodel *m, const kb_item *items, int n, int T, int Q, int all, kerr *err)
{
    const ka_manifest *man = m->m;
    if (all && !m->logits_all) { /* [max_tokens, vocab] floats, on first use */
        m->logits_all_rows = (size_t)man->max_tokens;
        CU(cuMemAlloc(&m->logits_all, sizeof(float) * m->logits_all_rows * (size_t)man->vocab));
    }
    if (upload_meta(m, T, n, err) ||
        run_steps(m, man->prefill, man->nprefill, T, n, Q, all, all ? m->logits_all : m->logits,
                  err))
        return -1;
    if (!all)
        return 0;
    const int32_t *start = H(m->o_start);
    size_t row = sizeof(float) * (size_t)man->vocab;
    for (int r = 0; r < n; r++) {
        const kb_item *it = &items[r];
        if (it->prompt_logits)
            CU(cuMemcpyDtoHAsync(it->prompt_logits, m->logits_all + (size_t)start[r] * row,
                                 row * (size_t)it->n, m->stream));
        if (it->sample)
            CU(cuMemcpyDtoDAsync(m->logits + (size_t)r * row,
                                 m->logits_all + (size_t)(start[r] + it->n - 1) * row, row,
                                 m->stream));
    }
    return 0;
}

/* After the schedule: samples the rows whose item asks (row r of the sampling buffer is item
 * r's last position), queues the copies to the host (sampled ids, the logits rows of items
 * that want logprobs, embeddings), waits for the stream once, and fills the items' outputs. */
static int finish_step(kmodel *m, kb_item *items, int n, kerr *err)
{
    const ka_manifest *man = m->m;
    size_t V = (size_t)man->vocab;
    int any = 0, lp = 0;
    for (int r = 0; r < n; r++) {
        any |= items[r].sample;
        lp |= items[r].sample && items[r].logprobs > 0;
    }
    if (lp && !m->h_lp) /* pinned [max_seqs, vocab], on first use */
        CU(cuMemAllocHost((void **)&m->h_lp, sizeof(float) * V * (size_t)man->max_seqs));
    if (any) {
        assert(man->sample_kernel >= 0); /* embedding models sample nothing */
        for (int r = 0; r < n; r++) { /* rows not sampled: greedy, one cheap pass */
            memset(&m->h_params[r], 0, sizeof(kiln_sample));
            if (items[r].sample)
                m->h_params[r] = items[r].sp;
        }
        CU(cuMemcpyHtoDAsync(m->d_params, m->h_params, sizeof(kiln_sample) * (size_t)n, m->stream));
        kiln_step st = m->st;
        st.T = n;
        st.n_seqs = n;
        CUdeviceptr lg = m->logits, par = m->d_params, ids = m->d_ids;
        void *params[] = {&st, &lg, &par, &ids};
        const ka_kernel *kk = &man->kernels[man->sample_kernel];
        CU(cuLaunchKernel(m->fn[man->sample_kernel], (unsigned)n, 1, 1, (unsigned)kk->block, 1, 1,
                          (unsigned)kk->smem, m->stream, params, NULL));
        CU(cuMemcpyDtoHAsync(m->h_ids, m->d_ids, sizeof(int32_t) * (size_t)n, m->stream));
        for (int r = 0; r < n; r++) /* the rows the sampler read (it does not write them) */
            if (items[r].sample && items[r].logprobs > 0)
                CU(cuMemcpyDtoHAsync(m->h_lp + (size_t)r * V,
                                     m->logits + (size_t)r * V * sizeof(float), sizeof(float) * V,
                                     m->stream));
    }
    if (man->output_pool)
        for (int r = 0; r < n; r++) {
            assert(items[r].embedding);
            CU(cuMemcpyDtoHAsync(items[r].embedding,
                                 m->out + (size_t)r * (size_t)man->hidden * sizeof(float),
                                 sizeof(float) * (size_t)man->hidden, m->stream));
        }
    CU(cuStreamSynchronize(m->stream));
    for (int r = 0; r < n; r++) {
        kb_item *it = &items[r];
        if (!it->sample)
            continue;
        it->token = m->h_ids[r];
        it->logprob = 0;
        if (it->logprobs > 0)
            kb_logprobs(m->h_lp + (size_t)r * V, man->vocab, it->token, it->logprobs, &it->logprob,
                        it->top_ids, it->top_logprobs);
    }
    return 0;
}

/* backend.h's step. One token per item and nothing but the next token wanted: the decode
 * schedule over a padded bucket from its CUDA graph. Anything else (prefill chunks, with or
 * without decodes among them, prompt logits, embeddings): the prefill schedule, which handles
 * sequences whose cache already holds earlier tokens (that is how chunked prefill works). */
static int engine_step(kbackend *b, kb_item *items, int n, kerr *err)
{
    kmodel *m = (kmodel *)((char *)b - offsetof(kmodel, kb));
    const ka_manifest *man = m->m;
    assert(n >= 1 && n <= man->max_seqs);
    CU(cuCtxSetCurrent(m->ctx)); /* steps may run on another thread than km_load's */
    int decode = !man->output_pool, all = 0, Q;
    for (int r = 0; r < n; r++) {
        decode &= items[r].n == 1 && !items[r].prompt_logits;
        all |= items[r].prompt_logits != NULL;
    }
    if (decode) {
        int rows = bucket_rows(m, n);
        fill_step(m, items, n, rows, &Q);
        if (upload_meta(m, rows, rows, err) || decode_step(m, rows, err))
            return -1;
    } else {
        int T = fill_step(m, items, n, n, &Q);
        assert(T <= man->max_tokens);
        if (prefill_step(m, items, n, T, Q, all, err))
            return -1;
    }
    return finish_step(m, items, n, err);
}

static const char *engine_describe(kbackend *b)
{
    return ((kmodel *)((char *)b - offsetof(kmodel, kb)))->desc;
}

static void engine_free(kbackend *b) { km_free((kmodel *)((char *)b - offsetof(kmodel, kb))); }

kbackend *km_backend(kmodel *m) { return &m->kb; }

/* kb_info from the manifest (km_load, once the cache is sized). */
static void init_backend(kmodel *m)
{
    const ka_manifest *man = m->m;
    _Static_assert(sizeof(int) == sizeof(int32_t), "the manifest's eos ids are ints");
    kb_info *in = &m->info;
    in->model = man->model_name;
    in->max_seqs = man->max_seqs;
    in->max_tokens = man->max_tokens;
    in->max_seq_len = man->max_seq_len;
    in->vocab = man->vocab;
    in->type_vocab = man->type_vocab;
    in->hidden = man->hidden;
    in->embed = man->output_pool;
    /* block 0 is the padding rows' scratch; a model without KV layers has no cache, and any
     * block ids do (the limits' worth, so the scheduler never waits for blocks) */
    in->kv_blocks = man->n_layers ? m->nblocks - 1 : man->max_seqs * m->max_blocks;
    in->n_eos = man->n_eos;
    in->eos = (const int32_t *)man->eos;
    m->kb.info = in;
    m->kb.step = engine_step;
    m->kb.describe = engine_describe;
    m->kb.free = engine_free;
}
