#include "engram/prefetch/prefetcher.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "../core/hash_mix.hpp"
#include "../core/thread_pool.hpp"
#include "engram/hasher.hpp"
#include "engram/log.hpp"
#include "engram/prefetch/dequant.hpp"
#include "engram/token_map.hpp"

namespace engram::prefetch {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

struct Step {
  StepId id = 0;
  std::int64_t tokens = 0;
  std::vector<std::int64_t> rows;  // [layer][token][column], hashed by the worker layer by layer
  std::vector<std::uint8_t> dead;  // per token
  // The sequences' hash windows (history, then the new ids with DEAD applied), back to back, and each
  // sequence's first new token's step position (StepWindows: Prefetcher::Append's form).
  StepWindows windows;
  memory::PooledBuffer buffer;
  std::size_t rows_bytes_per_layer = 0;
  std::size_t bf16_values_per_layer = 0;  // 0: no BF16 output
  Clock::time_point submitted;
  std::vector<Status> status;       // per layer, once ready
  std::vector<std::uint8_t> ready;  // per layer
  std::byte* RowsOut(int layer) const { return buffer.data() + static_cast<std::size_t>(layer) * rows_bytes_per_layer; }
  std::uint16_t* Bf16Out(int layer, int layers) const {
    if (bf16_values_per_layer == 0) return nullptr;
    return reinterpret_cast<std::uint16_t*>(buffer.data() + static_cast<std::size_t>(layers) * rows_bytes_per_layer) +
           static_cast<std::size_t>(layer) * bf16_values_per_layer;
  }
};

struct HintWork {
  std::int64_t tokens = 0;
  std::vector<std::int64_t> rows;  // [layer][token][column]
};

}  // namespace

struct Prefetcher::Impl {
  Impl(const store::Store& s, store::VersionHandle v, memory::HostTier* h, const PrefetcherOptions& o, Hasher hs)
      : store(s),
        version(std::move(v)),
        host(h),
        options(o),
        layout(s.layout()),
        hasher(std::move(hs)),
        sequences(s.layout(), o.sequence),
        pool(std::max<std::uint32_t>(o.gather_threads, 1) - 1) {}

  const store::Store& store;
  store::VersionHandle version;
  memory::HostTier* host;
  PrefetcherOptions options;
  Layout layout;
  Hasher hasher;
  std::mutex seq_mu;
  SequenceTable sequences;
  std::unique_ptr<memory::BufferPool> staging;
  detail::ThreadPool pool;

  mutable std::mutex mu;
  std::condition_variable work_cv;   // the worker waits for steps and hints
  std::condition_variable ready_cv;  // callers wait for layers
  std::deque<std::shared_ptr<Step>> queue;
  std::deque<HintWork> hints;
  std::map<StepId, std::shared_ptr<Step>> steps;
  StepId next_step = 1;
  bool stop = false;
  std::thread worker;
  std::vector<std::uint8_t> layer_resident;  // per layer: every region of it is resident in the host tier
  bool all_resident = false;                 // every layer is
  // Statistics (under mu).
  std::uint64_t steps_served = 0, tokens_served = 0, hints_served = 0, hint_rows = 0, hint_errors = 0;
  std::vector<LayerStats> layer_stats;

  void Run();
  void ServeLayer(Step& step, int layer);
  // The checks of a batch (nothing changed); its token count and whether any position is DEAD.
  Status CheckBatch(std::span<const SequenceInput> batch, std::size_t& tokens, bool& any_dead) const;
  // Appends a checked batch to its sequences (all or nothing) and writes each sequence's hash window,
  // its first token's step position and, if any_dead, the DEAD flags (dead sized to the step's tokens).
  Status AppendBatch(std::span<const SequenceInput> batch, std::size_t tokens, bool any_dead, StepWindows& windows,
                     std::vector<std::uint8_t>& dead, bool append = true);
  // Append's (append) or Windows' (no append) windows, flattened.
  Result<StepWindows> FlatWindows(std::span<const SequenceInput> batch, bool append);
  // Row ids of one layer for every token of the step, from the sequences' windows. `then(begin, end)`,
  // if given, runs on the same thread right after the rows of positions [begin, end) are hashed.
  // Tasks of about `task_tokens` tokens run in parallel.
  void HashLayer(Step& step, int layer, const std::function<void(std::size_t, std::size_t)>& then = {},
                 std::size_t task_tokens = 2048);
  // DEAD zeroing, dequantisation, statistics, and the layer's readiness.
  void FinishLayer(Step& step, int layer, std::size_t n, const std::int64_t* rows, const LayerStats& st, Status status);
  void ServeHint(const HintWork& h);
  // Statistics and the layer's readiness.
  void Complete(Step& step, int layer, const LayerStats& st, Status status);

  // A layer's distinct rows (DEAD positions left out), in order of first appearance: rows[g] is first
  // read at position first[g]; lookup[i] is position i's distinct index, or -1 for a DEAD position.
  struct Distinct {
    std::vector<std::int64_t> rows;
    std::vector<std::uint32_t> first;
    std::vector<std::int32_t> lookup;
    std::size_t lookups = 0;  // positions that are not DEAD
    [[nodiscard]] std::size_t size() const noexcept { return rows.size(); }
  };
  // One pass over the positions with an open-addressing table (the worker thread's scratch).
  void Dedupe(const Step& step, const std::int64_t* rows, std::size_t n, Distinct& d);
  std::vector<std::uint64_t> dedupe_keys;  // row + 1; 0: empty
  std::vector<std::uint32_t> dedupe_vals;
  Distinct distinct;  // the worker's, reused layer after layer
  // Gets the distinct rows `which` (indices into d) from the host tier, then the store: row g is written
  // at dst_of(g). Fills the lookup and disk fields of st.
  template <typename DstFn>
  Status FetchRows(const Step& step, int l, const Distinct& d, std::span<const std::size_t> which, DstFn dst_of,
                   LayerStats& st);
  // With a device sink: distinct rows, the sink's plan, compact staging, the sink's Ready.
  void ServeDeviceLayer(Step& step, int layer, LayerStats& st);
};

void Prefetcher::Impl::Run() {
  std::unique_lock<std::mutex> lock(mu);
  while (true) {
    work_cv.wait(lock, [&] { return stop || !queue.empty() || !hints.empty(); });
    if (!queue.empty()) {
      std::shared_ptr<Step> step = queue.front();
      queue.pop_front();
      lock.unlock();
      for (int l = 0; l < layout.num_layers(); ++l) ServeLayer(*step, l);
      lock.lock();
      continue;
    }
    if (!hints.empty()) {
      HintWork h = std::move(hints.front());
      hints.pop_front();
      lock.unlock();
      ServeHint(h);
      lock.lock();
      ++hints_served;
      continue;
    }
    if (stop) return;
  }
}

void Prefetcher::Impl::HashLayer(Step& step, int l, const std::function<void(std::size_t, std::size_t)>& then,
                                 std::size_t task_tokens) {
  // Tasks of about task_tokens tokens, hashed in parallel: a task is a list of segments (sequence, first
  // token, count), so a long prefill is cut into several tasks and many one-token decode sequences share
  // one. A segment's window is the sequence's window from its first token minus the history.
  const std::size_t per_task = std::max<std::size_t>(task_tokens, 1);
  struct Segment {
    std::size_t sequence, first, count;
  };
  const auto cols = static_cast<std::size_t>(layout.columns());
  const auto hist = static_cast<std::size_t>(layout.max_ngram() - 1);
  std::vector<std::vector<Segment>> tasks(1);
  std::size_t in_task = 0;
  const StepWindows& w = step.windows;
  for (std::size_t s = 0; s + 1 < w.segment_begin.size(); ++s) {
    const std::size_t tokens = w.segment_begin[s + 1] - w.segment_begin[s];
    for (std::size_t t = 0; t < tokens;) {
      if (in_task == per_task) {
        tasks.emplace_back();
        in_task = 0;
      }
      const std::size_t count = std::min(tokens - t, per_task - in_task);
      tasks.back().push_back({s, t, count});
      in_task += count;
      t += count;
    }
  }
  std::int64_t* rows = step.rows.data() + static_cast<std::size_t>(l) * static_cast<std::size_t>(step.tokens) * cols;
  const LayerHasher& h = hasher.layer(l);
  pool.ParallelFor(tasks.size(), [&](std::size_t i) {
    for (const Segment& g : tasks[i]) {
      const std::size_t begin = (w.segment_begin[g.sequence] + g.first) * cols;
      h.HashWindowUnchecked(w.window.data() + w.segment_begin[g.sequence] + g.sequence * hist + g.first, g.count,
                            rows + begin);
      if (then) then(begin, begin + g.count * cols);
    }
  });
}

void Prefetcher::Impl::ServeLayer(Step& step, int l) {
  const auto cols = static_cast<std::size_t>(layout.columns());
  const std::size_t row_bytes = layout.row_bytes();
  const auto n = static_cast<std::size_t>(step.tokens) * cols;
  LayerStats st;
  const std::int64_t* rows = step.rows.data() + static_cast<std::size_t>(l) * n;
  // Every region of the layer resident: lookups are offsets; each thread gathers the positions it has
  // just hashed (no de-duplication needed: nothing is read twice from disk; no pass between).
  if (options.device == nullptr && layer_resident[static_cast<std::size_t>(l)] != 0) {
    std::byte* out = step.RowsOut(l);
    const auto t0 = Clock::now();
    // About four tasks a thread (threads finish unevenly), of at least ~1,000 lookups (smaller ones cost
    // more to hand out than they take) and at most 2,048 tokens.
    const std::size_t threads = pool.size() + 1;
    const std::size_t task_tokens = std::clamp<std::size_t>(static_cast<std::size_t>(step.tokens) / (4 * threads),
                                                            std::max<std::size_t>(1, 1024 / cols), 2048);
    HashLayer(
        step, l,
        [&](std::size_t begin, std::size_t end) {
          // Each row's cache lines are asked for kAhead rows before it is copied, so that the rows' memory
          // latencies overlap instead of adding up (every row is a miss in a table of gigabytes); no
          // further ahead, or a long task's prefetched lines would be evicted before their copy.
          constexpr std::size_t kAhead = 16;
          auto src = [&](std::size_t i) { return host->ResidentRow(l, static_cast<int>(i % cols), rows[i]); };
          auto prefetch = [&](std::size_t i) {
            const std::byte* p = src(i);
            for (std::size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(p + b);
          };
          for (std::size_t i = begin; i < std::min(end, begin + kAhead); ++i) prefetch(i);
          for (std::size_t i = begin; i < end; ++i) {
            if (i + kAhead < end) prefetch(i + kAhead);
            std::memcpy(out + i * row_bytes, src(i), row_bytes);
          }
        },
        task_tokens);
    st.gather_seconds = Seconds(Clock::now() - t0);  // hashing included
    st.lookups = n;
    st.distinct = n;
    st.resident_hits = n;
    FinishLayer(step, l, n, rows, st, Status::Ok());
    return;
  }
  auto t0 = Clock::now();
  HashLayer(step, l);
  st.hash_seconds = Seconds(Clock::now() - t0);
  if (options.device != nullptr) {
    ServeDeviceLayer(step, l, st);
    return;
  }
  std::byte* out = step.RowsOut(l);
  constexpr std::size_t kChunk = 4096;
  t0 = Clock::now();
  Distinct& d = distinct;
  Dedupe(step, rows, n, d);
  st.lookups = d.lookups;
  st.distinct = d.size();
  st.lookup_seconds = Seconds(Clock::now() - t0);
  // Each distinct row lands at its first position, then is copied to the others.
  std::vector<std::size_t> all(d.size());
  std::iota(all.begin(), all.end(), std::size_t{0});
  Status status = FetchRows(
      step, l, d, all, [&](std::size_t g) { return out + static_cast<std::size_t>(d.first[g]) * row_bytes; }, st);
  if (status.ok()) {
    t0 = Clock::now();
    pool.ParallelFor((n + kChunk - 1) / kChunk, [&](std::size_t c) {
      for (std::size_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
        const std::int32_t g = d.lookup[i];
        if (g < 0 || d.first[static_cast<std::size_t>(g)] == i) continue;
        std::memcpy(out + i * row_bytes,
                    out + static_cast<std::size_t>(d.first[static_cast<std::size_t>(g)]) * row_bytes, row_bytes);
      }
    });
    st.gather_seconds += Seconds(Clock::now() - t0);
  }
  FinishLayer(step, l, n, rows, st, std::move(status));
}

void Prefetcher::Impl::Dedupe(const Step& step, const std::int64_t* rows, std::size_t n, Distinct& d) {
  const auto cols = static_cast<std::size_t>(layout.columns());
  auto dead = [&](std::size_t i) { return !step.dead.empty() && step.dead[i / cols] != 0; };
  // One table, in first-appearance order, for small steps; for large ones (a prefill), positions are
  // split into partitions by hash and each partition de-duplicated on its own thread.
  constexpr std::size_t kParallelFrom = 16384;  // below this, handing out to the pool costs more than it saves
  d.lookup.resize(n);
  d.rows.clear();
  d.first.clear();
  d.lookups = 0;
  if (n < kParallelFrom || pool.size() == 0) {
    std::size_t cap = 64;
    while (cap < 2 * n) cap <<= 1;
    if (dedupe_keys.size() < cap) {
      dedupe_keys.resize(cap);
      dedupe_vals.resize(cap);
    }
    std::fill_n(dedupe_keys.begin(), cap, 0);
    const std::size_t mask = cap - 1;
    for (std::size_t i = 0; i < n; ++i) {
      if (dead(i)) {
        d.lookup[i] = -1;
        continue;
      }
      ++d.lookups;
      const std::uint64_t key = static_cast<std::uint64_t>(rows[i]) + 1;
      std::size_t h = detail::Mix64(key) & mask;
      while (dedupe_keys[h] != 0 && dedupe_keys[h] != key) h = (h + 1) & mask;
      if (dedupe_keys[h] == 0) {
        dedupe_keys[h] = key;
        dedupe_vals[h] = static_cast<std::uint32_t>(d.rows.size());
        d.rows.push_back(rows[i]);
        d.first.push_back(static_cast<std::uint32_t>(i));
      }
      d.lookup[i] = static_cast<std::int32_t>(dedupe_vals[h]);
    }
    return;
  }
  constexpr std::size_t kParts = 64;  // by the hash's top 6 bits
  constexpr std::size_t kChunk = 8192;
  const std::size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<std::uint8_t> part(n);
  std::vector<std::array<std::uint32_t, kParts>> count(chunks);
  pool.ParallelFor(chunks, [&](std::size_t c) {
    count[c].fill(0);
    for (std::size_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
      if (dead(i)) {
        part[i] = 0xFF;
        continue;
      }
      part[i] = static_cast<std::uint8_t>(detail::Mix64(static_cast<std::uint64_t>(rows[i]) + 1) >> 58);
      ++count[c][part[i]];
    }
  });
  // Positions grouped by partition (chunk order, so increasing within a partition).
  std::vector<std::uint32_t> at(chunks * kParts);
  std::array<std::size_t, kParts + 1> part_begin{};
  std::size_t total = 0;
  for (std::size_t q = 0; q < kParts; ++q) {
    part_begin[q] = total;
    for (std::size_t c = 0; c < chunks; ++c) {
      at[c * kParts + q] = static_cast<std::uint32_t>(total);
      total += count[c][q];
    }
  }
  part_begin[kParts] = total;
  d.lookups = total;
  std::vector<std::uint32_t> pos(total);
  pool.ParallelFor(chunks, [&](std::size_t c) {
    for (std::size_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
      if (part[i] == 0xFF) {
        d.lookup[i] = -1;
      } else {
        pos[at[c * kParts + part[i]]++] = static_cast<std::uint32_t>(i);
      }
    }
  });
  // Each partition: its distinct rows (local indices into lookup), then a prefix sum places them.
  std::array<std::vector<std::uint32_t>, kParts> firsts;
  pool.ParallelFor(kParts, [&](std::size_t q) {
    const std::size_t m = part_begin[q + 1] - part_begin[q];
    std::size_t cap = 16;
    while (cap < 2 * m) cap <<= 1;
    std::vector<std::uint64_t> keys(cap, 0);
    std::vector<std::uint32_t> vals(cap);
    const std::size_t mask = cap - 1;
    for (std::size_t k = part_begin[q]; k < part_begin[q + 1]; ++k) {
      const std::uint32_t i = pos[k];
      const std::uint64_t key = static_cast<std::uint64_t>(rows[i]) + 1;
      std::size_t h = detail::Mix64(key) & mask;
      while (keys[h] != 0 && keys[h] != key) h = (h + 1) & mask;
      if (keys[h] == 0) {
        keys[h] = key;
        vals[h] = static_cast<std::uint32_t>(firsts[q].size());
        firsts[q].push_back(i);
      }
      d.lookup[i] = static_cast<std::int32_t>(vals[h]);
    }
  });
  std::array<std::size_t, kParts + 1> base{};
  for (std::size_t q = 0; q < kParts; ++q) base[q + 1] = base[q] + firsts[q].size();
  d.rows.resize(base[kParts]);
  d.first.resize(base[kParts]);
  pool.ParallelFor(kParts, [&](std::size_t q) {
    for (std::size_t j = 0; j < firsts[q].size(); ++j) {
      d.first[base[q] + j] = firsts[q][j];
      d.rows[base[q] + j] = rows[firsts[q][j]];
    }
    for (std::size_t k = part_begin[q]; k < part_begin[q + 1]; ++k) {
      d.lookup[pos[k]] += static_cast<std::int32_t>(base[q]);
    }
  });
}

template <typename DstFn>
Status Prefetcher::Impl::FetchRows(const Step& step, int l, const Distinct& d, std::span<const std::size_t> which,
                                   DstFn dst_of, LayerStats& st) {
  // Chunks of 256 to 4096 rows: enough of them to keep every gather thread busy on a decode step.
  const std::size_t kChunk = std::clamp<std::size_t>(which.size() / (4 * (pool.size() + 1)) + 1, 256, 4096);
  const auto cols = static_cast<std::size_t>(layout.columns());
  const std::size_t row_bytes = layout.row_bytes();
  // Host tier, in parallel chunks; misses are collected per chunk.
  auto t0 = Clock::now();
  const std::size_t chunks = (which.size() + kChunk - 1) / kChunk;
  std::vector<std::vector<std::size_t>> chunk_misses(chunks);
  std::atomic<std::uint64_t> resident{0}, cached{0};
  pool.ParallelFor(chunks, [&](std::size_t c) {
    std::uint64_t res = 0, hit = 0;  // counted per chunk: one shared add each, not one per row
    for (std::size_t k = c * kChunk; k < std::min(which.size(), (c + 1) * kChunk); ++k) {
      const std::size_t g = which[k];
      const auto column = static_cast<int>(d.first[g] % cols);
      if (host != nullptr && host->Get(l, column, d.rows[g], dst_of(g))) {
        ++(host->IsResident(l, column) ? res : hit);
      } else {
        chunk_misses[c].push_back(g);
      }
    }
    resident.fetch_add(res, std::memory_order_relaxed);
    cached.fetch_add(hit, std::memory_order_relaxed);
  });
  st.resident_hits = resident.load();
  st.cache_hits = cached.load();
  st.lookup_seconds += Seconds(Clock::now() - t0);
  std::vector<std::size_t> misses;
  for (auto& m : chunk_misses) misses.insert(misses.end(), m.begin(), m.end());
  st.disk_rows = misses.size();
  if (misses.empty()) return Status::Ok();
  std::vector<std::int64_t> miss_rows(misses.size());
  for (std::size_t i = 0; i < misses.size(); ++i) miss_rows[i] = d.rows[misses[i]];
  std::vector<std::byte> buf(misses.size() * row_bytes);
  t0 = Clock::now();
  store::ReadStats reads;  // this call's own: another prefetcher may read the same store at the same time
  Status status = store.ReadRows(version, l, miss_rows, buf, &reads);
  st.disk_seconds = Seconds(Clock::now() - t0);
  st.disk_reads = reads.reads;
  st.disk_bytes = reads.bytes;
  if (!status.ok())
    return std::move(status).WithContext(fmt::format("step {}: layer {}", step.id, layout.layer(l).layer_id));
  t0 = Clock::now();
  pool.ParallelFor((misses.size() + kChunk - 1) / kChunk, [&](std::size_t c) {
    for (std::size_t i = c * kChunk; i < std::min(misses.size(), (c + 1) * kChunk); ++i) {
      const std::byte* src = buf.data() + i * row_bytes;
      std::memcpy(dst_of(misses[i]), src, row_bytes);
      if (host != nullptr) host->Admit(l, static_cast<int>(d.first[misses[i]] % cols), miss_rows[i], src);
    }
  });
  st.gather_seconds += Seconds(Clock::now() - t0);
  return Status::Ok();
}

void Prefetcher::Impl::ServeDeviceLayer(Step& step, int l, LayerStats& st) {
  const auto cols = static_cast<std::size_t>(layout.columns());
  const std::size_t row_bytes = layout.row_bytes();
  const auto n = static_cast<std::size_t>(step.tokens) * cols;
  const std::int64_t* rows = step.rows.data() + static_cast<std::size_t>(l) * n;
  auto t0 = Clock::now();
  Distinct& d = distinct;
  Dedupe(step, rows, n, d);
  st.lookups = d.lookups;
  st.distinct = d.size();
  std::vector<int> dcols(d.size());
  for (std::size_t g = 0; g < d.size(); ++g) dcols[g] = static_cast<int>(d.first[g] % cols);
  std::vector<std::uint8_t> stage(d.size(), 0);
  Status status = options.device->Plan(step.id, l, step.tokens, d.rows, dcols, stage);
  st.lookup_seconds = Seconds(Clock::now() - t0);
  std::vector<std::size_t> staged;
  std::vector<std::size_t> slot_of(d.size(), 0);  // compact position of a staged distinct row
  for (std::size_t g = 0; g < d.size(); ++g) {
    if (stage[g] != 0) {
      slot_of[g] = staged.size();
      staged.push_back(g);
    }
  }
  std::byte* out = step.RowsOut(l);
  if (status.ok()) {
    status = FetchRows(
        step, l, d, staged, [&](std::size_t g) { return out + slot_of[g] * row_bytes; }, st);
  }
  Log(LogLevel::kDebug, "prefetcher: step {} layer index {}: {} staged rows fetched ({})", step.id, l, staged.size(),
      status.ok() ? "ok" : status.ToString());
  if (status.ok()) {
    DeviceLayerInput in;
    in.tokens = step.tokens;
    in.columns = layout.columns();
    in.rows = d.rows;
    in.lookup = d.lookup;
    in.staged = std::span<const std::byte>(out, staged.size() * row_bytes);
    status = options.device->Ready(step.id, l, in);
  } else {
    options.device->Failed(step.id, l, status);
  }
  Complete(step, l, st, std::move(status));
}

void Prefetcher::Impl::FinishLayer(Step& step, int l, std::size_t n, const std::int64_t* rows, const LayerStats& st,
                                   Status status) {
  constexpr std::size_t kChunk = 4096;
  const auto cols = static_cast<std::size_t>(layout.columns());
  const std::size_t row_bytes = layout.row_bytes();
  std::byte* out = step.RowsOut(l);
  const std::int32_t layer_id = layout.layer(l).layer_id;
  if (status.ok() && !step.dead.empty()) {
    for (std::int64_t t = 0; t < step.tokens; ++t) {
      if (step.dead[static_cast<std::size_t>(t)] != 0) {
        std::memset(out + static_cast<std::size_t>(t) * cols * row_bytes, 0, cols * row_bytes);
      }
    }
  }
  const auto t0 = Clock::now();
  if (std::uint16_t* bf = step.Bf16Out(l, layout.num_layers()); status.ok() && bf != nullptr) {
    const std::uint32_t dim = static_cast<std::uint32_t>(layout.spec().row_dim);
    std::mutex bad_mu;
    pool.ParallelFor((n + kChunk - 1) / kChunk, [&](std::size_t c) {
      for (std::size_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
        const std::size_t t = i / cols;
        std::uint16_t* dst = bf + i * dim;
        if (!step.dead.empty() && step.dead[t] != 0) {
          std::memset(dst, 0, dim * sizeof(std::uint16_t));
          continue;
        }
        std::uint32_t bad = 0;
        if (!DequantizeRowE4M3(out + i * row_bytes, dim, dst, &bad)) {
          std::lock_guard<std::mutex> lock(bad_mu);
          if (status.ok()) {
            status = Status::Corruption(
                fmt::format("step {}: layer {} row {} (token {}, column {}): byte {} is not a valid {} (NaN)", step.id,
                            layer_id, rows[i], t, i % cols, bad, bad < dim ? "E4M3 code" : "E8M0 scale"));
          }
        }
      }
    });
  }
  LayerStats all = st;
  all.gather_seconds += Seconds(Clock::now() - t0);
  Complete(step, l, all, std::move(status));
}

void Prefetcher::Impl::Complete(Step& step, int l, const LayerStats& st, Status status) {
  std::lock_guard<std::mutex> lock(mu);
  LayerStats& total = layer_stats[static_cast<std::size_t>(l)];
  total.hash_seconds += st.hash_seconds;
  total.lookup_seconds += st.lookup_seconds;
  total.gather_seconds += st.gather_seconds;
  total.lookups += st.lookups;
  total.distinct += st.distinct;
  total.resident_hits += st.resident_hits;
  total.cache_hits += st.cache_hits;
  total.disk_rows += st.disk_rows;
  total.disk_seconds += st.disk_seconds;
  total.disk_reads += st.disk_reads;
  total.disk_bytes += st.disk_bytes;
  total.ready_seconds += Seconds(Clock::now() - step.submitted);
  if (!status.ok()) ++total.failed_steps;
  if (l == layout.num_layers() - 1) {
    ++steps_served;
    tokens_served += static_cast<std::uint64_t>(step.tokens);
  }
  step.status[static_cast<std::size_t>(l)] = std::move(status);
  step.ready[static_cast<std::size_t>(l)] = 1;
  ready_cv.notify_all();
}

void Prefetcher::Impl::ServeHint(const HintWork& h) {
  const auto cols = static_cast<std::size_t>(layout.columns());
  const std::size_t row_bytes = layout.row_bytes();
  const auto n = static_cast<std::size_t>(h.tokens) * cols;
  std::uint64_t read = 0;
  std::uint64_t errors = 0;
  for (int l = 0; l < layout.num_layers(); ++l) {
    std::vector<std::pair<std::int64_t, int>> want;  // (row, column)
    for (std::size_t i = 0; i < n; ++i) {
      const std::int64_t r = h.rows[static_cast<std::size_t>(l) * n + i];
      if (!host->Contains(l, static_cast<int>(i % cols), r)) want.emplace_back(r, static_cast<int>(i % cols));
    }
    std::sort(want.begin(), want.end());
    want.erase(std::unique(want.begin(), want.end()), want.end());
    if (want.empty()) continue;
    std::vector<std::int64_t> rows(want.size());
    for (std::size_t i = 0; i < want.size(); ++i) rows[i] = want[i].first;
    std::vector<std::byte> buf(rows.size() * row_bytes);
    // A hint is best effort: a failed read is counted and logged, and the step that needs the rows will
    // read them itself and report the error to its caller.
    if (const Status st = store.ReadRows(version, l, rows, buf); !st.ok()) {
      ++errors;
      Log(LogLevel::kWarn, "hint: layer {}: {}", layout.layer(l).layer_id, st.ToString());
      continue;
    }
    for (std::size_t i = 0; i < want.size(); ++i) host->Admit(l, want[i].second, rows[i], buf.data() + i * row_bytes);
    read += want.size();
  }
  std::lock_guard<std::mutex> lock(mu);
  hint_rows += read;
  hint_errors += errors;
}

Prefetcher::Prefetcher(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
    impl_->hints.clear();
  }
  impl_->work_cv.notify_all();
  if (impl_->worker.joinable()) impl_->worker.join();
}

Result<std::unique_ptr<Prefetcher>> Prefetcher::Create(const store::Store& store, store::VersionHandle version,
                                                       memory::HostTier* host_tier, const PrefetcherOptions& options) {
  if (!version.valid()) return Status::InvalidArgument("prefetcher: the version handle is empty");
  if (host_tier != nullptr && !(host_tier->layout() == store.layout())) {
    return Status::InvalidArgument("prefetcher: the host tier's layout is not the store's");
  }
  ENGRAM_ASSIGN_OR_RETURN(Hasher hasher, Hasher::Create(store.layout()));
  auto impl = std::make_unique<Impl>(store, std::move(version), host_tier, options, std::move(hasher));
  memory::BufferPoolOptions po;
  po.budget_bytes = options.staging_bytes;
  po.name = "prefetch staging";
  ENGRAM_ASSIGN_OR_RETURN(impl->staging, memory::BufferPool::Create(po, options.staging_arena));
  impl->layer_stats.resize(static_cast<std::size_t>(impl->layout.num_layers()));
  for (int l = 0; l < impl->layout.num_layers(); ++l) {
    impl->layer_stats[static_cast<std::size_t>(l)].layer_id = impl->layout.layer(l).layer_id;
  }
  impl->layer_resident.assign(static_cast<std::size_t>(impl->layout.num_layers()), host_tier != nullptr ? 1 : 0);
  for (int l = 0; l < impl->layout.num_layers() && host_tier != nullptr; ++l) {
    for (int c = 0; c < impl->layout.columns(); ++c) {
      if (!host_tier->IsResident(l, c)) impl->layer_resident[static_cast<std::size_t>(l)] = 0;
    }
  }
  impl->all_resident =
      std::all_of(impl->layer_resident.begin(), impl->layer_resident.end(), [](std::uint8_t r) { return r != 0; });
  Impl* raw = impl.get();
  impl->worker = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<Prefetcher>(new Prefetcher(std::move(impl)));
}

Result<SequenceId> Prefetcher::CreateSequence() {
  std::lock_guard<std::mutex> lock(impl_->seq_mu);
  return impl_->sequences.Create();
}

Result<SequenceId> Prefetcher::Fork(SequenceId parent) {
  std::lock_guard<std::mutex> lock(impl_->seq_mu);
  return impl_->sequences.Fork(parent);
}

Status Prefetcher::Release(SequenceId id) {
  std::lock_guard<std::mutex> lock(impl_->seq_mu);
  return impl_->sequences.Release(id);
}

Status Prefetcher::Rollback(SequenceId id, std::int64_t k) {
  std::lock_guard<std::mutex> lock(impl_->seq_mu);
  ENGRAM_ASSIGN_OR_RETURN(Sequence * s, impl_->sequences.Get(id));
  return s->Rollback(k).WithContext(fmt::format("sequence {}", id));
}

Status Prefetcher::Impl::CheckBatch(std::span<const SequenceInput> batch, std::size_t& tokens, bool& any_dead) const {
  tokens = 0;
  any_dead = false;
  for (const auto& in : batch) {
    if (!in.dead.empty() && in.dead.size() != in.tokens.size()) {
      return Status::InvalidArgument(
          fmt::format("step: sequence {}: {} DEAD flags for {} tokens", in.sequence, in.dead.size(), in.tokens.size()));
    }
    ENGRAM_RETURN_IF_ERROR_CTX(CheckCompressedIds(in.tokens, layout), fmt::format("step: sequence {}", in.sequence));
    tokens += in.tokens.size();
    any_dead = any_dead || std::any_of(in.dead.begin(), in.dead.end(), [](std::uint8_t d) { return d != 0; });
  }
  if (tokens == 0) return Status::InvalidArgument("step: no tokens");
  return Status::Ok();
}

Status Prefetcher::Impl::AppendBatch(std::span<const SequenceInput> batch, std::size_t tokens, bool any_dead,
                                     StepWindows& windows, std::vector<std::uint8_t>& dead, bool append) {
  std::lock_guard<std::mutex> lock(seq_mu);
  // Every sequence must exist (and appear once) before any is changed.
  std::vector<Sequence*> seqs;
  seqs.reserve(batch.size());
  for (const auto& in : batch) {
    ENGRAM_ASSIGN_OR_RETURN(Sequence * s, sequences.Get(in.sequence));
    seqs.push_back(s);
  }
  if (batch.size() > 1) {
    std::vector<SequenceId> ids(batch.size());
    for (std::size_t b = 0; b < batch.size(); ++b) ids[b] = batch[b].sequence;
    std::sort(ids.begin(), ids.end());
    if (auto twice = std::adjacent_find(ids.begin(), ids.end()); twice != ids.end()) {
      return Status::InvalidArgument(fmt::format("step: sequence {} appears twice", *twice));
    }
  }
  const auto hist = static_cast<std::size_t>(layout.max_ngram() - 1);
  windows.window.resize(tokens + batch.size() * hist);
  windows.segment_begin.resize(batch.size() + 1);
  std::size_t t0 = 0;
  for (std::size_t b = 0; b < batch.size(); ++b) {
    const auto& in = batch[b];
    std::int32_t* w = windows.window.data() + t0 + b * hist;
    seqs[b]->History(std::span(w, hist));
    for (std::size_t i = 0; i < in.tokens.size(); ++i) {
      w[hist + i] = (!in.dead.empty() && in.dead[i] != 0) ? kDeadId : in.tokens[i];
    }
    // Ids were checked (CheckBatch), so this cannot fail part way through the batch.
    if (append) ENGRAM_RETURN_IF_ERROR(seqs[b]->Append(in.tokens, in.dead));
    windows.segment_begin[b] = static_cast<std::uint32_t>(t0);
    if (any_dead) {
      for (std::size_t t = 0; t < in.dead.size(); ++t) dead[t0 + t] = in.dead[t];
    }
    t0 += in.tokens.size();
  }
  windows.segment_begin[batch.size()] = static_cast<std::uint32_t>(t0);
  return Status::Ok();
}

Result<StepWindows> Prefetcher::Append(std::span<const SequenceInput> batch) {
  return impl_->FlatWindows(batch, true);
}

Result<StepWindows> Prefetcher::Windows(std::span<const SequenceInput> batch) {
  return impl_->FlatWindows(batch, false);
}

Result<StepWindows> Prefetcher::Impl::FlatWindows(std::span<const SequenceInput> batch, bool append) {
  std::size_t tokens = 0;
  bool any_dead = false;
  ENGRAM_RETURN_IF_ERROR(CheckBatch(batch, tokens, any_dead));
  StepWindows out;
  std::vector<std::uint8_t> dead;
  ENGRAM_RETURN_IF_ERROR(AppendBatch(batch, tokens, false, out, dead, append));
  return out;
}

Result<StepId> Prefetcher::Submit(std::span<const SequenceInput> batch) {
  Impl& im = *impl_;
  const auto cols = static_cast<std::size_t>(im.layout.columns());
  const auto layers = static_cast<std::size_t>(im.layout.num_layers());
  std::size_t tokens = 0;
  bool any_dead = false;
  ENGRAM_RETURN_IF_ERROR(im.CheckBatch(batch, tokens, any_dead));
  auto step = std::make_shared<Step>();
  step->tokens = static_cast<std::int64_t>(tokens);
  step->rows_bytes_per_layer = tokens * cols * im.layout.row_bytes();
  if (im.options.dequantize == Dequantize::kBf16 && im.layout.row_format() == RowFormat::kFp8E4M3E8M0 &&
      im.options.device == nullptr) {
    step->bf16_values_per_layer = tokens * cols * static_cast<std::size_t>(im.layout.spec().row_dim);
  }
  const std::size_t bytes = layers * (step->rows_bytes_per_layer + step->bf16_values_per_layer * 2);
  ENGRAM_ASSIGN_OR_RETURN(
      step->buffer,
      im.staging->Acquire(bytes, im.options.staging_timeout).WithContext(fmt::format("step of {} tokens", tokens)));
  step->rows.resize(layers * tokens * cols);
  if (any_dead) step->dead.assign(tokens, 0);
  ENGRAM_RETURN_IF_ERROR(im.AppendBatch(batch, tokens, any_dead, step->windows, step->dead));
  step->status.resize(layers);
  step->ready.assign(layers, 0);
  step->submitted = Clock::now();
  const bool inline_step =
      im.all_resident && im.options.device == nullptr && tokens * cols * layers <= im.options.inline_rows;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    step->id = im.next_step++;
    im.steps.emplace(step->id, step);
    if (!inline_step) im.queue.push_back(step);
  }
  if (inline_step) {
    // Every row is an offset into the resident tier: serve it here, without a hand-off.
    for (int l = 0; l < im.layout.num_layers(); ++l) im.ServeLayer(*step, l);
  } else {
    im.work_cv.notify_one();
  }
  return step->id;
}

Status Prefetcher::Wait(StepId id, int layer_index) {
  Impl& im = *impl_;
  if (layer_index < 0 || layer_index >= im.layout.num_layers()) {
    return Status::OutOfRange(
        fmt::format("wait: layer index {} is outside 0..{}", layer_index, im.layout.num_layers() - 1));
  }
  std::unique_lock<std::mutex> lock(im.mu);
  auto it = im.steps.find(id);
  if (it == im.steps.end()) return Status::NotFound(fmt::format("wait: no step {} (finished or never submitted)", id));
  std::shared_ptr<Step> step = it->second;
  const auto l = static_cast<std::size_t>(layer_index);
  if (step->ready[l] == 0) {
    const auto t0 = Clock::now();
    im.ready_cv.wait(lock, [&] { return step->ready[l] != 0; });
    im.layer_stats[l].waited_seconds += Seconds(Clock::now() - t0);
  }
  return step->status[l];
}

Result<LayerOutput> Prefetcher::Output(StepId id, int layer_index) const {
  const Impl& im = *impl_;
  std::lock_guard<std::mutex> lock(im.mu);
  auto it = im.steps.find(id);
  if (it == im.steps.end()) return Status::NotFound(fmt::format("output: no step {}", id));
  const Step& step = *it->second;
  if (layer_index < 0 || layer_index >= im.layout.num_layers()) {
    return Status::OutOfRange(
        fmt::format("output: layer index {} is outside 0..{}", layer_index, im.layout.num_layers() - 1));
  }
  const auto l = static_cast<std::size_t>(layer_index);
  if (step.ready[l] == 0)
    return Status::FailedPrecondition(
        fmt::format("output: step {} layer index {} is not ready (Wait first)", id, layer_index));
  ENGRAM_RETURN_IF_ERROR(step.status[l]);
  LayerOutput o;
  o.tokens = step.tokens;
  o.columns = im.layout.columns();
  o.row_bytes = im.layout.row_bytes();
  o.dim = static_cast<std::uint32_t>(im.layout.spec().row_dim);
  o.rows = step.RowsOut(layer_index);
  o.bf16 = step.Bf16Out(layer_index, im.layout.num_layers());
  return o;
}

Status Prefetcher::Finish(StepId id) {
  Impl& im = *impl_;
  std::shared_ptr<Step> step;
  {
    std::unique_lock<std::mutex> lock(im.mu);
    auto it = im.steps.find(id);
    if (it == im.steps.end()) return Status::NotFound(fmt::format("finish: no step {}", id));
    step = it->second;
    im.ready_cv.wait(
        lock, [&] { return std::all_of(step->ready.begin(), step->ready.end(), [](auto r) { return r != 0; }); });
    im.steps.erase(it);
  }
  return Status::Ok();
}

Status Prefetcher::Hint(SequenceId id, std::span<const std::int32_t> draft) {
  Impl& im = *impl_;
  if (im.host == nullptr || im.host->stats().cache_rows == 0) {
    return Status::FailedPrecondition("hint: no host row cache to prefetch into");
  }
  ENGRAM_RETURN_IF_ERROR_CTX(CheckCompressedIds(draft, im.layout), fmt::format("hint: sequence {}", id));
  if (draft.empty()) return Status::Ok();
  HintWork h;
  h.tokens = static_cast<std::int64_t>(draft.size());
  const auto cols = static_cast<std::size_t>(im.layout.columns());
  h.rows.resize(static_cast<std::size_t>(im.layout.num_layers()) * draft.size() * cols);
  {
    std::lock_guard<std::mutex> lock(im.seq_mu);
    ENGRAM_ASSIGN_OR_RETURN(Sequence * s, im.sequences.Get(id));
    Sequence copy = s->Fork();
    ENGRAM_RETURN_IF_ERROR(copy.AppendAndHash(im.hasher, draft, {}, h.rows));
  }
  {
    std::lock_guard<std::mutex> lock(im.mu);
    im.hints.push_back(std::move(h));
  }
  im.work_cv.notify_one();
  return Status::Ok();
}

PrefetchStats Prefetcher::stats() const {
  const Impl& im = *impl_;
  PrefetchStats s;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    s.steps = im.steps_served;
    s.tokens = im.tokens_served;
    s.hints = im.hints_served;
    s.hint_rows = im.hint_rows;
    s.hint_errors = im.hint_errors;
    s.layers = im.layer_stats;
  }
  if (im.host != nullptr) s.host = im.host->stats();
  s.staging = im.staging->stats();
  s.io = im.store.io_stats();
  return s;
}

std::string Prefetcher::StatsJson() const {
  const PrefetchStats s = stats();
  nlohmann::ordered_json j;
  j["steps"] = s.steps;
  j["tokens"] = s.tokens;
  j["hints"] = s.hints;
  j["hint_rows"] = s.hint_rows;
  j["hint_errors"] = s.hint_errors;
  j["layers"] = nlohmann::ordered_json::array();
  for (const auto& l : s.layers) {
    j["layers"].push_back({{"layer_id", l.layer_id},
                           {"lookups", l.lookups},
                           {"distinct", l.distinct},
                           {"resident_hits", l.resident_hits},
                           {"cache_hits", l.cache_hits},
                           {"disk_rows", l.disk_rows},
                           {"disk_reads", l.disk_reads},
                           {"disk_bytes", l.disk_bytes},
                           {"failed_steps", l.failed_steps},
                           {"hash_seconds", l.hash_seconds},
                           {"lookup_seconds", l.lookup_seconds},
                           {"gather_seconds", l.gather_seconds},
                           {"disk_seconds", l.disk_seconds},
                           {"ready_seconds", l.ready_seconds},
                           {"waited_seconds", l.waited_seconds}});
  }
  j["host"] = {{"resident_bytes", s.host.resident_bytes},
               {"cache_bytes", s.host.cache_bytes},
               {"cache_rows", s.host.cache_rows},
               {"cached_rows", s.host.cached_rows},
               {"resident_hits", s.host.resident_hits},
               {"cache_hits", s.host.cache_hits},
               {"misses", s.host.misses},
               {"admissions", s.host.admissions},
               {"evictions", s.host.evictions}};
  j["staging"] = {{"budget_bytes", s.staging.budget_bytes},
                  {"in_use_bytes", s.staging.in_use_bytes},
                  {"peak_bytes", s.staging.peak_bytes},
                  {"waits", s.staging.waits},
                  {"timeouts", s.staging.timeouts}};
  j["io"] = {{"reads", s.io.reads + s.io.direct_reads}, {"submissions", s.io.submissions + s.io.direct_submissions},
             {"bytes", s.io.bytes + s.io.direct_bytes}, {"in_flight", s.io.in_flight},
             {"peak_in_flight", s.io.peak_in_flight},   {"mean_queue_depth", s.io.mean_queue_depth}};
  return j.dump(2);
}

}  // namespace engram::prefetch
