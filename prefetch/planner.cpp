// The capacity planner's workload replay and timing model (engram/prefetch/planner.hpp).
#include "engram/prefetch/planner.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "../core/fenwick.hpp"
#include "../core/percentile.hpp"
#include "engram/hasher.hpp"
#include "engram/memory/cache_sim.hpp"
#include "engram/memory/row_cache_policy.hpp"

namespace engram::plan {
namespace {

constexpr std::uint64_t kFirst = std::numeric_limits<std::uint64_t>::max();

// Distinct rows of one step and layer with their lookup counts.
void Distinct(std::vector<std::int64_t>& rows, std::vector<std::int64_t>& keys, std::vector<std::uint32_t>& counts) {
  std::sort(rows.begin(), rows.end());
  keys.clear();
  counts.clear();
  for (std::size_t i = 0; i < rows.size();) {
    std::size_t j = i;
    while (j < rows.size() && rows[j] == rows[i]) ++j;
    keys.push_back(rows[i]);
    counts.push_back(static_cast<std::uint32_t>(j - i));
    i = j;
  }
}

}  // namespace

Result<Workload> Workload::Build(const Layout& layout, std::span<const std::int32_t> ids, std::vector<Phase> phases,
                                 ModelPlacement model) {
  if (static_cast<int>(model.engram_at.size()) != layout.num_layers()) {
    return Status::InvalidArgument(fmt::format("plan: {} Engram layer placements for a layout of {} layers",
                                               model.engram_at.size(), layout.num_layers()));
  }
  for (std::size_t j = 0; j < model.engram_at.size(); ++j) {
    if (model.engram_at[j] < 0 || model.engram_at[j] >= model.layers ||
        (j > 0 && model.engram_at[j] <= model.engram_at[j - 1])) {
      return Status::InvalidArgument(
          fmt::format("plan: Engram layer {} at backbone layer {}: placements must increase and lie in 0..{}", j,
                      model.engram_at[j], model.layers - 1));
    }
  }
  for (const Phase& p : phases) {
    const std::size_t have = WorkloadSteps(ids.size(), p.shape);
    if (p.shape.sequences == 0 || p.shape.tokens == 0 || p.steps == 0) {
      return Status::InvalidArgument(fmt::format("plan: phase {} has no sequences, tokens or steps", p.name));
    }
    if (p.warmup + p.lead_in + p.steps > have) {
      return Status::OutOfRange(
          fmt::format("plan: phase {} needs {} steps of {} sequences x {} tokens; the trace of {} tokens holds {}",
                      p.name, p.warmup + p.lead_in + p.steps, p.shape.sequences, p.shape.tokens, ids.size(), have));
    }
  }
  ENGRAM_ASSIGN_OR_RETURN(Hasher hasher, Hasher::Create(layout));
  const auto cols = static_cast<std::size_t>(layout.columns());
  const auto layers = static_cast<std::size_t>(layout.num_layers());
  Workload w;
  w.phases_ = std::move(phases);
  w.model_ = std::move(model);
  w.heads_ = layout.heads();
  for (int l = 0; l < layout.num_layers(); ++l) w.table_rows_ += static_cast<std::uint64_t>(layout.layer_rows(l));
  // Which column (region) a layer's global row id lies in, for its n-gram order.
  auto order_of = [&](std::size_t l, std::int64_t row) {
    int c = 0;
    while (c + 1 < layout.columns() && layout.region_offset(static_cast<int>(l), c + 1) <= row) ++c;
    return static_cast<std::uint8_t>(2 + c / layout.heads());
  };

  // Every step's distinct rows per layer, in replay order.
  std::vector<std::int64_t> rows, keys, r;
  std::vector<std::uint32_t> counts;
  for (std::size_t ph = 0; ph < w.phases_.size(); ++ph) {
    const Phase& p = w.phases_[ph];
    const std::size_t total = p.warmup + p.lead_in + p.steps;
    // Decode: each sequence's rows over its whole history, hashed once per layer.
    std::vector<std::vector<std::int64_t>> decode_rows;  // [layer * sequences + q]
    if (p.shape.decode()) {
      decode_rows.resize(layers * p.shape.sequences);
      for (std::size_t l = 0; l < layers; ++l) {
        for (std::size_t q = 0; q < p.shape.sequences; ++q) {
          const auto hist = WorkloadHistory(ids, p.shape, total - 1, q);
          auto& out = decode_rows[l * p.shape.sequences + q];
          out.resize(hist.size() * cols);
          ENGRAM_RETURN_IF_ERROR(HashFreshSequences(hasher.layer(static_cast<int>(l)), hist, 0, out));
        }
      }
    }
    for (std::size_t k = 0; k < total; ++k) {
      for (std::size_t l = 0; l < layers; ++l) {
        rows.clear();
        for (std::size_t q = 0; q < p.shape.sequences; ++q) {
          if (p.shape.decode()) {
            const auto& d = decode_rows[l * p.shape.sequences + q];
            rows.insert(rows.end(), d.begin() + static_cast<std::ptrdiff_t>(k * cols),
                        d.begin() + static_cast<std::ptrdiff_t>((k + 1) * cols));
          } else {
            const auto t = WorkloadTokens(ids, p.shape, k, q);
            r.resize(t.size() * cols);
            ENGRAM_RETURN_IF_ERROR(HashFreshSequences(hasher.layer(static_cast<int>(l)), t, 0, r));
            rows.insert(rows.end(), r.begin(), r.end());
          }
        }
        Distinct(rows, keys, counts);
        w.spans_.push_back({static_cast<std::uint32_t>(ph), static_cast<std::uint32_t>(k),
                            static_cast<std::uint32_t>(l), k >= p.warmup, w.key_.size(), keys.size()});
        for (std::size_t i = 0; i < keys.size(); ++i) {
          w.key_.push_back(memory::RowKey(static_cast<int>(l), keys[i]));
          w.lookups_.push_back(counts[i]);
          w.order_.push_back(order_of(l, keys[i]));
        }
      }
    }
  }
  // LRU stack distances (distinct rows accessed since the row's previous access).
  w.distance_.assign(w.key_.size(), kFirst);
  detail::Fenwick<std::int64_t> fw(w.key_.size());
  std::unordered_map<std::uint64_t, std::pair<std::size_t, std::uint32_t>> last;  // key -> (last access, id)
  last.reserve(w.key_.size());
  w.id_.resize(w.key_.size());
  for (std::size_t i = 0; i < w.key_.size(); ++i) {
    auto [it, inserted] = last.try_emplace(w.key_[i], i, static_cast<std::uint32_t>(last.size()));
    if (!inserted) {
      w.distance_[i] = static_cast<std::uint64_t>((i == 0 ? 0 : fw.Prefix(i - 1)) - fw.Prefix(it->second.first));
      fw.Add(it->second.first, -1);
      it->second.first = i;
    }
    w.id_[i] = it->second.second;
    fw.Add(i, 1);
  }
  w.distinct_ = last.size();
  return w;
}

std::vector<double> Workload::HitCurve(std::span<const std::uint64_t> rows) const {
  std::vector<double> hits(rows.size(), 0);
  double all = 0;
  for (const Span& s : spans_) {
    if (!s.measured) continue;
    all += static_cast<double>(s.count);
    for (std::size_t i = s.first; i < s.first + s.count; ++i) {
      for (std::size_t c = 0; c < rows.size(); ++c) {
        if (distance_[i] != kFirst && distance_[i] < rows[c]) hits[c] += 1;
      }
    }
  }
  for (double& h : hits) h = all > 0 ? h / all : 0;
  return hits;
}

std::pair<std::uint64_t, std::uint64_t> Workload::Capacities(const Tiers& tiers, std::uint32_t row_bytes) const {
  const bool device = tiers.path == PlanPath::kDevice;
  // The working set's directory: 8 B per slot and its hash table (~36 B) for the staged path; 24 B per slot
  // and 8 B per set of 16 for the device pipeline (gpu/working_set.hpp).
  const std::uint64_t g =
      tiers.hbm_cache_rows != 0 ? tiers.hbm_cache_rows : tiers.hbm_cache_bytes / (row_bytes + (device ? 25ULL : 44ULL));
  const std::uint64_t h = tiers.host_cache_rows != 0 ? tiers.host_cache_rows : tiers.host_cache_bytes / row_bytes;
  return {g, h};
}

namespace {
// The simulated policy cache's size: one that holds every row the replay reads in its small FIFO decides
// the same as any larger one (Serve).
std::uint64_t PolicyCap(std::size_t distinct) {
  const memory::RowCachePolicyOptions po;
  return static_cast<std::uint64_t>(static_cast<double>(distinct) / po.small_fraction) + 64;
}
// Per simulated policy slot: the policy's arrays (key, reads, priority, weight, place, queue position,
// queue entry) and the simulation's id; per distinct row and simulation: its slot and shard.
constexpr std::uint64_t kPolicySlotBytes = 8 + 4 + 4 + 4 + 1 + 4 + 4 + 4;
constexpr std::uint64_t kSetSlotBytes = 8 + 8;  // a touched set's key and way, per slot
}  // namespace

std::uint64_t Workload::PredictBytes(const Tiers& tiers, std::uint32_t row_bytes) const {
  std::uint64_t bytes = key_.size();  // the tier of every access
  if (tiers.hbm_all || tiers.cache_model == CacheModel::kLru) return bytes;
  const auto [g, h] = Capacities(tiers, row_bytes);
  const std::uint64_t most = PolicyCap(distinct_);
  const bool device = tiers.path == PlanPath::kDevice;
  const std::uint64_t policy_slots = (device ? 0 : std::min(g, most)) + (tiers.host_resident ? 0 : std::min(h, most));
  bytes += policy_slots * kPolicySlotBytes + 2 * 8 * static_cast<std::uint64_t>(distinct_);
  if (device) bytes += std::min<std::uint64_t>(g, static_cast<std::uint64_t>(distinct_)) * kSetSlotBytes;
  return bytes;
}

std::vector<std::uint8_t> Workload::Serve(const Tiers& tiers, std::uint32_t row_bytes) const {
  std::vector<std::uint8_t> tier(key_.size(), 0);
  if (tiers.hbm_all) return tier;
  const auto [g, h] = Capacities(tiers, row_bytes);
  const bool device = tiers.path == PlanPath::kDevice;
  if (tiers.cache_model == CacheModel::kLru) {
    for (std::size_t i = 0; i < key_.size(); ++i) {
      const std::uint64_t d = distance_[i];
      if (d != kFirst && d < g) {
        tier[i] = 0;
      } else {
        tier[i] = tiers.host_resident || (d != kFirst && d < h) ? 1 : 2;
      }
    }
    return tier;
  }
  // A policy cache whose small FIFO holds every row the replay reads never drops one: a larger cache
  // decides the same, so the simulation stops there (a 64 GiB host tier would otherwise simulate 260 M
  // slots).
  const memory::RowCachePolicyOptions po;
  const std::uint64_t most = PolicyCap(distinct_);
  memory::PolicyCacheSim hbm_policy(device ? 0 : std::min(g, most), po, 1, distinct_);
  memory::SetCacheSim hbm_sets(device ? g : 0);
  memory::PolicyCacheSim host(tiers.host_resident ? 0 : std::min(h, most), po,
                              memory::PolicyCacheSim::HostTierShards(std::min(h, most)), distinct_);
  for (const Span& s : spans_) {
    for (std::size_t i = s.first; i < s.first + s.count; ++i) {
      const std::uint64_t key = key_[i];
      if (device ? hbm_sets.Lookup(key) : hbm_policy.Lookup(id_[i])) {
        tier[i] = 0;
        continue;
      }
      if (tiers.host_resident || host.Lookup(id_[i])) {
        tier[i] = 1;
      } else {
        tier[i] = 2;
        host.Admit(id_[i], key, order_[i]);
      }
      // The host-run policy decides as it plans the layer; the device pipeline admits after the layer.
      if (!device) hbm_policy.Admit(id_[i], key, order_[i]);
    }
    if (device) {
      for (std::size_t i = s.first; i < s.first + s.count; ++i) {
        if (tier[i] != 0) hbm_sets.Admit(key_[i], order_[i]);
      }
    }
  }
  return tier;
}

Plan Workload::Predict(const Tiers& tiers, const Calibration& cal, std::uint32_t row_bytes) const {
  Plan plan;
  plan.tiers = tiers;
  const std::vector<std::uint8_t> tier = Serve(tiers, row_bytes);
  auto rate = [](double n, double per_s) { return n <= 0 ? 0.0 : (per_s > 0 ? n / per_s : 0.0); };
  const bool device = tiers.hbm_all || tiers.path == PlanPath::kDevice;
  const std::size_t modules = model_.engram_at.size();
  // The store's page: rows_per_page consecutive rows (its default: as many as fit 4 KiB).
  const std::uint64_t rows_per_page =
      cal.store_rows_per_page != 0 ? cal.store_rows_per_page : std::max<std::uint64_t>(1, 4096 / row_bytes);
  std::vector<std::uint64_t> pages;
  std::size_t at = 0;  // the next span
  for (std::size_t ph = 0; ph < phases_.size(); ++ph) {
    const Phase& p = phases_[ph];
    PhasePlan pp;
    pp.name = p.name;
    pp.steps = p.steps;
    pp.tokens_per_step = p.shape.step_tokens();
    pp.compute_s = p.layer_seconds * model_.layers;
    pp.layers.resize(modules);
    PhasePlan lead;  // what lead-in steps add up to (timed, not counted)
    lead.layers.resize(modules);
    std::vector<std::vector<double>> stalls(modules);
    double gpu_free = 0, host_free = 0, prev_start = 0, first_start = 0;
    while (at < spans_.size() && spans_[at].phase == ph && !spans_[at].measured) ++at;
    for (std::size_t k = 0; k < p.lead_in + p.steps; ++k) {
      PhasePlan& acc = k >= p.lead_in ? pp : lead;
      // Decode: submitted when the step before ended; prefill: when the chunk before started (the first
      // chunk, counted or lead-in, just before its own).
      const double submit = p.shape.decode() || k == 0 ? gpu_free : prev_start;
      double host_t = std::max(submit, host_free);
      double contention = 0;
      double dev_t = submit + (device ? cal.h2d_fixed_s : 0);  // device pipeline: the windows' upload
      std::vector<double> ready(modules);
      for (std::size_t j = 0; j < modules; ++j, ++at) {
        const Span& sp = spans_[at];
        double lookups = 0, hbm = 0, host = 0, disk = 0, missed_lookups = 0;
        pages.clear();
        for (std::size_t i = sp.first; i < sp.first + sp.count; ++i) {
          lookups += lookups_[i];
          if (tier[i] == 0) {
            hbm += 1;
          } else {
            missed_lookups += lookups_[i];
            (tier[i] == 1 ? host : disk) += 1;
            if (tier[i] == 2) pages.push_back(key_[i] / rows_per_page);
          }
        }
        // The store reads whole pages, and adjacent pages together (RocksDB's MultiGet coalesces them): disk
        // rows cost one read per run of consecutive pages (keys are in row order within a layer).
        double reads = 0;
        for (std::size_t i = 0; i < pages.size(); ++i) {
          if (i == 0 || pages[i] > pages[i - 1] + 1) reads += 1;
        }
        const auto distinct = static_cast<double>(sp.count);
        LayerPlan& lp = acc.layers[j];
        lp.layer_index = static_cast<int>(j);
        lp.at = model_.engram_at[j];
        lp.lookups += lookups;
        lp.distinct += distinct;
        lp.hbm_rows += hbm;
        lp.host_rows += host;
        lp.disk_rows += disk;
        lp.disk_reads += reads;
        if (device) {
          // Every lookup resolved on the GPU: HBM hits, and reads of mapped host memory for the rest.
          const double t = cal.launch_s + rate(lookups - missed_lookups, cal.hbm_rows_per_s) +
                           rate(missed_lookups, cal.zero_copy_rows_per_s);
          dev_t += t;
          acc.device_s += t;
          const double extra =
              std::max(0.0, rate(missed_lookups, cal.zero_copy_rows_per_s) - rate(missed_lookups, cal.hbm_rows_per_s));
          contention += extra;
          acc.contention_s += extra;
          ready[j] = dev_t;
        } else {
          const double hash = rate(lookups, cal.hash_lookups_per_s);
          const double dedupe = rate(lookups, cal.dedupe_lookups_per_s);
          const double io = disk > 0 ? StoreReadSeconds(cal, reads) : 0;
          const double gather = rate(host + disk, cal.gather_rows_per_s);
          const double bytes = (host + disk) * row_bytes;
          const double copy = bytes > 0 ? cal.h2d_fixed_s + rate(bytes, cal.h2d_bytes_per_s) : 0;
          const double assemble = cal.launch_s + rate(lookups, cal.hbm_rows_per_s);
          host_t += hash + dedupe + io + gather;
          ready[j] = host_t + copy + assemble;
          lp.pcie_bytes += bytes;
          acc.hash_s += hash;
          acc.dedupe_s += dedupe;
          acc.disk_s += io;
          acc.gather_s += gather;
          acc.copy_s += copy;
          acc.device_s += assemble;
        }
        lp.ready_s += ready[j] - submit;
      }
      host_free = host_t;
      const double start = gpu_free;
      if (k == p.lead_in) first_start = start;
      double stalled = 0;
      for (std::size_t j = 0; j < modules; ++j) {
        const double arrive = start + model_.engram_at[j] * p.layer_seconds + stalled;
        const double s = std::max(0.0, ready[j] - arrive);
        if (k >= p.lead_in) stalls[j].push_back(s);
        stalled += s;
      }
      prev_start = start;
      gpu_free = start + pp.compute_s + stalled + contention;
    }
    const double n = static_cast<double>(std::max<std::size_t>(p.steps, 1));
    const double elapsed = gpu_free - first_start;
    pp.step_s = elapsed / n;
    pp.tokens_per_s = elapsed > 0 ? static_cast<double>(pp.tokens_per_step) * n / elapsed : 0;
    pp.loss_vs_compute = pp.step_s > 0 ? 1 - pp.compute_s / pp.step_s : 0;
    for (double* x : {&pp.hash_s, &pp.dedupe_s, &pp.disk_s, &pp.gather_s, &pp.copy_s, &pp.device_s, &pp.contention_s})
      *x /= n;
    for (std::size_t j = 0; j < modules; ++j) {
      LayerPlan& lp = pp.layers[j];
      for (double* x : {&lp.lookups, &lp.distinct, &lp.hbm_rows, &lp.host_rows, &lp.disk_rows, &lp.disk_reads,
                        &lp.pcie_bytes, &lp.ready_s}) {
        *x /= n;
      }
      double sum = 0;
      for (double s : stalls[j]) sum += s;
      lp.stall_mean_s = sum / n;
      lp.stall_p50_s = detail::Percentile(stalls[j], 0.5);
      lp.stall_p95_s = detail::Percentile(stalls[j], 0.95);
      lp.stall_p99_s = detail::Percentile(stalls[j], 0.99);
    }
    const std::pair<double, const char*> parts[] = {
        {pp.disk_s, "disk reads (store)"},
        {pp.gather_s, "host gather (memory bandwidth, CPU)"},
        {pp.hash_s + pp.dedupe_s, "host hashing and de-duplication (CPU)"},
        {pp.copy_s, "PCIe copies"},
        {pp.device_s, device ? "GPU reads (HBM, zero-copy over PCIe)" : "GPU assembly"}};
    const auto* most = std::max_element(std::begin(parts), std::end(parts),
                                        [](const auto& a, const auto& b) { return a.first < b.first; });
    pp.bound = most->second;
    plan.phases.push_back(std::move(pp));
  }
  return plan;
}

double StoreReadSeconds(const Calibration& c, double pages) noexcept {
  if (pages <= 0) return 0;
  const auto& pts = c.store_read_points;  // ascending (CalibrateHost, ParseCalibration)
  if (pts.size() < 2) return c.store_read_fixed_s + (c.store_pages_per_s > 0 ? pages / c.store_pages_per_s : 0);
  if (pages <= pts.front().first) return pts.front().second;
  std::size_t i = 1;
  while (i + 1 < pts.size() && pts[i].first < pages) ++i;
  // Between points i-1 and i, or on the last segment extended.
  const auto& [x0, y0] = pts[i - 1];
  const auto& [x1, y1] = pts[i];
  const double slope = x1 > x0 ? (y1 - y0) / (x1 - x0) : 0;
  return std::max(0.0, y0 + slope * (pages - x0));
}

std::string CalibrationJson(const Calibration& c) {
  nlohmann::ordered_json j;
  j["machine"] = c.machine;
  j["date"] = c.date;
  j["host"] = {{"threads", c.host_threads},
               {"gather_row_bytes", c.gather_row_bytes},
               {"gather_rows_per_s", c.gather_rows_per_s},
               {"hash_lookups_per_s", c.hash_lookups_per_s},
               {"dedupe_lookups_per_s", c.dedupe_lookups_per_s},
               {"pin_bytes_per_s", c.pin_bytes_per_s},
               {"pin_path", c.pin_path}};
  j["disk"] = {{"file", c.disk_file}, {"qd1_latency_s", c.disk_qd1_latency_s}, {"iops_qd128", c.disk_iops}};
  j["store"] = {{"path", c.store},
                {"rows_per_page", c.store_rows_per_page},
                {"read_fixed_s", c.store_read_fixed_s},
                {"pages_per_s", c.store_pages_per_s},
                {"points", c.store_read_points}};
  j["gpu"] = {{"name", c.gpu},
              {"h2d_fixed_s", c.h2d_fixed_s},
              {"h2d_bytes_per_s", c.h2d_bytes_per_s},
              {"zero_copy_rows_per_s", c.zero_copy_rows_per_s},
              {"hbm_rows_per_s", c.hbm_rows_per_s},
              {"launch_s", c.launch_s}};
  return j.dump(2) + "\n";
}

Result<Calibration> ParseCalibration(std::string_view json, std::string_view source) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument(fmt::format("{}: not a JSON object", source));
  }
  Calibration c;
  std::string err;
  auto num = [&](const char* section, const char* key, double& out) {
    if (!err.empty()) return;
    const auto s = j.find(section);
    if (s == j.end() || !s->is_object()) {
      err = fmt::format("{}: missing object \"{}\"", source, section);
      return;
    }
    const auto v = s->find(key);
    if (v == s->end() || !v->is_number() || v->get<double>() < 0 || !std::isfinite(v->get<double>())) {
      err = fmt::format("{}: \"{}.{}\" must be a non-negative number", source, section, key);
      return;
    }
    out = v->get<double>();
  };
  auto str = [&](const char* section, const char* key, std::string& out) {
    if (!err.empty()) return;
    const auto s = j.find(section);
    if (s == j.end() || !s->is_object() || !s->contains(key) || !(*s)[key].is_string()) {
      err = fmt::format("{}: \"{}.{}\" must be a string", source, section, key);
      return;
    }
    out = (*s)[key].get<std::string>();
  };
  if (j.contains("machine") && j["machine"].is_string()) c.machine = j["machine"].get<std::string>();
  if (j.contains("date") && j["date"].is_string()) c.date = j["date"].get<std::string>();
  double threads = 0, row_bytes = 0;
  num("host", "threads", threads);
  num("host", "gather_row_bytes", row_bytes);
  num("host", "gather_rows_per_s", c.gather_rows_per_s);
  num("host", "hash_lookups_per_s", c.hash_lookups_per_s);
  num("host", "dedupe_lookups_per_s", c.dedupe_lookups_per_s);
  num("host", "pin_bytes_per_s", c.pin_bytes_per_s);
  str("host", "pin_path", c.pin_path);
  str("disk", "file", c.disk_file);
  num("disk", "qd1_latency_s", c.disk_qd1_latency_s);
  num("disk", "iops_qd128", c.disk_iops);
  str("store", "path", c.store);
  num("store", "read_fixed_s", c.store_read_fixed_s);
  double rpp = 0;
  num("store", "rows_per_page", rpp);
  num("store", "pages_per_s", c.store_pages_per_s);
  str("gpu", "name", c.gpu);
  num("gpu", "h2d_fixed_s", c.h2d_fixed_s);
  num("gpu", "h2d_bytes_per_s", c.h2d_bytes_per_s);
  num("gpu", "zero_copy_rows_per_s", c.zero_copy_rows_per_s);
  num("gpu", "hbm_rows_per_s", c.hbm_rows_per_s);
  num("gpu", "launch_s", c.launch_s);
  if (const auto st = j.find("store"); err.empty() && st != j.end() && st->contains("points")) {
    const auto& pts = (*st)["points"];
    bool ok = pts.is_array();
    for (std::size_t i = 0; ok && i < pts.size(); ++i) {
      ok = pts[i].is_array() && pts[i].size() == 2 && pts[i][0].is_number() && pts[i][1].is_number() &&
           pts[i][0].get<double>() > 0 && pts[i][1].get<double>() >= 0;
      if (ok) c.store_read_points.emplace_back(pts[i][0].get<double>(), pts[i][1].get<double>());
    }
    if (!ok) err = fmt::format("{}: \"store.points\" must be [[pages, seconds], ...] of positive numbers", source);
    std::sort(c.store_read_points.begin(), c.store_read_points.end());
  }
  if (!err.empty()) return Status::InvalidArgument(err);
  c.host_threads = static_cast<std::uint32_t>(threads);
  c.store_rows_per_page = static_cast<std::uint32_t>(rpp);
  c.gather_row_bytes = static_cast<std::uint32_t>(row_bytes);
  return c;
}

std::string PlanJson(const Plan& plan) {
  nlohmann::ordered_json j;
  const Tiers& t = plan.tiers;
  j["tiers"] = {{"name", t.name},
                {"hbm_all", t.hbm_all},
                {"host_resident", t.host_resident},
                {"hbm_cache_bytes", t.hbm_cache_bytes},
                {"host_cache_bytes", t.host_cache_bytes},
                {"path", t.hbm_all || t.path == PlanPath::kDevice ? "device" : "staged"}};
  j["phases"] = nlohmann::ordered_json::array();
  for (const PhasePlan& p : plan.phases) {
    nlohmann::ordered_json pj;
    pj["name"] = p.name;
    pj["steps"] = p.steps;
    pj["tokens_per_step"] = p.tokens_per_step;
    pj["compute_s"] = p.compute_s;
    pj["step_s"] = p.step_s;
    pj["tokens_per_s"] = p.tokens_per_s;
    pj["loss_vs_compute"] = p.loss_vs_compute;
    pj["per_step_s"] = {{"hash", p.hash_s},
                        {"dedupe", p.dedupe_s},
                        {"disk", p.disk_s},
                        {"gather", p.gather_s},
                        {"copy", p.copy_s},
                        {"device", p.device_s},
                        {"contention", p.contention_s}};
    pj["bound"] = p.bound;
    pj["layers"] = nlohmann::ordered_json::array();
    for (const LayerPlan& l : p.layers) {
      pj["layers"].push_back(
          {{"layer_index", l.layer_index},
           {"at", l.at},
           {"lookups", l.lookups},
           {"distinct", l.distinct},
           {"rows", {{"hbm", l.hbm_rows}, {"host", l.host_rows}, {"disk", l.disk_rows}}},
           {"disk_reads", l.disk_reads},
           {"pcie_bytes", l.pcie_bytes},
           {"ready_s", l.ready_s},
           {"stall_s",
            {{"mean", l.stall_mean_s}, {"p50", l.stall_p50_s}, {"p95", l.stall_p95_s}, {"p99", l.stall_p99_s}}}});
    }
    j["phases"].push_back(std::move(pj));
  }
  return j.dump(2) + "\n";
}

}  // namespace engram::plan
