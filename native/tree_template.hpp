// Static draft-tree templates for Token Recycling (Luo et al. 2024). Each node stands
// for "the rank-th candidate in the matrix row of my parent's token". The shape is the
// optimal static tree under an assumed per-rank acceptance prior (as in Medusa, Cai et
// al. 2024, and Sequoia, Chen et al. 2024): the expected number of accepted tokens is the
// sum of path scores, so adding nodes in order of decreasing path score maximises it.
#pragma once

#include <cstdint>
#include <vector>

namespace specdec {

struct TreeTemplate {
    std::vector<std::int32_t> parents;  // parents[0] = -1, parents[j] < j (breadth-first order)
    std::vector<std::int32_t> ranks;    // ranks[0] = -1; candidate rank within the parent's row
};

// Assumed probability that the rank-th candidate of a matrix row is the token the model
// picks. Rank 0..7: 0.5, 0.2, 0.1, 0.06, 0.04, 0.03, 0.02, 0.015; beyond that each
// rank is 0.75x the previous. Rough shape of the acceptance-by-rank curve reported for
// top-k drafts; only the ordering of path scores matters, not the absolute values.
double rank_acceptance_prior(int rank);

// n_nodes counts the root. Throws std::invalid_argument when k and max_depth allow
// fewer than n_nodes nodes. Deterministic.
TreeTemplate make_tree_template(int n_nodes, int k, int max_depth);

}  // namespace specdec
