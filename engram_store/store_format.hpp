// Keys, values and the manifest of a store (internal). docs/store.md describes the format.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engram/status.hpp"
#include "engram/store/store.hpp"

namespace engram::store::detail {

inline constexpr int kStoreFormat = 1;
inline constexpr const char* kFormatKey = "engram/format";
inline constexpr const char* kLayoutKey = "engram/layout";
inline constexpr const char* kTokenMapKey = "engram/token_map";
inline constexpr const char* kManifestKey = "engram/manifest";
inline constexpr const char* kEditsCf = "edits";

// A page key: layer index in the top byte, page number below, big-endian (sorts by layer, then page).
std::string PageKey(int layer_index, std::uint64_t page);
void DecodePageKey(const std::string& key, int& layer_index, std::uint64_t& page);
// An edit key: layer, row, version (big-endian).
std::string EditKey(int layer_index, std::uint64_t row, VersionId version);
bool DecodeEditKey(const std::string& key, int& layer_index, std::uint64_t& row, VersionId& version);

std::string GenerationCf(std::uint64_t generation);

struct GenerationRecord {
  std::uint64_t id = 0;
  std::vector<TensorChecksum> tensors;
  std::uint64_t rows = 0;
  std::uint64_t checksum_chunk_rows = 0;  // rows per leaf of the tensors' XXH3 trees
};

struct Manifest {
  std::uint32_t rows_per_key = 0;
  std::uint32_t row_bytes = 0;
  VersionId next_version = 1;
  std::uint64_t next_generation = 1;
  std::vector<VersionInfo> versions;  // visible, in creation order
  std::vector<GenerationRecord> generations;
  std::string last_verification;
};

std::string EncodeManifest(const Manifest& m);
Result<Manifest> DecodeManifest(const std::string& text);

}  // namespace engram::store::detail
