// SIGKILL at many points of an ingest (the real `engram ingest` process): every time, the store reopens,
// the previous version reads back and verifies, and a version is either complete or absent.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "engram/store/store.hpp"
#include "store_util.hpp"

extern char** environ;

namespace engram::store {
namespace {

pid_t SpawnIngest(const std::string& layout, const std::string& checkpoint, const std::string& store) {
  std::vector<std::string> args = {ENGRAM_CLI_PATH, "ingest",  "--layout", layout,   "--checkpoint",
                                   checkpoint,      "--store", store,      "--quiet"};
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return rc == 0 ? pid : -1;
}

// Runs a shell command with stderr into `err_file`; returns its exit code (-1 if it did not exit) and
// puts what it wrote on stderr in `message`.
int RunShell(const std::string& cmd, const std::string& err_file, std::string& message) {
  const int status = std::system((cmd + " 2>" + err_file).c_str());
  std::ifstream err(err_file);
  message.assign(std::istreambuf_iterator<char>(err), std::istreambuf_iterator<char>());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int Wait(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

TEST(StoreCrash, SigkillDuringIngestLeavesThePreviousVersionIntact) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", 0.0005);
  test::TempDir dir;
  const std::string layout = ck.dir + "/layout.json";
  // Version 1, ingested to completion; and the time a whole ingest takes here.
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(Wait(SpawnIngest(layout, ck.dir, dir.File("store"))), 0);
  const auto full = std::chrono::steady_clock::now() - t0;
  const double fractions[] = {0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95, 1.05};
  int complete = 0;
  for (double f : fractions) {
    const pid_t pid = SpawnIngest(layout, ck.dir, dir.File("store"));
    ASSERT_GT(pid, 0);
    std::this_thread::sleep_for(std::chrono::duration_cast<std::chrono::microseconds>(full * f));
    ::kill(pid, SIGKILL);
    Wait(pid);
    auto st = Store::Open(dir.File("store"), StoreOptions{}, &ck.layout);
    ASSERT_TRUE(st.ok()) << "after kill at " << f << ": " << st.status().ToString();
    const auto versions = (*st)->versions();
    ASSERT_GE(versions.size(), 1U);
    ASSERT_EQ(versions[0].id, 1U);
    for (const auto& v : versions) {
      auto r = (*st)->Verify(v.id);
      ASSERT_TRUE(r.ok()) << "after kill at " << f << ", version " << v.id << ": " << r.status().ToString();
    }
    complete += static_cast<int>(versions.size()) - 1;
    // Keep only version 1 for the next round.
    for (std::size_t i = 1; i < versions.size(); ++i) ASSERT_TRUE((*st)->DropVersion(versions[i].id).ok());
  }
  // Leftovers of killed ingests are gone: one generation's bytes remain.
  auto st = Store::Open(dir.File("store"), StoreOptions{}, &ck.layout);
  ASSERT_TRUE(st.ok());
  const double table = static_cast<double>(ck.layout.layer_rows(0) + ck.layout.layer_rows(1)) * 264;
  EXPECT_LT(static_cast<double>((*st)->Info().bytes_on_disk), 1.3 * table);
  EXPECT_FALSE(std::filesystem::exists(dir.File("store/ingest-tmp-g2")));
  std::printf("kills: %zu, ingests that completed before the kill: %d\n", std::size(fractions), complete);
}

// A write that fails mid-ingest (the file-size limit stands in for a full disk: write() gets EFBIG, with
// SIGXFSZ ignored): the ingest reports an error naming what it was writing, and version 1 is intact.
TEST(StoreFaults, AFailedWriteDuringIngestLeavesThePreviousVersion) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", 0.0005);
  test::TempDir dir;
  const std::string layout = ck.dir + "/layout.json";
  ASSERT_EQ(Wait(SpawnIngest(layout, ck.dir, dir.File("store"))), 0);
  // 20 MiB file-size limit: the second ingest's SST file (~100 MiB) cannot be written.
  const std::string cmd = "sh -c \"trap '' XFSZ; ulimit -f 20480; exec " + std::string(ENGRAM_CLI_PATH) +
                          " ingest --layout " + layout + " --checkpoint " + ck.dir + " --store " + dir.File("store") +
                          " --quiet\"";
  std::string message;
  EXPECT_EQ(RunShell(cmd, dir.File("err"), message), 1);
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  EXPECT_NE(message.find(".sst"), std::string::npos) << message;
  auto st = Store::Open(dir.File("store"), StoreOptions{}, &ck.layout);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  ASSERT_EQ((*st)->versions().size(), 1U);
  EXPECT_TRUE((*st)->Verify(1).ok());
  EXPECT_FALSE(std::filesystem::exists(dir.File("store/ingest-tmp-g2")));
}

// A second process cannot open a store that one holds: `engram ingest` fails naming the lock, and the
// store is unchanged.
TEST(StoreFaults, ASecondProcessIsRefusedWhileOneHoldsTheStore) {
  const auto& ck = test::SmallCheckpoint("deepseek-v4.1-flash", 0.0001);
  test::TempDir dir;
  const std::string layout = ck.dir + "/layout.json";
  ASSERT_EQ(Wait(SpawnIngest(layout, ck.dir, dir.File("store"))), 0);
  auto held = Store::Open(dir.File("store"), StoreOptions{}, &ck.layout);
  ASSERT_TRUE(held.ok());
  const std::string cmd = std::string(ENGRAM_CLI_PATH) + " ingest --layout " + layout + " --checkpoint " + ck.dir +
                          " --store " + dir.File("store") + " --quiet";
  std::string message;
  EXPECT_EQ(RunShell(cmd, dir.File("err"), message), 1);
  EXPECT_NE(message.find("open in another process"), std::string::npos) << message;
  EXPECT_EQ((*held)->versions().size(), 1U);
}

}  // namespace
}  // namespace engram::store
