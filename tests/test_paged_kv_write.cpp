// paged_kv_write on the CPU backend: batched and varlen new tokens land at logical positions
// cache_seqlens[b] + t of their sequence's blocks; every other byte of the caches (other slots,
// stride gaps, guards) stays as it was.
#include <gtest/gtest.h>

#include "test_util.h"

namespace flashsdpa::test {
namespace {

TEST(PagedKvWrite, BatchedAcrossBlockBoundaries) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    for (int64_t block_size : {1, 16, 256}) {
      KvWriteConfig c;
      c.dtype = dtype;
      c.batch = 3;
      c.block_size = block_size;
      c.max_blocks_per_seq = (40 + block_size - 1) / block_size + 1;
      c.seqlen_new = 5;
      c.cache_seqlens = {0, block_size > 2 ? block_size - 2 : 1, 35};  // the middle one straddles a boundary
      c.seed = static_cast<uint64_t>(block_size);
      KvWriteCase k(c);
      EXPECT_EQ(check_kv_write(k, cpu_context(2)), "") << c.describe();
    }
  }
}

TEST(PagedKvWrite, VarlenWithEmptySequences) {
  for (int64_t block_size : {1, 16, 256}) {
    KvWriteConfig c;
    c.dtype = DType::kBFloat16;
    c.varlen = true;
    c.batch = 4;
    c.heads_kv = 3;
    c.head_dim_qk = 59;
    c.head_dim_v = 40;
    c.block_size = block_size;
    c.max_blocks_per_seq = (300 + block_size - 1) / block_size;
    c.new_tokens = {3, 0, 17, 1};
    c.cache_seqlens = {7, 100, 0, 299};
    c.padded_strides = true;
    c.seed = 40 + static_cast<uint64_t>(block_size);
    KvWriteCase k(c);
    EXPECT_EQ(check_kv_write(k, cpu_context(2)), "") << c.describe();
  }
}

TEST(PagedKvWrite, FillsACacheToCapacity) {
  KvWriteConfig c;
  c.dtype = DType::kFloat16;
  c.batch = 2;
  c.block_size = 16;
  c.max_blocks_per_seq = 2;
  c.seqlen_new = 32;
  c.cache_seqlens = {0, 0};
  KvWriteCase k(c);
  EXPECT_EQ(check_kv_write(k, cpu_context(2)), "") << c.describe();
}

TEST(PagedKvWrite, RandomizedThreadCounts) {
  Rng rng(77);
  for (int trial = 0; trial < 12; ++trial) {
    KvWriteConfig c;
    c.dtype = rng.pick(std::vector<DType>{DType::kFloat16, DType::kBFloat16, DType::kFloat32});
    c.varlen = rng.coin();
    c.batch = rng.uniform_int(1, 5);
    c.heads_kv = rng.uniform_int(1, 4);
    c.head_dim_qk = rng.pick(std::vector<int64_t>{1, 40, 64, 128});
    c.head_dim_v = rng.coin() ? c.head_dim_qk : 96;
    c.block_size = rng.pick(std::vector<int64_t>{1, 7, 16, 256});
    c.max_blocks_per_seq = (200 + c.block_size - 1) / c.block_size;
    const int64_t capacity = c.max_blocks_per_seq * c.block_size;
    c.seqlen_new = rng.uniform_int(0, 9);
    for (int64_t b = 0; b < c.batch; ++b) {
      const int64_t fresh = c.varlen ? rng.uniform_int(0, 20) : c.seqlen_new;
      c.new_tokens.push_back(fresh);
      c.cache_seqlens.push_back(rng.uniform_int(0, capacity - fresh));
    }
    c.padded_strides = rng.coin(0.3);
    c.seed = 500 + static_cast<uint64_t>(trial);
    KvWriteCase k(c);
    EXPECT_EQ(check_kv_write(k, cpu_context(static_cast<int>(rng.uniform_int(1, 4)))), "") << c.describe();
  }
}

}  // namespace
}  // namespace flashsdpa::test
