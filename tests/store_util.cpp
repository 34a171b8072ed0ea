#include "store_util.hpp"

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>

namespace engram::test {

const SynthCheckpoint& SmallCheckpoint(const std::string& preset, double scale) {
  static std::mutex mu;
  static std::map<std::pair<std::string, double>, std::unique_ptr<SynthCheckpoint>> made;
  static TempDir root;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = made[{preset, scale}];
  if (!slot) {
    auto layout = store::ScaledLayout(*Layout::Preset(preset), scale);
    EXPECT_TRUE(layout.ok()) << layout.status().ToString();
    const std::string dir = root.File(preset + "-" + std::to_string(scale));
    store::SynthOptions o;
    o.quiet = true;
    const Status s = store::WriteSynthCheckpoint(*layout, dir, o);
    EXPECT_TRUE(s.ok()) << s.ToString();
    slot = std::make_unique<SynthCheckpoint>(SynthCheckpoint{dir, *layout});
  }
  return *slot;
}

std::vector<std::byte> ExpectedRows(const Layout& layout, int layer_index, const std::vector<std::int64_t>& rows) {
  std::vector<std::byte> out(rows.size() * layout.row_bytes());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    store::SynthRow(layout, layer_index, static_cast<std::uint64_t>(rows[i]),
                    std::span(out).subspan(i * layout.row_bytes(), layout.row_bytes()));
  }
  return out;
}

// Flips one byte in the middle of the generation's SST file (inside a data block).
std::string FlipOneByte(const std::string& store_dir) {
  std::string biggest;
  std::uintmax_t size = 0;
  for (const auto& e : std::filesystem::directory_iterator(store_dir)) {
    if (e.path().extension() == ".sst" && e.file_size() > size) {
      size = e.file_size();
      biggest = e.path().string();
    }
  }
  std::fstream f(biggest, std::ios::in | std::ios::out | std::ios::binary);
  const auto at = static_cast<std::streamoff>(size / 3 + 100);
  f.seekg(at);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5A);
  f.seekp(at);
  f.write(&c, 1);
  return biggest;
}

std::unique_ptr<IngestedStore> MakeIngestedStore(const std::string& preset, double scale, std::uint32_t read_threads,
                                                 const TokenMap* token_map) {
  const auto& ck = SmallCheckpoint(preset, scale);
  auto f = std::make_unique<IngestedStore>();
  store::StoreOptions so;
  so.read_threads = read_threads;
  auto st = store::Store::Create(f->dir.File("store"), ck.layout, token_map, so);
  EXPECT_TRUE(st.ok()) << st.status().ToString();
  if (!st.ok()) return f;
  auto c = store::Checkpoint::Open(ck.dir);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (!c.ok()) return f;
  auto v = (*st)->Ingest(*c);
  EXPECT_TRUE(v.ok()) << v.status().ToString();
  f->store = std::move(*st);
  if (v.ok()) f->version = *f->store->Pin(*v);
  return f;
}

}  // namespace engram::test
