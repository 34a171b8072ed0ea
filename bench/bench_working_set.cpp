// bench_working_set: the GPU working set on a store, driven by the real trace, with its raw baselines
// measured in the same run:
//   transfer: lookups delivered from a resident host tier (pinned, mapped) into the layers' device outputs
//     per second, with no HBM cache (every distinct row crosses PCIe), by the staged and zero-copy paths
//     and the device pipeline (hashing, lookups and reads all on the GPU);
//     baselines on the same lookups: a plain CPU gather (same threads) into pinned memory + one
//     cudaMemcpyAsync per layer, and a plain zero-copy gather kernel (one warp per row).
//   hit: the same steps replayed with every row in the HBM cache (the host-planned cache, and the device
//     pipeline's set cache); baseline: a plain device gather kernel
//     of the same lookups from a device array (device time of the assembly vs the gather, and end to end).
//   loop: decode steps (B sequences x 1 token) and prefill chunks (16,384 tokens) through the whole
//     pipeline, with per-step time split into hashing, tier lookup, I/O, host gather, copy and assembly,
//     and per layer the time from Submit until its output is on the device (what a layer needing its rows
//     at once would wait), p50/p99.
//
//   bench_working_set --store DIR [--threads 16] [--seconds 2] [--sections transfer,hit,loop]
//                     [--loop-host resident|cache] [--loop-path auto|staged|zero-copy|device]
//                     [--host-cache BYTES] [--hbm-cache BYTES] [--fuse LOOKUPS] [--sort LOOKUPS] [--sorted-per-warp N]
//                     [--grow-huge-pages 0|1]
// Sections: transfer, hit, loop, reach (the plain zero-copy kernel over random rows of a growing span of
// the resident tier: how the GPU's reads of mapped host memory slow down as they spread).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../core/percentile.hpp"
#include "../core/thread_pool.hpp"
#include "../gpu/working_set_kernels.hpp"
#include "bench_cuda.hpp"
#include "bench_data.hpp"
#include "engram/gpu/host_memory.hpp"
#include "engram/gpu/working_set.hpp"
#include "engram/hasher.hpp"

namespace {

using engram::bench::Clock;
using engram::bench::Must;
using engram::bench::Since;
using engram::detail::Percentile;
namespace gpu = engram::gpu;
namespace memory = engram::memory;
namespace prefetch = engram::prefetch;

struct Args {
  std::string store;
  std::uint32_t threads = 16;
  double seconds = 2;
  std::string sections = "transfer,hit,loop";
  std::string loop_host = "resident";
  std::uint64_t host_cache = 4ULL << 30;
  std::uint64_t hbm_cache = 1ULL << 30;
  gpu::MissPath loop_path = gpu::MissPath::kAuto;
  bool grow_huge_pages = false;  // the resident tier on explicit huge pages, growing the pool (root)
  std::string shapes;            // transfer and hit shapes whose name contains one of these (comma-separated)
  // The hit section's plain gathers: "slots" (the rows where the cache holds them), "compact" (the rows
  // copied into an array of the largest layer's size, as before session 8), or "both".
  std::string hit_baseline = "both";
};

// WorkingSetOptions::fuse_lookups for every working set of the run (--fuse).
std::uint64_t g_fuse_lookups = gpu::WorkingSetOptions{}.fuse_lookups;
// WorkingSetOptions::sort_lookups_from (--sort).
std::uint64_t g_sort_lookups_from = gpu::WorkingSetOptions{}.sort_lookups_from;
// WorkingSetOptions::sorted_lookups_per_warp (--sorted-per-warp).
std::uint32_t g_sorted_per_warp = gpu::WorkingSetOptions{}.sorted_lookups_per_warp;

struct Shape {
  std::string name;
  std::size_t sequences;
  std::size_t tokens;
};

// The steps of a shape: sequences walk consecutive parts of the trace.
struct Steps {
  std::vector<std::vector<std::vector<std::int32_t>>> tokens;  // [step][sequence]
};

Steps MakeSteps(const Shape& sh, const std::vector<std::int32_t>& ids, std::size_t count) {
  Steps s;
  const std::size_t stride = ids.size() / sh.sequences;
  for (std::size_t k = 0; k < count; ++k) {
    std::vector<std::vector<std::int32_t>> step;
    const std::size_t pos = (k * sh.tokens) % (stride - sh.tokens);
    for (std::size_t q = 0; q < sh.sequences; ++q) {
      const auto b = ids.begin() + static_cast<std::ptrdiff_t>(q * stride + pos);
      step.emplace_back(b, b + static_cast<std::ptrdiff_t>(sh.tokens));
    }
    s.tokens.push_back(std::move(step));
  }
  return s;
}

// Row ids of every lookup of every step and layer, as fresh sequences see them: [step][layer][lookup].
std::vector<std::vector<std::vector<std::int64_t>>> HashSteps(const engram::Layout& layout, const Steps& s) {
  std::vector<engram::LayerHasher> h;
  h.reserve(static_cast<std::size_t>(layout.num_layers()));
  for (int l = 0; l < layout.num_layers(); ++l) h.push_back(Must(engram::LayerHasher::Create(layout, l), "hasher"));
  std::vector<std::vector<std::vector<std::int64_t>>> out;
  const auto cols = static_cast<std::size_t>(layout.columns());
  for (const auto& step : s.tokens) {
    std::vector<std::vector<std::int64_t>> per_layer;
    for (int l = 0; l < layout.num_layers(); ++l) {
      std::vector<std::int64_t> rows;
      for (const auto& seq : step) {
        std::vector<std::int64_t> r(seq.size() * cols);
        Must(engram::HashFreshSequences(h[static_cast<std::size_t>(l)], seq, 0, r), "hash");
        rows.insert(rows.end(), r.begin(), r.end());
      }
      per_layer.push_back(std::move(rows));
    }
    out.push_back(std::move(per_layer));
  }
  return out;
}

// The rows of decode steps (one token per sequence, cycled) as the working set's sequences read them once
// past the first pass: each token's history is its sequence's tokens of the steps before, cyclically.
std::vector<std::vector<std::vector<std::int64_t>>> HashDecodeCyclic(const engram::Layout& layout, const Steps& s) {
  const auto hist = static_cast<std::size_t>(layout.max_ngram() - 1);
  const std::size_t k_steps = s.tokens.size();
  const auto cols = static_cast<std::size_t>(layout.columns());
  std::vector<std::vector<std::vector<std::int64_t>>> out(k_steps);
  for (int l = 0; l < layout.num_layers(); ++l) {
    const auto h = Must(engram::LayerHasher::Create(layout, l), "hasher");
    for (std::size_t k = 0; k < k_steps; ++k) {
      std::vector<std::int64_t> rows;
      for (std::size_t q = 0; q < s.tokens[k].size(); ++q) {
        std::vector<std::int32_t> w;
        for (std::size_t j = hist; j >= 1; --j) w.push_back(s.tokens[(k + k_steps * hist - j) % k_steps][q].at(0));
        w.push_back(s.tokens[k][q].at(0));
        std::vector<std::int64_t> r(w.size() * cols);
        Must(engram::HashFreshSequences(h, w, 0, r), "hash");
        rows.insert(rows.end(), r.end() - static_cast<std::ptrdiff_t>(cols), r.end());
      }
      out[k].push_back(std::move(rows));
    }
  }
  return out;
}

struct RunResult {
  double lookups_per_s = 0;
  std::uint64_t steps = 0;
  std::vector<std::vector<double>> ready_s;  // per layer: Submit -> output on the device
  gpu::WorkingSetStats before, after;
  // Host seconds of the loop's parts: sequences (create, release), Submit, the consumer's Wait/Done calls,
  // retiring (waiting for the oldest step's events, Finish).
  double seq_s = 0, submit_s = 0, consume_s = 0, retire_s = 0;
};

// Runs `steps` (cycled) through the working set for `seconds` (and at least min_steps steps). The consumer
// stream waits per layer and releases at once. depth 1: each step is waited for on the host before the
// next is submitted (ready = Submit -> output on the device); depth 2: step k+1 is submitted before step k
// is waited for (double buffering: what an engine does; ready times then include the overlap).
RunResult Drive(gpu::WorkingSet& ws, const Steps& steps, double seconds, bool fresh_each_step, std::size_t min_steps,
                int depth) {
  const int layers = ws.layout().num_layers();
  cudaStream_t stream = nullptr;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<cudaEvent_t> ev(static_cast<std::size_t>(layers) * 2);
  for (auto& e : ev) CK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  RunResult r;
  r.ready_s.resize(static_cast<std::size_t>(layers));
  r.before = ws.stats();
  std::vector<engram::SequenceId> seqs;
  std::uint64_t lookups = 0;
  struct InFlight {
    prefetch::StepId id;
    Clock::time_point submitted;
    std::size_t events;  // first of its layers' events
  };
  std::deque<InFlight> q;
  auto retire = [&] {
    const auto t_r = Clock::now();
    const InFlight f = q.front();
    q.pop_front();
    for (int l = 0; l < layers; ++l) {
      CK(cudaEventSynchronize(ev[f.events + static_cast<std::size_t>(l)]));
      r.ready_s[static_cast<std::size_t>(l)].push_back(Since(f.submitted));
    }
    Must(ws.Finish(f.id), "finish");
    r.retire_s += Since(t_r);
  };
  const auto t0 = Clock::now();
  std::size_t k = 0;
  while (Since(t0) < seconds || k < min_steps) {
    const auto& step = steps.tokens[k % steps.tokens.size()];
    const auto t_seq = Clock::now();
    if (fresh_each_step || seqs.empty()) {
      for (auto s : seqs) (void)ws.Release(s);
      seqs.clear();
      for (std::size_t q2 = 0; q2 < step.size(); ++q2) seqs.push_back(Must(ws.CreateSequence(), "sequence"));
    }
    std::vector<prefetch::SequenceInput> batch;
    for (std::size_t q2 = 0; q2 < step.size(); ++q2) batch.push_back({seqs[q2], step[q2], {}});
    const auto s0 = Clock::now();
    r.seq_s += std::chrono::duration<double>(s0 - t_seq).count();
    const auto sid = Must(ws.Submit(batch), "submit");
    const auto t_c = Clock::now();
    r.submit_s += std::chrono::duration<double>(t_c - s0).count();
    const std::size_t e0 = (k % 2) * static_cast<std::size_t>(layers);
    for (int l = 0; l < layers; ++l) {
      Must(ws.Wait(sid, l, stream), "wait");
      CK(cudaEventRecord(ev[e0 + static_cast<std::size_t>(l)], stream));
      Must(ws.Done(sid, l, stream), "done");
    }
    r.consume_s += Since(t_c);
    q.push_back({sid, s0, e0});
    while (static_cast<int>(q.size()) >= depth) retire();
    std::size_t n = 0;
    for (const auto& t : step) n += t.size();
    lookups += n * static_cast<std::size_t>(ws.layout().columns() * layers);
    ++k;
  }
  while (!q.empty()) retire();
  CK(cudaStreamSynchronize(stream));
  r.lookups_per_s = static_cast<double>(lookups) / Since(t0);
  r.steps = k;
  // Let the finisher account the last steps' device times.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  r.after = ws.stats();
  for (auto e : ev) cudaEventDestroy(e);
  cudaStreamDestroy(stream);
  return r;
}

// Baseline 1: CPU gather of every lookup (same threads) into pinned memory + one copy per layer.
double CpuGatherCopy(const memory::HostTier& host, const engram::Layout& layout,
                     const std::vector<std::vector<std::vector<std::int64_t>>>& rows, std::uint32_t threads,
                     double seconds) {
  const std::size_t rb = layout.row_bytes();
  const auto cols = static_cast<std::size_t>(layout.columns());
  std::size_t most = 0;
  for (const auto& s : rows) {
    for (const auto& l : s) most = std::max(most, l.size());
  }
  void* pinned = nullptr;
  void* dev = nullptr;
  CK(cudaHostAlloc(&pinned, most * rb * 2, cudaHostAllocDefault));
  CK(cudaMalloc(&dev, most * rb * 2));
  cudaStream_t st = nullptr;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t done[2];
  for (auto& e : done) CK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  engram::detail::ThreadPool pool(std::max<std::uint32_t>(threads, 1) - 1);
  std::uint64_t n = 0;
  std::size_t k = 0, half = 0;
  const auto t0 = Clock::now();
  while (Since(t0) < seconds || k < 3) {
    const auto& step = rows[k % rows.size()];
    for (std::size_t l = 0; l < step.size(); ++l) {
      const auto& r = step[l];
      auto* out = static_cast<std::byte*>(pinned) + half * most * rb;
      CK(cudaEventSynchronize(done[half]));  // the copy from this half is done
      constexpr std::size_t kChunk = 4096;
      pool.ParallelFor((r.size() + kChunk - 1) / kChunk, [&](std::size_t c) {
        for (std::size_t i = c * kChunk; i < std::min(r.size(), (c + 1) * kChunk); ++i) {
          std::memcpy(out + i * rb, host.ResidentRow(static_cast<int>(l), static_cast<int>(i % cols), r[i]), rb);
        }
      });
      CK(cudaMemcpyAsync(static_cast<std::byte*>(dev) + half * most * rb, out, r.size() * rb, cudaMemcpyHostToDevice,
                         st));
      CK(cudaEventRecord(done[half], st));
      half ^= 1;
      n += r.size();
    }
    ++k;
  }
  CK(cudaStreamSynchronize(st));
  const double rate = static_cast<double>(n) / Since(t0);
  for (auto e : done) cudaEventDestroy(e);
  cudaStreamDestroy(st);
  cudaFree(dev);
  cudaFreeHost(pinned);
  return rate;
}

// Baseline 2 (zero-copy) and the HBM baseline: a plain gather kernel over per-lookup source addresses.
// How KernelGather times its launches: all of a pass between two events (launch gaps hidden, the best
// pass), or each launch between its own two events, summed over every pass, as the working set times its
// resolve kernels (a small kernel's span then includes the events' own cost, as the working set's does).
enum class GatherTiming { kBackToBack, kPerLaunch };

double KernelGather(const std::vector<std::vector<std::uint64_t>>& srcs_per_layer_step, std::uint32_t row_bytes,
                    double seconds, GatherTiming timing = GatherTiming::kBackToBack) {
  std::size_t most = 0;
  for (const auto& s : srcs_per_layer_step) most = std::max(most, s.size());
  std::vector<std::uint64_t*> d_src(srcs_per_layer_step.size());
  for (std::size_t i = 0; i < d_src.size(); ++i) {
    CK(cudaMalloc(reinterpret_cast<void**>(&d_src[i]), std::max<std::size_t>(8, srcs_per_layer_step[i].size() * 8)));
    CK(cudaMemcpy(d_src[i], srcs_per_layer_step[i].data(), srcs_per_layer_step[i].size() * 8, cudaMemcpyHostToDevice));
  }
  std::byte* out = nullptr;
  CK(cudaMalloc(reinterpret_cast<void**>(&out), most * row_bytes));
  cudaStream_t st = nullptr;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  double best = 0;
  const auto t0 = Clock::now();
  if (timing == GatherTiming::kPerLaunch) {
    double total_s = 0;
    std::uint64_t total_n = 0;
    while (Since(t0) < seconds) {
      for (std::size_t i = 0; i < d_src.size(); ++i) {
        CK(cudaEventRecord(e0, st));
        Must(gpu::kernels::LaunchGather(d_src[i], srcs_per_layer_step[i].size(), out, row_bytes, st), "gather");
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        total_s += ms / 1e3;
        total_n += srcs_per_layer_step[i].size();
      }
    }
    best = total_s > 0 ? static_cast<double>(total_n) / total_s : 0;
  }
  while (timing == GatherTiming::kBackToBack && Since(t0) < seconds) {
    std::uint64_t n = 0;
    CK(cudaEventRecord(e0, st));
    for (std::size_t i = 0; i < d_src.size(); ++i) {
      Must(gpu::kernels::LaunchGather(d_src[i], srcs_per_layer_step[i].size(), out, row_bytes, st), "gather");
      n += srcs_per_layer_step[i].size();
    }
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    best = std::max(best, static_cast<double>(n) / (ms / 1e3));
  }
  for (auto p : d_src) cudaFree(p);
  cudaFree(out);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(st);
  return best;
}

// The device addresses of the cache slots holding each lookup's row ([step][layer] -> [lookup]), looked up
// on the device in the working set's HBM cache; a row not cached gets `fallback`'s address and is counted.
std::vector<std::vector<std::uint64_t>> SlotSources(gpu::WorkingSet& ws,
                                                    const std::vector<std::vector<std::vector<std::int64_t>>>& rows,
                                                    std::uint64_t& not_cached) {
  Must(ws.Synchronize(), "synchronize");
  std::size_t most = 0;
  for (const auto& s : rows) {
    for (const auto& l : s) most = std::max(most, l.size());
  }
  std::int64_t* d_rows = nullptr;
  std::int32_t* d_slots = nullptr;
  CK(cudaMalloc(reinterpret_cast<void**>(&d_rows), std::max<std::size_t>(most, 1) * 8));
  CK(cudaMalloc(reinterpret_cast<void**>(&d_slots), std::max<std::size_t>(most, 1) * 4));
  std::vector<std::vector<std::uint64_t>> out;
  std::vector<std::int32_t> slots;
  not_cached = 0;
  for (const auto& s : rows) {
    for (std::size_t l = 0; l < s.size(); ++l) {
      const auto n = static_cast<std::uint32_t>(s[l].size());
      CK(cudaMemcpy(d_rows, s[l].data(), n * 8ULL, cudaMemcpyHostToDevice));
      Must(ws.LookupAsync(static_cast<int>(l), d_rows, n, d_slots, nullptr), "lookup");
      slots.resize(n);
      CK(cudaMemcpy(slots.data(), d_slots, n * 4ULL, cudaMemcpyDeviceToHost));
      std::vector<std::uint64_t> src(n);
      for (std::uint32_t i = 0; i < n; ++i) {
        const std::byte* p = ws.CacheSlotRow(slots[i]);
        if (p == nullptr) {
          ++not_cached;
          p = ws.CacheSlotRow(0);
        }
        src[i] = reinterpret_cast<std::uint64_t>(p);
      }
      out.push_back(std::move(src));
    }
  }
  cudaFree(d_rows);
  cudaFree(d_slots);
  return out;
}

std::unique_ptr<gpu::WorkingSet> MakeWs(const engram::store::Store& store, const engram::store::VersionHandle& v,
                                        memory::HostTier* host, gpu::MissPath path, std::uint64_t cache,
                                        std::uint32_t threads, std::int64_t max_tokens, bool bf16 = true,
                                        gpu::DeviceTiming timing = gpu::DeviceTiming::kOn) {
  gpu::WorkingSetOptions o;
  o.device_timing = timing;
  o.bf16_output = bf16;
  o.path = path;
  o.cache_bytes = cache;
  o.max_tokens = max_tokens;
  o.fuse_lookups = g_fuse_lookups;
  o.sort_lookups_from = g_sort_lookups_from;
  o.sorted_lookups_per_warp = g_sorted_per_warp;
  o.prefetch.gather_threads = threads;
  o.prefetch.staging_bytes = 2ULL << 30;
  return Must(gpu::WorkingSet::Create(store, v, host, o), "working set");
}

void PrintSplit(const char* name, const RunResult& r, int layers) {
  const auto& a = r.after;
  const auto& b = r.before;
  double hash = 0, lookup = 0, disk = 0, gather = 0;
  for (std::size_t l = 0; l < a.host.layers.size(); ++l) {
    hash += a.host.layers[l].hash_seconds - b.host.layers[l].hash_seconds;
    lookup += a.host.layers[l].lookup_seconds - b.host.layers[l].lookup_seconds;
    disk += a.host.layers[l].disk_seconds - b.host.layers[l].disk_seconds;
    gather += a.host.layers[l].gather_seconds - b.host.layers[l].gather_seconds;
  }
  // The device pipeline hashes large layers in its sort (device time), the rest inside its resolve kernel.
  hash += a.sort_seconds - b.sort_seconds;
  const double n = static_cast<double>(r.steps);
  const double us = 1e6 / n;
  std::printf("%-26s %6.0f %9.3g  %7.0f %7.0f %7.0f %7.0f %7.0f %7.0f", name, n, r.lookups_per_s, hash * us,
              lookup * us, disk * us, gather * us, (a.copy_seconds - b.copy_seconds) * us,
              (a.assemble_seconds - b.assemble_seconds) * us);
  for (int l = 0; l < layers; ++l) {
    auto v = r.ready_s[static_cast<std::size_t>(l)];
    std::printf("  L%d %7.0f/%7.0f", l, 1e6 * Percentile(v, 0.5), 1e6 * Percentile(v, 0.99));
  }
  const double hits = static_cast<double>((a.cache_hits - b.cache_hits));
  const double all =
      hits + static_cast<double>((a.staged_rows - b.staged_rows) + (a.zero_copy_rows - b.zero_copy_rows) +
                                 (a.hbm_region_hits - b.hbm_region_hits));
  std::printf("  hbm hit %4.1f%%  host seq/submit/consume/retire %.0f/%.0f/%.0f/%.0f\n",
              all > 0 ? 100 * hits / all : 0.0, r.seq_s * us, r.submit_s * us, r.consume_s * us, r.retire_s * us);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const std::string v = argv[i + 1];
    if (k == "--store")
      a.store = v;
    else if (k == "--threads")
      a.threads = static_cast<std::uint32_t>(std::stoul(v));
    else if (k == "--seconds")
      a.seconds = std::stod(v);
    else if (k == "--sections")
      a.sections = v;
    else if (k == "--loop-host")
      a.loop_host = v;
    else if (k == "--host-cache")
      a.host_cache = std::stoull(v);
    else if (k == "--hbm-cache")
      a.hbm_cache = std::stoull(v);
    else if (k == "--fuse")
      g_fuse_lookups = std::stoull(v);
    else if (k == "--sort")
      g_sort_lookups_from = std::stoull(v);
    else if (k == "--sorted-per-warp")
      g_sorted_per_warp = static_cast<std::uint32_t>(std::stoul(v));
    else if (k == "--shapes")
      a.shapes = v;
    else if (k == "--hit-baseline")
      a.hit_baseline = v;
    else if (k == "--grow-huge-pages")
      a.grow_huge_pages = v == "1";
    else if (k == "--loop-path")
      a.loop_path = v == "staged"      ? gpu::MissPath::kStaged
                    : v == "zero-copy" ? gpu::MissPath::kZeroCopy
                    : v == "device"    ? gpu::MissPath::kDevice
                                       : gpu::MissPath::kAuto;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (a.store.empty()) {
    std::fprintf(stderr,
                 "usage: bench_working_set --store DIR [--threads 16] [--seconds 2] [--sections transfer,hit,loop] "
                 "[--loop-host resident|cache] [--loop-path auto|staged|zero-copy|device] [--host-cache BYTES] "
                 "[--hbm-cache BYTES] [--fuse LOOKUPS] [--sort LOOKUPS] [--sorted-per-warp N] [--grow-huge-pages 0|1] "
                 "[--shapes decode,prefill] [--hit-baseline slots|compact|both]\n");
    return 2;
  }
  auto store = Must(engram::store::Store::Open(a.store), "open store");
  const engram::Layout& layout = store->layout();
  auto v = Must(store->Pin(Must(store->Latest(), "latest")), "pin");
  const auto ids = engram::bench::LoadTraceCompressed();
  const auto dev = Must(gpu::CurrentDevice(), "GPU");
  const int layers = layout.num_layers();
  std::printf("store %s (%s, %u B rows), GPU %s, %u host threads, %.1f s per point\n", a.store.c_str(),
              layout.name().c_str(), layout.row_bytes(), dev.name.c_str(), a.threads, a.seconds);

  auto registrar = Must(gpu::MakeCudaHostRegistrar(), "registrar");
  std::unique_ptr<memory::HostTier> resident;
  auto need_resident = [&] {
    if (resident) return;
    memory::HostTierOptions ho;
    ho.resident = memory::ResidentRegions::kAll;
    ho.arena.registrar = registrar.get();
    if (a.grow_huge_pages) {
      ho.arena.huge_pages = memory::HugePages::kExplicit;
      ho.arena.reserve = memory::HugePageReserve::kGrowPool;
    }
    resident = Must(memory::HostTier::Create(layout, ho), "host tier");
    const auto t0 = Clock::now();
    Must(resident->LoadResident(*store, v), "load");
    std::printf("resident host tier: %.2f GiB loaded and pinned in %.1f s (%s pages)\n",
                static_cast<double>(resident->stats().resident_bytes) / (1 << 30), Since(t0),
                std::string(memory::PagePathName(resident->arena_report().path)).c_str());
  };
  std::vector<std::pair<std::string, RunResult>> transfer_splits;
  std::vector<Shape> shapes;
  for (const Shape& sh :
       std::vector<Shape>{{"decode B=64", 64, 1}, {"decode B=256", 256, 1}, {"prefill 16384", 1, 16384}}) {
    bool wanted = a.shapes.empty();
    for (std::size_t at = 0; !wanted && at <= a.shapes.size();) {
      const std::size_t comma = std::min(a.shapes.find(',', at), a.shapes.size());
      const std::string part = a.shapes.substr(at, comma - at);
      wanted = !part.empty() && sh.name.find(part) != std::string::npos;
      at = comma + 1;
    }
    if (wanted) shapes.push_back(sh);
  }

  if (a.sections.find("transfer") != std::string::npos) {
    need_resident();
    std::printf(
        "\n== transfer: host tier -> device outputs (rows), no HBM cache, 2 steps in flight (lookups/s; "
        "baselines on the same lookups)\n");
    std::printf("%-16s %12s %12s %12s %12s %12s %8s %8s\n", "shape", "cpu+copy", "zero-copy k", "ws staged",
                "ws zero-copy", "ws device", "best/bl", "target");
    std::vector<std::pair<std::string, RunResult>> splits;
    for (const auto& sh : shapes) {
      const Steps steps = MakeSteps(sh, ids, sh.tokens > 1 ? 6 : 64);
      // Decode: sequences continue through the cycled steps (as an engine's do), and the baselines read the
      // rows they read once past the first pass. Prefill: a fresh sequence per chunk, for all of them.
      const bool decode = sh.tokens == 1;
      const auto rows = decode ? HashDecodeCyclic(layout, steps) : HashSteps(layout, steps);
      const double cpu = CpuGatherCopy(*resident, layout, rows, a.threads, a.seconds);
      std::vector<std::vector<std::uint64_t>> zsrc;
      for (const auto& s : rows) {
        for (std::size_t l = 0; l < s.size(); ++l) {
          std::vector<std::uint64_t> v2(s[l].size());
          for (std::size_t i = 0; i < s[l].size(); ++i) {
            const auto* p = resident->ResidentRow(static_cast<int>(l), static_cast<int>(i % layout.columns()), s[l][i]);
            v2[i] = reinterpret_cast<std::uint64_t>(Must(gpu::MappedDevicePointer(const_cast<std::byte*>(p)), "map"));
          }
          zsrc.push_back(std::move(v2));
        }
      }
      const double zk = KernelGather(zsrc, layout.row_bytes(), a.seconds);
      const auto max_tokens = static_cast<std::int64_t>(sh.sequences * sh.tokens);
      // Rows only, as the baselines, and the baselines' rows (decode past its first pass); device work untimed
      // (DeviceTiming::kOff, the default: timing events cost a decode step ~8 us), so the copy / asm columns of
      // these runs read 0.
      auto ws1 = MakeWs(*store, v, resident.get(), gpu::MissPath::kStaged, 0, a.threads, max_tokens, false,
                        gpu::DeviceTiming::kOff);
      const RunResult r1 = Drive(*ws1, steps, a.seconds, !decode, 3, 2);
      ws1.reset();
      auto ws2 = MakeWs(*store, v, resident.get(), gpu::MissPath::kZeroCopy, 0, a.threads, max_tokens, false,
                        gpu::DeviceTiming::kOff);
      const RunResult r2 = Drive(*ws2, steps, a.seconds, !decode, 3, 2);
      ws2.reset();
      auto ws3 = MakeWs(*store, v, resident.get(), gpu::MissPath::kDevice, 0, a.threads, max_tokens, false,
                        gpu::DeviceTiming::kOff);
      const RunResult r3 = Drive(*ws3, steps, a.seconds, !decode, 3, 2);
      ws3.reset();
      const double best = std::max({r1.lookups_per_s, r2.lookups_per_s, r3.lookups_per_s});
      std::printf("%-16s %12.4g %12.4g %12.4g %12.4g %12.4g %7.0f%% %8s\n", sh.name.c_str(), cpu, zk, r1.lookups_per_s,
                  r2.lookups_per_s, r3.lookups_per_s, 100 * best / std::max(cpu, zk), ">=85%");
      splits.push_back({sh.name + " staged", r1});
      splits.push_back({sh.name + " zero-copy", r2});
      splits.push_back({sh.name + " device", r3});
    }
    transfer_splits = std::move(splits);
  }

  if (!transfer_splits.empty()) {
    std::printf(
        "\nper step (us), 2 steps in flight; ready includes the overlap\n%-26s %6s %9s  %7s %7s %7s %7s %7s %7s\n",
        "transfer run", "steps", "lookups/s", "hash", "lookup", "io", "gather", "copy", "asm");
    for (const auto& [name, r] : transfer_splits) PrintSplit(name.c_str(), r, layers);
  }

  if (a.sections.find("reach") != std::string::npos) {
    need_resident();
    std::printf("\n== reach: plain zero-copy kernel, 65536 random rows of layer 0 within its first N bytes (rows/s)\n");
    const std::int64_t layer_rows = layout.layer_rows(0);
    const std::uint64_t rb = layout.row_bytes();
    std::mt19937_64 rng(7);
    for (std::uint64_t span = 2ULL << 20;; span *= 2) {
      const auto rows = std::min<std::int64_t>(layer_rows, static_cast<std::int64_t>(span / rb));
      std::vector<std::uint64_t> src(65536);
      for (auto& p : src) {
        const auto g = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(rows));
        int c = 0;
        while (c + 1 < layout.columns() && layout.region_offset(0, c + 1) <= g) ++c;
        const std::byte* h = resident->ResidentRow(0, c, g);
        p = reinterpret_cast<std::uint64_t>(Must(gpu::MappedDevicePointer(const_cast<std::byte*>(h)), "map"));
      }
      const double r = KernelGather({src}, layout.row_bytes(), a.seconds / 4);
      std::sort(src.begin(), src.end());
      const double rs = KernelGather({src}, layout.row_bytes(), a.seconds / 4);
      std::printf("span %10.1f MiB  %12.4g rows/s  %8.2f GB/s   sorted by address %12.4g rows/s  %8.2f GB/s\n",
                  static_cast<double>(rows) * static_cast<double>(rb) / (1 << 20), r, r * static_cast<double>(rb) / 1e9,
                  rs, rs * static_cast<double>(rb) / 1e9);
      if (rows == layer_rows) break;
    }
  }

  if (a.sections.find("hit") != std::string::npos) {
    std::printf(
        "\n== hit: every row in the HBM cache, rows output only (lookups/s end to end; device time of the "
        "assembly vs a plain device gather of the same lookups from the cache slots holding their rows, each "
        "launch timed by its own events as the working set times its kernels)\n");
    std::printf("%-16s %-8s %12s %12s %12s %12s %8s\n", "shape", "path", "ws e2e", "ws assembly", "plain (slots)",
                "asm/gather", "target");
    need_resident();
    std::vector<std::pair<Shape, gpu::MissPath>> runs;
    for (const Shape& sh : shapes) {
      runs.emplace_back(sh, gpu::MissPath::kStaged);
      runs.emplace_back(sh, gpu::MissPath::kDevice);
    }
    for (const auto& [sh, path] : runs) {
      const Steps steps = MakeSteps(sh, ids, sh.tokens > 1 ? 2 : 16);
      const auto max_tokens = static_cast<std::int64_t>(sh.sequences * sh.tokens);
      // The staged path needs no host tier; the device pipeline reads its misses from the resident one.
      auto ws = MakeWs(*store, v, path == gpu::MissPath::kDevice ? resident.get() : nullptr, path, a.hbm_cache,
                       a.threads, max_tokens, false);
      // Warm: every step twice (rows admitted), then measured passes (fresh sequences: the same rows).
      (void)Drive(*ws, steps, 0, true, steps.tokens.size(), 1);
      (void)Drive(*ws, steps, 0, true, steps.tokens.size(), 1);
      const RunResult r = Drive(*ws, steps, a.seconds, true, 3, 2);
      const double hits = static_cast<double>(r.after.cache_hits - r.before.cache_hits);
      const double staged = static_cast<double>((r.after.staged_rows - r.before.staged_rows) +
                                                (r.after.zero_copy_rows - r.before.zero_copy_rows));
      const double asm_s = r.after.assemble_seconds - r.before.assemble_seconds;
      // Lookups assembled per device second (the steps whose device time is accounted).
      const double lookups =
          static_cast<double>(r.steps) *
          static_cast<double>(sh.sequences * sh.tokens * static_cast<std::size_t>(layout.columns() * layers));
      const double asm_rate = asm_s > 0 ? lookups / asm_s : 0;
      // Baselines: a plain gather of the same rows by per-lookup addresses, (1) where the cache holds them
      // (the same bytes at the same addresses; only the lookup differs), (2) copied into a compact array of
      // the largest layer's size (the baseline before session 8: for decode it fits in L2).
      const auto rows = HashSteps(layout, steps);
      double plain = 0, plain_b2b = 0, compact = 0, compact_b2b = 0;
      std::uint64_t not_cached = 0;
      if (a.hit_baseline != "compact") {
        const auto srcs = SlotSources(*ws, rows, not_cached);
        plain = KernelGather(srcs, layout.row_bytes(), a.seconds / 2, GatherTiming::kPerLaunch);
        plain_b2b = KernelGather(srcs, layout.row_bytes(), a.seconds / 2);
      }
      if (a.hit_baseline != "slots") {
        std::size_t most = 0;
        for (const auto& s : rows) {
          for (const auto& l : s) most = std::max(most, l.size());
        }
        std::byte* arr = nullptr;
        CK(cudaMalloc(reinterpret_cast<void**>(&arr), most * layout.row_bytes()));
        std::vector<std::vector<std::uint64_t>> srcs;
        for (const auto& s : rows) {
          for (const auto& l : s) {
            std::vector<std::uint64_t> v2(l.size());
            for (std::size_t i = 0; i < l.size(); ++i) {
              v2[i] = reinterpret_cast<std::uint64_t>(arr + (static_cast<std::uint64_t>(l[i]) * 2654435761ULL % most) *
                                                                layout.row_bytes());
            }
            srcs.push_back(std::move(v2));
          }
        }
        compact = KernelGather(srcs, layout.row_bytes(), a.seconds / 2, GatherTiming::kPerLaunch);
        compact_b2b = KernelGather(srcs, layout.row_bytes(), a.seconds / 2);
        cudaFree(arr);
      }
      auto pct = [](double x, double y) { return y > 0 ? 100 * x / y : 0.0; };
      std::printf(
          "%-16s %-8s %12.4g %12.4g %12.4g %11.0f%% %8s   (hit %.1f%%; slots back to back %.4g: %.0f%%; compact array "
          "%.4g: %.0f%%, back to back %.4g: %.0f%%; %llu lookups not cached)\n",
          sh.name.c_str(), gpu::MissPathName(path), r.lookups_per_s, asm_rate, plain, pct(asm_rate, plain), ">=70%",
          100 * hits / std::max(1.0, hits + staged), plain_b2b, pct(asm_rate, plain_b2b), compact,
          pct(asm_rate, compact), compact_b2b, pct(asm_rate, compact_b2b), static_cast<unsigned long long>(not_cached));
    }
  }

  if (a.sections.find("loop") != std::string::npos) {
    std::unique_ptr<memory::HostTier> cache_tier;
    memory::HostTier* host = nullptr;
    if (a.loop_host == "resident") {
      need_resident();
      host = resident.get();
    } else {
      memory::HostTierOptions ho;
      ho.cache_bytes = a.host_cache;
      ho.arena.registrar = registrar.get();
      cache_tier = Must(memory::HostTier::Create(layout, ho), "host tier");
      host = cache_tier.get();
    }
    std::printf(
        "\n== loop: host tier %s, HBM cache %.2f GiB, %s path; per step in us; ready = Submit -> "
        "output on the device, p50/p99 us\n",
        a.loop_host.c_str(), static_cast<double>(a.hbm_cache) / (1 << 30), gpu::MissPathName(a.loop_path));
    std::printf("%-26s %6s %9s  %7s %7s %7s %7s %7s %7s  ready per layer\n", "shape", "steps", "lookups/s", "hash",
                "lookup", "io", "gather", "copy", "asm");
    const std::vector<Shape> loop_shapes = {
        {"decode B=1", 1, 1}, {"decode B=64", 64, 1}, {"decode B=256", 256, 1}, {"prefill 16384", 1, 16384}};
    for (const auto& sh : loop_shapes) {
      const Steps steps = MakeSteps(sh, ids, sh.tokens > 1 ? 16 : 4096);
      auto ws = MakeWs(*store, v, host, a.loop_path, a.hbm_cache, a.threads,
                       static_cast<std::int64_t>(sh.sequences * sh.tokens));
      // Sequences keep their history across steps (a real decode).
      const RunResult r = Drive(*ws, steps, a.seconds, sh.tokens > 1, 3, 1);
      PrintSplit(sh.name.c_str(), r, layers);
      std::printf("%-16s path %s: %s\n", "", gpu::MissPathName(r.after.path), r.after.path_reason.c_str());
    }
  }
  return 0;
}
