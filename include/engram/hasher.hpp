// Hasher: compressed token ids -> global row ids of every Engram layer, bit-exact with the reference.
//
//   mix_n(t)     = (x_t*m[0]) XOR (x_{t-1}*m[1]) XOR ... XOR (x_{t-n+1}*m[n-1])   (64-bit wrap-around)
//   row(t, n, k) = offset[n][k] + (mix_n(t) mod p[n][k])                          (mod non-negative)
//
// All orders come from one pass (mix_{n+1} = mix_n XOR x_{t-n}*m[n]) and the modulo uses a precomputed
// reciprocal per region (detail/hash_math.hpp), never a hardware divide.
//
// Input is a *window*: the max_ngram - 1 ids that precede the first token (oldest first; the pad id
// before a sequence's start), then the tokens. Any entry may be kDeadId: walking back from a token,
// the first DEAD position and every older one read as the pad id (the sticky-block rule), and a DEAD
// token's own rows are those of an all-pad n-gram (its output is zeroed by the consumer).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engram/detail/hash_math.hpp"
#include "engram/layout.hpp"
#include "engram/status.hpp"

namespace engram {

// Hashes for one Engram layer. Cheap to copy; immutable; safe to share between threads.
class LayerHasher {
 public:
  static Result<LayerHasher> Create(const Layout& layout, int layer_index);

  [[nodiscard]] int columns() const noexcept { return columns_; }
  [[nodiscard]] int max_ngram() const noexcept { return max_ngram_; }
  [[nodiscard]] int heads() const noexcept { return heads_; }
  [[nodiscard]] std::int32_t layer_id() const noexcept { return layer_id_; }
  [[nodiscard]] std::int32_t pad_id() const noexcept { return pad_id_; }
  [[nodiscard]] std::span<const std::uint64_t> multipliers() const noexcept { return multipliers_; }
  [[nodiscard]] std::span<const detail::RegionHash> regions() const noexcept { return regions_; }

  // Hashes window[max_ngram-1 ..] (see the file comment) into out[t * columns() + c]. `out` must hold
  // exactly (window.size() - (max_ngram - 1)) * columns() values. Ids must be in [0, V') or kDeadId
  // (checked by TokenMap::Compress / CheckCompressedIds upstream; out-of-range ids give wrong rows,
  // never undefined behaviour).
  [[nodiscard]] Status HashWindow(std::span<const std::int32_t> window, std::span<std::int64_t> out) const;

  // The same with no size checks, for callers that have sized the buffers themselves.
  void HashWindowUnchecked(const std::int32_t* window, std::size_t num_tokens, std::int64_t* out) const noexcept;

 private:
  LayerHasher() = default;
  std::int32_t layer_id_ = 0;
  int max_ngram_ = 0;
  int heads_ = 0;
  int columns_ = 0;
  std::int32_t pad_id_ = 0;
  std::vector<std::uint64_t> multipliers_;
  std::vector<detail::RegionHash> regions_;  // by column
};

// Hashers for every Engram layer of a layout.
class Hasher {
 public:
  static Result<Hasher> Create(const Layout& layout);

  [[nodiscard]] int num_layers() const noexcept { return static_cast<int>(layers_.size()); }
  [[nodiscard]] int columns() const noexcept { return layers_.front().columns(); }
  [[nodiscard]] int max_ngram() const noexcept { return layers_.front().max_ngram(); }
  [[nodiscard]] std::int32_t pad_id() const noexcept { return layers_.front().pad_id(); }
  [[nodiscard]] const LayerHasher& layer(int index) const { return layers_.at(static_cast<std::size_t>(index)); }

  // Hashes the window for every layer: out[(l * num_tokens + t) * columns() + c].
  [[nodiscard]] Status HashWindow(std::span<const std::int32_t> window, std::span<std::int64_t> out) const;

 private:
  Hasher() = default;
  std::vector<LayerHasher> layers_;
};

// Cuts `ids` (compressed) into sequences of `seq_len` tokens (0: one sequence; the last may be shorter),
// each starting fresh, and writes out[t * columns + c] for every token. This is `engram hash`.
[[nodiscard]] Status HashFreshSequences(const LayerHasher& hasher, std::span<const std::int32_t> ids,
                                        std::size_t seq_len, std::span<std::int64_t> out);

// Builds the window for a fresh sequence: max_ngram - 1 pad ids followed by `tokens`.
std::vector<std::int32_t> FreshWindow(const Layout& layout, std::span<const std::int32_t> tokens);

}  // namespace engram
