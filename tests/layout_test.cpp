#include "engram/layout.hpp"

#include <gtest/gtest.h>

#include <functional>

#include "test_util.hpp"

namespace engram {
namespace {

TEST(LayoutPreset, FlashMatchesReferenceTable) {
  auto l = Layout::Preset("deepseek-v4.1-flash");
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l->num_layers(), 2);
  EXPECT_EQ(l->max_ngram(), 4);
  EXPECT_EQ(l->heads(), 8);
  EXPECT_EQ(l->columns(), 24);
  EXPECT_EQ(l->compressed_vocab_size(), 99092);
  EXPECT_EQ(l->row_bytes(), 264U);
  EXPECT_EQ(l->layer(0).layer_id, 1);
  EXPECT_EQ(l->layer(1).layer_id, 14);
  EXPECT_EQ(l->layer_rows(0), 384006168);
  EXPECT_EQ(l->layer_rows(1), 384016682);
  // Offsets are prefix sums of the primes, order-major.
  EXPECT_EQ(l->region_offset(0, 0), 0);
  EXPECT_EQ(l->region_offset(0, 1), 16000057);
  EXPECT_EQ(l->region_offset(1, 23), 384016682 - 16000889);
}

TEST(LayoutPreset, DemoMatchesReferenceTable) {
  auto l = Layout::Preset("engram-demo");
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l->num_layers(), 2);
  EXPECT_EQ(l->max_ngram(), 3);
  EXPECT_EQ(l->columns(), 16);
  EXPECT_EQ(l->row_bytes(), 256U);
  EXPECT_EQ(l->layer(1).layer_id, 15);
  EXPECT_EQ(l->layer_rows(0), 10344164);
  EXPECT_EQ(l->layer_rows(1), 10348242);
}

TEST(LayoutPreset, UnknownNameIsNotFound) {
  auto l = Layout::Preset("deepseek-v9");
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), StatusCode::kNotFound);
  EXPECT_NE(l.status().message().find("deepseek-v9"), std::string::npos);
}

// The prime allocation and the numpy-compatible multiplier generator reproduce both presets exactly.
TEST(LayoutGenerate, ReproducesBothPresets) {
  for (auto name : Layout::PresetNames()) {
    auto preset = Layout::Preset(name);
    ASSERT_TRUE(preset.ok());
    const LayoutSpec& p = preset->spec();
    auto gen = GenerateLayoutSpec(GenerateOptionsFor(p));
    ASSERT_TRUE(gen.ok()) << gen.status().ToString();
    for (std::size_t i = 0; i < p.layers.size(); ++i) {
      EXPECT_EQ(gen->layers[i].primes, p.layers[i].primes) << name << " layer " << p.layers[i].layer_id;
      EXPECT_EQ(gen->layers[i].multipliers, p.layers[i].multipliers) << name << " layer " << p.layers[i].layer_id;
    }
    EXPECT_EQ(*gen, p);
  }
}

TEST(LayoutJson, RoundTripsBothPresets) {
  for (auto name : Layout::PresetNames()) {
    auto l = Layout::Preset(name);
    ASSERT_TRUE(l.ok());
    auto back = Layout::FromJson(l->ToJson(), "round-trip");
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, *l);
  }
}

TEST(LayoutJson, LoadsFromFileAndResolvesPresetNames) {
  test::TempDir dir;
  auto l = Layout::Preset("engram-demo");
  const std::string json = l->ToJson();
  test::WriteBytes(dir.File("demo.json"), json.data(), json.size());
  auto from_file = Layout::Resolve(dir.File("demo.json"));
  ASSERT_TRUE(from_file.ok()) << from_file.status().ToString();
  EXPECT_EQ(*from_file, *l);
  auto from_name = Layout::Resolve("engram-demo");
  ASSERT_TRUE(from_name.ok());
  EXPECT_EQ(*from_name, *l);
  auto missing = Layout::Resolve(dir.File("nope.json"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

// A layout JSON with one edit applied by `edit`, parsed; returns the error message ("" if it parsed).
std::string ParseEdited(const std::function<void(std::string&)>& edit) {
  std::string json = Layout::Preset("deepseek-v4.1-flash")->ToJson();
  edit(json);
  auto l = Layout::FromJson(json, "edited.json");
  return l.ok() ? "" : l.status().ToString();
}

void Replace(std::string& s, const std::string& from, const std::string& to) {
  const auto pos = s.find(from);
  ASSERT_NE(pos, std::string::npos) << from;
  s.replace(pos, from.size(), to);
}

TEST(LayoutValidation, CompositePrimeIsRejectedNamingTheField) {
  // 16000081 -> 16000083 = 3 x 5333361 is composite.
  const std::string err = ParseEdited([](std::string& s) { Replace(s, "16000081", "16000083"); });
  EXPECT_NE(err.find("invalid_argument"), std::string::npos) << err;
  EXPECT_NE(err.find("layers[0].primes[n=2][h=2]"), std::string::npos) << err;
  EXPECT_NE(err.find("16000083 is not prime"), std::string::npos) << err;
  EXPECT_NE(err.find("edited.json"), std::string::npos) << err;
}

TEST(LayoutValidation, RepeatedPrimeIsRejected) {
  const std::string err = ParseEdited([](std::string& s) { Replace(s, "16000477", "16000057"); });
  EXPECT_NE(err.find("layers[1].primes[n=2][h=0]"), std::string::npos) << err;
  EXPECT_NE(err.find("distinct"), std::string::npos) << err;
}

TEST(LayoutValidation, EvenMultiplierIsRejected) {
  const std::string err = ParseEdited([](std::string& s) { Replace(s, "76632096046245", "76632096046246"); });
  EXPECT_NE(err.find("layers[0].multipliers[0]"), std::string::npos) << err;
  EXPECT_NE(err.find("odd"), std::string::npos) << err;
}

TEST(LayoutValidation, MultiplierAtOrAboveInt64MaxOverVocabIsRejected) {
  // INT64_MAX / 99092 = 93078876567783 (odd): at the bound, products of ids and multipliers could overflow.
  const std::string err = ParseEdited([](std::string& s) { Replace(s, "76632096046245", "93078876567783"); });
  EXPECT_NE(err.find("INT64_MAX / V'"), std::string::npos) << err;
}

TEST(LayoutValidation, RowsThatDoNotMatchThePrimeSumAreRejected) {
  const std::string err = ParseEdited([](std::string& s) { Replace(s, "\"rows\": 384006168", "\"rows\": 384006169"); });
  EXPECT_NE(err.find("layers[0].rows"), std::string::npos) << err;
  EXPECT_NE(err.find("sum of its primes"), std::string::npos) << err;
}

TEST(LayoutValidation, OffsetThatDoesNotMatchIsRejected) {
  // The first offset of n=2 h1 in layer 0 is 16000057.
  const std::string err =
      ParseEdited([](std::string& s) { Replace(s, "16000057,\n          32000136", "16000057,\n          32000137"); });
  EXPECT_NE(err.find("offsets"), std::string::npos) << err;
}

TEST(LayoutValidation, UnknownFieldIsRejected) {
  const std::string err = ParseEdited([](std::string& s) { Replace(s, "\"heads\"", "\"haeds\": 8, \"heads\""); });
  EXPECT_NE(err.find("field haeds: unknown field"), std::string::npos) << err;
}

TEST(LayoutValidation, WrongNumberOfHeadPrimesIsRejected) {
  const std::string err = ParseEdited([](std::string& s) { Replace(s, "\"heads\": 8", "\"heads\": 7"); });
  EXPECT_NE(err.find("primes[n=2]: 8 heads, expected 7"), std::string::npos) << err;
}

TEST(LayoutValidation, RowBytesMustMatchFormat) {
  const std::string err = ParseEdited([](std::string& s) { Replace(s, "\"bytes\": 264", "\"bytes\": 256"); });
  EXPECT_NE(err.find("row.bytes"), std::string::npos) << err;
}

TEST(LayoutValidation, MalformedJsonNamesTheSource) {
  auto l = Layout::FromJson("{\"format\": ", "broken.json");
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("broken.json"), std::string::npos);
  EXPECT_NE(l.status().message().find("not valid JSON"), std::string::npos);
}

TEST(LayoutValidation, Fp8RowDimMustBeAMultipleOf32) {
  auto spec = Layout::Preset("deepseek-v4.1-flash")->spec();
  spec.row_dim = 100;
  auto l = Layout::Create(spec);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("multiple of 32"), std::string::npos);
}

TEST(Primality, AgreesWithTrialDivisionAndKnownLargePrimes) {
  for (std::uint64_t n = 0; n < 20000; ++n) {
    bool trial = n >= 2;
    for (std::uint64_t d = 2; d * d <= n; ++d) {
      if (n % d == 0) {
        trial = false;
        break;
      }
    }
    ASSERT_EQ(IsPrime(n), trial) << n;
  }
  EXPECT_TRUE(IsPrime(18446744073709551557ULL));  // largest 64-bit prime
  EXPECT_FALSE(IsPrime(18446744073709551555ULL));
  EXPECT_FALSE(IsPrime(3215031751ULL));  // strong pseudoprime to bases 2, 3, 5, 7
  EXPECT_TRUE(IsPrime(16000057));
}

}  // namespace
}  // namespace engram
