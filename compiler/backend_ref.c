/* backend_ref — see backend_ref.h.
 *
 * Opening: kc_open and the passes up to bind_weights, exactly as `kilnc ref` does (the reference
 * interprets the unfused graph), then the generation defaults through ovr_generation (the code
 * kilnc compile uses for the manifest, so eos ids and sampling defaults are read and checked in
 * one place), then one `ref` per slot, each with a KV cache of max_seq_len tokens (calloc'd, so
 * untouched pages cost nothing).
 *
 * A step runs each item on its slot's `ref`: a new sequence (pos 0) resets it, then the item's
 * tokens are appended with ref_forward (longrope and dynamic NTK at the item's rope_len), which returns the
 * logits of every appended position (or the pooled vector of an embedding model, a classifier's
 * scores). Items of one step share nothing but the read-only graph and weights, so they run in
 * parallel, one thread per core at most; the result does not
 * depend on the number of threads. Sampling is kb_sample_cpu (the GPU sampler's CPU twin) on the
 * last position's logits.
 */
#include "backend_ref.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kc.h"
#include "overrides.h"
#include "pipeline.h"
#include "posenc.h"
#include "quant.h"
#include "ref.h"

#define KBR_MAX_THREADS 64

typedef struct kbr {
    kbackend b; /* first: the kbackend * handed out is this struct */
    kb_info info;
    kc c;       /* config, mapped checkpoint and graph: what every ref reads */
    ref **refs; /* [max_seqs], one sequence each */
    int32_t *eos;
    ka_gen gen;
    char *model;
    char *line; /* describe() */
    char **labels; /* classify: [info.hidden] */
    int threads;
} kbr;

/* One step's shared state: workers take items by index. */
typedef struct work {
    kbr *k;
    kb_item *items;
    int n;
    atomic_int next;
    atomic_int failed;
    kerr *errs; /* [threads]: one per worker, the first failure's is reported */
} work;

/* ---------------------------------------------------------------- one item */

static int run_item(kbr *k, kb_item *it, kerr *err)
{
    const kb_info *in = &k->info;
    assert(it->slot >= 0 && it->slot < in->max_seqs);
    assert(it->n >= 1 && it->n <= in->max_tokens);
    ref *r = k->refs[it->slot];
    if (it->pos == 0)
        ref_reset(r);
    /* the scheduler appends to a sequence in order, or restarts it at 0 */
    assert(it->pos == ref_len(r));
    ref_set_rope_len(r, it->rope_len > 0 ? it->rope_len : 0);
    int64_t *ids = xmalloc(sizeof(int64_t) * (size_t)it->n);
    int64_t *types = it->types ? xmalloc(sizeof(int64_t) * (size_t)it->n) : NULL;
    for (int i = 0; i < it->n; i++) {
        ids[i] = it->ids[i];
        if (types)
            types[i] = it->types[i];
    }
    int rc = ref_forward(r, ids, types, it->n, err);
    free(ids);
    free(types);
    if (rc)
        return -1;
    int rows, cols;
    const float *out = ref_output(r, &rows, &cols);
    if (in->embed) {
        assert(rows == 1 && cols == in->hidden);
        if (it->embedding)
            memcpy(it->embedding, out, sizeof(float) * (size_t)cols);
        return 0;
    }
    assert(rows == it->n && cols == in->vocab);
    if (it->prompt_logits)
        memcpy(it->prompt_logits, out, sizeof(float) * (size_t)rows * (size_t)cols);
    if (it->sample) {
        const float *last = out + (size_t)(rows - 1) * (size_t)cols;
        it->token = kb_sample_cpu(last, cols, &it->sp, KILN_SAMPLE_THREADS);
        /* the sampled token's own log-probability is cheap next to the forward: always given */
        kb_logprobs(last, cols, it->token, it->logprobs, &it->logprob, it->top_ids,
                    it->top_logprobs);
    }
    return 0;
}

static void run_items(work *w, kerr *err)
{
    while (!atomic_load(&w->failed)) {
        int i = atomic_fetch_add(&w->next, 1);
        if (i >= w->n)
            break;
        if (run_item(w->k, &w->items[i], err))
            atomic_store(&w->failed, 1);
    }
}

typedef struct worker {
    work *w;
    kerr *err;
} worker;

static void *worker_main(void *p)
{
    worker *a = p;
    run_items(a->w, a->err);
    return NULL;
}

/* ---------------------------------------------------------------- the backend */

static int kbr_step(kbackend *b, kb_item *items, int n, kerr *err)
{
    kbr *k = (kbr *)b;
    assert(n >= 0 && n <= k->info.max_seqs);
    int nt = n < k->threads ? n : k->threads;
    if (nt <= 1) {
        for (int i = 0; i < n; i++)
            if (run_item(k, &items[i], err))
                return -1;
        return 0;
    }
    work w = {.k = k, .items = items, .n = n};
    atomic_init(&w.next, 0);
    atomic_init(&w.failed, 0);
    w.errs = xcalloc((size_t)nt, sizeof(kerr));
    pthread_t th[KBR_MAX_THREADS];
    worker args[KBR_MAX_THREADS];
    int started = 0;
    /* the calling thread is worker 0; a thread that cannot start leaves its share to the others */
    for (int t = 1; t < nt; t++) {
        args[t] = (worker){&w, &w.errs[t]};
        if (pthread_create(&th[started + 1], NULL, worker_main, &args[t]) != 0)
            break;
        started++;
    }
    run_items(&w, &w.errs[0]);
    for (int t = 1; t <= started; t++)
        pthread_join(th[t], NULL);
    int rc = 0;
    if (atomic_load(&w.failed)) {
        for (int t = 0; t < nt; t++)
            if (w.errs[t].n) {
                kerr_add(err, "%s", kerr_msg(&w.errs[t]));
                break;
            }
        rc = -1;
    }
    free(w.errs);
    return rc;
}

static const char *kbr_describe(kbackend *b)
{
    return ((kbr *)b)->line;
}

static void kbr_free(kbackend *b)
{
    kbr *k = (kbr *)b;
    if (!k)
        return;
    for (int i = 0; k->refs && i < k->info.max_seqs; i++)
        ref_free(k->refs[i]);
    free(k->refs);
    kc_free(&k->c);
    free(k->eos);
    free(k->model);
    free(k->line);
    config_labels_free(k->labels, k->info.hidden);
    free(k);
}

/* ---------------------------------------------------------------- opening */

/* An option against its range; "what" says where the bound comes from. */
static int check_opt(const char *flag, int v, int lo, int hi, const char *why, kerr *err)
{
    if (v >= lo && v <= hi)
        return 0;
    return kerr_add(err, "%s %d is out of range: expected %d to %d%s", flag, v, lo, hi, why);
}

/* The limits: options checked against the model and each other, defaults filled in. */
static int set_limits(kbr *k, const kbr_opts *o, kerr *err)
{
    kb_info *in = &k->info;
    int64_t maxpos = 0;
    if (config_int(k->c.cfg, "max_position_embeddings", 1, 0, &maxpos, err))
        return -1;
    int64_t maxlen = posenc_max_len(k->c.g, maxpos); /* dynamic NTK: times its factor */
    int seq_cap = maxlen > 0 && maxlen < KA_MAX_SEQ_LEN ? (int)maxlen : KA_MAX_SEQ_LEN;
    char why[256] = "";
    if (maxlen > 0)
        snprintf(why, sizeof why, " (the model's max_position_embeddings in %s%s)",
                 k->c.cfg->path, maxlen != maxpos ? ", times dynamic NTK's factor" : "");
    if (check_opt("--max-batch", o->max_batch ? o->max_batch : 8, 1, KBR_MAX_BATCH, "", err) ||
        check_opt("--max-seq-len", o->max_seq_len ? o->max_seq_len : 1, 1, seq_cap, why, err))
        return -1;
    in->max_seqs = o->max_batch ? o->max_batch : 8;
    in->max_seq_len = o->max_seq_len ? o->max_seq_len
                      : seq_cap < KBR_DEFAULT_SEQ_LEN ? seq_cap
                                                      : KBR_DEFAULT_SEQ_LEN;
    /* a decode step carries one token per sequence */
    if (o->max_tokens) {
        if (check_opt("--max-tokens", o->max_tokens, in->max_seqs, KBR_MAX_TOKENS,
                      " (at least --max-batch: a decode step carries one token per sequence)",
                      err))
            return -1;
        in->max_tokens = o->max_tokens;
    } else {
        in->max_tokens = in->max_seqs > 256 ? in->max_seqs : 256;
    }
    /* one sequence of max_seq_len must fit, else it could never finish; more than every slot
     * full could never be used; and the scheduler counts the cache's positions (blocks x
     * KILN_BLOCK) in an int: 256 sequences of 2^24 tokens would be 2^32 of them */
    int per_seq = (in->max_seq_len + KILN_BLOCK - 1) / KILN_BLOCK; /* <= 2^24/32 */
    int64_t all_slots = (int64_t)per_seq * in->max_seqs;
    int most = all_slots < INT32_MAX / KILN_BLOCK ? (int)all_slots : INT32_MAX / KILN_BLOCK;
    if (o->kv_blocks) {
        char kwhy[256];
        snprintf(kwhy, sizeof kwhy,
                 " (%d tokens a block: at least one sequence of --max-seq-len %d, at most "
                 "--max-batch %d of them, and at most %d blocks in all)",
                 KILN_BLOCK, in->max_seq_len, in->max_seqs, INT32_MAX / KILN_BLOCK);
        if (check_opt("--kv-blocks", o->kv_blocks, per_seq, most, kwhy, err))
            return -1;
        in->kv_blocks = o->kv_blocks;
    } else {
        in->kv_blocks = most;
    }
    return 0;
}

/* vocab and hidden from the graph: where kilnc compile's lowering takes them (the LM head's
 * width, or for an embedding model the token table's rows and the pooled width). */
static void set_shapes(kbr *k)
{
    const kgraph *g = k->c.g;
    const kg_node *out = &g->nodes[g->output];
    kb_info *in = &k->info;
    in->classify = out->op == KG_SCORE; /* hidden: the number of labels */
    in->embed = out->op == KG_POOL || in->classify;
    if (in->embed) {
        in->hidden = (int)out->shape[1];
        for (int i = 0; i < g->n; i++)
            if (g->nodes[i].op == KG_EMBED && g->nodes[i].in[1] == g->inputs[KG_IN_IDS])
                in->vocab = (int)g->nodes[g->nodes[i].in[0]].shape[0];
    } else {
        in->vocab = (int)out->shape[1];
        in->hidden = (int)g->nodes[out->in[0]].shape[1];
    }
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i].op == KG_EMBED && g->nodes[i].in[1] == g->inputs[KG_IN_TOKEN_TYPES])
            in->type_vocab = (int)g->nodes[g->nodes[i].in[0]].shape[0];
    in->rope_switch = (int)posenc_rope_switch(g); /* config.c: at most INT32_MAX */
}

kbackend *kbr_open(const char *model_dir, const kbr_opts *o, kerr *err)
{
    kbr *k = xcalloc(1, sizeof *k);
    kbr_opts none = {0};
    if (!o)
        o = &none;
    kc_opts ko = {.need_weights = 1, .calib_path = o->calib_path, .calib_tokens = o->calib_tokens};
    if (o->quant && !(ko.quant_mode = quant_mode_parse(o->quant))) {
        kerr_add(err, "--quant %s: expected fp8 or int4", o->quant);
        goto fail;
    }
    if (kc_open(&k->c, model_dir, &ko, err) || kc_run(&k->c, "bind_weights", NULL, NULL, err))
        goto fail;
    set_shapes(k);
    if (k->info.vocab < 1 || k->info.vocab > KA_MAX_VOCAB || k->info.hidden < 1 ||
        k->info.hidden > KA_MAX_HIDDEN) {
        kerr_add(err, "%s: vocabulary %d and width %d: expected 1 to %d and 1 to %d", model_dir,
                 k->info.vocab, k->info.hidden, KA_MAX_VOCAB, KA_MAX_HIDDEN);
        goto fail;
    }
    if (set_limits(k, o, err))
        goto fail;
    if (k->info.classify) {
        if (config_labels(k->c.cfg, k->info.hidden, &k->labels, err))
            goto fail;
        k->info.labels = (const char *const *)k->labels;
    }
    /* eos ids and sampling defaults, read and checked as for the manifest */
    ka_manifest m;
    memset(&m, 0, sizeof m);
    m.vocab = k->info.vocab;
    m.output_pool = k->info.embed;
    int rc = ovr_generation(k->c.model_dir, k->c.cfg, NULL, &m, NULL, NULL, err);
    k->gen = m.gen;
    k->info.gen = &k->gen;
    k->eos = xcalloc((size_t)(m.n_eos ? m.n_eos : 1), sizeof(int32_t));
    for (int i = 0; i < m.n_eos; i++)
        k->eos[i] = m.eos[i];
    k->info.n_eos = m.n_eos;
    free(m.eos);
    if (rc)
        goto fail;
    k->refs = xcalloc((size_t)k->info.max_seqs, sizeof(ref *));
    for (int i = 0; i < k->info.max_seqs; i++)
        if (!(k->refs[i] = ref_new(k->c.g, k->info.max_seq_len, err)))
            goto fail;
    k->model = util_base_name(model_dir);
    k->threads = util_cpus(KBR_MAX_THREADS);
    char qd[512];
    const char *q = quant_describe(&k->c, qd, sizeof qd);
    k->line = xasprintf("%s on the CPU (fp32 reference interpreter, %d thread%s): up to %d "
                        "sequences of %d tokens, %d tokens a step, %d KV blocks%s%s",
                        k->model, k->threads, k->threads == 1 ? "" : "s", k->info.max_seqs,
                        k->info.max_seq_len, k->info.max_tokens, k->info.kv_blocks,
                        q ? "; " : "", q ? q : "");
    k->info.model = k->model;
    k->info.eos = k->eos;
    k->b.info = &k->info;
    k->b.step = kbr_step;
    k->b.describe = kbr_describe;
    k->b.free = kbr_free;
    return &k->b;
fail:
    kbr_free(&k->b);
    return NULL;
}
