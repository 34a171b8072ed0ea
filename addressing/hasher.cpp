#include "engram/hasher.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace engram {
namespace {

// One pass per token: the effective ids walking back (DEAD is sticky: once met, everything older reads
// as pad), one mix per order, then one reduced row per (order, head).
template <int N>
void HashFixed(const std::int32_t* window, std::size_t num_tokens, const std::uint64_t* m, std::uint64_t pad,
               const detail::RegionHash* regions, int heads, std::int64_t* out) {
  const std::size_t cols = static_cast<std::size_t>(N - 1) * static_cast<std::size_t>(heads);
  for (std::size_t t = 0; t < num_tokens; ++t) {
    const std::int32_t* x = window + (N - 1) + t;  // x[0] newest, x[-j] j positions back
    std::uint64_t mixes[N - 1];
    bool dead = x[0] < 0;
    std::uint64_t mix = (dead ? pad : static_cast<std::uint64_t>(x[0])) * m[0];
    for (int j = 1; j < N; ++j) {
      const std::int32_t v = x[-j];
      dead = dead || v < 0;
      mix ^= (dead ? pad : static_cast<std::uint64_t>(v)) * m[j];
      mixes[j - 1] = mix;
    }
    std::int64_t* o = out + t * cols;
    const detail::RegionHash* r = regions;
    for (int n = 0; n < N - 1; ++n) {
      const std::uint64_t mx = mixes[n];
      for (int k = 0; k < heads; ++k) *o++ = detail::RegionRow(mx, *r++);
    }
  }
}

using HashFn = void (*)(const std::int32_t*, std::size_t, const std::uint64_t*, std::uint64_t,
                        const detail::RegionHash*, int, std::int64_t*);

HashFn PickHashFn(int max_ngram) {
  switch (max_ngram) {
    case 2: return &HashFixed<2>;
    case 3: return &HashFixed<3>;
    case 4: return &HashFixed<4>;
    case 5: return &HashFixed<5>;
    case 6: return &HashFixed<6>;
    case 7: return &HashFixed<7>;
    case 8: return &HashFixed<8>;
    default: return nullptr;
  }
}
static_assert(kMaxNgram == 8, "PickHashFn covers orders up to kMaxNgram");

}  // namespace

Result<LayerHasher> LayerHasher::Create(const Layout& layout, int layer_index) {
  if (layer_index < 0 || layer_index >= layout.num_layers()) {
    return Status::OutOfRange(fmt::format("layer index {} is outside 0..{} of layout \"{}\"", layer_index,
                                          layout.num_layers() - 1, layout.name()));
  }
  LayerHasher h;
  const LayerSpec& l = layout.layer(layer_index);
  h.layer_id_ = l.layer_id;
  h.max_ngram_ = layout.max_ngram();
  h.heads_ = layout.heads();
  h.columns_ = layout.columns();
  h.pad_id_ = layout.pad_id();
  for (std::int64_t m : l.multipliers) h.multipliers_.push_back(static_cast<std::uint64_t>(m));
  for (int c = 0; c < h.columns_; ++c) {
    h.regions_.push_back(detail::MakeRegionHash(static_cast<std::uint64_t>(l.primes[static_cast<std::size_t>(c)]),
                                                layout.region_offset(layer_index, c)));
  }
  return h;
}

void LayerHasher::HashWindowUnchecked(const std::int32_t* window, std::size_t num_tokens,
                                      std::int64_t* out) const noexcept {
  PickHashFn(max_ngram_)(window, num_tokens, multipliers_.data(), static_cast<std::uint64_t>(pad_id_), regions_.data(),
                         heads_, out);
}

Status LayerHasher::HashWindow(std::span<const std::int32_t> window, std::span<std::int64_t> out) const {
  const auto hist = static_cast<std::size_t>(max_ngram_ - 1);
  if (window.size() < hist) {
    return Status::InvalidArgument(
        fmt::format("hash window of {} ids is shorter than its history of {}", window.size(), hist));
  }
  const std::size_t n = window.size() - hist;
  if (out.size() != n * static_cast<std::size_t>(columns_)) {
    return Status::InvalidArgument(fmt::format("hash output holds {} row ids; {} tokens x {} columns need {}",
                                               out.size(), n, columns_, n * static_cast<std::size_t>(columns_)));
  }
  HashWindowUnchecked(window.data(), n, out.data());
  return Status::Ok();
}

Result<Hasher> Hasher::Create(const Layout& layout) {
  Hasher h;
  for (int i = 0; i < layout.num_layers(); ++i) {
    ENGRAM_ASSIGN_OR_RETURN(LayerHasher lh, LayerHasher::Create(layout, i));
    h.layers_.push_back(std::move(lh));
  }
  return h;
}

Status Hasher::HashWindow(std::span<const std::int32_t> window, std::span<std::int64_t> out) const {
  const auto hist = static_cast<std::size_t>(max_ngram() - 1);
  if (window.size() < hist) {
    return Status::InvalidArgument(
        fmt::format("hash window of {} ids is shorter than its history of {}", window.size(), hist));
  }
  const std::size_t n = window.size() - hist;
  const std::size_t per_layer = n * static_cast<std::size_t>(columns());
  if (out.size() != per_layer * layers_.size()) {
    return Status::InvalidArgument(
        fmt::format("hash output holds {} row ids; {} layers x {} tokens x {} columns need {}", out.size(),
                    layers_.size(), n, columns(), per_layer * layers_.size()));
  }
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    layers_[l].HashWindowUnchecked(window.data(), n, out.data() + l * per_layer);
  }
  return Status::Ok();
}

Status HashFreshSequences(const LayerHasher& hasher, std::span<const std::int32_t> ids, std::size_t seq_len,
                          std::span<std::int64_t> out) {
  const auto cols = static_cast<std::size_t>(hasher.columns());
  if (out.size() != ids.size() * cols) {
    return Status::InvalidArgument(fmt::format("hash output holds {} row ids; {} tokens x {} columns need {}",
                                               out.size(), ids.size(), cols, ids.size() * cols));
  }
  const auto hist = static_cast<std::size_t>(hasher.max_ngram() - 1);
  if (seq_len == 0) seq_len = ids.size();
  std::vector<std::int32_t> head(2 * hist);
  for (std::size_t s = 0; s < ids.size(); s += seq_len) {
    const std::size_t len = std::min(seq_len, ids.size() - s);
    // The first `hist` tokens read pad history: hash them from a small window.
    const std::size_t first = std::min(hist, len);
    std::fill(head.begin(), head.begin() + static_cast<std::ptrdiff_t>(hist), hasher.pad_id());
    std::copy_n(ids.begin() + static_cast<std::ptrdiff_t>(s), first, head.begin() + static_cast<std::ptrdiff_t>(hist));
    hasher.HashWindowUnchecked(head.data(), first, out.data() + s * cols);
    // The rest read their history from the sequence itself: the ids are their own window.
    if (len > hist) hasher.HashWindowUnchecked(ids.data() + s, len - hist, out.data() + (s + hist) * cols);
  }
  return Status::Ok();
}

std::vector<std::int32_t> FreshWindow(const Layout& layout, std::span<const std::int32_t> tokens) {
  std::vector<std::int32_t> w(static_cast<std::size_t>(layout.max_ngram() - 1), layout.pad_id());
  w.insert(w.end(), tokens.begin(), tokens.end());
  return w;
}

}  // namespace engram
