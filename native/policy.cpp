#include "policy.hpp"

#include <algorithm>
#include <initializer_list>
#include <stdexcept>
#include <utility>

namespace specdec {

namespace {

// At most the cost of any row count lo..hi-1 at this context length (each costs[rows] +
// rows * row_extra), given at most their smallest curve cost: that plus the smallest
// depth term. Rounding is monotonic, so the bound holds for the computed costs too, and a
// choice pruned with it is the one an exhaustive scan makes.
double cost_floor(double cheapest, std::size_t lo, std::size_t hi, double row_extra) {
    return cheapest + std::min(static_cast<double>(lo) * row_extra, static_cast<double>(hi - 1) * row_extra);
}

}  // namespace

DepthStats::DepthStats(double prior, int max_depth, double prior_weight, double local_weight)
    : prior_(prior),
      prior_weight_(prior_weight),
      local_weight_(local_weight),
      trials_(max_depth, 0.0),
      hits_(max_depth, 0.0),
      local_trials_(max_depth, 0.0),
      local_hits_(max_depth, 0.0),
      rates_(max_depth, 0.0),
      stale_(max_depth, 1) {}

void DepthStats::refresh() {
    if (!any_stale_) return;
    for (std::size_t d = 0; d < rates_.size(); ++d) {
        if (!stale_[d]) continue;
        const double global = (hits_[d] + prior_ * prior_weight_) / (trials_[d] + prior_weight_);
        rates_[d] = (local_hits_[d] + global * local_weight_) / (local_trials_[d] + local_weight_);
        stale_[d] = 0;
    }
    any_stale_ = false;
}

double DepthStats::rate(std::size_t depth) {
    refresh();
    return rates_.at(depth);
}

void DepthStats::add(std::size_t depth, bool hit) {
    trials_[depth] += 1;
    local_trials_[depth] += 1;
    if (hit) {
        hits_[depth] += 1;
        local_hits_[depth] += 1;
    }
    stale_[depth] = 1;
    any_stale_ = true;
}

void DepthStats::set_counts(Span<double> trials, Span<double> hits) {
    if (trials.size != trials_.size() || hits.size != hits_.size()) {
        throw std::invalid_argument("set_counts: one count per depth is needed");
    }
    trials_.assign(trials.begin(), trials.end());
    hits_.assign(hits.begin(), hits.end());
    std::fill(stale_.begin(), stale_.end(), 1);
    any_stale_ = true;
}

void DepthStats::reset_local(double decay) {
    std::fill(local_trials_.begin(), local_trials_.end(), 0.0);
    std::fill(local_hits_.begin(), local_hits_.end(), 0.0);
    for (double& t : trials_) t *= decay;
    for (double& h : hits_) h *= decay;
    std::fill(stale_.begin(), stale_.end(), 1);
    any_stale_ = true;
}

void DepthStats::expected_accepted(std::size_t length, std::vector<double>& gains) {
    refresh();
    // Survival products and their running sums, in the reference's order of operations.
    gains.assign(1, 0.0);
    double survive = 1.0, sum = 0.0;
    for (std::size_t d = 0; d < length; ++d) {
        survive *= rates_[d];
        sum += survive;
        gains.push_back(sum);
    }
}

SpeculationCore::SpeculationCore(PolicyParams params) : params_(std::move(params)) {
    if (params_.match_buckets.empty() || params_.match_priors.size() != params_.match_buckets.size()) {
        throw std::invalid_argument("SpeculationCore: one prior per match bucket is needed");
    }
    if (params_.tree_sizes.size() != params_.tree_priors.size()) {
        throw std::invalid_argument("SpeculationCore: one prior per tree size is needed");
    }
    if (params_.max_depth < 1 || params_.price_block < 1 || params_.max_streak < 0) {
        throw std::invalid_argument("SpeculationCore: max_depth and price_block must be >= 1, max_streak >= 0");
    }
    // In stats_key's order: bucket, then split / unanimous, then streak.
    for (double prior : params_.match_priors) {
        for (const bool unanimous : {false, true}) {
            for (int streak = 0; streak <= params_.max_streak; ++streak) {
                stats_.emplace_back(unanimous ? prior : prior * params_.split_prior_factor, params_.max_depth,
                                    params_.prior_weight, params_.local_weight);
            }
        }
    }
    for (double prior : params_.tree_priors) trees_.push_back(TreeStat{prior});
    gains_.reserve(static_cast<std::size_t>(params_.max_depth) + 1);
}

void SpeculationCore::set_limits(int max_tree, int max_chain) {
    max_chain_ = std::clamp(max_chain, 0, params_.max_depth);
    n_trees_ = 0;
    while (n_trees_ < params_.tree_sizes.size() && params_.tree_sizes[n_trees_] <= max_tree) ++n_trees_;
}

void SpeculationCore::set_costs(Span<double> costs) {
    costs_.assign(costs.begin(), costs.end());
    // cheapest_from_[k]: the cheapest step of k or more rows.
    cheapest_from_ = costs_;
    for (std::size_t k = cheapest_from_.size(); k-- > 1;) {
        cheapest_from_[k - 1] = std::min(cheapest_from_[k], cheapest_from_[k - 1]);
    }
}

void SpeculationCore::reset(double decay) {
    shadows_.clear();
    has_pending_ = false;
    streak_ = 0;
    for (DepthStats& s : stats_) s.reset_local(decay);
}

int SpeculationCore::stats_key(int match_n, bool unanimous, int streak) const {
    const auto& buckets = params_.match_buckets;
    const auto above = std::upper_bound(buckets.begin(), buckets.end(), match_n);
    const std::size_t bucket = above == buckets.begin() ? 0 : static_cast<std::size_t>(above - buckets.begin()) - 1;
    const int capped = std::clamp(streak, 0, params_.max_streak);
    return static_cast<int>((bucket * 2 + (unanimous ? 1 : 0)) * static_cast<std::size_t>(params_.max_streak + 1)) +
           capped;
}

DepthStats& SpeculationCore::stats(std::size_t key) {
    if (key >= stats_.size()) throw std::out_of_range("no such statistics key");
    return stats_[key];
}

double SpeculationCore::tree_mean(std::size_t index) const {
    const TreeStat& t = trees_.at(index);
    return (t.total + t.prior * params_.prior_weight) / (t.count + params_.prior_weight);
}

std::pair<double, double> SpeculationCore::tree_counts(std::size_t index) const {
    const TreeStat& t = trees_.at(index);
    return {t.total, t.count};
}

void SpeculationCore::set_tree_counts(std::size_t index, double total, double count) {
    TreeStat& t = trees_.at(index);
    t.total = total;
    t.count = count;
}

PolicyChoice SpeculationCore::choose(Span<std::int32_t> chain, int match_n, double agreement, int n_deferred,
                                     double row_extra) {
    const std::size_t n = std::min(chain.size, static_cast<std::size_t>(max_chain_));
    const std::size_t deferred = static_cast<std::size_t>(std::max(n_deferred, 0));
    const std::size_t largest_tree = n_trees_ ? static_cast<std::size_t>(params_.tree_sizes[n_trees_ - 1]) : 1;
    if (deferred + largest_tree + n + 1 >= costs_.size()) {
        throw std::out_of_range("choose: the step costs do not reach this many rows");
    }
    DepthStats* stats = nullptr;
    if (n > 0) {
        const auto key = static_cast<std::size_t>(stats_key(match_n, agreement >= params_.unanimous, streak_));
        stats = &stats_[key];
        shadows_.push_back(Shadow{std::vector<std::int32_t>(chain.begin(), chain.begin() + n), key});
        stats->expected_accepted(n, gains_);
    } else {
        gains_.assign(1, 0.0);
    }
    const double first_hit = stats ? stats->rate(0) : 0.0;
    const double overhead = params_.draft_overhead;
    const std::size_t plain_rows = deferred + 1;
    double best_rate = params_.margin / (costs_[plain_rows] + static_cast<double>(plain_rows) * row_extra);
    std::size_t best_t = 1, best_d = 0;
    double best_expected = 1.0;
    const std::size_t n_gains = gains_.size();
    const std::size_t block_len = static_cast<std::size_t>(params_.price_block);
    for (std::size_t option = 0; option <= n_trees_; ++option) {
        const std::size_t t = option ? static_cast<std::size_t>(params_.tree_sizes[option - 1]) : 1;
        const double tree_gain = option ? tree_mean(option - 1) : 0.0;
        const std::size_t rows0 = deferred + t;  // the rows of this tree without a chain
        // A tree's alternatives only matter when the chain's first token is rejected.
        const double alt = (1.0 - first_hit) * tree_gain;
        // Chain lengths are priced in blocks. Gains grow with the length, so no chain from
        // `start` on expects more than the longest, nor costs less than the cheapest row
        // count from there on: when even that loses, no later block can win; a block whose
        // own best case loses is skipped.
        const double most = 1.0 + gains_[n_gains - 1] + tree_gain;
        const std::size_t stop = rows0 + n_gains;  // past the longest chain's row count
        for (std::size_t start = t > 1 ? 0 : 1; start < n_gains; start += block_len) {
            const std::size_t end = std::min(start + block_len, n_gains);
            const std::size_t lo = rows0 + start, hi = rows0 + end;
            const double rest = cost_floor(cheapest_from_[lo], lo, stop, row_extra) + overhead;
            if (rest > 0 && most / rest <= best_rate) break;
            const double cheapest = *std::min_element(costs_.begin() + static_cast<std::ptrdiff_t>(lo),
                                                      costs_.begin() + static_cast<std::ptrdiff_t>(hi));
            const double block = cost_floor(cheapest, lo, hi, row_extra) + overhead;
            if (block > 0 && (1.0 + gains_[end - 1] + (start ? alt : tree_gain)) / block <= best_rate) continue;
            for (std::size_t d = start; d < end; ++d) {
                const std::size_t rows = rows0 + d;
                const double expected = 1.0 + gains_[d] + (d ? alt : tree_gain);
                const double rate = expected / (costs_[rows] + static_cast<double>(rows) * row_extra + overhead);
                if (rate > best_rate) {
                    best_rate = rate;
                    best_t = t;
                    best_d = d;
                    best_expected = expected;
                }
            }
        }
    }
    const std::size_t rows = deferred + best_t + best_d;
    const bool speculative = best_t + best_d > 1;
    PolicyChoice choice{static_cast<int>(best_t), static_cast<int>(best_d), best_expected,
                        costs_[rows] + static_cast<double>(rows) * row_extra + (speculative ? overhead : 0.0)};
    has_pending_ = true;
    pending_ = choice;
    pending_first_ = best_d ? chain[0] : 0;
    return choice;
}

void SpeculationCore::observe(Span<std::int32_t> produced) {
    score_shadows(produced);
    if (!has_pending_) return;
    has_pending_ = false;
    const PolicyChoice& c = pending_;
    const StepKind kind =
        c.tree_size == 1 ? (c.draft_len == 0 ? kPlain : kNgram) : (c.draft_len == 0 ? kTree : kHybrid);
    ++steps_by_kind_[kind];
    if (c.tree_size > 1) {
        const bool chain_missed = c.draft_len == 0 || produced.empty() || produced[0] != pending_first_;
        if (chain_missed) {
            for (std::size_t i = 0; i < trees_.size(); ++i) {
                if (params_.tree_sizes[i] != c.tree_size) continue;
                trees_[i].total += static_cast<double>(static_cast<std::int64_t>(produced.size) - 1);
                trees_[i].count += 1;
            }
        }
    }
}

void SpeculationCore::score_shadows(Span<std::int32_t> produced) {
    bool newest_hit = false;
    std::size_t kept = 0;
    const auto max_depth = static_cast<std::size_t>(params_.max_depth);
    for (std::size_t i = 0; i < shadows_.size(); ++i) {
        Shadow& shadow = shadows_[i];
        DepthStats& stats = stats_[shadow.key];
        bool done = false;
        for (std::int32_t tok : produced) {
            const std::size_t depth = shadow.matched;
            if (depth >= shadow.chain.size() || depth >= max_depth) {
                done = true;
                break;
            }
            const bool hit = shadow.chain[depth] == tok;
            stats.add(depth, hit);
            // Only the newest shadow is still at depth 0: its first token is this step's.
            if (depth == 0) newest_hit = hit;
            if (!hit) {
                done = true;
                break;
            }
            ++shadow.matched;
        }
        if (!done && shadow.matched < shadow.chain.size()) {
            if (kept != i) shadows_[kept] = std::move(shadow);
            ++kept;
        }
    }
    shadows_.resize(kept);
    streak_ = newest_hit ? streak_ + 1 : 0;
}

}  // namespace specdec
