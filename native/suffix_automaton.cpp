#include "suffix_automaton.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace specdec {

SuffixAutomaton::SuffixAutomaton() { reset(); }

void SuffixAutomaton::reset() {
    len_.assign(1, 0);
    link_.assign(1, kNone);
    first_end_.assign(1, -1);
    count_.assign(1, 0);
    first_edge_.assign(1, kNone);
    edges_.clear();
    root_edges_.clear();
    last_ = 0;
    n_tokens_ = 0;
    next_sentinel_ = -1;
    follow_reset();
}

std::int32_t SuffixAutomaton::new_state(std::int32_t length, std::int32_t first_end) {
    len_.push_back(length);
    link_.push_back(kNone);
    first_end_.push_back(first_end);
    count_.push_back(0);
    first_edge_.push_back(kNone);
    return static_cast<std::int32_t>(len_.size() - 1);
}

std::int32_t SuffixAutomaton::transition(std::int32_t state, std::int32_t token) const {
    if (state == 0) {
        const auto found = root_edges_.find(token);
        return found == root_edges_.end() ? kNone : found->second;
    }
    for (std::int32_t e = first_edge_[state]; e != kNone; e = edges_[e].next) {
        if (edges_[e].token == token) return edges_[e].target;
    }
    return kNone;
}

void SuffixAutomaton::set_transition(std::int32_t state, std::int32_t token, std::int32_t target) {
    if (state == 0) {
        root_edges_[token] = target;
        return;
    }
    for (std::int32_t e = first_edge_[state]; e != kNone; e = edges_[e].next) {
        if (edges_[e].token == token) {
            edges_[e].target = target;
            return;
        }
    }
    edges_.push_back(Edge{token, target, first_edge_[state]});
    first_edge_[state] = static_cast<std::int32_t>(edges_.size() - 1);
}

void SuffixAutomaton::copy_transitions(std::int32_t from, std::int32_t to) {
    // `from` is never the root: the root is no transition's target, and only targets are cloned.
    for (std::int32_t e = first_edge_[from]; e != kNone; e = edges_[e].next) {
        edges_.push_back(Edge{edges_[e].token, edges_[e].target, first_edge_[to]});
        first_edge_[to] = static_cast<std::int32_t>(edges_.size() - 1);
    }
}

void SuffixAutomaton::append(std::int32_t token) {
    if (n_tokens_ >= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max() - 1)) {
        throw std::length_error("SuffixAutomaton: text longer than 2^31 tokens");
    }
    const auto position = static_cast<std::int32_t>(n_tokens_);
    const std::int32_t cur = new_state(len_[last_] + 1, position);
    std::int32_t p = last_;
    while (p != kNone && transition(p, token) == kNone) {
        set_transition(p, token, cur);
        p = link_[p];
    }
    if (p == kNone) {
        link_[cur] = 0;
    } else {
        const std::int32_t q = transition(p, token);
        if (len_[p] + 1 == len_[q]) {
            link_[cur] = q;
        } else {
            // q's class splits: the strings up to len(p) + 1 now also end here.
            const std::int32_t clone = new_state(len_[p] + 1, first_end_[q]);
            count_[clone] = count_[q];
            copy_transitions(q, clone);
            link_[clone] = link_[q];
            while (p != kNone && transition(p, token) == q) {
                set_transition(p, token, clone);
                p = link_[p];
            }
            link_[q] = clone;
            link_[cur] = clone;
        }
    }
    last_ = cur;
    // Every state on the new suffix-link path now also ends at `position`.
    for (std::int32_t s = cur; s > 0; s = link_[s]) ++count_[s];
    ++n_tokens_;
}

void SuffixAutomaton::extend(Span<std::int32_t> tokens) {
    for (std::int32_t token : tokens) {
        if (token < 0) throw std::invalid_argument("SuffixAutomaton: token ids must be >= 0");
        append(token);
    }
}

void SuffixAutomaton::end_document() {
    if (next_sentinel_ == std::numeric_limits<std::int32_t>::min()) {
        throw std::length_error("SuffixAutomaton: too many documents");
    }
    append(next_sentinel_--);
}

SuffixDraft SuffixAutomaton::draft_from(std::int32_t state, std::int64_t match_length, std::size_t max_len) const {
    SuffixDraft draft;
    if (state <= 0 || match_length <= 0) return draft;
    draft.match_length = match_length;
    std::int32_t u = state;
    bool first = true;
    while (draft.tokens.size() < max_len) {
        // The most frequent continuation; among equals the one whose first occurrence is
        // the most recent. Sentinels (a document ended here) are never drafted.
        std::int64_t total = 0;
        std::int32_t best_token = kNone;
        std::int32_t best_target = kNone;
        for (std::int32_t e = first_edge_[u]; e != kNone; e = edges_[e].next) {
            const Edge& edge = edges_[e];
            if (edge.token < 0) continue;
            total += count_[edge.target];
            if (best_target == kNone || count_[edge.target] > count_[best_target] ||
                (count_[edge.target] == count_[best_target] && first_end_[edge.target] > first_end_[best_target])) {
                best_token = edge.token;
                best_target = edge.target;
            }
        }
        if (first) draft.occurrences = total;
        first = false;
        if (best_target == kNone) break;
        draft.tokens.push_back(best_token);
        draft.shares.push_back(static_cast<float>(static_cast<double>(count_[best_target]) / total));
        u = best_target;
    }
    return draft;
}

SuffixDraft SuffixAutomaton::lookup(std::size_t max_len) const {
    const std::int32_t state = link_[last_];
    if (state == kNone) return SuffixDraft{};
    return draft_from(state, len_[state], max_len);
}

Continuations SuffixAutomaton::continuations() const {
    Continuations out;
    const std::int32_t state = link_[last_];
    if (state == kNone || state == 0) return out;
    std::vector<std::pair<std::int64_t, std::int32_t>> found;
    for (std::int32_t e = first_edge_[state]; e != kNone; e = edges_[e].next) {
        if (edges_[e].token >= 0) found.emplace_back(count_[edges_[e].target], edges_[e].token);
    }
    std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    for (const auto& [count, token] : found) {
        out.tokens.push_back(token);
        out.counts.push_back(count);
    }
    return out;
}

void SuffixAutomaton::follow(Span<std::int32_t> tokens) {
    for (std::int32_t token : tokens) {
        while (follow_state_ != 0 && transition(follow_state_, token) == kNone) {
            follow_state_ = link_[follow_state_];
            follow_length_ = len_[follow_state_];
        }
        const std::int32_t next = transition(follow_state_, token);
        if (next != kNone) {
            follow_state_ = next;
            ++follow_length_;
        } else {
            follow_state_ = 0;
            follow_length_ = 0;
        }
    }
}

void SuffixAutomaton::follow_reset() {
    follow_state_ = 0;
    follow_length_ = 0;
}

SuffixDraft SuffixAutomaton::lookup_followed(std::size_t max_len) const {
    return draft_from(follow_state_, follow_length_, max_len);
}

}  // namespace specdec
