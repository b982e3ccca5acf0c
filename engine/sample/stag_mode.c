/*
 * Structural tags (text/struct_tag.h): free text in which each trigger
 * opens a structure - the rest of one of the begin texts the trigger
 * starts, a JSON value its schema describes (json_mode.c), the end text -
 * after which free text goes on.
 *
 * Owns:   the mode (free, begin, content, end) and feeding bytes to it; the
 *         sampler (sample.c) masks every token whose bytes it refuses and
 *         lets the output end in free text only.
 * Never:  looks at token ids or logits; lets whitespace sit between a
 *         structure's JSON and its end text (the end follows the value's
 *         last byte, as xgrammar writes it); trusts words that passed
 *         kimi_stag_view.
 *
 * Triggers: a trigger is found when the free text ends with it; when two
 * end at the same byte (one a suffix of the other) the longer one opens
 * the structure.
 */

#include <stddef.h>
#include <string.h>

#include "stag_mode.h"
#include "../text/regex_dfa.h"


/* forced: the next structure's begin from its first byte, any of them */
static void
kimi_stag_any_begin(kimi_stag_state_t *s)
{
    s->mode = KIMI_STAG_BEGIN;
    s->pos = 0;
    s->cand = s->t->n_struct == 64 ? ~0ull : (1ull << s->t->n_struct) - 1;
}


void
kimi_stag_init(kimi_stag_state_t *s, const kimi_stag_t *t, int no_ws)
{
    s->t = t;
    s->mode = KIMI_STAG_FREE;
    s->no_ws = (unsigned char) (no_ws != 0);
    s->tail = 0;
    s->pos = 0;
    s->which = 0;
    s->cand = 0;
    s->n_done = 0;
    if (t->flags & KIMI_STAG_FORCED) {
        kimi_stag_any_begin(s);
    }
}


void
kimi_stag_copy(kimi_stag_state_t *dst, const kimi_stag_state_t *src)
{
    memcpy(dst, src, offsetof(kimi_stag_state_t, recent));
    if (src->mode == KIMI_STAG_FREE || src->mode == KIMI_STAG_TEXT) {
        memcpy(dst->recent, src->recent, src->tail);
    } else if (src->mode == KIMI_STAG_JSON) {
        kimi_json_copy(&dst->json, &src->json);
    }
}


int
kimi_stag_is_free(const kimi_stag_state_t *s)
{
    return s->mode == KIMI_STAG_FREE;
}


int
kimi_stag_may_end(const kimi_stag_state_t *s)
{
    /* between structures: free text, or (forced) before a begin or the
     * separator has a byte - not after a separator, which wants a begin */
    int  between = s->mode == KIMI_STAG_FREE
                   || ((s->t->flags & KIMI_STAG_FORCED) && s->pos == 0
                       && (s->mode == KIMI_STAG_SEP
                           || (s->mode == KIMI_STAG_BEGIN
                               && (s->n_done == 0 || s->t->sep_len == 0))));

    return s->mode == KIMI_STAG_DONE
           || (between
               && (s->n_done > 0 || !(s->t->flags & KIMI_STAG_AT_LEAST_ONE)));
}


int
kimi_stag_special(kimi_stag_state_t *s)
{
    if (s->mode != KIMI_STAG_FREE) {
        return -1;
    }
    s->tail = 0;
    return 0;
}


int
kimi_stag_must_feed(const kimi_stag_state_t *s, const char *p, size_t n)
{
    const kimi_stag_t  *t = s->t;

    if (s->mode == KIMI_STAG_TEXT) {
        return memchr(p, t->end[s->which][t->end_len[s->which] - 1], n) != NULL;
    }
    if (s->mode != KIMI_STAG_FREE) {
        return 1;
    }
    for (uint32_t i = 0; i < t->n_trig; i++) {
        if (memchr(p, t->trig[i][t->trig_len[i] - 1], n) != NULL) {
            return 1;
        }
    }
    return 0;
}


/* after a begin's last byte: the structure's content */
static void
kimi_stag_enter_content(kimi_stag_state_t *s, uint32_t which)
{
    s->which = which;
    s->pos = 0;
    switch (s->t->kind[which]) {
    case KIMI_STAG_C_TEXT:
        s->mode = KIMI_STAG_TEXT;
        s->tail = 0;
        break;
    case KIMI_STAG_C_CONST:
        s->mode = KIMI_STAG_CONST;
        break;
    case KIMI_STAG_C_REGEX:
        s->mode = KIMI_STAG_REGEX;
        s->rx = 0;
        memset(s->ends, 0, sizeof(s->ends));
        break;
    default:
        s->mode = KIMI_STAG_JSON;
        kimi_json_init_schema(&s->json, s->t->prog[which]);
        if (s->no_ws) {
            kimi_json_no_ws(&s->json);
        }
    }
}

/* a structure's last byte: free text again, the next structure (forced:
 * after the separator), or nothing more */
static void
kimi_stag_done(kimi_stag_state_t *s)
{
    s->n_done++;
    s->tail = 0;
    s->pos = 0;
    if (s->t->flags & KIMI_STAG_STOP_AFTER) {
        s->mode = KIMI_STAG_DONE;
    } else if (!(s->t->flags & KIMI_STAG_FORCED)) {
        s->mode = KIMI_STAG_FREE;
    } else if (s->t->sep_len > 0) {
        s->mode = KIMI_STAG_SEP;
    } else {
        kimi_stag_any_begin(s);
    }
}


/* free text gained byte c (already in recent): the longest trigger it
 * completes opens the structures whose begin it starts */
static void
kimi_stag_trigger(kimi_stag_state_t *s)
{
    const kimi_stag_t  *t = s->t;
    uint32_t            best = 0, found = 0;
    uint64_t            cand = 0;

    for (uint32_t i = 0; i < t->n_trig; i++) {
        uint32_t  len = t->trig_len[i], k;

        if (len > s->tail || len <= best) {
            continue;
        }
        for (k = 0; k < len; k++) {
            if (s->recent[s->tail - len + k] != (unsigned char) t->trig[i][k]) {
                break;
            }
        }
        if (k == len) {
            best = len;
            found = i + 1;
        }
    }

    if (!found) {
        return;
    }

    for (uint32_t j = 0; j < t->n_struct; j++) {
        uint32_t  k;

        if (t->begin_len[j] < best) {
            continue;
        }
        for (k = 0; k < best; k++) {
            if (t->begin[j][k] != t->trig[found - 1][k]) {
                break;
            }
        }
        if (k == best) {
            cand |= 1ull << j;
        }
    }

    /* the compiler saw that every begin starts with a trigger, not that
     * every trigger starts a begin: one that starts none is plain text */
    if (cand == 0) {
        return;
    }

    s->mode = KIMI_STAG_BEGIN;
    s->cand = cand;
    s->pos = best;

    for (uint32_t j = 0; j < t->n_struct; j++) {
        if ((cand >> j & 1) && t->begin_len[j] == best) {
            kimi_stag_enter_content(s, j);     /* the begin is the trigger */
            return;
        }
    }
}


/* A pattern's text: the match going on, and the end text begun at each
 * place the match could close; the first end text written closes it. */
static int
kimi_stag_regex_byte(kimi_stag_state_t *s, unsigned char c)
{
    const kimi_stag_t  *t = s->t;
    const int32_t      *end = t->end[s->which], *prog = t->prog[s->which];
    uint32_t            elen = t->end_len[s->which];
    uint64_t            next[4] = { 0, 0, 0, 0 };
    int                 any = 0;

    for (uint32_t p = 1; p < elen; p++) {
        if ((s->ends[p >> 6] >> (p & 63) & 1) && end[p] == c) {
            if (p + 1 == elen) {
                kimi_stag_done(s);
                return 0;
            }
            next[(p + 1) >> 6] |= 1ull << ((p + 1) & 63);
            any = 1;
        }
    }
    if (s->rx >= 0 && kimi_regex_accepts(prog, s->rx) && end[0] == c) {
        if (elen == 1) {
            kimi_stag_done(s);
            return 0;
        }
        next[0] |= 2;
        any = 1;
    }

    s->rx = s->rx >= 0 ? kimi_regex_step(prog, s->rx, (const char *) &c, 1)
                       : -1;
    memcpy(s->ends, next, sizeof(next));
    return s->rx >= 0 || any ? 0 : -1;
}


static int
kimi_stag_byte(kimi_stag_state_t *s, unsigned char c)
{
    const kimi_stag_t  *t = s->t;
    uint64_t            next = 0;

    switch (s->mode) {

    case KIMI_STAG_FREE:
        if (s->tail == t->max_trig) {        /* only a trigger's length counts */
            memmove(s->recent, s->recent + 1, s->tail - 1);
            s->tail--;
        }
        s->recent[s->tail++] = c;
        kimi_stag_trigger(s);
        return 0;

    case KIMI_STAG_BEGIN:
        for (uint32_t j = 0; j < t->n_struct; j++) {
            if ((s->cand >> j & 1) && t->begin[j][s->pos] == c) {
                next |= 1ull << j;
            }
        }
        if (next == 0) {
            return -1;
        }
        s->cand = next;
        s->pos++;
        for (uint32_t j = 0; j < t->n_struct; j++) {
            /* no begin is a prefix of another: the one that ends is the
             * only one left */
            if ((next >> j & 1) && t->begin_len[j] == s->pos) {
                kimi_stag_enter_content(s, j);
                break;
            }
        }
        return 0;

    case KIMI_STAG_JSON:
        if (kimi_json_feed(&s->json, (const char *) &c, 1) != 0) {
            return -1;
        }
        if (kimi_json_done(&s->json)) {
            s->mode = KIMI_STAG_END;
            s->pos = 0;
            if (t->end_len[s->which] == 0) {
                kimi_stag_done(s);
            }
        }
        return 0;

    case KIMI_STAG_TEXT:                    /* until it ends with the end text */
        if (s->tail == t->end_len[s->which]) {
            memmove(s->recent, s->recent + 1, s->tail - 1);
            s->tail--;
        }
        s->recent[s->tail++] = c;
        if (s->tail == t->end_len[s->which]) {
            uint32_t  k;

            for (k = 0; k < s->tail; k++) {
                if (s->recent[k] != (unsigned char) t->end[s->which][k]) {
                    break;
                }
            }
            if (k == s->tail) {
                kimi_stag_done(s);
            }
        }
        return 0;

    case KIMI_STAG_REGEX:
        return kimi_stag_regex_byte(s, c);

    case KIMI_STAG_CONST:
        if (t->prog[s->which][s->pos] != c) {
            return -1;
        }
        if (++s->pos == t->prog_len[s->which]) {
            s->mode = KIMI_STAG_END;
            s->pos = 0;
            if (t->end_len[s->which] == 0) {
                kimi_stag_done(s);
            }
        }
        return 0;

    case KIMI_STAG_SEP:
        if (t->sep[s->pos] != c) {
            return -1;
        }
        if (++s->pos == t->sep_len) {
            kimi_stag_any_begin(s);
        }
        return 0;

    case KIMI_STAG_END:
        if (t->end[s->which][s->pos] != c) {
            return -1;
        }
        if (++s->pos == t->end_len[s->which]) {
            kimi_stag_done(s);
        }
        return 0;

    default:                                /* KIMI_STAG_DONE */
        return -1;
    }
}


int
kimi_stag_feed(kimi_stag_state_t *s, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (kimi_stag_byte(s, (unsigned char) p[i]) != 0) {
            return -1;
        }
    }
    return 0;
}
