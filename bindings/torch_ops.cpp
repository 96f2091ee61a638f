// torch.ops.flashsdpa: the C++ API (include/flashsdpa/flashsdpa.h) as PyTorch operators.
//
// Every op runs where its tensors live: CPU tensors on the CPU backend with torch's intra-op
// thread count, CUDA tensors on the CUDA backend on torch's current stream. A CUDA call no tier
// serves raises; nothing is ever copied to another device behind the caller's back.
//
// Errors cross to Python as ValueError / TypeError / NotImplementedError (c10's typed errors).
// Validation happens in the library before anything is written, and outputs the binding has to
// stage (a caller's `out` whose last dimension is strided) are copied back only on success.
//
// The Python package (python/flashsdpa) adds autograd, the flash_attn API and fake (meta)
// implementations for torch.compile on torch >= 2.4.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#if FLASHSDPA_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <string>
#include <tuple>
#include <vector>

#include "core/text.h"
#include "flashsdpa/flashsdpa.h"
#include "torch_trace.h"

namespace flashsdpa::torch_binding {
namespace {

using OptTensor = c10::optional<at::Tensor>;

// ---------------------------------------------------------------------------------------------
// Errors

// Messages are built with core::Text and handed to TORCH_CHECK as one string: TORCH_CHECK's own
// formatting goes through std::ostringstream inside this extension, which crashes where the
// toolchain links part of its C++ runtime statically (seen on an H100 machine's GCC 13 build).
template <typename... Parts>
std::string text(const Parts&... parts) {
  flashsdpa::core::Text t;
  (t << ... << parts);
  return t.str();
}

std::string shape_text(c10::IntArrayRef sizes) {
  flashsdpa::core::Text t;
  t << '[';
  for (size_t d = 0; d < sizes.size(); ++d) t << (d ? ", " : "") << sizes[d];
  t << ']';
  return t.str();
}

// flashsdpa::Error carries its kind; Python callers get the built-in error that says whether to fix
// the values (ValueError), the dtypes (TypeError), or to fall back to another implementation
// because nothing here serves the call (NotImplementedError).
[[noreturn]] void raise_from_library(flashsdpa::ErrorKind kind, const std::string& message) {
  switch (kind) {
    case flashsdpa::ErrorKind::kNotSupported: TORCH_CHECK_NOT_IMPLEMENTED(false, message);
    case flashsdpa::ErrorKind::kType: TORCH_CHECK_TYPE(false, message);
    case flashsdpa::ErrorKind::kValue: break;
  }
  TORCH_CHECK_VALUE(false, message);
}

// The library's exception is fully handled (its catch block left) before torch's is thrown. A
// throw from inside the handler would end that handler during torch's unwinding, and where the
// extension carries its own copy of the C++ runtime (a toolchain that links it statically) the
// two copies disagree about which exception is being handled: seen as a crash on an H100
// machine's toolchain, on the second error raised.
template <typename Fn>
void call_library(Fn&& fn) {
  enum class Failure { kNone, kPrecondition, kRuntime } failure = Failure::kNone;
  flashsdpa::ErrorKind kind = flashsdpa::ErrorKind::kValue;
  std::string message;
  try {
    fn();
  } catch (const flashsdpa::Error& e) {
    failure = Failure::kPrecondition;
    kind = e.kind();
    message = e.what();
  } catch (const flashsdpa::RuntimeError& e) {
    failure = Failure::kRuntime;
    message = e.what();
  }
  if (failure == Failure::kPrecondition) raise_from_library(kind, message);
  TORCH_CHECK(failure == Failure::kNone, text("flashsdpa: ", message));
}

// ---------------------------------------------------------------------------------------------
// Tensors

// torch's Python names (float64, int64), which is what a Python caller sees, not c10's (Double, Long).
std::string dtype_str(at::ScalarType type) {
  switch (type) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(type);
  }
}

DType float_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    default: break;
  }
  TORCH_CHECK_TYPE(false, text(name, " must be float16, bfloat16 or float32; got ", dtype_str(t.scalar_type())));
}

void require_rank(const at::Tensor& t, const char* name, int64_t lo, int64_t hi, const char* shapes) {
  TORCH_CHECK_VALUE(t.dim() >= lo && t.dim() <= hi, text(name, " must be ", shapes, "; got a ", t.dim(),
                                                      "-dimensional tensor of shape ", shape_text(t.sizes())));
}

void require_same_device(const at::Tensor& t, const char* name, const at::Tensor& anchor,
                         const char* anchor_name = "q") {
  TORCH_CHECK_VALUE(t.device() == anchor.device(), text(name, " must be on the same device as ", anchor_name, " (",
                                                         anchor.device().str(), "); got ", t.device().str()));
}

// The library reads any strides but needs a contiguous last dimension; inputs that lack one are
// copied (SPEC §1 allows the binding that copy).
at::Tensor last_dim_contiguous(const at::Tensor& t) {
  if (t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1) return t;
  return t.contiguous();
}

TensorRef view_of(const at::Tensor& t, DType dtype) {
  TORCH_CHECK_VALUE(t.dim() >= 1 && t.dim() <= TensorRef::kMaxRank,
                    text("tensors passed to flashsdpa have 1 to ", TensorRef::kMaxRank, " dimensions; got shape ",
                         shape_text(t.sizes())));
  TensorRef r;
  r.data = t.data_ptr();
  r.dtype = dtype;
  r.rank = static_cast<int32_t>(t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) {
    r.shape[i] = t.size(i);
    // A dimension of extent 1 is never stepped over; torch leaves arbitrary strides there.
    r.stride[i] = (t.size(i) == 1 && i == t.dim() - 1) ? 1 : t.stride(i);
  }
  return r;
}

// Holds the tensors the library reads (staged copies included) alive for the call.
class Operands {
 public:
  // Every operand must live on the anchor's device (q, or k_new for paged_kv_write).
  Operands(const at::Tensor& anchor, const char* anchor_name) : anchor_(anchor), anchor_name_(anchor_name) {}

  // q, k, v, dout, k_new, v_new: a float tensor on q's device.
  TensorRef data(const at::Tensor& t, const char* name) {
    require_same_device(t, name, anchor_, anchor_name_);
    const DType dtype = float_dtype(t, name);
    return keep(last_dim_contiguous(t), dtype);
  }
  TensorRef data(const OptTensor& t, const char* name) { return t ? data(*t, name) : TensorRef{}; }

  // cu_seqlens, seqused_k, block_table, cache_seqlens, ...: int32 on q's device.
  TensorRef index(const OptTensor& t, const char* name) {
    if (!t) return {};
    require_same_device(*t, name, anchor_, anchor_name_);
    TORCH_CHECK_TYPE(t->scalar_type() == at::kInt, text(name, " must be int32; got ", dtype_str(t->scalar_type())));
    return keep(last_dim_contiguous(*t), DType::kInt32);
  }

  // Sinks and ALiBi slopes are fp32 in the library; other float dtypes are converted.
  TensorRef fp32(const OptTensor& t, const char* name) {
    if (!t) return {};
    require_same_device(*t, name, anchor_, anchor_name_);
    TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()),
                     text(name, " must be a floating-point tensor; got ", dtype_str(t->scalar_type())));
    return keep(last_dim_contiguous(t->to(at::kFloat)), DType::kFloat32);
  }

  // Rotary tables are read in q's dtype; other float dtypes are converted.
  TensorRef like_q(const OptTensor& t, const char* name) {
    if (!t) return {};
    require_same_device(*t, name, anchor_, anchor_name_);
    TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()),
                     text(name, " must be a floating-point tensor; got ", dtype_str(t->scalar_type())));
    return keep(last_dim_contiguous(t->to(anchor_.scalar_type())), float_dtype(anchor_, anchor_name_));
  }

  // A tensor the library writes in place: it must already have a contiguous last dimension,
  // since writing a staged copy back would not be atomic with validation.
  TensorRef written_in_place(const at::Tensor& t, const char* name) {
    require_same_device(t, name, anchor_, anchor_name_);
    const DType dtype = float_dtype(t, name);
    TORCH_CHECK_VALUE(t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1,
                      text(name, " is written in place and must have a contiguous last dimension; got strides ",
                           shape_text(t.strides())));
    return keep(t, dtype);
  }

 private:
  TensorRef keep(at::Tensor t, DType dtype) {
    held_.push_back(t);
    return view_of(held_.back(), dtype);
  }
  at::Tensor anchor_;
  const char* anchor_name_;
  std::vector<at::Tensor> held_;
};

// ---------------------------------------------------------------------------------------------
// Execution

ExecContext context_for(const at::Tensor& q, bool check) {
  ExecContext ctx;
  ctx.check = check;
  if (q.is_cpu()) {
    ctx.backend = Backend::kCpu;
    ctx.num_threads = at::get_num_threads();
    return ctx;
  }
#if FLASHSDPA_TORCH_CUDA
  if (q.is_cuda()) {
    ctx.backend = Backend::kCuda;
    ctx.stream = c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
    // Split-KV scratch from torch's caching allocator: inside torch.cuda.graph it comes from the
    // graph's pool and captures as plain memory (the library's own pool would add memory nodes
    // between the kernels of consecutive calls). Freed right after the launches, on the stream
    // that uses it: the allocator hands it out again only in that stream's order.
    ctx.scratch.allocate = [](size_t bytes, void* stream, void*) -> void* {
      return c10::cuda::CUDACachingAllocator::raw_alloc_with_stream(bytes, static_cast<cudaStream_t>(stream));
    };
    ctx.scratch.release = [](void* ptr, void*, void*) { c10::cuda::CUDACachingAllocator::raw_delete(ptr); };
    return ctx;
  }
#endif
  TORCH_CHECK_NOT_IMPLEMENTED(false, text("flashsdpa serves CPU and CUDA tensors; q is on ", q.device().str()));
}

float scale_or_default(const c10::optional<double>& softmax_scale) {
  return softmax_scale ? static_cast<float>(*softmax_scale) : kDefaultScale;
}

// q [B, Sq, Hq, D] -> out [B, Sq, Hq, Dv] and lse [B, Hq, Sq]; q [Tq, Hq, D] -> [Tq, Hq, Dv], [Hq, Tq].
std::vector<int64_t> out_shape(const at::Tensor& q, const at::Tensor& v) {
  std::vector<int64_t> shape(q.sizes().begin(), q.sizes().end());
  shape.back() = v.size(-1);
  return shape;
}

std::vector<int64_t> lse_shape(const at::Tensor& q) {
  if (q.dim() == 4) return {q.size(0), q.size(2), q.size(1)};
  return {q.size(1), q.size(0)};
}

// Checked here rather than in the library so the message uses the Python argument name.
TensorRef sinks_of(Operands& ops, const OptTensor& sinks, const at::Tensor& q) {
  if (sinks) {
    const int64_t heads_q = q.dim() >= 2 ? q.size(-2) : 0;
    TORCH_CHECK_VALUE(sinks->dim() == 1 && sinks->size(0) == heads_q,
                      text("s_aux (attention sinks) must have shape [Hq] = [", heads_q, "]; got ",
                           shape_text(sinks->sizes())));
  }
  return ops.fp32(sinks, "s_aux");
}

// Scale, mask and score modifiers, shared by every attention op.
void set_score_modifiers(AttnParams& p, Operands& ops, const at::Tensor& q, const c10::optional<double>& softmax_scale,
                         bool causal, int64_t window_left, int64_t window_right, double softcap,
                         const OptTensor& alibi_slopes, const OptTensor& sinks) {
  p.scale = scale_or_default(softmax_scale);
  p.causal = causal;
  p.window_left = window_left;
  p.window_right = window_right;
  p.softcap = static_cast<float>(softcap);
  p.alibi_slopes = ops.fp32(alibi_slopes, "alibi_slopes");
  p.sinks = sinks_of(ops, sinks, q);
}

const char* kQShapes = "[B, Sq, Hq, D] (batched) or [Tq, Hq, D] (varlen)";

struct AttentionArgs {
  const OptTensor& cu_seqlens_q;
  const OptTensor& cu_seqlens_k;
  const OptTensor& seqused_k;
  int64_t max_seqlen_q;
  int64_t max_seqlen_k;
  const OptTensor& block_table;
  const c10::optional<double>& softmax_scale;
  bool causal;
  int64_t window_left;
  int64_t window_right;
  double softcap;
  const OptTensor& alibi_slopes;
  const OptTensor& sinks;
};

AttnParams attention_params(Operands& ops, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const AttentionArgs& a) {
  AttnParams p;
  p.q = ops.data(q, "q");
  p.k = ops.data(k, "k");
  p.v = ops.data(v, "v");
  p.cu_seqlens_q = ops.index(a.cu_seqlens_q, "cu_seqlens_q");
  p.cu_seqlens_k = ops.index(a.cu_seqlens_k, "cu_seqlens_k");
  p.seqused_k = ops.index(a.seqused_k, "seqused_k");
  p.max_seqlen_q = a.max_seqlen_q;
  p.max_seqlen_k = a.max_seqlen_k;
  p.block_table = ops.index(a.block_table, "block_table");
  set_score_modifiers(p, ops, q, a.softmax_scale, a.causal, a.window_left, a.window_right, a.softcap, a.alibi_slopes,
                      a.sinks);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Ops

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
                                       const OptTensor& seqused_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                                       const OptTensor& block_table, c10::optional<double> softmax_scale,
                                       bool causal, int64_t window_left, int64_t window_right, double softcap,
                                       const OptTensor& alibi_slopes, const OptTensor& sinks, double dropout_p,
                                       bool check, bool exact_fp32) {
  require_rank(q, "q", 3, 4, kQShapes);
  require_rank(v, "v", 3, 4, "[B, Sk, Hkv, Dv], [Tk, Hkv, Dv] or [num_blocks, block_size, Hkv, Dv]");
  const at::OptionalDeviceGuard guard(at::device_of(q));
  const ExecContext ctx = context_for(q, check);
  Operands ops(q, "q");
  AttnParams p = attention_params(ops, q, k, v,
                                  {cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, block_table,
                                   softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks});
  p.dropout_p = static_cast<float>(dropout_p);
  p.exact_fp32 = exact_fp32;
  at::Tensor out = at::empty(out_shape(q, v), q.options());
  at::Tensor lse = at::empty(lse_shape(q), q.options().dtype(at::kFloat));
  p.out = view_of(out, p.q.dtype);
  p.lse = view_of(lse, DType::kFloat32);
  call_library([&] { attention_forward(p, ctx); });
  trace_record("fwd", p, Op::kForward, ctx);
  return {out, lse};
}

// The seeds' flash_attention_varlen: writes the caller's `out` (often a slice of a larger buffer).
void fwd_out(at::Tensor out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k, const OptTensor& seqused_k,
             int64_t max_seqlen_q, int64_t max_seqlen_k, const OptTensor& block_table,
             c10::optional<double> softmax_scale, bool causal, int64_t window_left, int64_t window_right,
             double softcap, const OptTensor& alibi_slopes, const OptTensor& sinks, double dropout_p, bool check) {
  require_rank(q, "q", 3, 4, kQShapes);
  const at::OptionalDeviceGuard guard(at::device_of(q));
  const ExecContext ctx = context_for(q, check);
  Operands ops(q, "q");
  AttnParams p = attention_params(ops, q, k, v,
                                  {cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, block_table,
                                   softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks});
  p.dropout_p = static_cast<float>(dropout_p);
  require_same_device(out, "out", q);
  const bool staged = out.dim() > 0 && out.size(-1) > 1 && out.stride(-1) != 1;
  at::Tensor target = staged ? at::empty(out.sizes(), out.options()) : out;
  p.out = view_of(target, float_dtype(out, "out"));
  call_library([&] { attention_forward(p, ctx); });
  if (staged) out.copy_(target);
  trace_record("fwd_out", p, Op::kForward, ctx);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_lse, const OptTensor& cu_seqlens_q, const OptTensor& cu_seqlens_k,
    const OptTensor& seqused_k, int64_t max_seqlen_q, int64_t max_seqlen_k, const OptTensor& block_table,
    c10::optional<double> softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    const OptTensor& alibi_slopes, const OptTensor& sinks, bool deterministic, bool check) {
  require_rank(q, "q", 3, 4, kQShapes);
  const at::OptionalDeviceGuard guard(at::device_of(q));
  const ExecContext ctx = context_for(q, check);
  Operands ops(q, "q");
  AttnBwdParams p;
  p.fwd = attention_params(ops, q, k, v,
                           {cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, block_table,
                            softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks});
  p.fwd.out = ops.data(out, "out");
  require_same_device(softmax_lse, "softmax_lse", q);
  TORCH_CHECK_TYPE(softmax_lse.scalar_type() == at::kFloat,
                   text("softmax_lse must be float32; got ", dtype_str(softmax_lse.scalar_type())));
  const at::Tensor lse_held = last_dim_contiguous(softmax_lse);
  p.fwd.lse = view_of(lse_held, DType::kFloat32);
  p.dout = ops.data(dout, "dout");
  p.deterministic = deterministic;

  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  const int64_t heads_q = q.size(-2);
  at::Tensor dsinks = at::empty({sinks ? heads_q : 0}, q.options().dtype(at::kFloat));
  p.dq = view_of(dq, p.fwd.q.dtype);
  p.dk = view_of(dk, p.fwd.k.dtype);
  p.dv = view_of(dv, p.fwd.v.dtype);
  if (sinks) p.dsinks = view_of(dsinks, DType::kFloat32);
  call_library([&] { attention_backward(p, ctx); });
  trace_record("bwd", p.fwd, Op::kBackward, ctx);
  return {dq, dk, dv, dsinks};
}

std::tuple<at::Tensor, at::Tensor> fwd_kvcache(
    const at::Tensor& q, at::Tensor k_cache, at::Tensor v_cache, const OptTensor& k, const OptTensor& v,
    const OptTensor& rotary_cos, const OptTensor& rotary_sin, const OptTensor& cache_seqlens, int64_t cache_seqlen,
    const OptTensor& cache_batch_idx, const OptTensor& cache_leftpad, const OptTensor& block_table,
    c10::optional<double> softmax_scale, bool causal, int64_t window_left, int64_t window_right, double softcap,
    bool rotary_interleaved, const OptTensor& alibi_slopes, int64_t num_splits, const OptTensor& sinks,
    bool check) {
  require_rank(q, "q", 4, 4, "[B, Sq, Hq, D]");
  require_rank(v_cache, "v_cache", 4, 4, "[B_cache, S_max, Hkv, Dv] or [num_blocks, block_size, Hkv, Dv]");
  const at::OptionalDeviceGuard guard(at::device_of(q));
  const ExecContext ctx = context_for(q, check);
  Operands ops(q, "q");
  AttnParams p;
  p.q = ops.data(q, "q");
  p.k = ops.written_in_place(k_cache, "k_cache");
  p.v = ops.written_in_place(v_cache, "v_cache");
  p.k_new = ops.data(k, "k");
  p.v_new = ops.data(v, "v");
  p.rotary_cos = ops.like_q(rotary_cos, "rotary_cos");
  p.rotary_sin = ops.like_q(rotary_sin, "rotary_sin");
  p.rotary_interleaved = rotary_interleaved;
  p.cache_seqlens = ops.index(cache_seqlens, "cache_seqlens");
  p.cache_seqlen = cache_seqlen;
  p.cache_batch_idx = ops.index(cache_batch_idx, "cache_batch_idx");
  p.cache_leftpad = ops.index(cache_leftpad, "cache_leftpad");
  p.block_table = ops.index(block_table, "block_table");
  set_score_modifiers(p, ops, q, softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks);
  p.num_splits = static_cast<int>(num_splits);
  at::Tensor out = at::empty(out_shape(q, v_cache), q.options());
  at::Tensor lse = at::empty(lse_shape(q), q.options().dtype(at::kFloat));
  p.out = view_of(out, p.q.dtype);
  p.lse = view_of(lse, DType::kFloat32);
  call_library([&] { attention_kvcache(p, ctx); });
  trace_record("fwd_kvcache", p, Op::kKvCache, ctx);
  return {out, lse};
}

void paged_kv_write_op(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k_new, const at::Tensor& v_new,
                       const at::Tensor& block_table, const at::Tensor& cache_seqlens,
                       const OptTensor& cu_seqlens_new, bool check) {
  const at::OptionalDeviceGuard guard(at::device_of(k_new));
  const ExecContext ctx = context_for(k_new, check);
  Operands ops(k_new, "k_new");
  KvWriteParams p;
  p.k_cache = ops.written_in_place(k_cache, "k_cache");
  p.v_cache = ops.written_in_place(v_cache, "v_cache");
  p.k_new = ops.data(k_new, "k_new");
  p.v_new = ops.data(v_new, "v_new");
  p.block_table = ops.index(block_table, "block_table");
  p.cache_seqlens = ops.index(cache_seqlens, "cache_seqlens");
  p.cu_seqlens_new = ops.index(cu_seqlens_new, "cu_seqlens_new");
  call_library([&] { paged_kv_write(p, ctx); });
  trace_record_kv_write(p, ctx);
}

std::string build_info() {
  return std::string("version=") + version() + " cuda_built=" + (cuda_built() ? "1" : "0") +
         " cuda_available=" + (cuda_available() ? "1" : "0") +
#if FLASHSDPA_TORCH_CUDA
         " torch_cuda=1";
#else
         " torch_cuda=0";
#endif
}

std::string trace_report_op() { return trace_report(); }
void trace_enable_op(bool enabled) { trace_set_enabled(enabled); }
void trace_reset_op() { trace_reset(); }

}  // namespace
}  // namespace flashsdpa::torch_binding

// Argument names and order follow flash-attn 2's Python API where one exists. Index tensors are
// optional; -1 marks an absent integer (max_seqlen hints, cache_seqlen, window sides).
TORCH_LIBRARY(flashsdpa, m) {
  namespace tb = flashsdpa::torch_binding;
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, Tensor? seqused_k, "
      "int max_seqlen_q, int max_seqlen_k, Tensor? block_table, float? softmax_scale, bool causal, "
      "int window_left, int window_right, float softcap, Tensor? alibi_slopes, Tensor? s_aux, float dropout_p, "
      "bool check, bool exact_fp32=False) -> (Tensor out, Tensor softmax_lse)");
  m.def(
      "fwd_out(Tensor(a!) out, Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
      "Tensor? seqused_k, int max_seqlen_q, int max_seqlen_k, Tensor? block_table, float? softmax_scale, "
      "bool causal, int window_left, int window_right, float softcap, Tensor? alibi_slopes, Tensor? s_aux, "
      "float dropout_p, bool check) -> ()");
  m.def(
      "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, Tensor? cu_seqlens_q, "
      "Tensor? cu_seqlens_k, Tensor? seqused_k, int max_seqlen_q, int max_seqlen_k, Tensor? block_table, "
      "float? softmax_scale, bool causal, int window_left, int window_right, float softcap, "
      "Tensor? alibi_slopes, Tensor? s_aux, bool deterministic, bool check) "
      "-> (Tensor dq, Tensor dk, Tensor dv, Tensor ds_aux)");
  m.def(
      "fwd_kvcache(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor? k, Tensor? v, Tensor? rotary_cos, "
      "Tensor? rotary_sin, Tensor? cache_seqlens, int cache_seqlen, Tensor? cache_batch_idx, "
      "Tensor? cache_leftpad, Tensor? block_table, float? softmax_scale, bool causal, int window_left, "
      "int window_right, float softcap, bool rotary_interleaved, Tensor? alibi_slopes, int num_splits, "
      "Tensor? s_aux, bool check) -> (Tensor out, Tensor softmax_lse)");
  m.def(
      "paged_kv_write(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k_new, Tensor v_new, Tensor block_table, "
      "Tensor cache_seqlens, Tensor? cu_seqlens_new, bool check) -> ()");
  m.def("build_info() -> str", &tb::build_info);
  m.def("trace_report() -> str", &tb::trace_report_op);
  m.def("trace_enable(bool enabled) -> ()", &tb::trace_enable_op);
  m.def("trace_reset() -> ()", &tb::trace_reset_op);
}

// One implementation serves CPU and CUDA tensors: it picks the backend from q's device.
TORCH_LIBRARY_IMPL(flashsdpa, CPU, m) {
  namespace tb = flashsdpa::torch_binding;
  m.impl("fwd", &tb::fwd);
  m.impl("fwd_out", &tb::fwd_out);
  m.impl("bwd", &tb::bwd);
  m.impl("fwd_kvcache", &tb::fwd_kvcache);
  m.impl("paged_kv_write", &tb::paged_kv_write_op);
}

#if FLASHSDPA_TORCH_CUDA
TORCH_LIBRARY_IMPL(flashsdpa, CUDA, m) {
  namespace tb = flashsdpa::torch_binding;
  m.impl("fwd", &tb::fwd);
  m.impl("fwd_out", &tb::fwd_out);
  m.impl("bwd", &tb::bwd);
  m.impl("fwd_kvcache", &tb::fwd_kvcache);
  m.impl("paged_kv_write", &tb::paged_kv_write_op);
}
#endif
