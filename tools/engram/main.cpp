// engram: the command-line tool. `engram --help` lists the subcommands; `engram SUBCOMMAND --help`
// explains each. Exit codes: 0 success, 1 a failed operation (the message says why), 2 bad usage.
#include <CLI/CLI.hpp>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "engram: Engram n-gram memory tables off the GPU.\n"
      "Turns token ids into Engram table rows bit-exactly, and (as the project grows) stores, caches and\n"
      "prefetches those rows. Every command that needs a table layout takes --layout PRESET|FILE.",
      "engram"};
  app.set_version_flag("--version", "engram 0.1.0");
  app.require_subcommand(1, 1);
  app.fallthrough(false);

  // Each Add* registers one or more subcommands and returns the runner that serves them.
  std::vector<std::pair<std::vector<CLI::App*>, engram::cli::Runner>> commands;
  auto add = [&](engram::cli::Runner (*fn)(CLI::App&)) {
    const std::size_t before = app.get_subcommands({}).size();
    engram::cli::Runner r = fn(app);
    const auto all = app.get_subcommands({});
    commands.emplace_back(std::vector<CLI::App*>(all.begin() + static_cast<std::ptrdiff_t>(before), all.end()),
                          std::move(r));
  };
  add(&engram::cli::AddLayoutCommand);
  add(&engram::cli::AddHashCommand);
  add(&engram::cli::AddTraceCommand);
  add(&engram::cli::AddStoreCommands);
  add(&engram::cli::AddPrefetchCommand);
  add(&engram::cli::AddPlanCommands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    // CLI11 returns 0 for --help/--version; usage errors become exit code 2.
    return code == 0 ? 0 : 2;
  }
  for (auto& [cmds, run] : commands) {
    for (CLI::App* cmd : cmds) {
      if (cmd->parsed()) return run();
    }
  }
  return 2;
}
