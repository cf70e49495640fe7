// The target distribution of one position and a seeded sampler over it. Plain sampling
// and speculative verification share this code, which is what makes speculative
// sampling reproduce plain sampling's distribution exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace specdec {

// Applied in this order (as Hugging Face's logits warpers do): temperature, top-k,
// top-p, renormalise. top_k <= 0 and top_p >= 1 switch the filter off.
struct SamplingParams {
    float temperature = 1.0f;
    int top_k = 0;
    float top_p = 1.0f;
};

// The tokens with non-zero probability and their unnormalised weights. Verification
// removes rejected draft tokens from it (SpecInfer's residual distribution).
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

    double weight(std::int32_t token) const;
    double total() const { return total_; }
    // Sets the token's weight to zero.
    void remove(std::int32_t token);
    // The token at quantile u in [0, 1) of the distribution.
    std::int32_t draw(double u) const;

private:
    std::ptrdiff_t find(std::int32_t token) const;
    void keep_nucleus(double top_p);

    std::vector<Entry> entries_;
    double total_ = 0.0;
    bool indexed_by_id_ = false;  // entries_[t].id == t: lookups need no search
};

class Sampler {
public:
    explicit Sampler(std::uint64_t seed) : engine_(seed) {}

    // Uniform in [0, 1) with 53 random bits, built from the raw engine output: the
    // standard fixes mt19937_64's sequence but not std::uniform_real_distribution's.
    double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

    // The target distribution of a logits row, held in the sampler's reusable buffer:
    // valid until the next call.
    TokenDistribution& target(const float* logits, std::size_t n_vocab, const SamplingParams& params);

    // temperature <= 0 means greedy (arg-max, lower id on ties).
    std::int32_t sample(const float* logits, std::size_t n_vocab, const SamplingParams& params);

private:
    std::mt19937_64 engine_;
    TokenDistribution scratch_;
};

}  // namespace specdec
