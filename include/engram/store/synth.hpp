// Checkpoint tensors of an Engram layout, and synthetic checkpoints: the stand-in for a real 189 GiB
// checkpoint in tests and benchmarks, written in the exact shard format with row bytes derived
// deterministically from (layer, row), so that any row read anywhere can be verified.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engram/layout.hpp"
#include "engram/status.hpp"
#include "engram/store/safetensors.hpp"

namespace engram::store {

// Tensor names in a checkpoint; "{L}" stands for the backbone layer id.
struct TensorNaming {
  // The row payload, [rows, dim]. Default: DeepSeek-V4.1-Flash's name.
  std::string weight = "layers.{L}.engram.embed.weight";
  // The E8M0 scales of fp8 rows, [rows, dim / 32]. Unused for f32/bf16/f16 rows.
  std::string scale = "layers.{L}.engram.embed.scale";
};

std::string TensorName(std::string_view pattern, std::int32_t layer_id);

// The tensors that hold the table of Engram layer `layer_index`: the weight and, for fp8 rows, the
// scales, with the dtype and shape the layout implies.
std::vector<TensorSpec> LayerTensors(const Layout& layout, int layer_index, const TensorNaming& naming = {});

// `base` regenerated with every base size multiplied by `scale` (rounded, at least 2): the same prime
// allocation and multipliers, about `scale` times the rows. Named "<base>@<scale>".
Result<Layout> ScaledLayout(const Layout& base, double scale);

// The synthetic bytes of one row (layout.row_bytes() of them): valid E4M3 codes (never 0x7F/0xFF) and
// E8M0 scales in [119, 135] for fp8 rows; finite values in [-1, 1) for f32/bf16/f16 rows.
void SynthRow(const Layout& layout, int layer_index, std::uint64_t row, std::span<std::byte> out);

struct SynthOptions {
  TensorNaming naming;
  // No progress line on stderr. Default: progress when stderr is a terminal.
  bool quiet = false;
};

// Writes a checkpoint of `layout` into `dir` (created if missing): fp8 layouts in the sharded V4.1 form
// (one shard per layer's weight, one shard of all scales, model.safetensors.index.json), other formats as
// one model.safetensors; plus dir/layout.json.
Status WriteSynthCheckpoint(const Layout& layout, const std::string& dir, const SynthOptions& options = {});

}  // namespace engram::store
