// `engram calibrate`'s host measurements (engram/prefetch/planner.hpp): each rate is measured here, on
// this machine, as the prefetcher would use it.
#include <fcntl.h>
#include <fmt/format.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <random>
#include <thread>

#include "../core/file.hpp"
#include "../core/io_ring.hpp"
#include "../core/thread_pool.hpp"
#include "engram/hasher.hpp"
#include "engram/memory/pinned_arena.hpp"
#include "engram/prefetch/planner.hpp"
#include "engram/store/store.hpp"

namespace engram::plan {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Repeats fn() (which does `units` of work) for at least `seconds`; units per second.
template <typename Fn>
double RatePerSecond(double seconds, double units, Fn&& fn) {
  std::size_t reps = 0;
  const auto t0 = Clock::now();
  do {
    fn();
    ++reps;
  } while (Since(t0) < seconds);
  return units * static_cast<double>(reps) / Since(t0);
}

// Least squares t = a + n / b over (n, t) points; {a, b}.
std::pair<double, double> FitLine(const std::vector<std::pair<double, double>>& pts) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& [x, y] : pts) {
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  const double n = static_cast<double>(pts.size());
  const double slope = (n * sxy - sx * sy) / std::max(n * sxx - sx * sx, 1e-30);
  const double a = std::max(0.0, (sy - slope * sx) / n);
  return {a, slope > 0 ? 1.0 / slope : 0.0};
}

struct FreeDeleter {
  void operator()(void* p) const noexcept { std::free(p); }
};

Status MeasureDisk(const CalibrateOptions& o, Calibration& c) {
  const std::string& path = o.disk_file;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) < o.disk_file_bytes) {
    // Written once with non-zero bytes, so the reads below reach the device.
    const detail::UniqueFd out(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (out.get() < 0) {
      return Status::IOError(fmt::format("calibrate: cannot create {}: {}", path, std::strerror(errno)));
    }
    std::vector<char> buf(8 << 20);
    std::mt19937_64 rng(1);
    for (auto& b : buf) b = static_cast<char>(rng());
    for (std::uint64_t off = 0; off < o.disk_file_bytes; off += buf.size()) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), o.disk_file_bytes - off));
      if (::pwrite(out.get(), buf.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n)) {
        return Status::IOError(fmt::format("calibrate: writing {}: {}", path, std::strerror(errno)));
      }
    }
    if (::fsync(out.get()) != 0) {
      return Status::IOError(fmt::format("calibrate: fsync of {}: {}", path, std::strerror(errno)));
    }
  }
  const detail::UniqueFd in(::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  const int fd = in.get();
  if (fd < 0) {
    return Status::Unavailable(
        fmt::format("calibrate: O_DIRECT open of {} failed ({}); the disk rates would measure the page cache, so "
                    "none are reported: give --disk-file on a file system that supports O_DIRECT",
                    path, std::strerror(errno)));
  }
  const std::uint64_t blocks = o.disk_file_bytes / 4096;
  detail::IoRing guard(128);
  if (const int rc = guard.init_error(); rc < 0) {
    return Status::Unavailable(fmt::format("calibrate: io_uring_queue_init: {}", std::strerror(-rc)));
  }
  io_uring* ring = guard.get();
  void* raw = nullptr;
  if (::posix_memalign(&raw, 4096, 128 * 4096) != 0) {
    return Status::ResourceExhausted("calibrate: 512 KiB of aligned buffers");
  }
  const std::unique_ptr<void, FreeDeleter> owned(raw);
  char* const buf = static_cast<char*>(raw);
  std::mt19937_64 rng(7);
  Status status;
  // Keeps `depth` random 4 KiB reads in flight for `seconds`; reads per second and mean latency.
  auto run = [&](unsigned depth, double seconds) -> std::pair<double, double> {
    std::uint64_t done = 0;
    unsigned inflight = 0;
    const auto t0 = Clock::now();
    auto submit_one = [&](unsigned slot) {
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      io_uring_prep_read(sqe, fd, buf + slot * 4096, 4096, static_cast<off_t>((rng() % blocks) * 4096));
      io_uring_sqe_set_data64(sqe, slot);
      ++inflight;
    };
    for (unsigned i = 0; i < depth; ++i) submit_one(i);
    io_uring_submit(ring);
    while (inflight > 0) {
      io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe(ring, &cqe) < 0) break;
      const auto slot = static_cast<unsigned>(io_uring_cqe_get_data64(cqe));
      if (cqe->res != 4096 && status.ok()) {
        status = Status::IOError(fmt::format("calibrate: read of {} returned {}", path, cqe->res));
      }
      io_uring_cqe_seen(ring, cqe);
      --inflight;
      ++done;
      if (Since(t0) < seconds && status.ok()) {
        submit_one(slot);
        io_uring_submit(ring);
      }
    }
    const double s = Since(t0);
    return {static_cast<double>(done) / s, s * depth / static_cast<double>(std::max<std::uint64_t>(done, 1))};
  };
  c.disk_qd1_latency_s = run(1, o.seconds).second;
  c.disk_iops = run(128, o.seconds).first;
  c.disk_file = path;
  return status;
}

Status MeasureStore(const CalibrateOptions& o, Calibration& c) {
  ENGRAM_ASSIGN_OR_RETURN(auto st, store::Store::Open(o.store));
  ENGRAM_ASSIGN_OR_RETURN(auto latest, st->Latest());
  ENGRAM_ASSIGN_OR_RETURN(auto v, st->Pin(latest));
  const Layout& layout = st->layout();
  const std::int64_t rows = layout.layer_rows(0);
  std::mt19937_64 rng(11);
  std::vector<std::pair<double, double>> pts;
  for (const std::size_t n : {1UL, 16UL, 256UL, 4096UL, 32768UL}) {
    std::vector<std::int64_t> ids(n);
    std::vector<std::byte> out(n * layout.row_bytes());
    double t = 0;
    std::uint64_t reads = 0;
    std::size_t reps = 0;
    const auto t0 = Clock::now();
    do {
      for (auto& id : ids) id = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(rows));
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      store::ReadStats rs;
      const auto t1 = Clock::now();
      ENGRAM_RETURN_IF_ERROR(st->ReadRows(v, 0, ids, std::span(out).first(ids.size() * layout.row_bytes()), &rs));
      t += Since(t1);
      reads += rs.reads;
      ++reps;
      ids.resize(n);
    } while (Since(t0) < o.seconds / 2);
    const auto r = static_cast<double>(reps);
    pts.emplace_back(static_cast<double>(reads) / r, t / r);
  }
  std::tie(c.store_read_fixed_s, c.store_pages_per_s) = FitLine(pts);
  c.store_read_points = pts;
  std::sort(c.store_read_points.begin(), c.store_read_points.end());
  c.store_rows_per_page = st->Info().rows_per_key;
  c.store = o.store;
  return Status::Ok();
}

}  // namespace

Result<Calibration> LoadCalibration(const std::string& path) {
  ENGRAM_ASSIGN_OR_RETURN(std::string text, detail::ReadFileToString(path));
  return ParseCalibration(text, path);
}

Result<Calibration> CalibrateHost(const CalibrateOptions& o) {
  if (o.row_bytes == 0 || o.gather_bytes < 64ULL * o.row_bytes || o.seconds <= 0) {
    return Status::InvalidArgument("calibrate: row_bytes, gather_bytes (>= 64 rows) and seconds must be positive");
  }
  Calibration c;
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  c.machine = host;
  {
    const std::time_t now = std::time(nullptr);
    char buf[32];
    std::tm tm{};
    gmtime_r(&now, &tm);
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    c.date = buf;
  }
  const std::uint32_t threads = o.threads != 0 ? o.threads : std::clamp(std::thread::hardware_concurrency(), 1U, 16U);
  c.host_threads = threads;
  c.gather_row_bytes = o.row_bytes;
  detail::ThreadPool pool(threads - 1);

  // Gather: random rows of a large array into a staging buffer, threads in parallel.
  {
    std::vector<std::byte> src(o.gather_bytes);
    pool.ParallelFor(threads, [&](std::size_t t) {
      const std::size_t part = src.size() / threads;
      std::memset(src.data() + t * part, static_cast<int>(t + 1), part);
    });
    const std::uint64_t n_rows = o.gather_bytes / o.row_bytes;
    constexpr std::size_t kBatch = 1 << 16;
    std::vector<std::uint64_t> idx(kBatch);
    std::mt19937_64 rng(3);
    for (auto& i : idx) i = rng() % n_rows;
    std::vector<std::byte> dst(kBatch * o.row_bytes);
    c.gather_rows_per_s = RatePerSecond(o.seconds, kBatch, [&] {
      pool.ParallelFor(threads, [&](std::size_t t) {
        for (std::size_t i = t; i < kBatch; i += threads) {
          std::memcpy(dst.data() + i * o.row_bytes, src.data() + idx[i] * o.row_bytes, o.row_bytes);
        }
      });
    });
  }
  // Hashing (V4.1's layout, random compressed ids) on the threads, and de-duplication on one.
  {
    ENGRAM_ASSIGN_OR_RETURN(Layout layout, Layout::Preset("deepseek-v4.1-flash"));
    ENGRAM_ASSIGN_OR_RETURN(LayerHasher hasher, LayerHasher::Create(layout, 0));
    const auto cols = static_cast<std::size_t>(layout.columns());
    constexpr std::size_t kTokens = 1 << 14;
    std::vector<std::int32_t> ids(kTokens * threads);
    std::mt19937_64 rng(5);
    for (auto& i : ids)
      i = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(layout.compressed_vocab_size()));
    std::vector<std::int64_t> rows(ids.size() * cols);
    Status hs;
    c.hash_lookups_per_s = RatePerSecond(o.seconds, static_cast<double>(rows.size()), [&] {
      pool.ParallelFor(threads, [&](std::size_t t) {
        Status s = HashFreshSequences(hasher, std::span(ids).subspan(t * kTokens, kTokens), 0,
                                      std::span(rows).subspan(t * kTokens * cols, kTokens * cols));
        if (!s.ok()) hs = s;
      });
    });
    ENGRAM_RETURN_IF_ERROR(hs);
    std::vector<std::int64_t> work;
    const std::size_t n = std::min<std::size_t>(rows.size(), 1 << 18);
    c.dedupe_lookups_per_s = RatePerSecond(o.seconds, static_cast<double>(n), [&] {
      work.assign(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(n));
      std::sort(work.begin(), work.end());
      work.erase(std::unique(work.begin(), work.end()), work.end());
    });
  }
  // Pinning: an arena of 256 MiB mapped and touched (registered with the GPU by the caller's measurement
  // if it has one; here the host part).
  {
    const auto t0 = Clock::now();
    memory::ArenaOptions ao;
    ao.name = "calibrate";
    ENGRAM_ASSIGN_OR_RETURN(auto arena, memory::PinnedArena::Create(256ULL << 20, ao));
    c.pin_bytes_per_s = static_cast<double>(arena->size()) / Since(t0);
    c.pin_path = std::string(memory::PagePathName(arena->report().path));
  }
  if (!o.disk_file.empty()) ENGRAM_RETURN_IF_ERROR(MeasureDisk(o, c));
  if (!o.store.empty()) ENGRAM_RETURN_IF_ERROR(MeasureStore(o, c).WithContext("calibrate: store " + o.store));
  return c;
}

}  // namespace engram::plan
