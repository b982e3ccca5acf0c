/*
 * Structural tags (text/struct_tag.h): a recogniser of a tree of formats,
 * fed byte by byte.  Its state is the path of open formats from the root
 * (stack[]) and what the innermost one is reading: a fixed text of a
 * choice (the texts still possible), a JSON value (json_mode.c), a
 * pattern's DFA state, a grammar's configurations (gram.h), or free / any
 * text (its last bytes).
 *
 * Owns:   moving through the tree: a format complete hands over to its
 *         parent (the next element, the tag's end, free text again, the
 *         separator); a fixed text complete jumps to where it leads
 *         (kimi_stag_jump).  The sampler (sample.c) masks every token
 *         whose bytes it refuses and lets the output end where
 *         kimi_stag_may_end says.
 * Never:  looks at token ids or logits; guesses: every choice was made a
 *         choice between fixed texts none a prefix of another's by
 *         kimi_stag_view, so one byte at a time decides; lets whitespace
 *         sit between a JSON value and the text after it; trusts words
 *         that did not pass kimi_stag_view.
 *
 * Free text and any text: the text ends where one of the fixed texts
 * that may follow it has just been written (its bytes are that text, not
 * the free text's); a trigger opens the begins it starts; when two end at
 * the same byte (one a suffix of the other) the longer one counts.  The
 * enclosing tag's end, when something else ends the text, may not be
 * written in it.
 */

#include <stddef.h>
#include <string.h>

#include "stag_mode.h"
#include "../text/regex_dfa.h"


/* a choice between fixed texts, from its first byte */
static void
kimi_stag_lit(kimi_stag_state_t *s, uint32_t set)
{
    uint32_t  n = s->t->set[set].n;

    s->mode = KIMI_STAG_LIT;
    s->set = (uint16_t) set;
    s->pos = 0;
    s->cand = n >= 64 ? ~0ull : (1ull << n) - 1;
}


/* starts reading format n, whose parent is the innermost open format */
static void
kimi_stag_enter(kimi_stag_state_t *s, uint32_t n)
{
    const kimi_stag_t  *t = s->t;

    for ( ;; ) {
        const kimi_stag_node_t  *nd = &t->node[n];

        switch (nd->type) {
        case KIMI_STAG_N_CONST:
        case KIMI_STAG_N_TAG:
        case KIMI_STAG_N_OR:
            kimi_stag_lit(s, nd->set[0]);
            return;
        case KIMI_STAG_N_SEQ:
            s->stack[s->depth++] = (uint16_t) n;
            n = t->children[nd->child];
            continue;
        default:
            break;
        }

        s->stack[s->depth++] = (uint16_t) n;
        switch (nd->type) {
        case KIMI_STAG_N_TRIG:
            if (nd->flags & KIMI_STAG_AT_LEAST_ONE) {
                kimi_stag_lit(s, nd->set[0]);   /* xgrammar: a tag at once */
            } else {
                s->mode = KIMI_STAG_FREE;
                s->tail = 0;
            }
            return;
        case KIMI_STAG_N_SEPTAGS:
            kimi_stag_lit(s, nd->set[0]);
            return;
        case KIMI_STAG_N_JSON:
            s->mode = KIMI_STAG_JSON;
            kimi_json_init_schema(&s->json, nd->prog);
            if (s->no_ws) {
                kimi_json_no_ws(&s->json);
            }
            return;
        case KIMI_STAG_N_REGEX:
            s->mode = KIMI_STAG_REGEX;
            s->rx = 0;
            memset(s->ends, 0, sizeof(s->ends));
            return;
        case KIMI_STAG_N_GRAM:
            s->mode = KIMI_STAG_GRAM;
            s->rx = s->arena != NULL
                    && kimi_gram_start(&s->gram, nd->prog, s->arena) == 0
                    ? 0 : -1;
            memset(s->ends, 0, sizeof(s->ends));
            return;
        default:                                /* any text */
            s->mode = KIMI_STAG_TEXT;
            s->tail = 0;
            return;
        }
    }
}


/* the innermost open format is complete: its parent goes on */
static void
kimi_stag_finish(kimi_stag_state_t *s)
{
    const kimi_stag_t  *t = s->t;

    for ( ;; ) {
        uint32_t                 c = s->stack[--s->depth], p;
        const kimi_stag_node_t  *pd;

        if (s->depth == 0) {
            s->mode = KIMI_STAG_DONE;
            return;
        }
        p = s->stack[s->depth - 1];
        pd = &t->node[p];

        switch (pd->type) {
        case KIMI_STAG_N_SEQ:
            if (t->node[c].index + 1u < pd->n_child) {
                kimi_stag_enter(s, t->children[pd->child + t->node[c].index
                                               + 1]);
                return;
            }
            break;
        case KIMI_STAG_N_TAG:                   /* its content */
            if (pd->set[1] != KIMI_STAG_NO_SET) {
                kimi_stag_lit(s, pd->set[1]);
                return;
            }
            break;
        case KIMI_STAG_N_TRIG:                  /* one of its tags */
            if (!(pd->flags & KIMI_STAG_STOP_AFTER)) {
                s->mode = KIMI_STAG_FREE;
                s->tail = 0;
                return;
            }
            break;
        case KIMI_STAG_N_SEPTAGS:
            if (!(pd->flags & KIMI_STAG_STOP_AFTER)) {
                kimi_stag_lit(s, pd->set[1]);
                return;
            }
            break;
        default:                                /* or: one element */
            break;
        }
    }
}


/* a's fixed text has just been written: close the open formats off its
 * path, open those on it down to its format, and go on from there */
static void
kimi_stag_jump(kimi_stag_state_t *s, const kimi_stag_alt_t *a)
{
    const kimi_stag_t  *t = s->t;
    uint32_t            x = a->node, dx = t->node[x].depth;

    while (s->depth > 0) {
        uint32_t  d = s->depth - 1u, y = x;

        if (d <= dx) {
            for (uint32_t k = dx; k > d; k--) {
                y = t->node[y].parent;
            }
            if (s->stack[d] == y) {
                break;
            }
        }
        s->depth--;
    }
    for ( ;; ) {
        uint32_t  d = t->node[x].depth;

        if (d < s->depth) {
            break;
        }
        s->stack[d] = (uint16_t) x;
        if (d == 0) {
            break;
        }
        x = t->node[x].parent;
    }
    s->depth = (uint16_t) (dx + 1);

    switch (a->kind) {
    case KIMI_STAG_A_BEGIN:
        kimi_stag_enter(s, t->children[t->node[a->node].child]);
        return;
    case KIMI_STAG_A_SEP:
        kimi_stag_lit(s, t->node[a->node].set[2]);
        return;
    default:                                    /* a constant, an end */
        kimi_stag_finish(s);
        return;
    }
}


void
kimi_stag_init(kimi_stag_state_t *s, const kimi_stag_t *t, int no_ws,
    kimi_gram_arena_t *arena)
{
    s->t = t;
    s->arena = arena;
    if (arena != NULL) {
        kimi_gram_clear(arena);
    }
    s->no_ws = (unsigned char) (no_ws != 0);
    s->tail = 0;
    s->depth = 0;
    s->set = 0;
    s->pos = 0;
    s->cand = 0;
    s->rx = 0;
    kimi_stag_enter(s, 0);
}


void
kimi_stag_copy(kimi_stag_state_t *dst, const kimi_stag_state_t *src)
{
    memcpy(dst, src, offsetof(kimi_stag_state_t, recent));
    if (src->mode == KIMI_STAG_FREE || src->mode == KIMI_STAG_TEXT) {
        memcpy(dst->recent, src->recent, src->tail);
    } else if (src->mode == KIMI_STAG_JSON) {
        kimi_json_copy(&dst->json, &src->json);
    } else if (src->mode == KIMI_STAG_GRAM && src->rx >= 0) {
        kimi_gram_copy(&dst->gram, &src->gram);
    }
    dst->arena = src->arena;
}


int
kimi_stag_has_gram(const kimi_stag_t *t)
{
    for (uint32_t i = 0; i < t->n_node; i++) {
        if (t->node[i].type == KIMI_STAG_N_GRAM) {
            return 1;
        }
    }
    return 0;
}


int
kimi_stag_is_free(const kimi_stag_state_t *s)
{
    return s->mode == KIMI_STAG_FREE;
}


/* free text, any text, a pattern: what ends it */
static const kimi_stag_set_t *
kimi_stag_stops(const kimi_stag_state_t *s)
{
    return &s->t->set[s->t->node[s->stack[s->depth - 1]].set[1]];
}


/* a pattern or a grammar: whether the text so far is a whole match */
static int
kimi_stag_pat_accepts(const kimi_stag_state_t *s)
{
    if (s->rx < 0) {
        return 0;
    }
    return s->mode == KIMI_STAG_GRAM
           ? kimi_gram_accepts(&s->gram)
           : kimi_regex_accepts(s->t->node[s->stack[s->depth - 1]].prog,
                                s->rx);
}


/* ... and one more byte of it: 0 while a match may still go on */
static int
kimi_stag_pat_step(kimi_stag_state_t *s, unsigned char c)
{
    if (s->rx < 0) {
        return -1;
    }
    if (s->mode == KIMI_STAG_GRAM) {
        s->rx = kimi_gram_feed(&s->gram, (const char *) &c, 1) == 0 ? 0 : -1;
    } else {
        s->rx = kimi_regex_step(s->t->node[s->stack[s->depth - 1]].prog,
                                s->rx, (const char *) &c, 1);
    }
    return s->rx >= 0 ? 0 : -1;
}


int
kimi_stag_may_end(const kimi_stag_state_t *s)
{
    const kimi_stag_t  *t = s->t;

    switch (s->mode) {
    case KIMI_STAG_DONE:
        return 1;
    case KIMI_STAG_LIT:
        return s->pos == 0 && t->set[s->set].eof;
    case KIMI_STAG_FREE:
    case KIMI_STAG_TEXT:
        return kimi_stag_stops(s)->eof;
    case KIMI_STAG_REGEX:
    case KIMI_STAG_GRAM:
        return kimi_stag_stops(s)->eof && kimi_stag_pat_accepts(s);
    default:
        return 0;
    }
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
    const kimi_stag_set_t  *st;

    if (s->mode != KIMI_STAG_FREE && s->mode != KIMI_STAG_TEXT) {
        return 1;
    }
    st = kimi_stag_stops(s);
    for (uint32_t i = st->first; i < st->first + st->n; i++) {
        const kimi_stag_alt_t  *a = &s->t->alt[i];

        if (memchr(p, a->text[a->len - 1], n) != NULL) {
            return 1;
        }
    }
    return 0;
}


/* a fixed text of the choice: the texts the byte keeps possible; the one
 * it completes (no other is a prefix of it) leads on */
static int
kimi_stag_lit_byte(kimi_stag_state_t *s, unsigned char c)
{
    const kimi_stag_set_t  *st = &s->t->set[s->set];
    const kimi_stag_alt_t  *a = s->t->alt + st->first;
    uint64_t                next = 0;

    for (uint32_t i = 0; i < st->n; i++) {
        if ((s->cand >> i & 1) && a[i].len > s->pos
            && a[i].text[s->pos] == c)
        {
            next |= 1ull << i;
        }
    }
    if (next == 0) {
        return -1;
    }
    s->cand = next;
    s->pos++;
    for (uint32_t i = 0; i < st->n; i++) {
        if ((next >> i & 1) && a[i].len == s->pos) {
            kimi_stag_jump(s, &a[i]);
            break;
        }
    }
    return 0;
}


/* free or any text gained byte c: the longest fixed text it completes */
static int
kimi_stag_text_byte(kimi_stag_state_t *s, unsigned char c)
{
    const kimi_stag_t      *t = s->t;
    const kimi_stag_set_t  *st = kimi_stag_stops(s);
    const kimi_stag_alt_t  *best = NULL;

    if (st->max_len == 0) {
        return 0;                       /* nothing ends it: the output's end */
    }
    if (s->tail == st->max_len) {
        memmove(s->recent, s->recent + 1, s->tail - 1u);
        s->tail--;
    }
    s->recent[s->tail++] = c;

    for (uint32_t i = st->first; i < st->first + st->n; i++) {
        const kimi_stag_alt_t  *a = &t->alt[i];
        uint32_t                k;

        if (a->len > s->tail || a->text[a->len - 1] != c
            || (best != NULL && a->len <= best->len))
        {
            continue;
        }
        for (k = 0; k < a->len; k++) {
            if (s->recent[s->tail - a->len + k] != (unsigned char) a->text[k]) {
                break;
            }
        }
        if (k == a->len) {
            best = a;
        }
    }
    if (best == NULL) {
        return 0;
    }

    if (best->kind == KIMI_STAG_A_FORBID) {
        return -1;
    }
    if (best->kind != KIMI_STAG_A_TRIGGER) {
        kimi_stag_jump(s, best);
        return 0;
    }

    /* a trigger: the begins it starts (one that starts none is text) */
    {
        uint32_t                set = t->node[best->node].set[0];
        const kimi_stag_alt_t  *b = t->alt + t->set[set].first;
        uint64_t                cand = 0;

        for (uint32_t j = 0; j < t->set[set].n; j++) {
            uint32_t  k;

            if (b[j].len < best->len) {
                continue;
            }
            for (k = 0; k < best->len && b[j].text[k] == best->text[k]; k++) {
                /* void */
            }
            if (k == best->len) {
                cand |= 1ull << j;
            }
        }
        if (cand == 0) {
            return 0;
        }
        s->mode = KIMI_STAG_LIT;
        s->set = (uint16_t) set;
        s->cand = cand;
        s->pos = best->len;
        for (uint32_t j = 0; j < t->set[set].n; j++) {
            if ((cand >> j & 1) && b[j].len == best->len) {
                kimi_stag_jump(s, &b[j]);       /* the begin is the trigger */
                break;
            }
        }
    }
    return 0;
}


/* A pattern's (or a grammar's) text: the match going on, and the text
 * after it begun at each place the match could stop; the first such text
 * written ends it.  Where nothing follows, the output's end does. */
static int
kimi_stag_pattern_byte(kimi_stag_state_t *s, unsigned char c)
{
    const kimi_stag_set_t  *st = kimi_stag_stops(s);
    const kimi_stag_alt_t  *a = &s->t->alt[st->first];
    uint64_t                next[4] = { 0, 0, 0, 0 };
    int                     any = 0;

    if (st->n == 0) {
        return kimi_stag_pat_step(s, c);
    }

    for (uint32_t p = 1; p < a->len; p++) {
        if ((s->ends[p >> 6] >> (p & 63) & 1) && a->text[p] == c) {
            if (p + 1 == a->len) {
                kimi_stag_jump(s, a);
                return 0;
            }
            next[(p + 1) >> 6] |= 1ull << ((p + 1) & 63);
            any = 1;
        }
    }
    if (kimi_stag_pat_accepts(s) && a->text[0] == c) {
        if (a->len == 1) {
            kimi_stag_jump(s, a);
            return 0;
        }
        next[0] |= 2;
        any = 1;
    }

    kimi_stag_pat_step(s, c);
    memcpy(s->ends, next, sizeof(next));
    return s->rx >= 0 || any ? 0 : -1;
}


static int
kimi_stag_byte(kimi_stag_state_t *s, unsigned char c)
{
    switch (s->mode) {
    case KIMI_STAG_LIT:
        return kimi_stag_lit_byte(s, c);
    case KIMI_STAG_FREE:
    case KIMI_STAG_TEXT:
        return kimi_stag_text_byte(s, c);
    case KIMI_STAG_REGEX:
    case KIMI_STAG_GRAM:
        return kimi_stag_pattern_byte(s, c);
    case KIMI_STAG_JSON:
        if (kimi_json_feed(&s->json, (const char *) &c, 1) != 0) {
            return -1;
        }
        if (kimi_json_done(&s->json)) {
            kimi_stag_finish(s);
        }
        return 0;
    default:                                    /* KIMI_STAG_DONE */
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
