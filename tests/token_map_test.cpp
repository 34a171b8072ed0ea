#include "engram/token_map.hpp"

#include <gtest/gtest.h>

#include "test_util.hpp"

namespace engram {
namespace {

TEST(TokenMap, LoadsTheRealDeepSeekMap) {
  ENGRAM_REQUIRE_SHARED_DATA("deepseek-v3.token-map.i32");
  auto m = TokenMap::LoadFile(test::SharedData("deepseek-v3.token-map.i32"));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->vocab_size(), 128815);
  EXPECT_EQ(m->compressed_vocab_size(), 99045);
  EXPECT_EQ(m->ids()[2], 2);  // pad
  EXPECT_TRUE(m->CheckCompatible(*Layout::Preset("engram-demo")).ok());
  EXPECT_TRUE(m->CheckCompatible(*Layout::Preset("deepseek-v4.1-flash")).ok());
}

TEST(TokenMap, TruncatedFileIsCorruptionNamingTheFile) {
  test::TempDir dir;
  const std::int32_t ids[3] = {0, 1, 2};
  test::WriteBytes(dir.File("map.i32"), ids, sizeof(ids) - 1);
  auto m = TokenMap::LoadFile(dir.File("map.i32"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kCorruption);
  EXPECT_NE(m.status().message().find("map.i32"), std::string::npos);
  EXPECT_NE(m.status().message().find("truncated"), std::string::npos);
}

TEST(TokenMap, EntryBelowMinusOneIsCorruptionNamingTheEntry) {
  auto m = TokenMap::FromIds({0, 1, -5, 2}, "m");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kCorruption);
  EXPECT_NE(m.status().message().find("entry 2"), std::string::npos);
}

TEST(TokenMap, MissingFileIsNotFound) {
  auto m = TokenMap::LoadFile("/nonexistent/engram/map.i32");
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
}

TEST(TokenMap, CompressesIds) {
  auto m = TokenMap::FromIds({0, 1, 1, 2, 0}, "m");
  ASSERT_TRUE(m.ok());
  const std::vector<std::int32_t> raw = {4, 3, 2, 1};
  std::vector<std::int32_t> out(4);
  ASSERT_TRUE(m->Compress(raw, out).ok());
  EXPECT_EQ(out, (std::vector<std::int32_t>{0, 2, 1, 1}));
}

TEST(TokenMap, NegativeTokenIdIsRejectedNamingThePosition) {
  auto m = TokenMap::FromIds({0, 1, 2}, "m");
  const std::vector<std::int32_t> raw = {0, 1, -7, 2};
  std::vector<std::int32_t> out(4);
  Status s = m->Compress(raw, out, 1000);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("token id -7 at position 1002"), std::string::npos) << s.ToString();
}

TEST(TokenMap, TooLargeTokenIdIsRejectedNamingThePosition) {
  auto m = TokenMap::FromIds({0, 1, 2}, "m");
  const std::vector<std::int32_t> raw = {3};
  std::vector<std::int32_t> out(1);
  Status s = m->Compress(raw, out);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("token id 3 at position 0"), std::string::npos) << s.ToString();
}

TEST(TokenMap, UndefinedTokenIsRejected) {
  auto m = TokenMap::FromIds({0, -1, 1}, "m");
  const std::vector<std::int32_t> raw = {1};
  std::vector<std::int32_t> out(1);
  Status s = m->Compress(raw, out);
  EXPECT_NE(s.message().find("not defined"), std::string::npos) << s.ToString();
}

TEST(TokenMap, MapBeyondTheLayoutVocabularyIsIncompatible) {
  std::vector<std::int32_t> ids = {0, 1, 2, 200000};
  auto m = TokenMap::FromIds(ids, "big");
  Status s = m->CheckCompatible(*Layout::Preset("engram-demo"));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("compressed_vocab_size"), std::string::npos);
}

TEST(TokenMap, PadMismatchIsIncompatible) {
  auto m = TokenMap::FromIds({0, 1, 5, 2}, "m");
  Status s = m->CheckCompatible(*Layout::Preset("engram-demo"));
  EXPECT_NE(s.message().find("pad token"), std::string::npos) << s.ToString();
}

TEST(CompressedIds, OutOfRangeIdIsRejectedNamingThePosition) {
  const std::vector<std::int32_t> ids = {0, 5, 99092, 7};
  Status s = CheckCompressedIds(ids, *Layout::Preset("deepseek-v4.1-flash"));
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("compressed id 99092 at position 2"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace engram
