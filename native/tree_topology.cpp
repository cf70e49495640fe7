#include "tree_topology.hpp"

#include <stdexcept>
#include <string>

namespace specdec {

void check_topological(Span<std::int32_t> parents) {
    if (parents.empty() || parents[0] != -1) {
        throw std::invalid_argument("a tree needs node 0 as its root (parents[0] == -1)");
    }
    for (std::size_t j = 1; j < parents.size; ++j) {
        if (parents[j] < 0 || static_cast<std::size_t>(parents[j]) >= j) {
            throw std::invalid_argument("tree is not in topological order: parents[" + std::to_string(j) +
                                        "] = " + std::to_string(parents[j]) + " (needs 0 <= parent < index)");
        }
    }
}

std::vector<std::int32_t> tree_depths(Span<std::int32_t> parents) {
    std::vector<std::int32_t> depth(parents.size, 0);
    for (std::size_t j = 1; j < parents.size; ++j) depth[j] = depth[parents[j]] + 1;
    return depth;
}

ChildLists child_lists(Span<std::int32_t> parents) {
    const std::size_t n = parents.size;
    ChildLists lists;
    lists.begin.assign(n + 1, 0);
    for (std::size_t j = 1; j < n; ++j) ++lists.begin[parents[j] + 1];
    for (std::size_t u = 0; u < n; ++u) lists.begin[u + 1] += lists.begin[u];

    lists.child.resize(n > 0 ? n - 1 : 0);
    std::vector<std::int32_t> next(lists.begin.begin(), lists.begin.end() - 1);
    for (std::size_t j = 1; j < n; ++j) lists.child[next[parents[j]]++] = static_cast<std::int32_t>(j);
    return lists;
}

}  // namespace specdec
