// Synthetic checkpoints and stores for the store tests.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "engram/store/store.hpp"
#include "engram/store/synth.hpp"
#include "test_util.hpp"

namespace engram::test {

// A synthetic checkpoint of `preset` scaled by `scale`, written once per process per (preset, scale).
struct SynthCheckpoint {
  std::string dir;
  Layout layout;
};
const SynthCheckpoint& SmallCheckpoint(const std::string& preset, double scale);

// The rows SynthRow would give, for comparison.
std::vector<std::byte> ExpectedRows(const Layout& layout, int layer_index, const std::vector<std::int64_t>& rows);

// A store in a temporary directory holding the ingested SmallCheckpoint(preset, scale), with version 1
// pinned.
struct IngestedStore {
  TempDir dir;
  std::unique_ptr<store::Store> store;
  store::VersionHandle version;
};
// With `token_map`, the store keeps that map.
std::unique_ptr<IngestedStore> MakeIngestedStore(const std::string& preset, double scale,
                                                 std::uint32_t read_threads = 2, const TokenMap* token_map = nullptr);

// Flips one byte in the middle of the largest SST file in `store_dir` (inside a data block); returns its path.
std::string FlipOneByte(const std::string& store_dir);

}  // namespace engram::test
