#include "ngram_index.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace specdec {

namespace {

// splitmix64 finaliser: spreads token ids over all 64 bits, because libstdc++'s
// std::hash<uint64_t> is the identity and the table buckets on the low bits.
std::uint64_t mix64(std::uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

}  // namespace

NgramIndex::NgramIndex(int max_n, int min_n) : max_n_(max_n), min_n_(min_n) {
    if (min_n < 1 || max_n < min_n) {
        throw std::invalid_argument("NgramIndex needs 1 <= min_n <= max_n, got min_n=" +
                                    std::to_string(min_n) + ", max_n=" + std::to_string(max_n));
    }
    last_end_.resize(static_cast<std::size_t>(max_n - min_n + 1));
}

void NgramIndex::extend(Span<std::int32_t> tokens) {
    tokens_.reserve(tokens_.size() + tokens.size);
    for (std::int32_t token : tokens) {
        tokens_.push_back(token);
        // The token just appended is the continuation of the n-grams ending before it.
        index_ngrams_ending_at(tokens_.size() - 1);
    }
}

void NgramIndex::index_ngrams_ending_at(std::size_t end) {
    for (int n = min_n_; n <= max_n_ && static_cast<std::size_t>(n) <= end; ++n) {
        table(n)[hash_ngram(end - n, n)] = end;  // overwrite: the most recent occurrence wins
    }
}

NgramMatch NgramIndex::lookup(std::size_t max_len) const {
    const std::size_t len = tokens_.size();
    for (int n = max_n_; n >= min_n_; --n) {
        if (static_cast<std::size_t>(n) >= len) continue;  // needs an earlier occurrence too
        const std::size_t suffix_begin = len - n;
        const auto& entries = table(n);
        const auto found = entries.find(hash_ngram(suffix_begin, n));
        if (found == entries.end()) continue;
        const std::size_t end = found->second;
        // A hash collision would propose an unrelated continuation; treat it as no match.
        if (!same_ngram(end - n, suffix_begin, n)) continue;
        return NgramMatch{end, std::min(max_len, len - end), n};
    }
    return NgramMatch{};
}

void NgramIndex::reset() {
    tokens_.clear();
    for (auto& entries : last_end_) entries.clear();
}

std::uint64_t NgramIndex::hash_ngram(std::size_t begin, int n) const {
    std::uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < n; ++i) {
        h = mix64(h ^ static_cast<std::uint32_t>(tokens_[begin + i]));
    }
    return h;
}

bool NgramIndex::same_ngram(std::size_t a_begin, std::size_t b_begin, int n) const {
    return std::equal(tokens_.begin() + a_begin, tokens_.begin() + a_begin + n, tokens_.begin() + b_begin);
}

}  // namespace specdec
