// engram calibrate: measure this machine's rates for the planner, saved as JSON.
// engram plan: predict, for budget splits of GPU and host memory, each tier's share of a workload's rows,
// the stall per Engram layer and the throughput loss; recommend a split; or compare the prediction with a
// measured bench_model run (--compare). docs/capacity-planning.md.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "../../core/file.hpp"
#include "../../core/thread_pool.hpp"
#include "commands.hpp"
#include "engram/prefetch/planner.hpp"
#include "engram/store/store.hpp"
#ifdef ENGRAM_CLI_WITH_GPU
#include "engram/gpu/calibrate.hpp"
#endif

namespace engram::cli {
namespace {

struct CalibrateArgs {
  plan::CalibrateOptions o;
  std::string out;
  bool no_gpu = false;
};

struct PlanArgs {
  std::string layout, store, tokens, token_map, calibration, json, plot, compare;
  bool compressed = false;
  int model_layers = 40;
  std::vector<int> engram_at;
  double layer_ms_decode = 0, layer_ms_prefill = 0;
  std::size_t decode = 64;
  std::vector<std::size_t> prefill = {4, 4096};
  std::size_t decode_steps = 48, prefill_steps = 4, warmup_decode = 128, warmup_prefill = 2;
  std::uint64_t gpu_mem = 0, host_mem = 0;
  double target_loss = 0.01;
};

std::string Gib(double bytes) {
  return fmt::format("{:.2f} GiB", bytes / (1ULL << 30));
}

// The memory the kernel says is available (MemAvailable), or the free pages where /proc is not readable.
std::uint64_t AvailableMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("MemAvailable:", 0) == 0) return std::strtoull(line.c_str() + 13, nullptr, 10) * 1024;  // kB
  }
  const long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page) : 1ULL << 30;
}

int RunCalibrate(const CalibrateArgs& a) {
  auto c = plan::CalibrateHost(a.o);
  if (!c.ok()) return Fail("calibrate", c.status());
  std::string gpu_note;
#ifdef ENGRAM_CLI_WITH_GPU
  if (!a.no_gpu) {
    if (Status s = gpu::CalibrateDevice(*c, a.o.seconds); !s.ok()) {
      if (s.code() != StatusCode::kUnavailable) return Fail("calibrate", s);
      gpu_note = "no GPU: " + s.message();
    }
  } else {
    gpu_note = "GPU not measured (--no-gpu)";
  }
#else
  gpu_note = "GPU not measured: this engram was built without CUDA";
#endif
  const std::string json = plan::CalibrationJson(*c);
  std::printf("calibration of %s (%s), %u host threads\n", c->machine.c_str(), c->date.c_str(), c->host_threads);
  std::printf("  host gather        %.3g rows/s of %u B\n", c->gather_rows_per_s, c->gather_row_bytes);
  std::printf("  hashing            %.3g lookups/s; de-duplication %.3g lookups/s (one thread)\n",
              c->hash_lookups_per_s, c->dedupe_lookups_per_s);
  std::printf("  pinning            %.3g GB/s (%s)\n", c->pin_bytes_per_s / 1e9, c->pin_path.c_str());
  if (!c->disk_file.empty()) {
    std::printf("  disk %s: 4 KiB random reads %.0f us at QD1, %.0f IOPS at QD128\n", c->disk_file.c_str(),
                1e6 * c->disk_qd1_latency_s, c->disk_iops);
  } else {
    std::printf("  disk               not measured (--disk-file)\n");
  }
  if (!c->store.empty()) {
    std::printf("  store %s: a read of P pages (%u rows each) takes %.0f us + P / %.3g pages/s\n", c->store.c_str(),
                c->store_rows_per_page, 1e6 * c->store_read_fixed_s, c->store_pages_per_s);
  } else {
    std::printf("  store              not measured (--store)\n");
  }
  if (!c->gpu.empty()) {
    std::printf("  GPU %s: copies %.1f us + B / %.1f GB/s; zero-copy %.3g rows/s; HBM %.3g rows/s; launch %.1f us\n",
                c->gpu.c_str(), 1e6 * c->h2d_fixed_s, c->h2d_bytes_per_s / 1e9, c->zero_copy_rows_per_s,
                c->hbm_rows_per_s, 1e6 * c->launch_s);
  } else {
    std::printf("  GPU                %s\n", gpu_note.c_str());
  }
  if (!a.out.empty()) {
    if (Status s = detail::WriteFile(a.out, std::as_bytes(std::span(json))); !s.ok()) return Fail("calibrate", s);
    std::printf("wrote %s\n", a.out.c_str());
  } else {
    std::fputs(json.c_str(), stdout);
  }
  return 0;
}

// What a plan needs from the calibration for the tiers it predicts; the missing rates named.
Status CheckCalibration(const plan::Calibration& c, bool disk, bool gpu) {
  std::vector<std::string> missing;
  if (c.gather_rows_per_s <= 0) missing.emplace_back("host.gather_rows_per_s");
  if (c.hash_lookups_per_s <= 0) missing.emplace_back("host.hash_lookups_per_s");
  if (c.dedupe_lookups_per_s <= 0) missing.emplace_back("host.dedupe_lookups_per_s");
  if (disk && c.store_pages_per_s <= 0 && c.store_read_points.size() < 2) {
    missing.emplace_back("store.pages_per_s (calibrate with --store)");
  }
  if (gpu && (c.h2d_bytes_per_s <= 0 || c.hbm_rows_per_s <= 0 || c.zero_copy_rows_per_s <= 0)) {
    missing.emplace_back("gpu rates (calibrate on a machine with the GPU)");
  }
  if (missing.empty()) return Status::Ok();
  std::string list;
  for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
  return Status::FailedPrecondition("the calibration lacks " + list);
}

double WorstLoss(const plan::Plan& p) {
  double w = 0;
  for (const auto& ph : p.phases) w = std::max(w, ph.loss_vs_compute);
  return w;
}

// A chart of the worst phase's loss over the grid, one panel per phase: host budget across, GPU budget up.
std::string Svg(const std::vector<std::string>& host_labels, const std::vector<std::string>& gpu_labels,
                const std::vector<std::vector<plan::Plan>>& grid, double target) {
  const int cw = 92, ch = 34, left = 110, top = 60;
  const std::size_t phases = grid.empty() || grid[0].empty() ? 0 : grid[0][0].phases.size();
  const int panel_w = left + cw * static_cast<int>(host_labels.size()) + 30;
  const int h = top + ch * static_cast<int>(gpu_labels.size()) + 70;
  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      panel_w * static_cast<int>(std::max<std::size_t>(phases, 1)), h);
  for (std::size_t ph = 0; ph < phases; ++ph) {
    const int x0 = static_cast<int>(ph) * panel_w;
    s += fmt::format(
        "<text x=\"{}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}: throughput loss (target {:.1f}%)</text>\n",
        x0 + 10, grid[0][0].phases[ph].name, 100 * target);
    for (std::size_t gi = 0; gi < gpu_labels.size(); ++gi) {
      const int y = top + ch * static_cast<int>(gpu_labels.size() - 1 - gi);
      s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", x0 + left - 6, y + ch / 2 + 4,
                       gpu_labels[gi]);
      for (std::size_t hi = 0; hi < host_labels.size(); ++hi) {
        const double loss = grid[gi][hi].phases[ph].loss_vs_compute;
        // Green at 0, yellow at the target, red at 10x the target and beyond.
        const double t = std::clamp(std::log10(1 + 9 * loss / std::max(target, 1e-9)) / 2, 0.0, 1.0);
        const int r = static_cast<int>(std::min(1.0, 2 * t) * 220 + 30);
        const int g = static_cast<int>(std::min(1.0, 2 * (1 - t)) * 190 + 30);
        const int x = x0 + left + cw * static_cast<int>(hi);
        s += fmt::format(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"rgb({},{},60)\" stroke=\"white\"/>"
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.1f}%</text>\n",
            x, y, cw, ch, r, g, x + cw / 2, y + ch / 2 + 4, 100 * loss);
      }
    }
    for (std::size_t hi = 0; hi < host_labels.size(); ++hi) {
      s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                       x0 + left + cw * static_cast<int>(hi) + cw / 2,
                       top + ch * static_cast<int>(gpu_labels.size()) + 18, host_labels[hi]);
    }
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">host memory for the tables</text>\n",
                     x0 + left + cw * static_cast<int>(host_labels.size()) / 2,
                     top + ch * static_cast<int>(gpu_labels.size()) + 40);
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">GPU memory (HBM cache)</text>\n", x0 + 55,
                     top - 12);
  }
  s += "</svg>\n";
  return s;
}

void PrintPlanRow(const plan::Plan& p, const std::string& gpu, const std::string& host) {
  std::printf("%-12s %-18s %-7s", gpu.c_str(), host.c_str(),
              p.tiers.hbm_all || p.tiers.path == plan::PlanPath::kDevice ? "device" : "staged");
  for (const auto& ph : p.phases) {
    double hbm = 0, hst = 0, dsk = 0, distinct = 0, p99 = 0;
    for (const auto& l : ph.layers) {
      hbm += l.hbm_rows;
      hst += l.host_rows;
      dsk += l.disk_rows;
      distinct += l.distinct;
      p99 = std::max(p99, l.stall_p99_s);
    }
    const double d = std::max(distinct, 1.0);
    std::printf(" | %3.0f/%3.0f/%3.0f%% %8.0f %7.2f %7.2f %6.2f%%", 100 * hbm / d, 100 * hst / d, 100 * dsk / d, dsk,
                1e3 * ph.disk_s, 1e3 * p99, 100 * ph.loss_vs_compute);
  }
  std::printf("\n");
}

int RunCompare(const PlanArgs& a, const Layout& layout, const std::vector<std::int32_t>& ids,
               const plan::Calibration& cal) {
  auto text = detail::ReadFileToString(a.compare);
  if (!text.ok()) return Fail("plan", text.status());
  const auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.contains("configs") || !j.contains("model")) {
    return Fail("plan", Status::InvalidArgument(a.compare + ": not a bench_model --json file"));
  }
  const nlohmann::json* none = nullptr;
  for (const auto& c : j["configs"]) {
    if (c["name"] == "none") none = &c;
  }
  if (none == nullptr) {
    return Fail("plan", Status::InvalidArgument(a.compare + ": has no configuration `none` (the backbone's time)"));
  }
  plan::ModelPlacement model;
  model.layers = j["model"]["layers"].get<int>();
  for (const auto& e : j["engram_layers"]) model.engram_at.push_back(e.get<int>());
  std::vector<plan::Phase> phases;
  for (const char* name : {"prefill", "decode"}) {
    const auto& pj = j[name];
    plan::Phase p;
    p.name = name;
    p.shape = {pj["sequences"].get<std::size_t>(), pj["tokens"].get<std::size_t>()};
    p.warmup = pj["warmup"].get<std::size_t>();
    p.steps = pj["steps"].get<std::size_t>();
    p.layer_seconds = (*none)[name]["step_ms_mean"].get<double>() / 1e3 / model.layers;
    p.lead_in = pj.value("lead_in", 0ULL);
    phases.push_back(p);
  }
  auto w = plan::Workload::Build(layout, ids, phases, model);
  if (!w.ok()) return Fail("plan", w.status());
  std::printf("comparing with %s (%s, GPU %s); backbone per layer: prefill %.3f ms, decode %.3f ms\n",
              a.compare.c_str(), j["layout"].get<std::string>().c_str(), j["gpu"].get<std::string>().c_str(),
              1e3 * phases[0].layer_seconds, 1e3 * phases[1].layer_seconds);
  std::printf("%-4s %-8s %-7s | %10s %10s | %12s %12s | %8s %8s | %8s %8s | %s\n", "cfg", "phase", "path", "stall pred",
              "measured", "loss pred", "measured", "disk/st", "measured", "reads/st", "measured",
              "within 15% or 0.5 pp");
  std::vector<plan::Plan> plans;
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  const plan::Plan* base = nullptr;
  const nlohmann::json* base_json = nullptr;
  plans.reserve(j["configs"].size());
  int checked = 0, within = 0;
  for (const auto& c : j["configs"]) {
    const std::string name = c["name"].get<std::string>();
    if (name == "none") continue;
    plan::Tiers t;
    t.name = name;
    t.hbm_all = name == "a" || name == "a2";  // a2: the baseline again (the run's noise)
    t.host_resident = name == "b";
    t.hbm_cache_bytes = c["hbm_cache_bytes"].get<std::uint64_t>();
    t.host_cache_bytes = c["host_cache_bytes"].get<std::uint64_t>();
    t.path = c["path"] == "device" ? plan::PlanPath::kDevice : plan::PlanPath::kStaged;
    t.hbm_cache_rows = c.value("hbm_cache_slots", 0ULL);
    t.host_cache_rows = c.value("host_cache_rows", 0ULL);
    if (Status s = CheckCalibration(cal, !t.hbm_all && !t.host_resident, true); !s.ok()) return Fail("plan", s);
    plans.push_back(w->Predict(t, cal, layout.row_bytes()));
    const plan::Plan& p = plans.back();
    if (name == "a") {
      base = &p;
      base_json = &c;
    }
    for (std::size_t ph = 0; ph < p.phases.size(); ++ph) {
      const auto& pp = p.phases[ph];
      const auto& m = c[pp.name];
      double pred_stall = 0, meas_stall = 0, pred_disk = 0, pred_reads = 0;
      for (const auto& l : pp.layers) {
        pred_stall += l.stall_mean_s;
        pred_disk += l.disk_rows;
        pred_reads += l.disk_reads;
      }
      for (const auto& s : m["stall_us"]) meas_stall += s["mean"].get<double>() * 1e-6;
      // The row counters cover the counted steps and the prefill's lead-in chunk.
      const double row_steps = m.value("row_steps", m["steps"].get<double>() + static_cast<double>(phases[ph].lead_in));
      const double meas_disk = m["rows"]["disk"].get<double>() / std::max(1.0, row_steps);
      const double meas_reads = m["rows"]["disk_reads"].get<double>() / std::max(1.0, row_steps);
      const double step = m["step_ms_mean"].get<double>() * 1e-3;
      double pred_loss = 0, meas_loss = 0;
      if (base != nullptr && base_json != nullptr) {
        pred_loss = 1 - pp.tokens_per_s / base->phases[ph].tokens_per_s;
        meas_loss = m["loss"].get<double>();
      }
      // Stall as a share of the step, so both criteria are in the same units.
      const bool stall_ok =
          std::abs(pred_stall - meas_stall) <= std::max(0.15 * meas_stall, 0.005 * std::max(step, 1e-9));
      const bool loss_ok =
          name == "a" || std::abs(pred_loss - meas_loss) <= std::max(0.15 * std::abs(meas_loss), 0.005);
      checked += 2;
      within += static_cast<int>(stall_ok) + static_cast<int>(loss_ok);
      std::printf(
          "%-4s %-8s %-7s | %8.2fms %8.2fms | %11.2f%% %11.2f%% | %8.0f %8.0f | %8.0f %8.0f | stall %s, loss %s\n",
          name.c_str(), pp.name.c_str(),
          p.tiers.hbm_all || p.tiers.path == plan::PlanPath::kDevice ? "device" : "staged", 1e3 * pred_stall,
          1e3 * meas_stall, 100 * pred_loss, 100 * meas_loss, pred_disk, meas_disk, pred_reads, meas_reads,
          stall_ok ? "yes" : "NO", name == "a" ? "(baseline)" : (loss_ok ? "yes" : "NO"));
      out.push_back({{"config", name},
                     {"phase", pp.name},
                     {"stall_s", {{"predicted", pred_stall}, {"measured", meas_stall}}},
                     {"loss", {{"predicted", pred_loss}, {"measured", meas_loss}}},
                     {"disk_rows_per_step", {{"predicted", pred_disk}, {"measured", meas_disk}}},
                     {"disk_reads_per_step", {{"predicted", pred_reads}, {"measured", meas_reads}}},
                     {"per_step_s",
                      {{"hash", pp.hash_s},
                       {"dedupe", pp.dedupe_s},
                       {"disk", pp.disk_s},
                       {"gather", pp.gather_s},
                       {"copy", pp.copy_s},
                       {"device", pp.device_s},
                       {"contention", pp.contention_s}}},
                     {"bound", pp.bound},
                     {"stall_within", stall_ok},
                     {"loss_within", loss_ok}});
    }
  }
  std::printf("%d of %d comparisons within 15%% (or 0.5 pp of the step / of loss)\n", within, checked);
  if (!a.json.empty()) {
    const std::string s = out.dump(2) + "\n";
    if (a.json == "-") {
      std::fputs(s.c_str(), stdout);
    } else if (Status st = detail::WriteFile(a.json, std::as_bytes(std::span(s))); !st.ok()) {
      return Fail("plan", st);
    }
  }
  return 0;
}

int RunPlan(const PlanArgs& a) {
  if (!a.plot.empty() && (a.plot.size() < 4 || a.plot.substr(a.plot.size() - 4) != ".svg")) {
    return Fail("plan", Status::InvalidArgument("--plot " + a.plot +
                                                ": only SVG is written (name the file .svg; any browser shows it, "
                                                "and `rsvg-convert` makes a PNG)"));
  }
  Result<Layout> layout = Status::InvalidArgument("give --layout or --store");
  if (!a.store.empty()) {
    auto st = store::Store::Open(a.store);
    if (!st.ok()) return Fail("plan", st.status());
    layout = (*st)->layout();
  } else if (!a.layout.empty()) {
    layout = Layout::Resolve(a.layout);
  }
  if (!layout.ok()) return Fail("plan", layout.status());
  if (a.token_map.empty() && !a.compressed) {
    return Fail("plan", Status::InvalidArgument("give --token-map FILE, or --compressed"));
  }
  auto ids = LoadCompressedTokens(a.tokens, a.token_map, *layout);
  if (!ids.ok()) return Fail("plan", ids.status());
  plan::Calibration cal;
  if (!a.calibration.empty()) {
    auto c = plan::LoadCalibration(a.calibration);
    if (!c.ok()) return Fail("plan", c.status());
    cal = *c;
  } else {
    std::fprintf(stderr, "engram plan: no --calibration: measuring this machine's host rates now%s\n",
                 a.store.empty() ? " (no --store: disk tiers cannot be planned)" : " and the store's reads");
    plan::CalibrateOptions o;
    o.store = a.store;
    o.seconds = 0.25;
    auto c = plan::CalibrateHost(o);
    if (!c.ok()) return Fail("plan", c.status());
    cal = *c;
  }
  if (!a.compare.empty()) return RunCompare(a, *layout, *ids, cal);

  if (a.layer_ms_decode <= 0 || a.layer_ms_prefill <= 0) {
    return Fail("plan", Status::InvalidArgument(
                            "give --layer-ms-decode and --layer-ms-prefill: the backbone's compute time per layer "
                            "(bench_model's configuration `none` prints it)"));
  }
  if (a.prefill.size() != 2) return Fail("plan", Status::InvalidArgument("--prefill takes SEQUENCES,TOKENS"));
  plan::ModelPlacement model;
  model.layers = a.model_layers;
  model.engram_at = a.engram_at;
  if (model.engram_at.empty()) {
    for (int l = 0; l < layout->num_layers(); ++l) model.engram_at.push_back(layout->layer(l).layer_id);
  }
  // Prefill chunks in steady state: each submitted while the chunk before computes (a lead-in chunk first).
  std::vector<plan::Phase> phases = {
      {"prefill", {a.prefill[0], a.prefill[1]}, a.warmup_prefill, a.prefill_steps, a.layer_ms_prefill / 1e3, 1},
      {"decode", {a.decode, 1}, a.warmup_decode, a.decode_steps, a.layer_ms_decode / 1e3, 0}};
  auto w = plan::Workload::Build(*layout, *ids, phases, model);
  if (!w.ok()) return Fail("plan", w.status());
  const double table = static_cast<double>(w->table_rows()) * layout->row_bytes();
  const bool has_gpu = cal.h2d_bytes_per_s > 0;
  // The grid: GPU cache and host cache at 0, 1/8, 1/4, 1/2 and all of their budgets; the tables whole in
  // host memory or HBM where the budget holds them.
  std::vector<std::uint64_t> gpus, hosts;
  for (double f : {0.0, 0.125, 0.25, 0.5, 1.0}) {
    gpus.push_back(static_cast<std::uint64_t>(f * static_cast<double>(a.gpu_mem)));
    hosts.push_back(static_cast<std::uint64_t>(f * static_cast<double>(a.host_mem)));
  }
  gpus.erase(std::unique(gpus.begin(), gpus.end()), gpus.end());
  hosts.erase(std::unique(hosts.begin(), hosts.end()), hosts.end());
  if (Status s = CheckCalibration(cal, static_cast<double>(a.host_mem) < table, has_gpu); !s.ok()) {
    return Fail("plan", s);
  }
  if (!has_gpu) {
    return Fail("plan", Status::FailedPrecondition("the calibration has no GPU rates: calibrate on the GPU machine "
                                                   "(engram calibrate --out FILE) and pass --calibration FILE"));
  }
  std::vector<std::string> host_labels, gpu_labels;
  std::vector<std::vector<plan::Plan>> grid(gpus.size(), std::vector<plan::Plan>(hosts.size()));
  for (std::uint64_t g : gpus) {
    gpu_labels.push_back(static_cast<double>(g) >= table ? "all (" + Gib(table) + ")" : Gib(static_cast<double>(g)));
  }
  // Each split simulates the caches over the whole replay: one split per thread, as many at once as half
  // the memory available holds.
  auto split = [&](std::uint64_t g, std::uint64_t hb, plan::PlanPath path) {
    plan::Tiers t;
    t.hbm_all = static_cast<double>(g) >= table;
    t.host_resident = static_cast<double>(hb) >= table;
    t.hbm_cache_bytes = g;
    t.host_cache_bytes = hb;
    t.path = path;
    return t;
  };
  std::uint64_t largest = 1;
  for (std::uint64_t g : gpus) {
    for (std::uint64_t hb : hosts) {
      for (const auto path : {plan::PlanPath::kStaged, plan::PlanPath::kDevice}) {
        largest = std::max(largest, w->PredictBytes(split(g, hb, path), layout->row_bytes()));
      }
    }
  }
  const std::uint64_t available = AvailableMemoryBytes();
  const unsigned cores = std::clamp(std::thread::hardware_concurrency(), 1U, 16U);
  const auto threads =
      static_cast<unsigned>(std::clamp<std::uint64_t>(available / 2 / largest, 1, static_cast<std::uint64_t>(cores)));
  if (threads < cores) {
    fmt::print(stderr, "plan: {} splits on {} of {} threads: each simulation takes up to {} of {} available\n",
               gpus.size() * hosts.size(), threads, cores, Gib(static_cast<double>(largest)),
               Gib(static_cast<double>(available)));
  }
  detail::ThreadPool pool(threads - 1);
  pool.ParallelFor(gpus.size() * hosts.size(), [&](std::size_t i) {
    const std::uint64_t g = gpus[i / hosts.size()];
    const std::uint64_t hb = hosts[i % hosts.size()];
    plan::Tiers t = split(g, hb, plan::PlanPath::kStaged);
    plan::Plan p = w->Predict(t, cal, layout->row_bytes());
    if (t.host_resident && !t.hbm_all) {
      t.path = plan::PlanPath::kDevice;
      plan::Plan d = w->Predict(t, cal, layout->row_bytes());
      if (WorstLoss(d) < WorstLoss(p)) p = std::move(d);
    }
    grid[i / hosts.size()][i % hosts.size()] = std::move(p);
  });
  for (std::uint64_t hb : hosts) {
    host_labels.push_back(static_cast<double>(hb) >= table ? "resident" : Gib(static_cast<double>(hb)));
  }
  std::printf("plan: layout %s (%s of tables), %zu-token trace; model %d layers, Engram at", layout->name().c_str(),
              Gib(table).c_str(), ids->size(), model.layers);
  for (int e : model.engram_at) std::printf(" %d", e);
  std::printf("; calibration %s (%s)\n", cal.machine.c_str(), cal.date.c_str());
  std::printf("prefill %zu x %zu tokens (%.3f ms a layer), decode %zu sequences (%.3f ms a layer)\n\n", a.prefill[0],
              a.prefill[1], a.layer_ms_prefill, a.decode, a.layer_ms_decode);
  std::printf("%-12s %-18s %-7s | %-44s | %-44s\n", "GPU cache", "host tier", "path", "prefill", "decode");
  std::printf("%-12s %-18s %-7s", "", "", "");
  for (int i = 0; i < 2; ++i) {
    std::printf(" | %-13s %8s %7s %7s %7s", "hbm/host/disk", "disk/st", "io ms", "p99 ms", "loss");
  }
  std::printf("\n");
  const plan::Plan* best = nullptr;
  std::string best_g, best_h;
  for (std::size_t gi = 0; gi < gpus.size(); ++gi) {
    for (std::size_t hi = 0; hi < hosts.size(); ++hi) {
      const plan::Plan& p = grid[gi][hi];
      PrintPlanRow(p, gpu_labels[gi], host_labels[hi]);
      // The first split (smallest GPU budget, then smallest host budget) that meets the target.
      if (best == nullptr && WorstLoss(p) <= a.target_loss) {
        best = &p;
        best_g = gpu_labels[gi];
        best_h = host_labels[hi];
      }
    }
  }
  if (best != nullptr) {
    const auto& worst = *std::max_element(best->phases.begin(), best->phases.end(), [](const auto& x, const auto& y) {
      return x.loss_vs_compute < y.loss_vs_compute;
    });
    std::printf(
        "\nrecommended for a loss of at most %.2f%%: GPU cache %s, host tier %s (worst phase %s: %.2f%%; "
        "its largest cost: %s)\n",
        100 * a.target_loss, best_g.c_str(), best_h.c_str(), worst.name.c_str(), 100 * worst.loss_vs_compute,
        worst.bound.c_str());
  } else {
    const plan::Plan& top = grid.back().back();
    std::printf(
        "\nno split within these budgets reaches %.2f%%; the largest (GPU %s, host %s) loses %.2f%%, bound "
        "by %s\n",
        100 * a.target_loss, gpu_labels.back().c_str(), host_labels.back().c_str(), 100 * WorstLoss(top),
        top.phases.back().bound.c_str());
  }
  if (!a.json.empty()) {
    nlohmann::ordered_json j;
    j["layout"] = layout->name();
    j["table_bytes"] = table;
    j["target_loss"] = a.target_loss;
    j["recommended"] =
        best != nullptr ? nlohmann::ordered_json::parse(plan::PlanJson(*best)) : nlohmann::ordered_json();
    j["splits"] = nlohmann::ordered_json::array();
    for (const auto& row : grid) {
      for (const auto& p : row) j["splits"].push_back(nlohmann::ordered_json::parse(plan::PlanJson(p)));
    }
    const std::string s = j.dump(2) + "\n";
    if (a.json == "-") {
      std::fputs(s.c_str(), stdout);
    } else if (Status st = detail::WriteFile(a.json, std::as_bytes(std::span(s))); !st.ok()) {
      return Fail("plan", st);
    }
  }
  if (!a.plot.empty()) {
    const std::string svg = Svg(host_labels, gpu_labels, grid, a.target_loss);
    if (Status st = detail::WriteFile(a.plot, std::as_bytes(std::span(svg))); !st.ok()) return Fail("plan", st);
    std::printf("wrote %s\n", a.plot.c_str());
  }
  return 0;
}

}  // namespace

Runner AddPlanCommands(CLI::App& app) {
  auto ca = std::make_shared<CalibrateArgs>();
  auto* cal = app.add_subcommand("calibrate",
                                 "Measure this machine for the capacity planner: host gather, hashing, pinning, disk "
                                 "(--disk-file), the store's row reads (--store), PCIe copies, zero-copy and HBM "
                                 "gathers (GPU). Writes JSON (--out FILE, else stdout).");
  cal->add_option("--out", ca->out, "Write the calibration JSON here");
  cal->add_option("--store", ca->o.store, "A store whose random row reads to time");
  cal->add_option("--disk-file", ca->o.disk_file,
                  "A file for raw O_DIRECT 4 KiB random reads (created with --disk-file-bytes if missing)");
  cal->add_option("--disk-file-bytes", ca->o.disk_file_bytes, "Size of a created --disk-file")->default_val(1ULL << 30);
  cal->add_option("--threads", ca->o.threads, "Host threads (the prefetcher's gather_threads); 0: hardware, <= 16")
      ->default_val(0);
  cal->add_option("--row-bytes", ca->o.row_bytes, "Row size of the host gather")->default_val(264);
  cal->add_option("--seconds", ca->o.seconds, "Seconds per measurement")->default_val(0.5);
  cal->add_flag("--no-gpu", ca->no_gpu, "Skip the GPU measurements");

  auto pa = std::make_shared<PlanArgs>();
  auto* pl = app.add_subcommand(
      "plan",
      "Predict hit rates per tier, rows and bytes per step, I/O time, stall per Engram layer and throughput loss for "
      "splits of --gpu-mem and --host-mem, and recommend one for --target-loss; or, with --compare, set the "
      "prediction beside a measured bench_model run.");
  AddLayoutOption(*pl, pa->layout, false);
  pl->add_option("--store", pa->store, "Take the layout from this store (and time its reads if no --calibration)");
  pl->add_option("--tokens", pa->tokens, "Token trace (int32 ids)")->required();
  pl->add_option("--token-map", pa->token_map, "Token map (raw -> compressed ids)");
  pl->add_flag("--compressed", pa->compressed, "The trace holds compressed ids already");
  pl->add_option("--calibration", pa->calibration, "From `engram calibrate --out FILE` (else this machine, now)");
  pl->add_option("--model-layers", pa->model_layers, "Backbone layers")->default_val(40);
  pl->add_option("--engram-at", pa->engram_at, "Backbone layer of each Engram layer (default: the layout's ids)")
      ->delimiter(',');
  pl->add_option("--layer-ms-decode", pa->layer_ms_decode, "Backbone compute per layer in a decode step, ms");
  pl->add_option("--layer-ms-prefill", pa->layer_ms_prefill, "Backbone compute per layer in a prefill chunk, ms");
  pl->add_option("--decode", pa->decode, "Decode batch (sequences)")->default_val(64);
  pl->add_option("--prefill", pa->prefill, "Prefill chunk: SEQUENCES,TOKENS")->delimiter(',')->expected(2);
  pl->add_option("--decode-steps", pa->decode_steps, "Decode steps planned")->default_val(48);
  pl->add_option("--prefill-steps", pa->prefill_steps, "Prefill chunks planned")->default_val(4);
  pl->add_option("--warmup-decode", pa->warmup_decode, "Decode steps before (caches only)")->default_val(128);
  pl->add_option("--warmup-prefill", pa->warmup_prefill, "Prefill chunks before (caches only)")->default_val(2);
  pl->add_option("--gpu-mem", pa->gpu_mem,
                 "GPU memory engram may use for its HBM cache (suffixes K, M, G, T: powers of 1024)")
      ->transform(CLI::AsSizeValue(false));
  pl->add_option("--host-mem", pa->host_mem,
                 "Host memory for the tables: cache, or resident if it holds them (K, M, G, T)")
      ->transform(CLI::AsSizeValue(false));
  pl->add_option("--target-loss", pa->target_loss, "Throughput loss to plan for (fraction)")->default_val(0.01);
  pl->add_option("--json", pa->json, "Write the plan as JSON here (- for stdout)");
  pl->add_option("--plot", pa->plot, "Write a chart of loss over the budgets (SVG)");
  pl->add_option("--compare", pa->compare, "A bench_model --json file: predict its configurations and compare");
  return [cal, pl, ca, pa]() {
    if (cal->parsed()) return RunCalibrate(*ca);
    (void)pl;
    return RunPlan(*pa);
  };
}

}  // namespace engram::cli
