#include "store_format.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

namespace engram::store::detail {
namespace {

void PutBe64(std::string& s, std::uint64_t v) {
  for (int i = 7; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

std::uint64_t GetBe64(const std::string& s, std::size_t at) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<std::uint8_t>(s[at + i]);
  return v;
}

}  // namespace

std::string PageKey(int layer_index, std::uint64_t page) {
  std::string k;
  k.reserve(8);
  PutBe64(k, (static_cast<std::uint64_t>(layer_index) << 56) | page);
  return k;
}

void DecodePageKey(const std::string& key, int& layer_index, std::uint64_t& page) {
  const std::uint64_t v = key.size() == 8 ? GetBe64(key, 0) : ~0ULL;
  layer_index = static_cast<int>(v >> 56);
  page = v & ((1ULL << 56) - 1);
}

std::string EditKey(int layer_index, std::uint64_t row, VersionId version) {
  std::string k;
  k.reserve(16);
  PutBe64(k, (static_cast<std::uint64_t>(layer_index) << 56) | row);
  PutBe64(k, version);
  return k;
}

bool DecodeEditKey(const std::string& key, int& layer_index, std::uint64_t& row, VersionId& version) {
  if (key.size() != 16) return false;
  const std::uint64_t v = GetBe64(key, 0);
  layer_index = static_cast<int>(v >> 56);
  row = v & ((1ULL << 56) - 1);
  version = GetBe64(key, 8);
  return true;
}

std::string GenerationCf(std::uint64_t generation) {
  return fmt::format("g{}", generation);
}

std::string EncodeManifest(const Manifest& m) {
  nlohmann::ordered_json j;
  j["format"] = kStoreFormat;
  j["rows_per_key"] = m.rows_per_key;
  j["row_bytes"] = m.row_bytes;
  j["next_version"] = m.next_version;
  j["next_generation"] = m.next_generation;
  nlohmann::ordered_json vs = nlohmann::ordered_json::array();
  for (const VersionInfo& v : m.versions) {
    vs.push_back({{"id", v.id},
                  {"parent", v.parent},
                  {"generation", v.generation},
                  {"kind", v.kind},
                  {"created_unix", v.created_unix},
                  {"edited_rows", v.edited_rows},
                  {"source", v.source}});
  }
  j["versions"] = std::move(vs);
  nlohmann::ordered_json gs = nlohmann::ordered_json::array();
  for (const GenerationRecord& g : m.generations) {
    nlohmann::ordered_json ts = nlohmann::ordered_json::array();
    for (const TensorChecksum& t : g.tensors) ts.push_back({{"name", t.name}, {"bytes", t.bytes}, {"xxh3", t.xxh3}});
    gs.push_back(
        {{"id", g.id}, {"rows", g.rows}, {"checksum_chunk_rows", g.checksum_chunk_rows}, {"tensors", std::move(ts)}});
  }
  j["generations"] = std::move(gs);
  j["last_verification"] = m.last_verification;
  return j.dump();
}

Result<Manifest> DecodeManifest(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    if (j.at("format").get<int>() != kStoreFormat) {
      return Status::InvalidArgument(fmt::format("manifest format {} is not {} (a newer engram wrote this store?)",
                                                 j.at("format").get<int>(), kStoreFormat));
    }
    Manifest m;
    m.rows_per_key = j.at("rows_per_key").get<std::uint32_t>();
    m.row_bytes = j.at("row_bytes").get<std::uint32_t>();
    m.next_version = j.at("next_version").get<VersionId>();
    m.next_generation = j.at("next_generation").get<std::uint64_t>();
    for (const auto& v : j.at("versions")) {
      VersionInfo info;
      info.id = v.at("id").get<VersionId>();
      info.parent = v.at("parent").get<VersionId>();
      info.generation = v.at("generation").get<std::uint64_t>();
      info.kind = v.at("kind").get<std::string>();
      info.created_unix = v.at("created_unix").get<std::int64_t>();
      info.edited_rows = v.at("edited_rows").get<std::uint64_t>();
      info.source = v.at("source").get<std::string>();
      m.versions.push_back(std::move(info));
    }
    for (const auto& g : j.at("generations")) {
      GenerationRecord rec;
      rec.id = g.at("id").get<std::uint64_t>();
      rec.rows = g.at("rows").get<std::uint64_t>();
      rec.checksum_chunk_rows = g.at("checksum_chunk_rows").get<std::uint64_t>();
      for (const auto& t : g.at("tensors")) {
        rec.tensors.push_back(
            {t.at("name").get<std::string>(), t.at("bytes").get<std::uint64_t>(), t.at("xxh3").get<std::uint64_t>()});
      }
      m.generations.push_back(std::move(rec));
    }
    m.last_verification = j.value("last_verification", "");
    if (m.rows_per_key == 0 || m.row_bytes == 0)
      return Status::Corruption("manifest: rows_per_key and row_bytes must be positive");
    return m;
  } catch (const nlohmann::json::exception& e) {
    return Status::Corruption(fmt::format("manifest: {}", e.what()));
  }
}

}  // namespace engram::store::detail
