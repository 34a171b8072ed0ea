// The store with a real RocksDB in a temp dir, real io_uring, real synthetic checkpoints.
#include "engram/store/store.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "store_util.hpp"

namespace engram::store {
namespace {

constexpr double kFlashScale = 0.0001;  // ~38 K rows per layer (~10 MiB per layer)
constexpr double kDemoScale = 0.002;    // ~21 K rows per layer

StoreOptions Opts(IoMode io = IoMode::kIoUring) {
  StoreOptions o;
  o.io = io;
  o.read_threads = 2;
  return o;
}

std::unique_ptr<Store> CreateAndIngest(const test::TempDir& dir, const test::SynthCheckpoint& ck, IoMode io,
                                       VersionId* version = nullptr) {
  auto st = Store::Create(dir.File("store"), ck.layout, nullptr, Opts(io));
  EXPECT_TRUE(st.ok()) << st.status().ToString();
  auto c = Checkpoint::Open(ck.dir);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  auto v = (*st)->Ingest(*c);
  EXPECT_TRUE(v.ok()) << v.status().ToString();
  if (version != nullptr) *version = *v;
  return std::move(*st);
}

std::vector<std::int64_t> AllRows(const Layout& l, int li) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(l.layer_rows(li)));
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<std::int64_t>(i);
  return rows;
}

void ExpectEveryRowReadsBack(const Store& st, VersionId v) {
  auto h = st.Pin(v);
  ASSERT_TRUE(h.ok());
  const Layout& l = st.layout();
  for (int li = 0; li < l.num_layers(); ++li) {
    const auto rows = AllRows(l, li);
    std::vector<std::byte> out(rows.size() * l.row_bytes());
    const Status s = st.ReadRows(*h, li, rows, out);
    ASSERT_TRUE(s.ok()) << s.ToString();
    ASSERT_EQ(out, test::ExpectedRows(l, li, rows)) << "layer " << l.layer(li).layer_id;
  }
}

TEST(Store, FlashCheckpointIngestsAndEveryRowReadsBackThroughIoUring) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v);
  EXPECT_EQ(v, 1U);
  ExpectEveryRowReadsBack(*st, v);
}

TEST(Store, DemoCheckpointIngestsAndEveryRowReadsBackThroughPosix) {
  const auto& ck = test::SmallCheckpoint("engram-demo", kDemoScale);
  test::TempDir dir;
  VersionId v = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kPosix, &v);
  ExpectEveryRowReadsBack(*st, v);
}

TEST(Store, RowsMayRepeatAndComeInAnyOrder) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v);
  std::mt19937_64 rng(1);
  std::vector<std::int64_t> rows;
  rows.reserve(5002);
  for (int i = 0; i < 5000; ++i)
    rows.push_back(static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(ck.layout.layer_rows(1))));
  rows.push_back(rows[7]);
  rows.push_back(rows[7]);
  std::vector<std::byte> out(rows.size() * 264);
  ASSERT_TRUE(st->ReadRows(*st->Pin(v), 1, rows, out).ok());
  EXPECT_EQ(out, test::ExpectedRows(ck.layout, 1, rows));
}

TEST(Store, RowOutsideTheLayerIsOutOfRange) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v);
  const std::vector<std::int64_t> rows = {0, ck.layout.layer_rows(0)};
  std::vector<std::byte> out(2 * 264);
  const Status s = st->ReadRows(*st->Pin(v), 0, rows, out);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("request 1"), std::string::npos) << s.ToString();
}

TEST(Store, ReopenKeepsLayoutTokenMapAndVersions) {
  ENGRAM_REQUIRE_SHARED_DATA("deepseek-v3.token-map.i32");
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  auto map = TokenMap::LoadFile(test::SharedData("deepseek-v3.token-map.i32"));
  {
    auto st = Store::Create(dir.File("store"), ck.layout, &*map, Opts());
    ASSERT_TRUE(st.ok());
    ASSERT_TRUE((*st)->Ingest(*Checkpoint::Open(ck.dir)).ok());
  }
  auto st = Store::Open(dir.File("store"), Opts(), &ck.layout);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ((*st)->layout(), ck.layout);
  ASSERT_NE((*st)->token_map(), nullptr);
  EXPECT_EQ((*st)->token_map()->compressed_vocab_size(), 99045);
  ASSERT_EQ((*st)->versions().size(), 1U);
  EXPECT_EQ((*st)->versions()[0].kind, "ingest");
  ExpectEveryRowReadsBack(**st, 1);
}

TEST(Store, OpeningWithAnotherLayoutIsAnError) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  { auto st = CreateAndIngest(dir, ck, IoMode::kIoUring); }
  auto other = ScaledLayout(*Layout::Preset("deepseek-v4.1-flash"), 0.0002);
  auto st = Store::Open(dir.File("store"), Opts(), &*other);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find("does not match"), std::string::npos) << st.status().ToString();
}

TEST(Store, ASecondOpenOfAnOpenStoreIsRefused) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  auto first = CreateAndIngest(dir, ck, IoMode::kIoUring);
  auto second = Store::Open(dir.File("store"), Opts());
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("lock"), std::string::npos) << second.status().ToString();
}

TEST(Store, CreatingOverAnExistingStoreIsRefused) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  { auto st = CreateAndIngest(dir, ck, IoMode::kIoUring); }
  auto again = Store::Create(dir.File("store"), ck.layout, nullptr, Opts());
  EXPECT_EQ(again.status().code(), StatusCode::kFailedPrecondition);
}

TEST(Store, IngestOfAMismatchedCheckpointFailsAndLeavesThePreviousVersion) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  const auto& wrong = test::SmallCheckpoint("deepseek-v4.1-flash", 0.00012);  // other shapes
  test::TempDir dir;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring);
  auto bad = st->Ingest(*Checkpoint::Open(wrong.dir));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("field shape"), std::string::npos) << bad.status().ToString();
  EXPECT_NE(bad.status().message().find("layers.1.engram.embed.weight"), std::string::npos) << bad.status().ToString();
  ASSERT_EQ(st->versions().size(), 1U);
  ExpectEveryRowReadsBack(*st, 1);
  EXPECT_TRUE(st->Verify(1).ok());
}

TEST(Store, SecondIngestAddsAVersionAndBothRead) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring);
  auto v2 = st->Ingest(*Checkpoint::Open(ck.dir));
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(*v2, 2U);
  EXPECT_EQ(st->versions().size(), 2U);
  EXPECT_NE(st->versions()[0].generation, st->versions()[1].generation);
  ExpectEveryRowReadsBack(*st, 1);
  ExpectEveryRowReadsBack(*st, 2);
}

std::vector<RowEdit> SomeEdits(const Layout& l) {
  std::vector<RowEdit> edits;
  for (std::int64_t r : {std::int64_t{0}, std::int64_t{1}, std::int64_t{17}, l.layer_rows(1) - 1}) {
    RowEdit e;
    e.layer_index = 1;
    e.row = r;
    e.bytes.assign(l.row_bytes(), std::byte{static_cast<unsigned char>(0x30 + r % 7)});
    edits.push_back(std::move(e));
  }
  return edits;
}

TEST(StoreEdits, EditMakesANewVersionAndOldReadersKeepOldRows) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v1 = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v1);
  auto old_pin = st->Pin(v1);
  const auto edits = SomeEdits(ck.layout);
  auto v2 = st->EditRows(v1, edits);
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  const std::vector<std::int64_t> rows = {0, 1, 2, 17, 18, ck.layout.layer_rows(1) - 1};
  std::vector<std::byte> before(rows.size() * 264);
  std::vector<std::byte> after(rows.size() * 264);
  ASSERT_TRUE(st->ReadRows(*old_pin, 1, rows, before).ok());
  ASSERT_TRUE(st->ReadRows(*st->Pin(*v2), 1, rows, after).ok());
  EXPECT_EQ(before, test::ExpectedRows(ck.layout, 1, rows));
  auto expected = test::ExpectedRows(ck.layout, 1, rows);
  for (std::size_t i : {0U, 1U, 3U, 5U}) {
    const auto& e = *std::find_if(edits.begin(), edits.end(), [&](const RowEdit& x) { return x.row == rows[i]; });
    std::copy(e.bytes.begin(), e.bytes.end(), expected.begin() + static_cast<std::ptrdiff_t>(i * 264));
  }
  EXPECT_EQ(after, expected);
  // Layer 0 is untouched in the new version.
  std::vector<std::byte> l0(264);
  const std::int64_t zero = 0;
  ASSERT_TRUE(st->ReadRows(*st->Pin(*v2), 0, std::span(&zero, 1), l0).ok());
  EXPECT_EQ(l0, test::ExpectedRows(ck.layout, 0, {0}));
}

TEST(StoreEdits, EditsSurviveReopenAndChainOnTheirParent) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v1 = 0;
  VersionId v3 = 0;
  std::vector<RowEdit> second(1);
  {
    auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v1);
    auto v2 = st->EditRows(v1, SomeEdits(ck.layout));
    ASSERT_TRUE(v2.ok());
    second[0].layer_index = 1;
    second[0].row = 1;
    second[0].bytes.assign(264, std::byte{0x77});
    v3 = *st->EditRows(*v2, second);
  }
  auto st = Store::Open(dir.File("store"), Opts());
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  const std::vector<std::int64_t> rows = {0, 1};
  std::vector<std::byte> out(2 * 264);
  ASSERT_TRUE((*st)->ReadRows(*(*st)->Pin(v3), 1, rows, out).ok());
  EXPECT_EQ(out[0], std::byte{0x30});    // from version 2's edit of row 0
  EXPECT_EQ(out[264], std::byte{0x77});  // version 3 re-edited row 1
  EXPECT_TRUE((*st)->Verify(v3).ok());
}

TEST(StoreEdits, BadEditsAreRejectedAndCreateNoVersion) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v1 = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v1);
  std::vector<RowEdit> e(1);
  e[0].layer_index = 0;
  e[0].row = ck.layout.layer_rows(0);
  e[0].bytes.assign(264, std::byte{0});
  EXPECT_EQ(st->EditRows(v1, e).status().code(), StatusCode::kOutOfRange);
  e[0].row = 3;
  e[0].bytes.resize(100);
  EXPECT_EQ(st->EditRows(v1, e).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st->EditRows(99, e).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(st->versions().size(), 1U);
}

TEST(StoreVersions, DroppedVersionStaysReadableThroughItsPinUntilReleased) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v1 = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v1);
  auto v2 = st->Ingest(*Checkpoint::Open(ck.dir));
  ASSERT_TRUE(v2.ok());
  auto pin = st->Pin(v1);
  ASSERT_TRUE(st->DropVersion(v1).ok());
  EXPECT_EQ(st->Pin(v1).status().code(), StatusCode::kNotFound);
  ASSERT_EQ(st->versions().size(), 1U);
  std::vector<std::byte> out(264);
  const std::int64_t row = 5;
  ASSERT_TRUE(st->ReadRows(*pin, 0, std::span(&row, 1), out).ok());
  EXPECT_EQ(out, test::ExpectedRows(ck.layout, 0, {5}));
}

TEST(StoreVersions, AParentCannotBeDroppedBeforeItsChild) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v1 = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v1);
  auto v2 = st->EditRows(v1, SomeEdits(ck.layout));
  EXPECT_EQ(st->DropVersion(v1).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(st->DropVersion(*v2).ok());
  EXPECT_TRUE(st->DropVersion(v1).ok());
  EXPECT_TRUE(st->versions().empty());
}

TEST(StoreVersions, DroppedGenerationIsGoneAfterReopen) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  {
    VersionId v1 = 0;
    auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v1);
    ASSERT_TRUE(st->Ingest(*Checkpoint::Open(ck.dir)).ok());
    ASSERT_TRUE(st->DropVersion(v1).ok());
  }
  auto st = Store::Open(dir.File("store"), Opts());
  ASSERT_TRUE(st.ok());
  const StoreInfo info = (*st)->Info();
  ASSERT_EQ(info.versions.size(), 1U);
  // One generation's worth of SST bytes remains (~2 x 38 K rows x 264 B).
  const double table_bytes = static_cast<double>(ck.layout.layer_rows(0) + ck.layout.layer_rows(1)) * 264;
  EXPECT_LT(static_cast<double>(info.bytes_on_disk), 1.5 * table_bytes);
  ExpectEveryRowReadsBack(**st, 2);
}

TEST(StoreIntegrity, VerifyPassesAndIsRecorded) {
  const auto& ck = test::SmallCheckpoint("engram-demo", kDemoScale);
  test::TempDir dir;
  VersionId v1 = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v1);
  auto r = st->Verify(v1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->rows_checked, static_cast<std::uint64_t>(ck.layout.layer_rows(0) + ck.layout.layer_rows(1)));
  EXPECT_NE(st->Info().last_verification.find("ok"), std::string::npos);
}

TEST(StoreIntegrity, AFlippedByteIsDetectedNotServed) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  { auto st = CreateAndIngest(dir, ck, IoMode::kIoUring); }
  test::FlipOneByte(dir.File("store"));
  auto st = Store::Open(dir.File("store"), Opts());
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  auto r = (*st)->Verify(1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  const std::string msg = r.status().message();
  EXPECT_NE(msg.find("first bad row"), std::string::npos) << msg;
  EXPECT_NE((*st)->Info().last_verification.find("FAILED"), std::string::npos);
  // Every row is either served intact or refused: none comes back wrong. Some are refused, most served.
  auto h = (*st)->Pin(1);
  std::size_t refused = 0;
  std::size_t served = 0;
  for (int li = 0; li < 2; ++li) {
    for (std::int64_t r0 = 0; r0 < ck.layout.layer_rows(li); r0 += 15) {
      std::vector<std::int64_t> rows;
      for (std::int64_t x = r0; x < std::min(r0 + 15, ck.layout.layer_rows(li)); ++x) rows.push_back(x);
      std::vector<std::byte> out(rows.size() * 264);
      const Status s = (*st)->ReadRows(*h, li, rows, out);
      if (s.ok()) {
        ASSERT_EQ(out, test::ExpectedRows(ck.layout, li, rows)) << "layer " << li << " rows from " << r0;
        ++served;
      } else {
        EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.ToString();
        EXPECT_NE(s.message().find("rows ["), std::string::npos) << s.ToString();
        ++refused;
      }
    }
  }
  EXPECT_EQ(refused, 1U);
  EXPECT_GT(served, 1000U);
}

TEST(StoreIo, OneMultiGetBatchReachesTheDiskAsOneIoUringSubmission) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v = 0;
  StoreOptions o = Opts();
  o.read_threads = 1;
  auto st = Store::Create(dir.File("store"), ck.layout, nullptr, o);
  ASSERT_TRUE(st.ok());
  ASSERT_TRUE((*st)->Ingest(*Checkpoint::Open(ck.dir)).ok());
  v = 1;
  auto h = (*st)->Pin(v);
  // 32 rows in 32 different pages (RocksDB's MultiGet batch is 32 keys), one SST file.
  std::vector<std::int64_t> rows;
  rows.reserve(32);
  for (int i = 0; i < 32; ++i) rows.push_back(static_cast<std::int64_t>(i) * 15 * 37);
  std::vector<std::byte> out(rows.size() * 264);
  const StoreIoStats before = (*st)->io_stats();
  ASSERT_TRUE(before.io_uring);
  ASSERT_TRUE((*st)->ReadRows(*h, 0, rows, out).ok());
  const StoreIoStats after = (*st)->io_stats();
  EXPECT_EQ(after.multireads - before.multireads, 1U);
  EXPECT_EQ(after.submissions - before.submissions, 1U);
  EXPECT_EQ(after.reads - before.reads, 32U);
  EXPECT_EQ(after.bytes - before.bytes, 32U * 4096U);  // one aligned 4 KiB block per page
  EXPECT_EQ(out, test::ExpectedRows(ck.layout, 0, rows));
}

TEST(StoreIo, TheQueueDepthGaugeSeesABatchInFlightAndNoneAfterIt) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  StoreOptions o = Opts();
  o.read_threads = 1;
  auto st = Store::Create(dir.File("store"), ck.layout, nullptr, o);
  ASSERT_TRUE(st.ok());
  ASSERT_TRUE((*st)->Ingest(*Checkpoint::Open(ck.dir)).ok());
  auto h = (*st)->Pin(1);
  std::vector<std::int64_t> rows;
  rows.reserve(32);
  for (int i = 0; i < 32; ++i) rows.push_back(static_cast<std::int64_t>(i) * 15 * 37);  // 32 pages
  std::vector<std::byte> out(rows.size() * 264);
  ASSERT_TRUE((*st)->ReadRows(*h, 0, rows, out).ok());
  const StoreIoStats s = (*st)->io_stats();
  EXPECT_EQ(s.in_flight, 0U);          // every read completed
  EXPECT_GE(s.peak_in_flight, 32U);    // the batch was in the kernel at once
  EXPECT_GT(s.mean_queue_depth, 1.0);  // submissions carried more than one read
  EXPECT_LE(s.mean_queue_depth, static_cast<double>(s.peak_in_flight));
}

}  // namespace
}  // namespace engram::store

namespace engram::store {
namespace {

// bf16 and f16 tables ([rows, dim] weights, no scales) ingest and read back like f32 and fp8 ones.
class HalfFormats : public ::testing::TestWithParam<RowFormat> {};

TEST_P(HalfFormats, IngestAndReadBack) {
  LayoutGenerateOptions o = GenerateOptionsFor(Layout::Preset("engram-demo")->spec());
  o.name = "half";
  o.base_sizes = {1500, 1500};
  o.row_format = GetParam();
  o.row_dim = 128;
  auto layout = Layout::Create(*GenerateLayoutSpec(o));
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  test::TempDir dir;
  SynthOptions so;
  so.quiet = true;
  ASSERT_TRUE(WriteSynthCheckpoint(*layout, dir.File("ck"), so).ok());
  auto c = Checkpoint::Open(dir.File("ck"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->Find("layers.1.engram.embed.weight")->dtype,
            GetParam() == RowFormat::kBF16 ? DType::kBF16 : DType::kF16);
  auto st = Store::Create(dir.File("store"), *layout, nullptr, Opts());
  ASSERT_TRUE(st.ok());
  auto v = (*st)->Ingest(*c);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  ExpectEveryRowReadsBack(**st, *v);
  EXPECT_TRUE((*st)->Verify(*v).ok());
}

INSTANTIATE_TEST_SUITE_P(Store, HalfFormats, ::testing::Values(RowFormat::kBF16, RowFormat::kF16),
                         [](const auto& pinfo) { return std::string(RowFormatName(pinfo.param)); });

}  // namespace
}  // namespace engram::store

namespace engram::store {
namespace {

// A pin released after its store is gone: the database closes with the last of them, its file system
// still alive (ASan checks the order).
TEST(StoreVersions, APinMayOutliveItsStore) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v = 0;
  auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v);
  auto pin = st->Pin(v);
  ASSERT_TRUE(pin.ok());
  st.reset();
  EXPECT_TRUE(pin->valid());
  pin = Status::NotFound("released");
  auto reopened = Store::Open(dir.File("store"), Opts());
  EXPECT_TRUE(reopened.ok()) << reopened.status().ToString();
}

}  // namespace
}  // namespace engram::store

namespace engram::store {
namespace {

StoreOptions DirectOpts() {
  StoreOptions o = Opts();
  o.read_path = ReadPath::kDirectBlocks;
  o.direct_queue_depth = 64;
  return o;
}

class DirectBlocks : public ::testing::TestWithParam<const char*> {};

TEST_P(DirectBlocks, EveryRowReadsBack) {
  const std::string preset = GetParam();
  const auto& ck = test::SmallCheckpoint(preset, preset == "engram-demo" ? kDemoScale : kFlashScale);
  test::TempDir dir;
  { auto st = CreateAndIngest(dir, ck, IoMode::kIoUring); }
  auto st = Store::Open(dir.File("store"), DirectOpts());
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  const StoreIoStats before = (*st)->io_stats();
  ExpectEveryRowReadsBack(**st, 1);
  const StoreIoStats after = (*st)->io_stats();
  // Every page of both layers, one 4 KiB read each, and MultiGet never touched the table files.
  const auto pages =
      static_cast<std::uint64_t>((ck.layout.layer_rows(0) + 14) / 15 + (ck.layout.layer_rows(1) + 14) / 15);
  EXPECT_EQ(after.direct_reads - before.direct_reads, pages);
  EXPECT_EQ(after.reads - before.reads, 0U);
}

// Two threads read at once, each call asking for its own read counts: each gets exactly its own pages'
// reads, not the other thread's (which a difference of io_stats() would include).
class CallReadStats : public ::testing::TestWithParam<ReadPath> {};

TEST_P(CallReadStats, EachCallCountsOnlyItsOwnReadsWhileAnotherThreadReads) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  { auto st = CreateAndIngest(dir, ck, IoMode::kIoUring); }
  StoreOptions o = GetParam() == ReadPath::kDirectBlocks ? DirectOpts() : Opts();
  o.read_threads = 4;
  auto st = Store::Open(dir.File("store"), o);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  auto h = (*st)->Pin(1);
  ASSERT_TRUE(h.ok());
  constexpr int kPages = 64;  // distinct pages per call
  auto reader = [&](int layer, std::vector<ReadStats>& got) {
    std::vector<std::int64_t> rows(kPages);
    for (int i = 0; i < kPages; ++i) rows[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(i) * 15 * 7 + layer;
    std::vector<std::byte> out(rows.size() * 264);
    for (int k = 0; k < 30; ++k) {
      ReadStats s;
      if (!(*st)->ReadRows(*h, layer, rows, out, &s).ok()) return;
      got.push_back(s);
    }
  };
  std::vector<ReadStats> a, b;
  const StoreIoStats before = (*st)->io_stats();
  std::thread other([&] { reader(1, b); });
  reader(0, a);
  other.join();
  const StoreIoStats after = (*st)->io_stats();
  ASSERT_EQ(a.size(), 30U);
  ASSERT_EQ(b.size(), 30U);
  std::uint64_t reads = 0;
  for (const auto* v : {&a, &b}) {
    for (const ReadStats& s : *v) {
      EXPECT_GE(s.reads, static_cast<std::uint64_t>(kPages));         // resubmissions may add some
      EXPECT_EQ(s.bytes, static_cast<std::uint64_t>(kPages) * 4096);  // one 4 KiB block per page
      reads += s.reads;
    }
  }
  EXPECT_EQ(reads, (after.reads + after.direct_reads) - (before.reads + before.direct_reads));
}

INSTANTIATE_TEST_SUITE_P(Store, CallReadStats, ::testing::Values(ReadPath::kMultiGet, ReadPath::kDirectBlocks),
                         [](const auto& pinfo) { return pinfo.param == ReadPath::kMultiGet ? "MultiGet" : "Direct"; });

INSTANTIATE_TEST_SUITE_P(Store, DirectBlocks, ::testing::Values("deepseek-v4.1-flash", "engram-demo"),
                         [](const auto& pinfo) {
                           return std::string(pinfo.param) == "engram-demo" ? "Demo" : "Flash";
                         });

TEST(DirectBlocksReads, EditedRowsComeFromTheirEdits) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  VersionId v2 = 0;
  {
    VersionId v1 = 0;
    auto st = CreateAndIngest(dir, ck, IoMode::kIoUring, &v1);
    v2 = *st->EditRows(v1, SomeEdits(ck.layout));
  }
  auto st = Store::Open(dir.File("store"), DirectOpts());
  ASSERT_TRUE(st.ok());
  const std::vector<std::int64_t> rows = {0, 2, 17};
  std::vector<std::byte> out(3 * 264);
  ASSERT_TRUE((*st)->ReadRows(*(*st)->Pin(v2), 1, rows, out).ok());
  EXPECT_EQ(out[0], std::byte{0x30});
  EXPECT_EQ(std::vector<std::byte>(out.begin() + 264, out.begin() + 528), test::ExpectedRows(ck.layout, 1, {2}));
  EXPECT_EQ(out[528], std::byte{0x30 + 17 % 7});
}

// A V4.1 store with one byte flipped inside one of its blocks, opened for direct reads.
std::unique_ptr<Store> FlippedDirectStore(const test::TempDir& dir, const test::SynthCheckpoint& ck) {
  { auto st = CreateAndIngest(dir, ck, IoMode::kIoUring); }
  test::FlipOneByte(dir.File("store"));
  auto st = Store::Open(dir.File("store"), DirectOpts());
  EXPECT_TRUE(st.ok()) << st.status().ToString();
  return st.ok() ? std::move(*st) : nullptr;
}

TEST(DirectBlocksReads, AFlippedByteIsRefusedNotServed) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  auto st = FlippedDirectStore(dir, ck);
  ASSERT_NE(st, nullptr);
  auto h = st->Pin(1);
  std::size_t refused = 0;
  for (int li = 0; li < 2; ++li) {
    for (std::int64_t r0 = 0; r0 < ck.layout.layer_rows(li); r0 += 15) {
      std::vector<std::int64_t> rows;
      for (std::int64_t x = r0; x < std::min(r0 + 15, ck.layout.layer_rows(li)); ++x) rows.push_back(x);
      std::vector<std::byte> out(rows.size() * 264);
      const Status s = st->ReadRows(*h, li, rows, out);
      if (s.ok()) {
        ASSERT_EQ(out, test::ExpectedRows(ck.layout, li, rows));
      } else {
        EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.ToString();
        EXPECT_NE(s.message().find("checksum"), std::string::npos) << s.ToString();
        ++refused;
      }
    }
  }
  EXPECT_EQ(refused, 1U);
}

// Rows of a range in order: [first, first + n) of layer li, as the store must return them.
std::vector<std::byte> ExpectedRange(const Layout& layout, int li, std::int64_t first, std::int64_t n) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) rows[static_cast<std::size_t>(i)] = first + i;
  return test::ExpectedRows(layout, li, rows);
}

TEST(DirectBlocksReads, ReadRangeReadsWholeAndPartialRangesInLargeReads) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  { auto st = CreateAndIngest(dir, ck, IoMode::kIoUring); }
  auto st = Store::Open(dir.File("store"), DirectOpts());
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  auto h = (*st)->Pin(1);
  ASSERT_TRUE(h.ok());
  const std::int64_t rows0 = ck.layout.layer_rows(0);
  const StoreIoStats before = (*st)->io_stats();
  std::vector<std::byte> all(static_cast<std::size_t>(rows0) * 264);
  ASSERT_TRUE((*st)->ReadRange(*h, 0, 0, all).ok());
  const StoreIoStats after = (*st)->io_stats();
  EXPECT_EQ(all, ExpectedRange(ck.layout, 0, 0, rows0));
  // Every page once, in reads of up to 512 pages each (not one read per page), no MultiGet.
  const auto pages = static_cast<std::uint64_t>((rows0 + 14) / 15);
  EXPECT_EQ(after.direct_bytes - before.direct_bytes, pages * 4096);
  EXPECT_LE(after.direct_reads - before.direct_reads, pages / 512 + 8 + 8);  // a part per read thread
  EXPECT_EQ(after.reads - before.reads, 0U);
  // A range that starts and ends inside pages.
  const std::int64_t first = 7;
  const std::int64_t n = ck.layout.layer_rows(1) - 10;
  std::vector<std::byte> part(static_cast<std::size_t>(n) * 264);
  ASSERT_TRUE((*st)->ReadRange(*h, 1, first, part).ok());
  EXPECT_EQ(part, ExpectedRange(ck.layout, 1, first, n));
}

TEST(DirectBlocksReads, ReadRangeOverAFlippedByteFailsAndNamesTheBlock) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  auto st = FlippedDirectStore(dir, ck);
  ASSERT_NE(st, nullptr);
  auto h = st->Pin(1);
  std::size_t refused = 0;
  for (int li = 0; li < 2; ++li) {
    std::vector<std::byte> out(static_cast<std::size_t>(ck.layout.layer_rows(li)) * 264);
    const Status s = st->ReadRange(*h, li, 0, out);
    if (s.ok()) {
      EXPECT_EQ(out, ExpectedRange(ck.layout, li, 0, ck.layout.layer_rows(li)));
    } else {
      EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.ToString();
      EXPECT_NE(s.message().find("checksum"), std::string::npos) << s.ToString();
      EXPECT_NE(s.message().find(".sst offset"), std::string::npos) << s.ToString();
      ++refused;
    }
  }
  EXPECT_EQ(refused, 1U);
}

TEST(DirectBlocksReads, AStoreWithSeveralKeysPerBlockIsRefusedNotRead) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", kFlashScale);
  test::TempDir dir;
  {
    StoreOptions o = Opts();
    o.rows_per_key = 1;  // ~14 keys per 4 KiB block
    auto st = Store::Create(dir.File("store"), ck.layout, nullptr, o);
    ASSERT_TRUE((*st)->Ingest(*Checkpoint::Open(ck.dir)).ok());
  }
  auto st = Store::Open(dir.File("store"), DirectOpts());
  ASSERT_TRUE(st.ok());
  std::vector<std::byte> out(264);
  const std::int64_t row = 3;
  const Status s = (*st)->ReadRows(*(*st)->Pin(1), 0, std::span(&row, 1), out);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("kMultiGet"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace engram::store
