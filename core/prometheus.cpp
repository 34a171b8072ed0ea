#include "engram/prometheus.hpp"

#include <fmt/format.h>

#include <map>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

namespace engram {
namespace {

using Json = nlohmann::ordered_json;

std::string MetricName(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) c = '_';
  }
  return out;
}

// A label value with \, " and newlines escaped as the format asks.
std::string LabelValue(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

struct Metrics {
  std::vector<std::string> order;                                              // first appearance
  std::map<std::string, std::vector<std::pair<std::string, double>>> samples;  // name -> (labels, value)
  std::vector<std::pair<std::string, std::string>> info;                       // string fields

  void Add(const std::string& name, const std::string& labels, double v) {
    auto [it, fresh] = samples.try_emplace(name);
    if (fresh) order.push_back(name);
    it->second.emplace_back(labels, v);
  }

  void Walk(const Json& j, const std::string& name, const std::string& labels) {
    if (j.is_object()) {
      for (const auto& [k, v] : j.items()) Walk(v, name + "_" + MetricName(k), labels);
    } else if (j.is_array()) {
      for (std::size_t i = 0; i < j.size(); ++i) {
        const Json& e = j[i];
        std::string l = labels.empty() ? "" : labels + ",";
        if (e.is_object() && e.contains("layer_id") && e["layer_id"].is_number_integer()) {
          l += fmt::format("layer=\"{}\"", e["layer_id"].get<std::int64_t>());
        } else {
          l += fmt::format("index=\"{}\"", i);
        }
        Walk(e, name, l);
      }
    } else if (j.is_number()) {
      Add(name, labels, j.get<double>());
    } else if (j.is_boolean()) {
      Add(name, labels, j.get<bool>() ? 1.0 : 0.0);
    } else if (j.is_string() && labels.empty()) {
      info.emplace_back(name, j.get<std::string>());
    }
  }
};

}  // namespace

Result<std::string> PrometheusFromJson(std::string_view json, std::string_view prefix) {
  Json j = Json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Status::InvalidArgument("statistics: not a JSON object");
  Metrics m;
  const std::string root = MetricName(prefix);
  m.Walk(j, root, "");
  std::string out;
  for (const auto& name : m.order) {
    out += fmt::format("# TYPE {} gauge\n", name);
    for (const auto& [labels, v] : m.samples[name]) {
      if (labels.empty()) {
        out += fmt::format("{} {}\n", name, v);
      } else {
        out += fmt::format("{}{{{}}} {}\n", name, labels, v);
      }
    }
  }
  if (!m.info.empty()) {
    std::string labels;
    for (const auto& [name, v] : m.info) {
      if (!labels.empty()) labels += ",";
      // Label names: the path below the prefix.
      labels += fmt::format("{}=\"{}\"", name.substr(root.size() + 1), LabelValue(v));
    }
    out += fmt::format("# TYPE {}_info gauge\n{}_info{{{}}} 1\n", root, root, labels);
  }
  return out;
}

}  // namespace engram
