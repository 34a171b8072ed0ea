// The JSON form of a Layout (docs/layout-format.md).
#include <fmt/format.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "../core/file.hpp"
#include "engram/layout.hpp"

namespace engram {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::string_view kFormatTag = "engram-layout/1";

Status FieldError(std::string_view field, std::string_view what) {
  return Status::InvalidArgument(fmt::format("field {}: {}", field, what));
}

Status CheckKeys(const Json& obj, std::string_view where, const std::set<std::string_view>& allowed) {
  for (const auto& item : obj.items()) {
    if (!allowed.contains(item.key())) {
      return FieldError(fmt::format("{}{}", where, item.key()), "unknown field");
    }
  }
  return Status::Ok();
}

Result<std::int64_t> GetInt(const Json& v, std::string_view field, std::int64_t lo, std::int64_t hi) {
  if (!v.is_number_integer()) return FieldError(field, fmt::format("expected an integer, got {}", v.dump()));
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(hi)) {
    return FieldError(field, fmt::format("{} is out of range ({}..{})", v.dump(), lo, hi));
  }
  const auto x = v.get<std::int64_t>();
  if (x < lo || x > hi) return FieldError(field, fmt::format("{} is out of range ({}..{})", x, lo, hi));
  return x;
}

Result<std::int64_t> GetIntField(const Json& obj, std::string_view key, std::string_view prefix, bool required,
                                 std::int64_t fallback, std::int64_t lo, std::int64_t hi) {
  auto it = obj.find(std::string(key));
  if (it == obj.end()) {
    if (required) return FieldError(fmt::format("{}{}", prefix, key), "missing");
    return fallback;
  }
  return GetInt(*it, fmt::format("{}{}", prefix, key), lo, hi);
}

Result<std::vector<std::int64_t>> GetIntArray(const Json& v, std::string_view field, std::int64_t lo, std::int64_t hi) {
  if (!v.is_array()) return FieldError(field, "expected an array of integers");
  std::vector<std::int64_t> out;
  out.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    ENGRAM_ASSIGN_OR_RETURN(std::int64_t x, GetInt(v[i], fmt::format("{}[{}]", field, i), lo, hi));
    out.push_back(x);
  }
  return out;
}

constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kI32Max = std::numeric_limits<std::int32_t>::max();

Result<LayoutSpec> ParseSpec(const Json& root, std::vector<std::int64_t>& rows_given,
                             std::vector<std::vector<std::int64_t>>& offsets_given, std::int64_t& row_bytes_given) {
  if (!root.is_object()) return Status::InvalidArgument("the top level must be a JSON object");
  ENGRAM_RETURN_IF_ERROR(CheckKeys(root, "",
                                   {"format", "name", "max_ngram", "heads", "compressed_vocab_size", "pad_token_id",
                                    "pad_id", "row", "seed", "base_sizes", "layers"}));
  auto fmt_it = root.find("format");
  if (fmt_it == root.end()) return FieldError("format", fmt::format("missing (expected \"{}\")", kFormatTag));
  if (!fmt_it->is_string() || fmt_it->get<std::string>() != kFormatTag) {
    return FieldError("format", fmt::format("{} is not \"{}\"", fmt_it->dump(), kFormatTag));
  }
  LayoutSpec s;
  auto name_it = root.find("name");
  if (name_it == root.end() || !name_it->is_string()) return FieldError("name", "missing or not a string");
  s.name = name_it->get<std::string>();
  ENGRAM_ASSIGN_OR_RETURN(std::int64_t max_ngram, GetIntField(root, "max_ngram", "", true, 0, 2, kMaxNgram));
  ENGRAM_ASSIGN_OR_RETURN(std::int64_t heads, GetIntField(root, "heads", "", true, 0, 1, kMaxHeads));
  ENGRAM_ASSIGN_OR_RETURN(s.compressed_vocab_size, GetIntField(root, "compressed_vocab_size", "", true, 0, 1, kI32Max));
  ENGRAM_ASSIGN_OR_RETURN(std::int64_t pad_token, GetIntField(root, "pad_token_id", "", false, 2, 0, kI32Max));
  ENGRAM_ASSIGN_OR_RETURN(std::int64_t pad, GetIntField(root, "pad_id", "", false, 2, 0, kI32Max));
  s.max_ngram = static_cast<std::int32_t>(max_ngram);
  s.heads = static_cast<std::int32_t>(heads);
  s.pad_token_id = static_cast<std::int32_t>(pad_token);
  s.pad_id = static_cast<std::int32_t>(pad);

  auto seed_it = root.find("seed");
  if (seed_it != root.end()) {
    if (!seed_it->is_number_unsigned() && !(seed_it->is_number_integer() && seed_it->get<std::int64_t>() >= 0)) {
      return FieldError("seed", fmt::format("expected a non-negative integer, got {}", seed_it->dump()));
    }
    s.seed = seed_it->get<std::uint64_t>();
  }

  auto row_it = root.find("row");
  if (row_it == root.end() || !row_it->is_object()) return FieldError("row", "missing or not an object");
  ENGRAM_RETURN_IF_ERROR(CheckKeys(*row_it, "row.", {"format", "dim", "bytes"}));
  auto rf = row_it->find("format");
  if (rf == row_it->end() || !rf->is_string()) return FieldError("row.format", "missing or not a string");
  ENGRAM_ASSIGN_OR_RETURN(s.row_format, ParseRowFormat(rf->get<std::string>()).WithContext("field row.format"));
  ENGRAM_ASSIGN_OR_RETURN(std::int64_t dim, GetIntField(*row_it, "dim", "row.", true, 0, 1, 1 << 20));
  s.row_dim = static_cast<std::int32_t>(dim);
  ENGRAM_ASSIGN_OR_RETURN(row_bytes_given, GetIntField(*row_it, "bytes", "row.", false, -1, 1, kI32Max));

  if (auto bs = root.find("base_sizes"); bs != root.end()) {
    ENGRAM_ASSIGN_OR_RETURN(s.base_sizes, GetIntArray(*bs, "base_sizes", 2, kI64Max));
  }

  auto layers_it = root.find("layers");
  if (layers_it == root.end() || !layers_it->is_array()) return FieldError("layers", "missing or not an array");
  const int orders = s.max_ngram - 1;
  for (std::size_t li = 0; li < layers_it->size(); ++li) {
    const Json& lj = (*layers_it)[li];
    const std::string prefix = fmt::format("layers[{}].", li);
    if (!lj.is_object()) return FieldError(fmt::format("layers[{}]", li), "expected an object");
    ENGRAM_RETURN_IF_ERROR(CheckKeys(lj, prefix, {"layer_id", "rows", "multipliers", "primes", "offsets"}));
    LayerSpec l;
    ENGRAM_ASSIGN_OR_RETURN(std::int64_t id, GetIntField(lj, "layer_id", prefix, true, 0, 0, kI32Max));
    l.layer_id = static_cast<std::int32_t>(id);
    auto m = lj.find("multipliers");
    if (m == lj.end()) return FieldError(prefix + "multipliers", "missing");
    ENGRAM_ASSIGN_OR_RETURN(l.multipliers,
                            GetIntArray(*m, prefix + "multipliers", std::numeric_limits<std::int64_t>::min(), kI64Max));
    auto p = lj.find("primes");
    if (p == lj.end() || !p->is_array())
      return FieldError(prefix + "primes", "missing or not an array of per-order arrays");
    if (static_cast<int>(p->size()) != orders) {
      return FieldError(prefix + "primes", fmt::format("{} orders, expected max_ngram - 1 = {}", p->size(), orders));
    }
    for (int n = 0; n < orders; ++n) {
      const std::string field = fmt::format("{}primes[n={}]", prefix, n + 2);
      ENGRAM_ASSIGN_OR_RETURN(auto heads_primes, GetIntArray((*p)[static_cast<std::size_t>(n)], field, 0, kI64Max));
      if (static_cast<int>(heads_primes.size()) != s.heads) {
        return FieldError(field, fmt::format("{} heads, expected {}", heads_primes.size(), s.heads));
      }
      l.primes.insert(l.primes.end(), heads_primes.begin(), heads_primes.end());
    }
    ENGRAM_ASSIGN_OR_RETURN(std::int64_t rows, GetIntField(lj, "rows", prefix, false, -1, 0, kI64Max));
    rows_given.push_back(rows);
    std::vector<std::int64_t> offsets;
    if (auto o = lj.find("offsets"); o != lj.end()) {
      if (!o->is_array() || static_cast<int>(o->size()) != orders) {
        return FieldError(prefix + "offsets", fmt::format("expected {} per-order arrays", orders));
      }
      for (int n = 0; n < orders; ++n) {
        ENGRAM_ASSIGN_OR_RETURN(auto part, GetIntArray((*o)[static_cast<std::size_t>(n)],
                                                       fmt::format("{}offsets[n={}]", prefix, n + 2), 0, kI64Max));
        offsets.insert(offsets.end(), part.begin(), part.end());
      }
    }
    offsets_given.push_back(std::move(offsets));
    s.layers.push_back(std::move(l));
  }
  return s;
}

}  // namespace

Result<Layout> Layout::FromJson(std::string_view json, std::string_view source) {
  Json root;
  try {
    root = Json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(fmt::format("layout {}: not valid JSON: {}", source, e.what()));
  }
  std::vector<std::int64_t> rows_given;
  std::vector<std::vector<std::int64_t>> offsets_given;
  std::int64_t row_bytes_given = -1;
  auto spec = ParseSpec(root, rows_given, offsets_given, row_bytes_given);
  if (!spec.ok()) return std::move(spec).status().WithContext(fmt::format("layout {}", source));
  ENGRAM_ASSIGN_OR_RETURN(Layout layout, Create(std::move(spec).value()).WithContext(fmt::format("layout {}", source)));
  // Redundant fields, when given, must agree with what the primes and the row format imply.
  if (row_bytes_given >= 0 && row_bytes_given != layout.row_bytes()) {
    return Status::InvalidArgument(fmt::format("layout {}: field row.bytes: {} does not match {} x {} = {} bytes",
                                               source, row_bytes_given, RowFormatName(layout.row_format()),
                                               layout.spec().row_dim, layout.row_bytes()));
  }
  for (int li = 0; li < layout.num_layers(); ++li) {
    const auto i = static_cast<std::size_t>(li);
    if (rows_given[i] >= 0 && rows_given[i] != layout.layer_rows(li)) {
      return Status::InvalidArgument(
          fmt::format("layout {}: field layers[{}].rows: {} does not match the sum of its primes, {}", source, li,
                      rows_given[i], layout.layer_rows(li)));
    }
    const auto& offs = offsets_given[i];
    for (std::size_t c = 0; c < offs.size(); ++c) {
      if (static_cast<int>(c) >= layout.columns() || offs[c] != layout.region_offset(li, static_cast<int>(c))) {
        const int col = static_cast<int>(c);
        return Status::InvalidArgument(fmt::format(
            "layout {}: field layers[{}].offsets[n={}][h={}]: {} does not match the sum of the preceding primes, {}",
            source, li, 2 + col / layout.heads(), col % layout.heads(), offs[c],
            col < layout.columns() ? layout.region_offset(li, col) : -1));
      }
    }
  }
  return layout;
}

Result<Layout> Layout::LoadFile(const std::string& path) {
  ENGRAM_ASSIGN_OR_RETURN(std::string text, detail::ReadFileToString(path).WithContext("layout"));
  return FromJson(text, path);
}

Result<Layout> Layout::Resolve(std::string_view preset_or_file) {
  for (std::string_view n : PresetNames()) {
    if (n == preset_or_file) return Preset(n);
  }
  auto r = LoadFile(std::string(preset_or_file));
  if (!r.ok() && r.status().code() == StatusCode::kNotFound) {
    return Status::NotFound(
        fmt::format("\"{}\" is neither a layout preset (deepseek-v4.1-flash, engram-demo) nor a file", preset_or_file));
  }
  return r;
}

std::string Layout::ToJson() const {
  Json root;
  root["format"] = kFormatTag;
  root["name"] = spec_.name;
  root["max_ngram"] = spec_.max_ngram;
  root["heads"] = spec_.heads;
  root["compressed_vocab_size"] = spec_.compressed_vocab_size;
  root["pad_token_id"] = spec_.pad_token_id;
  root["pad_id"] = spec_.pad_id;
  root["row"] = Json{{"format", RowFormatName(spec_.row_format)}, {"dim", spec_.row_dim}, {"bytes", row_bytes_}};
  root["seed"] = spec_.seed;
  root["base_sizes"] = spec_.base_sizes;
  Json layers = Json::array();
  for (int li = 0; li < num_layers(); ++li) {
    const LayerSpec& l = layer(li);
    Json primes = Json::array();
    Json offsets = Json::array();
    for (int n = 0; n < num_orders(); ++n) {
      Json p = Json::array();
      Json o = Json::array();
      for (int k = 0; k < heads(); ++k) {
        const int c = n * heads() + k;
        p.push_back(l.primes[static_cast<std::size_t>(c)]);
        o.push_back(region_offset(li, c));
      }
      primes.push_back(std::move(p));
      offsets.push_back(std::move(o));
    }
    layers.push_back(Json{{"layer_id", l.layer_id},
                          {"rows", layer_rows(li)},
                          {"multipliers", l.multipliers},
                          {"primes", std::move(primes)},
                          {"offsets", std::move(offsets)}});
  }
  root["layers"] = std::move(layers);
  return root.dump(2) + "\n";
}

}  // namespace engram
