// flashsdpa — memory-efficient flash attention. The public, torch-free C++ API.
//
// One attention function (SPEC §2), several entry points:
//   attention_forward    batched, varlen (cu_seqlens) or paged (block_table) forward
//   attention_kvcache    flash_attn_with_kvcache: optional in-place KV append (+ rotary), then attend
//   attention_backward   dq, dk, dv, dsinks
//   paged_kv_write       write new tokens into a paged cache in one launch
//   explain              which backend/tier serves a call, or why none can
//
// Tensors are described by TensorRef (pointer, dtype, shape, strides in elements). The last
// dimension of every tensor must be contiguous. All tensors of one call live where the chosen
// backend expects them: host memory for Backend::kCpu, device memory for Backend::kCuda.
// Every violated precondition throws flashsdpa::Error before anything is written.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>

namespace flashsdpa {

// ---------------------------------------------------------------------------------------------
// Errors

// What kind of precondition failed, so bindings raise the matching error without parsing the
// message (Python: ValueError, TypeError, NotImplementedError).
enum class ErrorKind : int32_t {
  kValue = 0,         // a shape, stride, index or option value is wrong
  kType = 1,          // a dtype is wrong
  kNotSupported = 2,  // valid, but nothing here serves it (a feature, a backend, a tier)
};

// Thrown for every violated precondition. The message names the argument, the expected value and
// the received value. Nothing has been written when it is thrown.
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& message, ErrorKind kind = ErrorKind::kValue)
      : std::invalid_argument(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// A kernel or runtime failure that is not the caller's fault (CUDA launch failure, out of memory).
class RuntimeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------
// Tensors

enum class DType : int32_t { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kInt32 = 3 };

const char* dtype_name(DType dtype);
int64_t dtype_size(DType dtype);

// A strided view. rank 0 (data == nullptr) means "not given".
struct TensorRef {
  static constexpr int kMaxRank = 4;
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  int32_t rank = 0;
  int64_t shape[kMaxRank] = {0, 0, 0, 0};
  int64_t stride[kMaxRank] = {0, 0, 0, 0};  // in elements

  bool defined() const { return rank > 0; }
  void* mutable_data() const { return const_cast<void*>(data); }

  // A contiguous (row-major) view of `shape`.
  static TensorRef contiguous(const void* data, DType dtype, std::initializer_list<int64_t> shape);
  // A view with explicit strides (elements).
  static TensorRef strided(const void* data, DType dtype, std::initializer_list<int64_t> shape,
                           std::initializer_list<int64_t> strides);
};

// ---------------------------------------------------------------------------------------------
// Execution

enum class Backend : int32_t { kAuto = 0, kCpu = 1, kCuda = 2 };
const char* backend_name(Backend backend);

// CUDA: where a call's temporary device memory comes from (cuda-decode's split-KV partials,
// splits x query rows x Hq x (head dim + 1) floats). Unset: a stream-ordered pool of the
// library's own. Captured in a CUDA graph, a pool allocation becomes a memory node between the
// call's kernels and the next call's, and the launch overlap across it is lost: 0.3 us of a
// 19 us decode step on an H100. Memory that needs no graph node (torch's caching allocator, as
// the PyTorch ops use, or a preallocated arena) keeps a captured decode step to its kernels.
// allocate(bytes, stream, user) returns device memory usable in stream order on `stream` (or
// nullptr: the pool serves the call); release(ptr, stream, user) is called once the kernels that
// use it are enqueued, as cudaFreeAsync would be.
struct ScratchAllocator {
  void* (*allocate)(size_t bytes, void* stream, void* user) = nullptr;
  void (*release)(void* ptr, void* stream, void* user) = nullptr;
  void* user = nullptr;
};

struct ExecContext {
  Backend backend = Backend::kAuto;  // kAuto: CUDA when built with CUDA and a GPU is present, else CPU
  int num_threads = 0;               // CPU: worker threads; 0 = all hardware threads
  void* stream = nullptr;            // CUDA: a cudaStream_t; nullptr = the legacy default stream
  ScratchAllocator scratch;          // CUDA: temporary device memory (above); unset = the library's pool
  // Validate index tensors (cu_seqlens, seqused_k, cache_seqlens, block_table, cache_batch_idx)
  // on the host first and raise on bad values. Also enabled by the environment FLASHSDPA_CHECK=1.
  // Host-resident (CPU backend) index tensors are always validated.
  bool check = false;
};

// ---------------------------------------------------------------------------------------------
// The parameters of one attention call (SPEC §1–3). Shapes, with B batch, Sq/Sk lengths,
// Tq/Tk packed totals, Hq/Hkv heads, Dqk/Dv head dims:
//
//   batched:   q [B, Sq, Hq, Dqk]  k [B, Sk, Hkv, Dqk]  v [B, Sk, Hkv, Dv]  out [B, Sq, Hq, Dv]
//   varlen:    q [Tq, Hq, Dqk]     k [Tk, Hkv, Dqk]     v [Tk, Hkv, Dv]     out [Tq, Hq, Dv]
//              with cu_seqlens_q, cu_seqlens_k int32 [B+1]
//   paged:     k [num_blocks, block_size, Hkv, Dqk], v [num_blocks, block_size, Hkv, Dv] with
//              block_table int32 [B, max_blocks_per_seq]; q batched or varlen
//   kv cache:  (attention_kvcache) k = k_cache [B_cache, S_max, Hkv, Dqk] dense or paged as above,
//              cache_seqlens int32 [B] (or cache_seqlen for all), optional k_new/v_new appended.
//
// Key lengths per sequence come from, in this order: cache_seqlens (+ new tokens); seqused_k;
// cu_seqlens_k; the k tensor's length (paged: max_blocks_per_seq * block_size).

inline constexpr float kDefaultScale = std::numeric_limits<float>::quiet_NaN();

struct AttnParams {
  TensorRef q, k, v;
  TensorRef out;  // written
  TensorRef lse;  // optional fp32 output: [B, Hq, Sq] batched, [Hq, Tq] varlen

  // Varlen
  TensorRef cu_seqlens_q, cu_seqlens_k;  // int32 [B+1]
  TensorRef seqused_k;                   // int32 [B]
  int64_t max_seqlen_q = -1;             // varlen hint; -1 = not given
  int64_t max_seqlen_k = -1;

  // Paged KV: when given, k and v are [num_blocks, block_size, Hkv, D] caches.
  TensorRef block_table;  // int32 [B, max_blocks_per_seq]

  // KV cache (attention_kvcache only)
  TensorRef cache_seqlens;     // int32 [B]; or cache_seqlen >= 0 for every sequence
  int64_t cache_seqlen = -1;
  TensorRef cache_batch_idx;   // int32 [B], dense caches only
  TensorRef cache_leftpad;     // int32 [B]
  TensorRef k_new, v_new;      // [B, Snew, Hkv, Dqk] / [B, Snew, Hkv, Dv], written into the cache
  TensorRef rotary_cos, rotary_sin;  // [S_ro, rotary_dim / 2], dtype of q
  bool rotary_interleaved = true;

  // Score modifiers
  float scale = kDefaultScale;  // NaN = 1 / sqrt(Dqk)
  bool causal = false;          // bottom-right aligned; same as window_right = 0
  int64_t window_left = -1;     // -1 = unbounded
  int64_t window_right = -1;
  float softcap = 0.0f;         // 0 = off
  TensorRef alibi_slopes;       // fp32 [Hq] or [B, Hq]
  TensorRef sinks;              // fp32 [Hq]
  float dropout_p = 0.0f;       // must be 0: dropout is not supported

  int num_splits = 0;  // split-KV: 0 = heuristic, 1 = off, n = n splits

  // fp32 only: every product in fp32 FMA (tier cuda-fp32) rather than as three TF32 products on
  // Hopper's tensor cores (cuda-3xtf32-sm90; both pass SPEC §6's fp32 rule). Set it when the
  // forward's out and lse feed attention_backward: the backward's rowsum(dout * out) takes in the
  // output's rounding, and at fp32 only the FMA forward matches the plain fp32 reference closely
  // enough there (a lone key: out == v exactly, so those gradients are exactly 0). flash_attn_func
  // and the other differentiable entry points set it whenever a gradient is needed.
  bool exact_fp32 = false;
};

struct AttnBwdParams {
  AttnParams fwd;  // the forward call; fwd.out and fwd.lse are read (the forward's results)
  TensorRef dout;  // like out
  TensorRef dq, dk, dv;  // written; like q, k, v
  TensorRef dsinks;      // optional fp32 [Hq], written (required shape when fwd.sinks is given)
  bool deterministic = false;  // bit-identical gradients run to run
};

struct KvWriteParams {
  TensorRef k_cache, v_cache;   // [num_blocks, block_size, Hkv, Dqk] / [..., Dv], written
  TensorRef k_new, v_new;       // batched [B, Snew, Hkv, D] or varlen [T, Hkv, D]
  TensorRef block_table;        // int32 [B, max_blocks_per_seq]
  TensorRef cache_seqlens;      // int32 [B]: first logical slot written for sequence b
  TensorRef cu_seqlens_new;     // int32 [B+1] with varlen k_new
};

// ---------------------------------------------------------------------------------------------
// Entry points

void attention_forward(const AttnParams& params, const ExecContext& ctx = {});
void attention_kvcache(const AttnParams& params, const ExecContext& ctx = {});
void attention_backward(const AttnBwdParams& params, const ExecContext& ctx = {});
void paged_kv_write(const KvWriteParams& params, const ExecContext& ctx = {});

enum class Op : int32_t { kForward = 0, kKvCache = 1, kBackward = 2, kPagedKvWrite = 3 };

// Which backend and tier would serve a call, and why. Validates the parameters first; a call that
// would raise reports supported = false and the error message as the reason.
struct Selection {
  bool supported = false;
  Backend backend = Backend::kCpu;
  std::string tier;    // e.g. "cpu-tiled", "cuda-mma-sm80", "cuda-fp32", "cuda-decode"
  std::string reason;  // why this tier, or why none
};
Selection explain(const AttnParams& params, Op op = Op::kForward, const ExecContext& ctx = {});

// Build information
bool cuda_built();        // compiled with the CUDA backend
bool cuda_available();    // ... and a CUDA device is present at run time
const char* version();

}  // namespace flashsdpa
