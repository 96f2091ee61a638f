// Hopper's FP64 tensor-core MMA, m16n8k16 (mma.sync .f64, sm_90): the tier cuda-dmma-sm90
// (forward_dmma.cuh) and its throughput probe (bench/gpu/mma_f64_probe.cu) issue it from here.
#pragma once

namespace flashsdpa::cuda {

// D += A B. Lane (g, t) = (lane / 4, lane % 4) holds a[i] = A(g + 8 (i % 2), t + 4 (i / 2)),
// b[i] = B(t + 4 i, g), d[i] = D(g + 8 (i / 2), 2 t + i % 2).
__device__ __forceinline__ void mma_f64_m16n8k16(double (&d)[4], const double (&a)[8], const double (&b)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f64.f64.f64.f64 {%0,%1,%2,%3}, {%4,%5,%6,%7,%8,%9,%10,%11}, "
      "{%12,%13,%14,%15}, {%0,%1,%2,%3};\n"
      : "+d"(d[0]), "+d"(d[1]), "+d"(d[2]), "+d"(d[3])
      : "d"(a[0]), "d"(a[1]), "d"(a[2]), "d"(a[3]), "d"(a[4]), "d"(a[5]), "d"(a[6]), "d"(a[7]), "d"(b[0]),
        "d"(b[1]), "d"(b[2]), "d"(b[3]));
}

}  // namespace flashsdpa::cuda
