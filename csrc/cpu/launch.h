// Running a phase over the work items of a Layout (packed_list.h) on ATen's thread pool.
// Reductions add per-item partial sums in item order, so that their results do not depend
// on the number of threads.
#pragma once

#include <array>

#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>

#include "packed_list.h"

namespace xsam_cpu {

// Fewest work items a thread is given: a bucket of up to this many items (128K elements)
// runs on the calling thread, where a parallel region would cost more than it saves.
// Results do not depend on it (partial sums are per item).
constexpr int64_t kGrain = 4;

// Runs fn(segment) for every segment of `layout`, work items in parallel.
template <typename Fn>
void for_each_segment(const Layout& layout, Fn fn) {
  at::parallel_for(0, layout.items(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t s = layout.first[i]; s < layout.first[i + 1]; ++s) fn(layout.segments[s]);
  });
}

// The K sums fn(segment, out[K]) adds up over every segment: per-item partial sums (of the
// item's segments, in order), then added in item order.
template <int K, typename Fn>
std::array<double, K> reduce(const Layout& layout, Fn fn) {
  c10::SmallVector<double, 96> partial(static_cast<size_t>(layout.items()) * K, 0.0);
  at::parallel_for(0, layout.items(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t s = layout.first[i]; s < layout.first[i + 1]; ++s) {
        double out[K];
        fn(layout.segments[s], out);
        for (int k = 0; k < K; ++k) partial[i * K + k] += out[k];
      }
    }
  });
  std::array<double, K> total{};
  for (int64_t i = 0; i < layout.items(); ++i)
    for (int k = 0; k < K; ++k) total[k] += partial[i * K + k];
  return total;
}

}  // namespace xsam_cpu
