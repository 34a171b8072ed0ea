/* engram.h: the C API, for engines that link engram without its C++ types.
 *
 * One store (the table of record on disk), one runtime per serving engine: the host tier, the prefetcher
 * and, on a GPU, the working set that puts each step's rows in device memory before the layer that reads
 * them runs. Sequences, steps and statistics go through the runtime.
 *
 *   engram_store* store;
 *   engram_runtime* rt;
 *   engram_runtime_options o;
 *   engram_store_open("/nvme/v41", NULL, &store);
 *   engram_runtime_options_init(&o);           every field has a documented default
 *   o.resident = ENGRAM_RESIDENT_ALL;          the whole table in pinned host memory
 *   engram_runtime_create(store, &o, &rt);
 *   engram_sequence_create(rt, &seq);
 *   engram_step_submit(rt, batch, n, &step);   new tokens of each sequence (compressed ids)
 *   for each Engram layer l:
 *     engram_step_wait_stream(rt, step, l, compute_stream);    GPU: the stream waits, the host does not
 *     engram_step_output(rt, step, l, &out);                   out.rows / out.bf16 (device pointers)
 *     ... kernels reading out.bf16 on compute_stream ...
 *     engram_step_done_stream(rt, step, l, compute_stream);    the output may be reused after these reads
 *   engram_step_finish(rt, step);
 *
 * On the CPU backend, engram_step_wait blocks until the layer's rows are in host memory and
 * engram_step_output gives host pointers (out.memory says which).
 *
 * Errors: every call that can fail returns an engram_status (ENGRAM_OK = 0); the message of the calling
 * thread's last failure, naming the file, field, sequence, row or layer at fault, is engram_last_error().
 * No C++ exception crosses this interface. Objects are not copied: a store must outlive its runtimes, a
 * runtime its steps' output pointers (valid until engram_step_finish).
 *
 * Threads: every function may be called from any thread; a runtime serialises what needs it.
 * Blocking: engram_store_open, engram_runtime_create (it loads resident regions), engram_step_wait,
 * engram_step_finish on the CPU backend, and engram_runtime_destroy block; the *_stream calls never
 * block the host.
 *
 * ABI: options and output structs start with struct_size (set by their _init function, or to sizeof):
 * a caller built against an older, shorter struct keeps working. ENGRAM_C_API_VERSION grows when
 * functions or fields are added; nothing is removed or reordered within a major version.
 */
#ifndef ENGRAM_ENGRAM_H_
#define ENGRAM_ENGRAM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// NOLINTBEGIN(modernize-use-using): a C header

#if defined(__GNUC__) || defined(__clang__)
#define ENGRAM_API __attribute__((visibility("default")))
#define ENGRAM_MUST_USE __attribute__((warn_unused_result))
#else
#define ENGRAM_API
#define ENGRAM_MUST_USE
#endif

#define ENGRAM_C_API_VERSION 1

/* Status codes (the same values and names as engram::StatusCode). */
typedef enum engram_status {
  ENGRAM_OK = 0,
  ENGRAM_INVALID_ARGUMENT = 1,     /* bad input: a value, a file's content, an option */
  ENGRAM_NOT_FOUND = 2,            /* a named thing (file, layer, sequence, step) does not exist */
  ENGRAM_OUT_OF_RANGE = 3,         /* an id or count beyond what the object holds; a buffer too small */
  ENGRAM_CORRUPTION = 4,           /* stored data fails a check (never served) */
  ENGRAM_IO_ERROR = 5,             /* the operating system refused or failed an I/O call */
  ENGRAM_RESOURCE_EXHAUSTED = 6,   /* a budget would be exceeded (host, pinned or GPU memory) */
  ENGRAM_FAILED_PRECONDITION = 7,  /* not allowed in this state (e.g. a stream wait on the CPU backend) */
  ENGRAM_UNAVAILABLE = 8,          /* a feature is missing on this machine (no GPU, no io_uring) */
  ENGRAM_INTERNAL = 9,             /* a broken invariant: a bug in engram */
  ENGRAM_DEADLINE_EXCEEDED = 10    /* a wait ran past its deadline */
} engram_status;

/* ENGRAM_C_API_VERSION of the library loaded (may be newer than the header compiled against). */
ENGRAM_API uint32_t engram_api_version(void);
/* The library's version, "0.1.0". */
ENGRAM_API const char* engram_version_string(void);
/* The stable lower-case name of a status ("invalid_argument"); "unknown" for other values. */
ENGRAM_API const char* engram_status_name(engram_status status);
/* The message of the calling thread's last failed call ("" if none yet): valid until this thread's next
 * engram call. */
ENGRAM_API const char* engram_last_error(void);

/* ---- Store ---------------------------------------------------------------------------------------- */

typedef struct engram_store engram_store;

typedef enum engram_io_mode {
  ENGRAM_IO_URING = 0, /* io_uring; a kernel that refuses it fails engram_store_open (ENGRAM_UNAVAILABLE) */
  ENGRAM_IO_POSIX = 1  /* pread, chosen explicitly */
} engram_io_mode;

typedef enum engram_read_path {
  ENGRAM_READ_MULTIGET = 0,     /* RocksDB MultiGet through engram's io_uring file system */
  ENGRAM_READ_DIRECT_BLOCKS = 1 /* O_DIRECT block reads with every block checked (docs/store.md) */
} engram_read_path;

typedef struct engram_store_options {
  uint32_t struct_size;      /* sizeof(engram_store_options) */
  engram_io_mode io;         /* Default: ENGRAM_IO_URING */
  engram_read_path read_path; /* Default: ENGRAM_READ_MULTIGET */
  uint32_t read_threads;     /* threads that run one read's MultiGets. Default: 8 */
  uint64_t block_cache_bytes; /* RocksDB block cache; 0: none (the host tier caches rows). Default: 0 */
} engram_store_options;

ENGRAM_API void engram_store_options_init(engram_store_options* options);
/* Opens the store in `dir`. `options` may be NULL (defaults). */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_store_open(const char* dir, const engram_store_options* options,
                                                           engram_store** out);
/* Closes a store (NULL is ignored). Every runtime created on it must be destroyed first. */
ENGRAM_API void engram_store_close(engram_store* store);

typedef enum engram_row_format {
  ENGRAM_ROW_FP8_E4M3_E8M0 = 0, /* dim E4M3 codes, then dim/32 E8M0 scales (DeepSeek-V4.1: 264 B) */
  ENGRAM_ROW_F32 = 1,
  ENGRAM_ROW_BF16 = 2,
  ENGRAM_ROW_F16 = 3
} engram_row_format;

typedef struct engram_store_info {
  uint32_t struct_size;             /* sizeof(engram_store_info) */
  int32_t num_layers;               /* Engram layers in the table */
  int32_t columns;                  /* rows per token and layer: (max_ngram - 1) x heads */
  int32_t max_ngram;
  uint32_t row_bytes;
  uint32_t dim;                     /* values per row */
  engram_row_format row_format;
  int64_t compressed_vocab_size;    /* V': compressed ids are in [0, V') */
  int64_t tokenizer_vocab_size;     /* raw ids the stored token map covers; 0 if the store has none */
  uint64_t latest_version;          /* 0 if the store holds no version */
} engram_store_info;

ENGRAM_API ENGRAM_MUST_USE engram_status engram_store_get_info(const engram_store* store, engram_store_info* out);
/* The model layer number of Engram layer `layer_index` (0 .. num_layers - 1). */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_store_layer_id(const engram_store* store, int32_t layer_index,
                                                               int32_t* out);
/* Tokenizer ids -> compressed ids with the store's token map. An id the map does not define is an error
 * naming its position; nothing is promised about `out` then. */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_store_compress_tokens(const engram_store* store, const int32_t* raw,
                                                                      size_t n, int32_t* out);

/* ---- Runtime ---------------------------------------------------------------------------------------- */

typedef struct engram_runtime engram_runtime;

typedef enum engram_backend {
  ENGRAM_BACKEND_AUTO = 0, /* GPU when this library has the GPU module and a GPU is usable, else CPU (logged) */
  ENGRAM_BACKEND_CPU = 1,  /* rows staged in host memory; waits block the host */
  ENGRAM_BACKEND_GPU = 2   /* rows in device memory; waits are stream operations (ENGRAM_UNAVAILABLE without) */
} engram_backend;

typedef enum engram_resident {
  ENGRAM_RESIDENT_NONE = 0, /* rows come from the store through the host cache */
  ENGRAM_RESIDENT_ALL = 1   /* every region held whole in pinned host memory, loaded at create */
} engram_resident;

typedef enum engram_miss_path {
  ENGRAM_MISS_AUTO = 0,      /* measured at create; see docs/gpu.md */
  ENGRAM_MISS_STAGED = 1,    /* host gather into pinned staging, one copy per layer */
  ENGRAM_MISS_ZERO_COPY = 2, /* kernels read resident host rows through mapped memory */
  ENGRAM_MISS_DEVICE = 3     /* the whole step on the device (every region resident) */
} engram_miss_path;

typedef struct engram_runtime_options {
  uint32_t struct_size;         /* sizeof(engram_runtime_options) */
  engram_backend backend;       /* Default: ENGRAM_BACKEND_AUTO */
  uint64_t version;             /* store version to serve, pinned for the runtime's life; 0: the latest. Default: 0 */
  engram_resident resident;     /* Default: ENGRAM_RESIDENT_NONE */
  uint64_t host_cache_bytes;    /* host row cache for rows not resident. Default: 0 */
  uint64_t host_budget_bytes;   /* every byte of the host tier; a tier over it is refused before allocating;
                                   0: no limit. Default: 0 */
  uint32_t gather_threads;      /* threads that gather rows into staging. Default: 4 */
  uint64_t staging_bytes;       /* CPU backend: host staging for the steps in flight. Default: 256 MiB */
  int32_t bf16_output;          /* non-zero: also BF16 [T, columns x dim] for FP8 rows. Default: 1 */
  /* GPU backend (ignored on the CPU backend). The calling thread's current CUDA device is used. */
  uint64_t hbm_cache_bytes;     /* HBM row cache. Default: 1 GiB */
  uint64_t device_budget_bytes; /* every byte engram allocates on the GPU; 0: the card. Default: 0 */
  int64_t max_tokens;           /* most tokens in one step. Default: 16384 */
  uint32_t steps_in_flight;     /* output slots (double buffering). Default: 2 */
  engram_miss_path miss_path;   /* Default: ENGRAM_MISS_AUTO */
} engram_runtime_options;

ENGRAM_API void engram_runtime_options_init(engram_runtime_options* options);
/* Creates a runtime serving `store` (which must outlive it). `options` may be NULL (defaults). Blocks
 * while resident regions load. Over a budget: ENGRAM_RESOURCE_EXHAUSTED before anything is allocated. */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_runtime_create(engram_store* store,
                                                               const engram_runtime_options* options,
                                                               engram_runtime** out);
/* Finishes the steps in flight, then frees everything (NULL is ignored). On the GPU backend every
 * stream wait must have had its done, or the device work it guards never ends. */
ENGRAM_API void engram_runtime_destroy(engram_runtime* runtime);
/* ENGRAM_BACKEND_CPU or ENGRAM_BACKEND_GPU: what the runtime runs on (ENGRAM_BACKEND_AUTO for NULL). */
ENGRAM_API engram_backend engram_runtime_backend(const engram_runtime* runtime);

/* ---- Sequences ----------------------------------------------------------------------------------------- */

ENGRAM_API ENGRAM_MUST_USE engram_status engram_sequence_create(engram_runtime* runtime, uint64_t* out);
/* A new sequence with a copy of `parent`'s history (beam search, speculative branches). */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_sequence_fork(engram_runtime* runtime, uint64_t parent, uint64_t* out);
/* Removes the last `tokens` tokens (ENGRAM_OUT_OF_RANGE past the start or the retained history). */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_sequence_rollback(engram_runtime* runtime, uint64_t sequence,
                                                                  int64_t tokens);
ENGRAM_API ENGRAM_MUST_USE engram_status engram_sequence_release(engram_runtime* runtime, uint64_t sequence);

/* ---- Steps ------------------------------------------------------------------------------------------- */

typedef struct engram_sequence_input {
  uint64_t sequence;
  const int32_t* tokens; /* compressed ids (engram_store_compress_tokens) */
  size_t num_tokens;
  const uint8_t* dead;   /* NULL, or num_tokens flags (non-zero: a DEAD position, its rows are zeros) */
} engram_sequence_input;

/* Appends each sequence's tokens and queues the step (steps are numbered 1, 2, 3, ...). Every sequence
 * and id is checked first: on an error nothing is appended. */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_step_submit(engram_runtime* runtime, const engram_sequence_input* batch,
                                                            size_t batch_size, uint64_t* out_step);
/* Blocks until the layer is done and returns its error (a read error, a corrupt row) if it failed. CPU:
 * the rows are then in host memory. GPU: the layer's device work has finished (use the _stream form to
 * avoid blocking). */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_step_wait(engram_runtime* runtime, uint64_t step, int32_t layer_index);
/* GPU: makes `cuda_stream` (a cudaStream_t) wait until the layer's output is on the device; never blocks
 * the host. Every wait needs an engram_step_done_stream after the reads. CPU backend:
 * ENGRAM_FAILED_PRECONDITION. */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_step_wait_stream(engram_runtime* runtime, uint64_t step,
                                                                 int32_t layer_index, void* cuda_stream);
ENGRAM_API ENGRAM_MUST_USE engram_status engram_step_done_stream(engram_runtime* runtime, uint64_t step,
                                                                 int32_t layer_index, void* cuda_stream);

typedef enum engram_memory_kind { ENGRAM_MEMORY_HOST = 0, ENGRAM_MEMORY_DEVICE = 1 } engram_memory_kind;

typedef struct engram_layer_output {
  uint32_t struct_size;      /* sizeof(engram_layer_output) */
  engram_memory_kind memory; /* where rows and bf16 are */
  int64_t tokens;            /* the step's tokens, sequences in batch order */
  int32_t columns;
  uint32_t row_bytes;
  uint32_t dim;
  const void* rows;     /* [tokens, columns, row_bytes], DEAD positions zero; NULL if not produced */
  const uint16_t* bf16; /* [tokens, columns x dim] BF16 bit patterns (FP8 rows); NULL if not produced */
} engram_layer_output;

/* The layer's output. CPU: after a successful engram_step_wait. GPU: the pointers are stable per slot;
 * read them on a stream that waited (engram_step_wait_stream). Valid until engram_step_finish. */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_step_output(engram_runtime* runtime, uint64_t step,
                                                            int32_t layer_index, engram_layer_output* out);
/* Releases the step's host staging (CPU: waits for its layers first). */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_step_finish(engram_runtime* runtime, uint64_t step);

/* ---- GPU backend: capture-safe consumption and ids on the device ------------------------------------ */
/* Every step uses output slot (step - 1) % steps_in_flight; a slot's buffers keep their addresses for the
 * runtime's life. The slot forms below are the same stream operations as engram_step_wait_stream and
 * engram_step_done_stream with no host-side bookkeeping, so the consuming side of a step can be captured
 * once per slot in a CUDA graph and replayed for every step that uses the slot. They skip the checks the
 * step forms make (that the slot's previous user was released): every wait still needs its done.
 * CPU backend: ENGRAM_FAILED_PRECONDITION. */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_step_slot(engram_runtime* runtime, uint64_t step, uint32_t* out_slot);
ENGRAM_API ENGRAM_MUST_USE engram_status engram_slot_wait_stream(engram_runtime* runtime, uint32_t slot,
                                                                 int32_t layer_index, void* cuda_stream);
ENGRAM_API ENGRAM_MUST_USE engram_status engram_slot_done_stream(engram_runtime* runtime, uint32_t slot,
                                                                 int32_t layer_index, void* cuda_stream);
/* The slot's device buffers; `tokens` is their capacity (max_tokens): a step fills its first tokens. */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_slot_output(engram_runtime* runtime, uint32_t slot,
                                                            int32_t layer_index, engram_layer_output* out);

typedef struct engram_device_sequence_input {
  uint64_t sequence;
  int64_t num_tokens;  /* this sequence's ids are the next num_tokens of the step's id array */
  const uint8_t* dead; /* host memory: NULL, or num_tokens flags (non-zero: DEAD) */
} engram_device_sequence_input;

typedef enum engram_device_ids {
  ENGRAM_IDS_COMPRESSED = 0, /* compressed Engram ids */
  ENGRAM_IDS_RAW = 1         /* tokenizer ids, mapped on the device with the store's token map */
} engram_device_ids;

/* Like engram_step_submit, for ids already in device memory (an engine's sampled tokens): `device_ids`
 * holds the step's new ids, sequences back to back in batch order, written by work enqueued on
 * `producer_stream` (a cudaStream_t) before this call. The step waits for that work on the device, never
 * on the host. Needs the device pipeline (ENGRAM_MISS_DEVICE, or AUTO choosing it; else
 * ENGRAM_FAILED_PRECONDITION); ENGRAM_IDS_RAW needs a store with a token map. An id outside the map fails
 * the step and its sequence (engram_step_wait names the sequence, position and id). */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_step_submit_device_ids(engram_runtime* runtime,
                                                                       const engram_device_sequence_input* batch,
                                                                       size_t batch_size, const int32_t* device_ids,
                                                                       engram_device_ids kind, void* producer_stream,
                                                                       uint64_t* out_step);

/* ---- Statistics -------------------------------------------------------------------------------------- */

typedef enum engram_stats_format {
  ENGRAM_STATS_JSON = 0,      /* one JSON object (docs/c-api.md lists the fields) */
  ENGRAM_STATS_PROMETHEUS = 1 /* Prometheus text exposition format, metrics named engram_* */
} engram_stats_format;

/* Writes the runtime's statistics, NUL-terminated, into buf[0 .. capacity). *needed (if not NULL) gets
 * the bytes required including the NUL. A buffer too small (or NULL) gets nothing and
 * ENGRAM_OUT_OF_RANGE; ask again with at least *needed bytes (a little more: counters move). */
ENGRAM_API ENGRAM_MUST_USE engram_status engram_runtime_stats(engram_runtime* runtime, engram_stats_format format,
                                                              char* buf, size_t capacity, size_t* needed);

// NOLINTEND(modernize-use-using)

#ifdef __cplusplus
}
#endif

#endif /* ENGRAM_ENGRAM_H_ */
