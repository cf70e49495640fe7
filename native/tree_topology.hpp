// A draft tree is stored as a parent array in topological order: node 0 is the root
// (parent -1) and every other node comes after its parent (parents[j] < j). These
// helpers check that shape and derive what the verifier and the batch layout need.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "span.hpp"

namespace specdec {

// Throws std::invalid_argument unless parents is a non-empty topological parent array.
void check_topological(Span<std::int32_t> parents);

// depth[0] = 0, depth[j] = depth[parents[j]] + 1.
std::vector<std::int32_t> tree_depths(Span<std::int32_t> parents);

// Children of every node in index order, stored compactly (CSR): the children of u are
// child[begin[u], begin[u + 1]).
struct ChildLists {
    std::vector<std::int32_t> begin;
    std::vector<std::int32_t> child;

    Span<std::int32_t> of(std::int32_t node) const {
        return Span<std::int32_t>{child.data() + begin[node], static_cast<std::size_t>(begin[node + 1] - begin[node])};
    }
};

ChildLists child_lists(Span<std::int32_t> parents);

}  // namespace specdec
