// The prefetcher on a real store (synthetic V4.1 checkpoint, real RocksDB, real io_uring) driven by the
// real trace, checked against the literal hash and the rows the store holds.
#include "engram/prefetch/prefetcher.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "engram/hasher.hpp"
#include "engram/memory/host_tier.hpp"
#include "engram/prefetch/dequant.hpp"
#include "store_util.hpp"

namespace engram::prefetch {
namespace {

using store::Store;

constexpr double kScale = 0.0001;

using Fixture = test::IngestedStore;

std::unique_ptr<Fixture> MakeStore() {
  return test::MakeIngestedStore("deepseek-v4.1-flash", kScale);
}

// A host tier on the fixture's store on 4 KiB pages: an 8 MiB row cache, or every region resident and
// loaded.
std::unique_ptr<memory::HostTier> MakeTier(Fixture& f, memory::ResidentRegions resident) {
  memory::HostTierOptions ho;
  ho.resident = resident;
  if (resident == memory::ResidentRegions::kNone) ho.cache_bytes = 8ULL << 20;
  ho.arena.huge_pages = memory::HugePages::kNone;
  auto host = memory::HostTier::Create(f.store->layout(), ho);
  EXPECT_TRUE(host.ok()) << host.status().ToString();
  if (!host.ok()) return nullptr;
  if (resident != memory::ResidentRegions::kNone) {
    const Status s = (*host)->LoadResident(*f.store, f.version);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return std::move(*host);
}

// The reference BF16 of one E4M3 code and E8M0 scale, computed in double and rounded by hand.
std::uint16_t ReferenceBf16(std::uint8_t code, std::uint8_t scale) {
  const int sign = (code & 0x80) != 0 ? -1 : 1;
  const int e = (code >> 3) & 15;
  const int m = code & 7;
  const double v = e == 0 ? sign * (m / 8.0) * std::pow(2.0, -6) : sign * (1 + m / 8.0) * std::pow(2.0, e - 7);
  const double x = v * std::pow(2.0, scale - 127);
  const auto f = static_cast<float>(x);  // exact: x has 4 significant bits and is within float's range
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t lower = u & 0xFFFF;
  std::uint32_t upper = u >> 16;
  if (lower > 0x8000 || (lower == 0x8000 && (upper & 1) != 0)) ++upper;
  return static_cast<std::uint16_t>(upper);
}

// Expected output of one layer for sequences given whole (fresh, no DEAD): rows from the literal hash.
std::vector<std::byte> ExpectedLayer(const Layout& layout, int li, const std::vector<std::vector<std::int32_t>>& seqs) {
  std::vector<std::int64_t> rows;
  for (const auto& s : seqs) {
    auto r = test::ReferenceRows(layout, li, s);
    rows.insert(rows.end(), r.begin(), r.end());
  }
  return test::ExpectedRows(layout, li, rows);
}

std::vector<std::vector<std::int32_t>> TraceSequences(std::size_t count, std::size_t len, std::size_t from = 0) {
  const auto& all = test::BrownCompressed();
  std::vector<std::vector<std::int32_t>> out;
  for (std::size_t i = 0; i < count; ++i) {
    const auto b = all.begin() + static_cast<std::ptrdiff_t>(from + i * len);
    out.emplace_back(b, b + static_cast<std::ptrdiff_t>(len));
  }
  return out;
}

// Prefill the sequences in one step, then decode `decode` more tokens one step each; checks every layer
// of every step against the reference, and returns the prefetcher's stats.
PrefetchStats RunAndCheck(Fixture& f, memory::HostTier* host, std::size_t nseq, std::size_t prefill, std::size_t decode,
                          const PrefetcherOptions& options = {}) {
  const Layout& layout = f.store->layout();
  auto p = Prefetcher::Create(*f.store, f.version, host, options);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  const auto full = TraceSequences(nseq, prefill + decode, 1000);
  std::vector<SequenceId> ids;
  for (std::size_t i = 0; i < nseq; ++i) ids.push_back(*(*p)->CreateSequence());
  for (std::size_t step = 0; step <= decode; ++step) {
    const std::size_t begin = step == 0 ? 0 : prefill + step - 1;
    const std::size_t len = step == 0 ? prefill : 1;
    std::vector<SequenceInput> batch;
    for (std::size_t i = 0; i < nseq; ++i) {
      batch.push_back({ids[i], std::span(full[i]).subspan(begin, len), {}});
    }
    auto sid = (*p)->Submit(batch);
    EXPECT_TRUE(sid.ok()) << sid.status().ToString();
    for (int li = 0; li < layout.num_layers(); ++li) {
      EXPECT_TRUE((*p)->Wait(*sid, li).ok());
      auto out = (*p)->Output(*sid, li);
      EXPECT_TRUE(out.ok());
      // Expected: the rows of tokens [begin, begin + len) of each sequence, hashed with full history.
      std::vector<std::byte> expect;
      for (std::size_t i = 0; i < nseq; ++i) {
        const std::vector<std::int32_t> upto(full[i].begin(),
                                             full[i].begin() + static_cast<std::ptrdiff_t>(begin + len));
        auto e = ExpectedLayer(layout, li, {upto});
        const std::size_t per_token = static_cast<std::size_t>(layout.columns()) * layout.row_bytes();
        expect.insert(expect.end(), e.end() - static_cast<std::ptrdiff_t>(len * per_token), e.end());
      }
      EXPECT_EQ(std::memcmp(out->rows, expect.data(), expect.size()), 0) << "step " << step << " layer " << li;
    }
    EXPECT_TRUE((*p)->Finish(*sid).ok());
  }
  return (*p)->stats();
}

TEST(Prefetcher, PrefillAndDecodeFromDiskMatchTheReference) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  const auto st = RunAndCheck(*f, nullptr, 4, 64, 6);
  EXPECT_EQ(st.steps, 7U);
  EXPECT_EQ(st.tokens, 4U * 70);
  EXPECT_EQ(st.layers[0].lookups, 4U * 70 * 24);
  EXPECT_EQ(st.layers[0].disk_rows, st.layers[0].distinct);
  EXPECT_GT(st.layers[0].disk_reads, 0U);
  EXPECT_GE(st.layers[0].disk_bytes, st.layers[0].disk_reads * 4096);
  EXPECT_LT(st.layers[0].distinct, st.layers[0].lookups);  // the batch repeats rows (pad n-grams at least)
}

TEST(Prefetcher, DeadFlagsThatAreAllZeroServeTheRowsUnchanged) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  const auto seq = TraceSequences(1, 300, 9000)[0];
  const std::vector<std::uint8_t> none(seq.size(), 0);  // flags given, none set
  auto sid = (*p)->Submit(std::vector<SequenceInput>{{*(*p)->CreateSequence(), seq, none}});
  ASSERT_TRUE(sid.ok()) << sid.status().ToString();
  for (int li = 0; li < 2; ++li) {
    ASSERT_TRUE((*p)->Wait(*sid, li).ok());
    auto out = (*p)->Output(*sid, li);
    const auto expect = ExpectedLayer(f->store->layout(), li, {seq});
    EXPECT_EQ(std::memcmp(out->rows, expect.data(), expect.size()), 0) << "layer " << li;
  }
}

// Sequence q's window in `w` (its history, then its `ids.size()` new ids) hashes to the rows that `ref`
// gives for the same ids and DEAD flags.
void ExpectWindowHashesLike(const StepWindows& w, std::size_t q, const Hasher& hasher, Sequence& ref,
                            const std::vector<std::int32_t>& ids, const std::vector<std::uint8_t>& dead,
                            const std::string& what) {
  const auto hist = static_cast<std::size_t>(hasher.max_ngram() - 1);
  const std::size_t at = w.segment_begin[q] + q * hist;
  const std::span<const std::int32_t> window(w.window.data() + at, hist + ids.size());
  std::vector<std::int64_t> got(static_cast<std::size_t>(hasher.num_layers()) * ids.size() *
                                static_cast<std::size_t>(hasher.columns()));
  ASSERT_TRUE(hasher.HashWindow(window, got).ok()) << what;
  std::vector<std::int64_t> expect(got.size());
  ASSERT_TRUE(ref.AppendAndHash(hasher, ids, dead, expect).ok()) << what;
  EXPECT_EQ(got, expect) << what;
}

TEST(Prefetcher, AppendGivesTheWindowsThatHashToTheSequencesRows) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  const Layout& layout = f->store->layout();
  auto hasher = Hasher::Create(layout);
  ASSERT_TRUE(hasher.ok());
  const auto& all = test::BrownCompressed();
  // Two sequences over two steps (a prefill chunk, then one token each), the second with DEAD marks; an
  // independent Sequence per sequence gives the expected rows.
  std::vector<SequenceId> ids = {*(*p)->CreateSequence(), *(*p)->CreateSequence()};
  std::vector<Sequence> ref = {*Sequence::Create(layout), *Sequence::Create(layout)};
  for (int step = 0; step < 2; ++step) {
    const std::size_t n = step == 0 ? 50 : 1;
    std::vector<std::vector<std::int32_t>> toks(2);
    std::vector<std::vector<std::uint8_t>> dead(2);
    std::vector<SequenceInput> batch;
    for (std::size_t b = 0; b < 2; ++b) {
      const std::size_t at = 1000 * (b + 1) + static_cast<std::size_t>(step) * 50;
      toks[b].assign(all.begin() + static_cast<std::ptrdiff_t>(at), all.begin() + static_cast<std::ptrdiff_t>(at + n));
      if (b == 1) {
        dead[b].assign(n, 0);
        dead[b][n / 2] = 1;
      }
      batch.push_back({ids[b], toks[b], dead[b]});
    }
    auto w = (*p)->Append(batch);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    ASSERT_EQ(w->segment_begin,
              (std::vector<std::uint32_t>{0, static_cast<std::uint32_t>(n), static_cast<std::uint32_t>(2 * n)}));
    for (std::size_t b = 0; b < 2; ++b) {
      ExpectWindowHashesLike(*w, b, *hasher, ref[b], toks[b], dead[b],
                             "step " + std::to_string(step) + " sequence " + std::to_string(b));
    }
  }
}

TEST(Prefetcher, AppendAfterRollbackAndForkGivesTheWindowsOfTheRetainedHistory) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  const Layout& layout = f->store->layout();
  auto hasher = Hasher::Create(layout);
  ASSERT_TRUE(hasher.ok());
  const auto& all = test::BrownCompressed();
  auto tok = [&](std::size_t at, std::size_t n) {
    return std::vector<std::int32_t>(all.begin() + static_cast<std::ptrdiff_t>(at),
                                     all.begin() + static_cast<std::ptrdiff_t>(at + n));
  };
  // A sequence takes 20 tokens, rejects 3 (speculative decoding), forks, and both continue with different
  // tokens; an independent Sequence doing the same gives the expected rows.
  const SequenceId a = *(*p)->CreateSequence();
  auto ref_a = *Sequence::Create(layout);
  const auto first = tok(3000, 20);
  ASSERT_TRUE((*p)->Append(std::vector<SequenceInput>{{a, first, {}}}).ok());
  std::vector<std::int64_t> scratch(static_cast<std::size_t>(hasher->num_layers()) * first.size() *
                                    static_cast<std::size_t>(layout.columns()));
  ASSERT_TRUE(ref_a.AppendAndHash(*hasher, first, {}, scratch).ok());
  ASSERT_TRUE((*p)->Rollback(a, 3).ok());
  ASSERT_TRUE(ref_a.Rollback(3).ok());
  auto b = (*p)->Fork(a);
  ASSERT_TRUE(b.ok());
  Sequence ref_b = ref_a.Fork();
  const auto next_a = tok(4000, 2);
  const auto next_b = tok(5000, 2);
  auto w = (*p)->Append(std::vector<SequenceInput>{{a, next_a, {}}, {*b, next_b, {}}});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ExpectWindowHashesLike(*w, 0, *hasher, ref_a, next_a, {}, "sequence a");
  ExpectWindowHashesLike(*w, 1, *hasher, ref_b, next_b, {}, "sequence b (the fork)");
}

TEST(Prefetcher, AppendOfABadBatchAppendsNothing) {
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  const SequenceId a = *(*p)->CreateSequence();
  const std::vector<std::int32_t> good = {1, 2, 3};
  const std::vector<std::int32_t> bad = {1, -5};
  const Status s = (*p)->Append(std::vector<SequenceInput>{{a, good, {}}, {a + 100, good, {}}}).status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_FALSE((*p)->Append(std::vector<SequenceInput>{{a, bad, {}}}).ok());
  // Nothing was appended: the history is still all pad.
  auto w = (*p)->Append(std::vector<SequenceInput>{{a, good, {}}});
  ASSERT_TRUE(w.ok());
  for (int i = 0; i < f->store->layout().max_ngram() - 1; ++i) {
    EXPECT_EQ(w->window[static_cast<std::size_t>(i)], f->store->layout().pad_id()) << i;
  }
}

TEST(Prefetcher, ASequenceTwiceInOneStepIsRefusedAndNothingIsAppended) {
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  const SequenceId a = *(*p)->CreateSequence();
  const SequenceId b = *(*p)->CreateSequence();
  const std::vector<std::int32_t> t = {1, 2, 3};
  const Status s = (*p)->Submit(std::vector<SequenceInput>{{a, t, {}}, {b, t, {}}, {a, t, {}}}).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("sequence " + std::to_string(a) + " appears twice"), std::string::npos) << s.ToString();
  auto w = (*p)->Windows(std::vector<SequenceInput>{{b, t, {}}});
  ASSERT_TRUE(w.ok());
  for (int i = 0; i < f->store->layout().max_ngram() - 1; ++i) {
    EXPECT_EQ(w->window[static_cast<std::size_t>(i)], f->store->layout().pad_id()) << i;  // b still empty
  }
}

TEST(Prefetcher, WindowsAreAppendsWindowsAndAppendNothing) {
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  const SequenceId a = *(*p)->CreateSequence();
  ASSERT_TRUE((*p)->Append(std::vector<SequenceInput>{{a, std::vector<std::int32_t>{7, 8, 9, 10}, {}}}).ok());
  const std::vector<std::int32_t> next = {11, 12};
  const std::vector<std::uint8_t> dead = {0, 1};
  auto peek = (*p)->Windows(std::vector<SequenceInput>{{a, next, dead}});
  ASSERT_TRUE(peek.ok()) << peek.status().ToString();
  auto again = (*p)->Windows(std::vector<SequenceInput>{{a, next, dead}});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->window, peek->window);  // the first call appended nothing
  auto appended = (*p)->Append(std::vector<SequenceInput>{{a, next, dead}});
  ASSERT_TRUE(appended.ok());
  EXPECT_EQ(appended->window, peek->window);
  EXPECT_EQ(appended->segment_begin, peek->segment_begin);
  const auto hist = static_cast<std::size_t>(f->store->layout().max_ngram() - 1);
  EXPECT_EQ(peek->window[hist - 1], 10);
  EXPECT_EQ(peek->window[hist + 1], kDeadId);
}

TEST(Prefetcher, LongAndShortSequencesInOneStepMatchTheReference) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  // Hashing is cut into tasks of 2,048 tokens: sequences longer than a task and short ones sharing one.
  const auto& all = test::BrownCompressed();
  const std::vector<std::vector<std::int32_t>> seqs = {{all.begin() + 40000, all.begin() + 43000},
                                                       {all.begin() + 50000, all.begin() + 50001},
                                                       {all.begin() + 60000, all.begin() + 62100},
                                                       {all.begin() + 70000, all.begin() + 70005}};
  std::vector<SequenceInput> batch;
  batch.reserve(seqs.size());
  for (const auto& s : seqs) batch.push_back({*(*p)->CreateSequence(), s, {}});
  auto sid = (*p)->Submit(batch);
  ASSERT_TRUE(sid.ok());
  for (int li = 0; li < 2; ++li) {
    ASSERT_TRUE((*p)->Wait(*sid, li).ok());
    auto out = (*p)->Output(*sid, li);
    const auto expect = ExpectedLayer(f->store->layout(), li, seqs);
    ASSERT_EQ(expect.size(), static_cast<std::size_t>(out->tokens) * 24 * 264);
    EXPECT_EQ(std::memcmp(out->rows, expect.data(), expect.size()), 0) << "layer " << li;
  }
}

TEST(Prefetcher, ACachedHostTierServesRepeatsAndMatchesTheReference) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto host = MakeTier(*f, memory::ResidentRegions::kNone);
  ASSERT_NE(host, nullptr);
  const auto st = RunAndCheck(*f, host.get(), 4, 64, 10);
  EXPECT_GT(st.layers[0].cache_hits, 0U);
  EXPECT_EQ(st.layers[0].cache_hits + st.layers[0].disk_rows, st.layers[0].distinct);
  EXPECT_GT(st.host.admissions, 0U);
}

TEST(Prefetcher, AResidentHostTierServesEveryRowWithoutDisk) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto host = MakeTier(*f, memory::ResidentRegions::kAll);
  ASSERT_NE(host, nullptr);
  const auto st = RunAndCheck(*f, host.get(), 3, 32, 4);
  for (const auto& l : st.layers) {
    EXPECT_EQ(l.disk_rows, 0U);
    EXPECT_EQ(l.resident_hits, l.distinct);
  }
}

TEST(Prefetcher, AResidentHostTierServedByTheWorkerMatchesTheReference) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto host = MakeTier(*f, memory::ResidentRegions::kAll);
  ASSERT_NE(host, nullptr);
  PrefetcherOptions o;
  o.inline_rows = 0;  // every step through the worker thread
  const auto st = RunAndCheck(*f, host.get(), 3, 32, 4, o);
  EXPECT_EQ(st.layers[0].disk_rows, 0U);
  EXPECT_EQ(st.steps, 5U);
}

TEST(Prefetcher, ResidentLoadEqualsTheStoreRowForRow) {
  auto f = MakeStore();
  const Layout& layout = f->store->layout();
  memory::HostTierOptions ho;
  ho.resident = memory::ResidentRegions::kChosen;
  ho.regions = {{0, 0}, {1, 23}};
  ho.arena.huge_pages = memory::HugePages::kNone;
  auto host = memory::HostTier::Create(layout, ho);
  ASSERT_TRUE(host.ok());
  ASSERT_TRUE((*host)->LoadResident(*f->store, f->version).ok());
  for (const auto& r : ho.regions) {
    EXPECT_TRUE((*host)->IsResident(r.layer_index, r.column));
    const std::int64_t first = layout.region_offset(r.layer_index, r.column);
    const std::int64_t n = layout.layer(r.layer_index).primes[static_cast<std::size_t>(r.column)];
    std::vector<std::int64_t> rows(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) rows[static_cast<std::size_t>(i)] = first + i;
    const auto expect = test::ExpectedRows(layout, r.layer_index, rows);
    EXPECT_EQ(std::memcmp((*host)->ResidentRow(r.layer_index, r.column, first), expect.data(), expect.size()), 0);
  }
  EXPECT_FALSE((*host)->IsResident(0, 1));
  EXPECT_EQ((*host)->stats().loaded_bytes,
            static_cast<std::uint64_t>(layout.layer(0).primes[0] + layout.layer(1).primes[23]) * 264);
}

TEST(Prefetcher, Bf16OutputIsTheRoundedDequantisationOfEveryRow) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  auto s = (*p)->CreateSequence();
  const auto seq = TraceSequences(1, 40, 5000)[0];
  auto sid = (*p)->Submit(std::vector<SequenceInput>{{*s, seq, {}}});
  ASSERT_TRUE(sid.ok());
  ASSERT_TRUE((*p)->Wait(*sid, 1).ok());
  auto out = (*p)->Output(*sid, 1);
  ASSERT_TRUE(out.ok());
  ASSERT_NE(out->bf16, nullptr);
  const std::size_t n = static_cast<std::size_t>(out->tokens) * static_cast<std::size_t>(out->columns);
  for (std::size_t i = 0; i < n; ++i) {
    const auto* row = reinterpret_cast<const std::uint8_t*>(out->rows + i * out->row_bytes);
    for (std::uint32_t d = 0; d < out->dim; ++d) {
      ASSERT_EQ(out->bf16[i * out->dim + d], ReferenceBf16(row[d], row[out->dim + d / 32]))
          << "row " << i << " value " << d;
    }
  }
}

TEST(Dequant, InvalidCodesAndScalesAreRefusedWithTheirOffset) {
  std::vector<std::byte> row(264, std::byte{0x38});  // 1.0 x 2^(0x38 - 127): valid
  std::vector<std::uint16_t> out(256);
  std::uint32_t bad = 0;
  EXPECT_TRUE(DequantizeRowE4M3(row.data(), 256, out.data(), &bad));
  row[17] = std::byte{0xFF};  // E4M3 NaN
  EXPECT_FALSE(DequantizeRowE4M3(row.data(), 256, out.data(), &bad));
  EXPECT_EQ(bad, 17U);
  row[17] = std::byte{0x38};
  row[256 + 3] = std::byte{0xFF};  // E8M0 NaN
  EXPECT_FALSE(DequantizeRowE4M3(row.data(), 256, out.data(), &bad));
  EXPECT_EQ(bad, 259U);
}

TEST(Prefetcher, DeadPositionsAreZeroed) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  auto s = (*p)->CreateSequence();
  const auto seq = TraceSequences(1, 8, 7000)[0];
  const std::vector<std::uint8_t> dead = {0, 0, 1, 0, 0, 0, 1, 0};
  auto sid = (*p)->Submit(std::vector<SequenceInput>{{*s, seq, dead}});
  ASSERT_TRUE(sid.ok());
  ASSERT_TRUE((*p)->Wait(*sid, 0).ok());
  auto out = (*p)->Output(*sid, 0);
  ASSERT_TRUE(out.ok());
  const std::size_t per_token = static_cast<std::size_t>(out->columns) * out->row_bytes;
  auto expect = test::ExpectedRows(f->store->layout(), 0, test::ReferenceRows(f->store->layout(), 0, seq, dead));
  for (std::size_t t = 0; t < 8; ++t) {
    if (dead[t] != 0) {
      std::fill(expect.begin() + static_cast<std::ptrdiff_t>(t * per_token),
                expect.begin() + static_cast<std::ptrdiff_t>((t + 1) * per_token), std::byte{0});
      for (std::size_t k = 0; k < static_cast<std::size_t>(out->columns) * out->dim; ++k) {
        EXPECT_EQ(out->bf16[t * static_cast<std::size_t>(out->columns) * out->dim + k], 0);
      }
    }
  }
  EXPECT_EQ(std::memcmp(out->rows, expect.data(), expect.size()), 0);
}

TEST(Prefetcher, DeadPositionsInALongPrefillAreZeroedAndTheRestMatch) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  // 2,000 tokens x 24 columns: de-duplicated in hash partitions on the gather threads.
  const auto seq = TraceSequences(1, 2000, 30000)[0];
  std::vector<std::uint8_t> dead(seq.size(), 0);
  for (std::size_t t = 3; t < dead.size(); t += 7) dead[t] = 1;
  auto sid = (*p)->Submit(std::vector<SequenceInput>{{*(*p)->CreateSequence(), seq, dead}});
  ASSERT_TRUE(sid.ok());
  const Layout& layout = f->store->layout();
  for (int li = 0; li < 2; ++li) {
    ASSERT_TRUE((*p)->Wait(*sid, li).ok());
    auto out = (*p)->Output(*sid, li);
    ASSERT_TRUE(out.ok());
    const std::size_t per_token = static_cast<std::size_t>(out->columns) * out->row_bytes;
    auto expect = test::ExpectedRows(layout, li, test::ReferenceRows(layout, li, seq, dead));
    for (std::size_t t = 0; t < dead.size(); ++t) {
      if (dead[t] != 0) {
        std::fill(expect.begin() + static_cast<std::ptrdiff_t>(t * per_token),
                  expect.begin() + static_cast<std::ptrdiff_t>((t + 1) * per_token), std::byte{0});
      }
    }
    EXPECT_EQ(std::memcmp(out->rows, expect.data(), expect.size()), 0) << "layer " << li;
  }
  const auto st = (*p)->stats();
  EXPECT_EQ(st.layers[0].lookups, (2000U - 286U) * 24U);  // DEAD positions are not looked up
}

// A device sink that asks for every other distinct row and checks what it is handed against the literal
// hash and the rows the store holds.
class CheckingSink final : public DeviceSink {
 public:
  CheckingSink(const Layout& layout, std::vector<std::int32_t> seq, std::vector<std::uint8_t> dead)
      : layout_(layout), seq_(std::move(seq)), dead_(std::move(dead)) {}
  Status Plan(StepId, int, std::int64_t tokens, std::span<const std::int64_t> rows, std::span<const int> columns,
              std::span<std::uint8_t> stage) override {
    EXPECT_EQ(tokens, static_cast<std::int64_t>(seq_.size()));
    EXPECT_EQ(rows.size(), columns.size());
    for (std::size_t i = 0; i < stage.size(); ++i) stage[i] = static_cast<std::uint8_t>(i % 2);
    return Status::Ok();
  }
  Status Ready(StepId, int layer, const DeviceLayerInput& in) override {
    const auto cols = static_cast<std::size_t>(layout_.columns());
    const auto ref = test::ReferenceRows(layout_, layer, seq_, dead_);
    EXPECT_EQ(in.lookup.size(), ref.size());
    std::vector<std::uint8_t> seen(in.rows.size(), 0);
    for (std::size_t i = 0; i < in.lookup.size(); ++i) {
      if (dead_[i / cols] != 0) {
        EXPECT_EQ(in.lookup[i], -1) << "position " << i;
        continue;
      }
      EXPECT_GE(in.lookup[i], 0);
      EXPECT_EQ(in.rows[static_cast<std::size_t>(in.lookup[i])], ref[i]) << "position " << i;
      seen[static_cast<std::size_t>(in.lookup[i])] = 1;
    }
    // Distinct rows are distinct and each is looked up; the staged ones come compact, in order.
    EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](std::uint8_t x) { return x != 0; }));
    std::vector<std::int64_t> sorted(in.rows.begin(), in.rows.end());
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end());
    std::vector<std::int64_t> staged;
    for (std::size_t g = 1; g < in.rows.size(); g += 2) staged.push_back(in.rows[g]);
    const auto expect = test::ExpectedRows(layout_, layer, staged);
    EXPECT_EQ(in.staged.size(), expect.size());
    EXPECT_EQ(std::memcmp(in.staged.data(), expect.data(), std::min(expect.size(), in.staged.size())), 0);
    ++ready_;
    return Status::Ok();
  }
  void Failed(StepId, int, const Status& status) override { ADD_FAILURE() << status.ToString(); }
  int ready_ = 0;

 private:
  const Layout& layout_;
  std::vector<std::int32_t> seq_;
  std::vector<std::uint8_t> dead_;
};

TEST(Prefetcher, ADeviceSinkGetsDistinctRowsLookupsAndOnlyTheRowsItAskedFor) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  const auto seq = TraceSequences(1, 1200, 15000)[0];  // 28,800 lookups: the partitioned de-duplication
  std::vector<std::uint8_t> dead(seq.size(), 0);
  for (std::size_t t = 5; t < dead.size(); t += 11) dead[t] = 1;
  CheckingSink sink(f->store->layout(), seq, dead);
  PrefetcherOptions po;
  po.device = &sink;
  auto p = Prefetcher::Create(*f->store, f->version, nullptr, po);
  ASSERT_TRUE(p.ok());
  auto sid = (*p)->Submit(std::vector<SequenceInput>{{*(*p)->CreateSequence(), seq, dead}});
  ASSERT_TRUE(sid.ok());
  for (int li = 0; li < 2; ++li) EXPECT_TRUE((*p)->Wait(*sid, li).ok());
  EXPECT_EQ(sink.ready_, 2);
  ASSERT_TRUE((*p)->Finish(*sid).ok());
}

TEST(Prefetcher, BadStepsAreRefusedAndChangeNothing) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr);
  ASSERT_TRUE(p.ok());
  auto a = *(*p)->CreateSequence();
  const auto seq = TraceSequences(1, 20, 9000)[0];
  const std::int32_t bad_token[1] = {static_cast<std::int32_t>(f->store->layout().compressed_vocab_size())};
  // An unknown sequence next to a good one: nothing is appended to the good one.
  auto r =
      (*p)->Submit(std::vector<SequenceInput>{{a, std::span(seq).first(10), {}}, {999, std::span(seq).first(1), {}}});
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  r = (*p)->Submit(std::vector<SequenceInput>{{a, bad_token, {}}});
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ((*p)->Rollback(a, 1).code(), StatusCode::kOutOfRange);
  EXPECT_EQ((*p)->Wait(12345, 0).code(), StatusCode::kNotFound);
  // The sequence is as fresh as it was: its first real step equals a fresh sequence's rows.
  auto sid = (*p)->Submit(std::vector<SequenceInput>{{a, std::span(seq).first(10), {}}});
  ASSERT_TRUE(sid.ok());
  ASSERT_TRUE((*p)->Wait(*sid, 0).ok());
  auto out = (*p)->Output(*sid, 0);
  const std::vector<std::int32_t> first10(seq.begin(), seq.begin() + 10);
  const auto expect = ExpectedLayer(f->store->layout(), 0, {first10});
  EXPECT_EQ(std::memcmp(out->rows, expect.data(), expect.size()), 0);
}

TEST(Prefetcher, StagingFromAnArenaHoldsTheOutputs) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  memory::ArenaOptions ao;
  ao.huge_pages = memory::HugePages::kNone;
  auto arena = memory::PinnedArena::Create(8ULL << 20, ao);
  ASSERT_TRUE(arena.ok());
  PrefetcherOptions o;
  o.staging_bytes = 4ULL << 20;
  o.staging_arena = arena->get();
  auto p = Prefetcher::Create(*f->store, f->version, nullptr, o);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ((*arena)->available(), 4ULL << 20);
  auto s = (*p)->CreateSequence();
  const auto seq = TraceSequences(1, 30, 11000)[0];
  auto sid = (*p)->Submit(std::vector<SequenceInput>{{*s, seq, {}}});
  ASSERT_TRUE(sid.ok());
  ASSERT_TRUE((*p)->Wait(*sid, 0).ok());
  auto out = (*p)->Output(*sid, 0);
  ASSERT_TRUE(out.ok());
  EXPECT_GE(out->rows, (*arena)->data());
  EXPECT_LT(out->rows, (*arena)->data() + (*arena)->size());
  const auto expect = ExpectedLayer(f->store->layout(), 0, {seq});
  EXPECT_EQ(std::memcmp(out->rows, expect.data(), expect.size()), 0);
}

TEST(Prefetcher, AStepLargerThanTheStagingBudgetIsRefused) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  PrefetcherOptions o;
  o.staging_bytes = 1 << 20;  // a 100-token step needs 2 x 100 x 24 x (264 + 512) bytes = 3.7 MB
  auto p = Prefetcher::Create(*f->store, f->version, nullptr, o);
  ASSERT_TRUE(p.ok());
  auto s = (*p)->CreateSequence();
  const auto seq = TraceSequences(1, 100, 0)[0];
  auto r = (*p)->Submit(std::vector<SequenceInput>{{*s, seq, {}}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("budget"), std::string::npos) << r.status().ToString();
}

TEST(Prefetcher, ACorruptBlockFailsTheStepThatNeedsItAndLaterStepsAreServed) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kScale);
  test::TempDir dir;
  {
    auto st = Store::Create(dir.File("store"), ck.layout, nullptr);
    ASSERT_TRUE(st.ok());
    auto c = store::Checkpoint::Open(ck.dir);
    ASSERT_TRUE((*st)->Ingest(*c).ok());
  }
  test::FlipOneByte(dir.File("store"));
  auto st = Store::Open(dir.File("store"));
  ASSERT_TRUE(st.ok());
  auto v = (*st)->Pin(1);
  auto p = Prefetcher::Create(**st, *v, nullptr);
  ASSERT_TRUE(p.ok());
  // A long prefill touches most pages, the corrupt one among them.
  auto s = *(*p)->CreateSequence();
  const auto seq = TraceSequences(1, 3000, 20000)[0];
  auto sid = (*p)->Submit(std::vector<SequenceInput>{{s, seq, {}}});
  ASSERT_TRUE(sid.ok());
  Status failed;
  for (int li = 0; li < 2; ++li) {
    const Status w = (*p)->Wait(*sid, li);
    if (!w.ok()) failed = w;
  }
  ASSERT_FALSE(failed.ok()) << "the step should have read the corrupt page";
  EXPECT_EQ(failed.code(), StatusCode::kCorruption);
  EXPECT_NE(failed.message().find("layer"), std::string::npos) << failed.ToString();
  EXPECT_NE(failed.message().find("rows ["), std::string::npos) << failed.ToString();
  EXPECT_NE(failed.message().find(".sst"), std::string::npos) << failed.ToString();  // the file
  ASSERT_TRUE((*p)->Finish(*sid).ok());
  // A short step whose rows avoid the corrupt page is served normally.
  auto s2 = *(*p)->CreateSequence();
  const std::vector<std::int32_t> small(seq.begin(), seq.begin() + 2);
  auto sid2 = (*p)->Submit(std::vector<SequenceInput>{{s2, small, {}}});
  ASSERT_TRUE(sid2.ok());
  int served = 0;
  for (int li = 0; li < 2; ++li) served += (*p)->Wait(*sid2, li).ok() ? 1 : 0;
  EXPECT_GE(served, 1);
  EXPECT_EQ((*p)->stats().steps, 2U);
}

TEST(Prefetcher, HintsFillTheHostCacheWithoutChangingTheSequence) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto f = MakeStore();
  auto host = MakeTier(*f, memory::ResidentRegions::kNone);
  ASSERT_NE(host, nullptr);
  auto p = Prefetcher::Create(*f->store, f->version, host.get());
  ASSERT_TRUE(p.ok());
  auto s = *(*p)->CreateSequence();
  const auto seq = TraceSequences(1, 21, 3000)[0];
  auto sid = (*p)->Submit(std::vector<SequenceInput>{{s, std::span(seq).first(20), {}}});
  ASSERT_TRUE(sid.ok());
  ASSERT_TRUE((*p)->Finish(*sid).ok());
  ASSERT_TRUE((*p)->Hint(s, std::span(seq).subspan(20, 1)).ok());
  // The hint runs when the worker is idle: poll for it (up to 10 s).
  for (int i = 0; i < 2000 && (*p)->stats().hints == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ((*p)->stats().hints, 1U);
  EXPECT_GT((*p)->stats().hint_rows, 0U);
  const auto before = (*p)->stats().layers[0].disk_rows;
  auto sid2 = (*p)->Submit(std::vector<SequenceInput>{{s, std::span(seq).subspan(20, 1), {}}});
  ASSERT_TRUE(sid2.ok());
  ASSERT_TRUE((*p)->Wait(*sid2, 0).ok());
  EXPECT_EQ((*p)->stats().layers[0].disk_rows, before);  // every row of the drafted token was in the cache
  auto out = (*p)->Output(*sid2, 0);
  const auto expect = ExpectedLayer(f->store->layout(), 0, {seq});
  const std::size_t per_token = 24 * 264;
  EXPECT_EQ(std::memcmp(out->rows, expect.data() + 20 * per_token, per_token), 0);
}

}  // namespace
}  // namespace engram::prefetch
