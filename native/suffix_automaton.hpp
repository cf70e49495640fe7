// Online suffix automaton over token sequences, for drafting by longest match.
//
// The automaton is the smallest DFA accepting every substring of a text (Blumer et al.
// 1985, "The smallest automaton recognizing the subwords of a text"), built online in
// amortised O(1) per appended token. SAM-Decoding (Hu et al. 2024) drafts from it: the
// state of the longest suffix of the current text that occurred before names every
// earlier occurrence at once, and its transitions are the tokens that followed them.
// Following SuffixDecoding (Oliaro et al. 2024) we keep how often each continuation
// occurred, so a draft follows the most frequent one and knows how unanimous it was.
//
// One automaton serves two roles:
// - the context (prompt + output so far): `extend` appends what was accepted, and
//   `lookup` drafts from the longest suffix of that text that occurred earlier in it;
// - a history of earlier documents: `extend` + `end_document` per document (a unique
//   sentinel keeps matches inside one document), then `follow` walks the *current*
//   context through it and `lookup_followed` drafts from the longest context suffix
//   found in the history.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "span.hpp"

namespace specdec {

struct SuffixDraft {
    std::vector<std::int32_t> tokens;  // the chain: at each step the most frequent continuation
    std::vector<float> shares;         // per token: its occurrences over all continuations there
    std::int64_t match_length = 0;     // tokens of the context suffix that matched (0: none)
    std::int64_t occurrences = 0;      // earlier occurrences of that suffix that have a continuation
};

// The continuations of the matched suffix: distinct next tokens and how often each followed.
struct Continuations {
    std::vector<std::int32_t> tokens;
    std::vector<std::int64_t> counts;
};

class SuffixAutomaton {
public:
    SuffixAutomaton();

    // Appends tokens to the indexed text. Amortised O(1) per token, plus one step per
    // state on the new suffix-link path for the occurrence counts.
    void extend(Span<std::int32_t> tokens);
    // Closes a document: a sentinel no other position shares, so no match crosses it.
    void end_document();
    void reset();

    // Drafts from the longest suffix of the indexed text that also ends earlier in it.
    SuffixDraft lookup(std::size_t max_len) const;
    Continuations continuations() const;

    // Walks `tokens` (the current context) through the automaton, keeping the longest
    // suffix of what was followed that occurs in the indexed text.
    void follow(Span<std::int32_t> tokens);
    void follow_reset();
    SuffixDraft lookup_followed(std::size_t max_len) const;

    std::size_t size() const { return n_tokens_; }
    std::size_t n_states() const { return len_.size(); }
    std::size_t n_documents() const { return static_cast<std::size_t>(-next_sentinel_) - 1; }

private:
    static constexpr std::int32_t kNone = -1;

    std::int32_t transition(std::int32_t state, std::int32_t token) const;
    void set_transition(std::int32_t state, std::int32_t token, std::int32_t target);
    void copy_transitions(std::int32_t from, std::int32_t to);
    std::int32_t new_state(std::int32_t length, std::int32_t first_end);
    void append(std::int32_t token);
    SuffixDraft draft_from(std::int32_t state, std::int64_t match_length, std::size_t max_len) const;

    // Per state: longest string length, suffix link, end of its first occurrence,
    // occurrences (|endpos|), first edge in the edge pool.
    std::vector<std::int32_t> len_;
    std::vector<std::int32_t> link_;
    std::vector<std::int32_t> first_end_;
    std::vector<std::int64_t> count_;
    std::vector<std::int32_t> first_edge_;
    // Edges of every state but the root, as singly linked lists: most states have one or
    // two. The root has one per distinct token and gets a hash map.
    struct Edge {
        std::int32_t token;
        std::int32_t target;
        std::int32_t next;
    };
    std::vector<Edge> edges_;
    std::unordered_map<std::int32_t, std::int32_t> root_edges_;

    std::int32_t last_ = 0;  // state of the whole text
    std::size_t n_tokens_ = 0;
    std::int32_t next_sentinel_ = -1;
    std::int32_t follow_state_ = 0;
    std::int64_t follow_length_ = 0;
};

}  // namespace specdec
