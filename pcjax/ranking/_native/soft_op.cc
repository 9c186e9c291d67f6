// Soft rank / soft sort of rows as one XLA FFI call on CPU (pcjax.ranking.native).
//
// Per row x of length n: a stable descending sort (LSD radix sort of order-preserving integer
// keys), then pool adjacent violators with a stack over the sorted values, then the output and
// the block structure the block-constant JVP needs, in input order. Rows are independent and are
// split over XLA's CPU thread pool. Arithmetic is in double for float32 and float64 input; each
// block is centred on its first (largest) value, so ties pool exactly and a constant added to
// a row never reaches the ranks. The formulas are those of pcjax/ranking/blocks.py.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Kind : int32_t { kRank = 0, kSort = 1 };
enum Reg : int32_t { kL2 = 0, kKl = 1 };

struct Options {
  int32_t kind;
  int32_t reg;
};

struct Block {
  int64_t start;
  int64_t count;
  double first;  // the block's first (largest) sorted value
  double agg;    // l2: sum of (y - first); kl: log sum exp((y - first) * scale)
};

// Keys whose unsigned order is the descending order of the values (-0.0 equals 0.0).
template <typename T, typename U>
U DescendingKey(T v) {
  T negated = v == T(0) ? T(0) : -v;
  U bits;
  std::memcpy(&bits, &negated, sizeof(U));
  constexpr U kSign = U(1) << (8 * sizeof(U) - 1);
  return (bits & kSign) ? ~bits : (bits | kSign);
}

// Scratch space of one worker, reused across its rows.
template <typename T>
struct Scratch {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  std::vector<U> keys, keys_tmp;
  std::vector<int32_t> perm, perm_tmp;
  std::vector<Block> stack;
  std::vector<int64_t> counts;  // Radix histograms, 256 per key byte.
  explicit Scratch(int64_t n)
      : keys(n), keys_tmp(n), perm(n), perm_tmp(n), stack(n), counts(sizeof(U) * 256) {}

  // Stable descending sort of x: perm[k] is the input position of the k-th largest value.
  void Sort(const T* x, int64_t n) {
    constexpr int kBytes = sizeof(U);
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t i = 0; i < n; ++i) {
      keys[i] = DescendingKey<T, U>(x[i]);
      perm[i] = static_cast<int32_t>(i);
      for (int b = 0; b < kBytes; ++b) ++counts[b * 256 + ((keys[i] >> (8 * b)) & 255)];
    }
    for (int b = 0; b < kBytes; ++b) {
      int64_t* count = &counts[b * 256];
      if (*std::max_element(count, count + 256) == n) continue;  // One bucket: order kept.
      int64_t offset = 0;
      for (int v = 0; v < 256; ++v) std::swap(count[v], offset), offset += count[v];
      for (int64_t i = 0; i < n; ++i) {
        int64_t to = count[(keys[i] >> (8 * b)) & 255]++;
        keys_tmp[to] = keys[i];
        perm_tmp[to] = perm[i];
      }
      keys.swap(keys_tmp);
      perm.swap(perm_tmp);
    }
  }
};

// log(1 - e^{-count/eps}) - log(1 - e^{-1/eps}): the kl soft sort's ρ/ε log-sum-exp offset.
double SortRhoExtra(double count, const Options& o, double inv_eps) {
  if (o.reg == kL2) return -0.5 * (count - 1) * inv_eps;
  return std::log(-std::expm1(-count * inv_eps)) - std::log(-std::expm1(-inv_eps));
}

// Block aggregate of the data in its units, relative to the block's first value.
double CentredAgg(const Block& b, const Options& o, double scale) {
  return o.reg == kL2 ? b.agg / b.count * scale : b.agg;
}

// Whether adjacent blocks left, right violate γ_left >= γ_right (γ = data - ρ side for ranks,
// ρ side - data for sorts), written on the differences of each side as in blocks._violates.
bool Violates(const Block& l, const Block& r, int64_t n, const Options& o, double inv_eps) {
  double scale = o.kind == kRank ? inv_eps : 1.0;
  double data_step =
      (l.first - r.first) * scale + (CentredAgg(l, o, scale) - CentredAgg(r, o, scale));
  double rho_step;
  if (o.kind == kSort) {
    rho_step = (r.start - l.start) * inv_eps + SortRhoExtra(l.count, o, inv_eps) -
               SortRhoExtra(r.count, o, inv_eps);
    return rho_step < data_step;
  }
  auto rho = [&](const Block& b) {
    double mean = n - b.start - 0.5 * (b.count - 1);
    return o.reg == kL2 ? mean : std::log(b.count * mean);
  };
  rho_step = rho(l) - rho(r);
  return data_step < rho_step;
}

template <typename T>
void SolveRow(const T* x, double inv_eps, int64_t n, const Options& o, Scratch<T>& s, T* out,
              int32_t* start_in, T* weight_in, int32_t* start_sorted) {
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) finite &= std::isfinite(x[i]);
  if (!finite) {  // NaN output (the caller masks it too) and a valid, trivial block structure.
    for (int64_t i = 0; i < n; ++i) {
      out[i] = weight_in[i] = std::numeric_limits<T>::quiet_NaN();
      start_in[i] = start_sorted[i] = static_cast<int32_t>(i);
    }
    return;
  }
  s.Sort(x, n);
  const int32_t* perm = s.perm.data();
  double scale = o.kind == kRank ? inv_eps : 1.0;
  int64_t top = 0;  // Stack of blocks over the sorted values.
  for (int64_t i = 0; i < n; ++i) {
    s.stack[top++] = Block{i, 1, static_cast<double>(x[perm[i]]), 0.0};
    while (top > 1 && Violates(s.stack[top - 2], s.stack[top - 1], n, o, inv_eps)) {
      Block& l = s.stack[top - 2];
      const Block& r = s.stack[top - 1];
      double shift = r.first - l.first;
      if (o.reg == kL2) {
        l.agg += r.agg + r.count * shift;
      } else {
        double a = l.agg, b = r.agg + shift * scale, m = std::max(a, b);
        l.agg = m + std::log(std::exp(a - m) + std::exp(b - m));
      }
      l.count += r.count;
      --top;
    }
  }
  for (int64_t j = 0; j < top; ++j) {
    const Block& b = s.stack[j];
    double centred_agg = CentredAgg(b, o, scale);
    double rho_mean = n - b.start - 0.5 * (b.count - 1);
    for (int64_t i = b.start; i < b.start + b.count; ++i) {
      double dev = (x[perm[i]] - b.first) * scale - centred_agg;
      double weight = o.reg == kL2 ? 1.0 / b.count : std::exp(dev);
      double value;
      if (o.kind == kRank) {
        value = o.reg == kL2 ? dev + rho_mean : weight * b.count * rho_mean;
      } else {
        value = (b.start - i) * inv_eps - SortRhoExtra(b.count, o, inv_eps) + b.first + centred_agg;
      }
      int64_t at = o.kind == kRank ? perm[i] : i;
      out[at] = static_cast<T>(value);
      start_in[perm[i]] = static_cast<int32_t>(b.start);
      weight_in[perm[i]] = static_cast<T>(weight);
      start_sorted[i] = static_cast<int32_t>(b.start);
    }
  }
}

// Runs rows [0, rows) in chunks, on the calling thread and the pool's threads. The caller takes
// chunks too and waits only for chunks already taken, so it never waits on a queued task.
template <typename F>
void ParallelRows(ffi::ThreadPool& pool, int64_t rows, int64_t row_cost, F&& run_chunk) {
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  constexpr int64_t kChunkCost = 1 << 16;  // About 0.1 ms of work per chunk.
  int64_t chunk = std::max<int64_t>(1, kChunkCost / std::max<int64_t>(row_cost, 1));
  int64_t chunks = (rows + chunk - 1) / chunk;
  int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  auto state = std::make_shared<State>();
  auto work = [state, chunk, chunks, rows, &run_chunk] {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      run_chunk(c * chunk, std::min(rows, (c + 1) * chunk));
      std::lock_guard<std::mutex> lock(state->mu);
      if (++state->done == chunks) state->cv.notify_all();
    }
  };
  // A helper that starts after every chunk is taken returns at once without touching run_chunk.
  for (int64_t h = 0; h < helpers; ++h) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == chunks; });
}

template <typename T>
ffi::Error Run(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer inv_eps,
               ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> start_in,
               ffi::Result<ffi::AnyBuffer> weight_in, ffi::Result<ffi::AnyBuffer> start_sorted,
               Options o) {
  auto dims = x.dimensions();
  int64_t n = dims.size() ? dims.back() : 1;
  int64_t rows = n ? static_cast<int64_t>(x.element_count()) / n : 0;
  if (static_cast<int64_t>(inv_eps.element_count()) != rows) {
    return ffi::Error::InvalidArgument("inv_eps must hold one value per row");
  }
  const T* xs = x.typed_data<T>();
  const T* eps = inv_eps.typed_data<T>();
  T* o_out = out->typed_data<T>();
  int32_t* o_start = start_in->typed_data<int32_t>();
  T* o_weight = weight_in->typed_data<T>();
  int32_t* o_sorted = start_sorted->typed_data<int32_t>();
  ParallelRows(pool, rows, n * 16, [&](int64_t begin, int64_t end) {
    Scratch<T> scratch(n);
    for (int64_t r = begin; r < end; ++r) {
      int64_t k = r * n;
      SolveRow<T>(xs + k, eps[r], n, o, scratch, o_out + k, o_start + k, o_weight + k,
                  o_sorted + k);
    }
  });
  return ffi::Error::Success();
}

ffi::Error SoftOp(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer inv_eps,
                  ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> start_in,
                  ffi::Result<ffi::AnyBuffer> weight_in,
                  ffi::Result<ffi::AnyBuffer> start_sorted, int32_t kind, int32_t reg) {
  Options o{kind, reg};
  switch (x.element_type()) {
    case ffi::DataType::F32:
      return Run<float>(pool, x, inv_eps, out, start_in, weight_in, start_sorted, o);
    case ffi::DataType::F64:
      return Run<double>(pool, x, inv_eps, out, start_in, weight_in, start_sorted, o);
    default:
      return ffi::Error::InvalidArgument("soft_op supports float32 and float64 rows");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PcjaxSoftOp, SoftOp,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("kind")
                                  .Attr<int32_t>("reg"));

// The jaxlib whose FFI headers this library was compiled against: a handler is only registered
// with that jaxlib, since XLA refuses (and fails the whole CPU backend on) a handler built for
// another FFI API version.
extern "C" const char* PcjaxBuiltForJaxlib() { return PCJAX_JAXLIB_VERSION; }
