// flashsdpa — command-line front end: a checked demo workload, a benchmark of one configuration,
// and the selector's explanation of which backend and tier serves a call.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "cli_flags.h"
#include "commands.h"
#include "flashsdpa/flashsdpa.h"

namespace {

void print_overview() {
  std::printf(
      "flashsdpa %s: memory-efficient flash attention (CUDA backend: %s)\n"
      "\n"
      "usage: flashsdpa <command> [flags]\n"
      "\n"
      "commands:\n"
      "  demo      run a realistic prefill + paged-decode workload, checked against the float64 reference\n"
      "  bench     time one attention configuration (--json for one machine-readable line)\n"
      "  explain   say which backend and kernel tier would serve a configuration, and why\n"
      "  version   print the version and what this build supports\n"
      "\n"
      "'flashsdpa <command> --help' lists the flags of a command.\n",
      flashsdpa::version(),
      flashsdpa::cuda_built() ? (flashsdpa::cuda_available() ? "built, GPU present" : "built, no GPU")
                              : "not built");
}

void print_version() {
  std::printf("flashsdpa %s\n", flashsdpa::version());
  std::printf("backends: cpu%s\n", flashsdpa::cuda_built() ? ", cuda" : "");
  std::printf("cuda device: %s\n", flashsdpa::cuda_available() ? "present" : "none");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_overview();
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (command == "--help" || command == "-h" || command == "help") {
      print_overview();
      return 0;
    }
    if (command == "--version" || command == "version") {
      print_version();
      return 0;
    }
    if (command == "demo") return flashsdpa::cli::run_demo(args);
    if (command == "bench") return flashsdpa::cli::run_bench(args);
    if (command == "explain") return flashsdpa::cli::run_explain(args);
    std::fprintf(stderr, "flashsdpa: unknown command '%s' (see 'flashsdpa --help')\n", command.c_str());
    return 2;
  } catch (const flashsdpa::cli::UsageError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const flashsdpa::Error& e) {
    std::fprintf(stderr, "flashsdpa %s: %s\n", command.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashsdpa %s: error: %s\n", command.c_str(), e.what());
    return 1;
  }
}
