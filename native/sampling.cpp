#include "sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "topk.hpp"

namespace specdec {

namespace {

// Philox4x32 constants (Salmon et al. 2011, Random123's philox.h): the round multipliers
// and the Weyl sequence increments that bump the key between rounds.
constexpr std::uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr std::uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr std::uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr std::uint32_t kPhiloxW1 = 0xBB67AE85u;

std::array<std::uint32_t, 4> philox_round(const std::array<std::uint32_t, 4>& c, const std::array<std::uint32_t, 2>& k) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(kPhiloxM0) * c[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(kPhiloxM1) * c[2];
    return {static_cast<std::uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<std::uint32_t>(p1),
            static_cast<std::uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<std::uint32_t>(p0)};
}

bool lower_id(const TokenDistribution::Entry& a, const TokenDistribution::Entry& b) { return a.id < b.id; }

// Largest logit, NaN skipped (-inf when there is none). Sixteen independent lanes
// instead of one running maximum: the compiler vectorises them, and a 262k row is not
// held up by the latency of one long chain of compares.
float max_logit(const float* logits, std::size_t n) {
    constexpr std::size_t kLanes = 16;
    constexpr float kLowest = -std::numeric_limits<float>::infinity();
    float lanes[kLanes];
    std::fill(lanes, lanes + kLanes, kLowest);
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        for (std::size_t j = 0; j < kLanes; ++j) lanes[j] = logits[i + j] > lanes[j] ? logits[i + j] : lanes[j];
    }
    float best = kLowest;
    for (; i < n; ++i) best = logits[i] > best ? logits[i] : best;
    for (float lane : lanes) best = lane > best ? lane : best;
    return best;
}

bool more_likely(const TokenDistribution::Entry& a, const TokenDistribution::Entry& b) {
    return a.weight > b.weight || (a.weight == b.weight && a.id < b.id);
}

double mass_of(std::vector<TokenDistribution::Entry>::const_iterator first,
               std::vector<TokenDistribution::Entry>::const_iterator last) {
    double mass = 0.0;
    for (; first != last; ++first) mass += first->weight;
    return mass;
}

// Reorders entries so that the nucleus -- the shortest prefix, in more_likely order,
// whose mass reaches target -- comes first, and returns its size. A weighted quickselect:
// expected linear time, where sorting a 262k vocabulary would cost milliseconds. Only
// the nucleus is sorted afterwards (by id, for the inverse CDF).
std::size_t select_nucleus(std::vector<TokenDistribution::Entry>& entries, double target) {
    auto lo = entries.begin();  // [begin, lo): in the nucleus, holding mass_before
    auto hi = entries.end();    // [hi, end): outside it
    double mass_before = 0.0;
    while (lo < hi) {
        const auto mid = lo + (hi - lo) / 2;
        std::nth_element(lo, mid, hi, more_likely);  // [lo, mid) now outranks *mid, (mid, hi) does not
        const double above_mid = mass_before + mass_of(lo, mid);
        if (above_mid >= target && mid != entries.begin()) {
            hi = mid;
        } else if (above_mid + mid->weight >= target) {
            return static_cast<std::size_t>(mid - entries.begin()) + 1;
        } else {
            mass_before = above_mid + mid->weight;
            lo = mid + 1;
        }
    }
    return static_cast<std::size_t>(lo - entries.begin());  // rounding: everything it saw was short
}

}  // namespace

std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> counter, std::array<std::uint32_t, 2> key) {
    counter = philox_round(counter, key);
    for (int round = 1; round < 10; ++round) {
        key = {key[0] + kPhiloxW0, key[1] + kPhiloxW1};
        counter = philox_round(counter, key);
    }
    return counter;
}

double position_uniform(std::uint64_t seed, std::uint64_t position) {
    const auto word = philox4x32_10(
        {static_cast<std::uint32_t>(position), static_cast<std::uint32_t>(position >> 32), 0u, 0u},
        {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
    const std::uint64_t bits = (static_cast<std::uint64_t>(word[1]) << 32 | word[0]) >> 11;
    return static_cast<double>(bits) * 0x1.0p-53;
}

void TokenDistribution::assign(const float* logits, std::size_t n_vocab, const SamplingParams& params) {
    if (!(params.temperature > 0.0f)) throw std::invalid_argument("sampling needs temperature > 0");
    if (n_vocab == 0) throw std::invalid_argument("sampling needs a non-empty logits row");
    // Subtracting the maximum keeps exp() in range.
    const double max = max_logit(logits, n_vocab);
    if (!std::isfinite(max)) throw std::invalid_argument("sampling needs a finite maximum logit");
    const double inv_temperature = 1.0 / params.temperature;
    const auto weight_of = [&](float logit) {
        return std::isnan(logit) ? 0.0 : std::exp((static_cast<double>(logit) - max) * inv_temperature);
    };

    entries_.clear();
    if (params.top_k > 0 && static_cast<std::size_t>(params.top_k) < n_vocab) {
        // Temperature does not change the ranking, so select on the raw logits.
        const auto k = static_cast<std::size_t>(params.top_k);
        std::vector<std::int32_t> ids(k);
        std::vector<float> values(k);
        topk_row(logits, n_vocab, k, ids.data(), values.data());
        for (std::size_t i = 0; i < k; ++i) entries_.push_back({ids[i], weight_of(values[i])});
        std::sort(entries_.begin(), entries_.end(), lower_id);
    } else {
        entries_.reserve(n_vocab);
        for (std::size_t t = 0; t < n_vocab; ++t) entries_.push_back({static_cast<std::int32_t>(t), weight_of(logits[t])});
    }
    total_ = mass_of(entries_.begin(), entries_.end());

    if (params.top_p < 1.0f) keep_nucleus(params.top_p);
}

// Keeps the nucleus (top-p): the fewest most likely tokens, lower id first on ties,
// whose mass reaches top_p. At least one token always stays.
void TokenDistribution::keep_nucleus(double top_p) {
    // Light tokens go first: if n * w < (1 - top_p) * total, all tokens no heavier than w
    // together hold less than the 1 - top_p tail, so the nucleus ends before reaching w.
    // Half that bound leaves room for rounding in total_.
    const double light = 0.5 * (1.0 - top_p) * total_ / static_cast<double>(entries_.size());
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(), [light](const Entry& e) { return e.weight < light; }),
                   entries_.end());
    entries_.resize(std::max<std::size_t>(1, select_nucleus(entries_, top_p * total_)));
    std::sort(entries_.begin(), entries_.end(), lower_id);
    total_ = mass_of(entries_.begin(), entries_.end());
}

std::int32_t TokenDistribution::draw(double u) const {
    const double target = u * total_;
    double mass = 0.0;
    std::int32_t last_possible = -1;
    for (const Entry& e : entries_) {
        if (e.weight <= 0.0) continue;
        mass += e.weight;
        last_possible = e.id;
        if (target < mass) return e.id;
    }
    // Only reached when u * total_ rounds up to total_ (the sum above, in the same order).
    return last_possible;
}

std::int32_t Sampler::sample(const float* logits, std::size_t n_vocab, const SamplingParams& params,
                             std::uint64_t position) {
    if (!(params.temperature > 0.0f)) {
        std::int32_t id = 0;
        float value = 0.0f;
        topk_row(logits, n_vocab, 1, &id, &value);
        return id;
    }
    scratch_.assign(logits, n_vocab, params);
    return scratch_.draw(uniform(position));
}

}  // namespace specdec
