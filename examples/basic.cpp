// The smallest complete use of flashsdpa: a batched, grouped-query, causal sliding-window
// attention forward in fp32 on the CPU, with the log-sum-exp returned.
#include <cmath>
#include <cstdio>
#include <vector>

#include "flashsdpa/flashsdpa.h"

int main() {
  using flashsdpa::DType;
  using flashsdpa::TensorRef;

  const int64_t batch = 2, seqlen = 256, heads_q = 8, heads_kv = 2, head_dim = 64;
  std::vector<float> q(batch * seqlen * heads_q * head_dim), k(batch * seqlen * heads_kv * head_dim);
  std::vector<float> v(k.size()), out(q.size()), lse(batch * heads_q * seqlen);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * static_cast<float>(i));
  for (size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.11f * static_cast<float>(i));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.05f * static_cast<float>(i) + 1.0f);

  flashsdpa::AttnParams params;
  params.q = TensorRef::contiguous(q.data(), DType::kFloat32, {batch, seqlen, heads_q, head_dim});
  params.k = TensorRef::contiguous(k.data(), DType::kFloat32, {batch, seqlen, heads_kv, head_dim});
  params.v = TensorRef::contiguous(v.data(), DType::kFloat32, {batch, seqlen, heads_kv, head_dim});
  params.out = TensorRef::contiguous(out.data(), DType::kFloat32, {batch, seqlen, heads_q, head_dim});
  params.lse = TensorRef::contiguous(lse.data(), DType::kFloat32, {batch, heads_q, seqlen});
  params.causal = true;       // bottom-right aligned
  params.window_left = 128;   // each query sees itself and the 128 keys before it

  flashsdpa::ExecContext ctx;
  ctx.backend = flashsdpa::Backend::kCpu;
  try {
    const flashsdpa::Selection selection = flashsdpa::explain(params, flashsdpa::Op::kForward, ctx);
    std::printf("served by %s (%s)\n", selection.tier.c_str(), selection.reason.c_str());
    flashsdpa::attention_forward(params, ctx);
  } catch (const flashsdpa::Error& e) {  // a violated precondition; nothing was written
    std::fprintf(stderr, "flashsdpa: %s\n", e.what());
    return 1;
  }
  std::printf("out[0, 255, 7, 0:4] = %.5f %.5f %.5f %.5f   lse[0, 7, 255] = %.5f\n",
              out[((0 * seqlen + 255) * heads_q + 7) * head_dim + 0],
              out[((0 * seqlen + 255) * heads_q + 7) * head_dim + 1],
              out[((0 * seqlen + 255) * heads_q + 7) * head_dim + 2],
              out[((0 * seqlen + 255) * heads_q + 7) * head_dim + 3], lse[(0 * heads_q + 7) * seqlen + 255]);
  return 0;
}
