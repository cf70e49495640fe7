// The per-step work of `--draft auto`'s speculation policy (specdec_cli/policy.py has the
// cost model and the reasons behind each rule): per-depth acceptance statistics by match
// bucket, the shadow predictions that feed them, and each step's choice of (tree size,
// chain length) with the most expected tokens per ms. It runs every step, right after a
// llama_decode has flushed the caches; as Python it cost ~80 us a step there (choose
// 59-68, scoring the shadows 19-20) on SmolLM2 with a 2-core CPU, ~0.7% of the step.
//
// The arithmetic follows the Python reference (tests/reference.py) operation by operation,
// so that choices and costs are equal to the last bit; policy.cpp is compiled without
// floating-point contraction for that reason.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "span.hpp"

namespace specdec {

struct PolicyParams {
    std::vector<std::int32_t> match_buckets;  // ascending; a match of n tokens counts in the largest <= n
    std::vector<double> match_priors;         // acceptance prior of each match bucket (unanimous matches)
    double split_prior_factor = 0.7;          // split matches start from this share of it
    std::vector<std::int32_t> tree_sizes;     // ascending recycling tree sizes (nodes, root included)
    std::vector<double> tree_priors;          // mean accepted nodes of each, before any is measured
    int max_depth = 64;
    int max_streak = 2;
    int price_block = 8;
    double prior_weight = 4.0;  // observations a prior counts as
    double local_weight = 12.0;  // observations the global rate counts as beside the generation's own
    double unanimous = 0.99;  // agreement from which a match's earlier occurrences count as unanimous
    double margin = 1.1;  // a speculative option must promise this many times plain decoding's rate
    double draft_overhead = 0.0;  // ms a speculative step costs beyond its rows
};

struct PolicyChoice {
    int tree_size = 1;  // 1 = no tree
    int draft_len = 0;
    double expected_tokens = 1.0;
    double cost_ms = 0.0;
};

enum StepKind { kPlain = 0, kNgram = 1, kTree = 2, kHybrid = 3 };

// Per-depth conditional acceptance counts of one statistics key: over everything seen
// (with a Beta prior) and over the current generation, shrunk towards the former. Rates
// are recomputed only at depths whose counts changed.
class DepthStats {
public:
    DepthStats(double prior, int max_depth, double prior_weight, double local_weight);

    double rate(std::size_t depth);
    void add(std::size_t depth, bool hit);
    void set_counts(Span<double> trials, Span<double> hits);
    void reset_local(double decay);
    // gains[d] = expected accepted draft tokens when a chain of d tokens is verified, d <= length.
    void expected_accepted(std::size_t length, std::vector<double>& gains);

    const std::vector<double>& trials() const { return trials_; }
    const std::vector<double>& hits() const { return hits_; }

private:
    void refresh();

    double prior_;
    double prior_weight_;
    double local_weight_;
    std::vector<double> trials_, hits_, local_trials_, local_hits_, rates_;
    std::vector<char> stale_;
    bool any_stale_ = true;
};

class SpeculationCore {
public:
    explicit SpeculationCore(PolicyParams params);

    // The largest tree (nodes) and chain a step may use.
    void set_limits(int max_tree, int max_chain);
    // Step cost in ms by row count (costs[k] for k rows), as far as steps can reach.
    void set_costs(Span<double> costs);
    // A new generation: shadows dropped, each key's generation counts cleared, the global
    // counts faded by `decay`.
    void reset(double decay);

    // The option with the most expected tokens per ms, given the drafter's continuation
    // (`chain`, empty when nothing matched), the suffix match length, the share of earlier
    // occurrences that continued with the chain's first token, the tokens deferred from the
    // last step and the ms each row costs beyond the curve at this context length. The
    // chain (up to max_chain tokens) is kept as a shadow prediction.
    PolicyChoice choose(Span<std::int32_t> chain, int match_n, double agreement, int n_deferred, double row_extra);
    // After a step: the tokens it produced (accepted draft tokens, then the bonus token).
    void observe(Span<std::int32_t> produced);

    // The statistics key of a match of `match_n` tokens (its bucket), unanimous or split,
    // after `streak` predicted steps (capped at max_streak).
    int stats_key(int match_n, bool unanimous, int streak) const;
    DepthStats& stats(std::size_t key);
    double tree_mean(std::size_t index) const;
    std::pair<double, double> tree_counts(std::size_t index) const;
    void set_tree_counts(std::size_t index, double total, double count);
    const std::array<std::int64_t, 4>& steps_by_kind() const { return steps_by_kind_; }
    int max_chain() const { return max_chain_; }
    std::size_t n_trees() const { return n_trees_; }

private:
    struct Shadow {
        std::vector<std::int32_t> chain;
        std::size_t key;
        std::size_t matched = 0;
    };
    struct TreeStat {
        double prior;
        double total = 0.0;
        double count = 0.0;
    };

    void score_shadows(Span<std::int32_t> produced);

    PolicyParams params_;
    std::vector<DepthStats> stats_;
    std::vector<TreeStat> trees_;
    std::size_t n_trees_ = 0;  // tree sizes a step may use: the first n_trees_
    int max_chain_ = 0;
    std::vector<double> costs_, cheapest_from_;
    std::vector<Shadow> shadows_;
    std::vector<double> gains_;  // choose()'s scratch
    int streak_ = 0;
    bool has_pending_ = false;
    PolicyChoice pending_;
    std::int32_t pending_first_ = 0;  // the pending chain's first token, when it has one
    std::array<std::int64_t, 4> steps_by_kind_{};
};

}  // namespace specdec
