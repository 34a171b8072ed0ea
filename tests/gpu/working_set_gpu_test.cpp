// The GPU working set on the real GPU, a real store (synthetic V4.1 checkpoint, RocksDB, io_uring) and the
// real trace: every path (staged copy, zero-copy, HBM cache hits, HBM regions) must give exactly the CPU
// backend's rows and BF16, DEAD positions zeroed; graph replay must equal eager execution.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include "../store_util.hpp"
#include "engram/gpu/device.hpp"
#include "engram/gpu/host_memory.hpp"
#include "engram/gpu/working_set.hpp"

namespace engram::gpu {
namespace {

using prefetch::SequenceInput;
using prefetch::StepId;

constexpr double kScale = 0.0001;

using Fixture = test::IngestedStore;

std::unique_ptr<Fixture> MakeStore() {
  return test::MakeIngestedStore("deepseek-v4.1-flash", kScale);
}

// One step of the workload: per sequence, the tokens appended and their DEAD flags.
struct StepInput {
  std::vector<std::vector<std::int32_t>> tokens;
  std::vector<std::vector<std::uint8_t>> dead;
};

// 6 sequences from the Brown trace (compressed ids, or `all` at the same positions): a 48-token prefill,
// then 40 decode steps; every 7th decode step marks one sequence's token DEAD.
std::vector<StepInput> Workload(const std::vector<std::int32_t>& all = test::BrownCompressed()) {
  constexpr std::size_t kSeqs = 6, kPrefill = 48, kDecode = 40;
  std::vector<StepInput> steps;
  for (std::size_t s = 0; s <= kDecode; ++s) {
    StepInput in;
    for (std::size_t q = 0; q < kSeqs; ++q) {
      const std::size_t base = 5000 + q * 3000;
      const std::size_t begin = s == 0 ? 0 : kPrefill + s - 1;
      const std::size_t len = s == 0 ? kPrefill : 1;
      in.tokens.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(base + begin),
                             all.begin() + static_cast<std::ptrdiff_t>(base + begin + len));
      std::vector<std::uint8_t> d(len, 0);
      if (s > 0 && s % 7 == 0 && q == s % kSeqs) d[0] = 1;
      in.dead.push_back(std::move(d));
    }
    steps.push_back(std::move(in));
  }
  return steps;
}

struct LayerBytes {
  std::vector<std::byte> rows;
  std::vector<std::uint16_t> bf16;
};

// The CPU backend's outputs for every step and layer.
std::vector<std::vector<LayerBytes>> CpuOutputs(Fixture& f, const std::vector<StepInput>& steps) {
  auto p = prefetch::Prefetcher::Create(*f.store, f.version, nullptr);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  std::vector<SequenceId> ids;
  for (std::size_t q = 0; q < steps[0].tokens.size(); ++q) ids.push_back(*(*p)->CreateSequence());
  std::vector<std::vector<LayerBytes>> out;
  for (const auto& in : steps) {
    std::vector<SequenceInput> batch;
    for (std::size_t q = 0; q < ids.size(); ++q) batch.push_back({ids[q], in.tokens[q], in.dead[q]});
    auto sid = (*p)->Submit(batch);
    EXPECT_TRUE(sid.ok()) << sid.status().ToString();
    std::vector<LayerBytes> layers;
    for (int l = 0; l < f.store->layout().num_layers(); ++l) {
      EXPECT_TRUE((*p)->Wait(*sid, l).ok());
      auto o = (*p)->Output(*sid, l);
      EXPECT_TRUE(o.ok());
      const auto n = static_cast<std::size_t>(o->tokens) * static_cast<std::size_t>(o->columns);
      LayerBytes b;
      b.rows.assign(o->rows, o->rows + n * o->row_bytes);
      b.bf16.assign(o->bf16, o->bf16 + n * o->dim);
      layers.push_back(std::move(b));
    }
    EXPECT_TRUE((*p)->Finish(*sid).ok());
    out.push_back(std::move(layers));
  }
  return out;
}

// Pinned host memory for copies out of the device (a pageable copy would block the calling thread).
template <typename T>
struct Pinned {
  T* p = nullptr;
  std::size_t n = 0;
  explicit Pinned(std::size_t count) : n(count) {
    EXPECT_EQ(cudaMallocHost(reinterpret_cast<void**>(&p), std::max<std::size_t>(count, 1) * sizeof(T)), cudaSuccess);
  }
  ~Pinned() { cudaFreeHost(p); }
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { EXPECT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess); }
  ~Stream() { cudaStreamDestroy(s); }
};

// How a test hands a step to the working set: WorkingSet::Submit, or with the ids on the device.
using Submitter = std::function<Result<StepId>(WorkingSet&, std::span<const SequenceInput>)>;

// Hands steps over with their ids in device memory, as an engine whose sampled tokens are on the GPU:
// the batch's ids (compressed, or tokenizer ids with kRaw) are copied to a device buffer on a producer
// stream, then SubmitDeviceIds.
struct DeviceIdsSubmitter {
  static constexpr std::size_t kMaxIds = 4096;
  Stream producer;
  std::int32_t* d_ids = nullptr;
  Pinned<std::int32_t> staging{kMaxIds};
  DeviceIdsSubmitter() { EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_ids), kMaxIds * 4), cudaSuccess); }
  ~DeviceIdsSubmitter() { cudaFree(d_ids); }
  DeviceIdsSubmitter(const DeviceIdsSubmitter&) = delete;
  DeviceIdsSubmitter& operator=(const DeviceIdsSubmitter&) = delete;
  Result<StepId> Submit(WorkingSet& ws, std::span<const SequenceInput> batch, DeviceIds kind) {
    EXPECT_EQ(cudaStreamSynchronize(producer.s), cudaSuccess);  // the previous step's copy of `staging`
    std::vector<DeviceSequenceInput> dev;
    std::size_t n = 0;
    for (const auto& in : batch) {
      EXPECT_LE(n + in.tokens.size(), kMaxIds);
      std::copy(in.tokens.begin(), in.tokens.end(), staging.p + n);
      dev.push_back({in.sequence, static_cast<std::int64_t>(in.tokens.size()), in.dead});
      n += in.tokens.size();
    }
    EXPECT_EQ(cudaMemcpyAsync(d_ids, staging.p, n * 4, cudaMemcpyHostToDevice, producer.s), cudaSuccess);
    return ws.SubmitDeviceIds(dev, d_ids, kind, producer.s);
  }
  Submitter Compressed() {
    return [this](WorkingSet& ws, std::span<const SequenceInput> b) { return Submit(ws, b, DeviceIds::kCompressed); };
  }
};

// Runs the workload eagerly through `ws` (Wait, copy out, Done on one stream) and compares every layer
// of every step with the CPU backend. Steps go through `submit` (default: WorkingSet::Submit).
void RunAndCompare(WorkingSet& ws, const std::vector<StepInput>& steps,
                   const std::vector<std::vector<LayerBytes>>& expect, const Submitter& submit = {}) {
  Stream stream;
  std::vector<SequenceId> ids;
  for (std::size_t q = 0; q < steps[0].tokens.size(); ++q) ids.push_back(*ws.CreateSequence());
  const int layers = ws.layout().num_layers();
  for (std::size_t s = 0; s < steps.size(); ++s) {
    std::vector<SequenceInput> batch;
    for (std::size_t q = 0; q < ids.size(); ++q) batch.push_back({ids[q], steps[s].tokens[q], steps[s].dead[q]});
    auto sid = submit ? submit(ws, batch) : ws.Submit(batch);
    ASSERT_TRUE(sid.ok()) << sid.status().ToString();
    for (int l = 0; l < layers; ++l) {
      ASSERT_TRUE(ws.Wait(*sid, l, stream.s).ok());
      const Status st = ws.LayerStatus(*sid, l);
      ASSERT_TRUE(st.ok()) << st.ToString();
      auto o = ws.Output(*sid, l);
      ASSERT_TRUE(o.ok()) << o.status().ToString();
      const auto& e = expect[s][static_cast<std::size_t>(l)];
      Pinned<std::byte> rows(e.rows.size());
      Pinned<std::uint16_t> bf16(e.bf16.size());
      ASSERT_EQ(static_cast<std::size_t>(o->tokens) * o->columns * o->row_bytes, rows.n);
      ASSERT_EQ(cudaMemcpyAsync(rows.p, o->rows, rows.n, cudaMemcpyDeviceToHost, stream.s), cudaSuccess);
      ASSERT_EQ(cudaMemcpyAsync(bf16.p, o->bf16, bf16.n * 2, cudaMemcpyDeviceToHost, stream.s), cudaSuccess);
      ASSERT_TRUE(ws.Done(*sid, l, stream.s).ok());
      ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
      ASSERT_EQ(std::memcmp(rows.p, e.rows.data(), rows.n), 0) << "step " << s << " layer " << l;
      ASSERT_EQ(std::memcmp(bf16.p, e.bf16.data(), bf16.n * 2), 0) << "step " << s << " layer " << l;
    }
    ASSERT_TRUE(ws.Finish(*sid).ok());
  }
}

// Device lookups of the first prefill's layer-1 rows (hashed on the host) after the workload ran through
// a cache large enough to hold every row read: each is found and its slot holds its bytes; a row almost
// surely never read is not found.
void ExpectDeviceLookupsFindThePrefillRows(WorkingSet& ws, const std::vector<StepInput>& steps) {
  const Layout& layout = ws.layout();
  std::vector<std::int64_t> rows = test::ReferenceRows(layout, 1, steps[0].tokens[0]);
  rows.push_back(layout.layer_rows(1) - 1);  // almost surely never read
  const auto n = static_cast<std::uint32_t>(rows.size());
  std::int64_t* d_rows = nullptr;
  std::int32_t* d_slots = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_rows), n * 8), cudaSuccess);
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_slots), n * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_rows, rows.data(), n * 8, cudaMemcpyHostToDevice), cudaSuccess);
  Stream stream;
  ASSERT_TRUE(ws.LookupAsync(1, d_rows, n, d_slots, stream.s).ok());
  std::vector<std::int32_t> slots(n);
  ASSERT_EQ(cudaMemcpyAsync(slots.data(), d_slots, n * 4, cudaMemcpyDeviceToHost, stream.s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  const auto expect = test::ExpectedRows(layout, 1, rows);
  for (std::uint32_t i = 0; i + 1 < n; ++i) {
    ASSERT_GE(slots[i], 0) << "row " << rows[i] << " not found on the device";
    std::vector<std::byte> got(layout.row_bytes());
    ASSERT_EQ(cudaMemcpy(got.data(), ws.CacheSlotRow(slots[i]), got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(std::memcmp(got.data(), expect.data() + static_cast<std::size_t>(i) * layout.row_bytes(), got.size()), 0)
        << "row " << rows[i];
  }
  EXPECT_EQ(slots[n - 1], -1);
  cudaFree(d_rows);
  cudaFree(d_slots);
}

class WorkingSetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dev = CurrentDevice();
    if (!dev.ok()) GTEST_SKIP() << "skipped: no usable GPU: " << dev.status().ToString();
    ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
    f_ = MakeStore();
    steps_ = Workload();
    expect_ = CpuOutputs(*f_, steps_);
  }
  std::unique_ptr<memory::HostTier> ResidentTier() {
    auto reg = MakeCudaHostRegistrar();
    EXPECT_TRUE(reg.ok());
    registrar_ = std::move(*reg);
    memory::HostTierOptions ho;
    ho.resident = memory::ResidentRegions::kAll;
    ho.arena.huge_pages = memory::HugePages::kNone;
    ho.arena.registrar = registrar_.get();
    auto host = memory::HostTier::Create(f_->store->layout(), ho);
    EXPECT_TRUE(host.ok()) << host.status().ToString();
    EXPECT_TRUE((*host)->LoadResident(*f_->store, f_->version).ok());
    return std::move(*host);
  }
  std::unique_ptr<WorkingSet> Make(memory::HostTier* host, WorkingSetOptions o) {
    o.max_tokens = 512;
    o.prefetch.staging_bytes = 64ULL << 20;
    auto ws = WorkingSet::Create(*f_->store, f_->version, host, o);
    EXPECT_TRUE(ws.ok()) << ws.status().ToString();
    return ws.ok() ? std::move(*ws) : nullptr;
  }
  // The device pipeline, one launch per layer, over a small set cache (55 sets of 16: the workload reads
  // more distinct rows): runs the workload against the CPU backend and returns the statistics.
  WorkingSetStats RunDevicePipelineWithSmallCache(std::uint64_t sort_lookups_from,
                                                  std::uint32_t sorted_lookups_per_warp = 0) {
    auto host = ResidentTier();
    WorkingSetOptions o;
    o.cache_bytes = 256ULL << 10;
    o.path = MissPath::kDevice;
    o.fuse_lookups = 0;
    o.sort_lookups_from = sort_lookups_from;
    o.sorted_lookups_per_warp = sorted_lookups_per_warp;
    auto ws = Make(host.get(), o);
    if (ws == nullptr) return {};
    RunAndCompare(*ws, steps_, expect_);
    EXPECT_TRUE(ws->Synchronize().ok());
    return ws->stats();
  }

  // The device pipeline over the resident tier with a set cache of `cache_bytes` (both kept by the fixture).
  WorkingSet* DevicePipeline(std::uint64_t cache_bytes) {
    host_ = ResidentTier();
    WorkingSetOptions o;
    o.cache_bytes = cache_bytes;
    o.path = MissPath::kDevice;
    ws_ = Make(host_.get(), o);
    return ws_.get();
  }

  // Destroyed in reverse order: the working set, then the host tier (which unregisters its memory through
  // the registrar), then the registrar and the store.
  std::unique_ptr<memory::HostRegistrar> registrar_;
  std::unique_ptr<Fixture> f_;
  std::vector<StepInput> steps_;
  std::vector<std::vector<LayerBytes>> expect_;
  std::unique_ptr<memory::HostTier> host_;
  std::unique_ptr<WorkingSet> ws_;
};

TEST_F(WorkingSetTest, StagedPathWithoutCacheMatchesTheCpuBackend) {
  WorkingSetOptions o;
  o.cache_bytes = 0;
  o.path = MissPath::kStaged;
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  const auto st = ws->stats();
  EXPECT_EQ(st.cache_hits, 0U);
  EXPECT_GT(st.staged_rows, 0U);
  EXPECT_EQ(st.layers, steps_.size() * 2);
}

TEST_F(WorkingSetTest, CacheHitsAndEvictionsMatchTheCpuBackend) {
  WorkingSetOptions o;
  o.cache_bytes = 256ULL << 10;  // ~700 slots: the workload reads more distinct rows, so rows are evicted
  o.path = MissPath::kStaged;
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  const auto st = ws->stats();
  EXPECT_GT(st.cache_hits, 0U);
  EXPECT_GT(st.evictions, 0U);
  EXPECT_LE(st.cache_held, st.cache_slots);
}

TEST_F(WorkingSetTest, ManyEvictionsRebuildTheDeviceTableAndStillMatch) {
  WorkingSetOptions o;
  o.cache_bytes = 32ULL << 10;  // ~90 slots: the table is compacted often
  o.path = MissPath::kStaged;
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  EXPECT_GT(ws->stats().table_rebuilds, 0U);
}

TEST_F(WorkingSetTest, ZeroCopyPathMatchesTheCpuBackend) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.cache_bytes = 256ULL << 10;
  o.path = MissPath::kZeroCopy;
  auto ws = Make(host.get(), o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  const auto st = ws->stats();
  EXPECT_EQ(st.path, MissPath::kZeroCopy);
  EXPECT_GT(st.zero_copy_rows, 0U);
  EXPECT_EQ(st.staged_rows, 0U);
}

TEST_F(WorkingSetTest, AutoPathMeasuresBothAndMatches) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.path = MissPath::kAuto;
  auto ws = Make(host.get(), o);
  ASSERT_NE(ws, nullptr);
  const auto st = ws->stats();
  EXPECT_GT(st.staged_rows_per_second, 0);
  EXPECT_GT(st.zero_copy_rows_per_second, 0);
  EXPECT_NE(st.path_reason.find("measured"), std::string::npos) << st.path_reason;
  RunAndCompare(*ws, steps_, expect_);
}

TEST_F(WorkingSetTest, HbmRegionsServeTheirRowsAndMatch) {
  WorkingSetOptions o;
  o.cache_bytes = 0;
  o.path = MissPath::kStaged;
  for (int c = 0; c < f_->store->layout().columns(); ++c) o.hbm_regions.push_back({0, c});
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  const auto st = ws->stats();
  EXPECT_GT(st.hbm_region_hits, 0U);
  EXPECT_GT(st.hbm_region_rows, 0U);
  EXPECT_GT(st.staged_rows, 0U);  // layer 1 is not held
}

TEST_F(WorkingSetTest, AConfigurationOverTheDeviceBudgetIsRefusedBeforeAllocating) {
  size_t free0 = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  WorkingSetOptions o;
  o.cache_bytes = 64ULL << 20;
  o.device_budget_bytes = 32ULL << 20;
  o.max_tokens = 512;
  auto ws = WorkingSet::Create(*f_->store, f_->version, nullptr, o);
  ASSERT_FALSE(ws.ok());
  EXPECT_EQ(ws.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(ws.status().message().find("device_budget_bytes"), std::string::npos) << ws.status().ToString();
}

TEST_F(WorkingSetTest, DeviceMemoryStaysWithinTheBudget) {
  WorkingSetOptions o;
  o.cache_bytes = 8ULL << 20;
  o.device_budget_bytes = 64ULL << 20;
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  EXPECT_LE(ws->stats().device_bytes, o.device_budget_bytes);
}

TEST_F(WorkingSetTest, DeviceLookupAgreesWithTheCachedRows) {
  WorkingSetOptions o;
  o.cache_bytes = 64ULL << 20;                       // holds every row the workload reads
  o.policy.kind = memory::RowCachePolicyKind::kLru;  // admits every miss: nothing read is left out
  o.path = MissPath::kStaged;
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  ASSERT_TRUE(ws->Synchronize().ok());
  ExpectDeviceLookupsFindThePrefillRows(*ws, steps_);
}

TEST_F(WorkingSetTest, WaitingOnASlotNotReleasedIsAnError) {
  WorkingSetOptions o;
  o.steps_in_flight = 2;
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  Stream stream;
  auto seq = *ws->CreateSequence();
  std::vector<StepId> ids;
  for (int s = 0; s < 3; ++s) {
    std::vector<SequenceInput> batch{{seq, steps_[1].tokens[0], {}}};
    auto sid = ws->Submit(batch);
    ASSERT_TRUE(sid.ok());
    ids.push_back(*sid);
  }
  ASSERT_TRUE(ws->Wait(ids[0], 0, stream.s).ok());  // step 1 layer 0 waited, never Done
  const Status st = ws->Wait(ids[2], 0, stream.s);  // step 3 uses step 1's slot
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  ASSERT_TRUE(ws->Done(ids[0], 0, stream.s).ok());
  EXPECT_TRUE(ws->Wait(ids[2], 0, stream.s).ok());
  for (StepId id : ids) {
    for (int l = 0; l < 2; ++l) {
      if (!(id == ids[0] && l == 0) && !(id == ids[2] && l == 0)) ASSERT_TRUE(ws->Wait(id, l, stream.s).ok());
      ASSERT_TRUE(ws->Done(id, l, stream.s).ok());
    }
    ASSERT_TRUE(ws->Finish(id).ok());
  }
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
}

// An engine thread that has filled its stream's launch queue behind a Wait (cuLaunchKernel then blocks
// until the flag is set, holding a lock of the CUDA context) must not stop the prefetcher's worker from
// enqueueing the layer that sets it: the worker creates no CUDA events (they wait for that lock). Before
// the fix this hung (bench_model, configuration c, 4 x 4,096 prefill; .device/run47).
TEST_F(WorkingSetTest, AStreamWithAFullLaunchQueueBehindAWaitDoesNotStopTheStep) {
  WorkingSetOptions o;
  o.path = MissPath::kStaged;
  o.cache_bytes = 256ULL << 10;
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  Stream stream;
  int* scratch = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&scratch), 4), cudaSuccess);
  constexpr int kLaunches = 20000;  // the H100 queues ~1,020 per stream
  std::atomic<int> launched{0};
  std::atomic<bool> finished{false};
  // A watchdog: a deadlock ends the test binary with a message rather than at ctest's timeout.
  std::thread watchdog([&] {
    for (int i = 0; i < 1200 && !finished.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!finished.load()) {
      std::fprintf(stderr, "deadlock: the step behind a full launch queue did not complete in 60 s (%d launched)\n",
                   launched.load());
      std::_Exit(1);
    }
  });
  std::thread engine([&] {
    ASSERT_TRUE(ws->WaitSlot(0, 0, stream.s).ok());
    for (int i = 0; i < kLaunches; ++i) {
      ASSERT_EQ(cudaMemsetAsync(scratch, 0, 4, stream.s), cudaSuccess);
      launched.fetch_add(1);
    }
  });
  // Until the engine thread is stuck in a launch (its count stops moving short of the total).
  int last = -1;
  for (int i = 0; i < 200 && launched.load() != last; ++i) {
    last = launched.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const int stuck_at = launched.load();
  auto seq = *ws->CreateSequence();
  std::vector<SequenceInput> batch{{seq, steps_[0].tokens[0], {}}};
  auto sid = ws->Submit(batch);
  engine.join();
  finished = true;
  watchdog.join();
  ASSERT_TRUE(sid.ok()) << sid.status().ToString();
  EXPECT_LT(stuck_at, kLaunches) << "the launch queue never filled: the test did not test anything";
  ASSERT_TRUE(ws->Done(*sid, 0, stream.s).ok());
  ASSERT_TRUE(ws->Wait(*sid, 1, stream.s).ok());
  ASSERT_TRUE(ws->Done(*sid, 1, stream.s).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  EXPECT_TRUE(ws->LayerStatus(*sid, 0).ok());
  ASSERT_TRUE(ws->Finish(*sid).ok());
  cudaFree(scratch);
}

TEST_F(WorkingSetTest, DestroyingWithStepsNeverConsumedReturns) {
  WorkingSetOptions o;
  o.steps_in_flight = 2;
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  auto seq = *ws->CreateSequence();
  // Four steps, never waited for or released: the copy stream is left waiting for slots to be freed.
  for (int s = 0; s < 4; ++s) {
    std::vector<SequenceInput> batch{{seq, steps_[static_cast<std::size_t>(s) + 1].tokens[0], {}}};
    ASSERT_TRUE(ws->Submit(batch).ok());
  }
  ws.reset();  // must return
  SUCCEED();
}

// The consuming side of decode steps captured once per slot and replayed: results equal the CPU backend.
void GraphReplayEqualsEager(WorkingSet* ws, const std::vector<StepInput>& steps_,
                            const std::vector<std::vector<LayerBytes>>& expect_) {
  ASSERT_NE(ws, nullptr);
  const int layers = ws->layout().num_layers();
  // Decode steps only (fixed shape): 6 sequences x 1 token. The consumer copies each layer's BF16 output
  // into its own buffer; one graph per slot, captured once, replayed for every step in that slot.
  const std::size_t per_layer = 6 * 24 * 256;
  std::uint16_t* consumed = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&consumed), per_layer * 2 * layers), cudaSuccess);
  Stream stream;
  cudaGraphExec_t exec[2] = {nullptr, nullptr};
  for (std::uint32_t slot = 0; slot < 2; ++slot) {
    cudaGraph_t g = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    for (int l = 0; l < layers; ++l) {
      ASSERT_TRUE(ws->WaitSlot(slot, l, stream.s).ok());
      auto out = ws->SlotOutput(slot, l);
      ASSERT_TRUE(out.ok());
      ASSERT_EQ(cudaMemcpyAsync(consumed + per_layer * l, out->bf16, per_layer * 2, cudaMemcpyDeviceToDevice, stream.s),
                cudaSuccess);
      ASSERT_TRUE(ws->DoneSlot(slot, l, stream.s).ok());
    }
    ASSERT_EQ(cudaStreamEndCapture(stream.s, &g), cudaSuccess);
    ASSERT_EQ(cudaGraphInstantiate(&exec[slot], g, 0), cudaSuccess);
    cudaGraphDestroy(g);
  }
  std::vector<SequenceId> ids(6);
  for (auto& id : ids) id = *ws->CreateSequence();
  // Step 1 (the prefill) is consumed eagerly; decode steps by graph.
  for (std::size_t s = 0; s < steps_.size(); ++s) {
    std::vector<SequenceInput> batch;
    for (std::size_t q = 0; q < ids.size(); ++q) batch.push_back({ids[q], steps_[s].tokens[q], steps_[s].dead[q]});
    auto sid = ws->Submit(batch);
    ASSERT_TRUE(sid.ok());
    if (s == 0) {
      for (int l = 0; l < layers; ++l) {
        ASSERT_TRUE(ws->Wait(*sid, l, stream.s).ok());
        ASSERT_TRUE(ws->Done(*sid, l, stream.s).ok());
      }
    } else {
      ASSERT_EQ(cudaGraphLaunch(exec[ws->SlotOf(*sid)], stream.s), cudaSuccess);
      Pinned<std::uint16_t> got(per_layer * layers);
      ASSERT_EQ(cudaMemcpyAsync(got.p, consumed, got.n * 2, cudaMemcpyDeviceToHost, stream.s), cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
      for (int l = 0; l < layers; ++l) {
        ASSERT_EQ(
            std::memcmp(got.p + per_layer * l, expect_[s][static_cast<std::size_t>(l)].bf16.data(), per_layer * 2), 0)
            << "step " << s << " layer " << l;
      }
    }
    ASSERT_TRUE(ws->Finish(*sid).ok());
  }
  for (auto e : exec) cudaGraphExecDestroy(e);
  cudaFree(consumed);
}

TEST_F(WorkingSetTest, GraphReplayOfTheConsumingSideEqualsEagerResults) {
  WorkingSetOptions o;
  o.cache_bytes = 256ULL << 10;
  o.steps_in_flight = 2;
  auto ws = Make(nullptr, o);
  GraphReplayEqualsEager(ws.get(), steps_, expect_);
}

TEST_F(WorkingSetTest, GraphReplayOverTheDevicePipelineEqualsEagerResults) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.cache_bytes = 256ULL << 10;
  o.steps_in_flight = 2;
  o.path = MissPath::kDevice;
  auto ws = Make(host.get(), o);
  GraphReplayEqualsEager(ws.get(), steps_, expect_);
}

TEST_F(WorkingSetTest, ACorruptRowFailsItsLayerWithZerosAndLaterStepsAreServed) {
  test::TempDir dir;
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kScale);
  {
    auto st = store::Store::Create(dir.File("store"), ck.layout, nullptr, store::StoreOptions{});
    ASSERT_TRUE(st.ok());
    auto c = store::Checkpoint::Open(ck.dir);
    ASSERT_TRUE((*st)->Ingest(*c).ok());
  }
  test::FlipOneByte(dir.File("store"));
  auto st = store::Store::Open(dir.File("store"));
  ASSERT_TRUE(st.ok());
  auto v = (*st)->Pin(1);
  WorkingSetOptions o;
  o.max_tokens = 4096;
  o.cache_bytes = 1ULL << 20;
  auto ws = WorkingSet::Create(**st, *v, nullptr, o);
  ASSERT_TRUE(ws.ok()) << ws.status().ToString();
  Stream stream;
  const auto& all = test::BrownCompressed();
  const std::vector<std::int32_t> seq(all.begin() + 20000, all.begin() + 23000);
  auto s1 = *(*ws)->CreateSequence();
  auto sid = (*ws)->Submit(std::vector<SequenceInput>{{s1, seq, {}}});
  ASSERT_TRUE(sid.ok());
  Status failed;
  int failed_layer = -1;
  for (int l = 0; l < 2; ++l) {
    ASSERT_TRUE((*ws)->Wait(*sid, l, stream.s).ok());  // never hangs, even for a failed layer
    ASSERT_TRUE((*ws)->Done(*sid, l, stream.s).ok());
    if (Status s = (*ws)->LayerStatus(*sid, l); !s.ok()) {
      failed = s;
      failed_layer = l;
    }
  }
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  ASSERT_FALSE(failed.ok()) << "the step should have read the corrupt page";
  EXPECT_EQ(failed.code(), StatusCode::kCorruption);
  // The failed layer's output is zeros.
  auto out = (*ws)->Output(*sid, failed_layer);
  ASSERT_TRUE(out.ok());
  std::vector<std::uint16_t> bf(static_cast<std::size_t>(out->tokens) * 24 * 256);
  ASSERT_EQ(cudaMemcpy(bf.data(), out->bf16, bf.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_TRUE(std::all_of(bf.begin(), bf.end(), [](std::uint16_t x) { return x == 0; }));
  ASSERT_TRUE((*ws)->Finish(*sid).ok());
  // A short step whose rows avoid the corrupt page is served.
  auto s2 = *(*ws)->CreateSequence();
  const std::vector<std::int32_t> small(seq.begin(), seq.begin() + 2);
  auto sid2 = (*ws)->Submit(std::vector<SequenceInput>{{s2, small, {}}});
  ASSERT_TRUE(sid2.ok());
  for (int l = 0; l < 2; ++l) {
    ASSERT_TRUE((*ws)->Wait(*sid2, l, stream.s).ok());
    ASSERT_TRUE((*ws)->Done(*sid2, l, stream.s).ok());
    EXPECT_TRUE((*ws)->LayerStatus(*sid2, l).ok());
  }
  ASSERT_TRUE((*ws)->Finish(*sid2).ok());
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
}

TEST_F(WorkingSetTest, DevicePipelineWithoutCacheMatchesTheCpuBackend) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.cache_bytes = 0;
  o.path = MissPath::kDevice;
  o.fuse_lookups = 0;  // one launch per layer (the fused launch has its own test)
  auto ws = Make(host.get(), o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  ASSERT_TRUE(ws->Synchronize().ok());
  const auto st = ws->stats();
  EXPECT_EQ(st.path, MissPath::kDevice);
  EXPECT_EQ(st.cache_hits, 0U);
  EXPECT_GT(st.zero_copy_rows, 0U);
  EXPECT_EQ(st.staged_rows, 0U);
  EXPECT_EQ(st.host.steps, 0U);  // the prefetcher's worker served nothing: the device did it all
}

TEST_F(WorkingSetTest, DevicePipelineCacheHitsAndEvictionsMatchTheCpuBackend) {
  const auto st = RunDevicePipelineWithSmallCache(0);  // in lookup order
  EXPECT_EQ(st.path, MissPath::kDevice);
  EXPECT_GT(st.cache_hits, 0U);
  EXPECT_GT(st.admissions, 0U);
  EXPECT_GT(st.evictions, 0U);
  EXPECT_LE(st.cache_held, st.cache_slots);
}

TEST_F(WorkingSetTest, DevicePipelineWithOneLaunchForAllLayersMatchesTheCpuBackend) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.cache_bytes = 256ULL << 10;
  o.path = MissPath::kDevice;
  o.fuse_lookups = 1 << 20;  // every step of the workload (the prefill too) in one launch for both layers
  auto ws = Make(host.get(), o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  ASSERT_TRUE(ws->Synchronize().ok());
  EXPECT_GT(ws->stats().cache_hits, 0U);
  EXPECT_GT(ws->stats().evictions, 0U);
}

// A prefill, a decode step, a rollback of two tokens, a fork, and two steps of both sequences, through
// the device pipeline (steps handed over by `submit`, default Submit) and the CPU backend, every layer
// compared byte for byte.
void RollbackAndForkMatchTheCpuBackend(WorkingSet* ws_ptr, test::IngestedStore& f, const Submitter& submit = {}) {
  ASSERT_NE(ws_ptr, nullptr);
  WorkingSet* ws = ws_ptr;
  auto cpu = prefetch::Prefetcher::Create(*f.store, f.version, nullptr);
  ASSERT_TRUE(cpu.ok());
  const auto& all = test::BrownCompressed();
  auto tok = [&](std::size_t at, std::size_t n) {
    return std::vector<std::int32_t>(all.begin() + static_cast<std::ptrdiff_t>(at),
                                     all.begin() + static_cast<std::ptrdiff_t>(at + n));
  };
  Stream stream;
  const int layers = ws->layout().num_layers();
  // One step on both sides (sequence q is gpu_ids[q] / cpu_ids[q]), every layer compared byte for byte.
  auto step = [&](const std::vector<SequenceId>& gpu_ids, const std::vector<SequenceId>& cpu_ids,
                  const std::vector<std::vector<std::int32_t>>& tokens, const char* what) {
    std::vector<SequenceInput> gb, cb;
    for (std::size_t q = 0; q < tokens.size(); ++q) {
      gb.push_back({gpu_ids[q], tokens[q], {}});
      cb.push_back({cpu_ids[q], tokens[q], {}});
    }
    auto gs = submit ? submit(*ws, gb) : ws->Submit(gb);
    auto cs = (*cpu)->Submit(cb);
    ASSERT_TRUE(gs.ok() && cs.ok()) << what << ": " << gs.status().ToString();
    for (int l = 0; l < layers; ++l) {
      ASSERT_TRUE((*cpu)->Wait(*cs, l).ok());
      auto e = (*cpu)->Output(*cs, l);
      ASSERT_TRUE(ws->Wait(*gs, l, stream.s).ok());
      auto g = ws->Output(*gs, l);
      ASSERT_TRUE(e.ok() && g.ok());
      const std::size_t n = static_cast<std::size_t>(e->tokens) * static_cast<std::size_t>(e->columns);
      Pinned<std::byte> rows(n * e->row_bytes);
      Pinned<std::uint16_t> bf16(n * e->dim);
      ASSERT_EQ(cudaMemcpyAsync(rows.p, g->rows, rows.n, cudaMemcpyDeviceToHost, stream.s), cudaSuccess);
      ASSERT_EQ(cudaMemcpyAsync(bf16.p, g->bf16, bf16.n * 2, cudaMemcpyDeviceToHost, stream.s), cudaSuccess);
      ASSERT_TRUE(ws->Done(*gs, l, stream.s).ok());
      ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
      EXPECT_EQ(std::memcmp(rows.p, e->rows, rows.n), 0) << what << ", layer " << l;
      EXPECT_EQ(std::memcmp(bf16.p, e->bf16, bf16.n * 2), 0) << what << ", layer " << l;
    }
    ASSERT_TRUE(ws->Finish(*gs).ok());
    ASSERT_TRUE((*cpu)->Finish(*cs).ok());
  };
  const SequenceId ga = *ws->CreateSequence();
  const SequenceId ca = *(*cpu)->CreateSequence();
  step({ga}, {ca}, {tok(7000, 30)}, "prefill");
  step({ga}, {ca}, {tok(7030, 1)}, "decode");
  // Speculative decoding rejects two tokens; the sequence forks; both go on with different tokens.
  ASSERT_TRUE(ws->Rollback(ga, 2).ok());
  ASSERT_TRUE((*cpu)->Rollback(ca, 2).ok());
  const SequenceId gb = *ws->Fork(ga);
  const SequenceId cb = *(*cpu)->Fork(ca);
  step({ga, gb}, {ca, cb}, {tok(8000, 1), tok(9000, 1)}, "after rollback and fork");
  step({ga, gb}, {ca, cb}, {tok(8001, 1), tok(9001, 1)}, "one more");
}

TEST_F(WorkingSetTest, DevicePipelineAfterRollbackAndForkMatchesTheCpuBackend) {
  RollbackAndForkMatchTheCpuBackend(DevicePipeline(256ULL << 10), *f_);
}

TEST_F(WorkingSetTest, DeviceIdsMatchTheCpuBackend) {
  // Every step's ids handed over in device memory: the prefill, then decode steps whose windows need the
  // ids of the step before (appended by the host once copied back), with DEAD marks.
  WorkingSet* ws = DevicePipeline(256ULL << 10);
  ASSERT_NE(ws, nullptr);
  DeviceIdsSubmitter dev;
  RunAndCompare(*ws, steps_, expect_, dev.Compressed());
}

TEST_F(WorkingSetTest, DeviceIdsThroughRollbackAndForkMatchTheCpuBackend) {
  DeviceIdsSubmitter dev;
  RollbackAndForkMatchTheCpuBackend(DevicePipeline(256ULL << 10), *f_, dev.Compressed());
}

TEST_F(WorkingSetTest, RawDeviceIdsAreMappedWithTheStoresTokenMap) {
  // A store that keeps the real token map; the workload's tokenizer ids, mapped on the device, give the
  // CPU backend's outputs for the compressed ids.
  auto mapped = test::MakeIngestedStore("deepseek-v4.1-flash", kScale, 2, &test::RealTokenMap());
  ASSERT_NE(mapped->store, nullptr);
  ASSERT_NE(mapped->store->token_map(), nullptr);
  auto reg = MakeCudaHostRegistrar();
  ASSERT_TRUE(reg.ok());
  memory::HostTierOptions ho;
  ho.resident = memory::ResidentRegions::kAll;
  ho.arena.huge_pages = memory::HugePages::kNone;
  ho.arena.registrar = reg->get();
  auto host = memory::HostTier::Create(mapped->store->layout(), ho);
  ASSERT_TRUE(host.ok());
  ASSERT_TRUE((*host)->LoadResident(*mapped->store, mapped->version).ok());
  WorkingSetOptions o;
  o.path = MissPath::kDevice;
  o.max_tokens = 512;
  auto ws = WorkingSet::Create(*mapped->store, mapped->version, host->get(), o);
  ASSERT_TRUE(ws.ok()) << ws.status().ToString();
  // The same workload as tokenizer ids (the same trace positions), handed over raw.
  DeviceIdsSubmitter dev;
  RunAndCompare(**ws, Workload(test::BrownRaw()), expect_,
                [&](WorkingSet& w, std::span<const SequenceInput> b) { return dev.Submit(w, b, DeviceIds::kRaw); });
}

TEST_F(WorkingSetTest, ABadDeviceIdFailsItsStepAndItsSequenceOnly) {
  WorkingSet* ws = DevicePipeline(WorkingSetOptions{}.cache_bytes);
  ASSERT_NE(ws, nullptr);
  const SequenceId a = *ws->CreateSequence();
  const SequenceId b = *ws->CreateSequence();
  const auto vocab = static_cast<std::int32_t>(ws->layout().compressed_vocab_size());
  const std::vector<std::int32_t> good = {5, 6};
  const std::vector<std::int32_t> bad = {7, vocab + 3};
  DeviceIdsSubmitter dev;
  Stream stream;
  auto sid = dev.Submit(*ws, std::vector<SequenceInput>{{a, good, {}}, {b, bad, {}}}, DeviceIds::kCompressed);
  ASSERT_TRUE(sid.ok()) << sid.status().ToString();
  for (int l = 0; l < ws->layout().num_layers(); ++l) {
    ASSERT_TRUE(ws->Wait(*sid, l, stream.s).ok());
    ASSERT_TRUE(ws->Done(*sid, l, stream.s).ok());
  }
  const Status st = ws->LayerStatus(*sid, 0);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("sequence " + std::to_string(b)), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find(std::to_string(vocab + 3)), std::string::npos) << st.ToString();
  // The bad token's rows were read as a DEAD position: zeros.
  auto out = ws->Output(*sid, 0);
  ASSERT_TRUE(out.ok());
  const std::size_t per_token = static_cast<std::size_t>(out->columns) * out->row_bytes;
  Pinned<std::byte> rows(per_token);
  ASSERT_EQ(cudaMemcpy(rows.p, out->rows + 3 * per_token, per_token, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_TRUE(std::all_of(rows.p, rows.p + per_token, [](std::byte x) { return x == std::byte{0}; }));
  ASSERT_TRUE(ws->Finish(*sid).ok());
  // Sequence b is failed until released; sequence a goes on.
  const Status again = ws->Submit(std::vector<SequenceInput>{{b, good, {}}}).status();
  EXPECT_EQ(again.code(), StatusCode::kInvalidArgument) << again.ToString();
  EXPECT_EQ(ws->Fork(b).status().code(), StatusCode::kInvalidArgument);
  auto next = ws->Submit(std::vector<SequenceInput>{{a, good, {}}});
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  for (int l = 0; l < ws->layout().num_layers(); ++l) {
    ASSERT_TRUE(ws->Wait(*next, l, stream.s).ok());
    ASSERT_TRUE(ws->Done(*next, l, stream.s).ok());
    EXPECT_TRUE(ws->LayerStatus(*next, l).ok());
  }
  ASSERT_TRUE(ws->Release(b).ok());
}

TEST_F(WorkingSetTest, DeviceIdsNeedTheDevicePipelineAnUncapturedProducerAndForRawIdsATokenMap) {
  WorkingSetOptions staged;
  staged.path = MissPath::kStaged;
  auto ws = Make(nullptr, staged);
  ASSERT_NE(ws, nullptr);
  std::int32_t* d_ids = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_ids), 4), cudaSuccess);
  Stream stream;
  const SequenceId a = *ws->CreateSequence();
  const std::vector<DeviceSequenceInput> batch = {{a, 1, {}}};
  EXPECT_EQ(ws->SubmitDeviceIds(batch, d_ids, DeviceIds::kCompressed, stream.s).status().code(),
            StatusCode::kFailedPrecondition);
  WorkingSet* dws = DevicePipeline(WorkingSetOptions{}.cache_bytes);
  ASSERT_NE(dws, nullptr);
  const SequenceId b = *dws->CreateSequence();
  const std::vector<DeviceSequenceInput> batch_b = {{b, 1, {}}};
  const Status raw = dws->SubmitDeviceIds(batch_b, d_ids, DeviceIds::kRaw, stream.s).status();
  EXPECT_EQ(raw.code(), StatusCode::kFailedPrecondition) << raw.ToString();  // this store keeps no token map
  // A producer capturing a graph.
  ASSERT_EQ(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  const Status captured = dws->SubmitDeviceIds(batch_b, d_ids, DeviceIds::kCompressed, stream.s).status();
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream.s, &graph), cudaSuccess);
  cudaGraphDestroy(graph);
  EXPECT_EQ(captured.code(), StatusCode::kFailedPrecondition) << captured.ToString();
  EXPECT_NE(captured.message().find("capturing"), std::string::npos) << captured.ToString();
  cudaFree(d_ids);
}

TEST_F(WorkingSetTest, DevicePipelineWithHbmRegionsMatches) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.cache_bytes = 1ULL << 20;
  o.path = MissPath::kDevice;
  for (int c = 0; c < f_->store->layout().columns(); ++c) o.hbm_regions.push_back({0, c});
  auto ws = Make(host.get(), o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  ASSERT_TRUE(ws->Synchronize().ok());
  const auto st = ws->stats();
  EXPECT_GT(st.hbm_region_hits, 0U);
  EXPECT_GT(st.zero_copy_rows, 0U);  // layer 1 is read from the host tier
}

TEST_F(WorkingSetTest, EveryRegionInHbmRunsOnTheDeviceWithoutAHostTier) {
  WorkingSetOptions o;
  o.cache_bytes = 0;
  o.path = MissPath::kAuto;
  for (int l = 0; l < f_->store->layout().num_layers(); ++l) {
    for (int c = 0; c < f_->store->layout().columns(); ++c) o.hbm_regions.push_back({l, c});
  }
  auto ws = Make(nullptr, o);
  ASSERT_NE(ws, nullptr);
  EXPECT_EQ(ws->stats().path, MissPath::kDevice) << ws->stats().path_reason;
  RunAndCompare(*ws, steps_, expect_);
}

TEST_F(WorkingSetTest, TheDevicePipelineWithoutResidentRegionsIsRefused) {
  WorkingSetOptions o;
  o.path = MissPath::kDevice;
  o.max_tokens = 512;
  auto ws = WorkingSet::Create(*f_->store, f_->version, nullptr, o);
  ASSERT_FALSE(ws.ok());
  EXPECT_EQ(ws.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(ws.status().message().find("column"), std::string::npos) << ws.status().ToString();
}

TEST_F(WorkingSetTest, DevicePipelineStaysWithinTheBudget) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.cache_bytes = 8ULL << 20;
  o.device_budget_bytes = 64ULL << 20;
  o.path = MissPath::kDevice;
  auto ws = Make(host.get(), o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  EXPECT_LE(ws->stats().device_bytes, o.device_budget_bytes);
}

TEST_F(WorkingSetTest, DevicePipelineLookupAgreesWithTheCachedRows) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.cache_bytes = 64ULL << 20;  // ~14 K sets of 16: no set overflows, every row read is held
  o.path = MissPath::kDevice;
  auto ws = Make(host.get(), o);
  ASSERT_NE(ws, nullptr);
  RunAndCompare(*ws, steps_, expect_);
  ASSERT_TRUE(ws->Synchronize().ok());
  EXPECT_EQ(ws->stats().evictions, 0U);
  ExpectDeviceLookupsFindThePrefillRows(*ws, steps_);
}

TEST_F(WorkingSetTest, DestroyingADevicePipelineWithStepsNeverConsumedReturns) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.steps_in_flight = 2;
  o.path = MissPath::kDevice;
  auto ws = Make(host.get(), o);
  ASSERT_NE(ws, nullptr);
  auto seq = *ws->CreateSequence();
  for (int s = 0; s < 4; ++s) {
    std::vector<SequenceInput> batch{{seq, steps_[static_cast<std::size_t>(s) + 1].tokens[0], {}}};
    ASSERT_TRUE(ws->Submit(batch).ok());
  }
  ws.reset();  // must return
  SUCCEED();
}

TEST_F(WorkingSetTest, DevicePipelineInRowOrderMatchesTheCpuBackend) {
  // Every layer hashed, sorted by row, then resolved: hits, misses and admissions in sorted order.
  const auto st = RunDevicePipelineWithSmallCache(1);
  EXPECT_EQ(st.path, MissPath::kDevice);
  EXPECT_GT(st.cache_hits, 0U);
  EXPECT_GT(st.evictions, 0U);
}

TEST_F(WorkingSetTest, DevicePipelineInRowOrderSixteenLookupsAWarpMatchesTheCpuBackend) {
  // A warp takes 16 sorted lookups and bumps a way's read count once per run of hits on it.
  const auto st = RunDevicePipelineWithSmallCache(1, 16);
  EXPECT_EQ(st.path, MissPath::kDevice);
  EXPECT_GT(st.cache_hits, 0U);
  EXPECT_GT(st.evictions, 0U);
}

TEST_F(WorkingSetTest, AnOddSortedLookupsPerWarpIsRefused) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.path = MissPath::kDevice;
  o.sorted_lookups_per_warp = 3;
  auto ws = WorkingSet::Create(*f_->store, f_->version, host.get(), o);
  ASSERT_FALSE(ws.ok());
  EXPECT_EQ(ws.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(ws.status().message().find("sorted_lookups_per_warp"), std::string::npos) << ws.status().ToString();
}

TEST_F(WorkingSetTest, DeviceTimingFillsTheDeviceTimesOnlyWhenOn) {
  auto host = ResidentTier();
  for (const DeviceTiming timing : {DeviceTiming::kOn, DeviceTiming::kOff}) {
    WorkingSetOptions o;
    o.path = MissPath::kDevice;
    o.fuse_lookups = 0;
    o.sort_lookups_from = 1;  // every layer sorted: its sort is timed too
    o.device_timing = timing;
    auto ws = Make(host.get(), o);
    ASSERT_NE(ws, nullptr);
    RunAndCompare(*ws, {steps_.begin(), steps_.begin() + 4}, {expect_.begin(), expect_.begin() + 4});
    ASSERT_TRUE(ws->Synchronize().ok());
    // The finisher thread accounts a step's device times once it is finished and done: wait for all four.
    WorkingSetStats st = ws->stats();
    for (int i = 0; i < 500 && timing == DeviceTiming::kOn && (st.assemble_seconds == 0 || st.sort_seconds == 0); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      st = ws->stats();
    }
    if (timing == DeviceTiming::kOn) {
      EXPECT_GT(st.assemble_seconds, 0.0);
      EXPECT_GT(st.sort_seconds, 0.0);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      st = ws->stats();
      EXPECT_EQ(st.assemble_seconds, 0.0);
      EXPECT_EQ(st.sort_seconds, 0.0);
    }
  }
}

TEST_F(WorkingSetTest, TheDevicePipelineKeepsNoPinnedStaging) {
  auto host = ResidentTier();
  WorkingSetOptions o;
  o.path = MissPath::kDevice;
  o.prefetch.staging_bytes = 64ULL << 20;
  auto ws = Make(host.get(), o);
  ASSERT_NE(ws, nullptr);
  EXPECT_EQ(ws->stats().host.staging.budget_bytes, 4096U);  // a heap token, not the 64 MiB asked for
  RunAndCompare(*ws, {steps_.begin(), steps_.begin() + 3}, {expect_.begin(), expect_.begin() + 3});
}

}  // namespace
}  // namespace engram::gpu
