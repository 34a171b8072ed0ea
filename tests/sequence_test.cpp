#include "engram/sequence.hpp"

#include <gtest/gtest.h>

#include <random>

#include "test_util.hpp"

namespace engram {
namespace {

constexpr std::size_t kPrefix = 120000;  // tokens of the real trace used per property
constexpr std::size_t kSeqLen = 3000;    // cut into sequences of this length

class SequenceProperty : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(test::SharedData("brown.deepseek-v3.i32")))
      GTEST_SKIP() << "skipped: ../shared/data missing";
    layout_ = std::make_unique<Layout>(*Layout::Preset(GetParam()));
    hasher_ = std::make_unique<Hasher>(*Hasher::Create(*layout_));
    const auto& all = test::BrownCompressed();
    for (std::size_t s = 0; s < kPrefix; s += kSeqLen) {
      sequences_.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(s),
                              all.begin() + static_cast<std::ptrdiff_t>(s + kSeqLen));
    }
  }

  [[nodiscard]] std::size_t RowsPerToken() const {
    return static_cast<std::size_t>(hasher_->columns()) * static_cast<std::size_t>(hasher_->num_layers());
  }

  // Rows per token, token-major ([t][layer][c]), from layer-major output of n tokens.
  void AppendTokenMajor(const std::vector<std::int64_t>& layer_major, std::size_t n,
                        std::vector<std::int64_t>& out) const {
    const auto cols = static_cast<std::size_t>(hasher_->columns());
    for (std::size_t t = 0; t < n; ++t) {
      for (int l = 0; l < hasher_->num_layers(); ++l) {
        const auto* p = layer_major.data() + (static_cast<std::size_t>(l) * n + t) * cols;
        out.insert(out.end(), p, p + cols);
      }
    }
  }

  // Hash `ids` appended to `seq` in chunks of the given sizes (cycled), token-major.
  std::vector<std::int64_t> Feed(Sequence& seq, const std::vector<std::int32_t>& ids,
                                 const std::vector<std::size_t>& chunks, const std::vector<std::uint8_t>& dead = {}) {
    std::vector<std::int64_t> out;
    std::size_t i = 0;
    for (std::size_t c = 0; i < ids.size(); ++c) {
      const std::size_t n = std::min(chunks[c % chunks.size()], ids.size() - i);
      std::vector<std::int64_t> rows(n * RowsPerToken());
      std::span<const std::uint8_t> d = dead.empty() ? std::span<const std::uint8_t>() : std::span(dead).subspan(i, n);
      EXPECT_TRUE(seq.AppendAndHash(*hasher_, std::span(ids).subspan(i, n), d, rows).ok());
      AppendTokenMajor(rows, n, out);
      i += n;
    }
    return out;
  }

  // The literal reference, token-major.
  std::vector<std::int64_t> Reference(const std::vector<std::int32_t>& ids,
                                      const std::vector<std::uint8_t>& dead = {}) const {
    std::vector<std::vector<std::int64_t>> per_layer;
    per_layer.reserve(static_cast<std::size_t>(layout_->num_layers()));
    for (int l = 0; l < layout_->num_layers(); ++l) per_layer.push_back(test::ReferenceRows(*layout_, l, ids, dead));
    std::vector<std::int64_t> out;
    const auto cols = static_cast<std::size_t>(layout_->columns());
    for (std::size_t t = 0; t < ids.size(); ++t) {
      for (const auto& rows : per_layer)
        out.insert(out.end(), rows.begin() + static_cast<std::ptrdiff_t>(t * cols),
                   rows.begin() + static_cast<std::ptrdiff_t>((t + 1) * cols));
    }
    return out;
  }

  Sequence NewSequence() const { return *Sequence::Create(*layout_, SequenceOptions{.max_rollback = 16}); }

  std::unique_ptr<Layout> layout_;
  std::unique_ptr<Hasher> hasher_;
  std::vector<std::vector<std::int32_t>> sequences_;
};

TEST_P(SequenceProperty, PrefillEqualsReference) {
  for (const auto& ids : sequences_) {
    Sequence seq = NewSequence();
    ASSERT_EQ(Feed(seq, ids, {ids.size()}), Reference(ids));
    EXPECT_EQ(seq.length(), static_cast<std::int64_t>(ids.size()));
  }
}

TEST_P(SequenceProperty, DecodeEqualsPrefill) {
  for (const auto& ids : sequences_) {
    Sequence prefill = NewSequence();
    Sequence decode = NewSequence();
    ASSERT_EQ(Feed(decode, ids, {1}), Feed(prefill, ids, {ids.size()}));
  }
}

TEST_P(SequenceProperty, MixedChunksEqualPrefill) {
  for (const auto& ids : sequences_) {
    Sequence prefill = NewSequence();
    Sequence chunked = NewSequence();
    ASSERT_EQ(Feed(chunked, ids, {1, 2, 517, 1, 3, 64, 1, 1, 250}), Feed(prefill, ids, {ids.size()}));
  }
}

// Speculative decoding: after each accepted token, a few draft tokens are appended and rejected
// (rolled back); the accepted rows equal a plain prefill.
TEST_P(SequenceProperty, RollbackThenReplayEqualsPrefill) {
  std::mt19937 rng(11);
  for (const auto& ids : sequences_) {
    Sequence prefill = NewSequence();
    const auto expected = Feed(prefill, ids, {ids.size()});
    Sequence seq = NewSequence();
    std::vector<std::int64_t> got;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      std::vector<std::int64_t> rows(RowsPerToken());
      ASSERT_TRUE(seq.AppendAndHash(*hasher_, std::span(ids).subspan(i, 1), {}, rows).ok());
      AppendTokenMajor(rows, 1, got);
      const std::size_t draft = rng() % 6;  // 0..5 rejected draft tokens (<= max_rollback 16)
      std::vector<std::int32_t> drafts(draft);
      for (auto& d : drafts) d = static_cast<std::int32_t>(rng() % 99045);
      std::vector<std::int64_t> scratch(draft * RowsPerToken());
      ASSERT_TRUE(seq.AppendAndHash(*hasher_, drafts, {}, scratch).ok());
      ASSERT_TRUE(seq.Rollback(static_cast<std::int64_t>(draft)).ok());
    }
    ASSERT_EQ(got, expected);
  }
}

// A fork continues exactly as its parent would, and the parent is unaffected by the child.
TEST_P(SequenceProperty, ForkContinuesLikeParent) {
  for (const auto& ids : sequences_) {
    const std::size_t split = ids.size() / 3;
    const std::vector<std::int32_t> head(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(split));
    const std::vector<std::int32_t> tail(ids.begin() + static_cast<std::ptrdiff_t>(split), ids.end());
    Sequence parent = NewSequence();
    (void)Feed(parent, head, {97});
    Sequence child = parent.Fork();
    // The child diverges first (with other tokens), then the parent continues with the real tail.
    std::vector<std::int32_t> other(tail.rbegin(), tail.rend());
    const auto child_rows = Feed(child, other, {5});
    const auto parent_rows = Feed(parent, tail, {5});
    const auto full = Reference(ids);
    ASSERT_TRUE(std::equal(parent_rows.begin(), parent_rows.end(),
                           full.begin() + static_cast<std::ptrdiff_t>(split * RowsPerToken())));
    std::vector<std::int32_t> child_ids = head;
    child_ids.insert(child_ids.end(), other.begin(), other.end());
    const auto child_full = Reference(child_ids);
    ASSERT_TRUE(std::equal(child_rows.begin(), child_rows.end(),
                           child_full.begin() + static_cast<std::ptrdiff_t>(split * RowsPerToken())));
  }
}

TEST_P(SequenceProperty, DeadMarksEqualReferenceInAnyChunking) {
  std::mt19937 rng(3);
  for (const auto& ids : sequences_) {
    std::vector<std::uint8_t> dead(ids.size(), 0);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (rng() % 40 == 0) {
        for (std::size_t j = i; j < std::min(ids.size(), i + 1 + rng() % 8); ++j) dead[j] = 1;
      }
    }
    const auto expected = Reference(ids, dead);
    Sequence a = NewSequence();
    Sequence b = NewSequence();
    ASSERT_EQ(Feed(a, ids, {ids.size()}, dead), expected);
    ASSERT_EQ(Feed(b, ids, {1, 7, 2}, dead), expected);
  }
}

INSTANTIATE_TEST_SUITE_P(BothPresets, SequenceProperty, ::testing::Values("deepseek-v4.1-flash", "engram-demo"),
                         [](const auto& pinfo) {
                           return std::string(pinfo.param) == "engram-demo" ? "Demo" : "Flash";
                         });

Sequence DemoSequence(std::uint32_t max_rollback) {
  return *Sequence::Create(*Layout::Preset("engram-demo"), SequenceOptions{.max_rollback = max_rollback});
}

TEST(Sequence, RollbackBeyondRetainedHistoryIsRefusedAndChangesNothing) {
  Sequence s = DemoSequence(4);
  std::vector<std::int32_t> ids(100, 7);
  ASSERT_TRUE(s.Append(ids).ok());
  EXPECT_EQ(s.max_rollback_now(), 4);
  Status st = s.Rollback(5);
  EXPECT_EQ(st.code(), StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("max_rollback = 4"), std::string::npos) << st.ToString();
  EXPECT_EQ(s.length(), 100);
  EXPECT_TRUE(s.Rollback(4).ok());
  EXPECT_EQ(s.length(), 96);
  EXPECT_EQ(s.max_rollback_now(), 0);
}

TEST(Sequence, ShortSequenceCanRollBackToItsStart) {
  Sequence s = DemoSequence(2);
  ASSERT_TRUE(s.Append(std::vector<std::int32_t>{1, 2, 3}).ok());
  EXPECT_TRUE(s.Rollback(3).ok());
  EXPECT_EQ(s.length(), 0);
  EXPECT_EQ(s.Rollback(1).code(), StatusCode::kOutOfRange);
}

TEST(Sequence, BadIdIsRefusedNamingItsPositionAndAppendsNothing) {
  Sequence s = DemoSequence(4);
  ASSERT_TRUE(s.Append(std::vector<std::int32_t>{1, 2}).ok());
  Status st = s.Append(std::vector<std::int32_t>{3, 99045, 4});
  EXPECT_EQ(st.code(), StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("sequence position 3"), std::string::npos) << st.ToString();
  EXPECT_EQ(s.length(), 2);
}

TEST(Sequence, DeadFlagCountMustMatch) {
  Sequence s = DemoSequence(4);
  const std::vector<std::uint8_t> dead = {1};
  EXPECT_EQ(s.Append(std::vector<std::int32_t>{1, 2}, dead).code(), StatusCode::kInvalidArgument);
}

TEST(SequenceTable, CreateForkReleaseAndUnknownIds) {
  SequenceTable table(*Layout::Preset("engram-demo"), SequenceOptions{});
  auto a = table.Create();
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*table.Get(*a))->Append(std::vector<std::int32_t>{5, 6, 7}).ok());
  auto b = table.Fork(*a);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_EQ((*table.Get(*b))->length(), 3);
  EXPECT_EQ(table.size(), 2U);
  EXPECT_TRUE(table.Release(*a).ok());
  EXPECT_EQ(table.Get(*a).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(table.Release(*a).code(), StatusCode::kNotFound);
  EXPECT_EQ(table.Fork(12345).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(table.size(), 1U);
}

}  // namespace
}  // namespace engram
