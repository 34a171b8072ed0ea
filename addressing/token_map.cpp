#include "engram/token_map.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "../core/file.hpp"

namespace engram {

Result<TokenMap> TokenMap::LoadFile(const std::string& path) {
  ENGRAM_ASSIGN_OR_RETURN(auto ids, detail::ReadInt32File(path).WithContext("token map"));
  return FromIds(std::move(ids), path);
}

Result<TokenMap> TokenMap::FromIds(std::vector<std::int32_t> ids, std::string source) {
  if (ids.empty()) return Status::Corruption(fmt::format("token map {}: empty", source));
  std::int32_t max_id = -1;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < -1) {
      return Status::Corruption(
          fmt::format("token map {}: entry {} (raw token id {}) holds {}; entries must be >= 0, or -1 "
                      "for an undefined token",
                      source, i, i, ids[i]));
    }
    max_id = std::max(max_id, ids[i]);
  }
  if (max_id < 0) return Status::Corruption(fmt::format("token map {}: defines no token", source));
  TokenMap m;
  m.ids_ = std::move(ids);
  m.compressed_vocab_size_ = static_cast<std::int64_t>(max_id) + 1;
  m.source_ = std::move(source);
  return m;
}

Status TokenMap::CheckCompatible(const Layout& layout) const {
  if (compressed_vocab_size_ > layout.compressed_vocab_size()) {
    return Status::InvalidArgument(
        fmt::format("token map {} has compressed ids up to {}, beyond layout \"{}\"'s compressed_vocab_size {}",
                    source_, compressed_vocab_size_ - 1, layout.name(), layout.compressed_vocab_size()));
  }
  const std::int32_t pad_token = layout.spec().pad_token_id;
  if (pad_token >= vocab_size() || ids_[static_cast<std::size_t>(pad_token)] != layout.pad_id()) {
    return Status::InvalidArgument(fmt::format(
        "token map {} maps the pad token (raw id {}) to {}, but layout \"{}\" has pad_id {}", source_, pad_token,
        pad_token < vocab_size() ? ids_[static_cast<std::size_t>(pad_token)] : -1, layout.name(), layout.pad_id()));
  }
  return Status::Ok();
}

Status TokenMap::Compress(std::span<const std::int32_t> raw, std::span<std::int32_t> out,
                          std::int64_t position_base) const {
  if (raw.size() != out.size()) {
    return Status::InvalidArgument(fmt::format("compress: {} input ids but room for {}", raw.size(), out.size()));
  }
  const auto vocab = static_cast<std::uint32_t>(ids_.size());
  const std::int32_t* table = ids_.data();
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const std::int32_t t = raw[i];
    // One unsigned compare rejects negative and too-large ids alike.
    if (static_cast<std::uint32_t>(t) >= vocab) {
      return Status::OutOfRange(fmt::format("token id {} at position {} is outside the token map's range 0..{} ({})", t,
                                            position_base + static_cast<std::int64_t>(i), vocab - 1, source_));
    }
    const std::int32_t c = table[t];
    if (c < 0) {
      return Status::OutOfRange(fmt::format("token id {} at position {} is not defined by the token map {}", t,
                                            position_base + static_cast<std::int64_t>(i), source_));
    }
    out[i] = c;
  }
  return Status::Ok();
}

Status CheckCompressedIds(std::span<const std::int32_t> ids, const Layout& layout, std::int64_t position_base) {
  const auto v = static_cast<std::uint64_t>(layout.compressed_vocab_size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (static_cast<std::uint64_t>(static_cast<std::int64_t>(ids[i])) >= v) {
      return Status::OutOfRange(fmt::format("compressed id {} at position {} is outside 0..{} (layout \"{}\")", ids[i],
                                            position_base + static_cast<std::int64_t>(i), v - 1, layout.name()));
    }
  }
  return Status::Ok();
}

}  // namespace engram
