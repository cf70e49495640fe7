#include "tree_layout.hpp"

#include <stdexcept>
#include <string>

#include "tree_topology.hpp"

namespace specdec {

namespace {

std::vector<std::int32_t> leaves_in_order(Span<std::int32_t> parents) {
    std::vector<bool> has_child(parents.size, false);
    for (std::size_t j = 1; j < parents.size; ++j) has_child[parents[j]] = true;
    std::vector<std::int32_t> leaves;
    for (std::size_t j = 0; j < parents.size; ++j) {
        if (!has_child[j]) leaves.push_back(static_cast<std::int32_t>(j));
    }
    return leaves;
}

}  // namespace

TreeBatchLayout layout_tree(Span<std::int32_t> parents, std::int32_t n_past, std::int32_t n_seq_max) {
    if (n_seq_max <= 0) throw std::invalid_argument("layout_tree: n_seq_max must be positive");
    if (n_past < 0) throw std::invalid_argument("layout_tree: n_past must be >= 0");
    check_topological(parents);
    const std::vector<std::int32_t> leaves = leaves_in_order(parents);
    if (leaves.size() > static_cast<std::size_t>(n_seq_max)) {
        throw std::invalid_argument("layout_tree: the tree has " + std::to_string(leaves.size()) +
                                    " branches but the context allows n_seq_max=" + std::to_string(n_seq_max));
    }

    const std::size_t n = parents.size;
    TreeBatchLayout layout;
    layout.n_branches = static_cast<std::int32_t>(leaves.size());
    layout.pos = tree_depths(parents);
    for (std::int32_t& p : layout.pos) p += n_past;
    layout.seq_ids.assign(n * n_seq_max, -1);
    layout.n_seq_id.assign(n, 0);

    // Walking up from each leaf in branch order appends ids in ascending order, so every
    // row ends up sorted and its first id is its leftmost leaf's.
    for (std::int32_t branch = 0; branch < layout.n_branches; ++branch) {
        for (std::int32_t node = leaves[branch]; node != -1; node = parents[node]) {
            layout.seq_ids[static_cast<std::size_t>(node) * n_seq_max + layout.n_seq_id[node]++] = branch;
        }
    }
    layout.leaf_seq.resize(n);
    for (std::size_t j = 0; j < n; ++j) layout.leaf_seq[j] = layout.seq_ids[j * n_seq_max];
    return layout;
}

}  // namespace specdec
