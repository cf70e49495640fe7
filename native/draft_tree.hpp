// Builds the draft tree for one verification step: the Token Recycling tree read out of
// the adjacency matrix along a static template (Luo et al. 2024), plus, optionally, a
// prompt-lookup continuation (Saxena 2023) grafted on as one more branch from the root.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "recycling_matrix.hpp"
#include "span.hpp"

namespace specdec {

// Depth-first preorder (so also topological: parents[0] = -1, parents[j] < j), children
// in the order they were added: template rank order, then the grafted chain.
struct DraftTree {
    std::vector<std::int32_t> tokens;
    std::vector<std::int32_t> parents;
    std::vector<std::int32_t> depth;
};

// root_token is the last accepted token, not yet in the KV cache. matrix may be null
// (no recycling part). A template node whose candidate is missing is dropped with its
// subtree, and so is one that would repeat a sibling's token: a duplicate would be
// verified twice, and its subtree reads the same matrix row as the sibling's.
DraftTree build_draft_tree(std::int32_t root_token, const RecyclingMatrix* matrix,
                           Span<std::int32_t> template_parents, Span<std::int32_t> template_ranks,
                           Span<std::int32_t> chain);

// How many leading tokens of `chain` come before the first one listed in `stops` (all of
// them when none is): a drafted chain ends just before a stop token. `stops` is a handful
// of tokens (a model's code-fence tokens), so a scan beats a set. Runs at every step: as
// three numpy calls after a decode had flushed the caches it cost 25-30 us on SmolLM2,
// 0.3% of the step.
std::size_t chain_before_stop(Span<std::int32_t> chain, Span<std::int32_t> stops);

}  // namespace specdec
