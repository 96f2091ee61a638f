// The public entry points: resolve the backend, validate into a Problem, select the tier, run.
// Validation and selection both finish before a backend is called, so an error leaves every
// output untouched (SPEC §5).
#include <string>

#include "core/select.h"
#include "core/validate.h"
#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"
#include "flashsdpa/flashsdpa.h"

namespace flashsdpa {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kInt32: return "int32";
  }
  return "unknown";
}

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kFloat32:
    case DType::kInt32: return 4;
  }
  return 0;
}

const char* backend_name(Backend backend) {
  switch (backend) {
    case Backend::kAuto: return "auto";
    case Backend::kCpu: return "cpu";
    case Backend::kCuda: return "cuda";
  }
  return "unknown";
}

TensorRef TensorRef::contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape) {
  TensorRef t;
  t.data = data;
  t.dtype = dtype;
  t.rank = static_cast<int32_t>(shape.size());
  if (t.rank > kMaxRank) throw Error("TensorRef: rank must be <= 4; got " + std::to_string(t.rank));
  int d = 0;
  for (int64_t extent : shape) t.shape[d++] = extent;
  int64_t stride = 1;
  for (d = t.rank - 1; d >= 0; --d) {
    t.stride[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

TensorRef TensorRef::strided(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                             std::initializer_list<int64_t> strides) {
  if (shape.size() != strides.size())
    throw Error("TensorRef: shape and strides must have the same length; got " + std::to_string(shape.size()) +
                " and " + std::to_string(strides.size()));
  TensorRef t = contiguous(data, dtype, shape);
  int d = 0;
  for (int64_t s : strides) t.stride[d++] = s;
  return t;
}

bool cuda_built() { return cuda::built(); }
bool cuda_available() { return cuda::built() && cuda::device_available(); }
const char* version() { return "0.1.0"; }

namespace {

core::ValidateOptions options_for(Backend backend, const ExecContext& ctx) {
  core::ValidateOptions options;
  if (backend == Backend::kCuda) {
    // Device-resident index tensors are read back only in checked mode (a sync per call).
    options.check_index_values = ctx.check || core::env_check_enabled();
    void* stream = ctx.stream;
    options.fetch = [stream](const int32_t* src, int64_t count, int32_t* dst) {
      cuda::copy_index_to_host(src, count, dst, stream);
    };
  }
  return options;
}

// A call no tier serves is refused before anything is written.
core::TierChoice required(core::TierChoice choice) {
  if (choice.tier == core::Tier::kNone) throw Error(choice.reason, ErrorKind::kNotSupported);
  return choice;
}

core::TierChoice choose(const core::Problem& p, Op op, Backend backend) {
  return required(core::select_tier(p, op, backend));
}

}  // namespace

void attention_forward(const AttnParams& params, const ExecContext& ctx) {
  const Backend backend = core::resolve_backend(ctx.backend, params.q.data);
  core::Problem p = core::prepare_forward(params, options_for(backend, ctx));
  p.scratch = ctx.scratch;
  const core::TierChoice choice = choose(p, Op::kForward, backend);
  if (backend == Backend::kCpu) cpu::forward(p, ctx.num_threads);
  else cuda::forward(p, choice.tier, ctx.stream);
}

void attention_kvcache(const AttnParams& params, const ExecContext& ctx) {
  const Backend backend = core::resolve_backend(ctx.backend, params.q.data);
  core::Problem p = core::prepare_kvcache(params, options_for(backend, ctx));
  p.scratch = ctx.scratch;
  const core::TierChoice choice = choose(p, Op::kKvCache, backend);
  if (backend == Backend::kCpu) cpu::kvcache(p, ctx.num_threads);
  else cuda::kvcache(p, choice.tier, ctx.stream);
}

void attention_backward(const AttnBwdParams& params, const ExecContext& ctx) {
  const Backend backend = core::resolve_backend(ctx.backend, params.fwd.q.data);
  const core::BwdProblem p = core::prepare_backward(params, options_for(backend, ctx));
  const core::TierChoice choice = choose(p.fwd, Op::kBackward, backend);
  if (backend == Backend::kCpu) cpu::backward(p, ctx.num_threads);
  else cuda::backward(p, choice.tier, ctx.stream);
}

void paged_kv_write(const KvWriteParams& params, const ExecContext& ctx) {
  const Backend backend = core::resolve_backend(ctx.backend, params.k_cache.data);
  const core::KvWriteProblem p = core::prepare_kv_write(params, options_for(backend, ctx));
  required(core::select_tier(p, backend));
  if (backend == Backend::kCpu) cpu::paged_kv_write(p, ctx.num_threads);
  else cuda::paged_kv_write(p, ctx.stream);
}

Selection explain(const AttnParams& params, Op op, const ExecContext& ctx) {
  Selection selection;
  try {
    const Backend backend = core::resolve_backend(ctx.backend, params.q.data);
    selection.backend = backend;
    const core::ValidateOptions options = options_for(backend, ctx);
    core::Problem p;
    switch (op) {
      case Op::kKvCache: p = core::prepare_kvcache(params, options); break;
      case Op::kPagedKvWrite:
        throw Error("explain: paged_kv_write takes KvWriteParams; ask for kForward, kKvCache or kBackward");
      case Op::kForward:
      case Op::kBackward: p = core::prepare_forward(params, options); break;
    }
    const core::TierChoice choice = core::select_tier(p, op, backend);
    selection.supported = choice.tier != core::Tier::kNone;
    selection.backend = choice.backend;
    selection.tier = core::tier_name(choice.tier);
    selection.reason = choice.reason;
  } catch (const Error& e) {
    selection.supported = false;
    selection.tier = "none";
    selection.reason = e.what();
  }
  return selection;
}

}  // namespace flashsdpa
