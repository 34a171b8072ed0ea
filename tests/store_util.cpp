#include "store_util.hpp"

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

}  // namespace engram::test
