// The subcommands of the flashsdpa tool. Each takes its arguments (after the command name) and
// returns the process exit status: 0 success, 1 a failed check or an unsupported configuration,
// 2 a malformed command line (thrown as UsageError and reported by main).
#pragma once

#include <string>
#include <vector>

namespace flashsdpa::cli {

int run_demo(const std::vector<std::string>& args);
int run_bench(const std::vector<std::string>& args);
int run_explain(const std::vector<std::string>& args);

}  // namespace flashsdpa::cli
