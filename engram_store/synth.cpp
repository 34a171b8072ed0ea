#include "engram/store/synth.hpp"

#include <fmt/format.h>
#include <sys/stat.h>

#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "../core/file.hpp"
#include "../core/progress.hpp"

namespace engram::store {
namespace {

std::uint64_t SplitMix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// IEEE binary16 bits of k / 1024 for |k| <= 1024 (exactly representable).
std::uint16_t HalfOf(std::int32_t k) {
  if (k == 0) return 0;
  const std::uint16_t sign = k < 0 ? std::uint16_t{0x8000} : std::uint16_t{0};
  std::uint32_t m = static_cast<std::uint32_t>(k < 0 ? -k : k);  // value = m * 2^-10
  int e = 31 - std::countl_zero(m);                              // m in [2^e, 2^(e+1))
  // value = 1.f * 2^(e - 10); binary16 exponent bias 15; mantissa 10 bits
  const auto exponent = static_cast<std::uint16_t>(e - 10 + 15);
  const auto mantissa = static_cast<std::uint16_t>((m << (10 - e)) & 0x3FFU);
  return static_cast<std::uint16_t>(sign | (exponent << 10) | mantissa);
}

void PutU16(std::byte* p, std::uint16_t v) {
  std::memcpy(p, &v, 2);
}

}  // namespace

std::string TensorName(std::string_view pattern, std::int32_t layer_id) {
  std::string out(pattern);
  const auto pos = out.find("{L}");
  if (pos != std::string::npos) out.replace(pos, 3, std::to_string(layer_id));
  return out;
}

std::vector<TensorSpec> LayerTensors(const Layout& layout, int layer_index, const TensorNaming& naming) {
  const auto rows = static_cast<std::uint64_t>(layout.layer_rows(layer_index));
  const auto dim = static_cast<std::uint64_t>(layout.spec().row_dim);
  const std::int32_t id = layout.layer(layer_index).layer_id;
  std::vector<TensorSpec> out;
  switch (layout.row_format()) {
    case RowFormat::kFp8E4M3E8M0:
      out.push_back({TensorName(naming.weight, id), DType::kF8E4M3, {rows, dim}});
      out.push_back({TensorName(naming.scale, id), DType::kF8E8M0, {rows, dim / 32}});
      break;
    case RowFormat::kF32: out.push_back({TensorName(naming.weight, id), DType::kF32, {rows, dim}}); break;
    case RowFormat::kBF16: out.push_back({TensorName(naming.weight, id), DType::kBF16, {rows, dim}}); break;
    case RowFormat::kF16: out.push_back({TensorName(naming.weight, id), DType::kF16, {rows, dim}}); break;
  }
  return out;
}

Result<Layout> ScaledLayout(const Layout& base, double scale) {
  if (!(scale > 0.0) || scale > 1.0) return Status::InvalidArgument(fmt::format("scale {} is not in (0, 1]", scale));
  LayoutGenerateOptions o = GenerateOptionsFor(base.spec());
  if (o.base_sizes.empty()) {
    return Status::InvalidArgument(fmt::format("layout \"{}\" has no base_sizes to scale", base.name()));
  }
  for (auto& b : o.base_sizes) b = std::max<std::int64_t>(2, std::llround(static_cast<double>(b) * scale));
  o.name = fmt::format("{}@{}", base.name(), scale);
  ENGRAM_ASSIGN_OR_RETURN(LayoutSpec spec, GenerateLayoutSpec(o));
  return Layout::Create(std::move(spec));
}

void SynthRow(const Layout& layout, int layer_index, std::uint64_t row, std::span<std::byte> out) {
  std::uint64_t state =
      (static_cast<std::uint64_t>(layout.layer(layer_index).layer_id) << 48) ^ row ^ 0x5EED5EED00000000ULL;
  const auto dim = static_cast<std::size_t>(layout.spec().row_dim);
  switch (layout.row_format()) {
    case RowFormat::kFp8E4M3E8M0: {
      for (std::size_t i = 0; i < dim; i += 8) {
        std::uint64_t x = SplitMix64(state);
        for (std::size_t b = 0; b < 8; ++b, x >>= 8) {
          auto v = static_cast<std::uint8_t>(x);
          if ((v & 0x7F) == 0x7F) v ^= 0x01;  // 0x7F and 0xFF are NaN in E4M3
          out[i + b] = std::byte{v};
        }
      }
      for (std::size_t s = 0; s < dim / 32; ++s) {
        out[dim + s] = std::byte{static_cast<std::uint8_t>(119 + SplitMix64(state) % 17)};  // 2^-8 .. 2^8
      }
      break;
    }
    case RowFormat::kF32:
      for (std::size_t i = 0; i < dim; ++i) {
        const auto k = static_cast<std::int32_t>(SplitMix64(state) >> 40) - (1 << 23);
        const float v = static_cast<float>(k) / static_cast<float>(1 << 23);
        std::memcpy(out.data() + 4 * i, &v, 4);
      }
      break;
    case RowFormat::kBF16:
      for (std::size_t i = 0; i < dim; ++i) {
        const auto k = static_cast<std::int32_t>(SplitMix64(state) >> 56) - 128;  // k / 128: exact in bf16
        const float v = static_cast<float>(k) / 128.0F;
        std::uint32_t bits = 0;
        std::memcpy(&bits, &v, 4);
        PutU16(out.data() + 2 * i, static_cast<std::uint16_t>(bits >> 16));
      }
      break;
    case RowFormat::kF16:
      for (std::size_t i = 0; i < dim; ++i) {
        const auto k = static_cast<std::int32_t>(SplitMix64(state) >> 53) - 1024;
        PutU16(out.data() + 2 * i, HalfOf(k));
      }
      break;
  }
}

Status WriteSynthCheckpoint(const Layout& layout, const std::string& dir, const SynthOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IOError(fmt::format("create {}: {}", dir, ec.message()));
  const bool fp8 = layout.row_format() == RowFormat::kFp8E4M3E8M0;
  const std::size_t row_bytes = layout.row_bytes();
  const auto dim = static_cast<std::size_t>(layout.spec().row_dim);
  std::uint64_t total = 0;
  for (int li = 0; li < layout.num_layers(); ++li)
    total += static_cast<std::uint64_t>(layout.layer_rows(li)) * row_bytes;
  detail::Progress progress("synth " + dir, total, options.quiet);

  // (shard file, tensors it holds as (layer, part: 0 weight / 1 scale))
  struct Shard {
    std::string file;
    std::vector<std::pair<int, int>> parts;
  };
  std::vector<Shard> shards;
  if (fp8) {
    const int n = layout.num_layers() + 1;
    for (int li = 0; li < layout.num_layers(); ++li) {
      shards.push_back({fmt::format("model-{:05d}-of-{:05d}.safetensors", li + 1, n), {{li, 0}}});
    }
    Shard scales{fmt::format("model-{:05d}-of-{:05d}.safetensors", n, n), {}};
    for (int li = 0; li < layout.num_layers(); ++li) scales.parts.emplace_back(li, 1);
    shards.push_back(std::move(scales));
  } else {
    Shard one{"model.safetensors", {}};
    for (int li = 0; li < layout.num_layers(); ++li) one.parts.emplace_back(li, 0);
    shards.push_back(std::move(one));
  }

  constexpr std::uint64_t kChunkRows = 16384;
  std::vector<std::byte> row(row_bytes);
  std::vector<std::byte> chunk;
  std::vector<std::string> files;
  for (const Shard& shard : shards) {
    std::vector<TensorSpec> specs;
    for (auto [li, part] : shard.parts)
      specs.push_back(LayerTensors(layout, li, options.naming)[static_cast<std::size_t>(part)]);
    ENGRAM_ASSIGN_OR_RETURN(SafetensorsWriter w,
                            SafetensorsWriter::Create(dir + "/" + shard.file, specs, {{"format", "pt"}}));
    for (auto [li, part] : shard.parts) {
      const auto rows = static_cast<std::uint64_t>(layout.layer_rows(li));
      const std::size_t take = part == 0 ? (fp8 ? dim : row_bytes) : dim / 32;
      const std::size_t skip = part == 0 ? 0 : dim;
      for (std::uint64_t r0 = 0; r0 < rows; r0 += kChunkRows) {
        const std::uint64_t n = std::min(kChunkRows, rows - r0);
        chunk.resize(n * take);
        for (std::uint64_t r = 0; r < n; ++r) {
          SynthRow(layout, li, r0 + r, row);
          std::memcpy(chunk.data() + r * take, row.data() + skip, take);
        }
        ENGRAM_RETURN_IF_ERROR(w.Append(chunk));
        progress.Add(chunk.size());
      }
    }
    ENGRAM_RETURN_IF_ERROR(w.Finish());
    files.push_back(shard.file);
  }
  if (fp8) ENGRAM_RETURN_IF_ERROR(WriteSafetensorsIndex(dir, files));
  const std::string json = layout.ToJson();
  ENGRAM_RETURN_IF_ERROR(detail::WriteFile(dir + "/layout.json", std::as_bytes(std::span(json))));
  progress.Done();
  return Status::Ok();
}

}  // namespace engram::store
