/* test_sched — the scheduler (runtime/sched.c) and the KV block allocator (runtime/kvcache.c),
 * over a fake backend.
 *
 * The fake is a toy model with a real paged KV cache: every item writes its token ids into the KV
 * blocks it was given, and reads the sequence's earlier tokens back from those blocks, so two
 * sequences sharing a block, a wrong block table or a lost prefix change what it computes. Its
 * logits at a position are a hash of the tokens up to there; greedy picks their argmax, a sampled
 * request (temperature > 0) hashes (sequence, seed, sp.index). It checks every step against
 * backend.h's contract (items and tokens within the limits, no slot twice, pos equal to the slot's
 * length or 0, rope_len at least pos + n, blocks covering pos + n, distinct within the step and in
 * range, an item of several tokens marked prefill, and with info.batch_invariant no step mixing
 * decode tokens with prefill chunks) and counts the violations, which every test asserts to be 0
 * (steps may run on another thread, so it does not call cmocka there). A request's expected output is the same request run alone on a roomy cache.
 */
#include "testutil.h"

#include <pthread.h>
#include <semaphore.h>
#include <time.h>

#include "kvcache.h"
#include "sched.h"

/* ------------------------------------------------------------ the fake backend */

#define FV 64           /* the toy model's vocabulary */
#define FHID 8          /* its embedding width */

typedef struct fake {
    kbackend b;
    kb_info info;
    int32_t eos[4];
    int32_t *hist;      /* [max_seqs][max_seq_len] each slot's sequence */
    int *len;           /* [max_seqs] */
    int32_t *kvmem;     /* [(kv_blocks + 1) * KILN_BLOCK] the token written at each KV row */
    int fail_at;        /* the step that fails (0: none) */
    int nsteps;
    int violations;
    char first[512];    /* the first violation */
    /* step log: per step, per item, the sequence's first token, pos and n */
    int log_steps;
    int logn[256];
    int logfirst[256][8], logpos[256][8], logn_tok[256][8], logrope[256][8], logprefill[256][8];
} fake;

static void violation(fake *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void violation(fake *f, const char *fmt, ...)
{
    if (!f->violations++) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(f->first, sizeof f->first, fmt, ap);
        va_end(ap);
    }
}
#define FCHECK(f, cond, ...) do { if (!(cond)) violation((f), __VA_ARGS__); } while (0)

static uint64_t mix(uint64_t h, uint64_t x)
{
    h ^= x + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static uint64_t prefix_hash(const int32_t *t, int n)
{
    uint64_t h = 1;
    for (int i = 0; i < n; i++)
        h = mix(h, (uint64_t)t[i]);
    return h;
}

/* The logits after a prefix whose hash is h. */
static void row_of(uint64_t h, float *row)
{
    for (int v = 0; v < FV; v++)
        row[v] = (float)((mix(h, (uint64_t)v + 1) >> 40) % 1000) / 100.0f;
}

/* The token the toy model picks after a sequence with hash h. */
static int32_t pick(uint64_t h, const kiln_sample *sp)
{
    if (sp->temperature > 0)
        return (int32_t)(mix(mix(h, sp->seed), (uint64_t)sp->index) % FV);
    float row[FV];
    row_of(h, row);
    return (int32_t)tu_argmax(row, FV);
}

static int fake_step(kbackend *b, kb_item *items, int n, kerr *err)
{
    fake *f = (fake *)b;
    const kb_info *in = &f->info;
    f->nsteps++;
    if (f->fail_at && f->nsteps == f->fail_at)
        return kerr_add(err, "fake device: an illegal memory access at step %d", f->nsteps);
    FCHECK(f, n >= 1 && n <= in->max_seqs, "step %d: %d items (max_seqs %d)", f->nsteps, n,
           in->max_seqs);
    char slot_seen[64] = {0};
    char *block_seen = xcalloc((size_t)in->kv_blocks + 1, 1);
    int tokens = 0;
    int L = f->log_steps < 256 ? f->log_steps : -1;
    for (int k = 0; k < n && k < in->max_seqs; k++) {
        kb_item *it = &items[k];
        FCHECK(f, it->n == 1 || it->prefill, "step %d item %d: %d tokens not marked prefill",
               f->nsteps, k, it->n);
        FCHECK(f, !in->batch_invariant || it->prefill == items[0].prefill,
               "step %d: items %d and 0 are a decode and a prefill chunk in one step of a "
               "batch-invariant backend", f->nsteps, k);
        if (it->slot < 0 || it->slot >= in->max_seqs || slot_seen[it->slot]) {
            violation(f, "step %d item %d: slot %d out of range or used twice", f->nsteps, k,
                      it->slot);
            continue;
        }
        slot_seen[it->slot] = 1;
        int32_t *h = f->hist + (size_t)it->slot * in->max_seq_len;
        if (it->pos == 0)
            f->len[it->slot] = 0;
        if (it->pos != f->len[it->slot] || it->n < 1 || it->pos + it->n > in->max_seq_len) {
            violation(f, "step %d slot %d: pos %d n %d, but the slot holds %d tokens", f->nsteps,
                      it->slot, it->pos, it->n, f->len[it->slot]);
            continue;
        }
        tokens += it->n;
        FCHECK(f, it->rope_len >= it->pos + it->n && it->rope_len <= in->max_seq_len,
               "step %d slot %d: rope_len %d for pos %d n %d", f->nsteps, it->slot, it->rope_len,
               it->pos, it->n);
        if (it->nblocks != kv_blocks_for(it->pos + it->n)) {
            violation(f, "step %d slot %d: %d blocks for %d tokens", f->nsteps, it->slot,
                      it->nblocks, it->pos + it->n);
            continue;
        }
        int ok = 1;
        for (int j = 0; j < it->nblocks && ok; j++) {
            int32_t bl = it->blocks[j];
            ok = bl >= 1 && bl <= in->kv_blocks && !block_seen[bl];
            FCHECK(f, ok, "step %d slot %d: block %d out of range or held twice", f->nsteps,
                   it->slot, bl);
            if (ok)
                block_seen[bl] = 1;
        }
        if (!ok)
            continue;
        /* the earlier tokens must still be in this sequence's blocks */
        for (int p = 0; p < it->pos && ok; p++) {
            ok = f->kvmem[it->blocks[p / KILN_BLOCK] * KILN_BLOCK + p % KILN_BLOCK] == h[p];
            FCHECK(f, ok, "step %d slot %d: KV position %d was overwritten", f->nsteps, it->slot,
                   p);
        }
        uint64_t hh = prefix_hash(h, it->pos);
        for (int i = 0; i < it->n; i++) {
            int p = it->pos + i;
            h[p] = it->ids[i];
            f->kvmem[it->blocks[p / KILN_BLOCK] * KILN_BLOCK + p % KILN_BLOCK] = it->ids[i];
            hh = mix(hh, (uint64_t)it->ids[i]);
            if (it->prompt_logits)
                row_of(hh, it->prompt_logits + (size_t)i * FV);
        }
        f->len[it->slot] = it->pos + it->n;
        if (L >= 0 && k < 8) {
            f->logfirst[L][k] = h[0];
            f->logpos[L][k] = it->pos;
            f->logn_tok[L][k] = it->n;
            f->logrope[L][k] = it->rope_len;
            f->logprefill[L][k] = it->prefill;
        }
        if (in->embed) {
            FCHECK(f, it->pos == 0 && it->embedding && !it->sample,
                   "step %d: an embedding item must be a whole prompt, with a vector", f->nsteps);
            for (int i = 0; i < FHID && it->embedding; i++)
                it->embedding[i] = (float)(mix(hh, (uint64_t)i) % 1000) / 1000.0f;
        }
        if (it->sample) {
            it->token = pick(hh, &it->sp);
            if (it->logprobs > 0) {
                float row[FV];
                row_of(hh, row);
                kb_logprobs(row, FV, it->token, it->logprobs, &it->logprob, it->top_ids,
                            it->top_logprobs);
            }
        }
    }
    free(block_seen);
    FCHECK(f, tokens <= in->max_tokens, "step %d: %d tokens (max_tokens %d)", f->nsteps, tokens,
           in->max_tokens);
    if (L >= 0) {
        f->logn[L] = n < 8 ? n : 8;
        f->log_steps++;
    }
    return 0;
}

static const char *fake_describe(kbackend *b)
{
    (void)b;
    return "fake";
}

static void fake_free(kbackend *b)
{
    fake *f = (fake *)b;
    free(f->hist);
    free(f->len);
    free(f->kvmem);
    free(f);
}

static fake *fake_new(int max_seqs, int max_tokens, int max_seq_len, int kv_blocks)
{
    fake *f = xcalloc(1, sizeof *f);
    f->info = (kb_info){.model = "fake", .max_seqs = max_seqs, .max_tokens = max_tokens,
                        .max_seq_len = max_seq_len, .vocab = FV, .hidden = FHID,
                        .kv_blocks = kv_blocks, .eos = f->eos};
    f->hist = xcalloc((size_t)max_seqs * max_seq_len, sizeof *f->hist);
    f->len = xcalloc((size_t)max_seqs, sizeof *f->len);
    f->kvmem = xcalloc(((size_t)kv_blocks + 1) * KILN_BLOCK, sizeof *f->kvmem);
    f->b = (kbackend){.info = &f->info, .step = fake_step, .describe = fake_describe,
                      .free = fake_free};
    return f;
}

/* ------------------------------------------------------------ recording events */

#define MAXT 512

typedef struct rec {
    ksched *s;
    uint64_t id;            /* from the first event */
    int32_t toks[MAXT];
    float lp[MAXT];
    int ntop[MAXT];
    int32_t top0[MAXT];
    int n;
    int n_prompt_ev;
    float plp[MAXT];
    int32_t ptop0[MAXT];
    int finish, n_final, late, bad;
    int prompt_tokens, gen_tokens;
    float emb[FHID];
    int has_emb;
    char error[256];
    int cancel_at;          /* the callback cancels its own request after this many tokens */
    int gate_at;            /* the callback stops after this many tokens until the test says go */
    sem_t reached, go;
} rec;

static void on_event(const ks_event *ev)
{
    rec *r = ev->user;
    if (r->n_final) {
        r->late++;
        return;
    }
    if (!r->id)
        r->id = ev->id;
    if (ev->id != r->id)
        r->bad++;
    if (ev->prompt_pos >= 0) {
        if (r->n || ev->has_token || ev->prompt_pos != r->n_prompt_ev + 1 || ev->prompt_pos >= MAXT)
            r->bad++;
        else {
            r->plp[ev->prompt_pos] = ev->logprob;
            r->ptop0[ev->prompt_pos] = ev->n_top ? ev->top_ids[0] : -1;
        }
        r->n_prompt_ev++;
    }
    if (ev->has_token) {
        if (ev->index != r->n || r->n >= MAXT)
            r->bad++;
        else {
            r->lp[r->n] = ev->logprob;
            r->ntop[r->n] = ev->n_top;
            r->top0[r->n] = ev->n_top ? ev->top_ids[0] : -1;
            r->toks[r->n++] = ev->token;
        }
    }
    if (ev->gen_tokens != r->n)
        r->bad++;
    if (ev->finish) {
        r->n_final++;
        r->finish = ev->finish;
        r->prompt_tokens = ev->prompt_tokens;
        r->gen_tokens = ev->gen_tokens;
        if (ev->embedding) {
            memcpy(r->emb, ev->embedding, sizeof r->emb);
            r->has_emb = 1;
        }
        if (ev->error)
            snprintf(r->error, sizeof r->error, "%s", ev->error);
    } else if (r->cancel_at && r->n == r->cancel_at) {
        ks_cancel(r->s, ev->id);
    } else if (r->gate_at && r->n == r->gate_at) {
        sem_post(&r->reached);
        sem_wait(&r->go);
    }
}

/* The checks every request's record must pass: one final event, nothing after it, in order. */
static void assert_clean(const rec *r)
{
    assert_int_equal(r->n_final, 1);
    assert_int_equal(r->late, 0);
    assert_int_equal(r->bad, 0);
}

static ks_params params(const int32_t *prompt, int n_prompt, int max_new, rec *r)
{
    return (ks_params){.prompt = prompt, .n_prompt = n_prompt, .max_new = max_new,
                       .sp = {.temperature = 0, .top_p = 1}, .logprobs = -1,
                       .prompt_logprobs = -1, .cb = on_event, .user = r};
}

static ksched *sched_new(fake *f, int max_waiting)
{
    ks_opts o = {.max_waiting = max_waiting};
    return ks_new(&f->b, &o);
}

static uint64_t submit_ok(ksched *s, const ks_params *p)
{
    kerr e;
    kerr_clear(&e);
    uint64_t id = 0;
    int rc = ks_submit(s, p, &id, &e);
    if (rc != KS_OK)
        fail_msg("ks_submit: %d: %s", rc, kerr_msg(&e));
    assert_true(id > 0);
    ((rec *)p->user)->s = s;
    return id;
}

/* Steps until nothing is running or waiting; returns the steps that ran items. */
static int drain(ksched *s)
{
    kerr e;
    int steps = 0;
    for (int i = 0; i < 100000; i++) {
        kerr_clear(&e);
        int n = ks_step(s, &e);
        if (n < 0)
            fail_msg("ks_step: %s", kerr_msg(&e));
        steps += n > 0;
        ks_metrics m;
        ks_metrics_get(s, &m);
        if (m.running == 0 && m.waiting == 0)
            return steps;
        if (n == 0)     /* kiln run relies on it: a step with work to do runs something */
            fail_msg("ks_step ran nothing with %d requests running and %d waiting", m.running,
                     m.waiting);
    }
    fail_msg("the scheduler did not finish in 100000 steps");
    return -1;
}

static void assert_fake_ok(const fake *f)
{
    if (f->violations)
        fail_msg("the fake backend saw %d contract violations; the first: %s", f->violations,
                 f->first);
}

static void assert_kv_empty(ksched *s)
{
    ks_metrics m;
    ks_metrics_get(s, &m);
    assert_int_equal(m.kv_used, 0);
    assert_int_equal(m.running, 0);
    assert_int_equal(m.waiting, 0);
}

/* The request run alone on a roomy cache (same limits otherwise): its record. */
static void run_alone(const fake *like, const ks_params *p, rec *out)
{
    fake *f = fake_new(like->info.max_seqs, like->info.max_tokens, like->info.max_seq_len, 256);
    f->info.n_eos = like->info.n_eos;
    memcpy(f->eos, like->eos, sizeof f->eos);
    f->info.embed = like->info.embed;
    f->info.batch_invariant = like->info.batch_invariant;
    ksched *s = sched_new(f, 4);
    memset(out, 0, sizeof *out);
    ks_params q = *p;
    q.user = out;
    q.cb = on_event;
    q.prompt_logits = NULL;
    submit_ok(s, &q);
    drain(s);
    assert_clean(out);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

static void assert_same_tokens(const rec *got, const rec *want)
{
    if (got->n != want->n || memcmp(got->toks, want->toks, (size_t)got->n * sizeof *got->toks))
        fail_msg("request %llu: %d tokens differ from the %d of the same request run alone "
                 "(first token %d vs %d)", (unsigned long long)got->id, got->n, want->n,
                 got->n ? got->toks[0] : -1, want->n ? want->toks[0] : -1);
    assert_int_equal(got->finish, want->finish);
}

/* A prompt of n tokens: first token `first` (which names the request in the fake's log). */
static void make_prompt(int32_t *t, int n, int first, uint64_t seed)
{
    t[0] = first;
    for (int i = 1; i < n; i++)
        t[i] = (int32_t)(mix(seed, (uint64_t)i) % FV);
}

/* ------------------------------------------------------------ kvcache */

static void test_kvcache(void **state)
{
    (void)state;
    assert_int_equal(kv_blocks_for(0), 0);
    assert_int_equal(kv_blocks_for(1), 1);
    assert_int_equal(kv_blocks_for(KILN_BLOCK), 1);
    assert_int_equal(kv_blocks_for(KILN_BLOCK + 1), 2);
    kvcache *kv = kv_new(5);
    kv_seq a = {0}, b = {0};
    assert_int_equal(kv_total(kv), 5);
    assert_int_equal(kv_grow(kv, &a, 2 * KILN_BLOCK + 1), 0);     /* 3 blocks */
    assert_int_equal(a.n, 3);
    assert_int_equal(a.blocks[0], 1);
    assert_int_equal(a.blocks[2], 3);
    assert_int_equal(kv_grow(kv, &a, 3 * KILN_BLOCK), 0);         /* still 3 */
    assert_int_equal(a.n, 3);
    assert_int_equal(kv_used(kv), 3);
    /* all or nothing: 3 more do not fit in the 2 left, and nothing is taken */
    assert_int_equal(kv_grow(kv, &b, 3 * KILN_BLOCK), -1);
    assert_int_equal(b.n, 0);
    assert_int_equal(kv_free_blocks(kv), 2);
    assert_int_equal(kv_grow(kv, &b, 2 * KILN_BLOCK), 0);
    assert_int_equal(kv_free_blocks(kv), 0);
    for (int i = 0; i < a.n; i++)
        for (int j = 0; j < b.n; j++)
            assert_int_not_equal(a.blocks[i], b.blocks[j]);
    kv_release(kv, &a);
    assert_int_equal(a.n, 0);
    assert_int_equal(kv_used(kv), 2);
    /* released blocks are reused, in their old order */
    assert_int_equal(kv_grow(kv, &a, 1), 0);
    assert_int_equal(a.blocks[0], 1);
    kv_release(kv, &a);
    kv_release(kv, &b);
    assert_int_equal(kv_used(kv), 0);
    kv_seq_free(&a);
    kv_seq_free(&b);
    kv_free(kv);
}

/* ------------------------------------------------------------ scheduling */

/* Five requests, two slots: admitted in submission order, never more than two at once. */
static void test_fcfs(void **state)
{
    (void)state;
    fake *f = fake_new(2, 64, 256, 64);
    ksched *s = sched_new(f, 16);
    int32_t pr[5][8];
    rec r[5] = {0};
    for (int i = 0; i < 5; i++) {
        make_prompt(pr[i], 8, 10 + i, (uint64_t)i);
        ks_params p = params(pr[i], 8, 3 + i, &r[i]);
        submit_ok(s, &p);
    }
    kerr e;
    int order[5], n_order = 0;
    for (int step = 0; step < 1000; step++) {
        kerr_clear(&e);
        int before = f->log_steps;
        int n = ks_step(s, &e);
        assert_true(n >= 0);
        ks_metrics m;
        ks_metrics_get(s, &m);
        assert_true(m.running <= 2);
        for (int L = before; L < f->log_steps; L++)
            for (int k = 0; k < f->logn[L]; k++)
                if (f->logpos[L][k] == 0 && n_order < 5)
                    order[n_order++] = f->logfirst[L][k];
        if (m.running == 0 && m.waiting == 0)
            break;
    }
    assert_int_equal(n_order, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(order[i], 10 + i);
        assert_clean(&r[i]);
        assert_int_equal(r[i].finish, KS_LENGTH);
        assert_int_equal(r[i].n, 3 + i);
        assert_int_equal(r[i].prompt_tokens, 8);
        rec alone;
        ks_params p = params(pr[i], 8, 3 + i, NULL);
        run_alone(f, &p, &alone);
        assert_same_tokens(&r[i], &alone);
    }
    ks_metrics m;
    ks_metrics_get(s, &m);
    assert_int_equal(m.prompt_tokens, 40);
    assert_int_equal(m.generated_tokens, 3 + 4 + 5 + 6 + 7);
    assert_int_equal(m.preemptions, 0);
    assert_kv_empty(s);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* A 1000-token prompt with 64 tokens per step is split into chunks, and a running request keeps
 * decoding one token in every one of those steps. */
static void test_chunking(void **state)
{
    (void)state;
    fake *f = fake_new(4, 64, 2048, 128);
    ksched *s = sched_new(f, 16);
    int32_t a[5], *b = xmalloc(1000 * sizeof *b);
    make_prompt(a, 5, 1, 1);
    make_prompt(b, 1000, 2, 2);
    rec ra = {0}, rb = {0};
    ks_params pa = params(a, 5, 60, &ra);
    pa.ignore_eos = 1;
    submit_ok(s, &pa);
    kerr e;
    kerr_clear(&e);
    assert_int_equal(ks_step(s, &e), 1);        /* a's prefill, and its first token */
    assert_int_equal(ra.n, 1);
    ks_params pb = params(b, 1000, 2, &rb);
    submit_ok(s, &pb);
    int chunks = 0, start = f->log_steps;
    while (rb.n == 0) {
        int before = ra.n;
        kerr_clear(&e);
        assert_int_equal(ks_step(s, &e), 2);
        assert_int_equal(ra.n, before + 1);     /* a decoded in this step too */
        chunks++;
        assert_true(chunks <= 100);
    }
    /* 63 tokens per step beside a's decode: ceil(1000 / 63) = 16 chunks, in order */
    assert_int_equal(chunks, 16);
    int pos = 0;
    for (int L = start; L < f->log_steps; L++) {
        assert_int_equal(f->logn[L], 2);
        assert_int_equal(f->logfirst[L][0], 1);  /* the decode comes first */
        assert_int_equal(f->logn_tok[L][0], 1);
        assert_int_equal(f->logfirst[L][1], 2);
        assert_int_equal(f->logpos[L][1], pos);
        assert_true(f->logn_tok[L][1] <= 63);
        pos += f->logn_tok[L][1];
    }
    assert_int_equal(pos, 1000);
    drain(s);
    assert_clean(&ra);
    assert_clean(&rb);
    rec alone;
    run_alone(f, &pa, &alone);
    assert_same_tokens(&ra, &alone);
    run_alone(f, &pb, &alone);
    assert_same_tokens(&rb, &alone);
    assert_kv_empty(s);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
    free(b);
}

/* A batch-invariant backend (kb_info.batch_invariant): test_chunking's load, where a running
 * request decodes beside a 1000-token prompt's chunks, now runs each scheduler step as two
 * backend steps, the decode then the chunk, with the same chunks, the same token per step for the
 * decoding request, and nothing mixed; a 1-token prompt's chunk is marked prefill; then twelve
 * requests of mixed lengths (greedy and seeded), more than the slots, interleave with chunking and
 * still give what each gives alone. */
static void test_batch_invariant(void **state)
{
    (void)state;
    fake *f = fake_new(4, 64, 2048, 128);
    f->info.batch_invariant = 1;
    ksched *s = sched_new(f, 16);
    int32_t a[5], c[1], *b = xmalloc(1000 * sizeof *b);
    make_prompt(a, 5, 1, 1);
    make_prompt(b, 1000, 2, 2);
    make_prompt(c, 1, 3, 3);
    rec ra = {0}, rb = {0}, rc = {0};
    ks_params pa = params(a, 5, 60, &ra);
    pa.ignore_eos = 1;
    submit_ok(s, &pa);
    kerr e;
    kerr_clear(&e);
    assert_int_equal(ks_step(s, &e), 1);        /* a's prefill, and its first token */
    assert_int_equal(f->nsteps, 1);
    ks_params pb = params(b, 1000, 2, &rb);
    submit_ok(s, &pb);
    int chunks = 0, start = f->log_steps;
    while (rb.n == 0) {
        int before = ra.n, steps = f->nsteps;
        kerr_clear(&e);
        assert_int_equal(ks_step(s, &e), 2);
        assert_int_equal(ra.n, before + 1);     /* a decoded in this scheduler step too */
        assert_int_equal(f->nsteps, steps + 2); /* as a step of its own */
        chunks++;
        assert_true(chunks <= 100);
    }
    assert_int_equal(chunks, 16);               /* as test_chunking: 63 tokens beside a's decode */
    int pos = 0;
    for (int L = start; L < f->log_steps; L += 2) {
        assert_int_equal(f->logn[L], 1);        /* the decode, alone, first */
        assert_int_equal(f->logfirst[L][0], 1);
        assert_int_equal(f->logn_tok[L][0], 1);
        assert_int_equal(f->logprefill[L][0], 0);
        assert_int_equal(f->logn[L + 1], 1);    /* then b's chunk */
        assert_int_equal(f->logfirst[L + 1][0], 2);
        assert_int_equal(f->logpos[L + 1][0], pos);
        assert_int_equal(f->logprefill[L + 1][0], 1);
        assert_true(f->logn_tok[L + 1][0] <= 63);
        pos += f->logn_tok[L + 1][0];
    }
    assert_int_equal(pos, 1000);
    /* a 1-token prompt: its one chunk is a prefill item of one token, not among the decodes */
    ks_params pc = params(c, 1, 4, &rc);
    submit_ok(s, &pc);
    start = f->log_steps;
    kerr_clear(&e);
    assert_true(ks_step(s, &e) >= 2);
    int seen = 0;
    for (int L = start; L < f->log_steps; L++)
        for (int k = 0; k < f->logn[L]; k++)
            if (f->logfirst[L][k] == 3) {
                assert_int_equal(f->logn_tok[L][k], 1);
                assert_int_equal(f->logprefill[L][k], 1);
                assert_int_equal(f->logn[L], 1); /* (a and b decode in the step before) */
                seen++;
            }
    assert_int_equal(seen, 1);
    drain(s);
    rec alone;
    ks_params *ps[3] = {&pa, &pb, &pc};
    rec *rs[3] = {&ra, &rb, &rc};
    for (int i = 0; i < 3; i++) {
        assert_clean(rs[i]);
        run_alone(f, ps[i], &alone);
        assert_same_tokens(rs[i], &alone);
    }
    assert_kv_empty(s);

    /* twelve requests on four slots and 24 tokens per step: prompts of 1 to 90 tokens (chunked,
     * and admitted as others finish), every third one sampled with a seed */
    static const int lens[12] = {1, 5, 23, 40, 90, 3, 64, 2, 24, 25, 7, 50};
    fake *g = fake_new(4, 24, 256, 256);
    g->info.batch_invariant = 1;
    ksched *t = sched_new(g, 16);
    int32_t pr[12][90];
    rec r[12];
    ks_params p[12];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 12; i++) {
        make_prompt(pr[i], lens[i], 10 + i, (uint64_t)(100 + i));
        p[i] = params(pr[i], lens[i], 5 + i % 7, &r[i]);
        p[i].ignore_eos = 1;
        if (i % 3 == 2) {
            p[i].sp.temperature = 0.8f;
            p[i].sp.seed = (uint64_t)(1000 + i);
        }
        submit_ok(t, &p[i]);
    }
    int ks_steps = drain(t);
    assert_true(g->nsteps > ks_steps);          /* some scheduler steps ran as two */
    for (int i = 0; i < 12; i++) {
        assert_clean(&r[i]);
        assert_int_equal(r[i].n, 5 + i % 7);
        run_alone(g, &p[i], &alone);
        assert_same_tokens(&r[i], &alone);
    }
    assert_kv_empty(t);
    assert_fake_ok(g);
    ks_free(t);
    fake_free(&g->b);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
    free(b);
}

/* Longrope's switch at 20 tokens (kb_info.rope_switch): a 30-token prompt is long (rope_len 30)
 * from its first chunk; a 12-token prompt is short until its next token would be the 21st, when
 * it restarts from position 0 to recompute its 20 tokens and sample the 21st (rope_len 21), then
 * decodes long; both give the tokens they give alone. */
static void test_rope_switch(void **state)
{
    (void)state;
    fake *f = fake_new(4, 8, 256, 64);
    f->info.rope_switch = 20;
    ksched *s = sched_new(f, 16);
    int32_t a[12], b[30];
    make_prompt(a, 12, 1, 1);
    make_prompt(b, 30, 2, 2);
    rec ra = {0}, rb = {0};
    ks_params pa = params(a, 12, 16, &ra), pb = params(b, 30, 4, &rb);
    pa.ignore_eos = pb.ignore_eos = 1;
    submit_ok(s, &pa);
    submit_ok(s, &pb);
    drain(s);
    assert_clean(&ra);
    assert_clean(&rb);
    assert_int_equal(ra.n, 16);
    assert_int_equal(rb.n, 4);
    int restarts = 0, a_long = 0, a_pos = 0;
    for (int L = 0; L < f->log_steps; L++)
        for (int k = 0; k < f->logn[L]; k++) {
            int pos = f->logpos[L][k], n = f->logn_tok[L][k], rl = f->logrope[L][k];
            if (f->logfirst[L][k] == 2) {
                if (rl != (pos + n > 30 ? pos + n : 30))
                    fail_msg("step %d: the 30-token prompt's item at %d+%d has rope_len %d", L,
                             pos, n, rl);
                continue;
            }
            if (pos == 0 && L > 0 && a_pos > 0) { /* the recomputation */
                restarts++;
                assert_int_equal(a_pos, 20);      /* its 20 tokens were in the cache */
                a_long = 1;
            }
            int want = a_long ? (pos + n > 21 ? pos + n : 21) : (pos + n > 12 ? pos + n : 12);
            if (rl != want)
                fail_msg("step %d: the 12-token prompt's item at %d+%d has rope_len %d, expected "
                         "%d", L, pos, n, rl, want);
            assert_true(a_long || pos + n <= 20);
            a_pos = pos + n;
        }
    assert_int_equal(restarts, 1);
    assert_int_equal(a_pos, 12 + 16 - 1);
    rec alone;
    run_alone(f, &pa, &alone);
    assert_same_tokens(&ra, &alone);
    run_alone(f, &pb, &alone);
    assert_same_tokens(&rb, &alone);
    assert_kv_empty(s);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* A cache far too small for the load: requests are preempted and recomputed, and every one
 * still produces exactly what it produces alone: greedy, seeded sampling (the RNG counter
 * continues across the recomputation), with logprobs and with prompt logprobs (reported once). */
static void test_preemption(void **state)
{
    (void)state;
    enum { N = 8, NP = 40, NEW = 60 };
    fake *f = fake_new(4, 48, 256, 8);            /* 8 blocks: 256 tokens; each request needs 100 */
    ksched *s = sched_new(f, 16);
    int32_t pr[N][NP];
    rec r[N] = {0};
    ks_params p[N];
    for (int i = 0; i < N; i++) {
        make_prompt(pr[i], NP, 20 + i, 100 + (uint64_t)i);
        p[i] = params(pr[i], NP, NEW, &r[i]);
        p[i].ignore_eos = 1;
        if (i % 2) {
            p[i].sp.temperature = 0.8f;
            p[i].sp.seed = 1234 + (uint64_t)i;
        }
        if (i == 2)
            p[i].logprobs = 2;
        if (i == 4)
            p[i].logprobs = 0;                  /* the token's own logprob, no alternatives */
        if (i == 5)
            p[i].prompt_logprobs = 1;
        submit_ok(s, &p[i]);
    }
    drain(s);
    ks_metrics m;
    ks_metrics_get(s, &m);
    assert_true(m.preemptions > 0);
    assert_int_equal(m.prompt_tokens, N * NP);  /* recomputation is not counted again */
    assert_int_equal(m.generated_tokens, N * NEW);
    assert_int_equal(m.kv_total, 8);
    for (int i = 0; i < N; i++) {
        assert_clean(&r[i]);
        rec alone;
        run_alone(f, &p[i], &alone);
        assert_same_tokens(&r[i], &alone);
    }
    /* a seeded request's t-th token is drawn with sp.index t, whatever was recomputed */
    for (int i = 1; i < N; i += 2) {
        int32_t sq[NP + NEW];
        memcpy(sq, pr[i], sizeof pr[i]);
        memcpy(sq + NP, r[i].toks, NEW * sizeof *sq);
        for (int t = 0; t < NEW; t++) {
            kiln_sample sp = p[i].sp;
            sp.index = t;
            assert_int_equal(r[i].toks[t], pick(prefix_hash(sq, NP + t), &sp));
        }
    }
    /* logprobs of the sampled token: recomputed here from the fake's logits */
    for (int i = 2; i <= 4; i += 2) {
        int32_t seq[NP + NEW];
        memcpy(seq, pr[i], sizeof pr[i]);
        memcpy(seq + NP, r[i].toks, NEW * sizeof *seq);
        for (int t = 0; t < NEW; t++) {
            float row[FV], lp, tl[KB_MAX_LOGPROBS];
            int32_t ti[KB_MAX_LOGPROBS];
            row_of(prefix_hash(seq, NP + t), row);
            kb_logprobs(row, FV, seq[NP + t], 2, &lp, ti, tl);
            assert_true(lp < 0);
            assert_float_equal(r[i].lp[t], lp, 0);
            assert_int_equal(r[i].ntop[t], p[i].logprobs);
            assert_int_equal(r[i].top0[t], p[i].logprobs ? ti[0] : -1);
            assert_int_equal(r[3].ntop[t], 0);
        }
    }
    assert_int_equal(r[5].n_prompt_ev, NP - 1);
    assert_int_equal(r[0].n_prompt_ev, 0);
    assert_kv_empty(s);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* A preempted request goes back to the head of the queue: it is admitted again before the
 * requests that were waiting behind it. */
static void test_preempted_first(void **state)
{
    (void)state;
    fake *f = fake_new(2, 64, 256, 4);            /* 4 blocks; a and b need 3 each */
    ksched *s = sched_new(f, 16);
    int32_t pr[4][30];
    rec r[4] = {0};
    ks_params p[4];
    for (int i = 0; i < 4; i++) {
        make_prompt(pr[i], 30, 1 + i, 50 + (uint64_t)i);
        p[i] = params(pr[i], i < 2 ? 30 : 4, i < 2 ? 60 : 2, &r[i]);
        p[i].ignore_eos = 1;
        submit_ok(s, &p[i]);
    }
    drain(s);
    ks_metrics m;
    ks_metrics_get(s, &m);
    assert_true(m.preemptions > 0);
    int last_b = -1, first_c = -1, k = 0;
    for (int L = 0; L < f->log_steps; L++)
        for (int j = 0; j < f->logn[L]; j++, k++) {
            if (f->logpos[L][j] == 0 && f->logfirst[L][j] == 2)
                last_b = k;
            if (f->logpos[L][j] == 0 && f->logfirst[L][j] == 3 && first_c < 0)
                first_c = k;
        }
    assert_true(last_b >= 0 && first_c > last_b);
    for (int i = 0; i < 4; i++) {
        assert_clean(&r[i]);
        rec alone;
        run_alone(f, &p[i], &alone);
        assert_same_tokens(&r[i], &alone);
    }
    assert_kv_empty(s);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* max_seqs bounds the running set whatever is queued; everything still finishes. */
static void test_max_seqs(void **state)
{
    (void)state;
    fake *f = fake_new(3, 128, 128, 64);
    ksched *s = sched_new(f, 32);
    int32_t pr[10][6];
    rec r[10] = {0};
    for (int i = 0; i < 10; i++) {
        make_prompt(pr[i], 6, 30 + i, 200 + (uint64_t)i);
        ks_params p = params(pr[i], 6, 5, &r[i]);
        submit_ok(s, &p);
    }
    kerr e;
    for (int i = 0; i < 1000; i++) {
        kerr_clear(&e);
        int n = ks_step(s, &e);
        assert_true(n >= 0 && n <= 3);
        ks_metrics m;
        ks_metrics_get(s, &m);
        assert_true(m.running <= 3);
        if (!m.running && !m.waiting)
            break;
    }
    for (int i = 0; i < 10; i++) {
        assert_clean(&r[i]);
        assert_int_equal(r[i].n, 5);
    }
    assert_kv_empty(s);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* ------------------------------------------------------------ cancellation */

/* A callback cancels its own request: no token after it, blocks back within one step. A waiting
 * request cancelled from outside leaves with no token. */
static void test_cancel_in_callback(void **state)
{
    (void)state;
    fake *f = fake_new(1, 64, 256, 64);
    ksched *s = sched_new(f, 8);
    int32_t a[40], b[4];
    make_prompt(a, 40, 1, 1);
    make_prompt(b, 4, 2, 2);
    rec ra = {0}, rb = {0};
    ks_params pa = params(a, 40, 100, &ra);
    pa.ignore_eos = 1;
    ra.cancel_at = 3;
    ks_params pb = params(b, 4, 5, &rb);
    submit_ok(s, &pa);
    uint64_t idb = submit_ok(s, &pb);
    kerr e;
    for (int i = 0; i < 3; i++) {
        kerr_clear(&e);
        assert_int_equal(ks_step(s, &e), 1);
    }
    assert_int_equal(ra.n, 3);
    assert_int_equal(ra.n_final, 0);
    ks_cancel(s, idb);                          /* b is waiting behind a (one slot) */
    ks_metrics m;
    ks_metrics_get(s, &m);
    assert_int_equal(m.kv_used, 2);             /* a: 42 tokens in the cache */
    kerr_clear(&e);
    assert_int_equal(ks_step(s, &e), 0);        /* both cancelled, nothing left to run */
    assert_clean(&ra);
    assert_clean(&rb);
    assert_int_equal(ra.finish, KS_CANCELLED);
    assert_int_equal(ra.n, 3);
    assert_int_equal(rb.finish, KS_CANCELLED);
    assert_int_equal(rb.n, 0);
    assert_kv_empty(s);
    ks_cancel(s, idb);                          /* finished ids are ignored */
    ks_cancel(s, 999);
    kerr_clear(&e);
    assert_int_equal(ks_step(s, &e), 0);
    assert_int_equal(rb.late, 0);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* ks_run on an engine thread; the sync point lets the main thread act between tokens. */
typedef struct engine {
    ksched *s;
    pthread_t th;
    int rc;
    kerr e;
} engine;

static void *engine_main(void *arg)
{
    engine *g = arg;
    kerr_clear(&g->e);
    g->rc = ks_run(g->s, &g->e);
    return NULL;
}

static void engine_start(engine *g, ksched *s)
{
    g->s = s;
    assert_int_equal(pthread_create(&g->th, NULL, engine_main, g), 0);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Waits (bounded) until the metrics say `cond`. */
#define WAIT_FOR(s, m, cond) do {                                                       \
        int ok_ = 0;                                                                    \
        for (int w_ = 0; w_ < 5000 && !ok_; w_++) {                                     \
            ks_metrics_get((s), &(m));                                                  \
            ok_ = (cond);                                                               \
            if (!ok_)                                                                   \
                sleep_ms(1);                                                            \
        }                                                                               \
        if (!ok_)                                                                       \
            fail_msg("timed out waiting for %s", #cond);                                \
    } while (0)

/* A request cancelled from another thread while ks_run generates it. */
static void test_cancel_from_thread(void **state)
{
    (void)state;
    fake *f = fake_new(2, 64, 4096, 256);
    ksched *s = sched_new(f, 8);
    engine g;
    engine_start(&g, s);
    int32_t a[10];
    make_prompt(a, 10, 1, 1);
    rec ra = {0};
    ra.gate_at = 20;
    sem_init(&ra.reached, 0, 0);
    sem_init(&ra.go, 0, 0);
    ks_params pa = params(a, 10, 4000, &ra);
    pa.ignore_eos = 1;
    uint64_t id = submit_ok(s, &pa);
    sem_wait(&ra.reached);                      /* the engine waits in ra's 20th token event */
    ks_cancel(s, id);
    sem_post(&ra.go);
    ks_metrics m;
    WAIT_FOR(s, m, m.running == 0);
    assert_int_equal(m.kv_used, 0);
    ks_shutdown(s, 0);
    assert_int_equal(pthread_join(g.th, NULL), 0);
    assert_int_equal(g.rc, 0);
    assert_clean(&ra);
    assert_int_equal(ra.finish, KS_CANCELLED);
    assert_int_equal(ra.n, 20);                 /* nothing after the step that saw the cancel */
    sem_destroy(&ra.reached);
    sem_destroy(&ra.go);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* ks_shutdown(cancel_all): running and waiting requests all end (cancelled), ks_run returns, and
 * new requests are refused. */
static void test_shutdown_cancel_all(void **state)
{
    (void)state;
    fake *f = fake_new(2, 64, 4096, 256);
    ksched *s = sched_new(f, 8);
    engine g;
    engine_start(&g, s);
    int32_t pr[5][6];
    rec r[5] = {0};
    r[0].gate_at = 10;
    sem_init(&r[0].reached, 0, 0);
    sem_init(&r[0].go, 0, 0);
    for (int i = 0; i < 5; i++) {
        make_prompt(pr[i], 6, 1 + i, (uint64_t)i);
        ks_params p = params(pr[i], 6, 4000, &r[i]);
        p.ignore_eos = 1;
        submit_ok(s, &p);
    }
    sem_wait(&r[0].reached);
    ks_shutdown(s, 1);
    sem_post(&r[0].go);
    assert_int_equal(pthread_join(g.th, NULL), 0);
    assert_int_equal(g.rc, 0);
    for (int i = 0; i < 5; i++) {
        assert_clean(&r[i]);
        assert_int_equal(r[i].finish, KS_CANCELLED);
    }
    assert_int_equal(r[0].n, 10);
    assert_int_equal(r[4].n, 0);                /* never admitted (two slots) */
    sem_destroy(&r[0].reached);
    sem_destroy(&r[0].go);
    assert_kv_empty(s);
    rec late = {0};
    ks_params p = params(pr[0], 6, 1, &late);
    kerr e;
    kerr_clear(&e);
    uint64_t id;
    assert_int_equal(ks_submit(s, &p, &id, &e), KS_ECLOSED);
    assert_contains(kerr_msg(&e), "shutting down");
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* ------------------------------------------------------------ limits and messages */

static void test_queue_full(void **state)
{
    (void)state;
    fake *f = fake_new(2, 64, 256, 64);
    ksched *s = sched_new(f, 2);
    int32_t a[4] = {1, 2, 3, 4};
    rec r[4] = {0};
    for (int i = 0; i < 2; i++) {
        ks_params p = params(a, 4, 2, &r[i]);
        submit_ok(s, &p);
    }
    ks_params p = params(a, 4, 2, &r[2]);
    kerr e;
    kerr_clear(&e);
    uint64_t id = 0;
    assert_int_equal(ks_submit(s, &p, &id, &e), KS_EFULL);
    assert_contains(kerr_msg(&e), "too many requests are waiting (2): retry later");
    assert_int_equal(id, 0);
    kerr_clear(&e);
    assert_int_equal(ks_step(s, &e), 2);        /* both admitted: the queue has room again */
    submit_ok(s, &p);
    ks_params q = params(a, 4, 2, &r[3]);
    submit_ok(s, &q);
    drain(s);
    for (int i = 0; i < 4; i++)
        assert_clean(&r[i]);
    assert_kv_empty(s);
    ks_free(s);
    fake_free(&f->b);
}

/* ks_submit must refuse p with KS_EINVAL and a message holding every needle. */
static void refused(ksched *s, const ks_params *p, const char *n1, const char *n2, const char *n3)
{
    kerr e;
    kerr_clear(&e);
    uint64_t id = 0;
    int rc = ks_submit(s, p, &id, &e);
    if (rc != KS_EINVAL)
        fail_msg("ks_submit returned %d; expected KS_EINVAL containing '%s'", rc, n1);
    assert_contains(kerr_msg(&e), n1);
    if (n2)
        assert_contains(kerr_msg(&e), n2);
    if (n3)
        assert_contains(kerr_msg(&e), n3);
}

static void test_invalid(void **state)
{
    (void)state;
    fake *f = fake_new(2, 64, 256, 4);          /* 4 blocks: 128 tokens */
    ksched *s = sched_new(f, 8);
    int32_t a[300] = {0};
    rec r = {0};
    ks_params p = params(a, 0, 4, &r);
    refused(s, &p, "the prompt is empty", NULL, NULL);
    p = params(a, 200, 100, &r);
    refused(s, &p, "the prompt (200 tokens) plus 100 tokens to generate is 300 tokens",
            "maximum sequence length of 256", NULL);
    p = params(a, 300, 0, &r);
    refused(s, &p, "the prompt has 300 tokens", "maximum sequence length of 256", NULL);
    p = params(a, 100, 40, &r);
    refused(s, &p, "140 tokens, more than the KV cache holds (4 blocks of 32: 128 tokens)", NULL,
            NULL);
    p = params(a, 4, -1, &r);
    refused(s, &p, "tokens to generate is -1", NULL, NULL);
    int32_t bad[3] = {1, FV, 2};
    p = params(bad, 3, 1, &r);
    refused(s, &p, "prompt token 1 is id 64, outside the vocabulary (0 .. 63)", NULL, NULL);
    bad[1] = -5;
    refused(s, &p, "prompt token 1 is id -5", NULL, NULL);
    int32_t types[3] = {0, 0, -1};
    p = params(a, 3, 1, &r);
    p.types = types;
    refused(s, &p, "prompt token 2 has token type -1", NULL, NULL);
    p = params(a, 3, 1, &r);
    p.logprobs = 6;
    refused(s, &p, "logprobs is 6: expected 0 .. 5", NULL, NULL);
    p.logprobs = -2;
    refused(s, &p, "logprobs is -2", NULL, NULL);
    p = params(a, 3, 1, &r);
    p.prompt_logprobs = 9;
    refused(s, &p, "prompt logprobs is 9", NULL, NULL);
    p = params(a, 3, 1, &r);
    p.sp.temperature = -0.5f;
    refused(s, &p, "temperature is -0.5", NULL, NULL);
    p.sp.temperature = NAN;
    refused(s, &p, "temperature is nan", NULL, NULL);
    p = params(a, 3, 1, &r);
    p.sp.top_p = 1.5f;
    refused(s, &p, "top_p is 1.5", NULL, NULL);
    p = params(a, 3, 1, &r);
    p.sp.top_k = -1;
    refused(s, &p, "top_k is -1", NULL, NULL);
    ks_metrics m;
    ks_metrics_get(s, &m);
    assert_int_equal(m.waiting, 0);
    ks_free(s);
    fake_free(&f->b);

    /* an embedding model */
    f = fake_new(2, 16, 256, 64);
    f->info.embed = 1;
    s = sched_new(f, 8);
    p = params(a, 17, 0, &r);
    refused(s, &p, "the input has 17 tokens", "at most 16", NULL);
    p = params(a, 4, 1, &r);
    refused(s, &p, "an embedding model generates no tokens", NULL, NULL);
    p = params(a, 4, 0, &r);
    p.prompt_logprobs = 0;
    refused(s, &p, "an embedding model has no logits", NULL, NULL);
    ks_free(s);
    fake_free(&f->b);
}

/* An eos id ends a request (delivered as its last token) unless ignore_eos. */
static void test_eos(void **state)
{
    (void)state;
    fake *f = fake_new(2, 64, 256, 64);
    int32_t a[6];
    make_prompt(a, 6, 3, 3);
    rec alone;
    ks_params p = params(a, 6, 30, NULL);
    run_alone(f, &p, &alone);
    /* the first generated token not seen before it becomes the eos id */
    int k = 1;
    while (k < alone.n) {
        int seen = 0;
        for (int j = 0; j < k; j++)
            seen |= alone.toks[j] == alone.toks[k];
        if (!seen)
            break;
        k++;
    }
    assert_true(k < alone.n);
    f->eos[0] = alone.toks[k];
    f->info.n_eos = 1;
    ksched *s = sched_new(f, 8);
    rec r1 = {0}, r2 = {0};
    ks_params p1 = params(a, 6, 30, &r1);
    ks_params p2 = params(a, 6, 30, &r2);
    p2.ignore_eos = 1;
    submit_ok(s, &p1);
    submit_ok(s, &p2);
    drain(s);
    assert_clean(&r1);
    assert_clean(&r2);
    assert_int_equal(r1.finish, KS_STOP);
    assert_int_equal(r1.n, k + 1);
    assert_int_equal(r1.toks[k], f->eos[0]);
    assert_memory_equal(r1.toks, alone.toks, (size_t)r1.n * sizeof *r1.toks);
    assert_int_equal(r2.finish, KS_LENGTH);
    assert_int_equal(r2.n, 30);
    assert_memory_equal(r2.toks, alone.toks, 30 * sizeof *r2.toks);
    assert_kv_empty(s);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* max_new 0 with prompt logprobs: one event per prompt position >= 1 (over several chunks), the
 * caller's raw logits, then KS_LENGTH with no token. */
static void test_scoring(void **state)
{
    (void)state;
    enum { NP = 50 };
    fake *f = fake_new(2, 16, 256, 64);
    ksched *s = sched_new(f, 8);
    int32_t a[NP];
    make_prompt(a, NP, 5, 5);
    rec r = {0}, r2 = {0};
    float *logits = xcalloc((size_t)NP * FV, sizeof *logits);
    ks_params p = params(a, NP, 0, &r);
    p.prompt_logprobs = 3;
    p.prompt_logits = logits;
    submit_ok(s, &p);
    ks_params p2 = params(a, 4, 2, &r2);        /* beside it: a request generating normally */
    p2.prompt_logprobs = 0;
    submit_ok(s, &p2);
    int steps = drain(s);
    assert_true(steps >= 4);                    /* 54 prompt tokens at 16 a step */
    assert_clean(&r);
    assert_int_equal(r.finish, KS_LENGTH);
    assert_int_equal(r.n, 0);
    assert_int_equal(r.gen_tokens, 0);
    assert_int_equal(r.prompt_tokens, NP);
    assert_int_equal(r.n_prompt_ev, NP - 1);
    float row[FV], lp, tl[KB_MAX_LOGPROBS];
    int32_t ti[KB_MAX_LOGPROBS];
    for (int q = 0; q < NP; q++) {
        row_of(prefix_hash(a, q + 1), row);
        assert_memory_equal(logits + (size_t)q * FV, row, sizeof row);
        if (q + 1 < NP) {
            kb_logprobs(row, FV, a[q + 1], 3, &lp, ti, tl);
            assert_float_equal(r.plp[q + 1], lp, 0);
            assert_int_equal(r.ptop0[q + 1], ti[0]);
        }
    }
    assert_clean(&r2);
    assert_int_equal(r2.n_prompt_ev, 3);
    assert_int_equal(r2.ptop0[1], -1);          /* prompt_logprobs 0: no alternatives */
    assert_int_equal(r2.n, 2);
    assert_kv_empty(s);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
    free(logits);
}

/* An embedding model: each input is one whole item, and its final event carries the vector. */
static void test_embedding(void **state)
{
    (void)state;
    fake *f = fake_new(2, 16, 256, 64);
    f->info.embed = 1;
    ksched *s = sched_new(f, 8);
    int32_t pr[3][16];
    rec r[3] = {0};
    int lens[3] = {16, 9, 12};                  /* 16 fills a step alone: never split */
    for (int i = 0; i < 3; i++) {
        make_prompt(pr[i], lens[i], 1 + i, (uint64_t)i);
        ks_params p = params(pr[i], lens[i], 0, &r[i]);
        submit_ok(s, &p);
    }
    assert_int_equal(drain(s), 3);              /* 16 | 9 | 12 */
    for (int i = 0; i < 3; i++) {
        assert_clean(&r[i]);
        assert_int_equal(r[i].finish, KS_STOP);
        assert_true(r[i].has_emb);
        uint64_t h = prefix_hash(pr[i], lens[i]);
        for (int j = 0; j < FHID; j++)
            assert_float_equal(r[i].emb[j], (float)(mix(h, (uint64_t)j) % 1000) / 1000.0f, 0);
    }
    assert_kv_empty(s);
    assert_fake_ok(f);
    ks_free(s);
    fake_free(&f->b);
}

/* A backend failure ends every request, running or waiting, with KS_FAILED and the message. */
static void test_backend_failure(void **state)
{
    (void)state;
    fake *f = fake_new(1, 64, 256, 64);
    f->fail_at = 3;
    ksched *s = sched_new(f, 8);
    int32_t a[4] = {1, 2, 3, 4};
    rec r[2] = {0};
    for (int i = 0; i < 2; i++) {
        ks_params p = params(a, 4, 10, &r[i]);
        submit_ok(s, &p);
    }
    kerr e;
    kerr_clear(&e);
    assert_int_equal(ks_step(s, &e), 1);
    assert_int_equal(ks_step(s, &e), 1);
    assert_int_equal(ks_step(s, &e), -1);
    assert_contains(kerr_msg(&e), "illegal memory access at step 3");
    for (int i = 0; i < 2; i++) {
        assert_clean(&r[i]);
        assert_int_equal(r[i].finish, KS_FAILED);
        assert_contains(r[i].error, "illegal memory access at step 3");
    }
    assert_int_equal(r[0].n, 2);
    assert_int_equal(r[1].n, 0);
    assert_kv_empty(s);
    rec late = {0};
    ks_params p = params(a, 4, 1, &late);
    uint64_t id;
    kerr_clear(&e);
    assert_int_equal(ks_submit(s, &p, &id, &e), KS_ECLOSED);
    assert_contains(kerr_msg(&e), "illegal memory access");
    ks_free(s);
    fake_free(&f->b);
}

/* ------------------------------------------------------------ threads */

enum { TH = 4, PER = 40 };

typedef struct submitter {
    ksched *s;
    int t;
    int32_t prompts[PER][40];
    ks_params p[PER];
    rec r[PER];
    uint64_t id[PER];
    int efull;
} submitter;

static void *submit_main(void *arg)
{
    submitter *u = arg;
    for (int i = 0; i < PER; i++) {
        uint64_t seed = (uint64_t)(u->t * 1000 + i);
        int np = 1 + (int)(mix(seed, 1) % 40);
        make_prompt(u->prompts[i], np, (int)(mix(seed, 2) % FV), seed);
        u->p[i] = params(u->prompts[i], np, 2 + (int)(mix(seed, 3) % 30), &u->r[i]);
        u->p[i].ignore_eos = 1;
        if (i % 3 == 1) {
            u->p[i].sp.temperature = 1;
            u->p[i].sp.seed = seed;
        }
        u->r[i].s = u->s;
        if (i % 5 == 4)
            u->r[i].cancel_at = 1;          /* the callback cancels it after its first token */
        kerr e;
        int rc;
        for (int tries = 0;; tries++) {
            kerr_clear(&e);
            rc = ks_submit(u->s, &u->p[i], &u->id[i], &e);
            if (rc != KS_EFULL || tries == 10000)
                break;
            u->efull++;
            sleep_ms(1);
        }
        if (rc != KS_OK)
            u->id[i] = 0;
        if (i % 7 == 6 && rc == KS_OK)
            ks_cancel(u->s, u->id[i]);      /* cancelled from this thread, wherever it is */
    }
    return NULL;
}

/* ks_run on its own thread, four threads submitting and cancelling: every request gets exactly
 * one final event, every uncancelled one the tokens it gets alone, and the counters add up. */
static void test_threads(void **state)
{
    (void)state;
    fake *f = fake_new(4, 32, 256, 5);          /* small enough to preempt */
    ksched *s = sched_new(f, 16);               /* small enough to fill */
    engine g;
    engine_start(&g, s);
    submitter *u = xcalloc(TH, sizeof *u);
    pthread_t th[TH];
    for (int t = 0; t < TH; t++) {
        u[t].s = s;
        u[t].t = t;
        assert_int_equal(pthread_create(&th[t], NULL, submit_main, &u[t]), 0);
    }
    for (int t = 0; t < TH; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    ks_shutdown(s, 0);
    assert_int_equal(pthread_join(g.th, NULL), 0);
    assert_int_equal(g.rc, 0);
    assert_fake_ok(f);
    uint64_t gen = 0;
    int cancelled = 0;
    for (int t = 0; t < TH; t++)
        for (int i = 0; i < PER; i++) {
            rec *r = &u[t].r[i];
            assert_true(u[t].id[i] > 0);
            assert_clean(r);
            assert_true(r->id == u[t].id[i]);
            gen += (uint64_t)r->n;
            if (r->finish == KS_CANCELLED) {
                cancelled++;
                assert_true(i % 5 == 4 || i % 7 == 6);
                continue;
            }
            assert_false(i % 5 == 4);           /* cancelled by its own callback */
            rec alone;
            run_alone(f, &u[t].p[i], &alone);
            assert_same_tokens(r, &alone);
        }
    assert_true(cancelled >= TH * (PER / 5));
    ks_metrics m;
    ks_metrics_get(s, &m);
    assert_int_equal(m.generated_tokens, gen);
    assert_kv_empty(s);
    ks_free(s);
    fake_free(&f->b);
    free(u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kvcache),
        cmocka_unit_test(test_fcfs),
        cmocka_unit_test(test_chunking),
        cmocka_unit_test(test_batch_invariant),
        cmocka_unit_test(test_preemption),
        cmocka_unit_test(test_rope_switch),
        cmocka_unit_test(test_preempted_first),
        cmocka_unit_test(test_max_seqs),
        cmocka_unit_test(test_cancel_in_callback),
        cmocka_unit_test(test_cancel_from_thread),
        cmocka_unit_test(test_shutdown_cancel_all),
        cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_eos),
        cmocka_unit_test(test_scoring),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_backend_failure),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
