#include "verify.hpp"

#include <stdexcept>
#include <string>

#include "tree_topology.hpp"

namespace specdec {

namespace {

void check_node_count(std::size_t expected, std::size_t got, const char* what) {
    if (expected != got) {
        throw std::invalid_argument(std::string("verify: ") + what + " has " + std::to_string(got) +
                                    " entries for a tree of " + std::to_string(expected) + " nodes");
    }
}

// Index of the child of `node` whose token is `token`, or -1.
std::int32_t child_with_token(const ChildLists& children, Span<std::int32_t> tokens, std::int32_t node,
                              std::int32_t token) {
    for (std::int32_t child : children.of(node)) {
        if (tokens[child] == token) return child;
    }
    return -1;
}

}  // namespace

VerifyResult verify_greedy(Span<std::int32_t> tokens, Span<std::int32_t> parents, Span<std::int32_t> argmax) {
    check_topological(parents);
    check_node_count(parents.size, tokens.size, "tokens");
    check_node_count(parents.size, argmax.size, "argmax");
    const ChildLists children = child_lists(parents);

    VerifyResult result;
    std::int32_t node = 0;
    result.path.push_back(node);
    while (true) {
        const std::int32_t next = child_with_token(children, tokens, node, argmax[node]);
        if (next == -1) break;
        node = next;
        result.path.push_back(node);
    }
    result.bonus = argmax[node];
    return result;
}

VerifyResult verify_sample(Span<std::int32_t> tokens, Span<std::int32_t> parents, MatrixView<float> logits,
                           const SamplingParams& params, Sampler& sampler, std::uint64_t first_position) {
    check_topological(parents);
    check_node_count(parents.size, tokens.size, "tokens");
    check_node_count(parents.size, logits.rows, "logits");
    const ChildLists children = child_lists(parents);

    VerifyResult result;
    std::int32_t node = 0;
    result.path.push_back(node);
    for (std::uint64_t position = first_position;; ++position) {
        const std::int32_t token = sampler.sample(logits.row(node), logits.cols, params, position);
        const std::int32_t next = child_with_token(children, tokens, node, token);
        if (next == -1) {
            result.bonus = token;
            return result;
        }
        node = next;
        result.path.push_back(node);
    }
}

}  // namespace specdec
