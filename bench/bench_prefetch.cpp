// bench_prefetch: the prefetcher (CPU backend) on a store, driven by the real trace, with its raw
// baselines measured in the same run:
//   - resident load of the whole table into the host tier vs a plain sequential O_DIRECT read of the
//     store's table files (4 MiB reads, one thread per file);
//   - steps served from a resident host tier vs a plain multi-threaded memcpy gather of the same rows with
//     the same number of threads (no de-duplication, no bookkeeping);
//   - steps served from disk through a bounded host cache: rows/s, distinct rows/s and disk reads/s (the
//     script bench/run_prefetch_bench.sh runs fio on the same files at the same queue depth beside it).
// Shapes: decode steps of B sequences x 1 token (B = 1..512) and prefill chunks of one sequence.
//
//   bench_prefetch --store DIR [--threads 4] [--seconds 2] [--host-cache BYTES] [--read-threads 8]
//                  [--modes resident,disk] [--read-path multiget|direct] [--csv FILE] [--shapes A,B]
//                  [--load-threads N]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "../core/thread_pool.hpp"
#include "bench_common.hpp"
#include "bench_data.hpp"
#include "engram/memory/host_tier.hpp"
#include "engram/prefetch/prefetcher.hpp"

namespace {

using engram::bench::Clock;
using engram::bench::Percentile;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Sequential O_DIRECT read of every .sst file of the store: MiB/s.
double SequentialReadMiBs(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".sst") files.push_back(e.path().string());
  }
  constexpr std::size_t kChunk = 4 << 20;
  std::atomic<std::uint64_t> bytes{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  std::atomic<std::size_t> next{0};
  const std::size_t nthreads = std::min<std::size_t>(files.size(), 8);
  threads.reserve(nthreads);
  for (std::size_t t = 0; t < nthreads; ++t) {
    threads.emplace_back([&] {
      void* buf = std::aligned_alloc(4096, kChunk);
      for (std::size_t i = next++; i < files.size(); i = next++) {
        const int fd = ::open(files[i].c_str(), O_RDONLY | O_DIRECT);
        if (fd < 0) continue;
        off_t off = 0;
        while (true) {
          const ssize_t n = ::pread(fd, buf, kChunk, off);
          if (n <= 0) break;
          bytes += static_cast<std::uint64_t>(n);
          off += n;
        }
        ::close(fd);
      }
      std::free(buf);
    });
  }
  for (auto& t : threads) t.join();
  return static_cast<double>(bytes.load()) / 1048576.0 / Since(t0);
}

struct Shape {
  std::string name;
  std::size_t sequences;
  std::size_t tokens;  // per sequence per step
};

struct Args {
  std::string store;
  std::uint32_t threads = 4;
  double seconds = 2;
  std::uint64_t host_cache = 64ULL << 20;
  std::uint32_t read_threads = 8;
  std::string modes = "resident,disk";
  std::string csv;
  std::string read_path = "multiget";
  std::string shapes;  // ",name,name,": only these shapes (--shapes); empty: all
  std::uint32_t load_threads = engram::memory::HostTierOptions{}.load_threads;
};

struct Result {
  double rows_per_s = 0, distinct_per_s = 0, reads_per_s = 0, p50_ms = 0, p99_ms = 0, wait1_p99_ms = 0;
  double reads_per_step = 0;  // disk reads (4 KiB blocks) per step
  std::uint64_t steps = 0;
};

// Runs steps of `shape` for `seconds` through a new prefetcher; sequences walk the trace.
Result RunShape(const engram::store::Store& store, const engram::store::VersionHandle& v,
                engram::memory::HostTier* host, const Shape& shape, const std::vector<std::int32_t>& ids,
                std::uint32_t threads, double seconds) {
  engram::prefetch::PrefetcherOptions po;
  po.gather_threads = threads;
  po.dequantize = engram::prefetch::Dequantize::kNone;
  po.staging_bytes = 4ULL << 30;
  auto p = *engram::prefetch::Prefetcher::Create(store, v, host, po);
  const std::size_t stride = ids.size() / std::max<std::size_t>(shape.sequences, 1);
  std::vector<engram::SequenceId> seqs;
  for (std::size_t i = 0; i < shape.sequences; ++i) seqs.push_back(*p->CreateSequence());
  std::vector<double> step_s;
  std::vector<double> wait0;
  step_s.reserve(1 << 16);
  wait0.reserve(1 << 16);
  const auto io0 = store.io_stats();
  const auto st0 = p->stats();
  const auto t0 = Clock::now();
  std::size_t pos = 0;
  while (Since(t0) < seconds || step_s.size() < 3) {
    if (pos + shape.tokens > stride) {  // a sequence ran to the end of its part of the trace: start over
      for (auto& s : seqs) {
        (void)p->Release(s);
        s = *p->CreateSequence();
      }
      pos = 0;
    }
    std::vector<engram::prefetch::SequenceInput> batch;
    for (std::size_t i = 0; i < shape.sequences; ++i) {
      batch.push_back({seqs[i], std::span(ids).subspan(i * stride + pos, shape.tokens), {}});
    }
    const auto s0 = Clock::now();
    auto sid = *p->Submit(batch);
    const auto w0 = Clock::now();
    (void)p->Wait(sid, 0);
    wait0.push_back(Since(w0));
    for (int l = 1; l < store.layout().num_layers(); ++l) (void)p->Wait(sid, l);
    step_s.push_back(Since(s0));
    (void)p->Finish(sid);
    pos += shape.tokens;
  }
  const double total = Since(t0);
  const auto st = p->stats();
  const auto io = store.io_stats();
  Result r;
  std::uint64_t lookups = 0, distinct = 0;
  for (std::size_t l = 0; l < st.layers.size(); ++l) {
    lookups += st.layers[l].lookups - st0.layers[l].lookups;
    distinct += st.layers[l].distinct - st0.layers[l].distinct;
  }
  r.steps = step_s.size();
  r.rows_per_s = static_cast<double>(lookups) / total;
  r.distinct_per_s = static_cast<double>(distinct) / total;
  r.reads_per_s = static_cast<double>((io.reads + io.direct_reads) - (io0.reads + io0.direct_reads)) / total;
  r.reads_per_step = r.reads_per_s * total / static_cast<double>(r.steps);
  r.p50_ms = 1e3 * Percentile(step_s, 0.5);
  r.p99_ms = 1e3 * Percentile(step_s, 0.99);
  r.wait1_p99_ms = 1e3 * Percentile(wait0, 0.99);
  return r;
}

// The same shape's rows gathered by plain memcpy from the resident tier with the same threads.
double PlainGatherRowsPerS(const engram::memory::HostTier& host, const engram::Layout& layout, const Shape& shape,
                           const std::vector<std::int32_t>& ids, std::uint32_t threads, double seconds) {
  const std::size_t stride = ids.size() / std::max<std::size_t>(shape.sequences, 1);
  const auto cols = static_cast<std::size_t>(layout.columns());
  const int layers = layout.num_layers();
  // Rows of every token of every sequence (fresh sequences, as the prefetcher sees them).
  std::vector<std::vector<std::int64_t>> rows(static_cast<std::size_t>(layers));
  for (int l = 0; l < layers; ++l) {
    auto h = *engram::LayerHasher::Create(layout, l);
    rows[static_cast<std::size_t>(l)].resize(shape.sequences * stride * cols);
    for (std::size_t i = 0; i < shape.sequences; ++i) {
      (void)engram::HashFreshSequences(
          h, std::span(ids).subspan(i * stride, stride), 0,
          std::span(rows[static_cast<std::size_t>(l)]).subspan(i * stride * cols, stride * cols));
    }
  }
  const std::size_t row_bytes = layout.row_bytes();
  const std::size_t per_step = shape.sequences * shape.tokens * cols;
  std::vector<std::byte> out(per_step * row_bytes);
  engram::detail::ThreadPool pool(std::max<std::uint32_t>(threads, 1) - 1);
  std::uint64_t gathered = 0;
  const auto t0 = Clock::now();
  std::size_t pos = 0;
  while (Since(t0) < seconds) {
    if (pos + shape.tokens > stride) pos = 0;
    for (int l = 0; l < layers; ++l) {
      const auto& r = rows[static_cast<std::size_t>(l)];
      // Chunks as the prefetcher cuts a resident layer: about four a thread, of at least 1,024 lookups.
      const std::size_t kChunk = std::clamp<std::size_t>(per_step / (4 * (pool.size() + 1)), 1024, 49152);
      pool.ParallelFor((per_step + kChunk - 1) / kChunk, [&](std::size_t c) {
        for (std::size_t k = c * kChunk; k < std::min(per_step, (c + 1) * kChunk); ++k) {
          const std::size_t seq = k / (shape.tokens * cols);
          const std::size_t within = k % (shape.tokens * cols);
          const std::size_t src = (seq * stride + pos) * cols + within;
          std::memcpy(out.data() + k * row_bytes, host.ResidentRow(l, static_cast<int>(k % cols), r[src]), row_bytes);
        }
      });
      gathered += per_step;
    }
    pos += shape.tokens;
  }
  return static_cast<double>(gathered) / Since(t0);
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
    else if (k == "--host-cache")
      a.host_cache = std::stoull(v);
    else if (k == "--read-threads")
      a.read_threads = static_cast<std::uint32_t>(std::stoul(v));
    else if (k == "--modes")
      a.modes = v;
    else if (k == "--csv")
      a.csv = v;
    else if (k == "--read-path")
      a.read_path = v;
    else if (k == "--shapes")
      a.shapes = "," + v + ",";
    else if (k == "--load-threads")
      a.load_threads = static_cast<std::uint32_t>(std::stoul(v));

    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (a.store.empty()) {
    std::fprintf(stderr,
                 "usage: bench_prefetch --store DIR [--threads 4] [--seconds 2] [--host-cache BYTES] "
                 "[--read-threads 8] [--modes resident,disk] [--read-path multiget|direct] [--csv FILE] "
                 "[--shapes 'decode B=1,prefill 4096'] [--load-threads N]\n");
    return 2;
  }
  engram::store::StoreOptions so;
  so.read_threads = a.read_threads;
  so.read_path = a.read_path == "direct" ? engram::store::ReadPath::kDirectBlocks : engram::store::ReadPath::kMultiGet;
  auto store = engram::store::Store::Open(a.store, so);
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return 1;
  }
  const engram::Layout& layout = (*store)->layout();
  auto v = *(*store)->Pin(*(*store)->Latest());
  const auto ids = engram::bench::LoadTraceCompressed();
  const std::vector<Shape> shapes = {{"decode B=1", 1, 1},       {"decode B=8", 8, 1},     {"decode B=64", 64, 1},
                                     {"decode B=256", 256, 1},   {"decode B=512", 512, 1}, {"prefill 4096", 1, 4096},
                                     {"prefill 16384", 1, 16384}};
  std::FILE* csv = a.csv.empty() ? nullptr : std::fopen(a.csv.c_str(), "w");
  if (csv != nullptr)
    std::fprintf(csv,
                 "mode,shape,rows_per_s,baseline_rows_per_s,distinct_per_s,reads_per_s,p50_ms,p99_ms,reads_per_step,"
                 "layers\n");
  std::printf("store %s (%s), %u gather threads, %.1f s per point\n", a.store.c_str(), layout.name().c_str(), a.threads,
              a.seconds);

  if (a.modes.find("resident") != std::string::npos) {
    const double seq = SequentialReadMiBs(a.store);
    engram::memory::HostTierOptions ho;
    ho.resident = engram::memory::ResidentRegions::kAll;
    ho.load_threads = a.load_threads;
    auto host = engram::memory::HostTier::Create(layout, ho);
    if (!host.ok()) {
      std::fprintf(stderr, "resident: %s\n", host.status().ToString().c_str());
      return 1;
    }
    if (auto s = (*host)->LoadResident(**store, v); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
    const auto hs = (*host)->stats();
    const double load = static_cast<double>(hs.loaded_bytes) / 1048576.0 / hs.load_seconds;
    std::printf(
        "\nresident load: %.0f MiB in %.2f s = %.0f MiB/s; plain sequential O_DIRECT read of the table files: "
        "%.0f MiB/s; ratio %.2f (target >= 0.70)\n  %s\n",
        static_cast<double>(hs.loaded_bytes) / 1048576.0, hs.load_seconds, load, seq, load / seq,
        engram::memory::DescribeArena((*host)->arena_report()).c_str());
    std::printf("\n%-16s %14s %14s %7s %9s %9s %12s\n", "resident steps", "rows/s", "plain gather", "ratio", "p50 ms",
                "p99 ms", "L1 wait p99");
    for (const auto& sh : shapes) {
      if (!a.shapes.empty() && a.shapes.find("," + sh.name + ",") == std::string::npos) continue;
      const Result r = RunShape(**store, v, host->get(), sh, ids, a.threads, a.seconds);
      const double base = PlainGatherRowsPerS(**host, layout, sh, ids, a.threads, a.seconds);
      std::printf("%-16s %14.0f %14.0f %6.0f%% %9.3f %9.3f %12.3f\n", sh.name.c_str(), r.rows_per_s, base,
                  100 * r.rows_per_s / base, r.p50_ms, r.p99_ms, r.wait1_p99_ms);
      if (csv != nullptr) {
        std::fprintf(csv, "resident,%s,%.0f,%.0f,%.0f,%.0f,%.3f,%.3f,0,%d\n", sh.name.c_str(), r.rows_per_s, base,
                     r.distinct_per_s, r.reads_per_s, r.p50_ms, r.p99_ms, layout.num_layers());
      }
    }
    std::printf("(ratio target >= 85%%: rows/s through the prefetcher over a plain memcpy gather of the same rows)\n");
  }
  if (a.modes.find("disk") != std::string::npos) {
    engram::memory::HostTierOptions ho;
    ho.cache_bytes = a.host_cache;
    auto host = engram::memory::HostTier::Create(layout, ho);
    if (!host.ok()) {
      std::fprintf(stderr, "disk: %s\n", host.status().ToString().c_str());
      return 1;
    }
    if (a.read_path == "direct") {
      std::printf("\ndisk-backed steps, host cache %.0f MiB, direct block reads (queue depth %u):\n",
                  static_cast<double>(a.host_cache) / 1048576.0, so.direct_queue_depth);
    } else {
      std::printf("\ndisk-backed steps, host cache %.0f MiB, store read threads %u (queue depth ~%u):\n",
                  static_cast<double>(a.host_cache) / 1048576.0, a.read_threads, a.read_threads * 32);
    }
    std::printf("%-16s %12s %12s %12s %9s %9s %12s\n", "shape", "rows/s", "distinct/s", "disk rd/s", "p50 ms", "p99 ms",
                "L1 wait p99");
    for (const auto& sh : shapes) {
      if (!a.shapes.empty() && a.shapes.find("," + sh.name + ",") == std::string::npos) continue;
      const Result r = RunShape(**store, v, host->get(), sh, ids, a.threads, a.seconds);
      std::printf("%-16s %12.0f %12.0f %12.0f %9.3f %9.3f %12.3f\n", sh.name.c_str(), r.rows_per_s, r.distinct_per_s,
                  r.reads_per_s, r.p50_ms, r.p99_ms, r.wait1_p99_ms);
      if (csv != nullptr) {
        std::fprintf(csv, "disk,%s,%.0f,0,%.0f,%.0f,%.3f,%.3f,%.1f,%d\n", sh.name.c_str(), r.rows_per_s,
                     r.distinct_per_s, r.reads_per_s, r.p50_ms, r.p99_ms, r.reads_per_step, layout.num_layers());
      }
    }
    const auto hs = (*host)->stats();
    std::printf("(host cache: %llu hits, %llu misses over all shapes)\n",
                static_cast<unsigned long long>(hs.cache_hits), static_cast<unsigned long long>(hs.misses));
  }
  if (csv != nullptr) std::fclose(csv);
  return 0;
}
