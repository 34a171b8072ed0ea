// engram synth / ingest / info / verify: the table of record.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "commands.hpp"
#include "engram/store/store.hpp"

namespace engram::cli {
namespace {

struct StoreArgs {
  std::string layout;
  double scale = 0.001;
  std::string out;
  std::string checkpoint;
  std::string store;
  std::string token_map;
  std::string io = "uring";
  std::uint32_t rows_per_key = 0;
  std::uint32_t ingest_threads = store::StoreOptions{}.ingest_threads;
  std::uint64_t version = 0;
  bool quiet = false;
  bool json = false;
  std::string weight_name = store::TensorNaming{}.weight;
  std::string scale_name = store::TensorNaming{}.scale;
};

Result<store::StoreOptions> OptionsFrom(const StoreArgs& a) {
  store::StoreOptions o;
  if (a.io == "uring") {
    o.io = store::IoMode::kIoUring;
  } else if (a.io == "posix") {
    o.io = store::IoMode::kPosix;
  } else {
    return Status::InvalidArgument(fmt::format("--io {}: expected uring or posix", a.io));
  }
  o.rows_per_key = a.rows_per_key;
  if (a.ingest_threads == 0) return Status::InvalidArgument("--threads 0: an ingest needs at least one thread");
  o.ingest_threads = a.ingest_threads;
  o.progress = !a.quiet;
  return o;
}

void AddStoreIoOptions(CLI::App& cmd, StoreArgs& a) {
  cmd.add_option("--io", a.io, "How table files are read: uring (io_uring, O_DIRECT) or posix (pread, O_DIRECT)")
      ->capture_default_str();
}

int RunSynth(const StoreArgs& a) {
  auto base = Layout::Resolve(a.layout);
  if (!base.ok()) return Fail("synth", base.status());
  auto layout = store::ScaledLayout(*base, a.scale);
  if (!layout.ok()) return Fail("synth", layout.status());
  store::SynthOptions o;
  o.quiet = a.quiet;
  o.naming = {a.weight_name, a.scale_name};
  Status s = store::WriteSynthCheckpoint(*layout, a.out, o);
  if (!s.ok()) return Fail("synth", s);
  double bytes = 0;
  for (int i = 0; i < layout->num_layers(); ++i)
    bytes += static_cast<double>(layout->layer_rows(i)) * layout->row_bytes();
  std::printf("wrote %s: layout %s, %d layers, %.1f MiB of rows, layout in %s/layout.json\n", a.out.c_str(),
              layout->name().c_str(), layout->num_layers(), bytes / (1 << 20), a.out.c_str());
  return 0;
}

int RunIngest(const StoreArgs& a) {
  auto layout = Layout::Resolve(a.layout);
  if (!layout.ok()) return Fail("ingest", layout.status());
  auto options = OptionsFrom(a);
  if (!options.ok()) return Fail("ingest", options.status());
  auto checkpoint = store::Checkpoint::Open(a.checkpoint);
  if (!checkpoint.ok()) return Fail("ingest", checkpoint.status());
  std::unique_ptr<store::Store> st;
  if (std::filesystem::exists(a.store + "/CURRENT")) {
    auto opened = store::Store::Open(a.store, *options, &*layout);
    if (!opened.ok()) return Fail("ingest", opened.status());
    st = std::move(*opened);
  } else {
    std::optional<TokenMap> map;
    if (!a.token_map.empty()) {
      auto m = TokenMap::LoadFile(a.token_map);
      if (!m.ok()) return Fail("ingest", m.status());
      map = std::move(*m);
    }
    auto created = store::Store::Create(a.store, *layout, map ? &*map : nullptr, *options);
    if (!created.ok()) return Fail("ingest", created.status());
    st = std::move(*created);
  }
  const auto t0 = std::chrono::steady_clock::now();
  store::IngestOptions io;
  io.naming = {a.weight_name, a.scale_name};
  auto v = st->Ingest(*checkpoint, io);
  if (!v.ok()) return Fail("ingest", v.status());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double bytes = 0;
  for (const auto& t : st->tensor_checksums(*v)) bytes += static_cast<double>(t.bytes);
  std::printf("ingested %s into %s as version %llu: %.1f MiB in %.2f s (%.1f MiB/s)\n", a.checkpoint.c_str(),
              a.store.c_str(), static_cast<unsigned long long>(*v), bytes / (1 << 20), secs, bytes / (1 << 20) / secs);
  return 0;
}

int RunInfo(const StoreArgs& a) {
  auto options = OptionsFrom(a);
  if (!options.ok()) return Fail("info", options.status());
  auto st = store::Store::Open(a.store, *options);
  if (!st.ok()) return Fail("info", st.status());
  const store::StoreInfo info = (*st)->Info();
  const Layout& l = (*st)->layout();
  std::printf("store %s\n  layout %s: %d Engram layers, %u-byte rows (%s), %u rows per key\n", info.dir.c_str(),
              l.name().c_str(), l.num_layers(), l.row_bytes(), std::string(RowFormatName(l.row_format())).c_str(),
              info.rows_per_key);
  std::int64_t rows = 0;
  for (int i = 0; i < l.num_layers(); ++i) rows += l.layer_rows(i);
  std::printf("  rows %lld per version, %.2f GiB on disk\n", static_cast<long long>(rows),
              static_cast<double>(info.bytes_on_disk) / (1 << 30));
  std::printf("  token map: %s\n", (*st)->token_map() != nullptr ? "stored" : "none");
  std::printf("  versions:\n");
  for (const auto& v : info.versions) {
    std::printf("    %llu  %-6s generation %llu%s%s\n", static_cast<unsigned long long>(v.id), v.kind.c_str(),
                static_cast<unsigned long long>(v.generation),
                v.parent != 0 ? fmt::format(", parent {}, {} rows edited", v.parent, v.edited_rows).c_str() : "",
                v.source.empty() ? "" : fmt::format(", from {}", v.source).c_str());
  }
  std::printf("  last verification: %s\n", info.last_verification.empty() ? "never" : info.last_verification.c_str());
  return 0;
}

int RunVerify(const StoreArgs& a) {
  auto options = OptionsFrom(a);
  if (!options.ok()) return Fail("verify", options.status());
  auto st = store::Store::Open(a.store, *options);
  if (!st.ok()) return Fail("verify", st.status());
  store::VersionId v = a.version;
  if (v == 0) {
    auto latest = (*st)->Latest();
    if (!latest.ok()) return Fail("verify", latest.status());
    v = *latest;
  }
  auto report = (*st)->Verify(v);
  if (!report.ok()) return Fail("verify", report.status());
  std::printf("verified %s version %llu: %llu rows, %.1f MiB in %.2f s, every block checksum and tensor XXH3 matches\n",
              a.store.c_str(), static_cast<unsigned long long>(v),
              static_cast<unsigned long long>(report->rows_checked),
              static_cast<double>(report->bytes_checked) / (1 << 20), report->seconds);
  return 0;
}

}  // namespace

Runner AddStoreCommands(CLI::App& app) {
  auto a = std::make_shared<StoreArgs>();
  CLI::App* synth = app.add_subcommand(
      "synth",
      "Write a synthetic checkpoint: the layout's tables at a reduced size, in the exact shard format\n"
      "(fp8 layouts: one safetensors shard per layer's weight, one of all scales, model.safetensors.index.json;\n"
      "others: one model.safetensors), with DIR/layout.json (same algorithm, base sizes x SCALE). Row bytes are\n"
      "derived from (layer, row), so any row read anywhere can be checked.");
  AddLayoutOption(*synth, a->layout, true);
  synth->add_option("--scale", a->scale, "Fraction of the rows to keep, in (0, 1] (0.001 keeps 0.1%)")
      ->capture_default_str();
  synth->add_option("--out", a->out, "Output directory")->required();
  synth->add_flag("--quiet", a->quiet, "No progress line");

  CLI::App* ingest = app.add_subcommand(
      "ingest",
      "Load a checkpoint's Engram tables into a store as a new version (creating the store if needed).\n"
      "Bulk-loads sorted SST files; the version appears atomically, and a failed or killed ingest leaves the\n"
      "previous versions intact.");
  AddLayoutOption(*ingest, a->layout, true);
  ingest->add_option("--checkpoint", a->checkpoint, "Checkpoint directory (safetensors shards, optional index)")
      ->required();
  ingest->add_option("--store", a->store, "Store directory")->required();
  ingest->add_option("--token-map", a->token_map, "Token map to keep in a new store (int32 file)");
  ingest->add_option("--rows-per-key", a->rows_per_key, "Rows per RocksDB key of a new store (0: one 4 KiB block)")
      ->capture_default_str();
  ingest->add_option("--weight-name", a->weight_name, "Weight tensor name; {L} is the layer id")->capture_default_str();
  ingest->add_option("--scale-name", a->scale_name, "Scale tensor name (fp8 rows); {L} is the layer id")
      ->capture_default_str();
  ingest->add_option("--threads", a->ingest_threads, "Threads that read, pack and write SST files in parallel")
      ->capture_default_str();
  AddStoreIoOptions(*ingest, *a);
  ingest->add_flag("--quiet", a->quiet, "No progress line");

  CLI::App* info =
      app.add_subcommand("info", "Print a store's layout, versions, rows, bytes on disk and last verification");
  info->add_option("--store", a->store, "Store directory")->required();
  AddStoreIoOptions(*info, *a);

  CLI::App* verify = app.add_subcommand(
      "verify",
      "Re-read every row of a version (block checksums) and recompute each source tensor's XXH3; the first bad\n"
      "row is named. Exit 1 if anything is wrong.");
  verify->add_option("--store", a->store, "Store directory")->required();
  verify->add_option("--version", a->version, "Version to verify (default: the latest)");
  AddStoreIoOptions(*verify, *a);
  verify->add_flag("--quiet", a->quiet, "No progress line");

  return [a, synth, ingest, info, verify]() -> int {
    if (synth->parsed()) return RunSynth(*a);
    if (ingest->parsed()) return RunIngest(*a);
    if (info->parsed()) return RunInfo(*a);
    if (verify->parsed()) return RunVerify(*a);
    return 2;
  };
}

}  // namespace engram::cli
