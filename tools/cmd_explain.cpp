// flashsdpa explain: the selector's answer for one configuration — the same function the entry
// points call, so what it prints is what would run.
#include <cstdio>
#include <string>
#include <vector>

#include "cli_flags.h"
#include "commands.h"
#include "workload.h"

namespace flashsdpa::cli {

int run_explain(const std::vector<std::string>& args) {
  ShapeConfig config;
  FlagSet flags("explain", "flashsdpa explain [flags]",
                "Says which backend and kernel tier would serve a configuration and why, or why none\n"
                "can. Exit status 0 when supported, 1 when not. Nothing is computed.");
  flags.add_choice("op", &config.op, {"forward", "kvcache", "backward"}, "the entry point asked about");
  add_shape_flags(flags, &config);
  if (!flags.parse(args)) return 0;

  // Tensors go where the requested backend reads them; when that backend cannot run here they
  // stay in host memory and the selector says why the request cannot be served.
  Backend backend = resolve_backend(parse_backend(config.backend));
  const Backend placement = (backend == Backend::kCuda && !cuda_available()) ? Backend::kCpu : backend;
  const Workload w = make_workload(config, placement, /*fill=*/false);
  ExecContext ctx = w.context();
  ctx.backend = backend;
  const Selection selection = explain(w.params(), w.op, ctx);

  std::printf("%s\n", config.describe().c_str());
  if (selection.supported) {
    std::printf("  supported  yes\n  backend    %s\n  tier       %s\n  why        %s\n",
                backend_name(selection.backend), selection.tier.c_str(), selection.reason.c_str());
    return 0;
  }
  std::printf("  supported  no\n  why        %s\n", selection.reason.c_str());
  return 1;
}

}  // namespace flashsdpa::cli
