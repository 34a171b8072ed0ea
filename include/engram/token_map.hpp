// TokenMap: raw tokenizer ids -> compressed Engram ids (the paper's tokenizer compression).
//
// The on-disk form is one little-endian int32 per raw token id: its compressed id, or -1 for an id
// the tokenizer does not define (`../shared/data/deepseek-v3.token-map.i32`, made by make-token-map.py).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engram/layout.hpp"
#include "engram/status.hpp"

namespace engram {

class TokenMap {
 public:
  // Loads an int32 map file. Errors: a size that is not a multiple of 4 (kCorruption, "truncated"),
  // an entry below -1 (kCorruption naming the entry), an empty map.
  static Result<TokenMap> LoadFile(const std::string& path);
  // Takes ownership of `ids` (entry i: compressed id of raw id i, or -1). `source` names it in errors.
  static Result<TokenMap> FromIds(std::vector<std::int32_t> ids, std::string source);

  // Number of raw ids the map covers.
  [[nodiscard]] std::int64_t vocab_size() const noexcept { return static_cast<std::int64_t>(ids_.size()); }
  // One more than the largest compressed id (the V' this map needs).
  [[nodiscard]] std::int64_t compressed_vocab_size() const noexcept { return compressed_vocab_size_; }
  [[nodiscard]] const std::string& source() const noexcept { return source_; }
  [[nodiscard]] std::span<const std::int32_t> ids() const noexcept { return ids_; }

  // Checks that every compressed id is below the layout's V' and that the layout's pad token maps to its
  // pad id. Errors name the map, the field and the values.
  [[nodiscard]] Status CheckCompatible(const Layout& layout) const;

  // Compresses raw ids into `out` (same size). A negative id, an id >= vocab_size() or an id the map
  // does not define is an error naming its position (position_base + index) and value.
  [[nodiscard]] Status Compress(std::span<const std::int32_t> raw, std::span<std::int32_t> out,
                                std::int64_t position_base = 0) const;

 private:
  TokenMap() = default;
  std::vector<std::int32_t> ids_;
  std::int64_t compressed_vocab_size_ = 0;
  std::string source_;
};

// Checks that compressed ids are in [0, V') of `layout`; an error names the first bad position.
[[nodiscard]] Status CheckCompressedIds(std::span<const std::int32_t> ids, const Layout& layout,
                                        std::int64_t position_base = 0);

}  // namespace engram
