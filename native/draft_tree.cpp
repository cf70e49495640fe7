#include "draft_tree.hpp"

#include <stdexcept>
#include <string>
#include <utility>

#include "tree_topology.hpp"

namespace specdec {

namespace {

constexpr std::int32_t kNone = -1;

// DraftTree plus sibling links, so "does u already have a child with token t" costs
// O(children of u) instead of a scan over the tree.
class TreeBuilder {
public:
    explicit TreeBuilder(std::int32_t root_token) {
        tree_.tokens.push_back(root_token);
        tree_.parents.push_back(kNone);
        tree_.depth.push_back(0);
        first_child_.push_back(kNone);
        next_sibling_.push_back(kNone);
        last_child_.push_back(kNone);
    }

    std::int32_t token(std::int32_t node) const { return tree_.tokens[node]; }

    std::int32_t find_child(std::int32_t parent, std::int32_t token) const {
        for (std::int32_t c = first_child_[parent]; c != kNone; c = next_sibling_[c]) {
            if (tree_.tokens[c] == token) return c;
        }
        return kNone;
    }

    std::int32_t add_child(std::int32_t parent, std::int32_t token) {
        const auto node = static_cast<std::int32_t>(tree_.tokens.size());
        tree_.tokens.push_back(token);
        tree_.parents.push_back(parent);
        tree_.depth.push_back(tree_.depth[parent] + 1);
        first_child_.push_back(kNone);
        next_sibling_.push_back(kNone);
        last_child_.push_back(kNone);
        if (last_child_[parent] == kNone) {
            first_child_[parent] = node;
        } else {
            next_sibling_[last_child_[parent]] = node;
        }
        last_child_[parent] = node;
        return node;
    }

    // Depth-first preorder, first child first: the rank-0 path (the likeliest one) takes
    // the first batch rows, so when it is accepted its KV cells sit in position order
    // right after the cache's accepted prefix (see Verifier._commit).
    DraftTree finish() const {
        const std::size_t n = tree_.tokens.size();
        std::vector<std::int32_t> order;
        order.reserve(n);
        std::vector<std::int32_t> stack{0};
        std::vector<std::int32_t> children;
        while (!stack.empty()) {
            const std::int32_t u = stack.back();
            stack.pop_back();
            order.push_back(u);
            children.clear();
            for (std::int32_t c = first_child_[u]; c != kNone; c = next_sibling_[c]) children.push_back(c);
            stack.insert(stack.end(), children.rbegin(), children.rend());
        }
        std::vector<std::int32_t> new_index(n);
        for (std::size_t i = 0; i < n; ++i) new_index[order[i]] = static_cast<std::int32_t>(i);
        DraftTree out;
        out.tokens.reserve(n);
        out.parents.reserve(n);
        out.depth.reserve(n);
        for (std::int32_t old : order) {
            out.tokens.push_back(tree_.tokens[old]);
            out.parents.push_back(old == 0 ? kNone : new_index[tree_.parents[old]]);
            out.depth.push_back(tree_.depth[old]);
        }
        return out;
    }

private:
    DraftTree tree_;
    std::vector<std::int32_t> first_child_;
    std::vector<std::int32_t> next_sibling_;
    std::vector<std::int32_t> last_child_;
};

void add_template_nodes(TreeBuilder& builder, const RecyclingMatrix& matrix, Span<std::int32_t> parents,
                        Span<std::int32_t> ranks) {
    // built[j]: the tree node standing for template node j, kNone when it was dropped.
    std::vector<std::int32_t> built(parents.size, kNone);
    built[0] = 0;
    for (std::size_t j = 1; j < parents.size; ++j) {
        const std::int32_t parent = built[parents[j]];
        if (parent == kNone) continue;  // the subtree of a dropped node goes with it
        const std::int32_t token = matrix.candidate(builder.token(parent), ranks[j]);
        if (token == RecyclingMatrix::kEmpty || builder.find_child(parent, token) != kNone) continue;
        built[j] = builder.add_child(parent, token);
    }
}

// Shares the prefix the chain has in common with the tree, then hangs the rest below it.
void graft_chain(TreeBuilder& builder, Span<std::int32_t> chain) {
    std::int32_t node = 0;
    std::size_t i = 0;
    for (; i < chain.size; ++i) {
        const std::int32_t child = builder.find_child(node, chain[i]);
        if (child == kNone) break;
        node = child;
    }
    for (; i < chain.size; ++i) node = builder.add_child(node, chain[i]);
}

void check_template(Span<std::int32_t> parents, Span<std::int32_t> ranks) {
    if (parents.size != ranks.size) throw std::invalid_argument("build_tree: template parents and ranks differ in length");
    check_topological(parents);
}

void check_tokens(Span<std::int32_t> tokens, const RecyclingMatrix* matrix, const char* what) {
    for (std::int32_t token : tokens) {
        if (token < 0 || (matrix != nullptr && token >= matrix->n_vocab())) {
            throw std::invalid_argument(std::string("build_tree: ") + what + " holds an invalid token id " +
                                        std::to_string(token));
        }
    }
}

}  // namespace

DraftTree build_draft_tree(std::int32_t root_token, const RecyclingMatrix* matrix,
                           Span<std::int32_t> template_parents, Span<std::int32_t> template_ranks,
                           Span<std::int32_t> chain) {
    check_tokens(Span<std::int32_t>{&root_token, 1}, matrix, "root_token");
    check_tokens(chain, matrix, "chain");
    TreeBuilder builder(root_token);
    if (matrix != nullptr) {
        check_template(template_parents, template_ranks);
        add_template_nodes(builder, *matrix, template_parents, template_ranks);
    }
    graft_chain(builder, chain);
    return builder.finish();
}

std::size_t chain_before_stop(Span<std::int32_t> chain, Span<std::int32_t> stops) {
    for (std::size_t i = 0; i < chain.size; ++i) {
        for (const std::int32_t stop : stops) {
            if (chain[i] == stop) return i;
        }
    }
    return chain.size;
}

}  // namespace specdec
