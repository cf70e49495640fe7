// Incremental n-gram index over the context for prompt lookup decoding
// (Saxena 2023, "Prompt Lookup Decoding"): the draft is whatever followed the most
// recent earlier occurrence of the context's longest matching suffix.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "span.hpp"

namespace specdec {

// A match: the continuation is tokens()[start, start + length), found with an n-gram of order n.
struct NgramMatch {
    std::size_t start = 0;
    std::size_t length = 0;
    int n = 0;  // 0: no match
};

class NgramIndex {
public:
    NgramIndex(int max_n, int min_n);

    // Appends tokens to the context. Costs O(max_n - min_n + 1) hash inserts per token:
    // only the n-grams that end at the new tokens are indexed, the context is never rescanned.
    void extend(Span<std::int32_t> tokens);

    // Tries orders max_n down to min_n; the first order whose suffix occurred earlier wins.
    NgramMatch lookup(std::size_t max_len) const;

    void reset();
    std::size_t size() const { return tokens_.size(); }
    const std::vector<std::int32_t>& tokens() const { return tokens_; }
    int max_n() const { return max_n_; }
    int min_n() const { return min_n_; }

private:
    void index_ngrams_ending_at(std::size_t end);
    std::uint64_t hash_ngram(std::size_t begin, int n) const;
    bool same_ngram(std::size_t a_begin, std::size_t b_begin, int n) const;
    std::unordered_map<std::uint64_t, std::size_t>& table(int n) { return last_end_[n - min_n_]; }
    const std::unordered_map<std::uint64_t, std::size_t>& table(int n) const { return last_end_[n - min_n_]; }

    int max_n_;
    int min_n_;
    std::vector<std::int32_t> tokens_;
    // Per order n: n-gram hash -> end of its most recent occurrence that already has a
    // continuation token. An n-gram is only registered once the token after it arrives,
    // so the context's own suffix is never in the table and cannot match itself.
    std::vector<std::unordered_map<std::uint64_t, std::size_t>> last_end_;
};

}  // namespace specdec
