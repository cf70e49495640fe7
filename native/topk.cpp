#include "topk.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

namespace specdec {

namespace {

// Values are scanned in blocks; a block is only looked at element by element when one
// of its values beats the current k-th best. On real logits that is a few dozen blocks
// per row, so almost all the time goes to block_beats, which the compiler vectorises.
constexpr std::size_t kBlock = 64;

// Starting a thread costs tens of microseconds; below about 4 MB of logits per thread
// (a few hundred microseconds of scanning) it does not pay.
constexpr std::size_t kMinValuesPerThread = std::size_t{1} << 20;
constexpr std::size_t kMaxAutoThreads = 8;  // memory bandwidth saturates long before the core count

bool block_beats(const float* x, float threshold) {
    int beats = 0;
    for (std::size_t j = 0; j < kBlock; ++j) beats |= x[j] > threshold;
    return beats != 0;
}

// The best candidates so far, sorted descending by value, then ascending by index.
class TopBuffer {
public:
    TopBuffer(std::int32_t* ids, float* values, std::size_t k) : ids_(ids), values_(values), k_(k) {}

    // Candidates arrive in increasing index order, so a new one goes after every
    // stored value that is >= it: that is the lower-index-wins tie rule.
    void insert(float value, std::int32_t id) {
        std::size_t pos = size_ < k_ ? size_ : k_ - 1;
        while (pos > 0 && values_[pos - 1] < value) {
            values_[pos] = values_[pos - 1];
            ids_[pos] = ids_[pos - 1];
            --pos;
        }
        values_[pos] = value;
        ids_[pos] = id;
        if (size_ < k_) ++size_;
    }

    // Strictly greater: an equal value arriving later has a higher index and loses the tie.
    float threshold() const { return values_[k_ - 1]; }

private:
    std::int32_t* ids_;
    float* values_;
    std::size_t k_;
    std::size_t size_ = 0;
};

float nan_as_lowest(float v) { return std::isnan(v) ? -std::numeric_limits<float>::infinity() : v; }

void consider_range(const float* row, std::size_t begin, std::size_t end, TopBuffer& top, float& threshold) {
    for (std::size_t i = begin; i < end; ++i) {
        if (row[i] > threshold) {  // false for NaN
            top.insert(row[i], static_cast<std::int32_t>(i));
            threshold = top.threshold();
        }
    }
}

std::size_t auto_thread_count(const MatrixView<float>& logits) {
    const std::size_t by_size = logits.rows * logits.cols / kMinValuesPerThread;
    if (by_size <= 1) return 1;  // every decode step's read-out: no need to ask for the cores
    // Asked once: glibc reads /sys/devices/system/cpu/online at every call, which cost
    // ~50 us of each step's top-k on SmolLM2 (2-core CPU) when asked every time.
    static const std::size_t cores = std::max(1u, std::thread::hardware_concurrency());
    return std::min({by_size, cores, kMaxAutoThreads});
}

void topk_row_range(MatrixView<float> logits, std::size_t k, std::size_t begin, std::size_t end,
                    std::int32_t* out_ids, float* out_values) {
    for (std::size_t r = begin; r < end; ++r) {
        topk_row(logits.row(r), logits.cols, k, out_ids + r * k, out_values + r * k);
    }
}

}  // namespace

void topk_row(const float* row, std::size_t n, std::size_t k, std::int32_t* ids, float* values) {
    TopBuffer top(ids, values, k);
    for (std::size_t i = 0; i < k; ++i) top.insert(nan_as_lowest(row[i]), static_cast<std::int32_t>(i));
    float threshold = top.threshold();

    std::size_t i = k;
    for (; i + kBlock <= n; i += kBlock) {
        if (block_beats(row + i, threshold)) consider_range(row, i, i + kBlock, top, threshold);
    }
    consider_range(row, i, n, top, threshold);
}

void topk_rows(MatrixView<float> logits, std::size_t k, std::int32_t* out_ids, float* out_values, int n_threads) {
    const std::size_t wanted = n_threads > 0 ? static_cast<std::size_t>(n_threads) : auto_thread_count(logits);
    const std::size_t threads = std::min(wanted, std::max<std::size_t>(logits.rows, 1));
    if (threads == 1) {
        topk_row_range(logits, k, 0, logits.rows, out_ids, out_values);
        return;
    }
    // Contiguous row ranges, so each thread streams its own part of the buffer; the
    // calling thread takes the last range.
    std::vector<std::thread> workers;
    workers.reserve(threads - 1);
    const std::size_t per_thread = logits.rows / threads;
    const std::size_t remainder = logits.rows % threads;
    std::size_t begin = 0;
    for (std::size_t t = 0; t < threads; ++t) {
        const std::size_t end = begin + per_thread + (t < remainder ? 1 : 0);
        if (t + 1 < threads) {
            workers.emplace_back(topk_row_range, logits, k, begin, end, out_ids, out_values);
        } else {
            topk_row_range(logits, k, begin, end, out_ids, out_values);
        }
        begin = end;
    }
    for (std::thread& worker : workers) worker.join();
}

}  // namespace specdec
