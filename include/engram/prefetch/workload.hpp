// Serving workloads cut from a token trace, the same way for the model-shaped benchmark (bench/bench_model)
// and the capacity planner (engram/prefetch/planner.hpp), so that a plan replays exactly the steps a
// measured run made.
//
// A shape is `sequences` sequences, each taking `tokens` new tokens per step. The trace is cut into
// `sequences` equal parts; sequence q reads part q. Decode (tokens == 1): the sequences live for the whole
// phase, step k appends token k of each part. Prefill (tokens > 1): every step starts fresh sequences,
// step k's chunk of sequence q is tokens [k * tokens, (k + 1) * tokens) of part q.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace engram::prefetch {

struct WorkloadShape {
  std::size_t sequences = 64;
  std::size_t tokens = 1;
  [[nodiscard]] bool decode() const noexcept { return tokens == 1; }
  [[nodiscard]] std::size_t step_tokens() const noexcept { return sequences * tokens; }
};

// Steps the trace holds for the shape (0 if a part is shorter than one chunk).
[[nodiscard]] inline std::size_t WorkloadSteps(std::size_t trace_tokens, const WorkloadShape& shape) noexcept {
  if (shape.sequences == 0 || shape.tokens == 0) return 0;
  return trace_tokens / shape.sequences / shape.tokens;
}

// The new tokens of sequence q at step k (k < WorkloadSteps).
[[nodiscard]] inline std::span<const std::int32_t> WorkloadTokens(std::span<const std::int32_t> trace,
                                                                  const WorkloadShape& shape, std::size_t k,
                                                                  std::size_t q) noexcept {
  const std::size_t part = trace.size() / shape.sequences;
  return trace.subspan(q * part + k * shape.tokens, shape.tokens);
}

// Sequence q's whole history up to and including step k (decode: its first k + 1 tokens).
[[nodiscard]] inline std::span<const std::int32_t> WorkloadHistory(std::span<const std::int32_t> trace,
                                                                   const WorkloadShape& shape, std::size_t k,
                                                                   std::size_t q) noexcept {
  const std::size_t part = trace.size() / shape.sequences;
  return trace.subspan(q * part, (k + 1) * shape.tokens);
}

}  // namespace engram::prefetch
