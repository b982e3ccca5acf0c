/*
 * Grammars with recursion: the pushdown recogniser of gram.h.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gram.h"
#include "regex_dfa.h"

#define GRAM_BUCKETS  4096              /* stack nodes' hash heads */
#define GRAM_SEEN     8192              /* (state, stack) pairs a byte step */
#define GRAM_WORK     8192              /* the closure's pending pairs */

typedef struct {
    int32_t  ret;                       /* state after the callee's END */
    int32_t  parent;                    /* node below; 0: none */
    int32_t  depth;
    int32_t  next;                      /* hash chain; 0: end */
} gram_node_t;

struct kimi_gram_arena {
    gram_node_t  *node;                 /* node 0 unused */
    uint32_t      n, cap;
    int32_t       bucket[GRAM_BUCKETS];
    uint64_t      seen_key[GRAM_SEEN];
    uint32_t      seen_gen[GRAM_SEEN];
    uint32_t      gen;
    int32_t       work[2 * GRAM_WORK];
};


/* ---- the program ---------------------------------------------------------- */

#define GP_STATES(p)    ((p)[1])
#define GP_RULES(p)     ((p)[2])
#define GP_ROOT(p)      ((p)[3])
#define GP_START(p, r)  ((p)[4 + (r)])
#define GP_W(p, s)      ((p) + 4 + GP_RULES(p) + 3 * (s))
#define GP_KIND(p, s)   (GP_W(p, s)[0] & 0xff)
#define GP_LO(p, s)     ((GP_W(p, s)[0] >> 8) & 0xff)
#define GP_HI(p, s)     ((GP_W(p, s)[0] >> 16) & 0xff)
#define GP_RULE(p, s)   (GP_LO(p, s) | GP_HI(p, s) << 8)
#define GP_OUT(p, s)    (GP_W(p, s)[1])
#define GP_OUT2(p, s)   (GP_W(p, s)[2])


/* The rules that match the empty text (nullable[r] = 1), to a fixed
 * point: a rule is nullable when its start reaches its END through EPS
 * links and calls of nullable rules alone.  With edge (nr x nr) not NULL,
 * then also edge[r][q] = 1 for each call of q that rule r can make before
 * reading a byte.  stamp: ns zeroed words (a visit's mark: no clearing
 * between the walks, each of which stays inside its own rule); stack:
 * 2 ns + 2 words. */
static void
gram_left_calls(const int32_t *p, uint8_t *nullable, uint8_t *edge,
    uint32_t *stamp, int32_t *stack)
{
    int32_t   nr = GP_RULES(p);
    uint32_t  gen = 0;
    int       changed = 1;

    for (int pass = 0; pass < (edge != NULL ? 2 : 1); pass++) {
        changed = 1;
        while (changed) {
            changed = 0;
            for (int32_t r = 0; r < nr; r++) {
                int32_t  sp = 0;

                if (pass == 0 && nullable[r]) {
                    continue;
                }
                gen++;
                stack[sp++] = GP_START(p, r);
                while (sp > 0) {
                    int32_t  s = stack[--sp];

                    if (s < 0 || stamp[s] == gen) {
                        continue;
                    }
                    stamp[s] = gen;
                    switch (GP_KIND(p, s)) {
                    case KIMI_GRAM_EPS:
                        stack[sp++] = GP_OUT(p, s);
                        stack[sp++] = GP_OUT2(p, s);
                        break;
                    case KIMI_GRAM_CALL:
                        if (pass == 1) {
                            edge[(size_t) r * nr + GP_RULE(p, s)] = 1;
                        }
                        if (nullable[GP_RULE(p, s)]) {
                            stack[sp++] = GP_OUT(p, s);
                        }
                        break;
                    case KIMI_GRAM_END:
                        if (pass == 0) {
                            nullable[r] = 1;
                            changed = 1;
                            sp = 0;
                        }
                        break;
                    default:
                        break;
                    }
                }
            }
            if (pass == 1) {
                break;
            }
        }
    }
}


/* The rule a left-recursive cycle runs through, or -1: a rule that may
 * call itself, directly or through others, before reading a byte (the
 * recogniser would nest calls without end). */
static int
gram_left_recursive(const int32_t *p, char *msg, size_t msg_len)
{
    int32_t   ns = GP_STATES(p), nr = GP_RULES(p);
    uint8_t  *nullable = calloc(nr, 1);
    uint8_t  *edge = calloc((size_t) nr * nr, 1), *color = calloc(nr, 1);
    uint32_t *stamp = calloc(ns, sizeof(uint32_t));
    /* a state pushes at most two, a rule on the DFS path two */
    int32_t  *stack = malloc(((size_t) 2 * (ns > nr ? ns : nr) + 2)
                             * sizeof(int32_t));
    int       bad = -1;

    if (nullable == NULL || stamp == NULL || edge == NULL || color == NULL
        || stack == NULL)
    {
        snprintf(msg, msg_len, "out of memory");
        bad = -2;
        goto done;
    }

    gram_left_calls(p, nullable, edge, stamp, stack);

    /* a cycle in the left-call graph (colors: 1 on the path, 2 done) */
    for (int32_t r0 = 0; r0 < nr && bad < 0; r0++) {
        int32_t  sp = 0;

        if (color[r0]) {
            continue;
        }
        stack[sp++] = r0;
        stack[sp++] = 0;
        color[r0] = 1;
        while (sp > 0 && bad < 0) {
            int32_t  r = stack[sp - 2], i = stack[sp - 1];

            if (i == nr) {
                color[r] = 2;
                sp -= 2;
                continue;
            }
            stack[sp - 1] = i + 1;
            if (!edge[(size_t) r * nr + i]) {
                continue;
            }
            if (color[i] == 1) {
                bad = i;
            } else if (color[i] == 0) {
                color[i] = 1;
                stack[sp++] = i;
                stack[sp++] = 0;
            }
        }
    }

    if (bad >= 0) {
        snprintf(msg, msg_len, "rule %d is left-recursive", bad);
    }

done:

    free(nullable);
    free(stamp);
    free(edge);
    free(color);
    free(stack);
    return bad;
}


int
kimi_gram_check(const int32_t *p, size_t n, char *msg, size_t msg_len)
{
    int32_t  ns, nr;

    if (n < 4 || p[0] != (int32_t) n || p[1] < 1
        || p[1] > KIMI_GRAMMAR_MAX_STATES || p[2] < 1
        || p[2] > KIMI_GRAMMAR_MAX_RULES || p[3] < 0 || p[3] >= p[2]
        || n != 4 + (size_t) p[2] + 3 * (size_t) p[1])
    {
        snprintf(msg, msg_len, "grammar program: bad header");
        return -1;
    }

    ns = GP_STATES(p);
    nr = GP_RULES(p);

    for (int32_t r = 0; r < nr; r++) {
        if (GP_START(p, r) < 0 || GP_START(p, r) >= ns) {
            snprintf(msg, msg_len, "grammar program: rule %d starts nowhere",
                     r);
            return -1;
        }
    }

    for (int32_t s = 0; s < ns; s++) {
        int32_t  k = GP_KIND(p, s), o = GP_OUT(p, s), o2 = GP_OUT2(p, s);
        int      ok;

        switch (k) {
        case KIMI_GRAM_EPS:
            ok = o >= -1 && o < ns && o2 >= -1 && o2 < ns;
            break;
        case KIMI_GRAM_RANGE:
            ok = o >= 0 && o < ns && o2 == -1 && GP_LO(p, s) <= GP_HI(p, s);
            break;
        case KIMI_GRAM_CALL:
            ok = o >= 0 && o < ns && o2 == -1 && GP_RULE(p, s) < nr;
            break;
        case KIMI_GRAM_END:
            ok = o == -1 && o2 == -1;
            break;
        default:
            ok = 0;
        }

        if (!ok || (GP_W(p, s)[0] >> 24) != 0) {
            snprintf(msg, msg_len, "grammar program: state %d is malformed",
                     s);
            return -1;
        }
    }

    return gram_left_recursive(p, msg, msg_len) == -1 ? 0 : -1;
}


int
kimi_gram_prune(int32_t *p, size_t n, char *msg, size_t msg_len)
{
    int32_t   ns;
    uint8_t  *alive;
    int       changed = 1;

    if (kimi_gram_check(p, n, msg, msg_len) != 0) {
        return -1;
    }

    ns = GP_STATES(p);
    alive = calloc(ns, 1);
    if (alive == NULL) {
        snprintf(msg, msg_len, "out of memory");
        return -1;
    }

    /* a state is alive when its rule can still reach its END from it,
     * calls counting only into rules that can end (a fixpoint) */
    while (changed) {
        changed = 0;
        for (int32_t s = 0; s < ns; s++) {
            int32_t  o = GP_OUT(p, s), o2 = GP_OUT2(p, s);
            int      a = 0;

            if (alive[s]) {
                continue;
            }
            switch (GP_KIND(p, s)) {
            case KIMI_GRAM_END:
                a = 1;
                break;
            case KIMI_GRAM_EPS:
                a = (o >= 0 && alive[o]) || (o2 >= 0 && alive[o2]);
                break;
            case KIMI_GRAM_RANGE:
                a = alive[o];
                break;
            case KIMI_GRAM_CALL:
                a = alive[o] && alive[GP_START(p, GP_RULE(p, s))];
                break;
            }
            if (a) {
                alive[s] = 1;
                changed = 1;
            }
        }
    }

    if (!alive[GP_START(p, GP_ROOT(p))]) {
        snprintf(msg, msg_len, "the grammar has no finite sentence: its root"
                 " never ends");
        free(alive);
        return -1;
    }

    /* what cannot end is never offered: dead states lead nowhere */
    for (int32_t s = 0; s < ns; s++) {
        int32_t  *w = GP_W(p, s);

        if (!alive[s]) {
            w[0] = KIMI_GRAM_EPS;
            w[1] = -1;
            w[2] = -1;
        } else if (GP_KIND(p, s) == KIMI_GRAM_EPS) {
            w[1] = w[1] >= 0 && alive[w[1]] ? w[1] : -1;
            w[2] = w[2] >= 0 && alive[w[2]] ? w[2] : -1;
        }
    }

    free(alive);
    return 0;
}


/* ---- the arena ---------------------------------------------------------- */

kimi_gram_arena_t *
kimi_gram_arena_new(void)
{
    kimi_gram_arena_t  *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        return NULL;
    }

    a->cap = 4096;
    a->node = malloc(a->cap * sizeof(gram_node_t));
    if (a->node == NULL) {
        free(a);
        return NULL;
    }

    a->n = 1;
    return a;
}


void
kimi_gram_arena_free(kimi_gram_arena_t *a)
{
    if (a != NULL) {
        free(a->node);
        free(a);
    }
}


static uint32_t
gram_hash(int32_t ret, int32_t parent)
{
    uint32_t  h = (uint32_t) ret * 0x9e3779b1u ^ (uint32_t) parent * 0x85ebca77u;

    return (h ^ h >> 15) & (GRAM_BUCKETS - 1);
}


/* The node (ret, parent), made if new; -1 past the depth or the arena. */
static int32_t
gram_node(kimi_gram_arena_t *a, int32_t ret, int32_t parent)
{
    uint32_t  h = gram_hash(ret, parent);
    int32_t   depth = parent ? a->node[parent].depth + 1 : 1;

    for (int32_t i = a->bucket[h]; i != 0; i = a->node[i].next) {
        if (a->node[i].ret == ret && a->node[i].parent == parent) {
            return i;
        }
    }

    if (depth > KIMI_GRAM_MAX_DEPTH) {
        return -1;
    }

    if (a->n == a->cap) {
        gram_node_t  *nn;

        if (a->cap >= KIMI_GRAM_MAX_NODES) {
            return -1;
        }
        nn = realloc(a->node, 2 * a->cap * sizeof(gram_node_t));
        if (nn == NULL) {
            return -1;
        }
        a->node = nn;
        a->cap *= 2;
    }

    a->node[a->n] = (gram_node_t) { ret, parent, depth, a->bucket[h] };
    a->bucket[h] = (int32_t) a->n;
    return (int32_t) a->n++;
}


uint32_t
kimi_gram_mark(const kimi_gram_arena_t *a)
{
    return a->n;
}


/* newest first: each was its bucket's head when made */
static void
gram_rewind(kimi_gram_arena_t *a, uint32_t mark)
{
    while (a->n > mark && a->n > 1) {
        gram_node_t  *d = &a->node[--a->n];

        a->bucket[gram_hash(d->ret, d->parent)] = d->next;
    }
}


void
kimi_gram_rewind(kimi_gram_arena_t *a, uint32_t mark)
{
    gram_rewind(a, mark);
}


void
kimi_gram_clear(kimi_gram_arena_t *a)
{
    gram_rewind(a, 1);
}


/* ---- the recogniser ------------------------------------------------------ */

/* 1 if (state, stack) is new in this byte step */
static int
gram_first_visit(kimi_gram_arena_t *a, int32_t s, int32_t k)
{
    uint64_t  key = (uint64_t) (uint32_t) s << 32 | (uint32_t) k;
    uint32_t  h = (uint32_t) ((key * 0x9e3779b97f4a7c15ull) >> 40);

    for (uint32_t i = 0; i < GRAM_SEEN; i++) {
        uint32_t  j = (h + i) & (GRAM_SEEN - 1);

        if (a->seen_gen[j] != a->gen) {
            a->seen_gen[j] = a->gen;
            a->seen_key[j] = key;
            return 1;
        }
        if (a->seen_key[j] == key) {
            return 0;
        }
    }

    return 0;                           /* full: treated as seen (dropped) */
}


/* 1 if state s only leads, through single EPS links, to its rule's END:
 * a call there returns straight to the caller's caller (so right
 * recursion, a list's tail, does not nest) */
static int
gram_tail(const int32_t *p, int32_t s)
{
    for (int i = 0; i < 64 && s >= 0; i++) {
        if (GP_KIND(p, s) == KIMI_GRAM_END) {
            return 1;
        }
        if (GP_KIND(p, s) != KIMI_GRAM_EPS || GP_OUT2(p, s) != -1) {
            return 0;
        }
        s = GP_OUT(p, s);
    }

    return 0;
}


/* Every configuration reachable from (s0, k0) without reading a byte,
 * into st (the RANGE ones), st->accept set where the root may end. */
static void
gram_close(kimi_gram_state_t *st, int32_t s0, int32_t k0)
{
    kimi_gram_arena_t  *a = st->arena;
    const int32_t      *p = st->prog;
    int32_t            *w = a->work;
    uint32_t            sp = 0;

    w[sp++] = s0;
    w[sp++] = k0;

    while (sp > 0) {
        int32_t  k = w[--sp], s = w[--sp], r, node;

        if (s < 0 || !gram_first_visit(a, s, k)) {
            continue;
        }

        switch (GP_KIND(p, s)) {
        case KIMI_GRAM_EPS:
            if (sp + 4 <= 2 * GRAM_WORK) {
                w[sp++] = GP_OUT2(p, s);
                w[sp++] = k;
                w[sp++] = GP_OUT(p, s);
                w[sp++] = k;
            }
            break;

        case KIMI_GRAM_RANGE:
            if (st->n < KIMI_GRAM_MAX_CONFIGS) {
                st->cfg[st->n].state = s;
                st->cfg[st->n].stack = k;
                st->n++;
            }
            break;

        case KIMI_GRAM_CALL:
            r = GP_RULE(p, s);
            node = gram_tail(p, GP_OUT(p, s)) ? k
                                               : gram_node(a, GP_OUT(p, s), k);
            if (node >= 0 && sp + 2 <= 2 * GRAM_WORK) {
                w[sp++] = GP_START(p, r);
                w[sp++] = node;
            }
            break;

        case KIMI_GRAM_END:
            if (k == 0) {
                st->accept = 1;
            } else if (sp + 2 <= 2 * GRAM_WORK) {
                w[sp++] = a->node[k].ret;
                w[sp++] = a->node[k].parent;
            }
            break;
        }
    }
}


int
kimi_gram_init(kimi_gram_state_t *s, const int32_t *prog,
    kimi_gram_arena_t *a)
{
    gram_rewind(a, 1);
    return kimi_gram_start(s, prog, a);
}


int
kimi_gram_start(kimi_gram_state_t *s, const int32_t *prog,
    kimi_gram_arena_t *a)
{
    s->prog = prog;
    s->arena = a;
    s->n = 0;
    s->accept = 0;
    a->gen++;
    gram_close(s, GP_START(prog, GP_ROOT(prog)), 0);
    return s->n > 0 || s->accept ? 0 : -1;
}


int
kimi_gram_feed(kimi_gram_state_t *s, const char *p, size_t n)
{
    kimi_gram_cfg_t  cur[KIMI_GRAM_MAX_CONFIGS];

    for (size_t i = 0; i < n; i++) {
        unsigned char  b = (unsigned char) p[i];
        uint32_t       m = s->n;

        memcpy(cur, s->cfg, m * sizeof(cur[0]));
        s->n = 0;
        s->accept = 0;
        s->arena->gen++;

        for (uint32_t j = 0; j < m; j++) {
            int32_t  st = cur[j].state;

            if (b >= GP_LO(s->prog, st) && b <= GP_HI(s->prog, st)) {
                gram_close(s, GP_OUT(s->prog, st), cur[j].stack);
            }
        }

        if (s->n == 0 && !(s->accept && i + 1 == n)) {
            return -1;
        }
    }

    return 0;
}


void
kimi_gram_copy(kimi_gram_state_t *dst, const kimi_gram_state_t *src)
{
    dst->prog = src->prog;
    dst->arena = src->arena;
    dst->n = src->n;
    dst->accept = src->accept;
    memcpy(dst->cfg, src->cfg, src->n * sizeof(src->cfg[0]));
}


int
kimi_gram_accepts(const kimi_gram_state_t *s)
{
    return s->accept;
}


int
kimi_gram_more(const kimi_gram_state_t *s)
{
    return s->n > 0;
}


int
kimi_gram_nullable(const int32_t *p)
{
    int32_t    ns = GP_STATES(p);
    uint8_t   *nullable = calloc((size_t) GP_RULES(p), 1);
    uint32_t  *stamp = calloc((size_t) ns, sizeof(uint32_t));
    int32_t   *stack = malloc((2 * (size_t) ns + 2) * sizeof(int32_t));
    int        root = 0;

    if (nullable != NULL && stamp != NULL && stack != NULL) {
        gram_left_calls(p, nullable, NULL, stamp, stack);
        root = nullable[GP_ROOT(p)];
    }

    free(nullable);
    free(stamp);
    free(stack);
    return root;
}
