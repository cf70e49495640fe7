// Lossless verification of a draft tree against the target model's outputs at every
// node (DESIGN.md section 5). Both walks start at the root and descend while a child is
// accepted; the token emitted after the last accepted node is the bonus token.
#pragma once

#include <cstdint>
#include <vector>

#include "sampling.hpp"
#include "span.hpp"

namespace specdec {

struct VerifyResult {
    std::vector<std::int32_t> path;  // accepted node indices, starting with the root (0)
    std::int32_t bonus = -1;         // token the target model emits after the path
};

// Greedy: child c of the last accepted node u is accepted when tokens[c] == argmax[u].
// Siblings hold distinct tokens, so at most one child can match.
VerifyResult verify_greedy(Span<std::int32_t> tokens, Span<std::int32_t> parents, Span<std::int32_t> argmax);

// Speculative sampling with point-mass (model-free) drafts over a tree: recursive
// rejection over siblings as in SpecInfer (Miao et al. 2023), the multi-candidate form
// of speculative sampling (Leviathan et al. 2023; Chen et al. 2023). At node u, with r
// the target distribution p_u: each child x in order is accepted with probability
// r(x) / sum(r); a rejected x gets r(x) = 0. If every child is rejected the bonus is
// drawn from what is left of r. Child i is thus emitted with probability p(x_i) and any
// other token y with (1 - sum p(x)) * p(y) / (1 - sum p(x)) = p(y): exactly the target.
VerifyResult verify_sample(Span<std::int32_t> tokens, Span<std::int32_t> parents, MatrixView<float> logits,
                           const SamplingParams& params, Sampler& sampler);

}  // namespace specdec
