/*
 * JSON mode (response_format {"type": "json_object"}): a byte-level
 * recogniser of one JSON object (RFC 8259), optionally surrounded by
 * whitespace, that accepts every prefix of such a text and nothing else.
 * With a schema program (structured output, engine/text/json_schema.h) it
 * accepts the prefixes of the values the program describes: each
 * container keeps its node, the properties written and the items counted;
 * keys and enum values are matched against the program's texts.
 *
 * Owns:   the grammar state and feeding bytes to it; the sampler
 *         (sample.c) masks every token whose bytes the state refuses.
 * Never:  looks at token ids or logits; lets a string hold bytes that are
 *         not UTF-8 (the detokenizer would show them as U+FFFD, breaking a
 *         maxLength); nesting deeper than KIMI_JSON_MAX_DEPTH (schema:
 *         KIMI_SCHEMA_MAX_DEPTH) and more than KIMI_JSON_MAX_WS whitespace
 *         bytes in a row are refused; trusts a program that passed
 *         kimi_json_schema_check.
 */

#include <stddef.h>
#include <string.h>

#include "json_mode.h"
#include "../text/regex_dfa.h"


/* what the recogniser waits for, outside strings, numbers and literals */
enum {
    J_START = 0,        /* before the top-level '{' */
    J_VALUE,            /* a value (after ':' or ',' in an array) */
    J_KEY_OR_END,       /* just after '{': a key or '}' */
    J_KEY,              /* after ',' in an object: a key */
    J_COLON,            /* after a key */
    J_AFTER_VALUE,      /* after a value: ',' or the container's end */
    J_ARRAY_FIRST,      /* just after '[': a value or ']' */
    J_DONE,             /* the top-level object closed */
    J_STRING,           /* inside a string (key or value) */
    J_ESCAPE,           /* after '\' in a string */
    J_UNICODE,          /* inside \uXXXX, lit = hex digits seen */
    J_NUMBER,           /* inside a number, num = its sub-state */
    J_LITERAL,          /* inside true/false/null, lit = bytes matched */
    J_SKEY,             /* a schema object's key: cand = the properties it
                           can still name, pos = bytes read */
    J_ENUM,             /* an enum value: cand = values still possible */
};

/* number sub-states: what has been read last */
enum {
    N_MINUS = 0,        /* '-' */
    N_ZERO,             /* a leading 0 */
    N_INT,              /* 1-9 then digits */
    N_DOT,              /* '.' */
    N_FRAC,             /* digits after '.' */
    N_EXP,              /* 'e' or 'E' */
    N_EXP_SIGN,         /* the exponent's sign */
    N_EXP_INT,          /* exponent digits */
};

static const char *const  kimi_json_literals[3] = { "true", "false", "null" };


void
kimi_json_init(kimi_json_state_t *s)
{
    memset(s, 0, sizeof(*s));
    s->state = J_START;
    s->max_ws = KIMI_JSON_MAX_WS;
}


void
kimi_json_no_ws(kimi_json_state_t *s)
{
    s->max_ws = 0;
}


void
kimi_json_init_schema(kimi_json_state_t *s, const int32_t *prog)
{
    kimi_json_init(s);
    s->prog = prog;
}


void
kimi_json_copy(kimi_json_state_t *dst, const kimi_json_state_t *src)
{
    memcpy(dst, src, offsetof(kimi_json_state_t, frame)
                     + (src->prog ? src->depth * sizeof(kimi_json_frame_t)
                                  : 0));
    if (src->hn > 0) {
        memcpy(dst->hset, src->hset, src->hn * sizeof(src->hset[0]));
    }
}


int
kimi_json_done(const kimi_json_state_t *s)
{
    return s->state == J_DONE;
}


int
kimi_json_in_string(const kimi_json_state_t *s)
{
    return s->state == J_STRING && s->ucont == 0
           && (s->snode == 0
               || (s->prog[s->snode + 2] < 0
                   && s->prog[s->snode + 3] == KIMI_SF_NONE));
}


static int
kimi_json_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}


static int
kimi_json_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')
           || (c >= 'A' && c <= 'F');
}


static int kimi_json_byte(kimi_json_state_t *s, unsigned char c);


static int
kimi_json_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}


/* c (>= 0x80) starts a UTF-8 sequence: how many bytes follow and the
 * range of the first (RFC 3629: no overlongs, surrogates or code points
 * past U+10FFFF); -1 for a byte that cannot start one */
static int
kimi_json_utf8_lead(kimi_json_state_t *s, unsigned char c)
{
    s->ulo = 0x80;
    s->uhi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        s->ucont = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
        s->ucont = 2;
        s->ulo = c == 0xe0 ? 0xa0 : 0x80;
        s->uhi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        s->ucont = 3;
        s->ulo = c == 0xf0 ? 0x90 : 0x80;
        s->uhi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return -1;
    }
    return 0;
}


/* c continues the UTF-8 sequence under way: in the range kimi_json_utf8_lead
 * set, the next one of any continuation byte */
static int
kimi_json_utf8_cont(kimi_json_state_t *s, unsigned char c)
{
    if (c < s->ulo || c > s->uhi) {
        return -1;
    }
    s->ucont--;
    s->ulo = 0x80;
    s->uhi = 0xbf;
    return 0;
}


/* The shapes of the string formats: the fixed text (d a digit, h a hex
 * digit, 1 [01], 2 [0-2], 3 [0-3], 5 [0-5]; the second digit of a month
 * m, of a day D, of an hour H, bounded by the first; anything else
 * itself; a date's ten bytes are also held to the calendar), then for time
 * and date-time RFC 3339's tail: an optional fraction and a zone, Z or
 * +hh:mm / -hh:mm. */
static const char *const  kimi_json_format_text[] = {
    "", "dddd-1m-3D", "2H:5d:5d", "dddd-1m-3DT2H:5d:5d",
    "hhhhhhhh-hhhh-hhhh-hhhh-hhhhhhhhhhhh"
};

enum {
    F_FIXED = 0,        /* fpos = bytes of the fixed text read */
    F_TAIL,             /* after the seconds: '.', 'Z', '+' or '-' */
    F_FRAC0,            /* after '.': a digit */
    F_FRAC,             /* fraction digits, then the zone */
    F_ZONE,             /* the zone's "2d:5d", fpos bytes read */
    F_END,              /* only the closing quote */
};


static int
kimi_json_format_class(char k, unsigned char prev, unsigned char c)
{
    switch (k) {
    case 'm':                           /* 01..12 */
        return prev == '0' ? c >= '1' && c <= '9' : c >= '0' && c <= '2';
    case 'D':                           /* 01..31 */
        return prev == '0' ? c >= '1' && c <= '9'
               : prev == '3' ? c == '0' || c == '1' : c >= '0' && c <= '9';
    case 'H':                           /* 00..23 */
        return prev == '2' ? c >= '0' && c <= '3' : c >= '0' && c <= '9';
    case 'd':
        return c >= '0' && c <= '9';
    case 'h':
        return kimi_json_hex(c);
    case '1':
        return c == '0' || c == '1';
    case '2':
        return c >= '0' && c <= '2';
    case '3':
        return c >= '0' && c <= '3';
    case '5':
        return c >= '0' && c <= '5';
    default:
        return c == (unsigned char) k;
    }
}


/* byte fpos (0..9) of a date "YYYY-MM-DD": a real calendar day, years
 * 0001..9999 (leap years as Gregorian) */
static int
kimi_json_date_byte(kimi_json_state_t *s, unsigned char c)
{
    int  digit = c >= '0' && c <= '9', v = (s->fprev - '0') * 10 + c - '0';
    int  y = s->fyear, m = s->fmonth, days;

    switch (s->fpos) {
    case 0:
    case 1:
    case 2:
    case 3:
        if (!digit) {
            return 0;
        }
        s->fyear = (uint16_t) ((s->fpos == 0 ? 0 : s->fyear) * 10 + c - '0');
        return s->fpos < 3 || s->fyear > 0;
    case 4:
    case 7:
        return c == '-';
    case 5:
        return c == '0' || c == '1';
    case 6:
        if (!digit || v < 1 || v > 12) {
            return 0;
        }
        s->fmonth = (unsigned char) v;
        return 1;
    case 8:
        return c >= '0' && c <= (m == 2 ? '2' : '3');
    default:
        days = m == 2 ? ((y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ? 29 : 28)
               : (m == 4 || m == 6 || m == 9 || m == 11) ? 30 : 31;
        return digit && v >= 1 && v <= days;
    }
}


/* c inside a formatted string (no escapes): 0, 1 for the closing quote,
 * or -1 */
static int
kimi_json_format_byte(kimi_json_state_t *s, int32_t fmt, unsigned char c)
{
    const char  *fixed = kimi_json_format_text[fmt], *zone = "2H:5d";
    int          timed = fmt == KIMI_SF_TIME || fmt == KIMI_SF_DATE_TIME;

    switch (s->fphase) {
    case F_FIXED:
        if ((fmt == KIMI_SF_DATE || fmt == KIMI_SF_DATE_TIME) && s->fpos < 10
            ? !kimi_json_date_byte(s, c)
            : !kimi_json_format_class(fixed[s->fpos], s->fprev, c))
        {
            return -1;
        }
        s->fprev = c;
        if (fixed[++s->fpos] == '\0') {
            s->fphase = timed ? F_TAIL : F_END;
        }
        return 0;
    case F_TAIL:
    case F_FRAC:
        if (s->fphase == F_TAIL && c == '.') {
            s->fphase = F_FRAC0;
            return 0;
        }
        if (s->fphase == F_FRAC && c >= '0' && c <= '9') {
            return 0;
        }
        if (c == 'Z') {
            s->fphase = F_END;
            return 0;
        }
        if (c == '+' || c == '-') {
            s->fphase = F_ZONE;
            s->fpos = 0;
            return 0;
        }
        return -1;
    case F_FRAC0:
        if (c < '0' || c > '9') {
            return -1;
        }
        s->fphase = F_FRAC;
        return 0;
    case F_ZONE:
        if (!kimi_json_format_class(zone[s->fpos], s->fprev, c)) {
            return -1;
        }
        s->fprev = c;
        if (zone[++s->fpos] == '\0') {
            s->fphase = F_END;
        }
        return 0;
    default:
        return c == '"' ? 1 : -1;
    }
}


/* 1 if a multiple of m lies in [x, y] (and within the node's bounds) */
static int
kimi_json_int_meets(__int128 x, __int128 y, int has_lo, __int128 lo,
    int has_hi, __int128 hi, __int128 m)
{
    x = has_lo && lo > x ? lo : x;
    y = has_hi && hi < y ? hi : y;
    /* the least multiple at or above x (% keeps x's sign) */
    x = x % m > 0 ? x + m - x % m : x - x % m;
    return x <= y;
}


/* 1 if an integer within the bounds of s->inode, and a multiple of its
 * multipleOf, is written with the sign and digits read so far at its
 * start (whole: is exactly that) */
static int
kimi_json_int_can(const kimi_json_state_t *s, int whole)
{
    const int32_t  *p = s->prog;
    int32_t         e = s->inode;
    int             has_lo = p[e + 1], has_hi = p[e + 4];
    __int128        lo = (int64_t) (((uint64_t) (uint32_t) p[e + 3] << 32)
                                    | (uint32_t) p[e + 2]);
    __int128        hi = (int64_t) (((uint64_t) (uint32_t) p[e + 6] << 32)
                                    | (uint32_t) p[e + 5]);
    __int128        m = p[e + 7], a, b, span = 1, x, y;

    if (s->ndig == 0) {                 /* "-" alone: a negative one fits */
        y = has_hi && hi < -1 ? hi : -1;
        return kimi_json_int_meets(has_lo ? lo : y - m + 1, -1, has_lo, lo,
                                   has_hi, hi, m);
    }
    for (;;) {
        /* the numbers with this many more digits: [a, b] or [-b, -a] */
        a = (__int128) s->nval * span;
        b = a + span - 1;
        x = s->nneg ? -b : a;
        y = s->nneg ? -a : b;
        if (kimi_json_int_meets(x, y, has_lo, lo, has_hi, hi, m)) {
            return 1;
        }
        if (whole || s->nval == 0 || a > (__int128) 1000000000000000000LL) {
            return 0;                   /* "0" takes no more digits */
        }
        span *= 10;
    }
}


/* the bounds of a bounded number's magnitude (values times 10^S) */
typedef struct {
    int       has_lo, lo_ex, has_hi, hi_ex;
    __int128  lo, hi;
} kimi_json_dec_bounds_t;


/* 1 if some magnitude v with a < v < b (a and b themselves where not
 * open; b_inf: no end) is within the bounds */
static int
kimi_json_dec_meets(const kimi_json_dec_bounds_t *m, __int128 a, int a_open,
    __int128 b, int b_open, int b_inf)
{
    if (m->has_lo && (m->lo > a || (m->lo == a && m->lo_ex))) {
        a_open = m->lo > a ? m->lo_ex : 1;
        a = m->lo;
    }
    if (m->has_hi && (b_inf || m->hi < b || (m->hi == b && m->hi_ex))) {
        b_open = b_inf || m->hi < b ? m->hi_ex : 1;
        b = m->hi;
        b_inf = 0;
    }
    return b_inf || a < b || (a == b && !a_open && !b_open);
}


/* 1 if some magnitude in [a, b] (b_inf: no end), a whole number at the
 * node's scale, is a multiple of mult within the bounds */
static int
kimi_json_dec_meets_mult(const kimi_json_dec_bounds_t *m, __int128 a,
    __int128 b, int b_inf, __int128 mult)
{
    if (m->has_lo && m->lo + m->lo_ex > a) {
        a = m->lo + m->lo_ex;
    }
    if (m->has_hi && (b_inf || m->hi - m->hi_ex < b)) {
        b = m->hi - m->hi_ex;
        b_inf = 0;
    }
    /* the least multiple at or above a (% keeps a's sign) */
    a = a % mult > 0 ? a + mult - a % mult : a - a % mult;
    return b_inf || a <= b;
}


/* A bounded number (DECIMAL node s->dnode) written as its sign, integer
 * digits (nval, ndig) and fraction digits (fdig; fval the first S of
 * them, ftail a nonzero one after those) so far: 1 if some number within
 * the bounds starts so (whole: is exactly that).  Magnitudes times 10^S,
 * the bounds turned to the magnitude's for a negative number.  With a
 * multipleOf (mult, times 10^S) no digit goes past the S-th decimal, so
 * every magnitude is a whole number at that scale. */
static int
kimi_json_dec_can(const kimi_json_state_t *s, int whole)
{
    const int32_t           *p = s->prog;
    int32_t                  e = s->dnode, fl = p[e + 1], S = p[e + 2];
    __int128                 pw = 1, lo, hi, x, span = 1, mult = p[e + 7];
    kimi_json_dec_bounds_t   m;

    for (int32_t i = 0; i < S; i++) {
        pw *= 10;
    }
    lo = (int64_t) (((uint64_t) (uint32_t) p[e + 4] << 32) | (uint32_t) p[e + 3]);
    hi = (int64_t) (((uint64_t) (uint32_t) p[e + 6] << 32) | (uint32_t) p[e + 5]);
    if (s->nneg) {                      /* -v >= lo is v <= -lo */
        m.has_lo = (fl & KIMI_SD_HI) != 0;
        m.lo_ex = (fl & KIMI_SD_HI_EX) != 0;
        m.lo = -hi;
        m.has_hi = (fl & KIMI_SD_LO) != 0;
        m.hi_ex = (fl & KIMI_SD_LO_EX) != 0;
        m.hi = -lo;
    } else {
        m.has_lo = (fl & KIMI_SD_LO) != 0;
        m.lo_ex = (fl & KIMI_SD_LO_EX) != 0;
        m.lo = lo;
        m.has_hi = (fl & KIMI_SD_HI) != 0;
        m.hi_ex = (fl & KIMI_SD_HI_EX) != 0;
        m.hi = hi;
    }

    if (s->ndig == 0) {                 /* "-" alone: any magnitude */
        return !whole && (mult > 0 ? kimi_json_dec_meets_mult(&m, 0, 0, 1, mult)
                                   : kimi_json_dec_meets(&m, 0, 0, 0, 1, 1));
    }
    x = (__int128) s->nval * pw;
    if (s->num == N_DOT || s->num == N_FRAC) {
        for (int32_t i = s->fdig < S ? s->fdig : S; i < S; i++) {
            span *= 10;
        }
        x += (__int128) s->fval * span;
        if (mult > 0) {                 /* x + [0, span): whole numbers */
            return (!whole || s->fdig > 0)
                   && kimi_json_dec_meets_mult(&m, x, whole ? x : x + span - 1,
                                               0, mult);
        }
        if (whole) {                    /* x, or just above it after a tail */
            return s->fdig > 0 && (s->ftail ? kimi_json_dec_meets(&m, x, 1, x + 1, 1, 0)
                                            : kimi_json_dec_meets(&m, x, 0, x, 0, 0));
        }
        return kimi_json_dec_meets(&m, x, s->ftail, x + span, 1, 0);
    }
    if (whole) {
        return mult > 0 ? kimi_json_dec_meets_mult(&m, x, x, 0, mult)
                        : kimi_json_dec_meets(&m, x, 0, x, 0, 0);
    }
    for (int32_t j = 0; ; j++) {
        /* with j more integer digits: [nval 10^j, (nval + 1) 10^j) */
        if (mult > 0
            ? kimi_json_dec_meets_mult(&m, (__int128) s->nval * span * pw,
                                       ((__int128) s->nval + 1) * span * pw - 1,
                                       0, mult)
            : kimi_json_dec_meets(&m, (__int128) s->nval * span * pw, 0,
                                  ((__int128) s->nval + 1) * span * pw, 1, 0))
        {
            return 1;
        }
        if (s->nval == 0 || s->ndig + j >= 18) {
            return 0;                   /* "0" takes no more digits */
        }
        span *= 10;
    }
}


/* a digit of a bounded number (s->num already says which part) */
static int
kimi_json_dec_digit(kimi_json_state_t *s, unsigned char c)
{
    if (s->num == N_DOT || s->num == N_FRAC) {
        if (s->fdig < s->prog[s->dnode + 2]) {
            s->fval = s->fval * 10 + (uint64_t) (c - '0');
        } else if (s->prog[s->dnode + 7] > 0) {
            return -1;                  /* a multiple: at most S decimals */
        } else if (c != '0') {
            s->ftail = 1;
        }
        s->fdig += s->fdig < 255;
    } else {
        if (s->ndig >= 18) {
            return -1;
        }
        s->nval = s->nval * 10 + (uint64_t) (c - '0');
        s->ndig++;
    }
    return kimi_json_dec_can(s, 0) ? 0 : -1;
}


/* a digit of a bounded integer */
static int
kimi_json_int_digit(kimi_json_state_t *s, unsigned char c)
{
    if (s->ndig >= 19) {
        return -1;
    }
    s->nval = s->nval * 10 + (uint64_t) (c - '0');
    s->ndig++;
    return kimi_json_int_can(s, 0) ? 0 : -1;
}


/* all properties of schema object node as bits */
static uint64_t
kimi_json_all_props(const int32_t *p, int32_t node)
{
    return p[node + 1] >= 64 ? ~(uint64_t) 0
                             : ((uint64_t) 1 << p[node + 1]) - 1;
}


/* The node item i of array or tuple node follows (0: any value), or -1
 * when the tuple takes no item i */
static int32_t
kimi_json_item(const int32_t *p, int32_t node, uint32_t i)
{
    if (p[node] == KIMI_SN_TUPLE && i < (uint32_t) p[node + 4]) {
        return p[node + 5 + i];
    }
    return p[node + 1];
}


/* 1 if object node takes keys no property names (word 4: the node of
 * their values, an additionalProperties schema) */
static int
kimi_json_free_keys(const int32_t *p, int32_t node)
{
    return p[node] == KIMI_SN_OBJECT && p[node + 4] >= 2;
}


/* An OBJECT's key counts (json_schema.h: after its properties): the
 * fewest keys before '}' and the most (-1: no limit); a UOBJECT has none */
static int32_t
kimi_json_min_keys(const int32_t *p, int32_t node)
{
    return p[node] == KIMI_SN_OBJECT ? p[node + 5 + 3 * p[node + 1]] : 0;
}


static int32_t
kimi_json_max_keys(const int32_t *p, int32_t node)
{
    return p[node] == KIMI_SN_OBJECT ? p[node + 6 + 3 * p[node + 1]] : -1;
}


/* 1 if the object of frame f takes no more keys */
static int
kimi_json_keys_full(const int32_t *p, const kimi_json_frame_t *f)
{
    int32_t  mx = kimi_json_max_keys(p, f->node);

    return mx >= 0 && f->count >= (uint32_t) mx;
}


/* A UOBJECT's words (json_schema.h): where its alternatives start, their
 * required properties, the alternatives having property i, and where the
 * alternatives of property i's enum values are listed (0: none). */
static int32_t
kimi_json_uo_base(const int32_t *p, int32_t node)
{
    return node + 5 + 3 * p[node + 1];
}


static uint32_t
kimi_json_uo_palts(const int32_t *p, int32_t node, int32_t i)
{
    int32_t  b = kimi_json_uo_base(p, node);

    return (uint32_t) p[b + 1 + 2 * p[b] + i];
}


static int32_t
kimi_json_uo_vtable(const int32_t *p, int32_t node, int32_t i)
{
    int32_t  b = kimi_json_uo_base(p, node);

    return p[b + 1 + 2 * p[b] + p[node + 1] + i];
}


/* the properties frame f may still name: not written yet and, under a
 * UOBJECT, held by an alternative still open */
static uint64_t
kimi_json_open_props(const int32_t *p, const kimi_json_frame_t *f)
{
    uint64_t  open = kimi_json_all_props(p, f->node) & ~f->seen;

    if (p[f->node] == KIMI_SN_UOBJECT) {
        for (int32_t i = 0; i < p[f->node + 1]; i++) {
            if (!(kimi_json_uo_palts(p, f->node, i) & f->alts)) {
                open &= ~((uint64_t) 1 << i);
            }
        }
    }
    return open;
}


/* Node e is the merged value of the UOBJECT property being read: the
 * table of the alternatives each of its values (ENUM) or parts (UNION)
 * belongs to, and the frame; else 0. */
static int32_t
kimi_json_uo_table(kimi_json_state_t *s, int32_t e, kimi_json_frame_t **fp)
{
    const int32_t      *p = s->prog;
    kimi_json_frame_t  *f;

    if (s->depth == 0 || s->stack[s->depth - 1] != '{') {
        return 0;
    }
    f = &s->frame[s->depth - 1];
    if (f->node == 0 || p[f->node] != KIMI_SN_UOBJECT
        || p[f->node + 7 + 3 * f->prop] != e)
    {
        return 0;
    }
    *fp = f;
    return kimi_json_uo_vtable(p, f->node, f->prop);
}


/* The enum values of node e that may follow here (a bit each): those of
 * an alternative still open, under a UOBJECT; else all. */
static uint64_t
kimi_json_uo_values(kimi_json_state_t *s, int32_t e)
{
    kimi_json_frame_t  *f = NULL;
    int32_t             t = kimi_json_uo_table(s, e, &f);
    uint64_t            ok = 0;

    if (t == 0) {
        return ~(uint64_t) 0;
    }
    for (int32_t v = 0; v < s->prog[e + 1]; v++) {
        if ((uint32_t) s->prog[t + v] & f->alts) {
            ok |= (uint64_t) 1 << v;
        }
    }
    return ok;
}


/* the frame of the uniqueItems array whose items enum node e is read in
 * (its seen bits: the values written), or NULL */
static kimi_json_frame_t *
kimi_json_set_frame(kimi_json_state_t *s, int32_t e)
{
    kimi_json_frame_t  *f;

    if (s->depth == 0 || s->stack[s->depth - 1] != '[') {
        return NULL;
    }
    f = &s->frame[s->depth - 1];
    return f->node != 0 && s->prog[f->node] == KIMI_SN_ARRAY
           && s->prog[f->node + 4] == 1 && s->prog[f->node + 1] == e ? f : NULL;
}


/* value or part v of node e was taken: a UOBJECT keeps the alternatives it
 * belongs to, a uniqueItems array notes the value */
static void
kimi_json_uo_taken(kimi_json_state_t *s, int32_t e, int32_t v)
{
    kimi_json_frame_t  *f = NULL;
    int32_t             t = kimi_json_uo_table(s, e, &f);

    if (t != 0) {
        f->alts &= (uint32_t) s->prog[t + v];
    }
    f = kimi_json_set_frame(s, e);
    if (f != NULL) {
        f->seen |= (uint64_t) 1 << v;
    }
}


/* the uniqueItems array of strings or integers (unique 2) whose item is
 * being read, or NULL */
static const kimi_json_frame_t *
kimi_json_hset_frame(const kimi_json_state_t *s)
{
    const kimi_json_frame_t  *f;

    if (s->prog == NULL || s->depth == 0 || s->stack[s->depth - 1] != '[') {
        return NULL;
    }
    f = &s->frame[s->depth - 1];
    return f->node != 0 && s->prog[f->node] == KIMI_SN_ARRAY
           && s->prog[f->node + 4] == 2 ? f : NULL;
}


#define KIMI_FNV_BASIS  2166136261u
#define KIMI_FNV_PRIME  16777619u

/* 1 if an item whose text hashes to h was written before */
static int
kimi_json_hset_has(const kimi_json_state_t *s, uint32_t h)
{
    for (unsigned i = 0; i < s->hn; i++) {
        if (s->hset[i] == h) {
            return 1;
        }
    }
    return 0;
}


/* the hash of an integer item 0 (and of -0, the same value) */
#define KIMI_FNV_ZERO   ((KIMI_FNV_BASIS ^ '0') * KIMI_FNV_PRIME)

/* the item whose text hashes to h ended: refused if one written before
 * hashes the same (a collision only makes the item go on), else noted */
static int
kimi_json_hset_add(kimi_json_state_t *s, uint32_t h)
{
    if (kimi_json_hset_has(s, h)) {
        return -1;
    }
    if (s->hn == KIMI_SCHEMA_MAX_SET) {
        return -1;                      /* max_items keeps this from coming */
    }
    s->hset[s->hn++] = h;
    return 0;
}


/* a value ended: back to the container (an array counts the item) */
static void
kimi_json_value_end(kimi_json_state_t *s)
{
    s->state = J_AFTER_VALUE;
    if (s->prog != NULL && s->depth > 0 && s->stack[s->depth - 1] == '[') {
        s->frame[s->depth - 1].count++;
    }
}


/* c opens a container of schema node (0: any content) */
static int
kimi_json_push(kimi_json_state_t *s, unsigned char c, int32_t node)
{
    kimi_json_frame_t  *f;

    if (s->depth == (s->prog ? KIMI_SCHEMA_MAX_DEPTH : KIMI_JSON_MAX_DEPTH)) {
        return -1;
    }
    if (s->prog != NULL) {
        f = &s->frame[s->depth];
        f->node = (uint16_t) node;
        f->prop = 0;
        f->count = 0;
        f->seen = 0;
        f->alts = 0;
        if (node != 0 && s->prog[node] == KIMI_SN_UOBJECT) {
            int32_t  m = s->prog[kimi_json_uo_base(s->prog, node)];

            f->alts = m >= 32 ? ~0u : (1u << m) - 1;
        }
        if (c == '[') {                 /* a tuple has a first item */
            s->expect = (uint16_t) (node ? kimi_json_item(s->prog, node, 0)
                                         : 0);
            s->hn = 0;                  /* a set of strings or integers: empty */
        }
    }
    s->stack[s->depth++] = c;
    s->state = c == '{' ? J_KEY_OR_END : J_ARRAY_FIRST;
    return 0;
}


/* 1 if c can start a value of schema node e (0: any value) */
static int
kimi_json_starts(const int32_t *p, int32_t e, unsigned char c)
{
    if (e == 0 || p[e] == KIMI_SN_ANY) {
        return c == '{' || c == '[' || c == '"' || c == '-'
               || kimi_json_digit(c) || c == 't' || c == 'f' || c == 'n';
    }
    switch (p[e]) {
    case KIMI_SN_OBJECT:
    case KIMI_SN_UOBJECT:
        return c == '{';
    case KIMI_SN_ARRAY:
    case KIMI_SN_TUPLE:
        return c == '[';
    case KIMI_SN_STRING:
        return c == '"';
    case KIMI_SN_NUMBER:
    case KIMI_SN_INTEGER:
    case KIMI_SN_DECIMAL:
        return c == '-' || kimi_json_digit(c);
    case KIMI_SN_BOOLEAN:
        return c == 't' || c == 'f';
    case KIMI_SN_NULL:
        return c == 'n';
    case KIMI_SN_ENUM:
        for (int32_t i = 0; i < p[e + 1]; i++) {
            if (kimi_json_schema_bytes(p, p[e + 2 + 2 * i])[0] == c) {
                return 1;
            }
        }
        return 0;
    }
    return 0;
}


/* a value of schema node e starts with c: what the schema allows there */
static int
kimi_json_schema_start(kimi_json_state_t *s, int32_t e, unsigned char c,
    int32_t *generic)
{
    const int32_t  *p = s->prog;
    int32_t         i, pick = -1;

    *generic = 0;
    if (p[e] == KIMI_SN_UNION) {
        kimi_json_frame_t  *f = NULL;
        int32_t             t = kimi_json_uo_table(s, e, &f);

        for (i = 0; i < p[e + 1]; i++) {
            if (kimi_json_starts(p, p[e + 2 + i], c)
                && (t == 0 || ((uint32_t) p[t + i] & f->alts) != 0))
            {
                pick = p[e + 2 + i];
                break;
            }
        }
        if (pick < 0) {
            return -1;
        }
        kimi_json_uo_taken(s, e, i);    /* a merged property's part */
        e = pick;
    }

    switch (p[e]) {
    case KIMI_SN_OBJECT:
    case KIMI_SN_UOBJECT:
        if (c != '{') {
            return -1;
        }
        return kimi_json_push(s, c, p[e + 4] == 1 ? 0 : e);   /* free: any keys */
    case KIMI_SN_ARRAY:
    case KIMI_SN_TUPLE:
        return c == '[' ? kimi_json_push(s, c, e) : -1;
    case KIMI_SN_ENUM:
        s->cand = 0;
        for (i = 0; i < p[e + 1]; i++) {
            if (kimi_json_schema_bytes(p, p[e + 2 + 2 * i])[0] == c) {
                s->cand |= (uint64_t) 1 << i;
            }
        }
        s->cand &= kimi_json_uo_values(s, e);
        if (kimi_json_set_frame(s, e) != NULL) {
            s->cand &= ~kimi_json_set_frame(s, e)->seen;   /* not again */
        }
        if (s->cand == 0) {
            return -1;
        }
        s->enode = (uint16_t) e;
        s->pos = 1;
        s->state = J_ENUM;
        return 0;
    case KIMI_SN_STRING:
        if (c != '"') {
            return -1;
        }
        *generic = 1;
        s->snode = (uint16_t) e;        /* its lengths bind (value_start) */
        s->fphase = F_FIXED;
        s->fpos = 0;
        s->pstate = 0;
        return 0;
    case KIMI_SN_DECIMAL:              /* digits held to its bounds */
        s->dnode = (uint16_t) e;
        s->nneg = 0;
        s->ndig = 0;
        s->nval = 0;
        s->fdig = 0;
        s->fval = 0;
        s->ftail = 0;
        s->num = N_INT;
        if (c == '-') {
            s->nneg = 1;
            if (!kimi_json_dec_can(s, 0)) {
                return -1;
            }
        } else if (!kimi_json_digit(c) || kimi_json_dec_digit(s, c) != 0) {
            return -1;
        }
        *generic = 1;
        return 0;
    case KIMI_SN_INTEGER:
        s->intonly = 1;
        if (p[e + 1] || p[e + 4] || p[e + 7] > 1) {
            /* bounded, or multiples only: its digits are held */
            s->inode = (uint16_t) e;
            s->nneg = 0;
            s->ndig = 0;
            s->nval = 0;
            if (c == '-') {
                s->nneg = 1;
                if (!kimi_json_int_can(s, 0)) {
                    return -1;
                }
            } else if (kimi_json_int_digit(s, c) != 0) {
                return -1;
            }
        }
        /* fall through */
    default:
        if (!kimi_json_starts(p, e, c)) {
            return -1;
        }
        *generic = 1;                   /* scalars read as in JSON mode */
        return 0;
    }
}


/* a value starts with c (state was J_VALUE, J_ARRAY_FIRST or J_START) */
static int
kimi_json_value_start(kimi_json_state_t *s, unsigned char c)
{
    int32_t  generic;

    s->intonly = 0;
    s->inode = 0;
    s->dnode = 0;
    s->snode = 0;
    s->slen = 0;
    s->hitem = 0;
    if (s->prog != NULL && s->expect != 0) {
        if (kimi_json_schema_start(s, s->expect, c, &generic) != 0) {
            return -1;
        }
        if (!generic) {
            return 0;
        }
        s->hitem = kimi_json_hset_frame(s) != NULL;
        if (s->hitem) {                 /* an item of a set: its text hashed */
            if (c == '0' && kimi_json_hset_has(s, KIMI_FNV_ZERO)) {
                return -1;              /* 0 written: it cannot go on */
            }
            s->hhash = c == '"' ? KIMI_FNV_BASIS : (KIMI_FNV_BASIS ^ c) * KIMI_FNV_PRIME;
        }
    }

    switch (c) {
    case '{':
    case '[':
        return kimi_json_push(s, c, 0);
    case '"':
        s->state = J_STRING;
        s->key = 0;
        return 0;
    case '-':
        s->state = J_NUMBER;
        s->num = N_MINUS;
        return 0;
    case 't':
    case 'f':
    case 'n':
        s->state = J_LITERAL;
        s->which = c == 't' ? 0 : (c == 'f' ? 1 : 2);
        s->lit = 1;
        return 0;
    default:
        if (kimi_json_digit(c)) {
            s->state = J_NUMBER;
            s->num = c == '0' ? N_ZERO : N_INT;
            return 0;
        }
        return -1;
    }
}


/* the container on top closes with c, if its schema allows it to */
static int
kimi_json_close(kimi_json_state_t *s, unsigned char c)
{
    const kimi_json_frame_t  *f;
    const int32_t            *p = s->prog;
    uint64_t                  req;

    if (s->depth == 0 || s->stack[s->depth - 1] != (c == '}' ? '{' : '[')) {
        return -1;
    }
    if (p != NULL && s->frame[s->depth - 1].node != 0) {
        f = &s->frame[s->depth - 1];
        if (c == '}' && p[f->node] == KIMI_SN_UOBJECT) {
            /* some alternative still open has all it requires */
            int32_t  b = kimi_json_uo_base(p, f->node), a;

            for (a = 0; a < p[b]; a++) {
                req = ((uint64_t) (uint32_t) p[b + 2 + 2 * a] << 32)
                      | (uint32_t) p[b + 1 + 2 * a];
                if ((f->alts >> a & 1) && (f->seen & req) == req) {
                    break;
                }
            }
            if (a == p[b]) {
                return -1;
            }
        } else if (c == '}') {
            req = ((uint64_t) (uint32_t) p[f->node + 3] << 32)
                  | (uint32_t) p[f->node + 2];
            if ((f->seen & req) != req
                || f->count < (uint32_t) kimi_json_min_keys(p, f->node))
            {
                return -1;
            }
        } else if (f->count < (uint32_t) p[f->node + 2]) {
            return -1;
        }
    }
    s->depth--;
    if (s->depth == 0) {
        s->state = J_DONE;
    } else {
        kimi_json_value_end(s);
    }
    return 0;
}


/* a byte of a key no property names: UTF-8 text, no control bytes and
 * no escapes (an escape could spell a property's name another way) */
static int
kimi_json_free_key_byte(kimi_json_state_t *s, unsigned char c)
{
    if (s->ucont > 0) {
        return kimi_json_utf8_cont(s, c);
    }
    if (c < 0x20 || c == '\\' || c == '"') {
        return -1;
    }
    return c >= 0x80 ? kimi_json_utf8_lead(s, c) : 0;
}


/* The STRING node an object's free keys follow (propertyNames' lengths
 * and pattern), or 0 */
static int32_t
kimi_json_key_node(const int32_t *p, int32_t node)
{
    return p[node] == KIMI_SN_OBJECT ? p[node + 7 + 3 * p[node + 1]] : 0;
}


/* byte c of a free key held to STRING node kn: a code point past its
 * maxLength, or a byte its pattern's DFA refuses, is refused */
static int
kimi_json_key_text(kimi_json_state_t *s, int32_t kn, unsigned char c)
{
    const int32_t  *p = s->prog;
    char            ch = (char) c;

    if (c < 0x80 || c >= 0xc0) {        /* a code point starts */
        if (p[kn + 2] >= 0 && s->slen >= (uint32_t) p[kn + 2]) {
            return -1;
        }
        s->slen++;
    }
    if (p[kn + 3] == KIMI_SF_PATTERN) {
        s->pstate = kimi_regex_step(p + p[kn + 4], s->pstate, &ch, 1);
        if (s->pstate < 0) {
            return -1;
        }
    }
    return 0;
}


/* a schema object's key: c is its next byte */
static int
kimi_json_key_byte(kimi_json_state_t *s, unsigned char c)
{
    const int32_t      *p = s->prog;
    kimi_json_frame_t  *f = &s->frame[s->depth - 1];
    int32_t             node = f->node, at, len;
    int32_t             kn = kimi_json_key_node(p, node);
    uint64_t            next = 0;

    for (int32_t i = 0; i < p[node + 1]; i++) {
        if (!(s->cand >> i & 1)) {
            continue;
        }
        at = p[node + 5 + 3 * i];
        len = p[node + 6 + 3 * i];
        if (c == '"' && len == s->pos) {          /* the name is complete */
            if (f->seen >> i & 1) {
                return -1;              /* written before (free keys' cand) */
            }
            f->prop = (uint16_t) i;
            f->seen |= (uint64_t) 1 << i;
            f->count++;
            if (p[node] == KIMI_SN_UOBJECT) {
                f->alts &= kimi_json_uo_palts(p, node, i);
            }
            s->state = J_COLON;
            return 0;
        }
        if (c != '"' && s->pos < len
            && kimi_json_schema_bytes(p, at)[s->pos] == c)
        {
            next |= (uint64_t) 1 << i;
        }
    }
    if (s->kfree && c == '"' && s->ucont == 0) {  /* a key no property names */
        if (kn != 0 && (s->slen < (uint32_t) p[kn + 1]
                        || (p[kn + 3] == KIMI_SF_PATTERN
                            && !kimi_regex_accepts(p + p[kn + 4], s->pstate))))
        {
            return -1;                  /* short of propertyNames' text */
        }
        if (p[node + 1] == 0 && kimi_json_min_keys(p, node) >= 2) {
            /* a key written twice would count twice toward minProperties
             * but be one key once parsed: refused (a hash collision only
             * makes the key go on) */
            uint64_t  bits = (uint64_t) 1 << (s->khash & 63)
                             | (uint64_t) 1 << (s->khash >> 6 & 63);

            if ((f->seen & bits) == bits) {
                return -1;
            }
            f->seen |= bits;
        }
        f->prop = KIMI_JSON_FREE_PROP;
        f->count++;
        s->state = J_COLON;
        return 0;
    }
    /* a free key's character only where it fits whole within the
     * limit: a lead byte past it would leave the key no way to end */
    if (s->kfree && (kimi_json_free_key_byte(s, c) != 0
                     || s->pos + 1 + s->ucont > KIMI_SCHEMA_MAX_TEXT
                     || (kn != 0 && kimi_json_key_text(s, kn, c) != 0)))
    {
        s->kfree = 0;                   /* only a property's name is left */
    }
    if (next == 0 && !s->kfree) {
        return -1;
    }
    s->khash = (s->khash ^ c) * 16777619u;
    s->cand = next;
    s->pos++;
    return 0;
}


/* an enum value: c extends some candidate, or ends a complete one */
static int
kimi_json_enum_byte(kimi_json_state_t *s, unsigned char c)
{
    const int32_t  *p = s->prog;
    int32_t         e = s->enode, at, len;
    uint64_t        next = 0;
    int32_t         complete = -1;      /* the value the text so far is */

    for (int32_t i = 0; i < p[e + 1]; i++) {
        if (!(s->cand >> i & 1)) {
            continue;
        }
        at = p[e + 2 + 2 * i];
        len = p[e + 3 + 2 * i];
        if (s->pos < len && kimi_json_schema_bytes(p, at)[s->pos] == c) {
            next |= (uint64_t) 1 << i;
        } else if (s->pos == len) {
            complete = i;
        }
    }
    if (next != 0) {
        s->cand = next;
        s->pos++;
        return 0;
    }
    if (complete < 0) {
        return -1;
    }
    kimi_json_uo_taken(s, e, complete);
    kimi_json_value_end(s);             /* c belongs to what follows */
    return kimi_json_byte(s, c);
}


static int
kimi_json_byte(kimi_json_state_t *s, unsigned char c)
{
    if (s->state < J_STRING) {          /* between tokens of the grammar */
        if (!kimi_json_space(c)) {
            s->ws = 0;
        } else if (++s->ws > s->max_ws) {
            return -1;
        }
    }

    switch (s->state) {
    case J_START:
        if (kimi_json_space(c)) {
            return 0;
        }
        if (s->prog != NULL) {          /* the root: an object or array */
            s->expect = (uint16_t) s->prog[1];
            return kimi_json_value_start(s, c);
        }
        return c == '{' ? kimi_json_push(s, c, 0) : -1;

    case J_DONE:
        return kimi_json_space(c) ? 0 : -1;

    case J_VALUE:
        return kimi_json_space(c) ? 0 : kimi_json_value_start(s, c);

    case J_ARRAY_FIRST:
        if (kimi_json_space(c)) {
            return 0;
        }
        return c == ']' ? kimi_json_close(s, c) : kimi_json_value_start(s, c);

    case J_KEY_OR_END:
    case J_KEY:
        if (kimi_json_space(c)) {
            return 0;
        }
        if (c == '}' && s->state == J_KEY_OR_END) {
            return kimi_json_close(s, c);
        }
        if (c != '"') {
            return -1;
        }
        if (s->prog != NULL && s->frame[s->depth - 1].node != 0) {
            const kimi_json_frame_t  *f = &s->frame[s->depth - 1];

            if (kimi_json_keys_full(s->prog, f)) {
                return -1;              /* maxProperties 0 */
            }
            s->pos = 0;
            s->state = J_SKEY;
            s->ucont = 0;
            s->khash = 2166136261u;
            s->slen = 0;                /* a free key's code points and */
            s->pstate = 0;              /* pattern state (propertyNames) */
            s->kfree = kimi_json_free_keys(s->prog, f->node);
            if (s->kfree) {             /* a written name is refused at its end */
                s->cand = kimi_json_all_props(s->prog, f->node);
                return 0;
            }
            s->cand = kimi_json_open_props(s->prog, f);
            return s->cand != 0 ? 0 : -1;
        }
        s->state = J_STRING;
        s->key = 1;
        s->snode = 0;                   /* a key has no length limits */
        return 0;

    case J_COLON:
        if (kimi_json_space(c)) {
            return 0;
        }
        if (c != ':') {
            return -1;
        }
        s->state = J_VALUE;
        if (s->prog != NULL) {
            const kimi_json_frame_t  *f = &s->frame[s->depth - 1];

            s->expect = (uint16_t) (f->node == 0 ? 0
                                    : f->prop == KIMI_JSON_FREE_PROP
                                    ? s->prog[f->node + 4]
                                    : s->prog[f->node + 7 + 3 * f->prop]);
        }
        return 0;

    case J_AFTER_VALUE:
        if (kimi_json_space(c)) {
            return 0;
        }
        if (c == ',') {
            s->state = s->stack[s->depth - 1] == '{' ? J_KEY : J_VALUE;
            if (s->prog != NULL) {
                const kimi_json_frame_t  *f = &s->frame[s->depth - 1];
                const int32_t            *p = s->prog;

                if (f->node == 0) {
                    s->expect = 0;
                } else if (s->state == J_KEY) {
                    /* another key only while a property is left and the
                     * object takes one more */
                    if ((!kimi_json_free_keys(p, f->node)
                         && kimi_json_open_props(p, f) == 0)
                        || kimi_json_keys_full(p, f))
                    {
                        return -1;
                    }
                } else {
                    if ((p[f->node + 3] >= 0
                         && f->count >= (uint32_t) p[f->node + 3])
                        || kimi_json_item(p, f->node, f->count) < 0)
                    {
                        return -1;
                    }
                    s->expect = (uint16_t) kimi_json_item(p, f->node, f->count);
                }
            }
            return 0;
        }
        if (c == '}' || c == ']') {
            return kimi_json_close(s, c);
        }
        return -1;

    case J_STRING:
        if (s->snode != 0 && s->prog[s->snode + 3] == KIMI_SF_PATTERN) {
            /* the raw text is the value: no escapes, the DFA over its
             * bytes, the closing quote only where it accepts; lengths and
             * UTF-8 below as for any string */
            const int32_t  *dfa = s->prog + s->prog[s->snode + 4];
            char            ch = (char) c;

            if (c == '\\' || c < 0x20) {
                return -1;
            }
            if (c == '"') {
                if (s->ucont > 0 || !kimi_regex_accepts(dfa, s->pstate)) {
                    return -1;
                }
            } else {
                s->pstate = kimi_regex_step(dfa, s->pstate, &ch, 1);
                if (s->pstate < 0) {
                    return -1;
                }
            }
        } else if (s->snode != 0 && s->prog[s->snode + 3] != KIMI_SF_NONE) {
            int  r = kimi_json_format_byte(s, s->prog[s->snode + 3], c);

            if (r == 1) {               /* a formatted string is a value */
                kimi_json_value_end(s);
            }
            return r < 0 ? -1 : 0;
        }
        if (s->hitem && !s->key && c != '"') {
            if (c == '\\') {
                return -1;              /* a set's strings: no escapes, so
                                           equal values are equal texts */
            }
            s->hhash = (s->hhash ^ c) * KIMI_FNV_PRIME;
        }
        if (s->ucont > 0) {             /* inside a UTF-8 sequence */
            return kimi_json_utf8_cont(s, c);
        }
        if (c >= 0x80 && kimi_json_utf8_lead(s, c) != 0) {
            return -1;
        }
        if (c == '"') {
            if (s->snode != 0 && s->slen < (uint32_t) s->prog[s->snode + 1]) {
                return -1;              /* shorter than minLength */
            }
            if (s->key) {
                s->state = J_COLON;
            } else {
                if (s->hitem && kimi_json_hset_add(s, s->hhash) != 0) {
                    return -1;          /* written before */
                }
                kimi_json_value_end(s);
            }
            return 0;
        }
        if (c < 0x20) {
            return -1;                  /* control characters are escaped */
        }
        /* a code point (or an escape) starts */
        if (s->snode != 0 && s->prog[s->snode + 2] >= 0
            && s->slen >= (uint32_t) s->prog[s->snode + 2])
        {
            return -1;                  /* maxLength reached: only '"' */
        }
        s->slen++;
        if (c == '\\') {
            s->state = J_ESCAPE;
        }
        return 0;

    case J_ESCAPE:
        if (c == 'u') {
            s->state = J_UNICODE;
            s->lit = 0;
            return 0;
        }
        if (strchr("\"\\/bfnrt", c) == NULL || c == '\0') {
            return -1;
        }
        s->state = J_STRING;
        return 0;

    case J_UNICODE:
        if (!kimi_json_hex(c)) {
            return -1;
        }
        if (++s->lit == 4) {
            s->state = J_STRING;
        }
        return 0;

    case J_LITERAL:
        if (c != (unsigned char) kimi_json_literals[s->which][s->lit]) {
            return -1;
        }
        if (kimi_json_literals[s->which][++s->lit] == '\0') {
            kimi_json_value_end(s);
        }
        return 0;

    case J_SKEY:
        return kimi_json_key_byte(s, c);

    case J_ENUM:
        return kimi_json_enum_byte(s, c);

    case J_NUMBER:
        if (s->intonly && (c == '.' || c == 'e' || c == 'E')) {
            return -1;                  /* a schema integer: digits only */
        }
        if (s->hitem && kimi_json_digit(c)) {
            if (s->num == N_MINUS && c == '0' && kimi_json_hset_has(s, KIMI_FNV_ZERO)) {
                return -1;              /* -0 is 0, written: it cannot go on */
            }
            s->hhash = (s->hhash ^ c) * KIMI_FNV_PRIME;   /* a set's integer */
        }
        if (s->dnode != 0 && (c == 'e' || c == 'E')) {
            return -1;                  /* a bounded number: no exponent */
        }
        switch (s->num) {
        case N_MINUS:
            if (!kimi_json_digit(c)
                || (s->inode != 0 && kimi_json_int_digit(s, c) != 0)
                || (s->dnode != 0 && kimi_json_dec_digit(s, c) != 0))
            {
                return -1;
            }
            s->num = c == '0' ? N_ZERO : N_INT;
            return 0;
        case N_ZERO:
        case N_INT:
            if (kimi_json_digit(c) && s->num == N_INT) {
                return s->inode != 0 ? kimi_json_int_digit(s, c)
                       : s->dnode != 0 ? kimi_json_dec_digit(s, c) : 0;
            }
            if (c == '.') {
                s->num = N_DOT;
                return s->dnode != 0 && !kimi_json_dec_can(s, 0) ? -1 : 0;
            }
            if (c == 'e' || c == 'E') {
                s->num = N_EXP;
                return 0;
            }
            break;                      /* the number ends before c */
        case N_DOT:
            if (c >= '0' && c <= '9') {
                s->num = N_FRAC;
                return s->dnode != 0 ? kimi_json_dec_digit(s, c) : 0;
            }
            return -1;
        case N_FRAC:
            if (c >= '0' && c <= '9') {
                return s->dnode != 0 ? kimi_json_dec_digit(s, c) : 0;
            }
            if (c == 'e' || c == 'E') {
                s->num = N_EXP;
                return 0;
            }
            break;
        case N_EXP:
            if (c == '+' || c == '-') {
                s->num = N_EXP_SIGN;
                return 0;
            }
            /* fall through */
        case N_EXP_SIGN:
            if (c >= '0' && c <= '9') {
                s->num = N_EXP_INT;
                return 0;
            }
            return -1;
        case N_EXP_INT:
            if (c >= '0' && c <= '9') {
                return 0;
            }
            break;
        }
        /* a complete number ends here; c belongs to what follows it */
        if ((s->inode != 0 && !kimi_json_int_can(s, 1))
            || (s->dnode != 0 && !kimi_json_dec_can(s, 1)))
        {
            return -1;                  /* outside its bounds */
        }
        if (s->hitem) {
            /* -0 is 0 */
            const uint32_t  minus0 = (((KIMI_FNV_BASIS ^ '-') * KIMI_FNV_PRIME) ^ '0') * KIMI_FNV_PRIME;

            if (kimi_json_hset_add(s, s->hhash == minus0 ? KIMI_FNV_ZERO : s->hhash) != 0) {
                return -1;              /* written before */
            }
        }
        kimi_json_value_end(s);
        return kimi_json_byte(s, c);
    }

    return -1;
}


int
kimi_json_plain_text(const char *p, size_t n)
{
    kimi_json_state_t  s;
    unsigned char      c;

    s.ucont = 0;
    for (size_t i = 0; i < n; i++) {
        c = (unsigned char) p[i];
        if (s.ucont > 0) {
            if (c < s.ulo || c > s.uhi) {
                return 0;
            }
            s.ucont--;
            s.ulo = 0x80;
            s.uhi = 0xbf;
        } else if (c < 0x20 || c == '"' || c == '\\'
                   || (c >= 0x80 && kimi_json_utf8_lead(&s, c) != 0))
        {
            return 0;
        }
    }
    return s.ucont == 0;
}


int
kimi_json_feed(kimi_json_state_t *s, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (kimi_json_byte(s, (unsigned char) p[i]) != 0) {
            return -1;
        }
    }
    return 0;
}
