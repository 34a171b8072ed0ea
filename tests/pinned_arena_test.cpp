// PinnedArena on this machine's real pages: every path that can run without root and without a GPU.
#include "engram/memory/pinned_arena.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>

namespace engram::memory {
namespace {

std::int64_t FreeHugePages() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("HugePages_Free:", 0) == 0) return std::stoll(line.substr(15));
  }
  return 0;
}

TEST(PinnedArena, NormalPagesAreMappedTouchedAndWritable) {
  ArenaOptions o;
  o.huge_pages = HugePages::kNone;
  o.touch_threads = 2;
  auto a = PinnedArena::Create(10 * 4096 + 1, o);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  const ArenaReport& r = (*a)->report();
  EXPECT_EQ(r.path, PagePath::kNormal);
  EXPECT_EQ(r.bytes, 11U * 4096);
  EXPECT_EQ(r.page_bytes, 4096U);
  EXPECT_TRUE(r.fallback.empty());
  EXPECT_FALSE(r.registered);
  std::memset((*a)->data(), 0xab, r.bytes);
  EXPECT_EQ(static_cast<unsigned char>((*a)->data()[r.bytes - 1]), 0xab);
}

TEST(PinnedArena, AutoReportsThePathItTookAndWhyNotABetterOne) {
  auto a = PinnedArena::Create(4ULL << 20);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  const ArenaReport& r = (*a)->report();
  if (FreeHugePages() >= 2) {
    EXPECT_EQ(r.path, PagePath::kExplicitHuge);
    EXPECT_TRUE(r.fallback.empty());
  } else {
    EXPECT_NE(r.path, PagePath::kExplicitHuge);
    EXPECT_NE(r.fallback.find("hugetlb pool"), std::string::npos) << r.fallback;
  }
  EXPECT_GE(r.bytes, 4ULL << 20);
  EXPECT_NE(DescribeArena(r).find(std::string(PagePathName(r.path))), std::string::npos);
}

TEST(PinnedArena, ExplicitHugePagesRequiredAndMissingIsAnErrorNamingTheShortfall) {
  if (FreeHugePages() > 1024) GTEST_SKIP() << "this machine has a hugetlb pool; the refusal cannot be provoked";
  ArenaOptions o;
  o.huge_pages = HugePages::kExplicit;
  auto a = PinnedArena::Create(4ULL << 30, o);  // more than any small pool holds
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(a.status().message().find("nr_hugepages"), std::string::npos) << a.status().ToString();
}

TEST(PinnedArena, TransparentHugePagesAreAlignedToTheHugePageSize) {
  ArenaOptions o;
  o.huge_pages = HugePages::kTransparent;
  auto a = PinnedArena::Create(6ULL << 20, o);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  const ArenaReport& r = (*a)->report();
  if (r.path == PagePath::kNormal) {
    EXPECT_NE(r.fallback.find("transparent"), std::string::npos) << r.fallback;
  } else {
    EXPECT_EQ(r.path, PagePath::kTransparentHuge);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>((*a)->data()) % r.page_bytes, 0U);
    EXPECT_LE(r.transparent_huge_bytes, r.bytes);
  }
}

TEST(PinnedArena, AllocateAlignsAndRefusesPastTheEnd) {
  ArenaOptions o;
  o.huge_pages = HugePages::kNone;
  auto a = PinnedArena::Create(64 * 1024, o);
  ASSERT_TRUE(a.ok());
  auto x = (*a)->Allocate(100, 64);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(x->data(), (*a)->data());
  auto y = (*a)->Allocate(4096, 4096);
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(y->data(), (*a)->data() + 4096);
  EXPECT_EQ((*a)->available(), 64U * 1024 - 8192);
  auto z = (*a)->Allocate(64 * 1024, 4096);
  ASSERT_FALSE(z.ok());
  EXPECT_EQ(z.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(z.status().message().find("65536 bytes requested"), std::string::npos) << z.status().ToString();
  EXPECT_EQ((*a)->available(), 64U * 1024 - 8192);  // a refusal takes nothing
  EXPECT_EQ((*a)->Allocate(8, 3).status().code(), StatusCode::kInvalidArgument);
}

TEST(PinnedArena, ZeroBytesIsAnError) {
  EXPECT_EQ(PinnedArena::Create(0).status().code(), StatusCode::kInvalidArgument);
}

// A registrar that records calls, standing in for a GPU runtime only to observe the arena's contract
// (register after touching, unregister before unmapping); the CUDA one is tested on the GPU machine.
class RecordingRegistrar final : public HostRegistrar {
 public:
  std::string_view name() const noexcept override { return "recording"; }
  Status Register(void* p, std::size_t bytes) override {
    registered = p;
    registered_bytes = bytes;
    // The pages were touched before registration: reading them must see the kernel's zeroes.
    first_byte = *static_cast<unsigned char*>(p);
    return fail ? Status::Internal("refused") : Status::Ok();
  }
  Status Unregister(void* p) override {
    unregistered = p;
    return Status::Ok();
  }
  bool fail = false;
  void* registered = nullptr;
  std::size_t registered_bytes = 0;
  void* unregistered = nullptr;
  int first_byte = -1;
};

TEST(PinnedArena, RegistersTheWholeMappingAndUnregistersOnDestruction) {
  RecordingRegistrar reg;
  ArenaOptions o;
  o.huge_pages = HugePages::kNone;
  o.registrar = &reg;
  void* base = nullptr;
  {
    auto a = PinnedArena::Create(1 << 20, o);
    ASSERT_TRUE(a.ok());
    base = (*a)->data();
    EXPECT_TRUE((*a)->report().registered);
    EXPECT_EQ((*a)->report().registrar, "recording");
    EXPECT_EQ(reg.registered, base);
    EXPECT_EQ(reg.registered_bytes, 1U << 20);
    EXPECT_EQ(reg.first_byte, 0);
    EXPECT_EQ(reg.unregistered, nullptr);
  }
  EXPECT_EQ(reg.unregistered, base);
}

TEST(PinnedArena, ARegistrationFailureIsTheCallersErrorWithTheArenaNamed) {
  RecordingRegistrar reg;
  reg.fail = true;
  ArenaOptions o;
  o.huge_pages = HugePages::kNone;
  o.registrar = &reg;
  o.name = "host tier";
  auto a = PinnedArena::Create(1 << 20, o);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("arena 'host tier'"), std::string::npos) << a.status().ToString();
  EXPECT_EQ(reg.unregistered, nullptr);
}

}  // namespace
}  // namespace engram::memory
