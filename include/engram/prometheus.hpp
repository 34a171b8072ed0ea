// Statistics in the Prometheus text exposition format (version 0.0.4), from engram's JSON statistics
// (Prefetcher::StatsJson, gpu::WorkingSet::StatsJson), so that a serving deployment can scrape them.
//
// Every number or boolean of the JSON becomes a sample named <prefix>_<path>, the object keys on the way
// joined by '_' (characters outside [a-zA-Z0-9_] become '_'). An array of objects gives one series per
// element, labelled layer="<layer_id>" when the element has a layer_id field, else index="<i>". Strings
// become labels of one <prefix>_info sample (value 1). Each metric is typed gauge (counters and gauges
// are not told apart in the JSON).
#pragma once

#include <string>
#include <string_view>

#include "engram/status.hpp"

namespace engram {

// kInvalidArgument if `json` is not a JSON object.
[[nodiscard]] Result<std::string> PrometheusFromJson(std::string_view json, std::string_view prefix = "engram");

}  // namespace engram
