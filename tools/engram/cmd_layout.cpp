// engram layout: print, check and generate table layouts.
#include <fmt/format.h>

#include <cstdio>
#include <memory>

#include "commands.hpp"

namespace engram::cli {
namespace {

struct LayoutArgs {
  std::string preset;
  std::string layout;
  bool summary = false;
  bool list = false;
  // generate
  std::string name;
  std::vector<std::int32_t> layers;
  std::int32_t max_ngram = 0;
  std::int32_t heads = 0;
  std::vector<std::int64_t> base_sizes;
  std::int64_t vocab = 0;
  std::uint64_t seed = 0;
  std::string row_format = "fp8_e4m3_e8m0";
  std::int32_t row_dim = 256;
  std::int32_t pad_token = 2;
  std::int32_t pad_id = 2;
};

void PrintSummary(const Layout& l) {
  std::printf("layout %s: %d Engram layer(s), orders 2..%d, %d heads, %d rows per token per layer\n", l.name().c_str(),
              l.num_layers(), l.max_ngram(), l.heads(), l.columns());
  std::printf("  compressed vocabulary %lld, pad id %d (raw %d), rows %s x %d = %u bytes\n",
              static_cast<long long>(l.compressed_vocab_size()), l.pad_id(), l.spec().pad_token_id,
              std::string(RowFormatName(l.row_format())).c_str(), l.spec().row_dim, l.row_bytes());
  double total_bytes = 0;
  for (int i = 0; i < l.num_layers(); ++i) {
    const double bytes = static_cast<double>(l.layer_rows(i)) * l.row_bytes();
    total_bytes += bytes;
    std::printf("  layer %d: %lld rows, %.2f GiB, regions %lld..%lld rows\n", l.layer(i).layer_id,
                static_cast<long long>(l.layer_rows(i)), bytes / (1024.0 * 1024 * 1024),
                static_cast<long long>(*std::min_element(l.layer(i).primes.begin(), l.layer(i).primes.end())),
                static_cast<long long>(*std::max_element(l.layer(i).primes.begin(), l.layer(i).primes.end())));
  }
  std::printf("  all tables: %.2f GiB\n", total_bytes / (1024.0 * 1024 * 1024));
}

}  // namespace

Runner AddLayoutCommand(CLI::App& app) {
  auto args = std::make_shared<LayoutArgs>();
  CLI::App* cmd = app.add_subcommand(
      "layout",
      "Print a table layout as JSON (the on-disk form every --layout option reads; docs/layout-format.md).\n"
      "  engram layout --preset deepseek-v4.1-flash > v41.json   # a built-in layout\n"
      "  engram layout --layout v41.json --summary                # check a file, summarise it\n"
      "  engram layout generate --name my --layers 3,9 ...        # derive a new layout");
  auto* preset = cmd->add_option("--preset", args->preset, "A built-in layout: deepseek-v4.1-flash or engram-demo");
  auto* file =
      cmd->add_option("--layout", args->layout, "A layout: preset name or JSON file, validated and re-printed");
  preset->excludes(file);
  cmd->add_flag("--summary", args->summary, "Print a human-readable summary instead of JSON");
  cmd->add_flag("--list", args->list, "List the preset names");

  CLI::App* gen = cmd->add_subcommand(
      "generate",
      "Derive a layout with the reference algorithms: distinct primes from the base sizes, and multipliers\n"
      "numpy.random.default_rng(seed + 10007 * layer).integers(0, (INT64_MAX // V') // 2, size=max_ngram) * 2 + 1,\n"
      "reproduced bit for bit in C++.");
  gen->add_option("--name", args->name, "Layout name")->required();
  gen->add_option("--layers", args->layers, "Backbone layer ids that carry Engram tables, in config order (e.g. 1,14)")
      ->required()
      ->delimiter(',');
  gen->add_option("--max-ngram", args->max_ngram, "Highest n-gram order (orders 2..N)")
      ->required()
      ->check(CLI::Range(2, kMaxNgram));
  gen->add_option("--heads", args->heads, "Hash heads per order")->required()->check(CLI::Range(1, kMaxHeads));
  gen->add_option("--base-size", args->base_sizes,
                  "Prime search start per order (one value for all orders, or one per order, comma-separated)")
      ->required()
      ->delimiter(',');
  gen->add_option("--vocab", args->vocab, "Compressed vocabulary size V'")->required()->check(CLI::PositiveNumber);
  gen->add_option("--seed", args->seed, "Multiplier seed (reference: 0)")->capture_default_str();
  gen->add_option("--row-format", args->row_format, "fp8_e4m3_e8m0, f32, bf16 or f16")->capture_default_str();
  gen->add_option("--row-dim", args->row_dim, "Values per row")->capture_default_str();
  gen->add_option("--pad-token", args->pad_token, "Raw id of the pad token")->capture_default_str();
  gen->add_option("--pad-id", args->pad_id, "Compressed id of the pad token")->capture_default_str();

  return [cmd, gen, args]() -> int {
    if (args->list) {
      for (auto n : Layout::PresetNames()) std::printf("%.*s\n", static_cast<int>(n.size()), n.data());
      return 0;
    }
    Result<Layout> layout = Status::InvalidArgument("give --preset NAME, --layout FILE or the generate subcommand");
    if (gen->parsed()) {
      LayoutGenerateOptions o;
      o.name = args->name;
      o.layer_ids = args->layers;
      o.max_ngram = args->max_ngram;
      o.heads = args->heads;
      o.compressed_vocab_size = args->vocab;
      o.base_sizes = args->base_sizes;
      if (o.base_sizes.size() == 1) o.base_sizes.assign(static_cast<std::size_t>(o.max_ngram - 1), args->base_sizes[0]);
      o.seed = args->seed;
      auto rf = ParseRowFormat(args->row_format);
      if (!rf.ok()) return Fail("layout generate", rf.status().WithContext("--row-format"));
      o.row_format = *rf;
      o.row_dim = args->row_dim;
      o.pad_token_id = args->pad_token;
      o.pad_id = args->pad_id;
      auto spec = GenerateLayoutSpec(o);
      if (!spec.ok()) return Fail("layout generate", spec.status());
      layout = Layout::Create(std::move(spec).value());
    } else if (!args->preset.empty()) {
      layout = Layout::Preset(args->preset);
    } else if (!args->layout.empty()) {
      layout = Layout::Resolve(args->layout);
    }
    if (!layout.ok()) return Fail(cmd->get_name(), layout.status());
    if (args->summary) {
      PrintSummary(*layout);
    } else {
      std::fputs(layout->ToJson().c_str(), stdout);
    }
    return 0;
  };
}

}  // namespace engram::cli
