// Validation of every entry point (SPEC §1–5). Each check throws flashsdpa::Error naming the
// argument, what was expected and what was received. Nothing here writes to an output, so an
// error always leaves outputs and caches untouched.
#include "core/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include "core/text.h"
#include <string>
#include <vector>

namespace flashsdpa::core {
namespace {

constexpr int64_t kMaxHeadDim = 512;  // the CPU backend's bound; GPU tiers narrow it in select.cpp

[[noreturn]] void fail(const std::string& message) { throw Error(message); }
[[noreturn]] void fail_dtype(const std::string& message) { throw Error(message, ErrorKind::kType); }

std::string shape_string(const TensorRef& t) {
  Text os;
  os << '[';
  for (int d = 0; d < t.rank; ++d) os << (d ? ", " : "") << t.shape[d];
  os << ']';
  return os.str();
}

std::string float_dtypes_string() { return "float16, bfloat16 or float32"; }

bool is_float_dtype(DType d) { return d == DType::kFloat16 || d == DType::kBFloat16 || d == DType::kFloat32; }

void require_given(const char* name, const TensorRef& t) {
  // A null pointer is fine for an empty tensor; require_valid_shape rejects it for any other.
  if (!t.defined()) fail(std::string(name) + " is required but was not given");
}

void require_dtype(const char* name, const TensorRef& t, DType expected) {
  if (t.dtype != expected)
    fail_dtype(std::string(name) + " must have dtype " + dtype_name(expected) + "; got " + dtype_name(t.dtype));
}

void require_rank(const char* name, const TensorRef& t, int expected, const char* layout) {
  if (t.rank != expected)
    fail(std::string(name) + " must have rank " + std::to_string(expected) + " (" + layout + "); got rank " +
         std::to_string(t.rank) + " with shape " + shape_string(t));
}

void require_dim(const char* name, const TensorRef& t, int dim, int64_t expected, const char* meaning) {
  if (t.shape[dim] != expected)
    fail(std::string(name) + ".shape[" + std::to_string(dim) + "] (" + meaning + ") must be " +
         std::to_string(expected) + "; got " + std::to_string(t.shape[dim]) + " (shape " + shape_string(t) + ")");
}

void require_valid_shape(const char* name, const TensorRef& t) {
  if (t.rank < 1 || t.rank > TensorRef::kMaxRank)
    fail(std::string(name) + " must have rank 1.." + std::to_string(TensorRef::kMaxRank) + "; got rank " +
         std::to_string(t.rank));
  int64_t numel = 1;
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] < 0)
      fail(std::string(name) + ".shape[" + std::to_string(d) + "] must be >= 0; got " + std::to_string(t.shape[d]));
    numel *= t.shape[d];
  }
  // A view with elements but no storage would be dereferenced by a backend.
  if (numel > 0 && t.data == nullptr)
    fail(std::string(name) + " has shape " + shape_string(t) + " but a null data pointer");
}

// The last dimension must be contiguous: kernels read rows as plain vectors.
void require_last_contiguous(const char* name, const TensorRef& t) {
  if (t.shape[t.rank - 1] > 1 && t.stride[t.rank - 1] != 1)
    fail(std::string(name) + " must be contiguous in its last dimension (stride 1); got stride " +
         std::to_string(t.stride[t.rank - 1]));
}

// A float operand shared by q/k/v/out: given, dtype, rank, strides.
void require_operand(const char* name, const TensorRef& t, DType dtype, int rank, const char* layout,
                     const char* dtype_source = "q") {
  require_given(name, t);
  require_valid_shape(name, t);
  if (!is_float_dtype(t.dtype))
    fail_dtype(std::string(name) + " must have dtype " + float_dtypes_string() + "; got " + dtype_name(t.dtype));
  if (t.dtype != dtype)
    fail_dtype(std::string(name) + " must have the same dtype as " + dtype_source + " (" + dtype_name(dtype) + "); got " +
         dtype_name(t.dtype));
  require_rank(name, t, rank, layout);
  require_last_contiguous(name, t);
}

// A vector of `dtype` read with unit stride.
void require_vector(const char* name, const TensorRef& t, DType dtype, int64_t length, const char* meaning) {
  require_valid_shape(name, t);
  require_dtype(name, t, dtype);
  require_rank(name, t, 1, meaning);
  require_dim(name, t, 0, length, meaning);
  if (length > 1 && t.stride[0] != 1)
    fail(std::string(name) + " must be contiguous (stride 1); got stride " + std::to_string(t.stride[0]));
}

void require_index_vector(const char* name, const TensorRef& t, int64_t length, const char* meaning) {
  require_vector(name, t, DType::kInt32, length, meaning);
}

void require_float32_vector(const char* name, const TensorRef& t, int64_t length, const char* meaning) {
  require_vector(name, t, DType::kFloat32, length, meaning);
}

void require_not_given(const char* name, const TensorRef& t, const char* why) {
  if (t.defined()) fail(std::string(name) + " must not be given " + why);
}

Operand operand_of(const TensorRef& t) {
  Operand o;
  o.ptr = t.data;
  if (t.rank == 4) {
    o.batch_stride = t.stride[0];
    o.row_stride = t.stride[1];
    o.head_stride = t.stride[2];
  } else if (t.rank == 3) {
    o.row_stride = t.stride[0];
    o.head_stride = t.stride[1];
  }
  return o;
}

// Reads an index tensor's values onto the host (they may live on a device).
std::vector<int32_t> fetch_values(const ValidateOptions& options, const TensorRef& t, int64_t count) {
  std::vector<int32_t> values(static_cast<size_t>(count));
  if (count == 0) return values;
  const auto* src = static_cast<const int32_t*>(t.data);
  if (options.fetch) {
    options.fetch(src, count, values.data());
  } else {
    for (int64_t i = 0; i < count; ++i) values[i] = src[i];
  }
  return values;
}

// cu_seqlens: starts at 0, non-decreasing, ends at the packed total.
std::vector<int32_t> check_cu_seqlens(const ValidateOptions& options, const char* name, const TensorRef& t,
                                      int64_t batch, int64_t total, const char* total_meaning) {
  std::vector<int32_t> cu = fetch_values(options, t, batch + 1);
  if (cu[0] != 0) fail(std::string(name) + "[0] must be 0; got " + std::to_string(cu[0]));
  for (int64_t b = 1; b <= batch; ++b)
    if (cu[b] < cu[b - 1])
      fail(std::string(name) + " must be non-decreasing; got " + name + "[" + std::to_string(b) +
           "] = " + std::to_string(cu[b]) + " < " + name + "[" + std::to_string(b - 1) + "] = " +
           std::to_string(cu[b - 1]));
  if (total >= 0 && cu[batch] != total)
    fail(std::string(name) + "[" + std::to_string(batch) + "] must equal " + total_meaning + " = " +
         std::to_string(total) + "; got " + std::to_string(cu[batch]));
  return cu;
}

void check_scalars(const AttnParams& a) {
  if (!std::isnan(a.scale) && !std::isfinite(a.scale))
    fail("scale must be finite (or NaN for the default 1/sqrt(head_dim)); got " + std::to_string(a.scale));
  if (!(a.softcap >= 0.0f) || !std::isfinite(a.softcap))
    fail("softcap must be >= 0 and finite (0 = off); got " + std::to_string(a.softcap));
  if (a.window_left < -1) fail("window_left must be >= -1 (-1 = unbounded); got " + std::to_string(a.window_left));
  if (a.window_right < -1)
    fail("window_right must be >= -1 (-1 = unbounded); got " + std::to_string(a.window_right));
  if (a.dropout_p != 0.0f) {
    if (!(a.dropout_p >= 0.0f && a.dropout_p <= 1.0f))
      fail("dropout_p must be in [0, 1]; got " + std::to_string(a.dropout_p));
    throw Error("dropout_p: dropout is not supported; got dropout_p = " + std::to_string(a.dropout_p) + ", expected 0",
                ErrorKind::kNotSupported);
  }
  if (a.num_splits < 0) fail("num_splits must be >= 0 (0 = heuristic); got " + std::to_string(a.num_splits));
}

// Shared between forward and kvcache: head counts, head dims, modifiers, lse.
void fill_heads_and_modifiers(const AttnParams& a, Problem& p, int64_t head_dim_qk, int64_t head_dim_v) {
  if (p.heads_q < 1) fail("q.shape (heads) must be >= 1; got " + std::to_string(p.heads_q));
  if (p.heads_kv < 1) fail("k.shape (kv heads) must be >= 1; got " + std::to_string(p.heads_kv));
  if (p.heads_q % p.heads_kv != 0)
    fail("heads: q heads must be a multiple of kv heads (GQA/MQA); got Hq = " + std::to_string(p.heads_q) +
         ", Hkv = " + std::to_string(p.heads_kv));
  p.group = p.heads_q / p.heads_kv;
  if (head_dim_qk < 1 || head_dim_qk > kMaxHeadDim)
    fail("q head dim must be in 1.." + std::to_string(kMaxHeadDim) + "; got " + std::to_string(head_dim_qk));
  if (head_dim_v < 1 || head_dim_v > kMaxHeadDim)
    fail("v head dim must be in 1.." + std::to_string(kMaxHeadDim) + "; got " + std::to_string(head_dim_v));
  p.head_dim_qk = head_dim_qk;
  p.head_dim_v = head_dim_v;

  check_scalars(a);
  p.scale = std::isnan(a.scale) ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim_qk))) : a.scale;
  p.softcap = a.softcap;
  p.causal = a.causal;
  p.window_left = a.window_left;
  p.window_right = a.causal ? 0 : a.window_right;  // causal is window_right = 0, as in flash-attn
  p.num_splits = a.num_splits;
  p.exact_fp32 = a.exact_fp32;

  if (a.sinks.defined()) {
    require_float32_vector("sinks", a.sinks, p.heads_q, "one sink logit per query head, [Hq]");
    p.sinks = static_cast<const float*>(a.sinks.data);
  }
  if (a.alibi_slopes.defined()) {
    const TensorRef& s = a.alibi_slopes;
    require_valid_shape("alibi_slopes", s);
    require_dtype("alibi_slopes", s, DType::kFloat32);
    if (s.rank == 1) {
      require_dim("alibi_slopes", s, 0, p.heads_q, "query heads");
      if (p.heads_q > 1 && s.stride[0] != 1) fail("alibi_slopes must be contiguous in its last dimension");
      p.alibi_batch_stride = 0;
    } else if (s.rank == 2) {
      require_dim("alibi_slopes", s, 0, p.batch, "batch");
      require_dim("alibi_slopes", s, 1, p.heads_q, "query heads");
      if (p.heads_q > 1 && s.stride[1] != 1) fail("alibi_slopes must be contiguous in its last dimension");
      p.alibi_batch_stride = s.stride[0];
    } else {
      fail("alibi_slopes must have shape [Hq] or [B, Hq]; got " + shape_string(s));
    }
    p.alibi_slopes = static_cast<const float*>(s.data);
  }
}

void fill_lse(const AttnParams& a, Problem& p) {
  if (!a.lse.defined()) return;
  const TensorRef& l = a.lse;
  require_valid_shape("lse", l);
  require_dtype("lse", l, DType::kFloat32);
  if (p.q_layout == QLayout::kBatched) {
    require_rank("lse", l, 3, "[B, Hq, Sq] for batched q");
    require_dim("lse", l, 0, p.batch, "batch");
    require_dim("lse", l, 1, p.heads_q, "query heads");
    require_dim("lse", l, 2, p.seqlen_q, "query length");
    p.lse_batch_stride = l.stride[0];
    p.lse_head_stride = l.stride[1];
    p.lse_row_stride = l.stride[2];
  } else {
    require_rank("lse", l, 2, "[Hq, Tq] for varlen q");
    require_dim("lse", l, 0, p.heads_q, "query heads");
    require_dim("lse", l, 1, p.total_q, "total query tokens");
    p.lse_head_stride = l.stride[0];
    p.lse_row_stride = l.stride[1];
  }
  p.lse = static_cast<float*>(l.mutable_data());
}

void fill_out(const AttnParams& a, Problem& p, const TensorRef& q) {
  const TensorRef& o = a.out;
  require_operand("out", o, q.dtype, q.rank, q.rank == 4 ? "[B, Sq, Hq, Dv]" : "[Tq, Hq, Dv]");
  for (int d = 0; d + 1 < q.rank; ++d) require_dim("out", o, d, q.shape[d], d + 2 == q.rank ? "query heads" : "as q");
  require_dim("out", o, q.rank - 1, p.head_dim_v, "v head dim");
  p.out = operand_of(o);
}

// Paged caches: k [num_blocks, block_size, Hkv, Dqk], v [num_blocks, block_size, Hkv, Dv].
void fill_paged(const AttnParams& a, Problem& p, const TensorRef& k, const TensorRef& v) {
  const TensorRef& bt = a.block_table;
  require_valid_shape("block_table", bt);
  require_dtype("block_table", bt, DType::kInt32);
  require_rank("block_table", bt, 2, "[B, max_blocks_per_seq]");
  require_dim("block_table", bt, 0, p.batch, "batch");
  if (bt.shape[1] > 1 && bt.stride[1] != 1) fail("block_table must be contiguous in its last dimension");
  if (k.shape[1] < 1) fail("k.shape[1] (block_size) must be >= 1; got " + std::to_string(k.shape[1]));
  require_dim("v", v, 0, k.shape[0], "num_blocks, as k");
  require_dim("v", v, 1, k.shape[1], "block_size, as k");
  p.kv_layout = KvLayout::kPaged;
  p.block_table = static_cast<const int32_t*>(bt.data);
  p.block_table_stride = bt.stride[0];
  p.max_blocks_per_seq = bt.shape[1];
  p.num_blocks = k.shape[0];
  p.block_size = k.shape[1];
  p.cache_capacity = p.max_blocks_per_seq * p.block_size;
  p.seqlen_k = p.cache_capacity;
}

// Block-table entries that a sequence uses (keys [0, used_keys)) must name real blocks.
void check_block_table(const ValidateOptions& options, const TensorRef& bt, const Problem& p,
                       const std::vector<int64_t>& used_keys) {
  const int64_t rows = p.batch;
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t blocks = (used_keys[b] + p.block_size - 1) / p.block_size;
    if (blocks == 0) continue;
    const auto* row = static_cast<const int32_t*>(bt.data) + b * p.block_table_stride;
    TensorRef row_ref = bt;
    row_ref.data = row;
    std::vector<int32_t> entries = fetch_values(options, row_ref, blocks);
    for (int64_t s = 0; s < blocks; ++s)
      if (entries[s] < 0 || entries[s] >= p.num_blocks)
        fail("block_table[" + std::to_string(b) + "][" + std::to_string(s) + "] must be in [0, num_blocks = " +
             std::to_string(p.num_blocks) + "); got " + std::to_string(entries[s]));
  }
}

void check_common_kv(const TensorRef& q, const TensorRef& k, const TensorRef& v, int kv_rank, const char* k_layout,
                     const char* v_layout) {
  require_operand("k", k, q.dtype, kv_rank, k_layout);
  require_operand("v", v, q.dtype, kv_rank, v_layout);
  require_dim("k", k, kv_rank - 1, q.shape[q.rank - 1], "head dim, as q");
  require_dim("v", v, kv_rank - 2, k.shape[kv_rank - 2], "kv heads, as k");
  for (int d = 0; d < kv_rank - 2; ++d) require_dim("v", v, d, k.shape[d], "as k");
}

}  // namespace

bool env_check_enabled() {
  const char* value = std::getenv("FLASHSDPA_CHECK");
  return value != nullptr && value[0] != '\0' && std::string(value) != "0";
}

Problem prepare_forward(const AttnParams& a, const ValidateOptions& options) {
  require_operand("q", a.q, a.q.dtype, a.q.rank == 3 ? 3 : 4, "[B, Sq, Hq, D] batched or [Tq, Hq, D] varlen");
  const TensorRef& q = a.q;
  Problem p;
  p.dtype = q.dtype;
  require_not_given("cache_seqlens", a.cache_seqlens, "to attention_forward (it belongs to attention_kvcache)");
  require_not_given("cache_batch_idx", a.cache_batch_idx, "to attention_forward (it belongs to attention_kvcache)");
  require_not_given("cache_leftpad", a.cache_leftpad, "to attention_forward (it belongs to attention_kvcache)");
  require_not_given("k_new", a.k_new, "to attention_forward (it belongs to attention_kvcache)");
  require_not_given("v_new", a.v_new, "to attention_forward (it belongs to attention_kvcache)");
  require_not_given("rotary_cos", a.rotary_cos, "to attention_forward (it belongs to attention_kvcache)");
  require_not_given("rotary_sin", a.rotary_sin, "to attention_forward (it belongs to attention_kvcache)");
  if (a.cache_seqlen >= 0) fail("cache_seqlen must not be given to attention_forward (it belongs to attention_kvcache)");

  const bool paged = a.block_table.defined();
  const bool varlen_q = q.rank == 3;
  if (varlen_q) {
    require_given("cu_seqlens_q", a.cu_seqlens_q);
    if (a.cu_seqlens_q.rank != 1)
      fail("cu_seqlens_q must have rank 1 ([B+1]); got shape " + shape_string(a.cu_seqlens_q));
    p.q_layout = QLayout::kVarlen;
    p.batch = a.cu_seqlens_q.shape[0] - 1;
    if (p.batch < 0) fail("cu_seqlens_q must have at least one element ([B+1]); got shape [0]");
    p.total_q = q.shape[0];
    p.heads_q = q.shape[1];
    require_index_vector("cu_seqlens_q", a.cu_seqlens_q, p.batch + 1, "[B+1]");
  } else {
    if (a.cu_seqlens_q.defined())
      fail("cu_seqlens_q must not be given with batched q of rank 4; got q shape " + shape_string(q) +
           " (use q of shape [Tq, Hq, D] for varlen)");
    p.q_layout = QLayout::kBatched;
    p.batch = q.shape[0];
    p.seqlen_q = q.shape[1];
    p.heads_q = q.shape[2];
  }
  p.q = operand_of(q);

  // Keys and values.
  if (paged) {
    check_common_kv(q, a.k, a.v, 4, "[num_blocks, block_size, Hkv, Dqk] with block_table",
                    "[num_blocks, block_size, Hkv, Dv] with block_table");
    fill_paged(a, p, a.k, a.v);
    p.heads_kv = a.k.shape[2];
    if (a.cu_seqlens_k.defined()) require_index_vector("cu_seqlens_k", a.cu_seqlens_k, p.batch + 1, "[B+1]");
  } else if (varlen_q) {
    check_common_kv(q, a.k, a.v, 3, "[Tk, Hkv, Dqk] for varlen", "[Tk, Hkv, Dv] for varlen");
    require_given("cu_seqlens_k", a.cu_seqlens_k);
    require_index_vector("cu_seqlens_k", a.cu_seqlens_k, p.batch + 1, "[B+1]");
    p.kv_layout = KvLayout::kVarlen;
    p.total_k = a.k.shape[0];
    p.heads_kv = a.k.shape[1];
  } else {
    check_common_kv(q, a.k, a.v, 4, "[B, Sk, Hkv, Dqk] batched", "[B, Sk, Hkv, Dv] batched");
    require_dim("k", a.k, 0, p.batch, "batch, as q");
    if (a.cu_seqlens_k.defined()) fail("cu_seqlens_k must not be given with batched k of rank 4");
    p.kv_layout = KvLayout::kBatched;
    p.seqlen_k = a.k.shape[1];
    p.heads_kv = a.k.shape[2];
  }
  p.k = operand_of(a.k);
  p.v = operand_of(a.v);
  fill_heads_and_modifiers(a, p, q.shape[q.rank - 1], a.v.shape[a.v.rank - 1]);
  fill_out(a, p, q);

  if (a.seqused_k.defined()) {
    require_index_vector("seqused_k", a.seqused_k, p.batch, "[B]");
    p.seqused_k = static_cast<const int32_t*>(a.seqused_k.data);
  }
  if (a.cu_seqlens_k.defined()) p.cu_seqlens_k = static_cast<const int32_t*>(a.cu_seqlens_k.data);
  if (varlen_q) p.cu_seqlens_q = static_cast<const int32_t*>(a.cu_seqlens_q.data);
  if (a.max_seqlen_q < -1) fail("max_seqlen_q must be >= 0 (or -1 = not given); got " + std::to_string(a.max_seqlen_q));
  if (a.max_seqlen_k < -1) fail("max_seqlen_k must be >= 0 (or -1 = not given); got " + std::to_string(a.max_seqlen_k));

  // Index values: the lengths they describe, checked where they can be read.
  if (options.check_index_values) {
    std::vector<int64_t> key_len(static_cast<size_t>(p.batch), p.seqlen_k);
    if (varlen_q) {
      auto cu = check_cu_seqlens(options, "cu_seqlens_q", a.cu_seqlens_q, p.batch, p.total_q, "q.shape[0] (total query tokens)");
      int64_t max_q = 0;
      for (int64_t b = 0; b < p.batch; ++b) max_q = std::max<int64_t>(max_q, cu[b + 1] - cu[b]);
      if (a.max_seqlen_q >= 0 && a.max_seqlen_q < max_q)
        fail("max_seqlen_q must be >= the longest query sequence (" + std::to_string(max_q) + "); got " +
             std::to_string(a.max_seqlen_q));
      p.seqlen_q = max_q;
    }
    if (a.cu_seqlens_k.defined()) {
      auto cu = check_cu_seqlens(options, "cu_seqlens_k", a.cu_seqlens_k, p.batch, paged ? -1 : p.total_k,
                                 "k.shape[0] (total key tokens)");
      for (int64_t b = 0; b < p.batch; ++b) {
        key_len[b] = cu[b + 1] - cu[b];
        if (paged && key_len[b] > p.cache_capacity)
          fail("cu_seqlens_k: sequence " + std::to_string(b) + " has " + std::to_string(key_len[b]) +
               " keys but block_table holds only max_blocks_per_seq * block_size = " +
               std::to_string(p.cache_capacity));
      }
    }
    if (a.seqused_k.defined()) {
      auto used = fetch_values(options, a.seqused_k, p.batch);
      for (int64_t b = 0; b < p.batch; ++b) {
        if (used[b] < 0 || used[b] > key_len[b])
          fail("seqused_k[" + std::to_string(b) + "] must be in [0, " + std::to_string(key_len[b]) +
               "] (the keys sequence " + std::to_string(b) + " has); got " + std::to_string(used[b]));
        key_len[b] = used[b];
      }
    }
    int64_t max_k = 0;
    for (int64_t b = 0; b < p.batch; ++b) max_k = std::max(max_k, key_len[b]);
    if (a.max_seqlen_k >= 0 && a.max_seqlen_k < max_k && p.kv_layout != KvLayout::kBatched)
      fail("max_seqlen_k must be >= the longest key sequence (" + std::to_string(max_k) + "); got " +
           std::to_string(a.max_seqlen_k));
    if (paged) check_block_table(options, a.block_table, p, key_len);
    if (p.kv_layout == KvLayout::kVarlen) p.seqlen_k = max_k;
  } else {
    // Unchecked device-resident indices: upper bounds from the hints, else from the totals.
    if (varlen_q) p.seqlen_q = a.max_seqlen_q >= 0 ? std::min(a.max_seqlen_q, p.total_q) : p.total_q;
    if (p.kv_layout == KvLayout::kVarlen) p.seqlen_k = a.max_seqlen_k >= 0 ? std::min(a.max_seqlen_k, p.total_k) : p.total_k;
  }
  fill_lse(a, p);
  return p;
}

Problem prepare_kvcache(const AttnParams& a, const ValidateOptions& options) {
  require_operand("q", a.q, a.q.dtype, 4, "[B, Sq, Hq, D]");
  const TensorRef& q = a.q;
  if (a.cu_seqlens_q.defined() || a.cu_seqlens_k.defined())
    fail("cu_seqlens_q / cu_seqlens_k must not be given to attention_kvcache (use cache_seqlens)");
  if (a.seqused_k.defined()) fail("seqused_k must not be given to attention_kvcache (use cache_seqlens)");
  Problem p;
  p.dtype = q.dtype;
  p.q_layout = QLayout::kBatched;
  p.batch = q.shape[0];
  p.seqlen_q = q.shape[1];
  p.heads_q = q.shape[2];
  p.q = operand_of(q);

  const bool paged = a.block_table.defined();
  check_common_kv(q, a.k, a.v, 4,
                  paged ? "k_cache [num_blocks, block_size, Hkv, Dqk] with block_table" : "k_cache [B_cache, S_max, Hkv, Dqk]",
                  paged ? "v_cache [num_blocks, block_size, Hkv, Dv] with block_table" : "v_cache [B_cache, S_max, Hkv, Dv]");
  p.heads_kv = a.k.shape[2];
  if (paged) {
    fill_paged(a, p, a.k, a.v);
    if (a.cache_batch_idx.defined()) fail("cache_batch_idx must not be given with a paged cache (block_table)");
  } else {
    p.kv_layout = KvLayout::kDenseCache;
    p.cache_batch = a.k.shape[0];
    p.cache_capacity = a.k.shape[1];
    p.seqlen_k = p.cache_capacity;
    if (!a.cache_batch_idx.defined()) require_dim("k", a.k, 0, p.batch, "cache batch, as q (or give cache_batch_idx)");
  }
  p.k = operand_of(a.k);
  p.v = operand_of(a.v);
  fill_heads_and_modifiers(a, p, q.shape[3], a.v.shape[3]);
  fill_out(a, p, q);

  // Cache lengths.
  if (a.cache_seqlens.defined()) {
    require_index_vector("cache_seqlens", a.cache_seqlens, p.batch, "[B]");
    p.cache_seqlens = static_cast<const int32_t*>(a.cache_seqlens.data);
    if (a.cache_seqlen >= 0) fail("give either cache_seqlens or cache_seqlen, not both");
  } else if (a.cache_seqlen >= 0) {
    p.cache_seqlen_all = a.cache_seqlen;
  } else if (a.k_new.defined()) {
    fail("cache_seqlens is required when k_new/v_new are appended (where to write them)");
  } else {
    p.cache_seqlen_all = p.cache_capacity;  // attend to the whole cache
  }
  if (a.cache_batch_idx.defined()) {
    require_index_vector("cache_batch_idx", a.cache_batch_idx, p.batch, "[B]");
    p.cache_batch_idx = static_cast<const int32_t*>(a.cache_batch_idx.data);
  }
  if (a.cache_leftpad.defined()) {
    require_index_vector("cache_leftpad", a.cache_leftpad, p.batch, "[B]");
    p.cache_leftpad = static_cast<const int32_t*>(a.cache_leftpad.data);
  }

  // New tokens.
  if (a.k_new.defined() != a.v_new.defined()) fail("k_new and v_new must be given together");
  if (a.k_new.defined()) {
    require_operand("k_new", a.k_new, q.dtype, 4, "[B, Snew, Hkv, Dqk]");
    require_operand("v_new", a.v_new, q.dtype, 4, "[B, Snew, Hkv, Dv]");
    require_dim("k_new", a.k_new, 0, p.batch, "batch, as q");
    require_dim("k_new", a.k_new, 2, p.heads_kv, "kv heads, as k_cache");
    require_dim("k_new", a.k_new, 3, p.head_dim_qk, "head dim, as q");
    require_dim("v_new", a.v_new, 0, p.batch, "batch, as q");
    require_dim("v_new", a.v_new, 1, a.k_new.shape[1], "new tokens, as k_new");
    require_dim("v_new", a.v_new, 2, p.heads_kv, "kv heads, as v_cache");
    require_dim("v_new", a.v_new, 3, p.head_dim_v, "head dim, as v_cache");
    p.k_new = operand_of(a.k_new);
    p.v_new = operand_of(a.v_new);
    p.seqlen_new = a.k_new.shape[1];
  }

  // Rotary tables.
  if (a.rotary_cos.defined() != a.rotary_sin.defined()) fail("rotary_cos and rotary_sin must be given together");
  if (a.rotary_cos.defined()) {
    for (const char* name : {"rotary_cos", "rotary_sin"}) {
      const TensorRef& t = name[7] == 'c' ? a.rotary_cos : a.rotary_sin;
      require_valid_shape(name, t);
      if (t.dtype != q.dtype)
        fail_dtype(std::string(name) + " must have the same dtype as q (" + dtype_name(q.dtype) + "); got " + dtype_name(t.dtype));
      require_rank(name, t, 2, "[S_ro, rotary_dim / 2]");
      require_last_contiguous(name, t);
    }
    require_dim("rotary_sin", a.rotary_sin, 0, a.rotary_cos.shape[0], "positions, as rotary_cos");
    require_dim("rotary_sin", a.rotary_sin, 1, a.rotary_cos.shape[1], "rotary_dim / 2, as rotary_cos");
    if (a.rotary_sin.stride[0] != a.rotary_cos.stride[0])
      fail("rotary_sin must have the same row stride as rotary_cos (" + std::to_string(a.rotary_cos.stride[0]) +
           "); got " + std::to_string(a.rotary_sin.stride[0]));
    const int64_t rotary_dim = 2 * a.rotary_cos.shape[1];
    if (rotary_dim < 2 || rotary_dim > p.head_dim_qk)
      fail("rotary_dim (2 * rotary_cos.shape[1]) must be in [2, head dim " + std::to_string(p.head_dim_qk) +
           "]; got " + std::to_string(rotary_dim));
    if (!a.k_new.defined()) fail("rotary_cos / rotary_sin need k_new and v_new (rotary is applied to appended keys and q)");
    p.rotary_cos = a.rotary_cos.data;
    p.rotary_sin = a.rotary_sin.data;
    p.rotary_row_stride = a.rotary_cos.stride[0];
    p.rotary_dim = rotary_dim;
    p.rotary_rows = a.rotary_cos.shape[0];
    p.rotary_interleaved = a.rotary_interleaved;
  }

  // Index values.
  if (options.check_index_values) {
    std::vector<int32_t> cached(static_cast<size_t>(p.batch), static_cast<int32_t>(p.cache_seqlen_all));
    if (p.cache_seqlens) cached = fetch_values(options, a.cache_seqlens, p.batch);
    std::vector<int64_t> key_len(static_cast<size_t>(p.batch));
    for (int64_t b = 0; b < p.batch; ++b) {
      if (cached[b] < 0)
        fail("cache_seqlens[" + std::to_string(b) + "] must be >= 0; got " + std::to_string(cached[b]));
      key_len[b] = static_cast<int64_t>(cached[b]) + p.seqlen_new;
      if (key_len[b] > p.cache_capacity)
        fail("cache overflow: cache_seqlens[" + std::to_string(b) + "] + new tokens = " + std::to_string(key_len[b]) +
             " exceeds the cache capacity " + std::to_string(p.cache_capacity) +
             (paged ? " (max_blocks_per_seq * block_size)" : " (k_cache.shape[1])"));
      if (p.rotary_dim > 0) {
        // k_new rows sit at cached .. cached + Snew - 1; q rows at cached + i (causal/window) or cached.
        const bool per_row_q = p.window_left >= 0 || p.window_right >= 0;
        const int64_t last_q = cached[b] + (per_row_q ? std::max<int64_t>(p.seqlen_q - 1, 0) : 0);
        const int64_t last_position = std::max(key_len[b] - 1, last_q);
        if (last_position >= p.rotary_rows)
          fail("rotary_cos has " + std::to_string(p.rotary_rows) + " rows (positions) but sequence " +
               std::to_string(b) + " needs position " + std::to_string(last_position));
      }
    }
    if (p.cache_batch_idx) {
      auto idx = fetch_values(options, a.cache_batch_idx, p.batch);
      for (int64_t b = 0; b < p.batch; ++b)
        if (idx[b] < 0 || idx[b] >= p.cache_batch)
          fail("cache_batch_idx[" + std::to_string(b) + "] must be in [0, " + std::to_string(p.cache_batch) +
               ") (k_cache.shape[0]); got " + std::to_string(idx[b]));
    }
    if (p.cache_leftpad) {
      auto pad = fetch_values(options, a.cache_leftpad, p.batch);
      for (int64_t b = 0; b < p.batch; ++b)
        if (pad[b] < 0 || pad[b] > key_len[b])
          fail("cache_leftpad[" + std::to_string(b) + "] must be in [0, " + std::to_string(key_len[b]) +
               "] (cache_seqlens + new tokens); got " + std::to_string(pad[b]));
    }
    if (paged) check_block_table(options, a.block_table, p, key_len);
  }
  fill_lse(a, p);
  return p;
}

BwdProblem prepare_backward(const AttnBwdParams& a, const ValidateOptions& options) {
  if (a.fwd.block_table.defined())
    throw Error("block_table: backward over a paged KV cache is not supported", ErrorKind::kNotSupported);
  BwdProblem bp;
  bp.fwd = prepare_forward(a.fwd, options);
  const Problem& p = bp.fwd;
  require_given("lse", a.fwd.lse);  // the forward's log-sum-exp, read
  const TensorRef& q = a.fwd.q;
  auto like = [&](const char* name, const TensorRef& t, const TensorRef& model) {
    require_operand(name, t, q.dtype, model.rank, "same shape as its forward tensor");
    for (int d = 0; d < model.rank; ++d)
      if (t.shape[d] != model.shape[d])
        fail(std::string(name) + " must have the shape of its forward tensor " + shape_string(model) + "; got " +
             shape_string(t));
    return operand_of(t);
  };
  bp.dout = like("dout", a.dout, a.fwd.out);
  bp.dq = like("dq", a.dq, a.fwd.q);
  bp.dk = like("dk", a.dk, a.fwd.k);
  bp.dv = like("dv", a.dv, a.fwd.v);
  if (a.dsinks.defined()) {
    if (!a.fwd.sinks.defined()) fail("dsinks must not be given without sinks");
    require_float32_vector("dsinks", a.dsinks, p.heads_q, "[Hq]");
    bp.dsinks = static_cast<float*>(a.dsinks.mutable_data());
  }
  bp.deterministic = a.deterministic;
  return bp;
}

KvWriteProblem prepare_kv_write(const KvWriteParams& a, const ValidateOptions& options) {
  KvWriteProblem p;
  require_given("k_cache", a.k_cache);
  require_valid_shape("k_cache", a.k_cache);
  const DType dtype = a.k_cache.dtype;
  require_operand("k_cache", a.k_cache, dtype, 4, "[num_blocks, block_size, Hkv, Dqk]");
  require_operand("v_cache", a.v_cache, dtype, 4, "[num_blocks, block_size, Hkv, Dv]", "k_cache");
  require_dim("v_cache", a.v_cache, 0, a.k_cache.shape[0], "num_blocks, as k_cache");
  require_dim("v_cache", a.v_cache, 1, a.k_cache.shape[1], "block_size, as k_cache");
  require_dim("v_cache", a.v_cache, 2, a.k_cache.shape[2], "kv heads, as k_cache");
  if (a.k_cache.shape[1] < 1) fail("k_cache.shape[1] (block_size) must be >= 1; got " + std::to_string(a.k_cache.shape[1]));
  p.dtype = dtype;
  p.num_blocks = a.k_cache.shape[0];
  p.block_size = a.k_cache.shape[1];
  p.heads_kv = a.k_cache.shape[2];
  p.head_dim_qk = a.k_cache.shape[3];
  p.head_dim_v = a.v_cache.shape[3];
  p.k_cache = operand_of(a.k_cache);
  p.v_cache = operand_of(a.v_cache);

  const bool varlen = a.k_new.rank == 3;
  const int rank = varlen ? 3 : 4;
  require_operand("k_new", a.k_new, dtype, rank, varlen ? "[T, Hkv, Dqk] with cu_seqlens_new" : "[B, Snew, Hkv, Dqk]",
                  "k_cache");
  require_operand("v_new", a.v_new, dtype, rank, varlen ? "[T, Hkv, Dv] with cu_seqlens_new" : "[B, Snew, Hkv, Dv]",
                  "k_cache");
  require_dim("k_new", a.k_new, rank - 2, p.heads_kv, "kv heads, as k_cache");
  require_dim("k_new", a.k_new, rank - 1, p.head_dim_qk, "head dim, as k_cache");
  require_dim("v_new", a.v_new, rank - 2, p.heads_kv, "kv heads, as v_cache");
  require_dim("v_new", a.v_new, rank - 1, p.head_dim_v, "head dim, as v_cache");
  for (int d = 0; d < rank - 2; ++d) require_dim("v_new", a.v_new, d, a.k_new.shape[d], "as k_new");
  p.k_new = operand_of(a.k_new);
  p.v_new = operand_of(a.v_new);

  require_given("block_table", a.block_table);
  require_valid_shape("block_table", a.block_table);
  require_dtype("block_table", a.block_table, DType::kInt32);
  require_rank("block_table", a.block_table, 2, "[B, max_blocks_per_seq]");
  p.batch = a.block_table.shape[0];
  if (a.block_table.shape[1] > 1 && a.block_table.stride[1] != 1) fail("block_table must be contiguous in its last dimension");
  p.block_table = static_cast<const int32_t*>(a.block_table.data);
  p.block_table_stride = a.block_table.stride[0];
  p.max_blocks_per_seq = a.block_table.shape[1];
  require_given("cache_seqlens", a.cache_seqlens);
  require_index_vector("cache_seqlens", a.cache_seqlens, p.batch, "[B]");
  p.cache_seqlens = static_cast<const int32_t*>(a.cache_seqlens.data);

  if (varlen) {
    require_given("cu_seqlens_new", a.cu_seqlens_new);
    require_index_vector("cu_seqlens_new", a.cu_seqlens_new, p.batch + 1, "[B+1]");
    p.cu_seqlens_new = static_cast<const int32_t*>(a.cu_seqlens_new.data);
    p.total_new = a.k_new.shape[0];
  } else {
    if (a.cu_seqlens_new.defined()) fail("cu_seqlens_new must not be given with batched k_new of rank 4");
    require_dim("k_new", a.k_new, 0, p.batch, "batch, as block_table");
    p.seqlen_new = a.k_new.shape[1];
  }

  if (options.check_index_values) {
    std::vector<int64_t> count(static_cast<size_t>(p.batch), p.seqlen_new);
    if (varlen) {
      auto cu = check_cu_seqlens(options, "cu_seqlens_new", a.cu_seqlens_new, p.batch, a.k_new.shape[0],
                                 "k_new.shape[0] (total new tokens)");
      for (int64_t b = 0; b < p.batch; ++b) count[b] = cu[b + 1] - cu[b];
    }
    auto cached = fetch_values(options, a.cache_seqlens, p.batch);
    const int64_t capacity = p.max_blocks_per_seq * p.block_size;
    std::vector<int64_t> used(static_cast<size_t>(p.batch));
    for (int64_t b = 0; b < p.batch; ++b) {
      if (cached[b] < 0) fail("cache_seqlens[" + std::to_string(b) + "] must be >= 0; got " + std::to_string(cached[b]));
      used[b] = cached[b] + count[b];
      if (used[b] > capacity)
        fail("cache overflow: cache_seqlens[" + std::to_string(b) + "] + new tokens = " + std::to_string(used[b]) +
             " exceeds the cache capacity " + std::to_string(capacity) + " (max_blocks_per_seq * block_size)");
    }
    // Only the blocks receiving new tokens must be valid.
    for (int64_t b = 0; b < p.batch; ++b) {
      if (count[b] == 0) continue;
      const int64_t first = cached[b] / p.block_size, last = (used[b] - 1) / p.block_size;
      TensorRef row = a.block_table;
      row.data = p.block_table + b * p.block_table_stride;
      auto entries = fetch_values(options, row, last + 1);
      for (int64_t s = first; s <= last; ++s)
        if (entries[s] < 0 || entries[s] >= p.num_blocks)
          fail("block_table[" + std::to_string(b) + "][" + std::to_string(s) + "] must be in [0, num_blocks = " +
               std::to_string(p.num_blocks) + "); got " + std::to_string(entries[s]));
    }
  }
  return p;
}

}  // namespace flashsdpa::core
