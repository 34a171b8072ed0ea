// The `engram` tool as a user runs it: real process, real files.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engram/hasher.hpp"
#include "engram/prefetch/planner.hpp"
#include "engram/token_map.hpp"
#include "test_util.hpp"

namespace engram {
namespace {

struct CliResult {
  int code = -1;
  std::string out;
  std::string err;
};

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

CliResult RunCli(const test::TempDir& dir, const std::string& args) {
  const std::string cmd =
      std::string(ENGRAM_CLI_PATH) + " " + args + " >" + dir.File("stdout") + " 2>" + dir.File("stderr");
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = Slurp(dir.File("stdout"));
  r.err = Slurp(dir.File("stderr"));
  return r;
}

std::vector<std::int64_t> ReadI64(const std::string& path) {
  const std::string bytes = Slurp(path);
  std::vector<std::int64_t> v(bytes.size() / 8);
  std::memcpy(v.data(), bytes.data(), v.size() * 8);
  return v;
}

TEST(Cli, HelpListsSubcommands) {
  test::TempDir dir;
  auto r = RunCli(dir, "--help");
  EXPECT_EQ(r.code, 0);
  for (const char* sub : {"layout", "hash", "trace"}) EXPECT_NE(r.out.find(sub), std::string::npos) << sub;
}

TEST(Cli, UnknownOptionIsAUsageError) {
  test::TempDir dir;
  auto r = RunCli(dir, "hash --layout engram-demo --layer 1 --tokens x --compressed --out y --frobnicate");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("frobnicate"), std::string::npos) << r.err;
}

TEST(Cli, BadValueIsAUsageError) {
  test::TempDir dir;
  auto r = RunCli(dir, "hash --layout engram-demo --layer 1 --tokens x --compressed --seq-len many --out y");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("seq-len"), std::string::npos) << r.err;
}

TEST(Cli, MissingSubcommandIsAUsageError) {
  test::TempDir dir;
  EXPECT_EQ(RunCli(dir, "").code, 2);
}

TEST(Cli, LayoutPresetPrintsTheJsonForm) {
  test::TempDir dir;
  auto r = RunCli(dir, "layout --preset deepseek-v4.1-flash");
  ASSERT_EQ(r.code, 0) << r.err;
  auto parsed = Layout::FromJson(r.out, "stdout");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, *Layout::Preset("deepseek-v4.1-flash"));
}

TEST(Cli, LayoutFileWithCompositePrimeFailsWithTheField) {
  test::TempDir dir;
  std::string json = Layout::Preset("engram-demo")->ToJson();
  json.replace(json.find("646403"), 6, "646405");
  test::WriteBytes(dir.File("bad.json"), json.data(), json.size());
  auto r = RunCli(dir, "layout --layout " + dir.File("bad.json"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("646405 is not prime"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("bad.json"), std::string::npos) << r.err;
}

TEST(Cli, HashWritesReferenceRowsForCompressedIds) {
  test::TempDir dir;
  const std::int32_t ids[8] = {0, 3, 17, 99091, 5, 5, 2, 42};
  test::WriteBytes(dir.File("t.i32"), ids, sizeof(ids));
  auto r = RunCli(dir, "hash --layout deepseek-v4.1-flash --layer 14 --tokens " + dir.File("t.i32") +
                           " --compressed --out " + dir.File("rows.i64"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto rows = ReadI64(dir.File("rows.i64"));
  ASSERT_EQ(rows.size(), 8U * 24U);
  EXPECT_EQ(rows[0], 14361964);     // t=0 n2h0
  EXPECT_EQ(rows[191], 374884242);  // t=7 n4h7
}

TEST(Cli, HashOfTheRealTraceWithSeqLenMatchesTheLibrary) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  test::TempDir dir;
  auto r = RunCli(dir, "hash --layout engram-demo --layer 15 --tokens " + test::SharedData("brown.deepseek-v3.i32") +
                           " --token-map " + test::SharedData("deepseek-v3.token-map.i32") + " --seq-len 4096 --out " +
                           dir.File("rows.i64"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto rows = ReadI64(dir.File("rows.i64"));
  auto layout = Layout::Preset("engram-demo");
  auto h = LayerHasher::Create(*layout, 1);
  std::vector<std::int64_t> expected(test::BrownCompressed().size() * 16);
  ASSERT_TRUE(HashFreshSequences(*h, test::BrownCompressed(), 4096, expected).ok());
  EXPECT_EQ(rows, expected);
}

TEST(Cli, UnknownLayerIsAnErrorListingTheLayers) {
  test::TempDir dir;
  const std::int32_t ids[2] = {0, 1};
  test::WriteBytes(dir.File("t.i32"), ids, sizeof(ids));
  auto r = RunCli(dir, "hash --layout deepseek-v4.1-flash --layer 7 --tokens " + dir.File("t.i32") +
                           " --compressed --out " + dir.File("o"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no Engram layer 7"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("1, 14"), std::string::npos) << r.err;
}

TEST(Cli, TruncatedTokenFileIsAnError) {
  test::TempDir dir;
  const std::int32_t ids[2] = {0, 1};
  test::WriteBytes(dir.File("t.i32"), ids, 7);
  auto r = RunCli(dir, "hash --layout engram-demo --layer 1 --tokens " + dir.File("t.i32") + " --compressed --out " +
                           dir.File("o"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
}

TEST(Cli, OutOfRangeTokenIsAnErrorNamingThePosition) {
  ENGRAM_REQUIRE_SHARED_DATA("deepseek-v3.token-map.i32");
  test::TempDir dir;
  const std::int32_t ids[3] = {0, 1, 500000};
  test::WriteBytes(dir.File("t.i32"), ids, sizeof(ids));
  auto r = RunCli(dir, "hash --layout engram-demo --layer 1 --tokens " + dir.File("t.i32") + " --token-map " +
                           test::SharedData("deepseek-v3.token-map.i32") + " --out " + dir.File("o"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("token id 500000 at position 2"), std::string::npos) << r.err;
}

TEST(Cli, TraceSummaryJsonCountsTokensAndDistinctRows) {
  test::TempDir dir;
  // Six tokens repeating one 2-gram: 2-gram regions see few distinct rows.
  const std::int32_t ids[6] = {10, 11, 10, 11, 10, 11};
  test::WriteBytes(dir.File("t.i32"), ids, sizeof(ids));
  auto r = RunCli(dir, "trace summary --layout engram-demo --tokens " + dir.File("t.i32") + " --compressed --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"tokens\": 6"), std::string::npos) << r.out;
  // n=2 rows at t=1..5 come from 2-grams (10,11), (11,10): with t=0's (pad,10), 3 distinct per head.
  EXPECT_NE(
      r.out.find("\"order\": 2,\n          \"head\": 0,\n          \"lookups\": 6,\n          \"distinct_rows\": 3"),
      std::string::npos)
      << r.out;
}

TEST(Cli, TraceAnalyzeJsonPrintsTheCachesArray) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  test::TempDir dir;
  const auto& ids = test::BrownCompressed();
  test::WriteBytes(dir.File("t.i32"), ids.data(), 3000 * sizeof(std::int32_t));
  auto r = RunCli(dir, "trace analyze --layout deepseek-v4.1-flash --tokens " + dir.File("t.i32") +
                           " --compressed --seq-len 1000 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens"].get<int>(), 3000);
  EXPECT_EQ(j["sequences"].get<int>(), 3);
  ASSERT_EQ(j["caches"].size(), 5U);
  EXPECT_DOUBLE_EQ(j["caches"][1]["fraction"].get<double>(), 0.01);
  for (const auto& c : j["caches"]) {
    for (const char* k : {"fraction", "rows", "lru", "policy", "optimal"}) EXPECT_TRUE(c.contains(k)) << k;
  }
}

TEST(Cli, TraceAnalyzeRefusesAFractionOutsideZeroToOne) {
  test::TempDir dir;
  const std::int32_t ids[3] = {10, 11, 12};
  test::WriteBytes(dir.File("t.i32"), ids, sizeof(ids));
  auto r = RunCli(
      dir, "trace analyze --layout engram-demo --tokens " + dir.File("t.i32") + " --compressed --fractions 0.5,2");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--fractions"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace engram

namespace engram {
namespace {

// Long operations show progress on a terminal (bytes, rate, time left) and nothing in a pipe or with
// --quiet. `script` (util-linux) runs the tool on a pseudo-terminal.
TEST(CliProgress, ShownOnATerminalOnly) {
  if (std::system("command -v script >/dev/null 2>&1") != 0) GTEST_SKIP() << "skipped: no `script` command";
  test::TempDir dir;
  const std::string synth = std::string(ENGRAM_CLI_PATH) + " synth --layout engram-demo --scale 0.002 --out ";
  const std::string tty = "script -qc \"" + synth + dir.File("a") + "\" /dev/null < /dev/null > " + dir.File("tty.txt");
  ASSERT_EQ(std::system(tty.c_str()), 0);
  const std::string on_tty = Slurp(dir.File("tty.txt"));
  EXPECT_NE(on_tty.find("\rsynth "), std::string::npos) << on_tty;
  EXPECT_NE(on_tty.find("/s"), std::string::npos) << on_tty;
  auto piped = RunCli(dir, "synth --layout engram-demo --scale 0.002 --out " + dir.File("b"));
  ASSERT_EQ(piped.code, 0);
  EXPECT_EQ(piped.err.find('\r'), std::string::npos) << piped.err;
  const std::string quiet =
      "script -qc \"" + synth + dir.File("c") + " --quiet\" /dev/null < /dev/null > " + dir.File("q.txt");
  ASSERT_EQ(std::system(quiet.c_str()), 0);
  // (a terminal turns "\n" into "\r\n": look for the progress line itself)
  EXPECT_EQ(Slurp(dir.File("q.txt")).find("\rsynth "), std::string::npos);
}

}  // namespace
}  // namespace engram

namespace engram {
namespace {

TEST(CliIngest, ZeroThreadsIsRefusedAndWritesNothing) {
  test::TempDir dir;
  ASSERT_EQ(RunCli(dir, "synth --layout engram-demo --scale 0.001 --quiet --out " + dir.File("ck")).code, 0);
  auto r = RunCli(dir, "ingest --layout " + dir.File("ck/layout.json") + " --checkpoint " + dir.File("ck") +
                           " --store " + dir.File("st") + " --quiet --threads 0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--threads 0"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir.File("st")));
}

TEST(CliIngest, OneThreadIngestsAStoreThatVerifies) {
  test::TempDir dir;
  ASSERT_EQ(RunCli(dir, "synth --layout engram-demo --scale 0.001 --quiet --out " + dir.File("ck")).code, 0);
  auto r = RunCli(dir, "ingest --layout " + dir.File("ck/layout.json") + " --checkpoint " + dir.File("ck") +
                           " --store " + dir.File("st") + " --quiet --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  auto v = RunCli(dir, "verify --quiet --store " + dir.File("st"));
  EXPECT_EQ(v.code, 0) << v.out << v.err;
}

}  // namespace
}  // namespace engram

// engram calibrate and engram plan.
namespace engram {
namespace {

// A calibration with GPU rates, as `engram calibrate` writes on the GPU machine (the plan needs them).
std::string WriteGpuCalibration(const test::TempDir& dir) {
  const plan::Calibration c = test::H100LikeCalibration();
  std::string path = dir.File("cal.json");
  std::ofstream(path) << plan::CalibrationJson(c);
  return path;
}

std::string PlanArgs(const std::string& cal) {
  return "plan --layout deepseek-v4.1-flash --tokens " + test::SharedData("brown.deepseek-v3.i32") + " --token-map " +
         test::SharedData("deepseek-v3.token-map.i32") + " --calibration " + cal +
         " --decode 16 --decode-steps 8 --warmup-decode 8 --prefill 2,256 --prefill-steps 2 --warmup-prefill 1";
}

TEST(CliPlan, CalibrateWritesAFileThePlannerReads) {
  test::TempDir dir;
  auto r = RunCli(dir, "calibrate --no-gpu --seconds 0.05 --threads 2 --out " + dir.File("c.json"));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("GPU not measured"), std::string::npos) << r.out;  // --no-gpu, or a build without CUDA
  auto c = plan::LoadCalibration(dir.File("c.json"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_GT(c->gather_rows_per_s, 0);
  EXPECT_EQ(c->gpu, "");
}

TEST(CliPlan, PlanNeedsTheBackbonesLayerTime) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  test::TempDir dir;
  auto r = RunCli(dir, PlanArgs(WriteGpuCalibration(dir)) + " --gpu-mem 64M --host-mem 256M");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--layer-ms-decode"), std::string::npos) << r.err;
}

TEST(CliPlan, PlanPrintsSplitsWritesJsonAndAChart) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  test::TempDir dir;
  auto r = RunCli(dir, PlanArgs(WriteGpuCalibration(dir)) +
                           " --gpu-mem 64M --host-mem 256M --layer-ms-decode 0.1 --layer-ms-prefill 1 --json " +
                           dir.File("plan.json") + " --plot " + dir.File("plan.svg"));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("GPU cache"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(Slurp(dir.File("plan.json")));
  // GPU cache 0, 8, 16, 32, 64 MiB by host cache 0, 32, 64, 128, 256 MiB.
  ASSERT_EQ(j["splits"].size(), 25U);
  for (const auto& split : j["splits"]) {
    ASSERT_EQ(split["phases"].size(), 2U);
    EXPECT_GE(split["phases"][1]["loss_vs_compute"].get<double>(), 0);
  }
  // With no cache anywhere, every row of a decode step comes from the disk.
  const auto& cold = j["splits"][0]["phases"][1]["layers"][0];
  EXPECT_EQ(cold["rows"]["disk"], cold["distinct"]);
  const std::string svg = Slurp(dir.File("plan.svg"));
  EXPECT_EQ(svg.rfind("<svg", 0), 0U);
  EXPECT_NE(svg.find("decode: throughput loss"), std::string::npos);
}

TEST(CliPlan, PlanRefusesAChartItCannotWrite) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  test::TempDir dir;
  auto r = RunCli(dir, PlanArgs(WriteGpuCalibration(dir)) +
                           " --gpu-mem 64M --host-mem 256M --layer-ms-decode 0.1 --layer-ms-prefill 1 --plot " +
                           dir.File("plan.png"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("only SVG"), std::string::npos) << r.err;
}

TEST(CliPlan, CompareNeedsTheBackboneAloneInTheRun) {
  ENGRAM_REQUIRE_SHARED_DATA("brown.deepseek-v3.i32");
  test::TempDir dir;
  std::ofstream(dir.File("run.json")) << R"({"model": {"layers": 40}, "configs": [{"name": "a"}]})";
  auto r = RunCli(dir, PlanArgs(WriteGpuCalibration(dir)) + " --compare " + dir.File("run.json"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("has no configuration `none`"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace engram
