#include "engram/sequence.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace engram {

Result<Sequence> Sequence::Create(const Layout& layout, SequenceOptions options) {
  if (options.max_rollback > (1U << 24)) {
    return Status::InvalidArgument(fmt::format("SequenceOptions.max_rollback {} exceeds 2^24", options.max_rollback));
  }
  Sequence s;
  s.history_ = layout.max_ngram() - 1;
  s.pad_id_ = layout.pad_id();
  s.vocab_ = layout.compressed_vocab_size();
  s.ring_.assign(static_cast<std::size_t>(s.history_) + options.max_rollback, layout.pad_id());
  return s;
}

std::int32_t Sequence::At(std::int64_t position) const noexcept {
  if (position < 0) return pad_id_;
  return ring_[static_cast<std::size_t>(position) % ring_.size()];
}

std::int64_t Sequence::max_rollback_now() const noexcept {
  // After removing k tokens, positions [length-k-history, length-k) must still be held (or precede
  // the start, where they read as pad).
  if (retained_from_ == 0) return length_;
  return std::max<std::int64_t>(0, length_ - history_ - retained_from_);
}

void Sequence::History(std::span<std::int32_t> out) const noexcept {
  for (int j = 0; j < history_; ++j) out[static_cast<std::size_t>(j)] = At(length_ - history_ + j);
}

Status Sequence::Append(std::span<const std::int32_t> ids, std::span<const std::uint8_t> dead) {
  if (!dead.empty() && dead.size() != ids.size()) {
    return Status::InvalidArgument(fmt::format("append: {} DEAD flags for {} ids", dead.size(), ids.size()));
  }
  const auto v = static_cast<std::uint64_t>(vocab_);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (static_cast<std::uint64_t>(static_cast<std::int64_t>(ids[i])) >= v) {
      return Status::OutOfRange(fmt::format("append: compressed id {} at sequence position {} is outside 0..{}", ids[i],
                                            length_ + static_cast<std::int64_t>(i), vocab_ - 1));
    }
  }
  const std::size_t cap = ring_.size();
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const bool is_dead = !dead.empty() && dead[i] != 0;
    ring_[static_cast<std::size_t>(length_) % cap] = is_dead ? kDeadId : ids[i];
    ++length_;
  }
  retained_from_ = std::max<std::int64_t>(retained_from_, length_ - static_cast<std::int64_t>(cap));
  return Status::Ok();
}

Status Sequence::AppendAndHash(const Hasher& hasher, std::span<const std::int32_t> ids,
                               std::span<const std::uint8_t> dead, std::span<std::int64_t> rows) {
  if (hasher.max_ngram() - 1 != history_) {
    return Status::InvalidArgument(
        fmt::format("append: hasher has max_ngram {}, sequence was made for {}", hasher.max_ngram(), history_ + 1));
  }
  const std::size_t need =
      ids.size() * static_cast<std::size_t>(hasher.columns()) * static_cast<std::size_t>(hasher.num_layers());
  if (rows.size() != need) {
    return Status::InvalidArgument(
        fmt::format("append: row buffer holds {} ids, {} tokens need {}", rows.size(), ids.size(), need));
  }
  // The window: history, then the new ids with DEAD marks applied.
  std::vector<std::int32_t> window(static_cast<std::size_t>(history_) + ids.size());
  History(std::span(window).first(static_cast<std::size_t>(history_)));
  for (std::size_t i = 0; i < ids.size(); ++i) {
    window[static_cast<std::size_t>(history_) + i] = (!dead.empty() && dead[i] != 0) ? kDeadId : ids[i];
  }
  ENGRAM_RETURN_IF_ERROR(Append(ids, dead));  // validates before anything is hashed or kept
  return hasher.HashWindow(window, rows);
}

Status Sequence::Rollback(std::int64_t k) {
  if (k < 0) return Status::InvalidArgument(fmt::format("rollback: {} tokens is negative", k));
  if (k > length_) {
    return Status::OutOfRange(fmt::format("rollback: {} tokens exceeds the sequence length {}", k, length_));
  }
  const std::int64_t limit = max_rollback_now();
  if (k > limit) {
    return Status::OutOfRange(fmt::format(
        "rollback: {} tokens exceeds the {} that the retained history allows (SequenceOptions.max_rollback = {})", k,
        limit, static_cast<std::int64_t>(ring_.size()) - history_));
  }
  length_ -= k;
  return Status::Ok();
}

Result<SequenceId> SequenceTable::Create() {
  ENGRAM_ASSIGN_OR_RETURN(Sequence s, Sequence::Create(layout_, options_));
  const SequenceId id = next_id_++;
  sequences_.emplace(id, std::move(s));
  return id;
}

Result<SequenceId> SequenceTable::Fork(SequenceId parent) {
  auto it = sequences_.find(parent);
  if (it == sequences_.end()) return Status::NotFound(fmt::format("fork: no sequence {}", parent));
  const SequenceId id = next_id_++;
  sequences_.emplace(id, it->second.Fork());
  return id;
}

Status SequenceTable::Release(SequenceId id) {
  if (sequences_.erase(id) == 0) return Status::NotFound(fmt::format("release: no sequence {}", id));
  return Status::Ok();
}

Result<Sequence*> SequenceTable::Get(SequenceId id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return Status::NotFound(fmt::format("no sequence {}", id));
  return &it->second;
}

}  // namespace engram
