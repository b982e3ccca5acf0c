/*
 * JSON mode (response_format {"type": "json_object"}): a byte-level
 * recogniser of one JSON object (RFC 8259), optionally surrounded by
 * whitespace, that accepts every prefix of such a text and nothing else.
 *
 * Owns:   the grammar state and feeding bytes to it; the sampler
 *         (sample.c) masks every token whose bytes the state refuses.
 * Never:  looks at token ids or logits; validates UTF-8 inside strings
 *         (the detokenizer replaces broken sequences, as it does for any
 *         output); nesting deeper than KIMI_JSON_MAX_DEPTH and more than
 *         KIMI_JSON_MAX_WS whitespace bytes in a row are refused.
 */

#include <string.h>

#include "json_mode.h"


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
}


int
kimi_json_done(const kimi_json_state_t *s)
{
    return s->state == J_DONE;
}


int
kimi_json_in_string(const kimi_json_state_t *s)
{
    return s->state == J_STRING;
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


/* a value ended: back to the container */
static void
kimi_json_value_end(kimi_json_state_t *s)
{
    s->state = J_AFTER_VALUE;
}


/* a value starts with c (state was J_VALUE or J_ARRAY_FIRST) */
static int
kimi_json_value_start(kimi_json_state_t *s, unsigned char c)
{
    switch (c) {
    case '{':
    case '[':
        if (s->depth == KIMI_JSON_MAX_DEPTH) {
            return -1;
        }
        s->stack[s->depth++] = (unsigned char) c;
        s->state = c == '{' ? J_KEY_OR_END : J_ARRAY_FIRST;
        return 0;
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
        if (c >= '0' && c <= '9') {
            s->state = J_NUMBER;
            s->num = c == '0' ? N_ZERO : N_INT;
            return 0;
        }
        return -1;
    }
}


/* the container on top closes with c */
static int
kimi_json_close(kimi_json_state_t *s, unsigned char c)
{
    if (s->depth == 0 || s->stack[s->depth - 1] != (c == '}' ? '{' : '[')) {
        return -1;
    }
    s->depth--;
    s->state = s->depth == 0 ? J_DONE : J_AFTER_VALUE;
    return 0;
}


static int
kimi_json_byte(kimi_json_state_t *s, unsigned char c)
{
    if (s->state < J_STRING) {          /* between tokens of the grammar */
        if (!kimi_json_space(c)) {
            s->ws = 0;
        } else if (++s->ws > KIMI_JSON_MAX_WS) {
            return -1;
        }
    }

    switch (s->state) {
    case J_START:
        if (kimi_json_space(c)) {
            return 0;
        }
        if (c != '{') {
            return -1;
        }
        s->stack[s->depth++] = '{';
        s->state = J_KEY_OR_END;
        return 0;

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
        s->state = J_STRING;
        s->key = 1;
        return 0;

    case J_COLON:
        if (kimi_json_space(c)) {
            return 0;
        }
        if (c != ':') {
            return -1;
        }
        s->state = J_VALUE;
        return 0;

    case J_AFTER_VALUE:
        if (kimi_json_space(c)) {
            return 0;
        }
        if (c == ',') {
            s->state = s->stack[s->depth - 1] == '{' ? J_KEY : J_VALUE;
            return 0;
        }
        if (c == '}' || c == ']') {
            return kimi_json_close(s, c);
        }
        return -1;

    case J_STRING:
        if (c == '"') {
            if (s->key) {
                s->state = J_COLON;
            } else {
                kimi_json_value_end(s);
            }
            return 0;
        }
        if (c == '\\') {
            s->state = J_ESCAPE;
            return 0;
        }
        return c < 0x20 ? -1 : 0;       /* control characters are escaped */

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

    case J_NUMBER:
        switch (s->num) {
        case N_MINUS:
            if (c == '0') {
                s->num = N_ZERO;
                return 0;
            }
            if (c >= '1' && c <= '9') {
                s->num = N_INT;
                return 0;
            }
            return -1;
        case N_ZERO:
        case N_INT:
            if (c >= '0' && c <= '9' && s->num == N_INT) {
                return 0;
            }
            if (c == '.') {
                s->num = N_DOT;
                return 0;
            }
            if (c == 'e' || c == 'E') {
                s->num = N_EXP;
                return 0;
            }
            break;                      /* the number ends before c */
        case N_DOT:
            if (c >= '0' && c <= '9') {
                s->num = N_FRAC;
                return 0;
            }
            return -1;
        case N_FRAC:
            if (c >= '0' && c <= '9') {
                return 0;
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
        kimi_json_value_end(s);
        return kimi_json_byte(s, c);
    }

    return -1;
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
