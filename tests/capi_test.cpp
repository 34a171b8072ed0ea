// The C API (include/engram/engram.h) through libengram.so, on a real store (synthetic V4.1
// checkpoint, real RocksDB, real io_uring), driven by the real trace and checked against the literal hash
// and the rows the store holds. CPU backend here; the GPU backend in tests/gpu/capi_gpu_test.cpp.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engram/engram.h"
#include "store_util.hpp"

extern "C" long long engram_c_test_one_step(const char* dir, const int32_t* tokens, size_t n);

namespace engram {
namespace {

constexpr double kScale = 0.0001;

// A store on disk (closed: RocksDB allows one opener), its directory and layout.
struct DiskStore {
  std::unique_ptr<test::IngestedStore> f;
  std::string dir;
  Layout layout;
};

DiskStore MakeDiskStore() {
  auto f = test::MakeIngestedStore("deepseek-v4.1-flash", kScale);
  Layout layout = f->store->layout();
  f->version = {};
  f->store.reset();
  std::string dir = f->dir.File("store");
  return {std::move(f), std::move(dir), std::move(layout)};
}

// Opens the store and a CPU runtime over it (every field of the options at its default but the backend).
struct Runtime {
  engram_store* store = nullptr;
  engram_runtime* rt = nullptr;
  ~Runtime() {
    engram_runtime_destroy(rt);
    engram_store_close(store);
  }
};

void OpenCpu(const DiskStore& d, Runtime& r, engram_resident resident = ENGRAM_RESIDENT_NONE) {
  ASSERT_EQ(engram_store_open(d.dir.c_str(), nullptr, &r.store), ENGRAM_OK) << engram_last_error();
  engram_runtime_options o;
  engram_runtime_options_init(&o);
  o.backend = ENGRAM_BACKEND_CPU;
  o.resident = resident;
  ASSERT_EQ(engram_runtime_create(r.store, &o, &r.rt), ENGRAM_OK) << engram_last_error();
  ASSERT_EQ(engram_runtime_backend(r.rt), ENGRAM_BACKEND_CPU);
}

std::vector<std::int32_t> Trace(std::size_t from, std::size_t len) {
  const auto& all = test::BrownCompressed();
  return {all.begin() + static_cast<std::ptrdiff_t>(from), all.begin() + static_cast<std::ptrdiff_t>(from + len)};
}

// The expected rows of the last `len` tokens of `history` for one layer (DEAD positions zero).
std::vector<std::byte> Expected(const Layout& layout, int li, const std::vector<std::int32_t>& history, std::size_t len,
                                const std::vector<std::uint8_t>& dead = {}) {
  auto bytes = test::ExpectedRows(layout, li, test::ReferenceRows(layout, li, history, dead));
  const std::size_t per_token = static_cast<std::size_t>(layout.columns()) * layout.row_bytes();
  for (std::size_t t = 0; t < dead.size(); ++t) {
    if (dead[t] != 0) std::memset(bytes.data() + t * per_token, 0, per_token);
  }
  bytes.erase(bytes.begin(), bytes.end() - static_cast<std::ptrdiff_t>(len * per_token));
  return bytes;
}

// A store on disk and a CPU runtime over it, for the tests that need nothing else.
class CApiCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
    OpenCpu(d, r);
  }
  DiskStore d = MakeDiskStore();
  Runtime r;  // destroyed before the store's directory
};

TEST(CApi, StatusNamesAndVersionAreStable) {
  EXPECT_EQ(engram_api_version(), static_cast<std::uint32_t>(ENGRAM_C_API_VERSION));
  EXPECT_STREQ(engram_status_name(ENGRAM_OK), "ok");
  EXPECT_STREQ(engram_status_name(ENGRAM_CORRUPTION), "corruption");
  EXPECT_STRNE(engram_version_string(), "");
}

TEST(CApi, OpeningAMissingStoreNamesTheDirectory) {
  test::TempDir tmp;
  const std::string dir = tmp.File("no-store-here");
  engram_store* s = reinterpret_cast<engram_store*>(0x1);
  const engram_status st = engram_store_open(dir.c_str(), nullptr, &s);
  EXPECT_NE(st, ENGRAM_OK);
  EXPECT_EQ(s, nullptr);
  EXPECT_NE(std::string(engram_last_error()).find("no-store-here"), std::string::npos) << engram_last_error();
}

TEST(CApi, StoreInfoDescribesTheLayout) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const DiskStore d = MakeDiskStore();
  engram_store* s = nullptr;
  ASSERT_EQ(engram_store_open(d.dir.c_str(), nullptr, &s), ENGRAM_OK) << engram_last_error();
  engram_store_info info;
  info.struct_size = sizeof(info);
  ASSERT_EQ(engram_store_get_info(s, &info), ENGRAM_OK) << engram_last_error();
  EXPECT_EQ(info.num_layers, d.layout.num_layers());
  EXPECT_EQ(info.columns, d.layout.columns());
  EXPECT_EQ(info.row_bytes, d.layout.row_bytes());
  EXPECT_EQ(info.max_ngram, d.layout.max_ngram());
  EXPECT_EQ(info.row_format, ENGRAM_ROW_FP8_E4M3_E8M0);
  EXPECT_EQ(info.compressed_vocab_size, d.layout.compressed_vocab_size());
  EXPECT_EQ(info.latest_version, 1U);
  std::int32_t id = -1;
  ASSERT_EQ(engram_store_layer_id(s, 1, &id), ENGRAM_OK);
  EXPECT_EQ(id, d.layout.layer(1).layer_id);
  EXPECT_EQ(engram_store_layer_id(s, 2, &id), ENGRAM_OUT_OF_RANGE);
  EXPECT_NE(std::string(engram_last_error()).find("layer index 2"), std::string::npos) << engram_last_error();
  engram_store_close(s);
}

TEST_F(CApiCpu, PrefillAndDecodeStepsMatchTheReference) {
  const auto toks = Trace(2000, 40);
  std::uint64_t seq = 0;
  ASSERT_EQ(engram_sequence_create(r.rt, &seq), ENGRAM_OK) << engram_last_error();
  // A prefill of 32 tokens, then 8 decode steps.
  for (std::size_t begin = 0; begin < toks.size();) {
    const std::size_t len = begin == 0 ? 32 : 1;
    engram_sequence_input in{seq, toks.data() + begin, len, nullptr};
    std::uint64_t step = 0;
    ASSERT_EQ(engram_step_submit(r.rt, &in, 1, &step), ENGRAM_OK) << engram_last_error();
    const std::vector<std::int32_t> history(toks.begin(), toks.begin() + static_cast<std::ptrdiff_t>(begin + len));
    for (int l = 0; l < d.layout.num_layers(); ++l) {
      ASSERT_EQ(engram_step_wait(r.rt, step, l), ENGRAM_OK) << engram_last_error();
      engram_layer_output out;
      out.struct_size = sizeof(out);
      ASSERT_EQ(engram_step_output(r.rt, step, l, &out), ENGRAM_OK) << engram_last_error();
      EXPECT_EQ(out.memory, ENGRAM_MEMORY_HOST);
      EXPECT_EQ(out.tokens, static_cast<std::int64_t>(len));
      EXPECT_NE(out.bf16, nullptr);  // FP8 rows, bf16_output on by default
      const auto expect = Expected(d.layout, l, history, len);
      ASSERT_EQ(std::memcmp(out.rows, expect.data(), expect.size()), 0) << "token " << begin << " layer " << l;
    }
    ASSERT_EQ(engram_step_finish(r.rt, step), ENGRAM_OK) << engram_last_error();
    begin += len;
  }
}

TEST(CApi, DeadMarksRollbackAndForkFollowTheSequence) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const DiskStore d = MakeDiskStore();
  Runtime r;
  OpenCpu(d, r, ENGRAM_RESIDENT_ALL);
  const auto toks = Trace(5000, 12);
  std::uint64_t a = 0;
  ASSERT_EQ(engram_sequence_create(r.rt, &a), ENGRAM_OK);
  // 10 tokens with position 4 DEAD, roll back 3, fork, then one more token on the fork.
  std::vector<std::uint8_t> dead(10, 0);
  dead[4] = 1;
  engram_sequence_input in{a, toks.data(), 10, dead.data()};
  std::uint64_t step = 0;
  ASSERT_EQ(engram_step_submit(r.rt, &in, 1, &step), ENGRAM_OK) << engram_last_error();
  ASSERT_EQ(engram_step_wait(r.rt, step, 0), ENGRAM_OK);
  engram_layer_output out;
  out.struct_size = sizeof(out);
  ASSERT_EQ(engram_step_output(r.rt, step, 0, &out), ENGRAM_OK);
  const std::vector<std::int32_t> first(toks.begin(), toks.begin() + 10);
  auto expect = Expected(d.layout, 0, first, 10, dead);
  EXPECT_EQ(std::memcmp(out.rows, expect.data(), expect.size()), 0);
  ASSERT_EQ(engram_step_finish(r.rt, step), ENGRAM_OK);

  ASSERT_EQ(engram_sequence_rollback(r.rt, a, 3), ENGRAM_OK) << engram_last_error();
  std::uint64_t b = 0;
  ASSERT_EQ(engram_sequence_fork(r.rt, a, &b), ENGRAM_OK) << engram_last_error();
  const std::int32_t next = toks[11];
  engram_sequence_input in2{b, &next, 1, nullptr};
  ASSERT_EQ(engram_step_submit(r.rt, &in2, 1, &step), ENGRAM_OK) << engram_last_error();
  ASSERT_EQ(engram_step_wait(r.rt, step, 1), ENGRAM_OK);
  ASSERT_EQ(engram_step_output(r.rt, step, 1, &out), ENGRAM_OK);
  std::vector<std::int32_t> hist(toks.begin(), toks.begin() + 7);
  hist.push_back(next);
  std::vector<std::uint8_t> hdead(8, 0);
  hdead[4] = 1;
  expect = Expected(d.layout, 1, hist, 1, hdead);
  EXPECT_EQ(std::memcmp(out.rows, expect.data(), expect.size()), 0);
  ASSERT_EQ(engram_step_finish(r.rt, step), ENGRAM_OK);
  ASSERT_EQ(engram_sequence_release(r.rt, a), ENGRAM_OK);
  ASSERT_EQ(engram_sequence_release(r.rt, b), ENGRAM_OK);
}

TEST_F(CApiCpu, ABadBatchIsRefusedNamingTheSequenceAndAppendsNothing) {
  std::uint64_t a = 0;
  ASSERT_EQ(engram_sequence_create(r.rt, &a), ENGRAM_OK);
  const auto toks = Trace(100, 4);
  engram_sequence_input in[2] = {{a, toks.data(), 4, nullptr}, {a + 1000, toks.data(), 4, nullptr}};
  std::uint64_t step = 0;
  EXPECT_EQ(engram_step_submit(r.rt, in, 2, &step), ENGRAM_NOT_FOUND);
  EXPECT_NE(std::string(engram_last_error()).find(std::to_string(a + 1000)), std::string::npos) << engram_last_error();
  // Nothing was appended to `a`: rolling back one token is past its start.
  EXPECT_EQ(engram_sequence_rollback(r.rt, a, 1), ENGRAM_OUT_OF_RANGE);
  // An id outside V'.
  const std::int32_t bad = static_cast<std::int32_t>(d.layout.compressed_vocab_size());
  engram_sequence_input in2{a, &bad, 1, nullptr};
  EXPECT_EQ(engram_step_submit(r.rt, &in2, 1, &step), ENGRAM_OUT_OF_RANGE);
  EXPECT_NE(std::string(engram_last_error()).find(std::to_string(bad)), std::string::npos) << engram_last_error();
}

TEST_F(CApiCpu, NullPointersAndUnsetStructSizesAreErrorsNotCrashes) {
  std::uint64_t id = 0;
  EXPECT_EQ(engram_sequence_create(nullptr, &id), ENGRAM_INVALID_ARGUMENT);
  EXPECT_EQ(engram_sequence_create(r.rt, nullptr), ENGRAM_INVALID_ARGUMENT);
  EXPECT_NE(std::string(engram_last_error()).find("out: NULL"), std::string::npos) << engram_last_error();
  engram_runtime_options o;
  std::memset(&o, 0, sizeof(o));  // struct_size 0: never initialised
  engram_runtime* rt2 = nullptr;
  EXPECT_EQ(engram_runtime_create(r.store, &o, &rt2), ENGRAM_INVALID_ARGUMENT);
  EXPECT_NE(std::string(engram_last_error()).find("struct_size"), std::string::npos) << engram_last_error();
  EXPECT_EQ(rt2, nullptr);
  engram_layer_output out;
  std::memset(&out, 0, sizeof(out));
  EXPECT_EQ(engram_step_output(r.rt, 1, 0, &out), ENGRAM_NOT_FOUND);  // no step 1 yet
  engram_sequence_input in{id, nullptr, 3, nullptr};
  std::uint64_t step = 0;
  EXPECT_EQ(engram_step_submit(r.rt, &in, 1, &step), ENGRAM_INVALID_ARGUMENT);
}

TEST(CApi, AnOlderShorterOptionsStructGetsDefaultsForTheRest) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const DiskStore d = MakeDiskStore();
  engram_store* s = nullptr;
  ASSERT_EQ(engram_store_open(d.dir.c_str(), nullptr, &s), ENGRAM_OK);
  // A caller that only knew the fields up to `version` (backend CPU, latest version).
  engram_runtime_options o;
  std::memset(&o, 0xFF, sizeof(o));
  o.struct_size = static_cast<std::uint32_t>(offsetof(engram_runtime_options, resident));
  o.backend = ENGRAM_BACKEND_CPU;
  o.version = 0;
  engram_runtime* rt = nullptr;
  ASSERT_EQ(engram_runtime_create(s, &o, &rt), ENGRAM_OK) << engram_last_error();
  EXPECT_EQ(engram_runtime_backend(rt), ENGRAM_BACKEND_CPU);
  engram_runtime_destroy(rt);
  engram_store_close(s);
}

TEST_F(CApiCpu, StreamWaitsOnTheCpuBackendAreRefused) {
  EXPECT_EQ(engram_step_wait_stream(r.rt, 1, 0, nullptr), ENGRAM_FAILED_PRECONDITION);
  EXPECT_NE(std::string(engram_last_error()).find("GPU"), std::string::npos) << engram_last_error();
  EXPECT_EQ(engram_step_done_stream(r.rt, 1, 0, nullptr), ENGRAM_FAILED_PRECONDITION);
  EXPECT_EQ(engram_step_wait(r.rt, 1, 7), ENGRAM_OUT_OF_RANGE);
}

TEST_F(CApiCpu, SlotCallsAndDeviceIdsOnTheCpuBackendAreRefusedByName) {
  std::uint32_t slot = 0;
  EXPECT_EQ(engram_step_slot(r.rt, 1, &slot), ENGRAM_FAILED_PRECONDITION);
  EXPECT_NE(std::string(engram_last_error()).find("engram_step_slot needs the GPU backend"), std::string::npos)
      << engram_last_error();
  EXPECT_EQ(engram_slot_wait_stream(r.rt, 0, 0, nullptr), ENGRAM_FAILED_PRECONDITION);
  EXPECT_EQ(engram_slot_done_stream(r.rt, 0, 0, nullptr), ENGRAM_FAILED_PRECONDITION);
  engram_layer_output out;
  out.struct_size = sizeof(out);
  EXPECT_EQ(engram_slot_output(r.rt, 0, 0, &out), ENGRAM_FAILED_PRECONDITION);
  std::uint64_t step = 0;
  const engram_device_sequence_input in = {1, 1, nullptr};
  EXPECT_EQ(engram_step_submit_device_ids(r.rt, &in, 1, nullptr, ENGRAM_IDS_COMPRESSED, nullptr, &step),
            ENGRAM_FAILED_PRECONDITION);
  EXPECT_NE(std::string(engram_last_error()).find("engram_step_submit_device_ids"), std::string::npos)
      << engram_last_error();
}

TEST_F(CApiCpu, StatisticsComeAsJsonAndPrometheusText) {
  std::uint64_t a = 0, step = 0;
  ASSERT_EQ(engram_sequence_create(r.rt, &a), ENGRAM_OK);
  const auto toks = Trace(300, 16);
  engram_sequence_input in{a, toks.data(), toks.size(), nullptr};
  ASSERT_EQ(engram_step_submit(r.rt, &in, 1, &step), ENGRAM_OK);
  ASSERT_EQ(engram_step_finish(r.rt, step), ENGRAM_OK);

  std::size_t needed = 0;
  EXPECT_EQ(engram_runtime_stats(r.rt, ENGRAM_STATS_JSON, nullptr, 0, &needed), ENGRAM_OUT_OF_RANGE);
  ASSERT_GT(needed, 1U);
  std::string buf(needed + 256, '\0');
  ASSERT_EQ(engram_runtime_stats(r.rt, ENGRAM_STATS_JSON, buf.data(), buf.size(), &needed), ENGRAM_OK)
      << engram_last_error();
  const auto j = nlohmann::json::parse(buf.c_str());
  EXPECT_EQ(j["steps"], 1);
  EXPECT_EQ(j["tokens"], 16);
  EXPECT_EQ(j["layers"][0]["lookups"], 16 * d.layout.columns());

  char small[8];
  EXPECT_EQ(engram_runtime_stats(r.rt, ENGRAM_STATS_PROMETHEUS, small, sizeof(small), &needed), ENGRAM_OUT_OF_RANGE);
  buf.assign(needed + 256, '\0');
  ASSERT_EQ(engram_runtime_stats(r.rt, ENGRAM_STATS_PROMETHEUS, buf.data(), buf.size(), &needed), ENGRAM_OK);
  const std::string text = buf.c_str();
  EXPECT_NE(text.find("# TYPE engram_steps gauge\nengram_steps 1\n"), std::string::npos) << text;
  const std::string l0 = "engram_layers_lookups{layer=\"" + std::to_string(d.layout.layer(0).layer_id) + "\"} " +
                         std::to_string(16 * d.layout.columns()) + "\n";
  EXPECT_NE(text.find(l0), std::string::npos) << text;
}

TEST(CApi, TheHeaderCompilesAsCAndServesAStep) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  const DiskStore d = MakeDiskStore();
  const auto toks = Trace(700, 6);
  const long long sum = engram_c_test_one_step(d.dir.c_str(), toks.data(), toks.size());
  ASSERT_GE(sum, 0) << engram_last_error();
  const auto expect = Expected(d.layout, 0, toks, toks.size());
  long long want = 0;
  for (std::byte b : expect) want += static_cast<unsigned char>(b);
  EXPECT_EQ(sum, want);
}

}  // namespace
}  // namespace engram
