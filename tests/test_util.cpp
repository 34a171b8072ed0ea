#include "test_util.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "engram/token_map.hpp"

namespace engram::test {

const TokenMap& RealTokenMap() {
  static const TokenMap map = [] {
    auto m = TokenMap::LoadFile(SharedData("deepseek-v3.token-map.i32"));
    if (!m.ok()) return *TokenMap::FromIds({0}, "empty stand-in: " + m.status().ToString());
    return std::move(*m);
  }();
  return map;
}

const std::vector<std::int32_t>& BrownRaw() {
  static const std::vector<std::int32_t> ids = [] {
    std::ifstream f(SharedData("brown.deepseek-v3.i32"), std::ios::binary | std::ios::ate);
    if (!f) return std::vector<std::int32_t>{};
    std::vector<std::int32_t> raw(static_cast<std::size_t>(f.tellg()) / 4);
    f.seekg(0);
    f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size() * 4));
    return raw;
  }();
  return ids;
}

const std::vector<std::int32_t>& BrownCompressed() {
  static const std::vector<std::int32_t> ids = [] {
    const auto& raw = BrownRaw();
    std::vector<std::int32_t> out(raw.size());
    if (raw.empty() || !RealTokenMap().Compress(raw, out).ok()) return std::vector<std::int32_t>{};
    return out;
  }();
  return ids;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "engram-test-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void WriteBytes(const std::string& path, const void* data, std::size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}

std::vector<std::int64_t> ReferenceRows(const Layout& layout, int layer_index, const std::vector<std::int32_t>& ids,
                                        const std::vector<std::uint8_t>& dead) {
  const LayerSpec& l = layout.layer(layer_index);
  const std::int64_t pad = layout.pad_id();
  std::vector<std::int64_t> rows;
  rows.reserve(ids.size() * static_cast<std::size_t>(layout.columns()));
  for (std::int64_t t = 0; t < static_cast<std::int64_t>(ids.size()); ++t) {
    // x(j): the id j positions back, as the hash reads it.
    std::vector<std::int64_t> x(static_cast<std::size_t>(layout.max_ngram()));
    bool dead_seen = false;
    for (int j = 0; j < layout.max_ngram(); ++j) {
      const std::int64_t pos = t - j;
      if (pos < 0) {
        x[static_cast<std::size_t>(j)] = pad;
        continue;
      }
      if (!dead.empty() && dead[static_cast<std::size_t>(pos)] != 0) dead_seen = true;
      x[static_cast<std::size_t>(j)] = dead_seen ? pad : ids[static_cast<std::size_t>(pos)];
    }
    for (int n = 2; n <= layout.max_ngram(); ++n) {
      std::int64_t mix = 0;
      for (int j = 0; j < n; ++j) mix ^= x[static_cast<std::size_t>(j)] * l.multipliers[static_cast<std::size_t>(j)];
      for (int k = 0; k < layout.heads(); ++k) {
        const int c = (n - 2) * layout.heads() + k;
        const std::int64_t p = l.primes[static_cast<std::size_t>(c)];
        std::int64_t r = mix % p;  // C++ truncates toward zero; the reference's mod is non-negative
        if (r < 0) r += p;
        rows.push_back(layout.region_offset(layer_index, c) + r);
      }
    }
  }
  return rows;
}

plan::Calibration H100LikeCalibration() {
  plan::Calibration c;
  c.machine = "test";
  c.host_threads = 16;
  c.gather_row_bytes = 264;
  c.gather_rows_per_s = 1.4e8;
  c.hash_lookups_per_s = 3e9;
  c.dedupe_lookups_per_s = 1e7;
  c.store_rows_per_page = 15;
  c.store_read_fixed_s = 200e-6;
  c.store_pages_per_s = 75e3;
  c.gpu = "test";
  c.h2d_fixed_s = 4e-6;
  c.h2d_bytes_per_s = 55e9;
  c.zero_copy_rows_per_s = 1.1e8;
  c.hbm_rows_per_s = 3.8e9;
  c.launch_s = 6e-6;
  return c;
}

}  // namespace engram::test
