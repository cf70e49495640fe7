#include "tree_template.hpp"

#include <cmath>
#include <queue>
#include <stdexcept>
#include <string>

namespace specdec {

namespace {

struct Candidate {
    double score;  // product of the rank priors along the path from the root
    std::int32_t parent;
    std::int32_t rank;
    std::int32_t depth;
};

// Highest score first; exact ties go to the shallower node, then the earlier parent,
// then the lower rank, so the template never depends on heap internals.
struct WorseCandidate {
    bool operator()(const Candidate& a, const Candidate& b) const {
        if (a.score != b.score) return a.score < b.score;
        if (a.depth != b.depth) return a.depth > b.depth;
        if (a.parent != b.parent) return a.parent > b.parent;
        return a.rank > b.rank;
    }
};

struct GrownNode {
    std::int32_t parent;
    std::int32_t rank;
    double score;
};

// Greedy growth. A child's score never exceeds its parent's and rank r + 1 never beats
// rank r, so only a node's first child and next sibling can become the best candidate
// once the node is in: the frontier stays small and the greedy choice stays exact.
std::vector<GrownNode> grow_by_path_score(int n_nodes, int k, int max_depth) {
    std::vector<GrownNode> nodes{{-1, -1, 1.0}};
    std::priority_queue<Candidate, std::vector<Candidate>, WorseCandidate> frontier;
    if (max_depth >= 1) frontier.push({rank_acceptance_prior(0), 0, 0, 1});

    while (static_cast<int>(nodes.size()) < n_nodes) {
        if (frontier.empty()) {
            throw std::invalid_argument("tree_template: k=" + std::to_string(k) + " and max_depth=" +
                                        std::to_string(max_depth) + " allow fewer than " +
                                        std::to_string(n_nodes) + " nodes");
        }
        const Candidate best = frontier.top();
        frontier.pop();
        const auto index = static_cast<std::int32_t>(nodes.size());
        nodes.push_back({best.parent, best.rank, best.score});

        if (best.rank + 1 < k) {
            const double parent_score = nodes[best.parent].score;
            frontier.push({parent_score * rank_acceptance_prior(best.rank + 1), best.parent, best.rank + 1, best.depth});
        }
        if (best.depth < max_depth) {
            frontier.push({best.score * rank_acceptance_prior(0), index, 0, best.depth + 1});
        }
    }
    return nodes;
}

// Renumbers the grown nodes breadth-first (children by rank), the order llama.cpp's
// batch and the verifier expect to be cheap to walk.
TreeTemplate breadth_first(const std::vector<GrownNode>& nodes) {
    std::vector<std::vector<std::int32_t>> children(nodes.size());
    for (std::size_t j = 1; j < nodes.size(); ++j) children[nodes[j].parent].push_back(static_cast<std::int32_t>(j));

    TreeTemplate tmpl;
    std::vector<std::int32_t> new_index(nodes.size(), -1);
    std::vector<std::int32_t> order{0};
    new_index[0] = 0;
    tmpl.parents.push_back(-1);
    tmpl.ranks.push_back(-1);
    for (std::size_t head = 0; head < order.size(); ++head) {
        for (std::int32_t child : children[order[head]]) {  // already in rank order
            new_index[child] = static_cast<std::int32_t>(order.size());
            order.push_back(child);
            tmpl.parents.push_back(new_index[nodes[child].parent]);
            tmpl.ranks.push_back(nodes[child].rank);
        }
    }
    return tmpl;
}

}  // namespace

double rank_acceptance_prior(int rank) {
    static constexpr double kPriors[] = {0.5, 0.2, 0.1, 0.06, 0.04, 0.03, 0.02, 0.015};
    constexpr int kListed = sizeof kPriors / sizeof kPriors[0];
    if (rank < kListed) return kPriors[rank];
    return kPriors[kListed - 1] * std::pow(0.75, rank - kListed + 1);
}

TreeTemplate make_tree_template(int n_nodes, int k, int max_depth) {
    if (n_nodes < 1 || k < 1 || max_depth < 0) {
        throw std::invalid_argument("tree_template needs n_nodes >= 1, k >= 1, max_depth >= 0");
    }
    return breadth_first(grow_by_path_score(n_nodes, k, max_depth));
}

}  // namespace specdec
