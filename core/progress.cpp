#include "progress.hpp"

#include <unistd.h>

#include <cstdio>

namespace engram::detail {
namespace {

std::string Bytes(double b) {
  char buf[32];
  if (b >= 1024.0 * 1024 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.2f GiB", b / (1024.0 * 1024 * 1024));
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", b / (1024.0 * 1024));
  }
  return buf;
}

}  // namespace

Progress::Progress(std::string label, std::uint64_t total_bytes, bool quiet)
    : label_(std::move(label)),
      total_(total_bytes),
      enabled_(!quiet && ::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  Done();
}

void Progress::Add(std::uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  done_ += bytes;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ >= std::chrono::milliseconds(200)) {
    last_draw_ = now;
    Draw(false);
  }
}

void Progress::Done() {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  finished_ = true;
  if (enabled_) Draw(true);
}

void Progress::Draw(bool final) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = secs > 0 ? static_cast<double>(done_) / secs : 0;
  const double left = rate > 0 && total_ > done_ ? static_cast<double>(total_ - done_) / rate : 0;
  std::fprintf(stderr, "\r%s: %s / %s  %s/s  %s %.0f s   %s", label_.c_str(), Bytes(static_cast<double>(done_)).c_str(),
               Bytes(static_cast<double>(total_)).c_str(), Bytes(rate).c_str(), final ? "took" : "left",
               final ? secs : left, final ? "\n" : "");
  std::fflush(stderr);
}

}  // namespace engram::detail
