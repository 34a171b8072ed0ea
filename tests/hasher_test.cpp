#include "engram/hasher.hpp"

#include <gtest/gtest.h>

#include <random>

#include "test_util.hpp"

namespace engram {
namespace {

// ../shared/reference/engram-addressing.md: V4.1 layout, compressed ids [0, 3, 17, 99091, 5, 5, 2, 42].
const std::vector<std::int32_t> kVectorIds = {0, 3, 17, 99091, 5, 5, 2, 42};

const std::vector<std::vector<std::int64_t>> kLayer1 = {
    {5702652,   24393184,  39183301,  61503783,  78984481,  90144770,  103724983, 121476532,
     131476717, 152385926, 164143652, 191599181, 198145581, 217419202, 238329687, 247482304,
     257520185, 283540304, 288689443, 315264704, 322314652, 348890037, 367865216, 380066193},
    {13136173,  17031479,  36294826,  62401242,  69561560,  82615312,  105142365, 122730833,
     143666100, 156931932, 165213353, 180168542, 197858374, 222703855, 235972003, 240958518,
     270063682, 283921719, 297024305, 319576009, 329277020, 351828750, 355986352, 378790237},
    {11893233,  24906283,  36271404,  63193552,  71581548,  85045614,  107778028, 119944892,
     138046840, 144354349, 167090083, 181822332, 206249197, 210464723, 232791091, 248380556,
     269065729, 276273278, 292050166, 315939507, 326532456, 350422363, 363062610, 373441560},
    {379248,    18191193,  40143441,  48303286,  65018668,  94184119,  102190568, 114357284,
     135352691, 159295137, 163670291, 186914119, 196893325, 214696576, 233418049, 255933943,
     260824021, 282978357, 294813799, 319935283, 321868972, 350549758, 357781632, 368768679},
    {12391924,  30601786,  32347082,  62848667,  70397898,  94727027,  98981383,  125214817,
     137477310, 158283928, 170183372, 186738561, 199160461, 222179456, 233717225, 248862157,
     264832234, 272989281, 299389025, 312790815, 327133592, 340759732, 360849393, 373449864},
    {14638292,  27019566,  45599838,  50241701,  65205912,  91527853,  96688831,  113204507,
     136540192, 153123054, 161588468, 181362365, 205563789, 223676777, 226360987, 248906115,
     265895233, 279528716, 299302675, 318693415, 332177451, 337238410, 365901006, 379892322},
    {15047888,  17085985,  43453248,  62390604,  74797213,  84266299,  105001007, 124184762,
     141629253, 159856563, 174573909, 185104689, 193408460, 221560893, 239789289, 243300185,
     264307345, 282480301, 299372212, 318911184, 327749187, 350724625, 357445434, 378280586},
    {5873501,   24050256,  38794266,  60749492,  77694306,  88679167,  102172266, 118868640,
     135274102, 153614860, 173691935, 184523617, 193019396, 221273305, 239660755, 253967915,
     269232360, 276272115, 298862940, 318159815, 325691400, 344989681, 360562228, 374708313}};

const std::vector<std::vector<std::int64_t>> kLayer14 = {
    {14361964,  29977809,  32716444,  61209771,  67456205,  84275051,  108494439, 120604547,
     132225184, 150270452, 174805952, 178895254, 193207923, 211610196, 226280582, 252505246,
     261362261, 279862797, 301364059, 312864848, 328367036, 349372619, 363873742, 372375971},
    {7976312,   25015455,  32662253,  59094253,  72310297,  85156133,  108102275, 119576138,
     131069797, 145343601, 172623612, 185170695, 205084594, 221545257, 227646200, 251014423,
     260231155, 280143022, 290296486, 312934632, 326604373, 350427914, 363307643, 379703671},
    {2482854,   24703628,  44969718,  53147761,  65237280,  84640229,  97472792,  127894937,
     136842538, 150890911, 175468558, 187565751, 205906169, 220346377, 239087134, 245336083,
     270602670, 284958579, 296126288, 316913802, 334467789, 347200978, 364798532, 372782447},
    {4638160,   20030499,  39019663,  50538662,  65556331,  93556986,  111429532, 113837035,
     141785100, 151880741, 161375721, 187227567, 204309497, 216222696, 231146027, 251936437,
     267802520, 281751623, 293673916, 306499821, 332335615, 346416256, 362524202, 382205086},
    {743092,    18408009,  41668928,  49698968,  70671423,  85309510,  103753309, 124352426,
     133323207, 152679242, 173382312, 184399208, 195980780, 215496953, 228729201, 251781413,
     266429253, 282299026, 294684430, 311528168, 326899755, 345678006, 366904100, 379421666},
    {11585611,  22007358,  47314396,  58852591,  72622042,  86050515,  97984073,  119953459,
     134595677, 154342485, 174761863, 184838893, 207123331, 215237575, 229992046, 255697482,
     259633986, 286368773, 289409347, 312720400, 325558934, 342452130, 353189145, 376307932},
    {3140233,   31451839,  39825167,  56074489,  64199182,  86131206,  111255738, 123818634,
     138373691, 150312396, 165571600, 189449078, 193016808, 220462138, 239536713, 251228551,
     262701509, 273306359, 290546504, 304058160, 330629594, 350690352, 357790793, 381129279},
    {10351927,  26447585,  32964973,  58645713,  71486631,  94561553,  98192980,  124020605,
     128576969, 148781568, 167234830, 191645967, 205084820, 210941106, 226052259, 247094829,
     268559792, 280925985, 302994997, 312454699, 331147418, 339943139, 359100462, 374884242}};

std::vector<std::int64_t> Flatten(const std::vector<std::vector<std::int64_t>>& v) {
  std::vector<std::int64_t> out;
  for (const auto& r : v) out.insert(out.end(), r.begin(), r.end());
  return out;
}

TEST(HasherVectors, FlashLayer1MatchesReference) {
  auto layout = Layout::Preset("deepseek-v4.1-flash");
  auto h = LayerHasher::Create(*layout, 0);
  ASSERT_TRUE(h.ok());
  std::vector<std::int64_t> rows(kVectorIds.size() * 24);
  ASSERT_TRUE(h->HashWindow(FreshWindow(*layout, kVectorIds), rows).ok());
  EXPECT_EQ(rows, Flatten(kLayer1));
}

TEST(HasherVectors, FlashLayer14MatchesReference) {
  auto layout = Layout::Preset("deepseek-v4.1-flash");
  auto h = LayerHasher::Create(*layout, 1);
  ASSERT_TRUE(h.ok());
  std::vector<std::int64_t> rows(kVectorIds.size() * 24);
  ASSERT_TRUE(h->HashWindow(FreshWindow(*layout, kVectorIds), rows).ok());
  EXPECT_EQ(rows, Flatten(kLayer14));
}

TEST(HasherVectors, LiteralReferenceMatchesTheVectorsToo) {
  // The test oracle itself is checked against the published vectors before it checks anything else.
  auto layout = Layout::Preset("deepseek-v4.1-flash");
  EXPECT_EQ(test::ReferenceRows(*layout, 0, kVectorIds), Flatten(kLayer1));
  EXPECT_EQ(test::ReferenceRows(*layout, 1, kVectorIds), Flatten(kLayer14));
}

TEST(HasherVectors, AllLayersAtOnceAreLayerMajor) {
  auto layout = Layout::Preset("deepseek-v4.1-flash");
  auto h = Hasher::Create(*layout);
  std::vector<std::int64_t> rows(2 * kVectorIds.size() * 24);
  ASSERT_TRUE(h->HashWindow(FreshWindow(*layout, kVectorIds), rows).ok());
  std::vector<std::int64_t> expected = Flatten(kLayer1);
  const auto l14 = Flatten(kLayer14);
  expected.insert(expected.end(), l14.begin(), l14.end());
  EXPECT_EQ(rows, expected);
}

// The reciprocal modulo against 128-bit arithmetic, for every region of both presets and primes near
// the 2^62 limit, on edge values and random 64-bit mixes.
TEST(FastModulo, ExactForEdgeAndRandomValues) {
  std::vector<std::uint64_t> primes = {2, 3, 5, 4611686018427387847ULL /* largest prime < 2^62 */, 4294967291ULL};
  for (auto name : Layout::PresetNames()) {
    const Layout layout = *Layout::Preset(name);
    for (const auto& l : layout.spec().layers) {
      for (auto p : l.primes) primes.push_back(static_cast<std::uint64_t>(p));
    }
  }
  std::mt19937_64 rng(42);
  for (std::uint64_t p : primes) {
    const detail::RegionHash r = detail::MakeRegionHash(p, 1000);
    std::vector<std::uint64_t> mixes = {0, 1, ~0ULL, 1ULL << 63, (1ULL << 63) - 1, p, p - 1, p + 1, 0 - p, 0 - p - 1};
    for (int i = 0; i < 20000; ++i) mixes.push_back(rng());
    for (std::uint64_t mix : mixes) {
      const auto m = static_cast<std::int64_t>(mix);
      const auto pp = static_cast<detail::Int128>(p);
      detail::Int128 expect = static_cast<detail::Int128>(m) % pp;
      if (expect < 0) expect += pp;
      ASSERT_EQ(detail::RegionRow(mix, r), 1000 + static_cast<std::int64_t>(expect)) << "p=" << p << " mix=" << m;
    }
  }
}

class RealTrace : public ::testing::TestWithParam<const char*> {};

// Every row of the whole Brown trace, both layers, against the literal reference, one sequence.
TEST_P(RealTrace, FastHasherMatchesLiteralReference) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto layout = Layout::Preset(GetParam());
  const auto& ids = test::BrownCompressed();
  ASSERT_EQ(ids.size(), 1262161U);
  for (int li = 0; li < layout->num_layers(); ++li) {
    auto h = LayerHasher::Create(*layout, li);
    std::vector<std::int64_t> rows(ids.size() * static_cast<std::size_t>(layout->columns()));
    ASSERT_TRUE(HashFreshSequences(*h, ids, 0, rows).ok());
    const auto expected = test::ReferenceRows(*layout, li, ids);
    ASSERT_EQ(rows, expected) << "layer " << layout->layer(li).layer_id;
  }
}

// Cut into sequences: each restarts with pad history, exactly as hashing each piece alone.
TEST_P(RealTrace, SequenceCutsRestartWithPadHistory) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto layout = Layout::Preset(GetParam());
  const auto& all = test::BrownCompressed();
  const std::vector<std::int32_t> ids(all.begin(), all.begin() + 100003);
  const std::size_t seq_len = 1000;
  const auto cols = static_cast<std::size_t>(layout->columns());
  auto h = LayerHasher::Create(*layout, 0);
  std::vector<std::int64_t> rows(ids.size() * cols);
  ASSERT_TRUE(HashFreshSequences(*h, ids, seq_len, rows).ok());
  for (std::size_t s = 0; s < ids.size(); s += seq_len) {
    const std::size_t len = std::min(seq_len, ids.size() - s);
    const std::vector<std::int32_t> piece(ids.begin() + static_cast<std::ptrdiff_t>(s),
                                          ids.begin() + static_cast<std::ptrdiff_t>(s + len));
    const auto expected = test::ReferenceRows(*layout, 0, piece);
    ASSERT_TRUE(std::equal(expected.begin(), expected.end(), rows.begin() + static_cast<std::ptrdiff_t>(s * cols)))
        << "sequence starting at " << s;
  }
}

// DEAD marks (sticky walking back, DEAD token reads all pad) against the literal reference.
TEST_P(RealTrace, DeadPositionsFollowTheStickyBlockRule) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  auto layout = Layout::Preset(GetParam());
  const auto& all = test::BrownCompressed();
  const std::vector<std::int32_t> ids(all.begin(), all.begin() + 50000);
  std::vector<std::uint8_t> dead(ids.size(), 0);
  std::mt19937 rng(7);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    // Isolated DEAD tokens and runs of them (image-like blocks).
    if (rng() % 50 == 0) {
      const std::size_t run = 1 + rng() % 6;
      for (std::size_t j = i; j < std::min(ids.size(), i + run); ++j) dead[j] = 1;
    }
  }
  std::vector<std::int32_t> window = FreshWindow(*layout, ids);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (dead[i] != 0) window[static_cast<std::size_t>(layout->max_ngram() - 1) + i] = kDeadId;
  }
  for (int li = 0; li < layout->num_layers(); ++li) {
    auto h = LayerHasher::Create(*layout, li);
    std::vector<std::int64_t> rows(ids.size() * static_cast<std::size_t>(layout->columns()));
    ASSERT_TRUE(h->HashWindow(window, rows).ok());
    ASSERT_EQ(rows, test::ReferenceRows(*layout, li, ids, dead));
  }
}

INSTANTIATE_TEST_SUITE_P(BothPresets, RealTrace, ::testing::Values("deepseek-v4.1-flash", "engram-demo"),
                         [](const auto& pinfo) {
                           return std::string(pinfo.param) == "engram-demo" ? "Demo" : "Flash";
                         });

TEST(Hasher, WrongOutputSizeIsAnError) {
  auto layout = Layout::Preset("engram-demo");
  auto h = LayerHasher::Create(*layout, 0);
  std::vector<std::int64_t> rows(5);
  Status s = h->HashWindow(FreshWindow(*layout, kVectorIds), rows);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
}

TEST(Hasher, LayerIndexOutOfRangeIsAnError) {
  auto h = LayerHasher::Create(*Layout::Preset("engram-demo"), 2);
  EXPECT_EQ(h.status().code(), StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace engram
