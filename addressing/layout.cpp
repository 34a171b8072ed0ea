#include "engram/layout.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <limits>
#include <unordered_set>

#include "engram/detail/uint128.hpp"
#include "numpy_random.hpp"

namespace engram {

std::string_view RowFormatName(RowFormat format) noexcept {
  switch (format) {
    case RowFormat::kFp8E4M3E8M0: return "fp8_e4m3_e8m0";
    case RowFormat::kF32: return "f32";
    case RowFormat::kBF16: return "bf16";
    case RowFormat::kF16: return "f16";
  }
  return "unknown";
}

Result<RowFormat> ParseRowFormat(std::string_view name) {
  for (RowFormat f : {RowFormat::kFp8E4M3E8M0, RowFormat::kF32, RowFormat::kBF16, RowFormat::kF16}) {
    if (name == RowFormatName(f)) return f;
  }
  return Status::InvalidArgument(
      fmt::format("unknown row format \"{}\" (expected fp8_e4m3_e8m0, f32, bf16 or f16)", name));
}

Result<std::uint32_t> RowBytes(RowFormat format, std::uint32_t dim) {
  if (dim == 0 || dim > (1U << 20))
    return Status::InvalidArgument(fmt::format("row dim {} is out of range (1..2^20)", dim));
  switch (format) {
    case RowFormat::kFp8E4M3E8M0:
      if (dim % 32 != 0) {
        return Status::InvalidArgument(
            fmt::format("row dim {} is not a multiple of 32 (one E8M0 scale per 32 values)", dim));
      }
      return dim + dim / 32;
    case RowFormat::kF32: return dim * 4U;
    case RowFormat::kBF16:
    case RowFormat::kF16: return dim * 2U;
  }
  return Status::InvalidArgument("unknown row format");
}

namespace {

std::uint64_t MulMod(std::uint64_t a, std::uint64_t b, std::uint64_t m) {
  return static_cast<std::uint64_t>(static_cast<detail::Uint128>(a) * b % m);
}

std::uint64_t PowMod(std::uint64_t b, std::uint64_t e, std::uint64_t m) {
  std::uint64_t r = 1;
  b %= m;
  while (e > 0) {
    if (e & 1U) r = MulMod(r, b, m);
    b = MulMod(b, b, m);
    e >>= 1;
  }
  return r;
}

}  // namespace

bool IsPrime(std::uint64_t n) noexcept {
  if (n < 2) return false;
  constexpr std::array<std::uint64_t, 12> kBases = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
  for (std::uint64_t p : kBases) {
    if (n % p == 0) return n == p;
  }
  std::uint64_t d = n - 1;
  int s = 0;
  while ((d & 1U) == 0) {
    d >>= 1;
    ++s;
  }
  // These twelve bases decide primality for every n < 3.3e24 (Sorenson & Webster).
  for (std::uint64_t a : kBases) {
    std::uint64_t x = PowMod(a, d, n);
    if (x == 1 || x == n - 1) continue;
    bool composite = true;
    for (int r = 1; r < s; ++r) {
      x = MulMod(x, x, n);
      if (x == n - 1) {
        composite = false;
        break;
      }
    }
    if (composite) return false;
  }
  return true;
}

bool operator==(const LayerSpec& a, const LayerSpec& b) {
  return a.layer_id == b.layer_id && a.multipliers == b.multipliers && a.primes == b.primes;
}

bool operator==(const LayoutSpec& a, const LayoutSpec& b) {
  return a.name == b.name && a.max_ngram == b.max_ngram && a.heads == b.heads &&
         a.compressed_vocab_size == b.compressed_vocab_size && a.pad_token_id == b.pad_token_id &&
         a.pad_id == b.pad_id && a.row_format == b.row_format && a.row_dim == b.row_dim && a.seed == b.seed &&
         a.base_sizes == b.base_sizes && a.layers == b.layers;
}

bool operator==(const Layout& a, const Layout& b) {
  return a.spec_ == b.spec_;
}

namespace {

// "layers[1].primes[n=3][h=2]"
std::string PrimeField(std::size_t layer, int column, int heads) {
  return fmt::format("layers[{}].primes[n={}][h={}]", layer, 2 + column / heads, column % heads);
}

Status ValidateSpec(const LayoutSpec& s) {
  if (s.name.empty()) return Status::InvalidArgument("field name: must not be empty");
  if (s.max_ngram < 2 || s.max_ngram > kMaxNgram) {
    return Status::InvalidArgument(fmt::format("field max_ngram: {} is out of range (2..{})", s.max_ngram, kMaxNgram));
  }
  if (s.heads < 1 || s.heads > kMaxHeads) {
    return Status::InvalidArgument(fmt::format("field heads: {} is out of range (1..{})", s.heads, kMaxHeads));
  }
  const int columns = (s.max_ngram - 1) * s.heads;
  if (columns > kMaxColumns) {
    return Status::InvalidArgument(
        fmt::format("fields max_ngram, heads: {} regions per layer exceed the limit of {}", columns, kMaxColumns));
  }
  if (s.compressed_vocab_size < 1 || s.compressed_vocab_size > std::numeric_limits<std::int32_t>::max()) {
    return Status::InvalidArgument(
        fmt::format("field compressed_vocab_size: {} is out of range (1..2^31-1)", s.compressed_vocab_size));
  }
  if (s.pad_id < 0 || s.pad_id >= s.compressed_vocab_size) {
    return Status::InvalidArgument(
        fmt::format("field pad_id: {} is not a compressed id (0..{})", s.pad_id, s.compressed_vocab_size - 1));
  }
  if (s.pad_token_id < 0)
    return Status::InvalidArgument(fmt::format("field pad_token_id: {} is negative", s.pad_token_id));
  if (s.row_dim <= 0) return Status::InvalidArgument(fmt::format("field row.dim: {} must be positive", s.row_dim));
  if (auto rb = RowBytes(s.row_format, static_cast<std::uint32_t>(s.row_dim)); !rb.ok()) {
    return std::move(rb).status().WithContext("field row");
  }
  if (!s.base_sizes.empty()) {
    if (static_cast<int>(s.base_sizes.size()) != s.max_ngram - 1) {
      return Status::InvalidArgument(
          fmt::format("field base_sizes: {} values for {} orders", s.base_sizes.size(), s.max_ngram - 1));
    }
    for (std::size_t i = 0; i < s.base_sizes.size(); ++i) {
      if (s.base_sizes[i] < 2) {
        return Status::InvalidArgument(fmt::format("field base_sizes[{}]: {} must be at least 2", i, s.base_sizes[i]));
      }
    }
  }
  if (s.layers.empty()) return Status::InvalidArgument("field layers: a layout needs at least one Engram layer");
  if (s.layers.size() > static_cast<std::size_t>(kMaxEngramLayers)) {
    return Status::InvalidArgument(
        fmt::format("field layers: {} layers exceed the limit of {}", s.layers.size(), kMaxEngramLayers));
  }
  // Products of compressed ids (< V') and multipliers must not overflow int64.
  const std::int64_t multiplier_bound = std::numeric_limits<std::int64_t>::max() / s.compressed_vocab_size;
  std::unordered_set<std::int64_t> seen_primes;
  std::unordered_set<std::int32_t> seen_ids;
  for (std::size_t li = 0; li < s.layers.size(); ++li) {
    const LayerSpec& l = s.layers[li];
    if (l.layer_id < 0)
      return Status::InvalidArgument(fmt::format("field layers[{}].layer_id: {} is negative", li, l.layer_id));
    if (!seen_ids.insert(l.layer_id).second) {
      return Status::InvalidArgument(fmt::format("field layers[{}].layer_id: layer {} appears twice", li, l.layer_id));
    }
    if (static_cast<int>(l.multipliers.size()) != s.max_ngram) {
      return Status::InvalidArgument(fmt::format("field layers[{}].multipliers: {} values, expected max_ngram = {}", li,
                                                 l.multipliers.size(), s.max_ngram));
    }
    for (std::size_t j = 0; j < l.multipliers.size(); ++j) {
      const std::int64_t m = l.multipliers[j];
      if (m <= 0 || m % 2 == 0 || m >= multiplier_bound) {
        return Status::InvalidArgument(
            fmt::format("field layers[{}].multipliers[{}]: {} must be odd, positive and below INT64_MAX / V' = {}", li,
                        j, m, multiplier_bound));
      }
    }
    if (static_cast<int>(l.primes.size()) != columns) {
      return Status::InvalidArgument(fmt::format(
          "field layers[{}].primes: {} values, expected (max_ngram - 1) * heads = {}", li, l.primes.size(), columns));
    }
    std::int64_t rows = 0;
    for (int c = 0; c < columns; ++c) {
      const std::int64_t p = l.primes[static_cast<std::size_t>(c)];
      if (p >= (std::int64_t{1} << 62)) {
        return Status::InvalidArgument(
            fmt::format("field {}: {} exceeds the largest supported region size, 2^62", PrimeField(li, c, s.heads), p));
      }
      if (p < 2 || !IsPrime(static_cast<std::uint64_t>(p))) {
        return Status::InvalidArgument(fmt::format("field {}: {} is not prime", PrimeField(li, c, s.heads), p));
      }
      if (!seen_primes.insert(p).second) {
        return Status::InvalidArgument(
            fmt::format("field {}: {} is used by another region (region sizes must be distinct model-wide)",
                        PrimeField(li, c, s.heads), p));
      }
      if (p > std::numeric_limits<std::int64_t>::max() - rows) {
        return Status::InvalidArgument(fmt::format("field layers[{}].primes: the table size overflows int64", li));
      }
      rows += p;
    }
  }
  return Status::Ok();
}

struct PresetConstants {
  std::string_view name;
  LayoutGenerateOptions generate;
  std::vector<std::vector<std::int64_t>> multipliers;  // per layer
  std::vector<std::vector<std::int64_t>> primes;       // per layer, order-major
};

// The constants of ../shared/reference/engram-addressing.md, shipped as data (numpy's stream is not
// guaranteed across versions); tests check that GenerateLayoutSpec reproduces them.
const std::vector<PresetConstants>& Presets() {
  static const std::vector<PresetConstants> presets = [] {
    std::vector<PresetConstants> v;
    PresetConstants flash;
    flash.name = "deepseek-v4.1-flash";
    flash.generate = LayoutGenerateOptions{.name = "deepseek-v4.1-flash",
                                           .layer_ids = {1, 14},
                                           .max_ngram = 4,
                                           .heads = 8,
                                           .compressed_vocab_size = 99092,
                                           .base_sizes = {16000000, 16000000, 16000000},
                                           .seed = 0,
                                           .pad_token_id = 2,
                                           .pad_id = 2,
                                           .row_format = RowFormat::kFp8E4M3E8M0,
                                           .row_dim = 256};
    flash.multipliers = {{76632096046245, 4839876093313, 35959672319349, 73987337458391},
                         {67716810739261, 51510806800915, 30921347202721, 82619226485591}};
    flash.primes = {{16000057, 16000079, 16000081, 16000097, 16000121, 16000129, 16000133, 16000183,   // n=2
                     16000189, 16000207, 16000211, 16000253, 16000277, 16000289, 16000307, 16000321,   // n=3
                     16000339, 16000381, 16000393, 16000399, 16000403, 16000409, 16000447, 16000463},  // n=4
                    {16000477, 16000487, 16000499, 16000507, 16000511, 16000573, 16000609, 16000627,
                     16000667, 16000669, 16000693, 16000697, 16000711, 16000729, 16000759, 16000769,
                     16000781, 16000799, 16000813, 16000819, 16000841, 16000877, 16000879, 16000889}};
    v.push_back(std::move(flash));

    PresetConstants demo;
    demo.name = "engram-demo";
    demo.generate = LayoutGenerateOptions{.name = "engram-demo",
                                          .layer_ids = {1, 15},
                                          .max_ngram = 3,
                                          .heads = 8,
                                          .compressed_vocab_size = 99045,
                                          .base_sizes = {646400, 646400},
                                          .seed = 0,
                                          .pad_token_id = 2,
                                          .pad_id = 2,
                                          .row_format = RowFormat::kF32,
                                          .row_dim = 64};
    demo.multipliers = {{76668460411071, 4842172768323, 35976736326609},
                        {28932822131039, 56046953508373, 53954628306497}};
    demo.primes = {{646403, 646411, 646421, 646423, 646433, 646453, 646519, 646523, 646537, 646543, 646549, 646571,
                    646573, 646577, 646609, 646619},
                   {646631, 646637, 646643, 646669, 646687, 646721, 646757, 646771, 646781, 646823, 646831, 646837,
                    646843, 646859, 646873, 646879}};
    v.push_back(std::move(demo));
    return v;
  }();
  return presets;
}

LayoutSpec SpecSkeleton(const LayoutGenerateOptions& o) {
  LayoutSpec s;
  s.name = o.name;
  s.max_ngram = o.max_ngram;
  s.heads = o.heads;
  s.compressed_vocab_size = o.compressed_vocab_size;
  s.pad_token_id = o.pad_token_id;
  s.pad_id = o.pad_id;
  s.row_format = o.row_format;
  s.row_dim = o.row_dim;
  s.seed = o.seed;
  s.base_sizes = o.base_sizes;
  return s;
}

}  // namespace

LayoutGenerateOptions GenerateOptionsFor(const LayoutSpec& spec) {
  LayoutGenerateOptions o;
  o.name = spec.name;
  for (const LayerSpec& l : spec.layers) o.layer_ids.push_back(l.layer_id);
  o.max_ngram = spec.max_ngram;
  o.heads = spec.heads;
  o.compressed_vocab_size = spec.compressed_vocab_size;
  o.base_sizes = spec.base_sizes;
  o.seed = spec.seed;
  o.pad_token_id = spec.pad_token_id;
  o.pad_id = spec.pad_id;
  o.row_format = spec.row_format;
  o.row_dim = spec.row_dim;
  return o;
}

Result<LayoutSpec> GenerateLayoutSpec(const LayoutGenerateOptions& o) {
  LayoutSpec s = SpecSkeleton(o);
  if (o.layer_ids.empty()) return Status::InvalidArgument("generate: no layer ids");
  if (o.max_ngram < 2 || o.max_ngram > kMaxNgram || o.heads < 1 || o.heads > kMaxHeads) {
    return Status::InvalidArgument(fmt::format("generate: max_ngram {} / heads {} out of range", o.max_ngram, o.heads));
  }
  if (static_cast<int>(o.base_sizes.size()) != o.max_ngram - 1) {
    return Status::InvalidArgument(
        fmt::format("generate: {} base sizes for {} orders", o.base_sizes.size(), o.max_ngram - 1));
  }
  if (o.compressed_vocab_size < 1) return Status::InvalidArgument("generate: compressed_vocab_size must be positive");
  const std::int64_t high = (std::numeric_limits<std::int64_t>::max() / o.compressed_vocab_size) / 2;
  std::unordered_set<std::int64_t> seen;
  for (std::int32_t layer_id : o.layer_ids) {
    if (layer_id < 0) return Status::InvalidArgument(fmt::format("generate: layer id {} is negative", layer_id));
    LayerSpec l;
    l.layer_id = layer_id;
    // Primes: per order, start at base - 1; each head takes the smallest unused prime above the last.
    for (int n = 2; n <= o.max_ngram; ++n) {
      std::int64_t start = o.base_sizes[static_cast<std::size_t>(n - 2)] - 1;
      for (int k = 0; k < o.heads; ++k) {
        std::int64_t p = start + 1;
        while (!IsPrime(static_cast<std::uint64_t>(p)) || seen.contains(p)) ++p;
        seen.insert(p);
        l.primes.push_back(p);
        start = p;
      }
    }
    // Multipliers: numpy default_rng(seed + 10007 * layer_id).integers(0, high, size=max_ngram) * 2 + 1.
    const std::uint64_t rng_seed = o.seed + 10007ULL * static_cast<std::uint64_t>(layer_id);
    ENGRAM_ASSIGN_OR_RETURN(auto draws,
                            detail::NumpyIntegers(rng_seed, 0, high, static_cast<std::size_t>(o.max_ngram)));
    for (std::int64_t d : draws) l.multipliers.push_back(d * 2 + 1);
    s.layers.push_back(std::move(l));
  }
  return s;
}

Result<Layout> Layout::Create(LayoutSpec spec) {
  ENGRAM_RETURN_IF_ERROR_CTX(ValidateSpec(spec), fmt::format("layout \"{}\"", spec.name));
  Layout layout(std::move(spec));
  layout.row_bytes_ = RowBytes(layout.spec_.row_format, static_cast<std::uint32_t>(layout.spec_.row_dim)).value();
  const int cols = layout.columns();
  for (const LayerSpec& l : layout.spec_.layers) {
    std::int64_t offset = 0;
    for (int c = 0; c < cols; ++c) {
      layout.offsets_.push_back(offset);
      offset += l.primes[static_cast<std::size_t>(c)];
    }
    layout.layer_rows_.push_back(offset);
  }
  return layout;
}

std::span<const std::string_view> Layout::PresetNames() noexcept {
  static constexpr std::array<std::string_view, 2> kNames = {"deepseek-v4.1-flash", "engram-demo"};
  return kNames;
}

Result<Layout> Layout::Preset(std::string_view name) {
  for (const PresetConstants& p : Presets()) {
    if (p.name != name) continue;
    LayoutSpec s = SpecSkeleton(p.generate);
    for (std::size_t i = 0; i < p.generate.layer_ids.size(); ++i) {
      s.layers.push_back(
          LayerSpec{.layer_id = p.generate.layer_ids[i], .multipliers = p.multipliers[i], .primes = p.primes[i]});
    }
    return Create(std::move(s));
  }
  return Status::NotFound(
      fmt::format("no layout preset named \"{}\" (presets: deepseek-v4.1-flash, engram-demo)", name));
}

Result<int> Layout::LayerIndex(std::int32_t layer_id) const {
  for (std::size_t i = 0; i < spec_.layers.size(); ++i) {
    if (spec_.layers[i].layer_id == layer_id) return static_cast<int>(i);
  }
  std::string ids;
  for (const auto& l : spec_.layers) ids += (ids.empty() ? "" : ", ") + std::to_string(l.layer_id);
  return Status::NotFound(
      fmt::format("layout \"{}\" has no Engram layer {} (its Engram layers: {})", spec_.name, layer_id, ids));
}

}  // namespace engram
