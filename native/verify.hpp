// Lossless verification of a draft tree against the target model's outputs at every
// node (docs/DESIGN.md, Sampling). Both walks start at the root and descend while a child is
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

// Speculative sampling for point-mass (model-free) drafts over a tree, by sample and
// match: at the last accepted node u, at output position t = first_position + depth(u),
// draw the target's token x from p_u with the uniform of (seed, t) (Sampler::sample);
// descend to the child whose token is x, or stop and emit x as the bonus token when no
// child holds it.
//
// Why this is speculative sampling: every node proposes one token with probability 1, so
// SpecInfer's recursive rejection over siblings (Miao et al. 2023; the multi-candidate
// form of Leviathan et al. 2023 and Chen et al. 2023) accepts child x_1 with probability
// p(x_1), and, after rejecting x_1..x_{i-1}, tries x_i against the residual p without
// them, renormalised: x_i is accepted with probability
// (1 - sum_{j<i} p(x_j)) * p(x_i) / (1 - sum_{j<i} p(x_j)) = p(x_i), and the bonus is
// drawn from p restricted to the other tokens. Sample and match accepts x_i exactly when
// the draw equals x_i, with probability p(x_i), and the bonus it emits is that draw:
// the same distribution and the same acceptance rate as recursive rejection. Unlike it,
// the walk consumes one uniform per output position, indexed by the position, and
// draws every emitted token exactly as plain sampling does: given the same logits (the
// exact engine mode) the emitted text is plain sampling's text with the same seed,
// whatever the draft tree looked like.
VerifyResult verify_sample(Span<std::int32_t> tokens, Span<std::int32_t> parents, MatrixView<float> logits,
                           const SamplingParams& params, Sampler& sampler, std::uint64_t first_position);

}  // namespace specdec
