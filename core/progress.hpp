// Progress of long operations (ingest, verify, synth) on a terminal: bytes done, rate and time left,
// redrawn at most 5 times a second on stderr. Silent when stderr is not a terminal (logs, pipes) or
// when quiet. Internal.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace engram::detail {

class Progress {
 public:
  Progress(std::string label, std::uint64_t total_bytes, bool quiet);
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress();

  // Thread-safe.
  void Add(std::uint64_t bytes);
  // Ends the line (on a terminal) with the final rate.
  void Done();

 private:
  void Draw(bool final);
  std::mutex mu_;
  std::string label_;
  std::uint64_t total_;
  std::uint64_t done_ = 0;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace engram::detail
