// Top-k selection over logits rows: what Token Recycling writes into the matrix after
// every verification, and the top-k filter of sampling. Runs over llama.cpp's logits
// buffer in place; with a 262k vocabulary that is 1 MB per row, so the scan must run
// at memory speed.
#pragma once

#include <cstddef>
#include <cstdint>

#include "span.hpp"

namespace specdec {

// Writes the k largest values of row[0, n) to ids/values, sorted descending; equal
// values are ordered by lower index first, so k = 1 agrees with numpy's argmax.
// NaN counts as -inf. Requires 1 <= k <= n.
void topk_row(const float* row, std::size_t n, std::size_t k, std::int32_t* ids, float* values);

// topk_row for every row; out_ids/out_values are [rows, k]. Large inputs are split by rows
// over n_threads threads (0: choose from the input size and the core count): one core
// cannot pull the full memory bandwidth, and 80 x 262k logits are 84 MB.
void topk_rows(MatrixView<float> logits, std::size_t k, std::int32_t* out_ids, float* out_values,
               int n_threads = 0);

}  // namespace specdec
