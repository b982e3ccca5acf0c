/*
 * kimi-engine subcommands.  main.c dispatches `kimi-engine NAME ...` to the
 * entry below; a first argument starting with '-' means `serve`.
 *
 * Owns:   the list of subcommands (one line each; add yours here).
 * Never:  holds logic: each command lives in its own cmd_*.c file.
 */

#ifndef KIMI_COMMANDS_H
#define KIMI_COMMANDS_H

typedef int (*kimi_cmd_pt)(int argc, char **argv);   /* returns exit code */

typedef struct {
    const char   *name;
    kimi_cmd_pt   run;
    const char   *help;          /* one line for `kimi-engine help` */
} kimi_cmd_t;

int kimi_cmd_serve(int argc, char **argv);            /* cmd_serve.c */
int kimi_cmd_status(int argc, char **argv);           /* cmd_status.c */
int kimi_cmd_gen_tiny_model(int argc, char **argv);   /* cmd_model.c */
int kimi_cmd_score(int argc, char **argv);            /* cmd_model.c */
int kimi_cmd_generate(int argc, char **argv);         /* cmd_model.c */
int kimi_cmd_model_info(int argc, char **argv);       /* cmd_model.c */
int kimi_cmd_tokenize(int argc, char **argv);         /* cmd_text.c */
int kimi_cmd_detokenize(int argc, char **argv);       /* cmd_text.c */
int kimi_cmd_render(int argc, char **argv);           /* cmd_text.c */
int kimi_cmd_parse_tools(int argc, char **argv);      /* cmd_text.c */

/* KIMI_COMMANDS expands to the table rows; main.c defines the table. */
#define KIMI_COMMANDS                                                         \
    { "serve", kimi_cmd_serve,                                                \
      "run the engine: attach backends, serve nginx workers over shm" },     \
    { "status", kimi_cmd_status,                                              \
      "a running engine's state, load and slots, read from its segment" },    \
    { "gen-tiny-model", kimi_cmd_gen_tiny_model,                              \
      "write the tiny Kimi-K2 model (random weights, real tokenizer)" },     \
    { "score", kimi_cmd_score,                                                \
      "logits of every position of a token list (cpu backend)" },            \
    { "generate", kimi_cmd_generate,                                          \
      "chat template + decode one prompt on the cpu backend, no nginx" },    \
    { "model-info", kimi_cmd_model_info,                                      \
      "load a model directory, print its config and load/read time" },     \
    { "tokenize", kimi_cmd_tokenize,                                          \
      "prompt or chat request on stdin -> token ids (JSON)" },               \
    { "detokenize", kimi_cmd_detokenize,                                      \
      "token ids on stdin -> text (JSON)" },                                 \
    { "render", kimi_cmd_render,                                              \
      "chat request on stdin -> the prompt the chat template renders" },     \
    { "parse-tools", kimi_cmd_parse_tools,                                    \
      "model output on stdin -> content and OpenAI tool_calls (JSON)" },

#endif
