#include "engram/log.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace engram {
namespace {

LogLevel LevelFromEnv() noexcept {
  const char* v = std::getenv("ENGRAM_LOG_LEVEL");
  if (v == nullptr) return LogLevel::kWarn;
  if (std::strcmp(v, "error") == 0) return LogLevel::kError;
  if (std::strcmp(v, "info") == 0) return LogLevel::kInfo;
  if (std::strcmp(v, "debug") == 0) return LogLevel::kDebug;
  return LogLevel::kWarn;
}

std::atomic<int>& LevelStore() noexcept {
  static std::atomic<int> level{static_cast<int>(LevelFromEnv())};
  return level;
}

const char* LevelName(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
  }
  return "?";
}

}  // namespace

LogLevel GetLogLevel() noexcept {
  return static_cast<LogLevel>(LevelStore().load(std::memory_order_relaxed));
}

void SetLogLevel(LogLevel level) noexcept {
  LevelStore().store(static_cast<int>(level), std::memory_order_relaxed);
}

void LogMessage(LogLevel level, std::string_view message) noexcept {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "engram[%s] %.*s\n", LevelName(level), static_cast<int>(message.size()), message.data());
}

}  // namespace engram
