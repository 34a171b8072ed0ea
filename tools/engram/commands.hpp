// Subcommands of the `engram` tool. Each Add* registers its options and returns the function that runs
// it after parsing; the function returns the process exit code.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engram/layout.hpp"
#include "engram/status.hpp"

namespace engram::cli {

using Runner = std::function<int()>;

Runner AddLayoutCommand(CLI::App& app);
Runner AddHashCommand(CLI::App& app);
Runner AddTraceCommand(CLI::App& app);
// synth, ingest, info, verify (one runner for the four).
Runner AddStoreCommands(CLI::App& app);
Runner AddPrefetchCommand(CLI::App& app);
// calibrate, plan (one runner for the two).
Runner AddPlanCommands(CLI::App& app);

// Prints "engram <command>: <status>" to stderr and returns the exit code for a failed status (1).
int Fail(std::string_view command, const Status& status);

// Reads a token file and returns compressed ids: through `token_map_path` if given, else the ids must
// already be compressed (checked against the layout).
Result<std::vector<std::int32_t>> LoadCompressedTokens(const std::string& tokens_path,
                                                       const std::string& token_map_path, const Layout& layout);

// Options every command that reads a layout takes: --layout PRESET|FILE.
void AddLayoutOption(CLI::App& cmd, std::string& value, bool required);

}  // namespace engram::cli
