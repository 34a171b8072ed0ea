#include <fmt/format.h>

#include <cstdio>

#include "../../core/file.hpp"
#include "commands.hpp"
#include "engram/token_map.hpp"

namespace engram::cli {

int Fail(std::string_view command, const Status& status) {
  std::fprintf(stderr, "engram %.*s: %s\n", static_cast<int>(command.size()), command.data(),
               status.ToString().c_str());
  return 1;
}

void AddLayoutOption(CLI::App& cmd, std::string& value, bool required) {
  auto* opt = cmd.add_option("--layout", value,
                             "Layout: a preset name (deepseek-v4.1-flash, engram-demo) or a layout JSON file "
                             "(see `engram layout --help` and docs/layout-format.md)");
  if (required) opt->required();
}

Result<std::vector<std::int32_t>> LoadCompressedTokens(const std::string& tokens_path,
                                                       const std::string& token_map_path, const Layout& layout) {
  ENGRAM_ASSIGN_OR_RETURN(auto raw, detail::ReadInt32File(tokens_path).WithContext("tokens"));
  if (token_map_path.empty()) {
    ENGRAM_RETURN_IF_ERROR_CTX(CheckCompressedIds(raw, layout), fmt::format("tokens {} (--compressed)", tokens_path));
    return raw;
  }
  ENGRAM_ASSIGN_OR_RETURN(TokenMap map, TokenMap::LoadFile(token_map_path));
  ENGRAM_RETURN_IF_ERROR(map.CheckCompatible(layout));
  std::vector<std::int32_t> ids(raw.size());
  ENGRAM_RETURN_IF_ERROR_CTX(map.Compress(raw, ids), fmt::format("tokens {}", tokens_path));
  return ids;
}

}  // namespace engram::cli
