/*
 * UTF-8 validation and repair for the text stack.
 *
 * Owns:   the one definition of "valid UTF-8" used by encode and decode,
 *         and U+FFFD substitution by maximal subparts (Unicode ch. 3,
 *         "U+FFFD Substitution of Maximal Subparts"), which is what
 *         Python's bytes.decode("utf-8", "replace") does and so what
 *         Hugging Face's decode returns.
 * Never:  allocates.
 */

#include <string.h>

#include "text_internal.h"


/* Length of the longest valid prefix of a sequence starting at s[0]
 * (1..4 when complete), with *complete telling whether it is a whole
 * character.  Returns 0 if s[0] cannot start a character. */
static size_t
kimi_utf8_seq(const uint8_t *s, size_t n, int *complete)
{
    uint8_t  b = s[0], lo = 0x80, hi = 0xbf;
    size_t   need, i;

    *complete = 0;

    if (b < 0x80) {
        *complete = 1;
        return 1;
    }

    if (b >= 0xc2 && b <= 0xdf) {
        need = 2;

    } else if (b >= 0xe0 && b <= 0xef) {
        need = 3;
        if (b == 0xe0) {
            lo = 0xa0;
        } else if (b == 0xed) {
            hi = 0x9f;        /* no surrogates */
        }

    } else if (b >= 0xf0 && b <= 0xf4) {
        need = 4;
        if (b == 0xf0) {
            lo = 0x90;
        } else if (b == 0xf4) {
            hi = 0x8f;        /* nothing above U+10FFFF */
        }

    } else {
        return 0;
    }

    for (i = 1; i < need; i++) {
        if (i >= n) {
            return i;         /* truncated: valid so far */
        }

        if (s[i] < lo || s[i] > hi) {
            return i;
        }

        lo = 0x80;
        hi = 0xbf;
    }

    *complete = 1;
    return need;
}


size_t
kimi_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
{
    int       complete;
    size_t    len = n > 0 ? kimi_utf8_seq(s, n, &complete) : 0;
    uint32_t  c;

    if (len == 0 || !complete) {
        return 0;
    }

    c = len == 1 ? s[0] : s[0] & (0x7fu >> len);

    for (size_t i = 1; i < len; i++) {
        c = c << 6 | (s[i] & 0x3f);
    }

    *cp = c;
    return len;
}


size_t
kimi_utf8_valid_prefix(const uint8_t *s, size_t n)
{
    int     complete;
    size_t  i, k;

    i = 0;

    while (i < n) {
        /* ASCII dominates real prompts: skip 8 bytes at a time */
        while (i + 8 <= n) {
            uint64_t  w;

            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) {
                break;
            }
            i += 8;
        }

        if (i >= n) {
            break;
        }

        k = kimi_utf8_seq(s + i, n - i, &complete);
        if (!complete) {
            return i;
        }
        i += k;
    }

    return n;
}


size_t
kimi_utf8_repair(const uint8_t *s, size_t n, uint8_t *out, int hold,
    size_t *held)
{
    int     complete;
    size_t  i, k, o;

    i = 0;
    o = 0;

    if (held != NULL) {
        *held = 0;
    }

    while (i < n) {
        k = kimi_utf8_seq(s + i, n - i, &complete);

        if (complete) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
            continue;
        }

        if (hold && k > 0 && i + k == n) {
            /* a valid start cut by the end of the input: wait for more */
            *held = k;
            break;
        }

        /* one U+FFFD for the maximal subpart (at least one byte) */
        out[o++] = 0xef;
        out[o++] = 0xbf;
        out[o++] = 0xbd;
        i += (k > 0) ? k : 1;
    }

    return o;
}
