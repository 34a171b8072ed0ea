// The numpy reproduction, checked against values numpy 1.24 prints (recorded here) and, through
// LayoutGenerate.ReproducesBothPresets, against the reference multipliers.
#include "../addressing/numpy_random.hpp"

#include <gtest/gtest.h>

namespace engram::detail {
namespace {

TEST(NumpyRandom, SeedSequenceMatchesNumpy) {
  // numpy.random.SeedSequence(12345).generate_state(8)
  const std::vector<std::uint32_t> expected = {2688385916U, 3048105090U, 4196366895U, 3152189807U,
                                               924159892U,  1692637855U, 2685664627U, 1052446614U};
  EXPECT_EQ(SeedSequenceGenerateState32(12345, 8), expected);
}

TEST(NumpyRandom, Pcg64RawStreamMatchesNumpy) {
  // numpy.random.PCG64(12345).random_raw(2)
  Pcg64 rng(12345);
  EXPECT_EQ(rng.NextU64(), 4193609425186963869ULL);
  EXPECT_EQ(rng.NextU64(), 5843160025838961886ULL);
}

TEST(NumpyRandom, DefaultRngRandomMatchesNumpyDocs) {
  // numpy's documentation: default_rng(12345).random() == 0.22733602246716966
  Pcg64 rng(12345);
  const double r = static_cast<double>(rng.NextU64() >> 11) * (1.0 / 9007199254740992.0);
  EXPECT_EQ(r, 0.22733602246716966);
}

TEST(NumpyRandom, IntegersMatchReferenceMultipliers) {
  // default_rng(10007).integers(0, (INT64_MAX // 99092) // 2, size=4) * 2 + 1 (V4.1 layer 1)
  auto v = NumpyIntegers(10007, 0, (INT64_MAX / 99092) / 2, 4);
  ASSERT_TRUE(v.ok());
  const std::vector<std::int64_t> expected = {76632096046245, 4839876093313, 35959672319349, 73987337458391};
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ((*v)[i] * 2 + 1, expected[i]);
}

TEST(NumpyRandom, SmallRangesAreRefusedNotGuessed) {
  auto v = NumpyIntegers(0, 0, 1000, 4);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace engram::detail
