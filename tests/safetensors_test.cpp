// Safetensors parsing: valid files round-trip; every malformed header is an error naming file and field.
#include "engram/store/safetensors.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "engram/store/synth.hpp"
#include "test_util.hpp"

namespace engram::store {
namespace {

// Writes a safetensors file from a raw header string and `data_bytes` bytes of data.
std::string WriteRaw(const test::TempDir& dir, const std::string& header, std::size_t data_bytes,
                     std::uint64_t declared_len = UINT64_MAX) {
  std::string path = dir.File("t.safetensors");
  std::string bytes(8, '\0');
  const std::uint64_t len = declared_len == UINT64_MAX ? header.size() : declared_len;
  std::memcpy(bytes.data(), &len, 8);
  bytes += header;
  bytes.append(data_bytes, '\x01');
  test::WriteBytes(path, bytes.data(), bytes.size());
  return path;
}

std::string OpenError(const std::string& path) {
  auto f = SafetensorsFile::Open(path);
  return f.ok() ? "" : f.status().ToString();
}

TEST(Safetensors, WriterOutputParsesBack) {
  test::TempDir dir;
  auto w = SafetensorsWriter::Create(dir.File("a.safetensors"),
                                     {{"x", DType::kF8E4M3, {3, 4}}, {"y", DType::kF32, {2}}}, {{"format", "pt"}});
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::vector<std::byte> bytes(12 + 8, std::byte{7});
  ASSERT_TRUE(w->Append(bytes).ok());
  ASSERT_TRUE(w->Finish().ok());
  auto f = SafetensorsFile::Open(dir.File("a.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->tensors().size(), 2U);
  const TensorInfo* y = f->Find("y");
  ASSERT_NE(y, nullptr);
  EXPECT_EQ(y->dtype, DType::kF32);
  EXPECT_EQ(y->size, 8U);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->Find("x")->offset % 8, 0U);  // the data section starts 8-byte aligned
}

TEST(Safetensors, UnfinishedWriterLeavesNoFile) {
  test::TempDir dir;
  {
    auto w = SafetensorsWriter::Create(dir.File("a.safetensors"), {{"x", DType::kU8, {4}}});
    ASSERT_TRUE(w.ok());
    std::vector<std::byte> two(2);
    ASSERT_TRUE(w->Append(two).ok());
    EXPECT_EQ(w->Finish().code(), StatusCode::kFailedPrecondition);
  }
  EXPECT_FALSE(std::filesystem::exists(dir.File("a.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(dir.File("a.safetensors.tmp")));
}

TEST(Safetensors, HeaderLengthPastTheEndIsRejected) {
  test::TempDir dir;
  const std::string err = OpenError(WriteRaw(dir, "{}", 0, 5000));
  EXPECT_NE(err.find("header length 5000 runs past the end"), std::string::npos) << err;
  EXPECT_NE(err.find("t.safetensors"), std::string::npos) << err;
}

TEST(Safetensors, TooShortFileIsRejected) {
  test::TempDir dir;
  test::WriteBytes(dir.File("t.safetensors"), "abc", 3);
  EXPECT_NE(OpenError(dir.File("t.safetensors")).find("too short"), std::string::npos);
}

TEST(Safetensors, InvalidJsonIsRejected) {
  test::TempDir dir;
  EXPECT_NE(OpenError(WriteRaw(dir, "{\"x\": [", 0)).find("not valid JSON"), std::string::npos);
}

TEST(Safetensors, UnknownDtypeIsRejectedNamingTheTensor) {
  test::TempDir dir;
  const std::string err = OpenError(WriteRaw(dir, R"({"w":{"dtype":"F7","shape":[2],"data_offsets":[0,2]}})", 2));
  EXPECT_NE(err.find("tensor w: field dtype: unknown dtype \"F7\""), std::string::npos) << err;
}

TEST(Safetensors, ShapeThatDisagreesWithOffsetsIsRejected) {
  test::TempDir dir;
  const std::string err = OpenError(WriteRaw(dir, R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8));
  EXPECT_NE(err.find("tensor w: field shape"), std::string::npos) << err;
}

TEST(Safetensors, OffsetsPastTheEndAreReportedAsTruncated) {
  test::TempDir dir;
  const std::string err = OpenError(WriteRaw(dir, R"({"w":{"dtype":"U8","shape":[100],"data_offsets":[0,100]}})", 60));
  EXPECT_NE(err.find("field data_offsets: end 100 is past the end of the data (60 bytes"), std::string::npos) << err;
}

TEST(Safetensors, OverlappingTensorsAreRejected) {
  test::TempDir dir;
  const std::string err = OpenError(WriteRaw(
      dir,
      R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})",
      12));
  EXPECT_NE(err.find("overlap"), std::string::npos) << err;
}

TEST(Safetensors, MissingFieldIsRejected) {
  test::TempDir dir;
  const std::string err = OpenError(WriteRaw(dir, R"({"w":{"dtype":"U8","shape":[1]}})", 1));
  EXPECT_NE(err.find("tensor w: field data_offsets"), std::string::npos) << err;
}

TEST(Checkpoint, IndexPointsAtEachTensorsShard) {
  test::TempDir dir;
  auto layout = ScaledLayout(*Layout::Preset("deepseek-v4.1-flash"), 0.0001);
  ASSERT_TRUE(layout.ok());
  SynthOptions o;
  o.quiet = true;
  ASSERT_TRUE(WriteSynthCheckpoint(*layout, dir.path(), o).ok());
  auto c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->shards().size(), 3U);
  auto w = c->Find("layers.14.engram.embed.weight");
  ASSERT_TRUE(w.ok());
  EXPECT_NE(w->file.find("model-00002-of-00003"), std::string::npos);
  EXPECT_EQ(w->dtype, DType::kF8E4M3);
  EXPECT_EQ(w->shape, (std::vector<std::uint64_t>{static_cast<std::uint64_t>(layout->layer_rows(1)), 256}));
  auto s = c->Find("layers.1.engram.embed.scale");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->dtype, DType::kF8E8M0);
  EXPECT_EQ(c->Find("layers.2.engram.embed.weight").status().code(), StatusCode::kNotFound);
}

TEST(Checkpoint, IndexNamingAMissingShardIsAnError) {
  test::TempDir dir;
  const std::string index = R"({"weight_map": {"w": "nope.safetensors"}})";
  test::WriteBytes(dir.File("model.safetensors.index.json"), index.data(), index.size());
  auto c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("nope.safetensors"), std::string::npos) << c.status().ToString();
}

TEST(Checkpoint, IndexCannotPointOutsideTheDirectory) {
  test::TempDir dir;
  const std::string index = R"({"weight_map": {"w": "../../etc/passwd"}})";
  test::WriteBytes(dir.File("model.safetensors.index.json"), index.data(), index.size());
  auto c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("not a file name"), std::string::npos) << c.status().ToString();
}

TEST(Synth, RowsAreValidFp8AndDeterministic) {
  auto layout = ScaledLayout(*Layout::Preset("deepseek-v4.1-flash"), 0.0001);
  std::vector<std::byte> a(264);
  std::vector<std::byte> b(264);
  for (std::uint64_t r = 0; r < 2000; ++r) {
    SynthRow(*layout, 1, r, a);
    SynthRow(*layout, 1, r, b);
    ASSERT_EQ(a, b);
    for (int i = 0; i < 256; ++i) ASSERT_NE(static_cast<int>(a[static_cast<std::size_t>(i)]) & 0x7F, 0x7F);
    for (int i = 256; i < 264; ++i) {
      const int s = static_cast<int>(a[static_cast<std::size_t>(i)]);
      ASSERT_TRUE(s >= 119 && s <= 135) << s;
    }
  }
  SynthRow(*layout, 0, 5, a);
  SynthRow(*layout, 1, 5, b);
  EXPECT_NE(a, b);  // layers differ
}

TEST(Synth, ScaledLayoutKeepsTheAlgorithmAndShrinks) {
  auto base = Layout::Preset("deepseek-v4.1-flash");
  auto l = ScaledLayout(*base, 0.001);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->spec().base_sizes, (std::vector<std::int64_t>{16000, 16000, 16000}));
  EXPECT_EQ(l->layer(0).multipliers, base->layer(0).multipliers);
  EXPECT_NEAR(static_cast<double>(l->layer_rows(0)) / static_cast<double>(base->layer_rows(0)), 0.001, 0.0001);
  EXPECT_EQ(ScaledLayout(*base, 0).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace engram::store
