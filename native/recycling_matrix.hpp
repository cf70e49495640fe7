// Token Recycling adjacency matrix (Luo et al. 2024, "Turning Trash into Treasure:
// Accelerating Inference of Large Language Models with Token Recycling"): for every
// token id, the k tokens the model ranked highest after it the last time that token
// was verified. Candidates that verification rejected are "recycled" as drafts later.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "span.hpp"

namespace specdec {

class RecyclingMatrix {
public:
    static constexpr std::int32_t kEmpty = -1;

    RecyclingMatrix(std::int32_t n_vocab, std::int32_t k);

    // Row tokens[i] := topk_ids[i, :k]. Validates everything before writing anything,
    // so a bad call leaves the matrix unchanged. A later duplicate token wins.
    void update(Span<std::int32_t> tokens, MatrixView<std::int32_t> topk_ids);

    Span<std::int32_t> row(std::int32_t token) const;
    // The rank-th candidate after token, or kEmpty when the row has none at that rank.
    std::int32_t candidate(std::int32_t token, int rank) const;

    std::int32_t n_vocab() const { return n_vocab_; }
    std::int32_t k() const { return k_; }
    std::size_t filled_rows() const { return filled_rows_; }

    // Persists the matrix atomically (temporary file, then rename) so a crash while
    // saving never leaves a half-written matrix where the next run looks for one.
    void save(const std::string& path) const;
    // Throws std::invalid_argument on a corrupt, truncated or mismatched file and
    // FileError when the file cannot be read at all.
    static RecyclingMatrix load(const std::string& path, std::int32_t n_vocab, std::int32_t k);

private:
    void check_token(std::int32_t token) const;
    std::int32_t* row_data(std::int32_t token) { return ids_.data() + static_cast<std::size_t>(token) * k_; }
    const std::int32_t* row_data(std::int32_t token) const {
        return ids_.data() + static_cast<std::size_t>(token) * k_;
    }
    std::size_t count_filled_rows() const;

    std::int32_t n_vocab_;
    std::int32_t k_;
    std::size_t filled_rows_ = 0;
    std::vector<std::int32_t> ids_;  // [n_vocab, k], kEmpty where unknown
};

}  // namespace specdec
