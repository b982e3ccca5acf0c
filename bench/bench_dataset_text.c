/*
 * The plain-text datasets of `vllm bench serve`: sonnet (--dataset-name
 * sonnet --dataset-path sonnet.txt: prompts of poem lines behind one fixed
 * instruction, a shared prefix of the file's first lines and random lines
 * after it, the prefix-caching benchmark of vLLM's early days) and
 * txt-slices (--dataset-name txt-slices --dataset-path FILE.txt: windows
 * of the file's tokens at random offsets).
 *
 * Owns:   reading the text and building each request's prompt and lengths.
 * Never:  touches the network (a URL as the path is refused: vLLM
 *         downloads it; download it first).
 *
 * Text is read as Python's text mode reads it ("\r\n" and "\r" are "\n").
 *
 * sonnet (vLLM's SonnetDataset.sample): the lines as Python's readlines()
 * gives them (each with its newline); avg = their mean token count; the
 * instruction "Pick as many lines as you can from these poem lines:\n"
 * through the chat template (one user message, generation prompt) is
 * base tokens, which --sonnet-input-len must exceed; a prompt holds
 * round((input_len - base) / avg) lines, the first round((prefix_len -
 * base) / avg) of them (at least 0) the file's first lines, the others
 * drawn with random.choices (random() * n, Python's random seeded by
 * --seed); its length is the templated prompt's token count, and a prompt
 * longer than --sonnet-input-len is drawn again.  The chat endpoint gets
 * the prompt as it is (the server applies the template), completions the
 * templated text.  Python's round() rounds halves to even, as rint() does.
 *
 * txt-slices (vLLM's TxtSlicesDataset.sample): the whole file tokenized
 * once (no bos); Python's random seeded by --seed; request i starts at
 * random.randint(0, tokens - 1) and takes --txt-slices-input-len ids from
 * there, cycling past the end; its prompt is their decoding, its length
 * that prompt's token count (with the bos a plain prompt gets).
 */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "text/kimi_text.h"
#include "bench.h"

#define BENCH_SONNET_BASE   "Pick as many lines as you can from these poem lines:\n"
#define BENCH_SONNET_TRIES  1000   /* draws a request may take: vLLM never stops */


/* The whole file as Python's open(path, encoding="utf-8").read() gives
 * it: universal newlines, "\r\n" and a lone "\r" read as "\n". */
static char *
bench_text_read(const char *path, size_t *len, kimi_err_t *err)
{
    char    buf[65536], *text = NULL, *more;
    size_t  cap = 0, got, i, n = 0;
    int     cr = 0;
    FILE   *f;

    f = fopen(path, "r");
    if (f == NULL) {
        kimi_err_set(err, KIMI_EIO, "%s: %s", path, strerror(errno));
        return NULL;
    }

    while ((got = fread(buf, 1, sizeof(buf), f)) > 0) {
        if (n + got + 1 > cap) {
            cap = 2 * (n + got + 1);
            more = realloc(text, cap);
            if (more == NULL) {
                kimi_err_set(err, KIMI_ENOMEM, "%s", path);
                free(text);
                fclose(f);
                return NULL;
            }
            text = more;
        }
        for (i = 0; i < got; i++) {
            if (buf[i] == '\n' && cr) {     /* the "\n" of a "\r\n" */
                cr = 0;
                continue;
            }
            cr = buf[i] == '\r';
            text[n++] = cr ? '\n' : buf[i];
        }
    }
    fclose(f);

    if (text == NULL) {
        text = strdup("");
        if (text == NULL) {
            kimi_err_set(err, KIMI_ENOMEM, "%s", path);
            return NULL;
        }
    }
    text[n] = '\0';
    *len = n;

    return text;
}


/* The file's lines, each with its newline (readlines()). */
static char **
bench_sonnet_lines(const char *path, size_t *n, kimi_err_t *err)
{
    char    *text, **lines, *p, *end, *nl;
    size_t   len, i;

    text = bench_text_read(path, &len, err);
    if (text == NULL) {
        return NULL;
    }

    *n = 0;
    for (i = 0; i < len; i++) {
        *n += text[i] == '\n' && i + 1 < len;
    }
    *n += len > 0;
    if (*n == 0) {
        kimi_err_set(err, KIMI_EINVAL, "%s holds no line", path);
        free(text);
        return NULL;
    }

    lines = calloc(*n, sizeof(char *));
    if (lines == NULL) {
        kimi_err_set(err, KIMI_ENOMEM, "%s: %zu lines", path, *n);
        free(text);
        return NULL;
    }

    for (p = text, end = text + len, i = 0; p < end; i++) {
        nl = memchr(p, '\n', (size_t) (end - p));
        nl = nl != NULL ? nl + 1 : end;
        lines[i] = strndup(p, (size_t) (nl - p));
        if (lines[i] == NULL) {
            kimi_err_set(err, KIMI_ENOMEM, "%s: line %zu", path, i + 1);
            while (i > 0) {
                free(lines[--i]);
            }
            free(lines);
            free(text);
            return NULL;
        }
        p = nl;
    }

    free(text);

    return lines;
}


/* prompt as one user message through the template: its text and tokens */
static int
bench_sonnet_format(const kimi_template_t *tpl, const kimi_tokenizer_t *tok,
    const char *prompt, char **text, size_t *len, uint32_t *n_tokens,
    kimi_err_t *err)
{
    int      rc;
    json_t  *msgs;

    msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", prompt);
    if (msgs == NULL) {
        return kimi_err_set(err, KIMI_EINVAL, "a prompt that is not UTF-8 "
                            "(the file's lines must be)");
    }

    rc = kimi_template_render(tpl, msgs, NULL, 1, text, len, err);
    json_decref(msgs);
    if (rc != 0) {
        return -1;
    }

    if (bench_count_tokens(tok, *text, *len, n_tokens, err) != 0) {
        free(*text);
        *text = NULL;
        return -1;
    }

    return 0;
}


int
bench_dataset_sonnet(const bench_opts_t *o, const kimi_tokenizer_t *tok,
    bench_req_t *reqs, kimi_err_t *err)
{
    int                 rc = -1;
    char              **lines, *prompt = NULL, *text = NULL, *p;
    size_t              n_lines, i, k, j, len, prefix_bytes, cap, tries;
    double              sum = 0.0, avg;
    uint32_t            n, base, n_input, n_prefix, n_extra, prompt_len;
    kimi_template_t    *tpl = NULL;
    bench_py_random_t   rng;

    lines = bench_sonnet_lines(o->dataset_path, &n_lines, err);
    if (lines == NULL) {
        return -1;
    }

    if (kimi_template_load(&tpl, o->tokenizer, NULL, err) != 0) {
        kimi_err_wrap(err, "sonnet needs the model's chat template");
        goto done;
    }

    for (i = 0; i < n_lines; i++) {
        if (bench_count_tokens(tok, lines[i], strlen(lines[i]), &n, err) != 0) {
            goto done;
        }
        sum += n;
    }
    avg = sum / n_lines;

    if (bench_sonnet_format(tpl, tok, BENCH_SONNET_BASE, &text, &len, &base,
                            err) != 0)
    {
        goto done;
    }
    free(text);
    text = NULL;

    if (o->sonnet_input_len <= base) {
        kimi_err_set(err, KIMI_EINVAL, "--sonnet-input-len %u must be higher "
                     "than the base prompt length (%u)", o->sonnet_input_len,
                     base);
        goto done;
    }

    n_input = (uint32_t) rint((o->sonnet_input_len - (double) base) / avg);
    n_prefix = (uint32_t) fmax(rint((o->sonnet_prefix_len - (double) base)
                                    / avg), 0.0);
    if (n_prefix > n_lines) {
        n_prefix = (uint32_t) n_lines;        /* data[:k] */
    }
    n_extra = n_input > n_prefix ? n_input - n_prefix : 0;

    /* the instruction and the prefix lines, then room for the extra lines */
    prefix_bytes = strlen(BENCH_SONNET_BASE);
    cap = 0;
    for (i = 0; i < n_lines; i++) {
        cap = strlen(lines[i]) > cap ? strlen(lines[i]) : cap;
    }
    for (i = 0; i < n_prefix; i++) {
        prefix_bytes += strlen(lines[i]);
    }
    cap = prefix_bytes + (size_t) n_extra * cap + 1;
    prompt = malloc(cap);
    if (prompt == NULL) {
        kimi_err_set(err, KIMI_ENOMEM, "a prompt of %zu bytes", cap);
        goto done;
    }
    p = prompt;
    p += sprintf(p, "%s", BENCH_SONNET_BASE);
    for (i = 0; i < n_prefix; i++) {
        p += sprintf(p, "%s", lines[i]);
    }

    bench_py_seed(&rng, o->seed);

    for (k = 0, tries = 0; k < o->num_prompts; tries++) {
        if (tries == (size_t) BENCH_SONNET_TRIES * o->num_prompts) {
            kimi_err_set(err, KIMI_EINVAL, "sonnet: %zu draws of %u lines "
                         "gave %zu prompts within --sonnet-input-len %u "
                         "tokens of the %u asked for", tries, n_input, k,
                         o->sonnet_input_len, o->num_prompts);
            goto done;
        }

        p = prompt + prefix_bytes;
        for (j = 0; j < n_extra; j++) {
            p += sprintf(p, "%s",
                         lines[(size_t) (bench_py_random(&rng) * n_lines)]);
        }

        if (bench_sonnet_format(tpl, tok, prompt, &text, &len, &prompt_len,
                                err) != 0)
        {
            goto done;
        }

        if (prompt_len > o->sonnet_input_len) {
            free(text);
            text = NULL;
            continue;
        }

        if (o->backend == BENCH_BACKEND_CHAT) {
            free(text);
            text = strdup(prompt);
            len = strlen(prompt);
            if (text == NULL) {
                kimi_err_set(err, KIMI_ENOMEM, "prompt %zu", k);
                goto done;
            }
        }

        reqs[k].prompt = text;
        reqs[k].prompt_bytes = len;
        reqs[k].prompt_len = prompt_len;
        reqs[k].output_len = o->sonnet_output_len;
        text = NULL;
        k++;
    }

    rc = 0;

done:

    free(text);
    free(prompt);
    kimi_template_free(tpl);
    for (i = 0; i < n_lines; i++) {
        free(lines[i]);
    }
    free(lines);

    return rc;
}


int
bench_dataset_txt_slices(const bench_opts_t *o, const kimi_tokenizer_t *tok,
    bench_req_t *reqs, kimi_err_t *err)
{
    int                 rc = -1;
    char               *text = NULL;
    size_t              len, n_ids = 0, i, j;
    int32_t            *ids = NULL, *win = NULL;
    uint32_t            start;
    bench_py_random_t   rng;

    if (strncmp(o->dataset_path, "http://", 7) == 0
        || strncmp(o->dataset_path, "https://", 8) == 0)
    {
        return kimi_err_set(err, KIMI_EINVAL, "%s: a URL (vLLM downloads "
                            "it; download it and pass the file)",
                            o->dataset_path);
    }

    text = bench_text_read(o->dataset_path, &len, err);
    if (text == NULL) {
        return -1;
    }

    if (len == 0
        || kimi_tokenize(tok, text, len, 1, &ids, &n_ids, err) != 0
        || n_ids == 0)
    {
        if (len == 0 || n_ids == 0) {
            kimi_err_set(err, KIMI_EINVAL, "%s is empty or cannot be "
                         "tokenized", o->dataset_path);
        }
        goto done;
    }

    win = malloc((size_t) o->txt_slices_input_len * sizeof(int32_t) + 1);
    if (win == NULL) {
        kimi_err_set(err, KIMI_ENOMEM, "a window of %u tokens",
                     o->txt_slices_input_len);
        goto done;
    }

    bench_py_seed(&rng, o->seed);
    for (i = 0; i < o->num_prompts; i++) {
        start = bench_py_randbelow(&rng, (uint32_t) n_ids);   /* randint(0, n - 1) */
        for (j = 0; j < o->txt_slices_input_len; j++) {
            win[j] = ids[(start + j) % n_ids];
        }
        if (kimi_detokenize(tok, win, o->txt_slices_input_len, 0,
                            &reqs[i].prompt, &reqs[i].prompt_bytes, err) != 0
            || bench_count_tokens(tok, reqs[i].prompt, reqs[i].prompt_bytes,
                                  &reqs[i].prompt_len, err) != 0)
        {
            goto done;
        }
        reqs[i].output_len = o->txt_slices_output_len;
    }

    rc = 0;

done:

    free(win);
    free(ids);
    free(text);

    return rc;
}
