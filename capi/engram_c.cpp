// The C API (include/engram/engram.h) over the C++ one: opaque handles, status codes, a thread-local
// message, no exception across the boundary.
#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "engram/engram.h"
#include "engram/log.hpp"
#include "engram/memory/host_tier.hpp"
#include "engram/prefetch/prefetcher.hpp"
#include "engram/prometheus.hpp"
#include "engram/status.hpp"
#include "engram/store/store.hpp"
#ifdef ENGRAM_C_WITH_GPU
#include "engram/gpu/device.hpp"
#include "engram/gpu/host_memory.hpp"
#include "engram/gpu/working_set.hpp"
#endif

// The codes are engram::StatusCode's, value for value.
static_assert(ENGRAM_OK == static_cast<int>(engram::StatusCode::kOk));
static_assert(ENGRAM_INVALID_ARGUMENT == static_cast<int>(engram::StatusCode::kInvalidArgument));
static_assert(ENGRAM_NOT_FOUND == static_cast<int>(engram::StatusCode::kNotFound));
static_assert(ENGRAM_OUT_OF_RANGE == static_cast<int>(engram::StatusCode::kOutOfRange));
static_assert(ENGRAM_CORRUPTION == static_cast<int>(engram::StatusCode::kCorruption));
static_assert(ENGRAM_IO_ERROR == static_cast<int>(engram::StatusCode::kIOError));
static_assert(ENGRAM_RESOURCE_EXHAUSTED == static_cast<int>(engram::StatusCode::kResourceExhausted));
static_assert(ENGRAM_FAILED_PRECONDITION == static_cast<int>(engram::StatusCode::kFailedPrecondition));
static_assert(ENGRAM_UNAVAILABLE == static_cast<int>(engram::StatusCode::kUnavailable));
static_assert(ENGRAM_INTERNAL == static_cast<int>(engram::StatusCode::kInternal));
static_assert(ENGRAM_DEADLINE_EXCEEDED == static_cast<int>(engram::StatusCode::kDeadlineExceeded));

struct engram_store {
  std::unique_ptr<engram::store::Store> store;
};

struct engram_runtime {
  engram_store* store = nullptr;
  engram_backend backend = ENGRAM_BACKEND_CPU;
  // Declared in the order they are built: destroyed in reverse (the prefetcher or working set before the
  // host tier, the host tier before the registrar that pinned its memory).
  std::unique_ptr<engram::memory::HostRegistrar> registrar;
  std::unique_ptr<engram::memory::HostTier> host;
  std::unique_ptr<engram::prefetch::Prefetcher> prefetcher;
#ifdef ENGRAM_C_WITH_GPU
  std::unique_ptr<engram::gpu::WorkingSet> working_set;
#endif
};

namespace {

thread_local std::string g_last_error;

engram_status Fail(const engram::Status& s) {
  g_last_error = s.message();
  return static_cast<engram_status>(s.code());
}

engram_status Fail(engram_status code, std::string message) {
  g_last_error = std::move(message);
  return code;
}

// Runs `body` (returning engram::Status), turning its failure or any exception into a code and message.
template <typename F>
engram_status Guard(const char* what, F&& body) noexcept {
  try {
    const engram::Status s = body();
    if (s.ok()) return ENGRAM_OK;
    return Fail(engram::Status(s).WithContext(what));
  } catch (const std::bad_alloc&) {
    return Fail(ENGRAM_RESOURCE_EXHAUSTED, std::string(what) + ": out of host memory");
  } catch (const std::exception& e) {
    return Fail(ENGRAM_INTERNAL, std::string(what) + ": " + e.what());
  } catch (...) {
    return Fail(ENGRAM_INTERNAL, std::string(what) + ": unknown exception");
  }
}

// A struct_size outside these bounds was never set (the smallest: struct_size and one 4-byte field).
constexpr std::uint32_t kMinStructSize = 8;
constexpr std::uint32_t kMaxStructSize = 1U << 16;

// Copies the caller's struct over the defaults: a caller built against a shorter struct (an older
// header) leaves the newer fields at their defaults. A struct_size below the first field's end is an error.
template <typename T>
engram::Status ReadOptions(const T* in, T& out, const char* name) {
  if (in == nullptr) return engram::Status::Ok();
  if (in->struct_size < kMinStructSize || in->struct_size > kMaxStructSize) {
    return engram::Status::InvalidArgument(std::string(name) + ".struct_size " + std::to_string(in->struct_size) +
                                           ": set it with the _init function or to sizeof");
  }
  const std::size_t n = std::min<std::size_t>(in->struct_size, sizeof(T));
  std::memcpy(static_cast<void*>(&out), static_cast<const void*>(in), n);
  out.struct_size = sizeof(T);
  return engram::Status::Ok();
}

// Writes a struct the library fills: only as many bytes as the caller's struct_size says it has.
template <typename T>
engram::Status WriteOut(const T& value, T* out, const char* name) {
  if (out == nullptr) return engram::Status::InvalidArgument(std::string(name) + ": NULL");
  if (out->struct_size < kMinStructSize || out->struct_size > kMaxStructSize) {
    return engram::Status::InvalidArgument(std::string(name) + ".struct_size " + std::to_string(out->struct_size) +
                                           ": set it to sizeof before the call");
  }
  const std::uint32_t size = out->struct_size;
  std::memcpy(static_cast<void*>(out), static_cast<const void*>(&value), std::min<std::size_t>(size, sizeof(T)));
  out->struct_size = size;
  return engram::Status::Ok();
}

engram::Status NeedPtr(const void* p, const char* name) {
  if (p == nullptr) return engram::Status::InvalidArgument(std::string(name) + ": NULL");
  return engram::Status::Ok();
}

engram::Status CheckLayer(const engram_runtime* rt, std::int32_t l) {
  const int layers = rt->store->store->layout().num_layers();
  if (l < 0 || l >= layers) {
    return engram::Status::OutOfRange("layer index " + std::to_string(l) + " (the store has " + std::to_string(layers) +
                                      " Engram layers)");
  }
  return engram::Status::Ok();
}

// The C form of a layer's output (prefetch::LayerOutput on the host, gpu::DeviceLayerOutput on the device).
template <typename Output>
engram_layer_output LayerOutputOf(const Output& x, engram_memory_kind memory) {
  engram_layer_output o{};
  o.struct_size = sizeof(o);
  o.memory = memory;
  o.tokens = x.tokens;
  o.columns = x.columns;
  o.row_bytes = x.row_bytes;
  o.dim = x.dim;
  o.rows = x.rows;
  o.bf16 = x.bf16;
  return o;
}

#ifdef ENGRAM_C_WITH_GPU
engram::Status NeedGpu(const engram_runtime* rt, const char* what) {
  if (rt->working_set == nullptr) {
    return engram::Status::FailedPrecondition(std::string(what) +
                                              " needs the GPU backend; this runtime runs on the CPU");
  }
  return engram::Status::Ok();
}

// The GPU-only calls: `fn` on the runtime's working set, or why there is none.
template <typename Fn>
engram_status OnGpu(const char* what, engram_runtime* runtime, int32_t layer_index, Fn&& fn) {
  return Guard(what, [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    if (layer_index >= 0) ENGRAM_RETURN_IF_ERROR(CheckLayer(runtime, layer_index));
    ENGRAM_RETURN_IF_ERROR(NeedGpu(runtime, what));
    return fn(*runtime->working_set);
  });
}
#endif

}  // namespace

extern "C" {

uint32_t engram_api_version(void) {
  return ENGRAM_C_API_VERSION;
}

const char* engram_version_string(void) {
  return ENGRAM_VERSION_STRING;
}

const char* engram_status_name(engram_status status) {
  if (status < ENGRAM_OK || status > ENGRAM_DEADLINE_EXCEEDED) return "unknown";
  return engram::StatusCodeName(static_cast<engram::StatusCode>(status)).data();
}

const char* engram_last_error(void) {
  return g_last_error.c_str();
}

void engram_store_options_init(engram_store_options* o) {
  if (o == nullptr) return;
  const engram::store::StoreOptions d;
  *o = engram_store_options{};
  o->struct_size = sizeof(engram_store_options);
  o->io = ENGRAM_IO_URING;
  o->read_path = ENGRAM_READ_MULTIGET;
  o->read_threads = d.read_threads;
  o->block_cache_bytes = d.block_cache_bytes;
}

engram_status engram_store_open(const char* dir, const engram_store_options* options, engram_store** out) {
  return Guard("engram_store_open", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(dir, "dir"));
    ENGRAM_RETURN_IF_ERROR(NeedPtr(out, "out"));
    *out = nullptr;
    engram_store_options o;
    engram_store_options_init(&o);
    ENGRAM_RETURN_IF_ERROR(ReadOptions(options, o, "engram_store_options"));
    engram::store::StoreOptions so;
    if (o.io != ENGRAM_IO_URING && o.io != ENGRAM_IO_POSIX) {
      return engram::Status::InvalidArgument("engram_store_options.io " + std::to_string(o.io));
    }
    if (o.read_path != ENGRAM_READ_MULTIGET && o.read_path != ENGRAM_READ_DIRECT_BLOCKS) {
      return engram::Status::InvalidArgument("engram_store_options.read_path " + std::to_string(o.read_path));
    }
    so.io = o.io == ENGRAM_IO_POSIX ? engram::store::IoMode::kPosix : engram::store::IoMode::kIoUring;
    so.read_path = o.read_path == ENGRAM_READ_DIRECT_BLOCKS ? engram::store::ReadPath::kDirectBlocks
                                                            : engram::store::ReadPath::kMultiGet;
    so.read_threads = o.read_threads;
    so.block_cache_bytes = o.block_cache_bytes;
    ENGRAM_ASSIGN_OR_RETURN(auto store, engram::store::Store::Open(dir, so));
    *out = new engram_store{std::move(store)};
    return engram::Status::Ok();
  });
}

void engram_store_close(engram_store* store) {
  delete store;
}

engram_status engram_store_get_info(const engram_store* store, engram_store_info* out) {
  return Guard("engram_store_get_info", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(store, "store"));
    const engram::Layout& l = store->store->layout();
    engram_store_info info{};
    info.struct_size = sizeof(info);
    info.num_layers = l.num_layers();
    info.columns = l.columns();
    info.max_ngram = l.max_ngram();
    info.row_bytes = l.row_bytes();
    info.dim = static_cast<std::uint32_t>(l.spec().row_dim);
    info.row_format = static_cast<engram_row_format>(l.row_format());
    info.compressed_vocab_size = l.compressed_vocab_size();
    const engram::TokenMap* map = store->store->token_map();
    info.tokenizer_vocab_size = map != nullptr ? map->vocab_size() : 0;
    auto latest = store->store->Latest();
    info.latest_version = latest.ok() ? *latest : 0;
    return WriteOut(info, out, "engram_store_info");
  });
}

engram_status engram_store_layer_id(const engram_store* store, int32_t layer_index, int32_t* out) {
  return Guard("engram_store_layer_id", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(store, "store"));
    ENGRAM_RETURN_IF_ERROR(NeedPtr(out, "out"));
    const engram::Layout& l = store->store->layout();
    if (layer_index < 0 || layer_index >= l.num_layers()) {
      return engram::Status::OutOfRange("layer index " + std::to_string(layer_index) + " (the store has " +
                                        std::to_string(l.num_layers()) + " Engram layers)");
    }
    *out = l.layer(layer_index).layer_id;
    return engram::Status::Ok();
  });
}

engram_status engram_store_compress_tokens(const engram_store* store, const int32_t* raw, size_t n, int32_t* out) {
  return Guard("engram_store_compress_tokens", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(store, "store"));
    if (n > 0) {
      ENGRAM_RETURN_IF_ERROR(NeedPtr(raw, "raw"));
      ENGRAM_RETURN_IF_ERROR(NeedPtr(out, "out"));
    }
    const engram::TokenMap* map = store->store->token_map();
    if (map == nullptr) return engram::Status::FailedPrecondition("the store has no token map");
    return map->Compress(std::span(raw, n), std::span(out, n));
  });
}

void engram_runtime_options_init(engram_runtime_options* o) {
  if (o == nullptr) return;
  const engram::prefetch::PrefetcherOptions p;
  *o = engram_runtime_options{};
  o->struct_size = sizeof(engram_runtime_options);
  o->backend = ENGRAM_BACKEND_AUTO;
  o->version = 0;
  o->resident = ENGRAM_RESIDENT_NONE;
  o->host_cache_bytes = 0;
  o->host_budget_bytes = 0;
  o->gather_threads = p.gather_threads;
  o->staging_bytes = p.staging_bytes;
  o->bf16_output = 1;
  o->hbm_cache_bytes = 1ULL << 30;
  o->device_budget_bytes = 0;
  o->max_tokens = 16384;
  o->steps_in_flight = 2;
  o->miss_path = ENGRAM_MISS_AUTO;
}

engram_status engram_runtime_create(engram_store* store, const engram_runtime_options* options, engram_runtime** out) {
  return Guard("engram_runtime_create", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(store, "store"));
    ENGRAM_RETURN_IF_ERROR(NeedPtr(out, "out"));
    *out = nullptr;
    engram_runtime_options o;
    engram_runtime_options_init(&o);
    ENGRAM_RETURN_IF_ERROR(ReadOptions(options, o, "engram_runtime_options"));
    if (o.backend != ENGRAM_BACKEND_AUTO && o.backend != ENGRAM_BACKEND_CPU && o.backend != ENGRAM_BACKEND_GPU) {
      return engram::Status::InvalidArgument("engram_runtime_options.backend " + std::to_string(o.backend));
    }
    if (o.resident != ENGRAM_RESIDENT_NONE && o.resident != ENGRAM_RESIDENT_ALL) {
      return engram::Status::InvalidArgument("engram_runtime_options.resident " + std::to_string(o.resident));
    }
    if (o.miss_path < ENGRAM_MISS_AUTO || o.miss_path > ENGRAM_MISS_DEVICE) {
      return engram::Status::InvalidArgument("engram_runtime_options.miss_path " + std::to_string(o.miss_path));
    }
    const engram::store::Store& st = *store->store;
    auto rt = std::make_unique<engram_runtime>();
    rt->store = store;

    // The backend: asked for, or the GPU when this build has it and a GPU is usable.
    engram_backend backend = o.backend;
#ifdef ENGRAM_C_WITH_GPU
    if (backend != ENGRAM_BACKEND_CPU) {
      auto dev = engram::gpu::CurrentDevice();
      if (!dev.ok()) {
        if (backend == ENGRAM_BACKEND_GPU) return std::move(dev).status().WithContext("backend GPU");
        engram::Log(engram::LogLevel::kInfo, "engram_runtime_create: CPU backend ({})", dev.status().message());
        backend = ENGRAM_BACKEND_CPU;
      } else {
        backend = ENGRAM_BACKEND_GPU;
        engram::Log(engram::LogLevel::kInfo, "engram_runtime_create: GPU backend on {}", dev->name);
      }
    }
#else
    if (backend == ENGRAM_BACKEND_GPU) {
      return engram::Status::Unavailable("backend GPU: this engram library was built without the GPU module");
    }
    if (backend == ENGRAM_BACKEND_AUTO) {
      engram::Log(engram::LogLevel::kInfo, "engram_runtime_create: CPU backend (built without the GPU module)");
    }
    backend = ENGRAM_BACKEND_CPU;
#endif
    rt->backend = backend;

    engram::store::VersionId version = o.version;
    if (version == 0) {
      ENGRAM_ASSIGN_OR_RETURN(version, st.Latest());
    }
    ENGRAM_ASSIGN_OR_RETURN(auto pinned, st.Pin(version));

    // The host tier, when it holds anything: pinned and mapped for the GPU (zero-copy and the device
    // pipeline read it), plain pinned memory for the CPU backend.
    if (o.resident == ENGRAM_RESIDENT_ALL || o.host_cache_bytes > 0) {
      engram::memory::HostTierOptions ho;
      ho.resident = o.resident == ENGRAM_RESIDENT_ALL ? engram::memory::ResidentRegions::kAll
                                                      : engram::memory::ResidentRegions::kNone;
      ho.cache_bytes = o.host_cache_bytes;
#ifdef ENGRAM_C_WITH_GPU
      if (backend == ENGRAM_BACKEND_GPU) {
        ENGRAM_ASSIGN_OR_RETURN(rt->registrar, engram::gpu::MakeCudaHostRegistrar());
        ho.arena.registrar = rt->registrar.get();
      }
#endif
      ENGRAM_ASSIGN_OR_RETURN(rt->host, engram::memory::HostTier::Create(st.layout(), ho, o.host_budget_bytes));
      if (o.resident == ENGRAM_RESIDENT_ALL) ENGRAM_RETURN_IF_ERROR(rt->host->LoadResident(st, pinned));
    }

    engram::prefetch::PrefetcherOptions po;
    po.gather_threads = o.gather_threads;
    po.staging_bytes = o.staging_bytes;
    po.dequantize = o.bf16_output != 0 ? engram::prefetch::Dequantize::kBf16 : engram::prefetch::Dequantize::kNone;
    if (backend == ENGRAM_BACKEND_CPU) {
      ENGRAM_ASSIGN_OR_RETURN(rt->prefetcher,
                              engram::prefetch::Prefetcher::Create(st, std::move(pinned), rt->host.get(), po));
    } else {
#ifdef ENGRAM_C_WITH_GPU
      engram::gpu::WorkingSetOptions wo;
      wo.cache_bytes = o.hbm_cache_bytes;
      wo.device_budget_bytes = o.device_budget_bytes;
      wo.max_tokens = o.max_tokens;
      wo.steps_in_flight = o.steps_in_flight;
      wo.bf16_output = o.bf16_output != 0;
      wo.path = static_cast<engram::gpu::MissPath>(o.miss_path);
      wo.prefetch = po;
      ENGRAM_ASSIGN_OR_RETURN(rt->working_set,
                              engram::gpu::WorkingSet::Create(st, std::move(pinned), rt->host.get(), wo));
#endif
    }
    *out = rt.release();
    return engram::Status::Ok();
  });
}

void engram_runtime_destroy(engram_runtime* runtime) {
  try {
    delete runtime;
  } catch (...) {  // NOLINT(bugprone-empty-catch): nothing may escape into C
  }
}

engram_backend engram_runtime_backend(const engram_runtime* runtime) {
  return runtime != nullptr ? runtime->backend : ENGRAM_BACKEND_AUTO;
}

// Calls `f` with whichever of the prefetcher and the working set the runtime has.
#ifdef ENGRAM_C_WITH_GPU
#define ENGRAM_C_DISPATCH(rt, call) ((rt)->working_set != nullptr ? (rt)->working_set->call : (rt)->prefetcher->call)
#else
#define ENGRAM_C_DISPATCH(rt, call) ((rt)->prefetcher->call)
#endif

engram_status engram_sequence_create(engram_runtime* runtime, uint64_t* out) {
  return Guard("engram_sequence_create", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    ENGRAM_RETURN_IF_ERROR(NeedPtr(out, "out"));
    ENGRAM_ASSIGN_OR_RETURN(*out, ENGRAM_C_DISPATCH(runtime, CreateSequence()));
    return engram::Status::Ok();
  });
}

engram_status engram_sequence_fork(engram_runtime* runtime, uint64_t parent, uint64_t* out) {
  return Guard("engram_sequence_fork", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    ENGRAM_RETURN_IF_ERROR(NeedPtr(out, "out"));
    ENGRAM_ASSIGN_OR_RETURN(*out, ENGRAM_C_DISPATCH(runtime, Fork(parent)));
    return engram::Status::Ok();
  });
}

engram_status engram_sequence_rollback(engram_runtime* runtime, uint64_t sequence, int64_t tokens) {
  return Guard("engram_sequence_rollback", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    return ENGRAM_C_DISPATCH(runtime, Rollback(sequence, tokens));
  });
}

engram_status engram_sequence_release(engram_runtime* runtime, uint64_t sequence) {
  return Guard("engram_sequence_release", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    return ENGRAM_C_DISPATCH(runtime, Release(sequence));
  });
}

engram_status engram_step_submit(engram_runtime* runtime, const engram_sequence_input* batch, size_t batch_size,
                                 uint64_t* out_step) {
  return Guard("engram_step_submit", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    ENGRAM_RETURN_IF_ERROR(NeedPtr(out_step, "out_step"));
    if (batch_size > 0) ENGRAM_RETURN_IF_ERROR(NeedPtr(batch, "batch"));
    std::vector<engram::prefetch::SequenceInput> in(batch_size);
    for (std::size_t b = 0; b < batch_size; ++b) {
      const engram_sequence_input& s = batch[b];
      if (s.num_tokens > 0 && s.tokens == nullptr) {
        return engram::Status::InvalidArgument("batch[" + std::to_string(b) + "].tokens: NULL with " +
                                               std::to_string(s.num_tokens) + " tokens");
      }
      in[b].sequence = s.sequence;
      in[b].tokens = std::span(s.tokens, s.num_tokens);
      if (s.dead != nullptr) in[b].dead = std::span(s.dead, s.num_tokens);
    }
    ENGRAM_ASSIGN_OR_RETURN(*out_step, ENGRAM_C_DISPATCH(runtime, Submit(in)));
    return engram::Status::Ok();
  });
}

engram_status engram_step_wait(engram_runtime* runtime, uint64_t step, int32_t layer_index) {
  return Guard("engram_step_wait", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    ENGRAM_RETURN_IF_ERROR(CheckLayer(runtime, layer_index));
#ifdef ENGRAM_C_WITH_GPU
    if (runtime->working_set != nullptr) return runtime->working_set->LayerStatus(step, layer_index);
#endif
    return runtime->prefetcher->Wait(step, layer_index);
  });
}

// A stream operation on the layer's output slot: the wait (done = false) or the release (done = true).
static engram_status StreamOp(const char* what, engram_runtime* runtime, uint64_t step, int32_t layer_index,
                              void* cuda_stream, bool done) {
  return Guard(what, [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    ENGRAM_RETURN_IF_ERROR(CheckLayer(runtime, layer_index));
#ifdef ENGRAM_C_WITH_GPU
    ENGRAM_RETURN_IF_ERROR(NeedGpu(runtime, done ? "a stream done" : "a stream wait"));
    const auto stream = static_cast<engram::gpu::Stream>(cuda_stream);
    return done ? runtime->working_set->Done(step, layer_index, stream)
                : runtime->working_set->Wait(step, layer_index, stream);
#else
    (void)step;
    (void)cuda_stream;
    return engram::Status::FailedPrecondition(std::string(done ? "a stream done" : "a stream wait") +
                                              " needs the GPU backend; this library has no GPU module");
#endif
  });
}

engram_status engram_step_wait_stream(engram_runtime* runtime, uint64_t step, int32_t layer_index, void* cuda_stream) {
  return StreamOp("engram_step_wait_stream", runtime, step, layer_index, cuda_stream, false);
}

engram_status engram_step_done_stream(engram_runtime* runtime, uint64_t step, int32_t layer_index, void* cuda_stream) {
  return StreamOp("engram_step_done_stream", runtime, step, layer_index, cuda_stream, true);
}

engram_status engram_step_output(engram_runtime* runtime, uint64_t step, int32_t layer_index,
                                 engram_layer_output* out) {
  return Guard("engram_step_output", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    ENGRAM_RETURN_IF_ERROR(CheckLayer(runtime, layer_index));
#ifdef ENGRAM_C_WITH_GPU
    if (runtime->working_set != nullptr) {
      ENGRAM_ASSIGN_OR_RETURN(const engram::gpu::DeviceLayerOutput d, runtime->working_set->Output(step, layer_index));
      return WriteOut(LayerOutputOf(d, ENGRAM_MEMORY_DEVICE), out, "engram_layer_output");
    }
#endif
    ENGRAM_ASSIGN_OR_RETURN(const engram::prefetch::LayerOutput h, runtime->prefetcher->Output(step, layer_index));
    return WriteOut(LayerOutputOf(h, ENGRAM_MEMORY_HOST), out, "engram_layer_output");
  });
}

#ifdef ENGRAM_C_WITH_GPU
engram_status engram_step_slot(engram_runtime* runtime, uint64_t step, uint32_t* out_slot) {
  return OnGpu("engram_step_slot", runtime, -1, [&](engram::gpu::WorkingSet& ws) -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(out_slot, "out_slot"));
    if (step == 0) return engram::Status::InvalidArgument("step 0 does not exist (steps are numbered from 1)");
    *out_slot = ws.SlotOf(step);
    return engram::Status::Ok();
  });
}

engram_status engram_slot_wait_stream(engram_runtime* runtime, uint32_t slot, int32_t layer_index, void* cuda_stream) {
  return OnGpu("engram_slot_wait_stream", runtime, layer_index, [&](engram::gpu::WorkingSet& ws) {
    return ws.WaitSlot(slot, layer_index, static_cast<engram::gpu::Stream>(cuda_stream));
  });
}

engram_status engram_slot_done_stream(engram_runtime* runtime, uint32_t slot, int32_t layer_index, void* cuda_stream) {
  return OnGpu("engram_slot_done_stream", runtime, layer_index, [&](engram::gpu::WorkingSet& ws) {
    return ws.DoneSlot(slot, layer_index, static_cast<engram::gpu::Stream>(cuda_stream));
  });
}

engram_status engram_slot_output(engram_runtime* runtime, uint32_t slot, int32_t layer_index,
                                 engram_layer_output* out) {
  return OnGpu("engram_slot_output", runtime, layer_index, [&](engram::gpu::WorkingSet& ws) -> engram::Status {
    ENGRAM_ASSIGN_OR_RETURN(const engram::gpu::DeviceLayerOutput d, ws.SlotOutput(slot, layer_index));
    return WriteOut(LayerOutputOf(d, ENGRAM_MEMORY_DEVICE), out, "engram_layer_output");
  });
}

engram_status engram_step_submit_device_ids(engram_runtime* runtime, const engram_device_sequence_input* batch,
                                            size_t batch_size, const int32_t* device_ids, engram_device_ids kind,
                                            void* producer_stream, uint64_t* out_step) {
  return OnGpu("engram_step_submit_device_ids", runtime, -1, [&](engram::gpu::WorkingSet& ws) -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(out_step, "out_step"));
    if (batch_size > 0) ENGRAM_RETURN_IF_ERROR(NeedPtr(batch, "batch"));
    if (kind != ENGRAM_IDS_COMPRESSED && kind != ENGRAM_IDS_RAW) {
      return engram::Status::InvalidArgument("kind " + std::to_string(static_cast<int>(kind)) +
                                             " (ENGRAM_IDS_COMPRESSED or ENGRAM_IDS_RAW)");
    }
    std::int64_t total = 0;
    std::vector<engram::gpu::DeviceSequenceInput> in(batch_size);
    for (std::size_t b = 0; b < batch_size; ++b) {
      const engram_device_sequence_input& s = batch[b];
      if (s.num_tokens < 0) {
        return engram::Status::InvalidArgument("batch[" + std::to_string(b) + "].num_tokens " +
                                               std::to_string(s.num_tokens) + " is negative");
      }
      in[b].sequence = s.sequence;
      in[b].tokens = s.num_tokens;
      if (s.dead != nullptr) in[b].dead = std::span(s.dead, static_cast<std::size_t>(s.num_tokens));
      total += s.num_tokens;
    }
    if (total > 0) ENGRAM_RETURN_IF_ERROR(NeedPtr(device_ids, "device_ids"));
    ENGRAM_ASSIGN_OR_RETURN(*out_step, ws.SubmitDeviceIds(in, device_ids,
                                                          kind == ENGRAM_IDS_RAW ? engram::gpu::DeviceIds::kRaw
                                                                                 : engram::gpu::DeviceIds::kCompressed,
                                                          static_cast<engram::gpu::Stream>(producer_stream)));
    return engram::Status::Ok();
  });
}
#else
// Without the GPU module: the GPU-only calls say so.
static engram_status NoGpu(const char* what, const engram_runtime* runtime) {
  return Guard(what, [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    return engram::Status::FailedPrecondition(std::string(what) +
                                              " needs the GPU backend; this library has no GPU module");
  });
}
engram_status engram_step_slot(engram_runtime* runtime, uint64_t /*step*/, uint32_t* /*out_slot*/) {
  return NoGpu("engram_step_slot", runtime);
}
engram_status engram_slot_wait_stream(engram_runtime* runtime, uint32_t /*slot*/, int32_t /*layer_index*/,
                                      void* /*cuda_stream*/) {
  return NoGpu("engram_slot_wait_stream", runtime);
}
engram_status engram_slot_done_stream(engram_runtime* runtime, uint32_t /*slot*/, int32_t /*layer_index*/,
                                      void* /*cuda_stream*/) {
  return NoGpu("engram_slot_done_stream", runtime);
}
engram_status engram_slot_output(engram_runtime* runtime, uint32_t /*slot*/, int32_t /*layer_index*/,
                                 engram_layer_output* /*out*/) {
  return NoGpu("engram_slot_output", runtime);
}
engram_status engram_step_submit_device_ids(engram_runtime* runtime, const engram_device_sequence_input* /*batch*/,
                                            size_t /*batch_size*/, const int32_t* /*device_ids*/,
                                            engram_device_ids /*kind*/, void* /*producer_stream*/,
                                            uint64_t* /*out_step*/) {
  return NoGpu("engram_step_submit_device_ids", runtime);
}
#endif

engram_status engram_step_finish(engram_runtime* runtime, uint64_t step) {
  return Guard("engram_step_finish", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    return ENGRAM_C_DISPATCH(runtime, Finish(step));
  });
}

engram_status engram_runtime_stats(engram_runtime* runtime, engram_stats_format format, char* buf, size_t capacity,
                                   size_t* needed) {
  return Guard("engram_runtime_stats", [&]() -> engram::Status {
    ENGRAM_RETURN_IF_ERROR(NeedPtr(runtime, "runtime"));
    if (format != ENGRAM_STATS_JSON && format != ENGRAM_STATS_PROMETHEUS) {
      return engram::Status::InvalidArgument("stats format " + std::to_string(format));
    }
    std::string text = ENGRAM_C_DISPATCH(runtime, StatsJson());
    if (format == ENGRAM_STATS_PROMETHEUS) {
      ENGRAM_ASSIGN_OR_RETURN(text, engram::PrometheusFromJson(text));
    }
    if (needed != nullptr) *needed = text.size() + 1;
    if (buf == nullptr || capacity < text.size() + 1) {
      return engram::Status::OutOfRange("statistics need " + std::to_string(text.size() + 1) +
                                        " bytes, the buffer has " + std::to_string(buf == nullptr ? 0 : capacity));
    }
    std::memcpy(buf, text.c_str(), text.size() + 1);
    return engram::Status::Ok();
  });
}

}  // extern "C"
