// Helpers shared by the tests: the real data beside the checkout, and a literal reference hasher.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "engram/layout.hpp"
#include "engram/prefetch/planner.hpp"
#include "engram/token_map.hpp"

namespace engram::test {

// ../shared/data/<name> (or $ENGRAM_SHARED_DATA_DIR/<name>, for runs on another machine); tests that
// need it skip with a message when it is absent.
inline std::string SharedData(const std::string& name) {
  const char* dir = std::getenv("ENGRAM_SHARED_DATA_DIR");
  return std::string(dir != nullptr ? dir : ENGRAM_SHARED_DATA_DIR) + "/" + name;
}

#define ENGRAM_REQUIRE_SHARED_DATA(name)                                                                 \
  do {                                                                                                   \
    if (!std::filesystem::exists(::engram::test::SharedData(name))) {                                    \
      GTEST_SKIP() << "skipped: " << ::engram::test::SharedData(name) << " is missing (../shared/data)"; \
    }                                                                                                    \
  } while (0)

// The real Brown trace compressed with the real token map (loaded once per process).
const std::vector<std::int32_t>& BrownCompressed();
// The real Brown trace as tokenizer ids, and the real token map (loaded once per process).
const std::vector<std::int32_t>& BrownRaw();
const TokenMap& RealTokenMap();

// A temporary directory removed at scope exit.
class TempDir {
 public:
  TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteBytes(const std::string& path, const void* data, std::size_t size);

// A calibration with the rates of a machine like the lent H100 host (of the order measured there), for
// the planner's tests, which need GPU rates on a machine without a GPU.
plan::Calibration H100LikeCalibration();

// The reference hash written as literally as the specification reads (hardware modulo, full history,
// walk-back DEAD rule), to check the fast paths against.
// ids: one sequence of compressed ids; dead: empty or one flag per id. Returns rows[t][c] flattened
// for layer `layer_index`.
std::vector<std::int64_t> ReferenceRows(const Layout& layout, int layer_index, const std::vector<std::int32_t>& ids,
                                        const std::vector<std::uint8_t>& dead = {});

}  // namespace engram::test
