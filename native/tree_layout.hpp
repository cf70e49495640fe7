// Batch layout for verifying a whole draft tree in one llama_decode (docs/DESIGN.md, Verifying a tree in llama.cpp).
// Every root-to-leaf branch gets its own sequence id and every node carries the ids of
// all branches through it, so a node attends to exactly its ancestors: the cells it can
// see in a unified KV cache are those sharing a sequence id with it at lower positions.
#pragma once

#include <cstdint>
#include <vector>

#include "span.hpp"

namespace specdec {

struct TreeBatchLayout {
    std::vector<std::int32_t> pos;        // n_past + depth
    std::vector<std::int32_t> seq_ids;    // [n, n_seq_max], ascending, padded with -1
    std::vector<std::int32_t> n_seq_id;   // ids used in each row
    std::vector<std::int32_t> leaf_seq;   // first id of each row: the node's leftmost leaf's branch
    std::int32_t n_branches = 0;
};

// Branch ids follow the leaves in index order. llama.cpp builds a query token's mask from
// its first sequence id only, so that id must belong to a leaf below the node (its
// ancestors carry it, its siblings' subtrees don't); ascending order puts the leftmost
// leaf's id first. Throws std::invalid_argument when the tree has more than n_seq_max leaves.
TreeBatchLayout layout_tree(Span<std::int32_t> parents, std::int32_t n_past, std::int32_t n_seq_max);

}  // namespace specdec
