// The real trace for benchmarks: ../shared/data (or $ENGRAM_SHARED_DATA_DIR), else the slice shipped in
// data/. Prints which one it used.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "../core/file.hpp"
#include "engram/token_map.hpp"

namespace engram::bench {

inline std::vector<std::int32_t> LoadTraceCompressed() {
  const char* env = std::getenv("ENGRAM_SHARED_DATA_DIR");
  std::string dir = env != nullptr ? env : ENGRAM_SHARED_DATA_DIR;
  std::string trace = dir + "/brown.deepseek-v3.i32";
  std::string map = dir + "/deepseek-v3.token-map.i32";
  if (!std::filesystem::exists(trace)) {
    trace = std::string(ENGRAM_DATA_DIR) + "/brown-1m.deepseek-v3.i32";
    map = std::string(ENGRAM_DATA_DIR) + "/deepseek-v3.token-map.i32";
  }
  auto raw = detail::ReadInt32File(trace);
  auto tm = TokenMap::LoadFile(map);
  if (!raw.ok() || !tm.ok()) {
    std::fprintf(stderr, "cannot load the trace: %s %s\n", raw.status().ToString().c_str(),
                 tm.status().ToString().c_str());
    std::exit(1);
  }
  std::vector<std::int32_t> ids(raw->size());
  if (Status s = tm->Compress(*raw, ids); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::exit(1);
  }
  std::fprintf(stderr, "trace: %s (%zu tokens)\n", trace.c_str(), ids.size());
  return ids;
}

}  // namespace engram::bench
