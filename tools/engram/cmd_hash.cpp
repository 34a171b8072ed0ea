// engram hash: token ids -> global row ids of one Engram layer, written as little-endian int64.
// This interface is relied on outside the project: keep it stable (docs/cli.md).
#include <fmt/format.h>

#include <memory>

#include "../../core/file.hpp"
#include "commands.hpp"
#include "engram/hasher.hpp"

namespace engram::cli {
namespace {

struct HashArgs {
  std::string layout;
  std::int32_t layer = -1;
  std::string tokens;
  std::string token_map;
  bool compressed = false;
  std::size_t seq_len = 0;
  std::string out;
};

}  // namespace

Runner AddHashCommand(CLI::App& app) {
  auto args = std::make_shared<HashArgs>();
  CLI::App* cmd = app.add_subcommand(
      "hash",
      "Hash token ids into global row ids of one Engram layer's table.\n"
      "Reads little-endian int32 token ids, cuts them into sequences of --seq-len tokens (default: one\n"
      "sequence), each starting fresh (positions before its start read the pad id), and writes\n"
      "little-endian int64 row ids: one row of (max_ngram-1)*heads values per token, columns order-major\n"
      "(n2h0..n2hK-1, n3h0, ...), in token order. Row ids include the region offsets (global in the layer).");
  AddLayoutOption(*cmd, args->layout, true);
  cmd->add_option("--layer", args->layer, "Backbone layer id of the Engram table (e.g. 1 or 14 for V4.1)")->required();
  cmd->add_option("--tokens", args->tokens, "Token ids, little-endian int32")->required();
  auto* map =
      cmd->add_option("--token-map", args->token_map,
                      "Raw -> compressed id map, little-endian int32 (e.g. ../shared/data/deepseek-v3.token-map.i32)");
  auto* comp = cmd->add_flag("--compressed", args->compressed, "The token ids are already compressed ids (0..V'-1)");
  map->excludes(comp);
  cmd->add_option("--seq-len", args->seq_len, "Tokens per sequence; 0 means the whole file is one sequence")
      ->capture_default_str();
  cmd->add_option("--out", args->out, "Output file of int64 row ids")->required();

  return [args]() -> int {
    if (args->token_map.empty() && !args->compressed) {
      return Fail("hash",
                  Status::InvalidArgument("give --token-map FILE, or --compressed if the ids are already compressed"));
    }
    auto layout = Layout::Resolve(args->layout);
    if (!layout.ok()) return Fail("hash", layout.status());
    auto index = layout->LayerIndex(args->layer);
    if (!index.ok()) return Fail("hash", index.status().WithContext("--layer"));
    auto ids = LoadCompressedTokens(args->tokens, args->token_map, *layout);
    if (!ids.ok()) return Fail("hash", ids.status());
    auto hasher = LayerHasher::Create(*layout, *index);
    if (!hasher.ok()) return Fail("hash", hasher.status());
    std::vector<std::int64_t> rows(ids->size() * static_cast<std::size_t>(hasher->columns()));
    Status s = HashFreshSequences(*hasher, *ids, args->seq_len, rows);
    if (!s.ok()) return Fail("hash", s);
    s = detail::WriteFile(args->out, std::as_bytes(std::span(rows)));
    if (!s.ok()) return Fail("hash", s);
    return 0;
  };
}

}  // namespace engram::cli
