/*
 * The replay backend (script format and behaviour in replay.h).
 *
 * Owns:   the parsed replies, the seq_id -> reply map, the per-step list of
 *         sequences that want a token.
 * Never:  allocates per token: forward() and sample() only index arrays
 *         and the map (which grows only when a new sequence arrives), so
 *         with delay 0 a token costs a few hundred nanoseconds and the
 *         gateway benchmark measures the gateway, not us.
 * Holds:  the token for output position k is a pure function of the
 *         sequence's reply and k, so preemption and recompute replay the
 *         same stream.
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "replay.h"
#include "../../sample/sample.h"
#include "../../text/kimi_text.h"

/* Bytes per KV block if the scheduler is given a byte budget: a nominal
 * one-layer bf16 latent cache (576 values), so budgets mean something. */
#define KIMI_REPLAY_TOKEN_BYTES  (576 * 2)
/* forward() sleeps in the server's loop; steps longer than the gateway's
 * 3 s heartbeat rule are allowed so tests can model a long prefill (the
 * server beats from its own thread while a step runs) */
#define KIMI_REPLAY_MAX_DELAY_MS 10000

typedef struct {
    char       *match;          /* NULL: matches every prompt */
    int32_t    *tokens;
    uint32_t    n_tokens;
} kimi_replay_reply_t;

typedef struct {
    uint64_t    key;            /* seq_id + 1; 0 = empty */
    int32_t     reply;          /* index, or -1: the empty reply */
} kimi_replay_entry_t;

typedef struct {
    kimi_backend_t                base;
    const kimi_tokenizer_t       *tok;
    kimi_replay_reply_t          *replies;
    uint32_t                      n_replies;
    int32_t                       default_reply;    /* index or -1 */
    int                           has_match;        /* any reply has one */
    uint32_t                      delay_ms;
    int32_t                       eos;

    kimi_replay_entry_t          *map;
    uint32_t                      map_cap;          /* power of two */
    uint32_t                      map_n;

    uint64_t                     *want;             /* this step's seqs */
    uint32_t                      n_want;
    uint32_t                      want_cap;
} kimi_replay_t;


/* ---- seq_id -> reply map (open addressing, backward-shift delete) -------- */

static uint32_t
kimi_replay_hash(uint64_t key, uint32_t mask)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;

    return (uint32_t) key & mask;
}


static kimi_replay_entry_t *
kimi_replay_find(kimi_replay_t *r, uint64_t seq_id)
{
    uint32_t  mask = r->map_cap - 1, i;
    uint64_t  key = seq_id + 1;

    for (i = kimi_replay_hash(key, mask); r->map[i].key != 0;
         i = (i + 1) & mask)
    {
        if (r->map[i].key == key) {
            return &r->map[i];
        }
    }

    return NULL;
}


static int
kimi_replay_insert(kimi_replay_t *r, uint64_t seq_id, int32_t reply)
{
    uint32_t              i, mask, cap, old_cap;
    kimi_replay_entry_t  *old;

    if ((r->map_n + 1) * 2 > r->map_cap) {
        old = r->map;
        old_cap = r->map_cap;
        cap = old_cap * 2;

        r->map = calloc(cap, sizeof(kimi_replay_entry_t));
        if (r->map == NULL) {
            r->map = old;
            return KIMI_ENOMEM;
        }
        r->map_cap = cap;
        r->map_n = 0;

        for (i = 0; i < old_cap; i++) {
            if (old[i].key != 0) {
                kimi_replay_insert(r, old[i].key - 1, old[i].reply);
            }
        }
        free(old);
    }

    mask = r->map_cap - 1;
    for (i = kimi_replay_hash(seq_id + 1, mask); r->map[i].key != 0;
         i = (i + 1) & mask)
    {
        /* callers look up first: a key is never inserted twice */
    }

    r->map[i].key = seq_id + 1;
    r->map[i].reply = reply;
    r->map_n++;

    return 0;
}


static void
kimi_replay_erase(kimi_replay_t *r, uint64_t seq_id)
{
    uint32_t              mask = r->map_cap - 1, i, j, home;
    kimi_replay_entry_t  *e = kimi_replay_find(r, seq_id);

    if (e == NULL) {
        return;
    }

    i = (uint32_t) (e - r->map);
    r->map[i].key = 0;
    r->map_n--;

    /* backward shift: keep every later entry reachable from its home */
    for (j = (i + 1) & mask; r->map[j].key != 0; j = (j + 1) & mask) {
        home = kimi_replay_hash(r->map[j].key, mask);

        if (((j - home) & mask) >= ((j - i) & mask)) {
            r->map[i] = r->map[j];
            r->map[j].key = 0;
            i = j;
        }
    }
}


/* ---- script -------------------------------------------------------------- */

static int
kimi_replay_tokens(kimi_replay_t *r, json_t *v, const char *path,
    const char *where, kimi_replay_reply_t *out, kimi_err_t *err)
{
    size_t   i;
    json_t  *t;

    out->n_tokens = (uint32_t) json_array_size(v);
    out->tokens = malloc((out->n_tokens + 1) * sizeof(int32_t));
    if (out->tokens == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "replay: out of memory");
    }

    json_array_foreach(v, i, t) {
        if (!json_is_integer(t) || json_integer_value(t) < 0
            || json_integer_value(t) >= (json_int_t) r->base.vocab_size)
        {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: %s.tokens[%zu] is not"
                                " a token id in [0, %u)", path, where, i,
                                r->base.vocab_size);
        }
        out->tokens[i] = (int32_t) json_integer_value(t);
    }

    return 0;
}


static int
kimi_replay_reply(kimi_replay_t *r, json_t *o, const char *path,
    const char *where, int is_default, kimi_replay_reply_t *out,
    kimi_err_t *err)
{
    int          rc;
    size_t       n;
    int32_t     *ids;
    json_t      *v;
    const char  *key;

    if (!json_is_object(o)) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: %s must be an object",
                            path, where);
    }

    json_object_foreach(o, key, v) {
        if (strcmp(key, "text") != 0 && strcmp(key, "tokens") != 0
            && (is_default || strcmp(key, "match") != 0))
        {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: %s has unknown key"
                                " \"%s\" (expected %s\"text\" or \"tokens\")",
                                path, where, key,
                                is_default ? "" : "\"match\", ");
        }
    }

    if ((json_object_get(o, "text") != NULL)
        == (json_object_get(o, "tokens") != NULL))
    {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: %s needs exactly one of"
                            " \"text\" and \"tokens\"", path, where);
    }

    v = json_object_get(o, "match");
    if (v != NULL) {
        if (!json_is_string(v)) {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: %s.match must be a"
                                " string", path, where);
        }
        if (r->tok == NULL) {
            return kimi_err_set(err, KIMI_EINVAL, "%s: %s.match needs the"
                                " tokenizer to decode prompts: pass --model"
                                " DIR", path, where);
        }
        out->match = strdup(json_string_value(v));
        if (out->match == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "replay: out of memory");
        }
        r->has_match = 1;
    }

    v = json_object_get(o, "tokens");
    if (v != NULL) {
        if (!json_is_array(v)) {
            return kimi_err_set(err, KIMI_EFORMAT, "%s: %s.tokens must be an"
                                " array of token ids", path, where);
        }
        return kimi_replay_tokens(r, v, path, where, out, err);
    }

    v = json_object_get(o, "text");
    if (!json_is_string(v)) {
        return kimi_err_set(err, KIMI_EFORMAT, "%s: %s.text must be a string",
                            path, where);
    }

    if (r->tok == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "%s: %s.text needs the"
                            " tokenizer: pass --model DIR, or give \"tokens\"",
                            path, where);
    }

    /* special-token strings become their ids, so a script can play a
     * model that emits tool-call markers */
    rc = kimi_tokenize(r->tok, json_string_value(v), json_string_length(v), 1,
                       &ids, &n, err);
    if (rc != 0) {
        return kimi_err_wrap(err, "%s: %s.text", path, where);
    }

    out->tokens = ids;
    out->n_tokens = (uint32_t) n;

    return 0;
}


static int
kimi_replay_load(kimi_replay_t *r, const char *path, int32_t delay_override,
    kimi_err_t *err)
{
    int           rc;
    char          where[32];
    size_t        i;
    json_t       *root, *v, *o;
    const char   *key;
    json_error_t  jerr;

    root = json_load_file(path, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (root == NULL) {
        return kimi_err_set(err, KIMI_EFORMAT, "replay script \"%s\": %s"
                            " (line %d, column %d)", path, jerr.text,
                            jerr.line, jerr.column);
    }

    if (!json_is_object(root)) {
        rc = kimi_err_set(err, KIMI_EFORMAT, "replay script \"%s\": the top"
                          " level must be an object", path);
        goto done;
    }

    json_object_foreach(root, key, v) {
        if (strcmp(key, "delay_ms") != 0 && strcmp(key, "replies") != 0
            && strcmp(key, "default") != 0)
        {
            rc = kimi_err_set(err, KIMI_EFORMAT, "%s: unknown key \"%s\""
                              " (expected \"delay_ms\", \"replies\","
                              " \"default\")", path, key);
            goto done;
        }
    }

    v = json_object_get(root, "delay_ms");
    if (v != NULL && (!json_is_integer(v) || json_integer_value(v) < 0
                      || json_integer_value(v) > KIMI_REPLAY_MAX_DELAY_MS))
    {
        rc = kimi_err_set(err, KIMI_EFORMAT, "%s: delay_ms must be an integer"
                          " in [0, %d]", path, KIMI_REPLAY_MAX_DELAY_MS);
        goto done;
    }
    r->delay_ms = v ? (uint32_t) json_integer_value(v) : 0;
    if (delay_override >= 0) {
        r->delay_ms = (uint32_t) delay_override;
    }

    v = json_object_get(root, "replies");
    if (v != NULL && !json_is_array(v)) {
        rc = kimi_err_set(err, KIMI_EFORMAT, "%s: replies must be an array",
                          path);
        goto done;
    }

    o = json_object_get(root, "default");

    r->n_replies = (uint32_t) json_array_size(v) + (o != NULL);
    r->replies = calloc(r->n_replies + 1, sizeof(kimi_replay_reply_t));
    if (r->replies == NULL) {
        rc = kimi_err_set(err, KIMI_ENOMEM, "replay: out of memory");
        goto done;
    }

    json_array_foreach(v, i, o) {
        snprintf(where, sizeof(where), "replies[%zu]", i);
        rc = kimi_replay_reply(r, o, path, where, 0, &r->replies[i], err);
        if (rc != 0) {
            goto done;
        }
    }

    r->default_reply = -1;
    o = json_object_get(root, "default");
    if (o != NULL) {
        i = r->n_replies - 1;
        rc = kimi_replay_reply(r, o, path, "default", 1, &r->replies[i], err);
        if (rc != 0) {
            goto done;
        }
        r->default_reply = (int32_t) i;
    }

    rc = 0;

done:

    json_decref(root);
    return rc;
}


/* The reply for a new sequence: first match in the decoded prompt. */
static int32_t
kimi_replay_choose(kimi_replay_t *r, const int32_t *prompt, uint32_t n)
{
    char        *text = NULL;
    size_t       len;
    uint32_t     i, n_listed;
    kimi_err_t   err;

    n_listed = r->n_replies - (r->default_reply >= 0);

    if (r->has_match
        && kimi_detokenize(r->tok, prompt, n, 0, &text, &len, &err) != 0)
    {
        text = NULL;        /* undecodable: only unconditional replies */
    }

    for (i = 0; i < n_listed; i++) {
        if (r->replies[i].match == NULL
            || (text != NULL && strstr(text, r->replies[i].match) != NULL))
        {
            free(text);
            return (int32_t) i;
        }
    }

    free(text);

    return r->default_reply;
}


/* ---- backend ops --------------------------------------------------------- */

static int
kimi_replay_kv_init(kimi_backend_t *b, const kimi_kv_params_t *p,
    uint32_t *n_blocks_out, kimi_err_t *err)
{
    uint64_t  n;

    if (p->block_size == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "replay: block size is 0");
    }

    n = p->max_blocks;
    if (n == 0) {
        n = p->budget_bytes
            / ((uint64_t) p->block_size * KIMI_REPLAY_TOKEN_BYTES);
    }

    if (n == 0) {
        return kimi_err_set(err, KIMI_EINVAL, "replay: a KV budget of %llu"
                            " bytes holds no block of %u tokens",
                            (unsigned long long) p->budget_bytes,
                            p->block_size);
    }

    *n_blocks_out = n > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t) n;

    return 0;
}


static int
kimi_replay_forward(kimi_backend_t *b, const kimi_batch_t *batch,
    kimi_err_t *err)
{
    uint32_t         i;
    uint64_t        *w;
    kimi_replay_t   *r = (kimi_replay_t *) b;
    struct timespec  ts;

    if (batch->n_seqs > r->want_cap) {
        w = realloc(r->want, batch->n_seqs * sizeof(uint64_t));
        if (w == NULL) {
            return kimi_err_set(err, KIMI_ENOMEM, "replay: out of memory");
        }
        r->want = w;
        r->want_cap = batch->n_seqs;
    }

    r->n_want = 0;
    for (i = 0; i < batch->n_seqs; i++) {
        if (batch->seqs[i].want_logits) {
            r->want[r->n_want++] = batch->seqs[i].seq_id;
        }
    }

    if (r->delay_ms > 0 && batch->n_seqs > 0) {
        /* the per-token delay: one model step's worth of time */
        ts.tv_sec = r->delay_ms / 1000;
        ts.tv_nsec = (long) (r->delay_ms % 1000) * 1000000L;
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
            /* resume the remainder */
        }
    }

    return 0;
}


static int
kimi_replay_sample(kimi_backend_t *b, const struct kimi_sample_req *reqs,
    uint32_t n, struct kimi_sample_out *out, kimi_err_t *err)
{
    int32_t                     reply, token;
    uint32_t                    i, k;
    kimi_replay_t              *r = (kimi_replay_t *) b;
    kimi_replay_entry_t        *e;
    const kimi_replay_reply_t  *rp;
    const kimi_shm_sampling_t  *sp;

    if (n != r->n_want) {
        return kimi_err_set(err, KIMI_ESTATE, "replay: %u sample requests"
                            " for %u sequences that wanted a token", n,
                            r->n_want);
    }

    for (i = 0; i < n; i++) {
        if (reqs[i].prompt_next > 0) {
            /* a prompt_logprobs position: the script's world is certain */
            memset(&out[i].tok, 0, offsetof(kimi_shm_token_t, top_ids));
            out[i].tok.token = (int32_t) reqs[i].prompt_next - 1;
            out[i].tok.rank = 1;
            if (reqs[i].sampling->prompt_logprobs > 1) {
                out[i].tok.n_top = 1;
                out[i].tok.top_ids[0] = out[i].tok.token;
                out[i].tok.top_logprobs[0] = 0.0f;
            }
            continue;
        }

        e = kimi_replay_find(r, r->want[i]);

        if (e != NULL) {
            reply = e->reply;

        } else {
            reply = kimi_replay_choose(r, reqs[i].tokens, reqs[i].n_prompt);
            if (kimi_replay_insert(r, r->want[i], reply) != 0) {
                return kimi_err_set(err, KIMI_ENOMEM, "replay: out of"
                                    " memory");
            }
        }

        sp = reqs[i].sampling;
        k = reqs[i].n_output;
        token = r->eos;

        if (reply >= 0) {
            rp = &r->replies[reply];

            if (k < rp->n_tokens) {
                token = rp->tokens[k];

            } else if (rp->n_tokens > 0
                       && (sp->ignore_eos || k < sp->min_tokens))
            {
                token = rp->tokens[k % rp->n_tokens];
            }
        }

        memset(&out[i].tok, 0, offsetof(kimi_shm_token_t, top_ids));
        out[i].tok.token = token;
        out[i].tok.logprob = 0.0f;      /* probability 1 */

        if (sp->top_logprobs > 0) {
            out[i].tok.n_top = 1;
            out[i].tok.top_ids[0] = token;
            out[i].tok.top_logprobs[0] = 0.0f;
        }
    }

    return 0;
}


static void
kimi_replay_seq_free(kimi_backend_t *b, uint64_t seq_id)
{
    kimi_replay_erase((kimi_replay_t *) b, seq_id);
}


static void
kimi_replay_free(kimi_backend_t *b)
{
    uint32_t        i;
    kimi_replay_t  *r = (kimi_replay_t *) b;

    if (r == NULL) {
        return;
    }

    for (i = 0; r->replies != NULL && i < r->n_replies; i++) {
        free(r->replies[i].match);
        free(r->replies[i].tokens);
    }

    free(r->replies);
    free(r->map);
    free(r->want);
    free(r);
}


static const kimi_backend_ops_t  kimi_replay_ops = {
    .name = "replay",
    .kv_init = kimi_replay_kv_init,
    .forward = kimi_replay_forward,
    .logits = NULL,
    .sample = kimi_replay_sample,
    .seq_free = kimi_replay_seq_free,
    .free = kimi_replay_free,
};


int
kimi_backend_replay_init(kimi_backend_t **out, const kimi_replay_params_t *p,
    kimi_err_t *err)
{
    int             rc;
    kimi_replay_t  *r;

    *out = NULL;

    if (p->script_path == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "the replay backend needs a"
                            " script: --replay-script FILE");
    }

    if (p->n_eos == 0 || p->eos_ids == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "replay: no eos token id to end"
                            " replies with");
    }

    if (p->vocab_size == 0 || p->eos_ids[0] < 0
        || (uint32_t) p->eos_ids[0] >= p->vocab_size)
    {
        return kimi_err_set(err, KIMI_EINVAL, "replay: eos id %d outside the"
                            " vocabulary of %u", p->eos_ids[0],
                            p->vocab_size);
    }

    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return kimi_err_set(err, KIMI_ENOMEM, "replay: out of memory");
    }

    r->base.ops = &kimi_replay_ops;
    r->base.vocab_size = p->vocab_size;
    r->base.max_model_len = p->max_model_len;
    r->tok = (const kimi_tokenizer_t *) p->tokenizer;
    r->eos = p->eos_ids[0];
    r->map_cap = 1024;
    r->map = calloc(r->map_cap, sizeof(kimi_replay_entry_t));
    if (r->map == NULL) {
        kimi_replay_free(&r->base);
        return kimi_err_set(err, KIMI_ENOMEM, "replay: out of memory");
    }

    rc = kimi_replay_load(r, p->script_path, p->delay_ms, err);
    if (rc != 0) {
        kimi_replay_free(&r->base);
        return rc;
    }

    *out = &r->base;

    return 0;
}
