/*
 * The contract between nginx workers (ngx_http_kimi_module) and kimi-engine
 * ranks: one shared-memory segment plus one Unix stream socket per
 * (worker, rank) pair used as doorbell and liveness signal.
 *
 * Owns:   the segment layout, the slot state machine, the SPSC rings and
 *         the doorbell coalescing rule.  Compiled into both sides.
 * Never:  blocks, sleeps, allocates after create/attach, or knows what a
 *         token id means.  No lock crosses the process boundary: a peer
 *         that dies at any instruction leaves state the other side can
 *         reclaim.
 * Holds:  ring heads and tails only grow (u32, wrapping); a consumer sees
 *         an entry only after the producer's release store of head.  Every
 *         index and length read from the peer is bounds-checked by the
 *         reader before use (kimi_shm_* helpers do it).
 *
 * Files (all inside the engine's --ipc-dir, created 0600 or 0660):
 *
 *   DIR/segment        the mapping; written to DIR/segment.tmp and renamed
 *                      into place once initialised, so an attacher never
 *                      sees a half-built segment.  An engine restart renames
 *                      a new one over it: old mappings stay valid memory.
 *   DIR/rank<R>.sock   rank R's listening socket.  A worker connects, sends
 *                      one kimi_shm_hello_t, and from then on each side
 *                      writes a single byte to ring the other's doorbell.
 *                      EOF means the peer died: the engine reclaims the
 *                      worker's slots, the worker fails its open requests.
 *
 * Slot life (state word, CAS by whichever side moves it):
 *
 *   FREE --worker acquire--> OWNED --worker fills, pushes--> SUBMITTED
 *   SUBMITTED --engine--> ACCEPTED | REJECTED (status + message in slot)
 *   ACCEPTED --engine, after the last token--> DONE (finish + usage)
 *   worker release: OWNED|DONE|REJECTED -> FREE;
 *                   SUBMITTED|ACCEPTED -> ABANDONED (then rings the rank)
 *   engine: ABANDONED -> FREE once it dropped the sequence (cancel).
 *
 * Events: the engine tells a worker "look at slot S" by pushing S on the
 * (worker, rank) event ring, guarded by the slot's notify_pending flag
 * (exchange 0 -> 1 before pushing), so a slot is on a ring at most once
 * and a ring of n_slots entries never overflows.  The worker clears
 * notify_pending before reading the slot (state, tokens, result).
 *
 * Doorbell coalescing (both directions): the producer pushes, then does
 * atomic_exchange(&wake_pending, 1); only if the old value was 0 does it
 * write one byte to the socket.  The consumer reads the socket, stores
 * wake_pending = 0, then drains its rings completely.
 */

#ifndef KIMI_SHM_H
#define KIMI_SHM_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/kimi_err.h"

#define KIMI_SHM_MAGIC           0x4d48534d494d494bULL  /* "KIMIMSHM" */
#define KIMI_SHM_ABI_VERSION     10     /* 9: slot.cache_salt; 10: slot.n_bad_words */

#define KIMI_SHM_MAX_RANKS       8      /* DP ranks served by one segment */
#define KIMI_SHM_MAX_WORKERS     128    /* nginx workers, two generations */
#define KIMI_SHM_NAME_LEN        128
#define KIMI_SHM_MSG_LEN         256
#define KIMI_SHM_REQUEST_ID_LEN  64
#define KIMI_SHM_MAX_STOP_IDS    32
#define KIMI_SHM_MAX_TOP_LOGPROBS 20
#define KIMI_SHM_MAX_LOGIT_BIAS  300      /* OpenAI's own limit */
#define KIMI_SHM_TOKEN_RING      64     /* entries per slot; power of two */
#define KIMI_SHM_CACHE_LINE      64

/* header.state and rank.state */
typedef enum {
    KIMI_SHM_STATE_STARTING = 0,   /* loading the model; not admitting */
    KIMI_SHM_STATE_READY = 1,
    KIMI_SHM_STATE_DRAINING = 2,   /* SIGTERM: in-flight finish, new 503 */
    KIMI_SHM_STATE_STOPPED = 3,
} kimi_shm_state_e;

/* slot.state */
typedef enum {
    KIMI_SLOT_FREE = 0,
    KIMI_SLOT_OWNED = 1,
    KIMI_SLOT_SUBMITTED = 2,
    KIMI_SLOT_ACCEPTED = 3,
    KIMI_SLOT_REJECTED = 4,
    KIMI_SLOT_DONE = 5,
    KIMI_SLOT_ABANDONED = 6,
} kimi_slot_state_e;

/* slot.finish_reason, written by the engine before DONE */
typedef enum {
    KIMI_FINISH_NONE = 0,
    KIMI_FINISH_STOP = 1,          /* eos or a stop token id */
    KIMI_FINISH_LENGTH = 2,        /* max_tokens or max_model_len */
    KIMI_FINISH_CANCELLED = 3,     /* abandoned by the worker */
    KIMI_FINISH_ERROR = 4,         /* engine error; message in slot */
    KIMI_FINISH_ABORT = 5,         /* drain timeout or shutdown */
} kimi_finish_e;

/* slot.kind: what the worker asked for */
typedef enum {
    KIMI_REQ_GENERATE = 0,
} kimi_req_kind_e;

/* One logit_bias entry: added to the token's logit before penalties. */
typedef struct {
    int32_t   token;
    float     bias;                /* [-100, 100] */
} kimi_shm_logit_bias_t;

/* Sampling parameters, as the OpenAI/vLLM request gave them. */
typedef struct {
    float     temperature;         /* 0 = greedy */
    float     top_p;               /* 1 = off */
    float     min_p;               /* 0 = off */
    float     presence_penalty;    /* 0 = off */
    float     frequency_penalty;   /* 0 = off */
    float     repetition_penalty;  /* 1 = off */
    int32_t   top_k;               /* 0 or -1 = off */
    uint32_t  max_tokens;          /* >= 1 */
    uint32_t  min_tokens;          /* eos/stop ids ignored before this */
    uint32_t  n_stop_ids;          /* <= KIMI_SHM_MAX_STOP_IDS */
    int32_t   stop_ids[KIMI_SHM_MAX_STOP_IDS];
    uint64_t  seed;                /* valid when has_seed */
    uint8_t   has_seed;
    uint8_t   ignore_eos;
    uint8_t   logprobs;            /* return the sampled token's logprob */
    uint8_t   top_logprobs;        /* 0..KIMI_SHM_MAX_TOP_LOGPROBS */
    uint16_t  n_logit_bias;        /* <= KIMI_SHM_MAX_LOGIT_BIAS */
    uint8_t   allowed_only;        /* vLLM's allowed_token_ids: only the
                                      logit_bias ids can be drawn */
    uint8_t   json_object;         /* response_format json_object: the
                                      output is one JSON object */
    uint8_t   prompt_logprobs;     /* 0: none; 1 + n: the engine first
                                      publishes one entry per prompt token
                                      after the first (its raw logprob and
                                      rank given the tokens before it, and
                                      the n most likely there), then the
                                      generated tokens */
    uint8_t   json_no_ws;          /* vLLM's disable_any_whitespace: JSON
                                      output without whitespace outside
                                      strings */
    uint8_t   pad1[6];
    kimi_shm_logit_bias_t  logit_bias[KIMI_SHM_MAX_LOGIT_BIAS];
} kimi_shm_sampling_t;

_Static_assert(sizeof(kimi_shm_sampling_t) == 2592, "sampling layout");

/* One generated token (or prompt token, see sampling.prompt_logprobs) as
 * the engine publishes it. */
typedef struct {
    int32_t   token;
    float     logprob;             /* valid if sampling.logprobs (prompt
                                      entries: always) */
    uint32_t  n_top;               /* top entries valid */
    uint32_t  rank;                /* prompt entries: the token's rank at
                                      its position, 1 = most likely */
    int32_t   top_ids[KIMI_SHM_MAX_TOP_LOGPROBS];
    float     top_logprobs[KIMI_SHM_MAX_TOP_LOGPROBS];
} kimi_shm_token_t;

_Static_assert(sizeof(kimi_shm_token_t) == 176, "token entry layout");

/*
 * One request.  Fields are grouped by writer: the worker writes the
 * "request" part while it owns the slot (OWNED), the engine writes the
 * "result" part while it holds it (SUBMITTED..DONE).
 */
typedef struct {
    /* state machine word and identity, both sides */
    _Atomic uint32_t     state;            /* kimi_slot_state_e */
    uint32_t             generation;       /* ++ on every acquire (worker) */
    _Atomic uint32_t     notify_pending;   /* slot queued on an event ring */
    uint32_t             pad0;

    /* request, written by the worker while OWNED */
    int32_t              owner_pid;
    uint32_t             owner_worker;     /* index into workers[] */
    uint32_t             rank;             /* target DP rank */
    uint32_t             kind;             /* kimi_req_kind_e */
    uint32_t             n_prompt_tokens;  /* <= header.slot_prompt_capacity */
    uint32_t             n_guided;         /* int32 words after the prompt
                                              in the slot's prompt area (0:
                                              none): vLLM's guided_choice
                                              (n, then each choice's token
                                              count and ids), or
                                              KIMI_SCHEMA_TAG and a JSON
                                              schema program
                                              (text/json_schema.h) */
    uint32_t             n_bad_words;      /* int32 words after those:
                                              vLLM's bad_words (n, then each
                                              word's token count and ids) */
    uint32_t             pad1;
    uint64_t             submit_ns;        /* CLOCK_MONOTONIC */
    uint64_t             cache_salt;       /* vLLM's cache_salt, hashed (0:
                                              none): prefix-cache hits only
                                              between requests of one salt */
    char                 request_id[KIMI_SHM_REQUEST_ID_LEN];
    kimi_shm_sampling_t  sampling;

    /* result, written by the engine */
    uint32_t             reject_status;    /* HTTP status when REJECTED */
    uint32_t             finish_reason;    /* kimi_finish_e, before DONE */
    uint32_t             n_prompt_cached;  /* prefix-cache hits (usage) */
    uint32_t             n_output_tokens;  /* tokens pushed in total */
    uint64_t             queue_ns;         /* submit -> first scheduled */
    uint64_t             first_token_ns;   /* CLOCK_MONOTONIC, 0 if none */
    char                 message[KIMI_SHM_MSG_LEN]; /* reject/error text */

    /* token ring, engine -> worker (SPSC) */
    _Atomic uint32_t     tok_head;         /* engine: entries published */
    uint32_t             pad2[15];         /* head and tail on own lines */
    _Atomic uint32_t     tok_tail;         /* worker: entries consumed */
    uint32_t             pad3[15];
    kimi_shm_token_t     tokens[KIMI_SHM_TOKEN_RING];
} kimi_shm_slot_t;

/* u32 SPSC ring of (slot index | generation << 16)-free entries: the ring
 * carries slot indices; the reader checks generation against the slot. */
typedef struct {
    _Atomic uint32_t     head;             /* producer */
    uint32_t             pad0[15];
    _Atomic uint32_t     tail;             /* consumer */
    uint32_t             pad1[15];
    /* followed by header.ring_capacity uint32_t entries (offset below) */
} kimi_shm_ring_t;

_Static_assert(sizeof(kimi_shm_ring_t) == 128, "ring head/tail lines");

/* Ring entry: slot index in the low 20 bits, generation low 12 bits above. */
#define KIMI_SHM_ENTRY(slot, gen)   (((uint32_t) (gen) << 20) | (slot))
#define KIMI_SHM_ENTRY_SLOT(e)      ((e) & 0xfffff)
#define KIMI_SHM_ENTRY_GEN(e)       ((e) >> 20)
#define KIMI_SHM_GEN_MASK           0xfff

/* One nginx worker's registration.  Claimed by CAS on pid (0 -> pid). */
typedef struct {
    _Atomic int32_t      pid;              /* 0 = free */
    uint32_t             incarnation;      /* ++ on every claim */
    _Atomic uint32_t     wake_pending;     /* rank -> worker doorbell */
    uint32_t             pad0[13];
    /* rings live at header.off_rings, indexed (worker, rank, dir) */
} kimi_shm_worker_t;

_Static_assert(sizeof(kimi_shm_worker_t) == 64, "worker record line");

/* One engine rank's published state and load. */
typedef struct {
    _Atomic int32_t      pid;              /* 0 = rank not up */
    _Atomic uint32_t     state;            /* kimi_shm_state_e */
    _Atomic uint64_t     heartbeat_ns;     /* CLOCK_MONOTONIC, ~100 ms */
    _Atomic uint32_t     wake_pending;     /* worker -> rank doorbell */
    _Atomic uint32_t     num_running;
    _Atomic uint32_t     num_waiting;
    _Atomic uint32_t     kv_blocks_used;
    uint32_t             kv_blocks_total;
    _Atomic uint32_t     num_preemptions;
    _Atomic uint64_t     prompt_tokens_total;
    _Atomic uint64_t     generation_tokens_total;
    uint32_t             pad0[2];
} kimi_shm_rank_t;

_Static_assert(sizeof(kimi_shm_rank_t) == 64, "rank record line");

/*
 * Segment header, then (each region aligned to 4096):
 *   ranks[n_ranks]                          kimi_shm_rank_t
 *   workers[KIMI_SHM_MAX_WORKERS]           kimi_shm_worker_t
 *   rings[KIMI_SHM_MAX_WORKERS][n_ranks][2] kimi_shm_ring_t + entries
 *       dir 0: submissions, worker -> rank; dir 1: events, rank -> worker
 *   slots[n_slots]                          kimi_shm_slot_t
 *   prompts[n_slots][slot_prompt_capacity]  int32_t token ids
 */
typedef struct {
    uint64_t             magic;            /* KIMI_SHM_MAGIC */
    uint32_t             abi_version;      /* KIMI_SHM_ABI_VERSION */
    uint32_t             header_size;      /* sizeof(kimi_shm_header_t) */
    uint64_t             segment_size;     /* bytes mapped */
    uint64_t             epoch;            /* random per engine start */
    _Atomic uint32_t     state;            /* kimi_shm_state_e, overall */
    int32_t              engine_pid;       /* rank 0 / launcher */
    uint64_t             created_ns;       /* CLOCK_REALTIME */

    /* geometry */
    uint32_t             n_ranks;
    uint32_t             n_slots;          /* <= 1 << 20 */
    uint32_t             slot_prompt_capacity;  /* tokens per slot */
    uint32_t             ring_capacity;    /* entries; power of two */
    uint64_t             off_ranks;
    uint64_t             off_workers;
    uint64_t             off_rings;
    uint64_t             ring_stride;      /* bytes per ring incl. entries */
    uint64_t             off_slots;
    uint64_t             off_prompts;

    /* model facts the gateway needs before submitting */
    char                 served_model_name[KIMI_SHM_NAME_LEN];
    char                 model_dir[512];   /* tokenizer + template live here */
    uint32_t             max_model_len;    /* prompt + max_tokens limit */
    uint32_t             vocab_size;
    uint32_t             max_num_seqs;
    uint32_t             max_waiting;      /* queue limit per rank */
    uint64_t             model_created;    /* unix seconds, /v1/models */
    _Atomic uint32_t     slot_cursor;      /* where the next acquire scan
                                              starts (workers, relaxed) */
    uint32_t             pad0[15];
} kimi_shm_header_t;

_Static_assert(sizeof(kimi_shm_header_t) % 8 == 0, "header alignment");

/* First message on a worker's connection to a rank socket. */
typedef struct {
    uint64_t             magic;            /* KIMI_SHM_MAGIC */
    uint64_t             epoch;            /* must equal header.epoch */
    uint32_t             abi_version;
    uint32_t             worker_index;     /* the record the worker claimed */
    int32_t              pid;              /* checked against SO_PEERCRED */
    uint32_t             incarnation;
} kimi_shm_hello_t;

_Static_assert(sizeof(kimi_shm_hello_t) == 32, "hello layout");


/* ---- mapping ---------------------------------------------------------- */

typedef struct {
    uint32_t  n_ranks;
    uint32_t  n_slots;
    uint32_t  slot_prompt_capacity;
    uint32_t  max_model_len;
    uint32_t  vocab_size;
    uint32_t  max_num_seqs;
    uint32_t  max_waiting;
    uint32_t  mode;                 /* file mode: 0600 (default) or 0660 */
    const char *served_model_name;
    const char *model_dir;
} kimi_shm_params_t;

/* A process's view of one mapped segment. */
typedef struct {
    kimi_shm_header_t   *hdr;
    size_t               size;
    uint64_t             epoch;
    uint64_t             inode;     /* to notice a segment renamed over ours */

    /* Private copies of the geometry, validated at create/attach: every
     * accessor checks indices against these, never against the header a
     * corrupt peer could rewrite after we validated it. */
    uint64_t             dev;
    uint32_t             n_ranks;
    uint32_t             n_slots;
    uint32_t             slot_prompt_capacity;
    uint32_t             ring_capacity;
    uint64_t             off_ranks;
    uint64_t             off_workers;
    uint64_t             off_rings;
    uint64_t             ring_stride;
    uint64_t             off_slots;
    uint64_t             off_prompts;

    /* creator only: DIR/engine.lock, held (flock) while the segment is
     * ours, so a second engine on the same DIR is refused, not raced */
    int                  lock_fd;
    uint32_t             has_lock;
} kimi_shm_t;

/* Engine: builds DIR/segment.tmp, initialises, renames to DIR/segment.
 * DIR is created 0700 (0770 when mode is 0660) if missing.  Holds an
 * exclusive flock on DIR/engine.lock until detach (the kernel drops it if
 * the engine dies): a second live engine on DIR gets KIMI_ESTATE. */
int kimi_shm_create(kimi_shm_t *shm, const char *dir,
    const kimi_shm_params_t *params, kimi_err_t *err);

/* Both sides: maps DIR/segment and validates magic, ABI, geometry and
 * every offset against the file size.  A mismatch is KIMI_ESTATE with a
 * message naming what differs. */
int kimi_shm_attach(kimi_shm_t *shm, const char *dir, kimi_err_t *err);

/* 1 if DIR/segment is now a different file than the one mapped. */
int kimi_shm_replaced(const kimi_shm_t *shm, const char *dir);

void kimi_shm_detach(kimi_shm_t *shm);

/* Path helpers; return -1 if the result would not fit in len. */
int kimi_shm_segment_path(char *buf, size_t len, const char *dir);
int kimi_shm_socket_path(char *buf, size_t len, const char *dir,
    uint32_t rank);


/* ---- accessors (bounds-checked; NULL on a bad index) ------------------- */

kimi_shm_rank_t   *kimi_shm_rank(const kimi_shm_t *shm, uint32_t rank);
kimi_shm_worker_t *kimi_shm_worker(const kimi_shm_t *shm, uint32_t worker);
kimi_shm_slot_t   *kimi_shm_slot(const kimi_shm_t *shm, uint32_t slot);
int32_t           *kimi_shm_prompt(const kimi_shm_t *shm, uint32_t slot);

/* dir: KIMI_SHM_RING_SUBMIT (worker -> rank) or KIMI_SHM_RING_EVENT */
#define KIMI_SHM_RING_SUBMIT  0
#define KIMI_SHM_RING_EVENT   1
kimi_shm_ring_t   *kimi_shm_ring(const kimi_shm_t *shm, uint32_t worker,
    uint32_t rank, int dir);


/* ---- rings (SPSC, u32 entries) ------------------------------------------ */

/* Producer side.  Returns 0, or KIMI_EFULL (capacity never smaller than
 * n_slots, so a correct peer never sees it). */
int kimi_shm_ring_push(const kimi_shm_t *shm, kimi_shm_ring_t *ring,
    uint32_t entry);

/* Consumer side.  Returns 1 and *entry, 0 when empty, KIMI_ESTATE when the
 * peer's head is out of range (corrupt peer: caller drops the peer). */
int kimi_shm_ring_pop(const kimi_shm_t *shm, kimi_shm_ring_t *ring,
    uint32_t *entry);


/* ---- slots --------------------------------------------------------------- */

/* Worker: CAS a FREE slot to OWNED, bump its generation, stamp owner.
 * Returns the slot index or -1 when all slots are busy. */
int32_t kimi_shm_slot_acquire(const kimi_shm_t *shm, uint32_t worker,
    int32_t pid);

/* Worker: give a slot back at the end of a request, whatever its state
 * (see the state machine above).  Returns 1 if the engine still holds it
 * (now ABANDONED; ring the rank's doorbell), 0 if it is FREE now. */
int kimi_shm_slot_release(const kimi_shm_t *shm, uint32_t slot);

/* CAS helper for either side: 1 if state moved from -> to. */
int kimi_shm_slot_cas(kimi_shm_slot_t *s, uint32_t from, uint32_t to);

/* Worker: claims a worker record (CAS pid 0 -> pid), bumping incarnation
 * and clearing wake_pending.  Returns the index, or -1 when all records
 * are taken.  A record whose pid no longer exists (kill(pid, 0) fails with
 * ESRCH) is taken over: the engine frees records on socket EOF, so this
 * only matters for a worker that died while no engine was running. */
int32_t kimi_shm_worker_claim(const kimi_shm_t *shm, int32_t pid);

/* Worker: gives the record back (pid -> 0) at worker exit. */
void kimi_shm_worker_release(const kimi_shm_t *shm, uint32_t worker,
    int32_t pid);


/* ---- token ring (per slot, engine -> worker) ----------------------------- */

/* Engine: free entries in the slot's ring (0 when full: the sequence pauses,
 * which is how a slow client applies backpressure to its own sequence). */
uint32_t kimi_shm_tok_space(const kimi_shm_slot_t *s);
void     kimi_shm_tok_push(kimi_shm_slot_t *s, const kimi_shm_token_t *tok);

/* Worker: tokens available, bounded by KIMI_SHM_TOKEN_RING (a larger value
 * means a corrupt peer and is returned as KIMI_ESTATE). */
int      kimi_shm_tok_available(const kimi_shm_slot_t *s);
const kimi_shm_token_t *kimi_shm_tok_peek(const kimi_shm_slot_t *s,
    uint32_t i);
void     kimi_shm_tok_consume(kimi_shm_slot_t *s, uint32_t n);


/* ---- doorbells ----------------------------------------------------------- */

/* Producer: returns 1 if the caller must write one byte to the peer's
 * socket (wake_pending went 0 -> 1), 0 if a wakeup is already pending. */
int  kimi_shm_doorbell_arm(_Atomic uint32_t *wake_pending);

/* Consumer: call after reading the socket, before draining the rings. */
void kimi_shm_doorbell_clear(_Atomic uint32_t *wake_pending);


/* ---- time ------------------------------------------------------------------ */

uint64_t kimi_shm_now_ns(void);    /* CLOCK_MONOTONIC */

#endif
