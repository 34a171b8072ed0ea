// Layout: the shape and hash constants of a model's Engram tables.
//
// A Layout says which backbone layers carry an Engram table, the n-gram orders (2..max_ngram) and
// heads (K) per order, the prime size and offset of every (order, head) region, the per-layer odd
// multipliers of the hash, the compressed vocabulary size V', the pad id, and the row format. It is a
// validated, immutable value: Layout::Create checks every constraint of the reference
// (docs/layout-format.md) and every accessor may assume them.
//
// Regions are order-major inside a layer's table: n=2 heads 0..K-1, then n=3 heads 0..K-1, ...; a
// "column" is the index of a region in that order, so column c is order 2 + c / K, head c % K.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engram/status.hpp"

namespace engram {

// How one row's bytes are laid out.
enum class RowFormat : std::uint8_t {
  kFp8E4M3E8M0,  // `dim` E4M3 codes followed by dim/32 E8M0 scales (DeepSeek-V4.1: 256 + 8 = 264 B)
  kF32,          // `dim` IEEE binary32 values (the paper demo: 64 x f32 = 256 B)
  kBF16,         // `dim` bfloat16 values
  kF16,          // `dim` IEEE binary16 values
};

// "fp8_e4m3_e8m0", "f32", "bf16", "f16".
std::string_view RowFormatName(RowFormat format) noexcept;
Result<RowFormat> ParseRowFormat(std::string_view name);
// Bytes of one row of `dim` values; an error if `dim` does not suit the format (fp8 needs a multiple of 32).
Result<std::uint32_t> RowBytes(RowFormat format, std::uint32_t dim);

// Compile-time limits that keep per-token work in fixed-size arrays.
inline constexpr int kMaxNgram = 8;   // orders 2..kMaxNgram
inline constexpr int kMaxHeads = 64;  // heads per order
inline constexpr int kMaxColumns = 256;
inline constexpr int kMaxEngramLayers = 64;

struct LayerSpec {
  // The backbone layer that carries this Engram table (1 and 14 in DeepSeek-V4.1-Flash).
  std::int32_t layer_id = 0;
  // max_ngram odd multipliers; multipliers[j] multiplies the compressed id j positions back.
  std::vector<std::int64_t> multipliers;
  // (max_ngram - 1) * heads distinct prime region sizes, order-major (n=2 heads 0..K-1, n=3, ...).
  std::vector<std::int64_t> primes;
};

struct LayoutSpec {
  // A short name ("deepseek-v4.1-flash"); shown in tools and stored with a table.
  std::string name;
  // N_max: the highest n-gram order; orders run 2..max_ngram.
  std::int32_t max_ngram = 0;
  // K: hash heads per order.
  std::int32_t heads = 0;
  // V': the number of compressed token ids (ids are 0..V'-1). Bounds the multipliers.
  std::int64_t compressed_vocab_size = 0;
  // Raw id of the pad token. Default: 2 (DeepSeek tokenizers).
  std::int32_t pad_token_id = 2;
  // Compressed id read at positions before a sequence's start and at DEAD positions. Default: 2.
  std::int32_t pad_id = 2;
  // Row storage.
  RowFormat row_format = RowFormat::kFp8E4M3E8M0;
  // Values per row (256 for V4.1, 64 for the demo).
  std::int32_t row_dim = 0;
  // Seed the multipliers were generated from (reference: 0). Informational once multipliers are given.
  std::uint64_t seed = 0;
  // Per order 2..max_ngram, the size the prime search starts from (16,000,000 for V4.1; 646,400 demo).
  // Informational once primes are given; empty if unknown.
  std::vector<std::int64_t> base_sizes;
  std::vector<LayerSpec> layers;
};

// How to derive a new layout with the reference algorithms (primes and numpy-compatible multipliers).
struct LayoutGenerateOptions {
  std::string name;
  std::vector<std::int32_t> layer_ids;  // in config order
  std::int32_t max_ngram = 0;
  std::int32_t heads = 0;
  std::int64_t compressed_vocab_size = 0;
  std::vector<std::int64_t> base_sizes;  // one per order 2..max_ngram
  std::uint64_t seed = 0;
  std::int32_t pad_token_id = 2;
  std::int32_t pad_id = 2;
  RowFormat row_format = RowFormat::kFp8E4M3E8M0;
  std::int32_t row_dim = 0;
};

// The options that regenerate `spec` (same layers, orders, heads, V', base sizes, seed, row format). With
// other base sizes, the same algorithm gives a smaller or larger table (what `engram synth` scales).
LayoutGenerateOptions GenerateOptionsFor(const LayoutSpec& spec);

// Runs the reference prime allocation and multiplier generation (numpy default_rng(seed + 10007 *
// layer_id).integers(0, (INT64_MAX // V') // 2, size=max_ngram) * 2 + 1, reproduced bit for bit).
Result<LayoutSpec> GenerateLayoutSpec(const LayoutGenerateOptions& options);

class Layout {
 public:
  // Validates `spec` (see docs/layout-format.md for every rule) and computes the region offsets.
  static Result<Layout> Create(LayoutSpec spec);
  // A built-in layout: "deepseek-v4.1-flash" or "engram-demo".
  static Result<Layout> Preset(std::string_view name);
  static std::span<const std::string_view> PresetNames() noexcept;
  // Parses the JSON form (docs/layout-format.md). `source` names the input in errors.
  static Result<Layout> FromJson(std::string_view json, std::string_view source);
  static Result<Layout> LoadFile(const std::string& path);
  // A preset name if `preset_or_file` is one, otherwise a path to a JSON layout file.
  static Result<Layout> Resolve(std::string_view preset_or_file);

  // The JSON form, pretty-printed; FromJson(ToJson()) gives an equal layout.
  [[nodiscard]] std::string ToJson() const;

  [[nodiscard]] const LayoutSpec& spec() const noexcept { return spec_; }
  [[nodiscard]] const std::string& name() const noexcept { return spec_.name; }
  [[nodiscard]] int max_ngram() const noexcept { return spec_.max_ngram; }
  [[nodiscard]] int num_orders() const noexcept { return spec_.max_ngram - 1; }
  [[nodiscard]] int heads() const noexcept { return spec_.heads; }
  // Rows read per token per Engram layer: (max_ngram - 1) * heads.
  [[nodiscard]] int columns() const noexcept { return num_orders() * spec_.heads; }
  [[nodiscard]] int num_layers() const noexcept { return static_cast<int>(spec_.layers.size()); }
  [[nodiscard]] const LayerSpec& layer(int index) const { return spec_.layers.at(static_cast<std::size_t>(index)); }
  // The index (0..num_layers-1) of the Engram layer carried by backbone layer `layer_id`.
  [[nodiscard]] Result<int> LayerIndex(std::int32_t layer_id) const;
  // Rows in the table of the layer at `index` (the sum of its primes).
  [[nodiscard]] std::int64_t layer_rows(int index) const { return layer_rows_.at(static_cast<std::size_t>(index)); }
  // First global row of the region in `column` of the layer at `index`.
  [[nodiscard]] std::int64_t region_offset(int index, int column) const {
    return offsets_.at(static_cast<std::size_t>(index) * static_cast<std::size_t>(columns()) +
                       static_cast<std::size_t>(column));
  }
  [[nodiscard]] std::int64_t compressed_vocab_size() const noexcept { return spec_.compressed_vocab_size; }
  [[nodiscard]] std::int32_t pad_id() const noexcept { return spec_.pad_id; }
  [[nodiscard]] RowFormat row_format() const noexcept { return spec_.row_format; }
  [[nodiscard]] std::uint32_t row_bytes() const noexcept { return row_bytes_; }

  friend bool operator==(const Layout& a, const Layout& b);

 private:
  explicit Layout(LayoutSpec spec) : spec_(std::move(spec)) {}
  LayoutSpec spec_;
  std::uint32_t row_bytes_ = 0;
  std::vector<std::int64_t> layer_rows_;
  std::vector<std::int64_t> offsets_;  // [layer][column]
};

bool operator==(const LayerSpec& a, const LayerSpec& b);
bool operator==(const LayoutSpec& a, const LayoutSpec& b);

// Deterministic primality test, exact for every 64-bit value.
bool IsPrime(std::uint64_t n) noexcept;

}  // namespace engram
