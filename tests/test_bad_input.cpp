// The bad-input catalogue (SPEC §5): every violated precondition of the four entry points throws
// flashsdpa::Error with a message that names the argument, and leaves every output, cache and
// input byte-identical (guards included).
#include <gtest/gtest.h>

#include <deque>
#include <memory>

#include "test_util.h"

namespace flashsdpa::test {
namespace {

enum class Base {
  kForwardBatched,
  kForwardVarlen,
  kForwardPaged,        // batched q, keys counted by seqused_k
  kForwardPagedVarlen,  // varlen q, keys counted by cu_seqlens_k
  kKvCacheDense,
  kKvCachePaged,
  kBackward,
  kKvWriteBatched,
  kKvWriteVarlen,
};

// A valid call, then broken by one mutation.
struct Fixture {
  std::unique_ptr<AttnCase> attn;
  std::unique_ptr<KvWriteCase> kv;
  AttnParams params;
  AttnBwdParams bwd;
  KvWriteParams kv_params;
  std::deque<HostTensor> extras;  // replacement tensors a mutation creates

  HostTensor& extra(HostTensor t) {
    extras.push_back(std::move(t));
    return extras.back();
  }
  // Replacement tensors with one property changed.
  TensorRef tensor(DType dtype, Shape shape) { return extra(HostTensor(dtype, std::move(shape))).ref(); }
  TensorRef ints(std::vector<int32_t> values) { return extra(HostTensor::int32(values)).ref(); }
  TensorRef ints(std::vector<int32_t> values, Shape shape) { return extra(HostTensor::int32(values, shape)).ref(); }
  TensorRef floats(std::vector<float> values) { return extra(HostTensor::float32(values)).ref(); }
};

AttnConfig attn_config(Base base) {
  AttnConfig c;
  c.dtype = DType::kFloat16;
  c.batch = 2;
  c.heads_q = 4;
  c.heads_kv = 2;
  c.head_dim_qk = 16;
  c.head_dim_v = 16;
  c.seqlen_q = 5;
  c.seqlen_k = 7;
  switch (base) {
    case Base::kForwardVarlen:
      c.layout = Layout::kVarlen;
      c.batch = 3;
      c.seqlens_q = {2, 0, 3};
      c.seqlens_k = {4, 1, 0};
      break;
    case Base::kForwardPaged:
      c.layout = Layout::kPaged;
      c.block_size = 4;
      c.seqlen_q = 3;
      c.seqlens_k = {5, 20};
      break;
    case Base::kForwardPagedVarlen:
      c.layout = Layout::kPaged;
      c.block_size = 4;
      c.seqlens_q = {3, 1};
      c.seqlens_k = {5, 20};
      break;
    case Base::kKvCacheDense:
    case Base::kKvCachePaged:
      c.layout = base == Base::kKvCacheDense ? Layout::kDenseCache : Layout::kPagedCache;
      c.block_size = 4;
      c.cache_capacity = 16;
      c.cache_seqlens = {3, 10};
      c.seqlen_new = 2;
      c.seqlen_q = 2;
      c.rotary_dim = 8;
      c.causal = true;
      break;
    case Base::kBackward:
      c.sinks = true;
      break;
    default:
      break;
  }
  return c;
}

std::unique_ptr<Fixture> make_fixture(Base base) {
  auto f = std::make_unique<Fixture>();
  if (base == Base::kKvWriteBatched || base == Base::kKvWriteVarlen) {
    KvWriteConfig c;
    c.batch = 2;
    c.block_size = 4;
    c.max_blocks_per_seq = 4;
    c.cache_seqlens = {3, 9};
    c.varlen = base == Base::kKvWriteVarlen;
    c.seqlen_new = 2;
    c.new_tokens = {2, 3};
    f->kv = std::make_unique<KvWriteCase>(c);
    f->kv_params = f->kv->params();
  } else {
    f->attn = std::make_unique<AttnCase>(attn_config(base));
    f->params = f->attn->params();
    f->bwd = f->attn->bwd_params();
  }
  return f;
}

struct BadInput {
  const char* name;
  Base base;
  const char* expected;  // a substring of the message: it names the argument
  std::function<void(Fixture&)> mutate;
};

Op op_of(Base base) {
  switch (base) {
    case Base::kKvCacheDense:
    case Base::kKvCachePaged: return Op::kKvCache;
    case Base::kBackward: return Op::kBackward;
    case Base::kKvWriteBatched:
    case Base::kKvWriteVarlen: return Op::kPagedKvWrite;
    default: return Op::kForward;
  }
}

// The fp16 shapes of the forward bases, for replacement tensors.
constexpr int64_t B = 2, Sq = 5, Sk = 7, Hq = 4, Hkv = 2, D = 16;
constexpr DType kHalf = DType::kFloat16;

const std::vector<BadInput>& catalogue() {
  static const std::vector<BadInput> cases = {
      // ---- forward: dtypes ----
      {"q_int32", Base::kForwardBatched, "q must have dtype",
       [](Fixture& f) { f.params.q = f.tensor(DType::kInt32, {B, Sq, Hq, D}); }},
      {"k_dtype_mix", Base::kForwardBatched, "k must have the same dtype as q",
       [](Fixture& f) { f.params.k = f.tensor(DType::kFloat32, {B, Sk, Hkv, D}); }},
      {"v_dtype_mix", Base::kForwardBatched, "v must have the same dtype as q",
       [](Fixture& f) { f.params.v = f.tensor(DType::kBFloat16, {B, Sk, Hkv, D}); }},
      {"out_dtype_mix", Base::kForwardBatched, "out must have the same dtype as q",
       [](Fixture& f) { f.params.out = f.tensor(DType::kFloat32, {B, Sq, Hq, D}); }},
      // ---- forward: ranks and shapes ----
      {"q_missing", Base::kForwardBatched, "q is required", [](Fixture& f) { f.params.q = TensorRef(); }},
      {"out_missing", Base::kForwardBatched, "out is required", [](Fixture& f) { f.params.out = TensorRef(); }},
      {"q_rank2", Base::kForwardBatched, "q must have rank", [](Fixture& f) { f.params.q = f.tensor(kHalf, {Sq * Hq, D}); }},
      {"k_rank3_with_batched_q", Base::kForwardBatched, "k must have rank 4",
       [](Fixture& f) { f.params.k = f.tensor(kHalf, {Sk, Hkv, D}); }},
      {"k_head_dim", Base::kForwardBatched, "k.shape[3]", [](Fixture& f) { f.params.k = f.tensor(kHalf, {B, Sk, Hkv, D + 1}); }},
      {"k_batch", Base::kForwardBatched, "k.shape[0]",
       [](Fixture& f) {
         f.params.k = f.tensor(kHalf, {B + 1, Sk, Hkv, D});
         f.params.v = f.tensor(kHalf, {B + 1, Sk, Hkv, D});
       }},
      {"v_heads", Base::kForwardBatched, "v.shape[2]", [](Fixture& f) { f.params.v = f.tensor(kHalf, {B, Sk, Hkv + 1, D}); }},
      {"v_length", Base::kForwardBatched, "v.shape[1]", [](Fixture& f) { f.params.v = f.tensor(kHalf, {B, Sk + 1, Hkv, D}); }},
      {"out_length", Base::kForwardBatched, "out.shape[1]", [](Fixture& f) { f.params.out = f.tensor(kHalf, {B, Sq + 1, Hq, D}); }},
      {"out_head_dim", Base::kForwardBatched, "out.shape[3]", [](Fixture& f) { f.params.out = f.tensor(kHalf, {B, Sq, Hq, D + 2}); }},
      {"negative_extent", Base::kForwardBatched, "q.shape[1] must be >= 0",
       [](Fixture& f) { f.params.q.shape[1] = -1; }},
      {"q_last_dim_strided", Base::kForwardBatched, "q must be contiguous in its last dimension",
       [](Fixture& f) { f.params.q.stride[3] = 2; }},
      {"v_last_dim_strided", Base::kForwardBatched, "v must be contiguous in its last dimension",
       [](Fixture& f) { f.params.v.stride[3] = 0; }},
      {"out_last_dim_strided", Base::kForwardBatched, "out must be contiguous in its last dimension",
       [](Fixture& f) { f.params.out.stride[3] = -1; }},
      // ---- forward: heads and head dims ----
      {"heads_not_multiple", Base::kForwardBatched, "multiple of kv heads",
       [](Fixture& f) {
         f.params.k = f.tensor(kHalf, {B, Sk, 3, D});
         f.params.v = f.tensor(kHalf, {B, Sk, 3, D});
       }},
      {"head_dim_zero", Base::kForwardBatched, "q head dim must be in 1..512",
       [](Fixture& f) {
         f.params.q = f.tensor(kHalf, {B, Sq, Hq, 0});
         f.params.k = f.tensor(kHalf, {B, Sk, Hkv, 0});
       }},
      {"head_dim_513", Base::kForwardBatched, "q head dim must be in 1..512",
       [](Fixture& f) {
         f.params.q = f.tensor(kHalf, {B, Sq, Hq, 513});
         f.params.k = f.tensor(kHalf, {B, Sk, Hkv, 513});
       }},
      {"v_head_dim_600", Base::kForwardBatched, "v head dim must be in 1..512",
       [](Fixture& f) {
         f.params.v = f.tensor(kHalf, {B, Sk, Hkv, 600});
         f.params.out = f.tensor(kHalf, {B, Sq, Hq, 600});
       }},
      // ---- forward: scalars ----
      {"window_left_below_minus_one", Base::kForwardBatched, "window_left must be >= -1",
       [](Fixture& f) { f.params.window_left = -2; }},
      {"window_right_below_minus_one", Base::kForwardBatched, "window_right must be >= -1",
       [](Fixture& f) { f.params.window_right = -7; }},
      {"softcap_negative", Base::kForwardBatched, "softcap must be >= 0", [](Fixture& f) { f.params.softcap = -1.0f; }},
      {"softcap_nan", Base::kForwardBatched, "softcap must be >= 0",
       [](Fixture& f) { f.params.softcap = std::numeric_limits<float>::quiet_NaN(); }},
      {"scale_infinite", Base::kForwardBatched, "scale must be finite",
       [](Fixture& f) { f.params.scale = std::numeric_limits<float>::infinity(); }},
      {"dropout", Base::kForwardBatched, "dropout is not supported", [](Fixture& f) { f.params.dropout_p = 0.1f; }},
      {"dropout_out_of_range", Base::kForwardBatched, "dropout_p must be in [0, 1]",
       [](Fixture& f) { f.params.dropout_p = 1.5f; }},
      {"num_splits_negative", Base::kForwardBatched, "num_splits must be >= 0", [](Fixture& f) { f.params.num_splits = -1; }},
      // ---- forward: sinks, ALiBi, lse ----
      {"sinks_length", Base::kForwardBatched, "sinks.shape[0]",
       [](Fixture& f) { f.params.sinks = f.floats({0, 0, 0, 0, 0}); }},
      {"sinks_dtype", Base::kForwardBatched, "sinks must have dtype float32",
       [](Fixture& f) { f.params.sinks = f.tensor(kHalf, {Hq}); }},
      {"sinks_rank", Base::kForwardBatched, "sinks must have rank 1",
       [](Fixture& f) { f.params.sinks = f.tensor(DType::kFloat32, {1, Hq}); }},
      {"sinks_null_data", Base::kForwardBatched, "sinks has shape [4] but a null data pointer",
       [](Fixture& f) {
         f.params.sinks = f.floats({0, 0, 0, 0});
         f.params.sinks.data = nullptr;
       }},
      {"lse_null_data", Base::kForwardBatched, "lse has shape [2, 4, 5] but a null data pointer",
       [](Fixture& f) { f.params.lse.data = nullptr; }},
      {"alibi_heads", Base::kForwardBatched, "alibi_slopes.shape[0]",
       [](Fixture& f) { f.params.alibi_slopes = f.tensor(DType::kFloat32, {Hq + 1}); }},
      {"alibi_batch", Base::kForwardBatched, "alibi_slopes.shape[0]",
       [](Fixture& f) { f.params.alibi_slopes = f.tensor(DType::kFloat32, {B + 1, Hq}); }},
      {"alibi_rank3", Base::kForwardBatched, "alibi_slopes must have shape [Hq] or [B, Hq]",
       [](Fixture& f) { f.params.alibi_slopes = f.tensor(DType::kFloat32, {1, B, Hq}); }},
      {"alibi_dtype", Base::kForwardBatched, "alibi_slopes must have dtype float32",
       [](Fixture& f) { f.params.alibi_slopes = f.tensor(DType::kBFloat16, {Hq}); }},
      {"lse_length", Base::kForwardBatched, "lse.shape[2]",
       [](Fixture& f) { f.params.lse = f.tensor(DType::kFloat32, {B, Hq, Sq + 1}); }},
      {"lse_layout_like_out", Base::kForwardBatched, "lse.shape[1]",
       [](Fixture& f) { f.params.lse = f.tensor(DType::kFloat32, {B, Sq, Hq}); }},
      {"lse_dtype", Base::kForwardBatched, "lse must have dtype float32",
       [](Fixture& f) { f.params.lse = f.tensor(kHalf, {B, Hq, Sq}); }},
      {"lse_rank", Base::kForwardBatched, "lse must have rank 3",
       [](Fixture& f) { f.params.lse = f.tensor(DType::kFloat32, {Hq, B * Sq}); }},
      // ---- forward: arguments of other entry points ----
      {"cache_seqlens_to_forward", Base::kForwardBatched, "cache_seqlens must not be given to attention_forward",
       [](Fixture& f) { f.params.cache_seqlens = f.ints({1, 1}); }},
      {"k_new_to_forward", Base::kForwardBatched, "k_new must not be given to attention_forward",
       [](Fixture& f) { f.params.k_new = f.tensor(kHalf, {B, 1, Hkv, D}); }},
      {"cu_seqlens_q_with_batched_q", Base::kForwardBatched, "cu_seqlens_q must not be given with batched q",
       [](Fixture& f) { f.params.cu_seqlens_q = f.ints({0, 5, 10}); }},
      // ---- varlen ----
      {"cu_seqlens_q_not_monotone", Base::kForwardVarlen, "cu_seqlens_q must be non-decreasing",
       [](Fixture& f) { f.params.cu_seqlens_q = f.ints({0, 4, 2, 5}); }},
      {"cu_seqlens_k_not_starting_at_zero", Base::kForwardVarlen, "cu_seqlens_k[0] must be 0",
       [](Fixture& f) { f.params.cu_seqlens_k = f.ints({1, 4, 5, 5}); }},
      {"cu_seqlens_k_past_total", Base::kForwardVarlen, "cu_seqlens_k[3] must equal k.shape[0]",
       [](Fixture& f) { f.params.cu_seqlens_k = f.ints({0, 4, 5, 9}); }},
      {"cu_seqlens_q_short_of_total", Base::kForwardVarlen, "cu_seqlens_q[3] must equal q.shape[0]",
       [](Fixture& f) { f.params.cu_seqlens_q = f.ints({0, 2, 2, 4}); }},
      {"cu_seqlens_k_length", Base::kForwardVarlen, "cu_seqlens_k.shape[0]",
       [](Fixture& f) { f.params.cu_seqlens_k = f.ints({0, 4, 5}); }},
      {"cu_seqlens_k_dtype", Base::kForwardVarlen, "cu_seqlens_k must have dtype int32",
       [](Fixture& f) { f.params.cu_seqlens_k = f.floats({0, 4, 5, 5}); }},
      {"cu_seqlens_q_strided", Base::kForwardVarlen, "cu_seqlens_q must be contiguous",
       [](Fixture& f) { f.params.cu_seqlens_q.stride[0] = 2; }},
      {"cu_seqlens_k_missing", Base::kForwardVarlen, "cu_seqlens_k is required",
       [](Fixture& f) { f.params.cu_seqlens_k = TensorRef(); }},
      {"cu_seqlens_q_missing", Base::kForwardVarlen, "cu_seqlens_q is required",
       [](Fixture& f) { f.params.cu_seqlens_q = TensorRef(); }},
      {"seqused_k_out_of_range", Base::kForwardVarlen, "seqused_k[1] must be in [0, 1]",
       [](Fixture& f) { f.params.seqused_k = f.ints({4, 2, 0}); }},
      {"seqused_k_length", Base::kForwardVarlen, "seqused_k.shape[0]", [](Fixture& f) { f.params.seqused_k = f.ints({1, 1}); }},
      {"max_seqlen_q_too_small", Base::kForwardVarlen, "max_seqlen_q must be >=", [](Fixture& f) { f.params.max_seqlen_q = 2; }},
      {"varlen_lse_shape", Base::kForwardVarlen, "lse.shape[1]",
       [](Fixture& f) { f.params.lse = f.tensor(DType::kFloat32, {Hq, 6}); }},
      // ---- paged ----
      {"block_table_entry_past_num_blocks", Base::kForwardPaged, "block_table[1][2] must be in [0, num_blocks",
       [](Fixture& f) {
         auto table = f.attn->block_table.int_values();
         table[static_cast<size_t>(f.attn->block_table.shape()[1] + 2)] = static_cast<int32_t>(f.attn->k.shape()[0]);
         f.params.block_table = f.ints(table, f.attn->block_table.shape());
       }},
      {"block_table_entry_negative", Base::kForwardPaged, "block_table[0][0] must be in [0, num_blocks",
       [](Fixture& f) {
         auto table = f.attn->block_table.int_values();
         table[0] = -1;
         f.params.block_table = f.ints(table, f.attn->block_table.shape());
       }},
      {"block_table_dtype", Base::kForwardPaged, "block_table must have dtype int32",
       [](Fixture& f) { f.params.block_table = f.tensor(DType::kFloat32, f.attn->block_table.shape()); }},
      {"block_table_batch", Base::kForwardPaged, "block_table.shape[0]",
       [](Fixture& f) { f.params.block_table = f.ints(std::vector<int32_t>(15, 0), {3, 5}); }},
      {"paged_v_block_size", Base::kForwardPaged, "v.shape[1]",
       [](Fixture& f) { f.params.v = f.tensor(kHalf, {f.attn->k.shape()[0], 8, Hkv, D}); }},
      {"paged_seqused_k_past_capacity", Base::kForwardPaged, "seqused_k[0] must be in",
       [](Fixture& f) { f.params.seqused_k = f.ints({1000, 1}); }},
      {"paged_cu_seqlens_k_past_block_table", Base::kForwardPagedVarlen, "cu_seqlens_k: sequence 1",
       [](Fixture& f) { f.params.cu_seqlens_k = f.ints({0, 5, 500}); }},
      // ---- kv cache ----
      {"cache_overflow", Base::kKvCacheDense, "cache overflow", [](Fixture& f) { f.params.cache_seqlens = f.ints({3, 15}); }},
      {"cache_overflow_paged", Base::kKvCachePaged, "cache overflow",
       [](Fixture& f) { f.params.cache_seqlens = f.ints({15, 3}); }},
      {"cache_seqlens_negative", Base::kKvCacheDense, "cache_seqlens[0] must be >= 0",
       [](Fixture& f) { f.params.cache_seqlens = f.ints({-1, 3}); }},
      {"cache_seqlens_length", Base::kKvCacheDense, "cache_seqlens.shape[0]",
       [](Fixture& f) { f.params.cache_seqlens = f.ints({1, 2, 3}); }},
      {"cache_seqlens_dtype", Base::kKvCacheDense, "cache_seqlens must have dtype int32",
       [](Fixture& f) { f.params.cache_seqlens = f.floats({1, 2}); }},
      {"cache_seqlens_missing_with_append", Base::kKvCacheDense, "cache_seqlens is required",
       [](Fixture& f) { f.params.cache_seqlens = TensorRef(); }},
      {"cache_batch_idx_out_of_range", Base::kKvCacheDense, "cache_batch_idx[1] must be in [0, 2)",
       [](Fixture& f) { f.params.cache_batch_idx = f.ints({0, 2}); }},
      {"cache_batch_idx_negative", Base::kKvCacheDense, "cache_batch_idx[0] must be in [0, 2)",
       [](Fixture& f) { f.params.cache_batch_idx = f.ints({-3, 0}); }},
      {"cache_batch_idx_with_paged", Base::kKvCachePaged, "cache_batch_idx must not be given with a paged cache",
       [](Fixture& f) { f.params.cache_batch_idx = f.ints({0, 1}); }},
      {"cache_leftpad_past_seqlen", Base::kKvCacheDense, "cache_leftpad[1] must be in [0, 12]",
       [](Fixture& f) { f.params.cache_leftpad = f.ints({0, 13}); }},
      {"cache_leftpad_negative", Base::kKvCacheDense, "cache_leftpad[0] must be in",
       [](Fixture& f) { f.params.cache_leftpad = f.ints({-1, 0}); }},
      {"dense_cache_batch", Base::kKvCacheDense, "k.shape[0]",
       [](Fixture& f) {
         f.params.k = f.tensor(kHalf, {3, 16, Hkv, D});
         f.params.v = f.tensor(kHalf, {3, 16, Hkv, D});
       }},
      {"k_new_without_v_new", Base::kKvCacheDense, "k_new and v_new must be given together",
       [](Fixture& f) { f.params.v_new = TensorRef(); }},
      {"k_new_head_dim", Base::kKvCacheDense, "k_new.shape[3]", [](Fixture& f) { f.params.k_new = f.tensor(kHalf, {B, 2, Hkv, D / 2}); }},
      {"k_new_batch", Base::kKvCacheDense, "k_new.shape[0]", [](Fixture& f) { f.params.k_new = f.tensor(kHalf, {B + 1, 2, Hkv, D}); }},
      {"v_new_tokens", Base::kKvCacheDense, "v_new.shape[1]", [](Fixture& f) { f.params.v_new = f.tensor(kHalf, {B, 3, Hkv, D}); }},
      {"k_new_dtype", Base::kKvCacheDense, "k_new must have the same dtype as q",
       [](Fixture& f) { f.params.k_new = f.tensor(DType::kFloat32, {B, 2, Hkv, D}); }},
      {"rotary_dim_past_head_dim", Base::kKvCacheDense, "rotary_dim (2 * rotary_cos.shape[1]) must be in [2, head dim 16]",
       [](Fixture& f) {
         f.params.rotary_cos = f.tensor(kHalf, {32, 9});
         f.params.rotary_sin = f.tensor(kHalf, {32, 9});
       }},
      {"rotary_sin_width", Base::kKvCacheDense, "rotary_sin.shape[1]",
       [](Fixture& f) { f.params.rotary_sin = f.tensor(kHalf, {f.attn->rotary_cos.shape()[0], 3}); }},
      {"rotary_dtype", Base::kKvCacheDense, "rotary_cos must have the same dtype as q",
       [](Fixture& f) {
         f.params.rotary_cos = f.tensor(DType::kFloat32, f.attn->rotary_cos.shape());
         f.params.rotary_sin = f.tensor(DType::kFloat32, f.attn->rotary_cos.shape());
       }},
      {"rotary_table_too_short", Base::kKvCacheDense, "rotary_cos has 4 rows",
       [](Fixture& f) {
         f.params.rotary_cos = f.tensor(kHalf, {4, 4});
         f.params.rotary_sin = f.tensor(kHalf, {4, 4});
       }},
      {"rotary_without_sin", Base::kKvCacheDense, "rotary_cos and rotary_sin must be given together",
       [](Fixture& f) { f.params.rotary_sin = TensorRef(); }},
      {"rotary_without_new_keys", Base::kKvCacheDense, "rotary_cos / rotary_sin need k_new",
       [](Fixture& f) {
         f.params.k_new = TensorRef();
         f.params.v_new = TensorRef();
       }},
      {"cu_seqlens_to_kvcache", Base::kKvCacheDense, "must not be given to attention_kvcache",
       [](Fixture& f) { f.params.cu_seqlens_q = f.ints({0, 2, 4}); }},
      {"paged_cache_block_out_of_range", Base::kKvCachePaged, "block_table[1][2] must be in [0, num_blocks",
       [](Fixture& f) {
         auto table = f.attn->block_table.int_values();
         table[static_cast<size_t>(f.attn->block_table.shape()[1] + 2)] = 1 << 20;
         f.params.block_table = f.ints(table, f.attn->block_table.shape());
       }},
      {"kvcache_dropout", Base::kKvCacheDense, "dropout is not supported", [](Fixture& f) { f.params.dropout_p = 0.5f; }},
      {"kvcache_softcap_negative", Base::kKvCachePaged, "softcap must be >= 0", [](Fixture& f) { f.params.softcap = -3.0f; }},
      // ---- backward ----
      {"dq_shape", Base::kBackward, "dq must have the shape of its forward tensor",
       [](Fixture& f) { f.bwd.dq = f.tensor(kHalf, {B, Sq, Hq, D + 1}); }},
      {"dk_dtype", Base::kBackward, "dk must have the same dtype as q",
       [](Fixture& f) { f.bwd.dk = f.tensor(DType::kFloat32, {B, Sk, Hkv, D}); }},
      {"dv_last_dim_strided", Base::kBackward, "dv must be contiguous in its last dimension",
       [](Fixture& f) { f.bwd.dv.stride[3] = 3; }},
      {"dout_missing", Base::kBackward, "dout is required", [](Fixture& f) { f.bwd.dout = TensorRef(); }},
      {"dout_shape", Base::kBackward, "dout must have the shape of its forward tensor",
       [](Fixture& f) { f.bwd.dout = f.tensor(kHalf, {B, Sq - 1, Hq, D}); }},
      {"backward_lse_missing", Base::kBackward, "lse is required", [](Fixture& f) { f.bwd.fwd.lse = TensorRef(); }},
      {"dsinks_without_sinks", Base::kBackward, "dsinks must not be given without sinks",
       [](Fixture& f) { f.bwd.fwd.sinks = TensorRef(); }},
      {"dsinks_length", Base::kBackward, "dsinks.shape[0]", [](Fixture& f) { f.bwd.dsinks = f.tensor(DType::kFloat32, {Hq * 2}); }},
      {"dsinks_dtype", Base::kBackward, "dsinks must have dtype float32", [](Fixture& f) { f.bwd.dsinks = f.tensor(kHalf, {Hq}); }},
      {"backward_paged", Base::kBackward, "backward over a paged KV cache is not supported",
       [](Fixture& f) { f.bwd.fwd.block_table = f.ints({0, 1}, {B, 1}); }},
      {"backward_dropout", Base::kBackward, "dropout is not supported", [](Fixture& f) { f.bwd.fwd.dropout_p = 0.2f; }},
      {"backward_window", Base::kBackward, "window_left must be >= -1", [](Fixture& f) { f.bwd.fwd.window_left = -3; }},
      // ---- paged_kv_write ----
      {"kv_write_overflow", Base::kKvWriteBatched, "cache overflow", [](Fixture& f) { f.kv_params.cache_seqlens = f.ints({15, 3}); }},
      {"kv_write_seqlens_negative", Base::kKvWriteBatched, "cache_seqlens[1] must be >= 0",
       [](Fixture& f) { f.kv_params.cache_seqlens = f.ints({0, -2}); }},
      {"kv_write_block_out_of_range", Base::kKvWriteBatched, "block_table[1][2] must be in [0, num_blocks",
       [](Fixture& f) {
         auto table = f.kv->block_table.int_values();
         table[4 + 2] = 1000;  // sequence 1 writes slots 9, 10: block 2
         f.kv_params.block_table = f.ints(table, {2, 4});
       }},
      {"kv_write_block_table_dtype", Base::kKvWriteBatched, "block_table must have dtype int32",
       [](Fixture& f) { f.kv_params.block_table = f.tensor(DType::kFloat32, {2, 4}); }},
      {"kv_write_k_new_head_dim", Base::kKvWriteBatched, "k_new.shape[3]",
       [](Fixture& f) { f.kv_params.k_new = f.tensor(kHalf, {2, 2, 2, 8}); }},
      {"kv_write_k_new_batch", Base::kKvWriteBatched, "k_new.shape[0]",
       [](Fixture& f) {
         f.kv_params.k_new = f.tensor(kHalf, {3, 2, 2, 16});
         f.kv_params.v_new = f.tensor(kHalf, {3, 2, 2, 16});
       }},
      {"kv_write_v_new_heads", Base::kKvWriteBatched, "v_new.shape[2]",
       [](Fixture& f) { f.kv_params.v_new = f.tensor(kHalf, {2, 2, 3, 16}); }},
      {"kv_write_v_cache_dtype", Base::kKvWriteBatched, "v_cache must have the same dtype",
       [](Fixture& f) { f.kv_params.v_cache = f.tensor(DType::kBFloat16, f.kv->v_cache.shape()); }},
      {"kv_write_cu_seqlens_with_batched", Base::kKvWriteBatched, "cu_seqlens_new must not be given",
       [](Fixture& f) { f.kv_params.cu_seqlens_new = f.ints({0, 2, 4}); }},
      {"kv_write_cu_seqlens_missing", Base::kKvWriteVarlen, "cu_seqlens_new is required",
       [](Fixture& f) { f.kv_params.cu_seqlens_new = TensorRef(); }},
      {"kv_write_cu_seqlens_not_monotone", Base::kKvWriteVarlen, "cu_seqlens_new must be non-decreasing",
       [](Fixture& f) { f.kv_params.cu_seqlens_new = f.ints({0, 6, 5}); }},
      {"kv_write_cu_seqlens_total", Base::kKvWriteVarlen, "cu_seqlens_new[2] must equal k_new.shape[0]",
       [](Fixture& f) { f.kv_params.cu_seqlens_new = f.ints({0, 2, 4}); }},
      {"kv_write_block_table_null_data", Base::kKvWriteVarlen, "block_table has shape [2, 4] but a null data pointer",
       [](Fixture& f) { f.kv_params.block_table.data = nullptr; }},
      {"kv_write_cache_seqlens_missing", Base::kKvWriteVarlen, "cache_seqlens is required",
       [](Fixture& f) { f.kv_params.cache_seqlens = TensorRef(); }},
  };
  return cases;
}

class BadInputCatalogue : public ::testing::TestWithParam<size_t> {};

TEST_P(BadInputCatalogue, ThrowsNamingTheArgumentAndWritesNothing) {
  const BadInput& bad = catalogue()[GetParam()];
  auto f = make_fixture(bad.base);
  bad.mutate(*f);

  std::vector<std::pair<std::string, HostTensor*>> all = f->attn ? f->attn->tensors() : f->kv->tensors();
  for (size_t n = 0; n < f->extras.size(); ++n) all.emplace_back("replacement " + std::to_string(n), &f->extras[n]);
  const Snapshot before(all);

  const ExecContext ctx = cpu_context(2);
  std::string message;
  ErrorKind kind = ErrorKind::kValue;
  try {
    switch (op_of(bad.base)) {
      case Op::kForward: attention_forward(f->params, ctx); break;
      case Op::kKvCache: attention_kvcache(f->params, ctx); break;
      case Op::kBackward: attention_backward(f->bwd, ctx); break;
      case Op::kPagedKvWrite: paged_kv_write(f->kv_params, ctx); break;
    }
    FAIL() << bad.name << ": no error was raised";
  } catch (const Error& e) {
    message = e.what();
    kind = e.kind();
  } catch (const std::exception& e) {
    FAIL() << bad.name << ": threw something other than flashsdpa::Error: " << e.what();
  }
  EXPECT_NE(message.find(bad.expected), std::string::npos)
      << bad.name << ": the message should contain \"" << bad.expected << "\"; got \"" << message << "\"";
  // Bindings map the kind to their error types (Python: TypeError / NotImplementedError / ValueError).
  const ErrorKind expected_kind = message.find("dtype") != std::string::npos         ? ErrorKind::kType
                                  : message.find("not supported") != std::string::npos ? ErrorKind::kNotSupported
                                                                                       : ErrorKind::kValue;
  EXPECT_EQ(static_cast<int>(kind), static_cast<int>(expected_kind)) << bad.name << ": " << message;
  EXPECT_EQ(before.changed(), "") << bad.name;
}

INSTANTIATE_TEST_SUITE_P(Cases, BadInputCatalogue, ::testing::Range<size_t>(0, catalogue().size()),
                         [](const ::testing::TestParamInfo<size_t>& info) { return std::string(catalogue()[info.param].name); });

// The valid calls the catalogue breaks really are valid: a mutation, not the base, raises.
TEST(BadInputCatalogue, BasesAreValid) {
  for (Base base : {Base::kForwardBatched, Base::kForwardVarlen, Base::kForwardPaged, Base::kForwardPagedVarlen,
                    Base::kKvCacheDense, Base::kKvCachePaged, Base::kBackward, Base::kKvWriteBatched,
                    Base::kKvWriteVarlen}) {
    auto f = make_fixture(base);
    core::ValidateOptions options;
    std::string failure = run_and_catch([&] {
      switch (op_of(base)) {
        case Op::kForward: core::prepare_forward(f->params, options); break;
        case Op::kKvCache: core::prepare_kvcache(f->params, options); break;
        case Op::kBackward: core::prepare_backward(f->bwd, options); break;
        case Op::kPagedKvWrite: core::prepare_kv_write(f->kv_params, options); break;
      }
    });
    EXPECT_EQ(failure, "") << "base " << static_cast<int>(base);
  }
}

TEST(BadInputCatalogue, HasAtLeast45CasesOverAllEntryPoints) {
  std::vector<int> per_op(4, 0);
  for (const BadInput& bad : catalogue()) ++per_op[static_cast<int>(op_of(bad.base))];
  EXPECT_GE(catalogue().size(), 45u);
  for (int count : per_op) EXPECT_GE(count, 5);
}

}  // namespace
}  // namespace flashsdpa::test
