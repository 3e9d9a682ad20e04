// Deterministic shuffling: the same seed gives the same order on every platform and compiler (the
// standard library's distributions and std::shuffle are implementation-defined, so they are not used).
#pragma once

#include <cstdint>
#include <numeric>
#include <vector>

namespace qtrain {

// splitmix64 (Steele, Lea, Flood 2014): a small, well-mixed 64-bit generator.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) without modulo bias (rejection of the incomplete top range).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

 private:
  uint64_t state_;
};

// A seed for one purpose ("stream") derived from the user's seed, so the eval split, the file
// weights and each epoch's order are independent draws.
inline uint64_t derive_seed(uint64_t seed, uint64_t stream) {
  SplitMix64 g(seed ^ (stream * 0xD1B54A32D192ED03ull));
  return g.next();
}

// Fisher-Yates permutation of 0..n-1.
inline std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  SplitMix64 g(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[g.below(static_cast<uint64_t>(i) + 1)]);
  return p;
}

}  // namespace qtrain
