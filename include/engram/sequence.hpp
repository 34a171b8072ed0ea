// Per-sequence addressing state for serving: the recent compressed ids of each sequence, DEAD marks,
// append (a prefill chunk or one decode token), rollback (speculative rejection), fork and release.
//
// A sequence keeps the last (max_ngram - 1) + max_rollback ids in a ring, which is all the hash needs
// plus the room to roll back. Prefill of a whole sequence, token-by-token decode, rollback-then-replay
// and fork all give identical rows for identical histories (tests/sequence_test.cpp proves it on the
// real trace).
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "engram/hasher.hpp"
#include "engram/layout.hpp"
#include "engram/status.hpp"

namespace engram {

struct SequenceOptions {
  // Tokens that can be rolled back after they were appended (speculative decoding rejects a few at a
  // time). Memory per sequence is 4 bytes * (max_ngram - 1 + max_rollback). Default: 64.
  std::uint32_t max_rollback = 64;
};

class Sequence {
 public:
  static Result<Sequence> Create(const Layout& layout, SequenceOptions options = {});

  // Tokens appended so far (minus those rolled back).
  [[nodiscard]] std::int64_t length() const noexcept { return length_; }
  [[nodiscard]] int history() const noexcept { return history_; }
  // How many tokens Rollback can remove now.
  [[nodiscard]] std::int64_t max_rollback_now() const noexcept;

  // Writes the hash window's history part: the last max_ngram - 1 positions, oldest first; the pad id
  // before the sequence's start and kDeadId at DEAD positions. `out` must hold history() ids.
  void History(std::span<std::int32_t> out) const noexcept;

  // Appends compressed ids; `dead` is empty (no DEAD position) or one flag per id (non-zero: DEAD).
  // Ids must be in [0, V'): an error names the sequence position of the first bad one, and nothing is
  // appended.
  [[nodiscard]] Status Append(std::span<const std::int32_t> ids, std::span<const std::uint8_t> dead = {});

  // Appends like Append and writes the rows of the new tokens for every Engram layer of `hasher`:
  // rows[(l * ids.size() + t) * columns + c]. On error nothing is appended.
  [[nodiscard]] Status AppendAndHash(const Hasher& hasher, std::span<const std::int32_t> ids,
                                     std::span<const std::uint8_t> dead, std::span<std::int64_t> rows);

  // Removes the last k tokens. kOutOfRange if k exceeds length() or the retained history
  // (max_rollback_now()); the sequence is unchanged then.
  [[nodiscard]] Status Rollback(std::int64_t k);

  // An independent copy that continues exactly as this sequence would.
  [[nodiscard]] Sequence Fork() const { return *this; }

 private:
  Sequence() = default;
  std::int32_t At(std::int64_t position) const noexcept;  // id or kDeadId; pad before the start

  int history_ = 0;
  std::int32_t pad_id_ = 0;
  std::int64_t vocab_ = 0;
  std::int64_t length_ = 0;
  std::int64_t retained_from_ = 0;  // lowest position still held in the ring
  std::vector<std::int32_t> ring_;  // position p at ring_[p % ring_.size()]
};

using SequenceId = std::uint64_t;

// The sequences of a serving runtime, by id. Not thread-safe: callers serialise access.
class SequenceTable {
 public:
  SequenceTable(Layout layout, SequenceOptions options) : layout_(std::move(layout)), options_(options) {}

  [[nodiscard]] Result<SequenceId> Create();
  // A new sequence that continues exactly as `parent` would.
  [[nodiscard]] Result<SequenceId> Fork(SequenceId parent);
  [[nodiscard]] Status Release(SequenceId id);
  [[nodiscard]] Result<Sequence*> Get(SequenceId id);
  [[nodiscard]] std::size_t size() const noexcept { return sequences_.size(); }

 private:
  Layout layout_;
  SequenceOptions options_;
  SequenceId next_id_ = 1;
  std::unordered_map<SequenceId, Sequence> sequences_;
};

}  // namespace engram
