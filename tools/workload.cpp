#include "workload.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <utility>
#include <vector>

#include "verify.h"

namespace flashsdpa::cli {

Op ShapeConfig::parsed_op() const {
  if (op == "kvcache") return Op::kKvCache;
  if (op == "backward") return Op::kBackward;
  return Op::kForward;
}

std::string ShapeConfig::describe() const {
  std::ostringstream text;
  text << op << " " << dtype << " batch " << batch << " Sq " << seqlen_q << " Sk " << keys() << " Hq " << heads_q
       << "/Hkv " << heads_kv << " D " << head_dim;
  if (value_dim() != head_dim) text << "/" << value_dim();
  if (causal) text << " causal";
  if (window_left >= 0 || window_right >= 0) text << " window (" << window_left << "," << window_right << ")";
  if (softcap > 0) text << " softcap " << softcap;
  if (sinks) text << " sinks";
  if (alibi) text << " alibi";
  if (paged_block > 0) text << " paged " << paged_block;
  return text.str();
}

void add_shape_flags(FlagSet& flags, ShapeConfig* c) {
  flags.add_int("batch", &c->batch, 1, "sequences in the batch");
  flags.add_int("hq", &c->heads_q, 1, "query heads");
  flags.add_int("hkv", &c->heads_kv, 1, "key/value heads (hq must be a multiple)");
  flags.add_int("seqlen-q", &c->seqlen_q, 0, "query rows per sequence");
  flags.add_int("seqlen-k", &c->seqlen_k, 0, "keys per sequence (kvcache: keys already in the cache)",
                "seqlen-q");
  flags.add_int("head-dim", &c->head_dim, 1, "head dim of q and k");
  flags.add_int("head-dim-v", &c->head_dim_v, 1, "head dim of v and out", "head-dim");
  flags.add_choice("dtype", &c->dtype, {"fp16", "bf16", "fp32"}, "element type of q, k, v and out");
  flags.add_switch("causal", &c->causal, "causal mask, bottom-right aligned (window right = 0)");
  flags.add_int_pair("window", &c->window_left, &c->window_right,
                     "sliding window (left, right) in keys; -1 is unbounded on that side");
  flags.add_float("softcap", &c->softcap, "logit soft-capping: s = X * tanh(s / X); 0 is off");
  flags.add_switch("sinks", &c->sinks, "attention sinks: one learned fp32 logit per query head");
  flags.add_switch("alibi", &c->alibi, "ALiBi position bias with the usual geometric slopes");
  flags.add_int("paged-block", &c->paged_block, 0, "paged K/V with N tokens per block; 0 is contiguous");
  flags.add_int("threads", &c->threads, 0, "CPU worker threads; 0 uses every hardware thread");
  flags.add_choice("backend", &c->backend, {"cpu", "cuda", "auto"},
                   "auto: CUDA when built with it and a GPU is present, else CPU");
}

namespace {

TensorRef pick(const Tensor& tensor, bool host) { return host ? tensor.host_ref() : tensor.ref(); }

std::vector<int32_t> shuffled_blocks(int64_t count, Rng& rng) {
  std::vector<int32_t> blocks(static_cast<size_t>(count));
  std::iota(blocks.begin(), blocks.end(), 0);
  // A fragmented cache, as a serving engine's allocator leaves it after a while.
  for (int64_t i = count - 1; i > 0; --i) std::swap(blocks[i], blocks[rng.below(i + 1)]);
  return blocks;
}

}  // namespace

AttnParams Workload::params(bool host) const {
  AttnParams p;
  p.q = pick(q, host);
  p.k = pick(k, host);
  p.v = pick(v, host);
  p.out = pick(out, host);
  p.lse = pick(lse, host);
  p.block_table = pick(block_table, host);
  p.seqused_k = pick(seqused_k, host);
  p.cache_seqlens = pick(cache_seqlens, host);
  p.sinks = pick(sinks, host);
  p.alibi_slopes = pick(alibi_slopes, host);
  p.causal = config.causal;
  p.window_left = config.window_left;
  p.window_right = config.window_right;
  p.softcap = static_cast<float>(config.softcap);
  return p;
}

AttnBwdParams Workload::backward_params(bool host) const {
  AttnBwdParams p;
  p.fwd = params(host);
  p.dout = pick(dout, host);
  p.dq = pick(dq, host);
  p.dk = pick(dk, host);
  p.dv = pick(dv, host);
  p.dsinks = pick(dsinks, host);
  return p;
}

ExecContext Workload::context() const {
  ExecContext ctx;
  ctx.backend = backend;
  ctx.num_threads = static_cast<int>(config.threads);
  return ctx;
}

void Workload::run() const {
  switch (op) {
    case Op::kForward: attention_forward(params(), context()); break;
    case Op::kKvCache: attention_kvcache(params(), context()); break;
    case Op::kBackward: attention_backward(backward_params(), context()); break;
    case Op::kPagedKvWrite: break;
  }
}

double Workload::flops() const {
  const int64_t pairs = config.batch * attended_pairs(config.seqlen_q, 0, config.keys(), config.window_left,
                                                      config.effective_window_right());
  return op == Op::kBackward ? backward_flops(pairs, config.heads_q, config.head_dim, config.value_dim())
                             : forward_flops(pairs, config.heads_q, config.head_dim, config.value_dim());
}

int64_t Workload::materialized_bytes() const {
  return config.batch * materialized_score_bytes(config.heads_q, config.seqlen_q, config.keys());
}

Workload make_workload(const ShapeConfig& c, Backend backend, bool fill) {
  Workload w;
  w.config = c;
  w.backend = backend;
  w.op = c.parsed_op();
  const DType dtype = parse_dtype(c.dtype);
  const int64_t B = c.batch, Sq = c.seqlen_q, Sk = c.keys(), Hq = c.heads_q, Hkv = c.heads_kv;
  const int64_t D = c.head_dim, Dv = c.value_dim();
  Rng rng(0x5eed0001);

  w.q = Tensor(dtype, {B, Sq, Hq, D}, backend);
  w.out = Tensor(dtype, {B, Sq, Hq, Dv}, backend);
  w.lse = Tensor(DType::kFloat32, {B, Hq, Sq}, backend);
  if (c.paged_block > 0) {
    const int64_t blocks_per_seq = (Sk + c.paged_block - 1) / c.paged_block;
    const int64_t num_blocks = std::max<int64_t>(B * blocks_per_seq, 1);
    w.k = Tensor(dtype, {num_blocks, c.paged_block, Hkv, D}, backend);
    w.v = Tensor(dtype, {num_blocks, c.paged_block, Hkv, Dv}, backend);
    w.block_table = Tensor(DType::kInt32, {B, std::max<int64_t>(blocks_per_seq, 1)}, backend);
    w.block_table.fill_int32(shuffled_blocks(num_blocks, rng));
    // The cache may hold more slots than keys: the length comes from seqused_k (forward) or
    // cache_seqlens (kvcache).
    if (w.op != Op::kKvCache) {
      w.seqused_k = Tensor(DType::kInt32, {B}, backend);
      w.seqused_k.fill_int32(std::vector<int32_t>(static_cast<size_t>(B), static_cast<int32_t>(Sk)));
    }
  } else {
    w.k = Tensor(dtype, {B, Sk, Hkv, D}, backend);
    w.v = Tensor(dtype, {B, Sk, Hkv, Dv}, backend);
  }
  if (w.op == Op::kKvCache) {
    w.cache_seqlens = Tensor(DType::kInt32, {B}, backend);
    w.cache_seqlens.fill_int32(std::vector<int32_t>(static_cast<size_t>(B), static_cast<int32_t>(Sk)));
  }
  if (c.sinks) {
    w.sinks = Tensor(DType::kFloat32, {Hq}, backend);
    w.sinks.fill_uniform(rng, -1.0f, 2.0f);
  }
  if (c.alibi) {
    w.alibi_slopes = Tensor(DType::kFloat32, {Hq}, backend);
    for (int64_t h = 0; h < Hq; ++h) {
      w.alibi_slopes.host_as<float>()[h] =
          std::pow(2.0f, -8.0f * static_cast<float>(h + 1) / static_cast<float>(Hq));
    }
    w.alibi_slopes.upload();
  }
  if (w.op == Op::kBackward) {
    w.dout = Tensor(dtype, {B, Sq, Hq, Dv}, backend);
    w.dq = Tensor(dtype, {B, Sq, Hq, D}, backend);
    w.dk = Tensor(dtype, w.k.shape(), backend);
    w.dv = Tensor(dtype, w.v.shape(), backend);
    if (c.sinks) w.dsinks = Tensor(DType::kFloat32, {Hq}, backend);
  }
  if (fill) {
    w.q.fill_normal(rng);
    w.k.fill_normal(rng);
    w.v.fill_normal(rng);
    if (w.op == Op::kBackward) {
      w.dout.fill_normal(rng);
      attention_forward(w.params(), w.context());
      synchronize(backend);
      w.out.download();
      w.lse.download();
    }
  }
  return w;
}

}  // namespace flashsdpa::cli
