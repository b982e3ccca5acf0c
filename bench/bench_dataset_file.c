/*
 * The file datasets of `vllm bench serve`: ShareGPT (--dataset-name
 * sharegpt, a JSON list of {"conversations": [{"value": ...}, ...]}),
 * custom (--dataset-name custom, JSON lines of {"prompt": ...}) and
 * BurstGPT (--dataset-name burstgpt, its CSV trace) and Spec-Bench
 * (--dataset-name spec_bench, its question.jsonl: the first of each row's
 * "turns", of --spec-bench-category or any, then as custom, except that
 * vLLM shuffles it with seed 0 whatever --seed says, always through the
 * chat template, --spec-bench-output-len 256); sonnet is in
 * bench_dataset_sonnet.c.
 *
 * Owns:   reading the file, vLLM's shuffle and selection, and the prompt
 *         and output lengths of each request.
 * Never:  touches the network.
 *
 * Method (vLLM's ShareGPTDataset / CustomDataset): the entries (ShareGPT:
 * those with at least two turns) are shuffled with Python's random seeded
 * by --seed (unless --disable-shuffle), then taken in order.  ShareGPT: the
 * prompt is the first turn, the output length the second turn's token
 * count (or --sharegpt-output-len); a pair with fewer than 4 prompt tokens,
 * under 4 output tokens (unless the length is given), over 1024 prompt
 * tokens or over 2048 together is skipped.  Custom: the prompt goes through
 * the model's chat template as one user message (unless
 * --custom-skip-chat-template), the output length is --custom-output-len
 * (256).  Token counts are the tokenizer's with the bos a plain prompt gets
 * (add_special_tokens).  Short of --num-prompts, requests are drawn again
 * from the selected ones (Python's random.choice, reseeded), unless
 * --no-oversample.
 *
 * Python's random is MT19937 with init_by_array on the seed's 32-bit words;
 * shuffle and choice draw with getrandbits(bit_length(n)) and rejection.
 * The same --seed thus picks the same prompts as vLLM.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "text/kimi_text.h"
#include "bench.h"

#define BENCH_SHAREGPT_MIN_LEN        4      /* vLLM's is_valid_sequence */
#define BENCH_SHAREGPT_MAX_PROMPT     1024
#define BENCH_SHAREGPT_MAX_TOTAL      2048


/* ---- Python's random ------------------------------------------------------ */

static uint32_t
bench_py_next(bench_py_random_t *r)
{
    uint32_t  y;
    int       k;

    if (r->i >= 624) {
        for (k = 0; k < 624; k++) {
            y = (r->mt[k] & 0x80000000u) | (r->mt[(k + 1) % 624] & 0x7fffffffu);
            r->mt[k] = r->mt[(k + 397) % 624] ^ (y >> 1)
                       ^ ((y & 1) ? 0x9908b0dfu : 0);
        }
        r->i = 0;
    }

    y = r->mt[r->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;

    return y ^ (y >> 18);
}


void
bench_py_seed(bench_py_random_t *r, uint64_t seed)
{
    uint32_t  key[2];
    size_t    n_key, i, j, k;

    /* the seed's 32-bit words, least significant first, at least one */
    key[0] = (uint32_t) seed;
    key[1] = (uint32_t) (seed >> 32);
    n_key = key[1] ? 2 : 1;

    r->mt[0] = 19650218u;
    for (i = 1; i < 624; i++) {
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30))
                   + (uint32_t) i;
    }

    i = 1;
    j = 0;
    for (k = 624; k > 0; k--) {
        r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30))
                                * 1664525u))
                   + key[j] + (uint32_t) j;
        i++;
        j++;
        if (i >= 624) {
            r->mt[0] = r->mt[623];
            i = 1;
        }
        if (j >= n_key) {
            j = 0;
        }
    }
    for (k = 623; k > 0; k--) {
        r->mt[i] = (r->mt[i] ^ ((r->mt[i - 1] ^ (r->mt[i - 1] >> 30))
                                * 1566083941u))
                   - (uint32_t) i;
        i++;
        if (i >= 624) {
            r->mt[0] = r->mt[623];
            i = 1;
        }
    }

    r->mt[0] = 0x80000000u;
    r->i = 624;
}


void
bench_np_legacy_seed(bench_py_random_t *r, uint32_t seed)
{
    int  i;

    r->mt[0] = seed;
    for (i = 1; i < 624; i++) {
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30))
                   + (uint32_t) i;
    }
    r->i = 624;
}


uint32_t
bench_np_legacy_randint(bench_py_random_t *r, uint32_t high)
{
    uint32_t  max = high - 1, mask = max, v;

    /* the smallest 2^k - 1 >= max */
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;

    do {
        v = bench_py_next(r) & mask;
    } while (v > max);

    return v;
}


/* random.getrandbits(k), 1 <= k <= 32 */
uint32_t
bench_py_getrandbits(bench_py_random_t *r, int k)
{
    return bench_py_next(r) >> (32 - k);
}


/* random.random(): 53 random bits, as genrand_res53 draws them */
double
bench_py_random(bench_py_random_t *r)
{
    uint32_t  a = bench_py_next(r) >> 5, b = bench_py_next(r) >> 6;

    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}


/* random._randbelow(n), 1 <= n < 2^32 */
uint32_t
bench_py_randbelow(bench_py_random_t *r, uint32_t n)
{
    uint32_t  v;
    int       k = 0;

    for (v = n; v != 0; v >>= 1) {
        k++;
    }

    do {
        v = bench_py_getrandbits(r, k);
    } while (v >= n);

    return v;
}


/* random.shuffle(x) on n elements of size bytes at base */
void
bench_py_shuffle(bench_py_random_t *r, void *base, size_t n, size_t size)
{
    unsigned char  *x = base, *a, *b, t;
    size_t          i, j, k;

    for (i = n - 1; n > 1 && i > 0; i--) {
        j = bench_py_randbelow(r, (uint32_t) i + 1);
        a = x + i * size;
        b = x + j * size;
        for (k = 0; k < size; k++) {
            t = a[k];
            a[k] = b[k];
            b[k] = t;
        }
    }
}


/* ---- the datasets --------------------------------------------------------- */

/* Tokens of text as HF's tokenizer(text).input_ids counts them. */
int
bench_count_tokens(const kimi_tokenizer_t *tok, const char *text, size_t len,
    uint32_t *n, kimi_err_t *err)
{
    int32_t  *ids;
    size_t    n_ids;

    if (kimi_tokenize(tok, text, len, 1, &ids, &n_ids, err) != 0) {
        return -1;
    }

    free(ids);
    *n = (uint32_t) n_ids + (kimi_tokenizer_prompt_prefix(tok) >= 0);

    return 0;
}


/* The file's entries (ShareGPT: those with two turns or more). */
static json_t *
bench_dataset_read(const bench_opts_t *o, int sharegpt, kimi_err_t *err)
{
    char          *line = NULL;
    size_t         cap = 0, lineno = 0;
    ssize_t        len;
    json_t        *all, *data, *e;
    json_error_t   jerr;
    FILE          *f;
    size_t         i;
    int            spec_bench = strcmp(o->dataset_name, "spec_bench") == 0;

    if (o->dataset_path == NULL) {
        kimi_err_set(err, KIMI_EINVAL, "--dataset-name %s needs "
                     "--dataset-path", o->dataset_name);
        return NULL;
    }

    data = json_array();

    if (sharegpt) {
        all = json_load_file(o->dataset_path, 0, &jerr);
        if (all == NULL || !json_is_array(all)) {
            kimi_err_set(err, KIMI_EFORMAT, "%s: %s", o->dataset_path,
                         all == NULL ? jerr.text : "not a JSON list");
            json_decref(all);
            json_decref(data);
            return NULL;
        }

        json_array_foreach(all, i, e) {
            if (json_array_size(json_object_get(e, "conversations")) >= 2) {
                json_array_append(data, e);
            }
        }

        json_decref(all);
        return data;
    }

    f = fopen(o->dataset_path, "r");
    if (f == NULL) {
        kimi_err_set(err, KIMI_EIO, "%s: cannot open", o->dataset_path);
        json_decref(data);
        return NULL;
    }

    while ((len = getline(&line, &cap, f)) != -1) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = '\0';
        }
        if (len == 0) {
            continue;
        }

        e = json_loadb(line, (size_t) len, 0, &jerr);

        if (e != NULL && spec_bench) {
            /* Spec-Bench's question.jsonl: the first turn, of the category
             * asked for (or any) */
            json_t      *turn = json_array_get(json_object_get(e, "turns"), 0);
            const char  *cat = json_string_value(json_object_get(e, "category"));

            if (!json_is_string(turn)) {
                json_decref(e);
                e = NULL;
                snprintf(jerr.text, sizeof(jerr.text), "no \"turns\" list "
                         "starting with a string");
            } else if (o->spec_bench_category != NULL
                       && (cat == NULL
                           || strcmp(cat, o->spec_bench_category) != 0))
            {
                json_decref(e);
                continue;
            } else {
                json_t  *row = json_pack("{s:O}", "prompt", turn);

                json_decref(e);
                e = row;
            }
        }

        if (e == NULL || !json_is_string(json_object_get(e, "prompt"))) {
            kimi_err_set(err, KIMI_EFORMAT, "%s:%zu: %s", o->dataset_path,
                         lineno, e == NULL ? jerr.text
                                           : "no \"prompt\" string");
            json_decref(e);
            json_decref(data);
            free(line);
            fclose(f);
            return NULL;
        }

        json_array_append_new(data, e);
    }

    free(line);
    fclose(f);

    return data;
}


/*
 * vLLM's BurstGPTDataset: the CSV's rows whose Model is "GPT-4" and whose
 * Response tokens are positive; --num-prompts of them chosen as pandas'
 * DataFrame.sample(n, random_state=seed) chooses (numpy's legacy
 * RandomState(seed).choice: the first n of a permutation, or n randint
 * draws when the trace has fewer rows); request i asks Request tokens
 * ids (i + j) % vocab, decoded (prompt_len is that count, as vLLM says),
 * for Response tokens.
 */
typedef struct {
    uint32_t  in_len, out_len;
} bench_burst_row_t;


/* The column of a header line named name, or -1 */
static int
bench_csv_column(const char *header, const char *name)
{
    const char  *p = header, *e;
    size_t       n = strlen(name);
    int          col = 0;

    for ( ;; col++) {
        e = strpbrk(p, ",\r\n");
        if ((size_t) ((e ? e : p + strlen(p)) - p) == n
            && strncmp(p, name, n) == 0)
        {
            return col;
        }
        if (e == NULL || *e != ',') {
            return -1;
        }
        p = e + 1;
    }
}


/* Field col of a CSV line (no quoting: the trace has none), its length */
static const char *
bench_csv_field(const char *line, int col, size_t *len)
{
    const char  *p = line, *e;

    while (col-- > 0) {
        p = strchr(p, ',');
        if (p == NULL) {
            return NULL;
        }
        p++;
    }
    e = strpbrk(p, ",\r\n");
    *len = e ? (size_t) (e - p) : strlen(p);
    return p;
}


static bench_burst_row_t *
bench_burst_read(const bench_opts_t *o, size_t *n_rows, kimi_err_t *err)
{
    FILE               *f = fopen(o->dataset_path, "r");
    char               *line = NULL, *end;
    size_t              cap = 0, n = 0, room = 0, len;
    ssize_t             got;
    int                 c_model, c_req, c_resp, lineno = 1;
    const char         *v;
    double              req, resp;
    bench_burst_row_t  *rows = NULL, *grown;

    if (f == NULL) {
        kimi_err_set(err, KIMI_EIO, "%s: %s", o->dataset_path,
                     strerror(errno));
        return NULL;
    }

    if (getline(&line, &cap, f) < 0
        || (c_model = bench_csv_column(line, "Model")) < 0
        || (c_req = bench_csv_column(line, "Request tokens")) < 0
        || (c_resp = bench_csv_column(line, "Response tokens")) < 0)
    {
        kimi_err_set(err, KIMI_EINVAL, "%s: the first line is not BurstGPT's "
                     "header (Model, Request tokens and Response tokens "
                     "columns)", o->dataset_path);
        goto failed;
    }

    while ((got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (got == 0 || line[0] == '\n' || line[0] == '\r') {
            continue;
        }
        v = bench_csv_field(line, c_model, &len);
        if (v == NULL) {
            goto bad_line;
        }
        if (len != 5 || strncmp(v, "GPT-4", 5) != 0) {
            continue;
        }
        v = bench_csv_field(line, c_resp, &len);
        if (v == NULL || (resp = strtod(v, &end), end != v + len)) {
            goto bad_line;
        }
        v = bench_csv_field(line, c_req, &len);
        if (v == NULL || (req = strtod(v, &end), end != v + len)) {
            goto bad_line;
        }
        if (!(resp > 0)) {
            continue;                       /* a failed request */
        }
        if (req < 0 || req > 1e7 || resp > 1e7) {
            goto bad_line;
        }
        if (n == room) {
            room = room ? room * 2 : 1024;
            grown = realloc(rows, room * sizeof(*rows));
            if (grown == NULL) {
                kimi_err_set(err, KIMI_ENOMEM, "%zu rows", room);
                goto failed;
            }
            rows = grown;
        }
        rows[n].in_len = (uint32_t) req;
        rows[n].out_len = (uint32_t) resp;
        n++;
    }

    free(line);
    fclose(f);
    *n_rows = n;
    return rows;

bad_line:

    kimi_err_set(err, KIMI_EINVAL, "%s line %d: a field is missing or not a "
                 "number", o->dataset_path, lineno);

failed:

    free(line);
    free(rows);
    fclose(f);
    return NULL;
}


static int
bench_dataset_burstgpt(const bench_opts_t *o, const kimi_tokenizer_t *tok,
    bench_req_t *reqs, kimi_err_t *err)
{
    bench_burst_row_t  *rows;
    bench_py_random_t   rs;
    uint32_t           *pick = NULL, t, k;
    int32_t            *ids = NULL;
    size_t              n_rows, i, j, vocab = kimi_tokenizer_n_vocab(tok);
    int                 rc = -1;

    rows = bench_burst_read(o, &n_rows, err);
    if (rows == NULL) {
        return -1;
    }
    if (n_rows == 0) {
        kimi_err_set(err, KIMI_EINVAL, "%s has no GPT-4 row with a positive "
                     "Response tokens", o->dataset_path);
        goto done;
    }
    if (o->seed > UINT32_MAX) {
        kimi_err_set(err, KIMI_EINVAL, "--seed must be below 2^32 for "
                     "burstgpt (numpy's RandomState)");
        goto done;
    }

    pick = malloc((n_rows > o->num_prompts ? n_rows : o->num_prompts)
                  * sizeof(uint32_t));
    if (pick == NULL) {
        kimi_err_set(err, KIMI_ENOMEM, "%zu rows", n_rows);
        goto done;
    }

    bench_np_legacy_seed(&rs, (uint32_t) o->seed);
    if (o->num_prompts <= n_rows) {
        /* permutation(n_rows)[:num_prompts]: legacy shuffle of arange */
        for (i = 0; i < n_rows; i++) {
            pick[i] = (uint32_t) i;
        }
        for (i = n_rows - 1; i > 0; i--) {
            j = bench_np_legacy_randint(&rs, (uint32_t) i + 1);
            t = pick[i];
            pick[i] = pick[j];
            pick[j] = t;
        }
    } else {
        for (i = 0; i < o->num_prompts; i++) {
            pick[i] = bench_np_legacy_randint(&rs, (uint32_t) n_rows);
        }
    }

    for (i = 0; i < o->num_prompts; i++) {
        const bench_burst_row_t  *r = &rows[pick[i]];

        ids = malloc(((size_t) r->in_len + 1) * sizeof(int32_t));
        if (ids == NULL) {
            kimi_err_set(err, KIMI_ENOMEM, "prompt %zu", i);
            goto done;
        }
        for (k = 0; k < r->in_len; k++) {
            ids[k] = (int32_t) ((i + k) % vocab);
        }
        if (kimi_detokenize(tok, ids, r->in_len, 0, &reqs[i].prompt,
                            &reqs[i].prompt_bytes, err) != 0)
        {
            goto done;
        }
        free(ids);
        ids = NULL;
        reqs[i].prompt_len = r->in_len;
        reqs[i].output_len = r->out_len;
    }

    rc = 0;

done:

    free(ids);
    free(pick);
    free(rows);
    return rc;
}


int
bench_dataset_file(const bench_opts_t *o, const kimi_tokenizer_t *tok,
    bench_req_t *reqs, kimi_err_t *err)
{
    int                 sharegpt, spec_bench, rc = -1;
    uint64_t            seed;
    char               *text;
    size_t              i, n, n_taken = 0, len;
    json_t             *data, **order = NULL, *e, *conv, *msgs;
    uint32_t            in_len, out_len, k;
    kimi_template_t    *tpl = NULL;
    bench_py_random_t   rng;

    if (strcmp(o->dataset_name, "burstgpt") == 0) {
        return bench_dataset_burstgpt(o, tok, reqs, err);
    }

    sharegpt = strcmp(o->dataset_name, "sharegpt") == 0;
    spec_bench = strcmp(o->dataset_name, "spec_bench") == 0;

    data = bench_dataset_read(o, sharegpt, err);
    if (data == NULL) {
        return -1;
    }

    n = json_array_size(data);
    if (n == 0) {
        kimi_err_set(err, KIMI_EINVAL, "%s holds no %s", o->dataset_path,
                     sharegpt ? "conversation of two turns" : "prompt");
        goto done;
    }

    order = malloc(n * sizeof(json_t *));
    if (order == NULL) {
        kimi_err_set(err, KIMI_ENOMEM, "dataset of %zu entries", n);
        goto done;
    }
    for (i = 0; i < n; i++) {
        order[i] = json_array_get(data, i);
    }

    /* vLLM builds SpecBench without --seed: Python's random at seed 0 */
    seed = spec_bench ? 0 : o->seed;
    bench_py_seed(&rng, seed);
    if (!o->disable_shuffle) {
        bench_py_shuffle(&rng, order, n, sizeof(order[0]));
    }

    if (!sharegpt && (spec_bench || !o->skip_chat_template)
        && kimi_template_load(&tpl, o->tokenizer, NULL, err) != 0)
    {
        kimi_err_wrap(err, "the chat template (--custom-skip-chat-template "
                      "sends the prompts as they are)");
        goto done;
    }

    for (i = 0; i < n && n_taken < o->num_prompts; i++) {
        const char  *reply = NULL;

        e = order[i];
        text = NULL;
        len = 0;
        out_len = sharegpt ? o->sharegpt_output_len
                  : spec_bench ? o->spec_bench_output_len : o->custom_output_len;

        /* the prompt text: ShareGPT's first turn, or a custom prompt as
         * it is or through the chat template */
        if (sharegpt) {
            conv = json_object_get(e, "conversations");
            reply = json_string_value(json_object_get(json_array_get(conv, 1),
                                                      "value"));
            if (reply == NULL
                || !json_is_string(json_object_get(json_array_get(conv, 0),
                                                   "value")))
            {
                continue;
            }
            text = strdup(json_string_value(
                       json_object_get(json_array_get(conv, 0), "value")));

        } else if (tpl != NULL) {
            msgs = json_pack("[{s:s,s:O}]", "role", "user", "content",
                             json_object_get(e, "prompt"));
            if (kimi_template_render(tpl, msgs, NULL, 1, &text, &len, err)
                != 0)
            {
                json_decref(msgs);
                goto done;
            }
            json_decref(msgs);

        } else {
            text = strdup(json_string_value(json_object_get(e, "prompt")));
        }

        if (text == NULL) {
            kimi_err_set(err, KIMI_ENOMEM, "prompt %zu", i);
            goto done;
        }
        if (len == 0) {
            len = strlen(text);
        }

        if (bench_count_tokens(tok, text, len, &in_len, err) != 0
            || (sharegpt && out_len == 0
                && bench_count_tokens(tok, reply, strlen(reply), &out_len,
                                      err) != 0))
        {
            free(text);
            goto done;
        }

        if (sharegpt
            && (in_len < BENCH_SHAREGPT_MIN_LEN
                || (o->sharegpt_output_len == 0
                    && out_len < BENCH_SHAREGPT_MIN_LEN)
                || in_len > BENCH_SHAREGPT_MAX_PROMPT
                || in_len + out_len > BENCH_SHAREGPT_MAX_TOTAL))
        {
            free(text);
            continue;
        }

        reqs[n_taken].prompt = text;
        reqs[n_taken].prompt_bytes = len;
        reqs[n_taken].prompt_len = in_len;
        reqs[n_taken].output_len = out_len;
        n_taken++;
    }

    if (n_taken == 0) {
        kimi_err_set(err, KIMI_EINVAL, "no entry of %s passes vLLM's "
                     "filters (prompt 4-1024 tokens, output at least 4, "
                     "2048 together)", o->dataset_path);
        goto done;
    }

    if (n_taken < o->num_prompts) {
        if (o->no_oversample) {
            kimi_err_set(err, KIMI_EINVAL, "%s gives %zu requests of the "
                         "%u asked for, and --no-oversample is set",
                         o->dataset_path, n_taken, o->num_prompts);
            goto done;
        }

        /* vLLM: random.seed(seed), then random.choice of the selected */
        fprintf(stderr, "kimi-bench: %s gives %zu requests; drawing the "
                "other %zu from them again (as vLLM oversamples)\n",
                o->dataset_path, n_taken, o->num_prompts - n_taken);
        bench_py_seed(&rng, seed);
        for (i = n_taken; i < o->num_prompts; i++) {
            k = bench_py_randbelow(&rng, (uint32_t) n_taken);
            reqs[i] = reqs[k];
            reqs[i].prompt = strdup(reqs[k].prompt);
            if (reqs[i].prompt == NULL) {
                kimi_err_set(err, KIMI_ENOMEM, "oversampling");
                goto done;
            }
        }
    }

    rc = 0;

done:

    kimi_template_free(tpl);
    free(order);
    json_decref(data);

    return rc;
}
