// A small levelled logger. Messages go to stderr as "engram[<level>] <message>".
//
// The level is read once from the environment variable ENGRAM_LOG_LEVEL (error, warn, info, debug;
// default: warn) and can be changed with SetLogLevel. Library code never prints to stdout.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace engram {

enum class LogLevel : int { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

LogLevel GetLogLevel() noexcept;
void SetLogLevel(LogLevel level) noexcept;
void LogMessage(LogLevel level, std::string_view message) noexcept;

template <typename... Args>
void Log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (static_cast<int>(level) > static_cast<int>(GetLogLevel())) return;
  LogMessage(level, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace engram
