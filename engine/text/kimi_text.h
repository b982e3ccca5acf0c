/*
 * Kimi's text stack: tokenizer, chat template, incremental detokenizer,
 * tool-call parser.  Compiled into the nginx module and kimi-engine.
 *
 * Owns:   the public C API of engine/text/ (one header for the gateway).
 * Never:  touches nginx, the shm segment or the model weights.
 * Memory: functions that return buffers malloc them; the caller frees with
 *         free().  Loaded objects are immutable and thread-safe to share
 *         (the gateway uses them from its thread pool); per-request state
 *         (detokenizer, tool parser) belongs to one thread at a time.
 */

#ifndef KIMI_TEXT_H
#define KIMI_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../common/kimi_err.h"

/* ---- tokenizer ----------------------------------------------------------- */

typedef struct kimi_tokenizer  kimi_tokenizer_t;

/* Reads DIR/tiktoken.model and DIR/tokenizer_config.json (Kimi's), or
 * else DIR/tokenizer.json, a Hugging Face byte-level BPE (DeepSeek-V3's),
 * with DIR/tokenizer_config.json when there. */
int  kimi_tokenizer_load(kimi_tokenizer_t **out, const char *model_dir,
    kimi_err_t *err);
void kimi_tokenizer_free(kimi_tokenizer_t *tok);

uint32_t kimi_tokenizer_n_vocab(const kimi_tokenizer_t *tok);  /* 163840 */
int32_t  kimi_tokenizer_bos(const kimi_tokenizer_t *tok);
int32_t  kimi_tokenizer_eos(const kimi_tokenizer_t *tok);      /* [EOS] */
/* The id a plain (not chat-rendered) prompt starts with, or -1: bos when
 * tokenizer_config.json's add_bos_token is set (what encode() with
 * add_special_tokens does; chat templates write their own). */
int32_t  kimi_tokenizer_prompt_prefix(const kimi_tokenizer_t *tok);
/* id of a special token by its text ("<|im_end|>"), or -1 */
int32_t  kimi_tokenizer_special_id(const kimi_tokenizer_t *tok,
    const char *text);
int      kimi_tokenizer_is_special(const kimi_tokenizer_t *tok, int32_t id);
/* an added token (special or not): its bytes are its content as written */
int      kimi_tokenizer_is_added(const kimi_tokenizer_t *tok, int32_t id);

/* Encodes text.  allow_special: special-token strings in the text become
 * their ids (vLLM's behaviour for rendered prompts); otherwise they are
 * ordinary text.  *ids is malloc'ed. */
int  kimi_tokenize(const kimi_tokenizer_t *tok, const char *text, size_t len,
    int allow_special, int32_t **ids, size_t *n_ids, kimi_err_t *err);

/* A byte range of a text. */
typedef struct {
    size_t  off;
    size_t  len;
} kimi_span_t;

/* kimi_tokenize() where special-token names that overlap one of the
 * plain spans (sorted, disjoint; e.g. the message contents reported by
 * kimi_template_render_ex()) stay ordinary text even with allow_special:
 * users cannot forge turns, while the template's own markers stay
 * special.  The text is still split as one string, so ids equal
 * kimi_tokenize()'s whenever no name lies in a plain span. */
int  kimi_tokenize_ex(const kimi_tokenizer_t *tok, const char *text,
    size_t len, int allow_special, const kimi_span_t *plain, size_t n_plain,
    int32_t **ids, size_t *n_ids, kimi_err_t *err);

/* Bytes of one token (not NUL-terminated), or NULL for an invalid id. */
const char *kimi_token_bytes(const kimi_tokenizer_t *tok, int32_t id,
    size_t *len);

/* One token as Hugging Face's convert_ids_to_tokens spells it (vLLM's
 * return_token_strs) into out, which holds 3 * its bytes + 8: byte-level
 * BPE (tiktoken files, ByteLevel tokenizer.json) through GPT-2's
 * bytes_to_unicode (a space is "\u0120"); SentencePiece-style with U+2581
 * for a space and byte tokens as "<0x0A>"; added tokens as their content.
 * Returns its length, or 0 for an invalid id. */
size_t kimi_token_str(const kimi_tokenizer_t *tok, int32_t id, char *out);

/* Whole decode; *text is malloc'ed and NUL-terminated; invalid UTF-8
 * becomes U+FFFD as Hugging Face's decode does. */
int  kimi_detokenize(const kimi_tokenizer_t *tok, const int32_t *ids,
    size_t n_ids, int skip_special, char **text, size_t *len,
    kimi_err_t *err);

/* Incremental detokenizer: O(new tokens), never emits partial UTF-8. */
typedef struct kimi_detok  kimi_detok_t;

kimi_detok_t *kimi_detok_new(const kimi_tokenizer_t *tok, int skip_special);
void kimi_detok_free(kimi_detok_t *d);
/* Appends the text completed by this token to *out (at most *out_len on
 * return; pointer valid until the next call). */
int  kimi_detok_push(kimi_detok_t *d, int32_t id, const char **out,
    size_t *out_len);
/* End of stream: whatever bytes are held become U+FFFD. */
int  kimi_detok_flush(kimi_detok_t *d, const char **out, size_t *out_len);

/* ---- chat template --------------------------------------------------------- */

typedef struct kimi_template  kimi_template_t;

/* Reads DIR/chat_template.jinja, or the chat_template embedded in
 * DIR/tokenizer_config.json; chat_template (vLLM's --chat-template), when
 * not NULL, instead: a template in one line (it holds "{{" or "{%"), else
 * the path of a file holding one.  The special tokens it names come from
 * DIR/tokenizer_config.json either way.  A construct the renderer does not
 * support is an error naming it (a startup error for the caller). */
int  kimi_template_load(kimi_template_t **out, const char *model_dir,
    const char *chat_template, kimi_err_t *err);
void kimi_template_free(kimi_template_t *t);
/* vLLM's --chat-template-content-format: "auto" (what load detected: a
 * template that loops over message['content'] gets lists of parts,
 * "openai"; any other one strings, "string"), "string" or "openai".
 * Returns KIMI_EINVAL for another word. */
int  kimi_template_content_format(kimi_template_t *t, const char *format);

/* Renders an OpenAI chat request: messages (array), tools (array or NULL),
 * add_generation_prompt, after vLLM's preprocessing (string tool-call
 * arguments parsed to objects).  Invalid messages are KIMI_EINVAL with a
 * message fit for a 400.  *text is malloc'ed, NUL-terminated. */
int  kimi_template_render(const kimi_template_t *t, json_t *messages,
    json_t *tools, int add_generation_prompt, char **text, size_t *len,
    kimi_err_t *err);

/* kimi_template_render() that also reports the byte ranges of *text that
 * came from request data (message contents, names, ids, tool JSON), in
 * order and disjoint; *plain is malloc'ed (may be NULL when none).  Pass
 * them to kimi_tokenize_ex() so special-token names typed by users stay
 * text (the gateway's "no forged turns" mode). */
int  kimi_template_render_ex(const kimi_template_t *t, json_t *messages,
    json_t *tools, int add_generation_prompt, char **text, size_t *len,
    kimi_span_t **plain, size_t *n_plain, kimi_err_t *err);
/* kimi_template_render_ex() with vLLM's chat_template_kwargs (an object or
 * NULL): each key a variable the template may read, except messages,
 * tools, documents, add_generation_prompt, continue_final_message and the
 * special-token names. */
int  kimi_template_render_kw(const kimi_template_t *t, json_t *messages,
    json_t *tools, int add_generation_prompt, json_t *kwargs, char **text,
    size_t *len, kimi_span_t **plain, size_t *n_plain, kimi_err_t *err);

/* vLLM's continue_final_message on a rendering (add_generation_prompt
 * off): cuts *text (and the plain spans, may be NULL) right after the final
 * message's text, so the model continues it; KIMI_EINVAL when that text is
 * missing from the rendering. */
int  kimi_template_continue_final(json_t *messages, char *text, size_t *len,
    kimi_span_t *plain, size_t *n_plain, kimi_err_t *err);

/* Compiles a template from memory (name is used in error messages). */
int  kimi_template_load_string(kimi_template_t **out, const char *src,
    size_t len, const char *name, kimi_err_t *err);

/* ---- tool calls (vLLM's kimi_k2, deepseek_v3, deepseek_v31) --------------- */

typedef struct kimi_toolparse  kimi_toolparse_t;

typedef enum {
    KIMI_TOOL_FORMAT_KIMI_K2 = 0,
    KIMI_TOOL_FORMAT_DEEPSEEK_V3,
    KIMI_TOOL_FORMAT_DEEPSEEK_V31,
} kimi_tool_format_e;

/* vLLM's --tool-call-parser name -> format, or -1 */
int kimi_tool_format_by_name(const char *name);
/* The format a tokenizer's added tokens spell: deepseek_v3 where it has
 * "<｜tool▁calls▁begin｜>", else kimi_k2. */
int kimi_tool_format_of(const kimi_tokenizer_t *tok);

typedef enum {
    KIMI_TOOL_EV_CONTENT = 0,     /* text: ordinary content */
    KIMI_TOOL_EV_CALL_BEGIN,      /* index, id ("functions.NAME:IDX"; DeepSeek:
                                     "chatcmpl-tool-" + 32 hex), name */
    KIMI_TOOL_EV_ARGS,            /* text: argument JSON fragment */
    KIMI_TOOL_EV_CALL_END,        /* index */
} kimi_tool_ev_e;

typedef struct {
    kimi_tool_ev_e  type;
    uint32_t        index;        /* 0-based tool call index */
    const char     *text;         /* content or args fragment */
    size_t          len;
    const char     *id;           /* CALL_BEGIN: NUL-terminated */
    const char     *name;         /* CALL_BEGIN: NUL-terminated */
} kimi_tool_ev_t;

typedef void (*kimi_tool_ev_pt)(void *ctx, const kimi_tool_ev_t *ev);

/* One state machine for streaming and one-shot parsing: feed decoded text
 * as it arrives, then finish.  Marker text never leaks into CONTENT; a
 * malformed section falls back to content without markers.
 * CALL_BEGIN comes when the argument marker arrives (id complete); ARGS
 * fragments are the raw argument text, trimmed of surrounding whitespace
 * (never validated, as vLLM); a call cut off by the end of output is
 * closed by finish(); a call whose id is not "[^<]+:\d+" is dropped; text
 * after a section end is CONTENT again.  Event pointers are valid during
 * the callback only. */
kimi_toolparse_t *kimi_toolparse_new(kimi_tool_ev_pt cb, void *ctx);
kimi_toolparse_t *kimi_toolparse_new_format(kimi_tool_format_e format,
    kimi_tool_ev_pt cb, void *ctx);
void kimi_toolparse_free(kimi_toolparse_t *p);
int  kimi_toolparse_feed(kimi_toolparse_t *p, const char *text, size_t len);
int  kimi_toolparse_finish(kimi_toolparse_t *p);
uint32_t kimi_toolparse_n_calls(const kimi_toolparse_t *p);

#endif
