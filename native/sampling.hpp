// The target distribution of one position and a seeded sampler over it. Plain sampling
// and speculative verification share this code and the same random number for each
// output position, which is what makes speculative sampling reproduce plain sampling's
// text exactly (verify.hpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace specdec {

// Applied in this order (as Hugging Face's logits warpers do): temperature, top-k,
// top-p, renormalise. top_k <= 0 and top_p >= 1 switch the filter off.
struct SamplingParams {
    float temperature = 1.0f;
    int top_k = 0;
    float top_p = 1.0f;
};

// Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel
// random numbers: as easy as 1, 2, 3" (SC 2011), as in their Random123 library (its
// known-answer vectors are in tests/test_seeded_sampling.py): ten rounds of a keyed
// bijection of a 128-bit counter. Each output is a function of (counter, key) alone.
std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> counter, std::array<std::uint32_t, 2> key);

// The uniform in [0, 1) of output position `position` of a generation seeded with
// `seed`: Philox4x32-10 with key = seed and counter = (position, 0), its first two words
// read as 53 random bits. It depends on nothing else -- not on how many numbers were
// drawn before, which is what a draft tree of any shape would change.
double position_uniform(std::uint64_t seed, std::uint64_t position);

// The tokens with non-zero probability and their unnormalised weights, in ascending
// token id order.
class TokenDistribution {
public:
    struct Entry {
        std::int32_t id;
        double weight;
    };

    // Refills the distribution from a logits row, reusing this object's memory so that a
    // 262k vocabulary is not reallocated for every token. Throws std::invalid_argument
    // when temperature <= 0 or the row has no finite maximum.
    void assign(const float* logits, std::size_t n_vocab, const SamplingParams& params);

    // Inverse CDF: the token at quantile u in [0, 1), the cumulative weights taken in
    // token id order. The id order, not a probability order, keeps the draw stable where
    // two tokens' probabilities nearly tie: a tiny change in the logits moves each
    // quantile boundary a tiny bit instead of swapping two tokens' intervals.
    std::int32_t draw(double u) const;

private:
    void keep_nucleus(double top_p);

    std::vector<Entry> entries_;
    double total_ = 0.0;
};

class Sampler {
public:
    explicit Sampler(std::uint64_t seed) : seed_(seed) {}

    std::uint64_t seed() const { return seed_; }
    double uniform(std::uint64_t position) const { return position_uniform(seed_, position); }

    // The token at output position `position`: drawn by inverse CDF with that position's
    // uniform. temperature <= 0 means greedy (arg-max, lower id on ties).
    std::int32_t sample(const float* logits, std::size_t n_vocab, const SamplingParams& params,
                        std::uint64_t position);

private:
    std::uint64_t seed_;
    TokenDistribution scratch_;  // reused: a 262k vocabulary is not reallocated per token
};

}  // namespace specdec
