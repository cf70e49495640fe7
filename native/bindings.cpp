// Python bindings of the native core: numpy arrays in and out, the GIL released while
// the C++ code loops; calls of a few microseconds run every step (the stop-token cut, the
// policy) keep it. The classes are not synchronised: share one between Python threads
// only under a lock.
//
// Small token arrays are converted on the way in (an int64 array is fine). Logits are
// not: they must already be float32 and C-contiguous, so that a view of llama.cpp's
// buffer is read in place and a wrong dtype fails loudly instead of costing a hidden
// copy of tens of megabytes.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "draft_tree.hpp"
#include "errors.hpp"
#include "ngram_index.hpp"
#include "policy.hpp"
#include "recycling_matrix.hpp"
#include "sampling.hpp"
#include "suffix_automaton.hpp"
#include "topk.hpp"
#include "tree_layout.hpp"
#include "tree_template.hpp"
#include "verify.hpp"

namespace nb = nanobind;
using namespace nb::literals;
using namespace specdec;

namespace {

template <typename T>
using InVector = nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
template <typename T>
using InMatrix = nb::ndarray<const T, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
template <typename T>
using OutVector = nb::ndarray<nb::numpy, T, nb::ndim<1>>;
template <typename T>
using OutMatrix = nb::ndarray<nb::numpy, T, nb::ndim<2>>;

template <typename T>
Span<T> span_of(const InVector<T>& array) {
    return array.is_valid() ? Span<T>{array.data(), array.shape(0)} : Span<T>{};
}

template <typename T>
MatrixView<T> view_of(const InMatrix<T>& array) {
    return MatrixView<T>{array.data(), array.shape(0), array.shape(1)};
}

// Hands a vector's buffer to numpy without copying; the capsule frees it with the array.
template <typename T>
std::vector<T>* adopt(std::vector<T>&& values, nb::capsule& owner) {
    auto* owned = new std::vector<T>(std::move(values));
    owner = nb::capsule(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return owned;
}

template <typename T>
OutVector<T> to_numpy(std::vector<T>&& values) {
    nb::capsule owner;
    std::vector<T>* owned = adopt(std::move(values), owner);
    return OutVector<T>(owned->data(), {owned->size()}, owner);
}

template <typename T>
OutMatrix<T> to_numpy(std::vector<T>&& values, std::size_t rows, std::size_t cols) {
    nb::capsule owner;
    std::vector<T>* owned = adopt(std::move(values), owner);
    return OutMatrix<T>(owned->data(), {rows, cols}, owner);
}

SamplingParams sampling_params(float temp, int top_k, float top_p) { return SamplingParams{temp, top_k, top_p}; }

void bind_ngram_index(nb::module_& m) {
    nb::class_<NgramIndex>(m, "NgramIndex",
                           "Incremental n-gram index over the context for prompt lookup decoding (Saxena 2023).")
        .def(nb::init<int, int>(), "max_n"_a = 4, "min_n"_a = 1)
        .def(
            "extend",
            [](NgramIndex& self, InVector<std::int32_t> tokens) {
                nb::gil_scoped_release release;
                self.extend(span_of(tokens));
            },
            "tokens"_a, "Appends tokens to the context (amortised O(1) per token).")
        .def(
            "lookup",
            [](const NgramIndex& self, std::int64_t max_len) {
                if (max_len < 0) throw std::invalid_argument("lookup: max_len must be >= 0");
                std::vector<std::int32_t> continuation;
                NgramMatch match;
                {
                    nb::gil_scoped_release release;
                    match = self.lookup(static_cast<std::size_t>(max_len));
                    const auto first = self.tokens().begin() + static_cast<std::ptrdiff_t>(match.start);
                    continuation.assign(first, first + static_cast<std::ptrdiff_t>(match.length));
                }
                return std::make_pair(to_numpy(std::move(continuation)), match.n);
            },
            "max_len"_a,
            "(continuation, n): up to max_len tokens that followed the most recent earlier occurrence of the\n"
            "longest context suffix (orders max_n..min_n) that occurred before; (empty, 0) when none did.")
        .def("__len__", &NgramIndex::size)
        .def("reset", &NgramIndex::reset)
        .def("tokens", [](const NgramIndex& self) { return to_numpy(std::vector<std::int32_t>(self.tokens())); })
        .def_prop_ro("max_n", &NgramIndex::max_n)
        .def_prop_ro("min_n", &NgramIndex::min_n);
}

nb::tuple draft_to_python(SuffixDraft&& draft) {
    return nb::make_tuple(to_numpy(std::move(draft.tokens)), to_numpy(std::move(draft.shares)), draft.match_length,
                          draft.occurrences);
}

void bind_suffix_automaton(nb::module_& m) {
    nb::class_<SuffixAutomaton>(m, "SuffixAutomaton",
                                "Online suffix automaton over token sequences (Blumer et al. 1985), drafting from\n"
                                "the longest earlier match with occurrence counts (SAM-Decoding, SuffixDecoding).")
        .def(nb::init<>())
        .def(
            "extend",
            [](SuffixAutomaton& self, InVector<std::int32_t> tokens) {
                nb::gil_scoped_release release;
                self.extend(span_of(tokens));
            },
            "tokens"_a, "Appends tokens (ids >= 0) to the indexed text.")
        .def("end_document", &SuffixAutomaton::end_document,
             "Closes a document: no match crosses the boundary.")
        .def("reset", &SuffixAutomaton::reset)
        .def(
            "lookup",
            [](const SuffixAutomaton& self, std::int64_t max_len) {
                if (max_len < 0) throw std::invalid_argument("lookup: max_len must be >= 0");
                SuffixDraft draft;
                {
                    nb::gil_scoped_release release;
                    draft = self.lookup(static_cast<std::size_t>(max_len));
                }
                return draft_to_python(std::move(draft));
            },
            "max_len"_a,
            "(tokens, shares, match_length, occurrences): from the longest suffix of the indexed text that\n"
            "also ends earlier in it, up to max_len tokens, each the most frequent continuation there\n"
            "(shares: its count over all continuations); match_length 0 when no suffix repeats.")
        .def(
            "continuations",
            [](const SuffixAutomaton& self) {
                Continuations found = self.continuations();
                return std::make_pair(to_numpy(std::move(found.tokens)), to_numpy(std::move(found.counts)));
            },
            "(tokens, counts) that followed the earlier occurrences of the longest repeated suffix,\n"
            "most frequent first.")
        .def(
            "follow",
            [](SuffixAutomaton& self, InVector<std::int32_t> tokens) {
                nb::gil_scoped_release release;
                self.follow(span_of(tokens));
            },
            "tokens"_a, "Walks context tokens through the automaton (the longest suffix found is kept).")
        .def("follow_reset", &SuffixAutomaton::follow_reset)
        .def(
            "lookup_followed",
            [](const SuffixAutomaton& self, std::int64_t max_len) {
                if (max_len < 0) throw std::invalid_argument("lookup_followed: max_len must be >= 0");
                SuffixDraft draft;
                {
                    nb::gil_scoped_release release;
                    draft = self.lookup_followed(static_cast<std::size_t>(max_len));
                }
                return draft_to_python(std::move(draft));
            },
            "max_len"_a, "Like lookup, from the longest suffix of the followed tokens found in the indexed text.")
        .def("__len__", &SuffixAutomaton::size)
        .def_prop_ro("n_states", &SuffixAutomaton::n_states)
        .def_prop_ro("n_documents", &SuffixAutomaton::n_documents);
}

void bind_recycling_matrix(nb::module_& m) {
    nb::class_<RecyclingMatrix>(m, "RecyclingMatrix",
                                "Token Recycling adjacency matrix (Luo et al. 2024): top-k successors per token id.")
        .def(nb::init<std::int32_t, std::int32_t>(), "n_vocab"_a, "k"_a = 8)
        .def(
            "update",
            [](RecyclingMatrix& self, InVector<std::int32_t> tokens, InMatrix<std::int32_t> topk_ids) {
                nb::gil_scoped_release release;
                self.update(span_of(tokens), view_of(topk_ids));
            },
            "tokens"_a, "topk_ids"_a, "Row tokens[i] := topk_ids[i, :k].")
        .def(
            "row",
            [](const RecyclingMatrix& self, std::int32_t token) {
                const Span<std::int32_t> row = self.row(token);
                return to_numpy(std::vector<std::int32_t>(row.begin(), row.end()));
            },
            "token"_a, "Copy of the row; -1 marks an unknown candidate.")
        .def_prop_ro("n_vocab", &RecyclingMatrix::n_vocab)
        .def_prop_ro("k", &RecyclingMatrix::k)
        .def("filled_rows", &RecyclingMatrix::filled_rows)
        .def(
            "save",
            [](const RecyclingMatrix& self, const std::filesystem::path& path) {
                nb::gil_scoped_release release;
                self.save(path.string());
            },
            "path"_a, "Writes the matrix atomically (temporary file + rename).")
        .def_static(
            "load",
            [](const std::filesystem::path& path, std::int32_t n_vocab, std::int32_t k) {
                nb::gil_scoped_release release;
                return RecyclingMatrix::load(path.string(), n_vocab, k);
            },
            "path"_a, "n_vocab"_a, "k"_a,
            "Reads a saved matrix. ValueError when the file is corrupt or for another n_vocab/k; OSError when\n"
            "it cannot be read.");
}

void bind_topk(nb::module_& m) {
    m.def(
        "topk_rows",
        [](InMatrix<float> logits, std::int64_t k, int n_threads) {
            const std::size_t rows = logits.shape(0);
            const std::size_t cols = logits.shape(1);
            if (k < 1 || static_cast<std::size_t>(k) > cols) {
                throw std::invalid_argument("topk_rows needs 1 <= k <= n_vocab, got k=" + std::to_string(k));
            }
            std::vector<std::int32_t> ids(rows * k);
            std::vector<float> values(rows * k);
            {
                nb::gil_scoped_release release;
                topk_rows(view_of(logits), static_cast<std::size_t>(k), ids.data(), values.data(), n_threads);
            }
            return std::make_pair(to_numpy(std::move(ids), rows, k), to_numpy(std::move(values), rows, k));
        },
        "logits"_a.noconvert(), "k"_a, "n_threads"_a = 0,
        "(ids, values), each [n, k]: every row's k largest logits, descending, ties to the lower token id.\n"
        "n_threads <= 0 picks a thread count from the input size and the number of cores.");
}

void bind_trees(nb::module_& m) {
    m.def(
        "tree_template",
        [](int n_nodes, int k, int max_depth) {
            TreeTemplate tmpl = make_tree_template(n_nodes, k, max_depth);
            return std::make_pair(to_numpy(std::move(tmpl.parents)), to_numpy(std::move(tmpl.ranks)));
        },
        "n_nodes"_a, "k"_a = 8, "max_depth"_a = 8,
        "(parents, ranks) of the static draft-tree template with n_nodes nodes (root included), grown by\n"
        "path score under the rank priors 0.5, 0.2, 0.1, 0.06, 0.04, 0.03, 0.02, 0.015 (then x0.75 per rank).");

    m.def(
        "build_tree",
        [](std::int32_t root_token, const RecyclingMatrix* matrix, InVector<std::int32_t> template_parents,
           InVector<std::int32_t> template_ranks, InVector<std::int32_t> chain) {
            DraftTree tree;
            {
                nb::gil_scoped_release release;
                tree = build_draft_tree(root_token, matrix, span_of(template_parents), span_of(template_ranks),
                                        span_of(chain));
            }
            return std::make_tuple(to_numpy(std::move(tree.tokens)), to_numpy(std::move(tree.parents)),
                                   to_numpy(std::move(tree.depth)));
        },
        "root_token"_a, "matrix"_a.none(), "parents_tmpl"_a.none(), "ranks_tmpl"_a.none(),
        "chain"_a.none() = nb::none(),
        "(tokens, parents, depth) of the draft tree: the matrix read along the template (missing or\n"
        "repeated candidates dropped with their subtrees) plus `chain` grafted as a branch from the root.");

    m.def(
        "chain_before_stop",
        [](InVector<std::int32_t> chain, InVector<std::int32_t> stops) {
            return chain_before_stop(span_of(chain), span_of(stops));
        },
        "chain"_a, "stops"_a,
        "How many leading tokens of `chain` come before the first one in `stops` (len(chain) when none is).");

    m.def(
        "layout_tree",
        [](InVector<std::int32_t> parents, std::int32_t n_past, std::int32_t n_seq_max) {
            TreeBatchLayout layout;
            {
                nb::gil_scoped_release release;
                layout = layout_tree(span_of(parents), n_past, n_seq_max);
            }
            const std::size_t n = layout.pos.size();
            return std::make_tuple(to_numpy(std::move(layout.pos)),
                                   to_numpy(std::move(layout.seq_ids), n, static_cast<std::size_t>(n_seq_max)),
                                   to_numpy(std::move(layout.n_seq_id)), to_numpy(std::move(layout.leaf_seq)));
        },
        "parents"_a, "n_past"_a, "n_seq_max"_a,
        "(pos, seq_ids [n, n_seq_max] padded with -1, n_seq_id, leaf_seq) for one llama_decode over the\n"
        "tree: one sequence id per root-to-leaf branch, each node's first id its leftmost leaf's.");
}

void bind_verification(nb::module_& m) {
    nb::class_<Sampler>(m, "Sampler",
                        "Seeded sampler over the target distribution (temperature, top-k, top-p). Output\n"
                        "position t is drawn with a uniform that depends only on (seed, t) (Philox4x32-10).")
        .def(nb::init<std::uint64_t>(), "seed"_a, "seed: 0 <= seed < 2**64.")
        .def_prop_ro("seed", &Sampler::seed)
        .def("uniform", &Sampler::uniform, "position"_a, "The uniform in [0, 1) of output position `position`.")
        .def(
            "sample",
            [](Sampler& self, InVector<float> logits_row, std::uint64_t position, float temp, int top_k,
               float top_p) {
                if (logits_row.shape(0) == 0) throw std::invalid_argument("sample: empty logits row");
                nb::gil_scoped_release release;
                return self.sample(logits_row.data(), logits_row.shape(0), sampling_params(temp, top_k, top_p),
                                   position);
            },
            "logits_row"_a.noconvert(), "position"_a, "temp"_a, "top_k"_a = 0, "top_p"_a = 1.0f,
            "The token at output position `position`, by inverse CDF over the distribution in token id order;\n"
            "temp <= 0 means arg-max. top_k <= 0 and top_p >= 1 switch those filters off.");

    m.def(
        "verify_greedy",
        [](InVector<std::int32_t> tokens, InVector<std::int32_t> parents, InVector<std::int32_t> argmax) {
            VerifyResult result;
            {
                nb::gil_scoped_release release;
                result = verify_greedy(span_of(tokens), span_of(parents), span_of(argmax));
            }
            return std::make_pair(to_numpy(std::move(result.path)), result.bonus);
        },
        "tokens"_a, "parents"_a, "argmax"_a, "(accepted path of node indices from the root, bonus token).");

    m.def(
        "verify_sample",
        [](InVector<std::int32_t> tokens, InVector<std::int32_t> parents, InMatrix<float> logits, float temp,
           int top_k, float top_p, Sampler& sampler, std::uint64_t position) {
            if (!(temp > 0.0f)) throw std::invalid_argument("verify_sample needs temp > 0; use verify_greedy");
            VerifyResult result;
            {
                nb::gil_scoped_release release;
                result = verify_sample(span_of(tokens), span_of(parents), view_of(logits),
                                       sampling_params(temp, top_k, top_p), sampler, position);
            }
            return std::make_pair(to_numpy(std::move(result.path)), result.bonus);
        },
        "tokens"_a, "parents"_a, "logits"_a.noconvert(), "temp"_a, "top_k"_a, "top_p"_a, "sampler"_a, "position"_a,
        "(accepted path, bonus token) by sample and match: the root's logits give output position\n"
        "`position`, each node below one more; the emitted tokens are those plain sampling draws with\n"
        "the same sampler, and follow the target distribution exactly.");
}

void bind_policy(nb::module_& m) {
    // Microseconds a call, every step: the GIL is kept (releasing it would cost as much).
    nb::class_<SpeculationCore>(m, "SpeculationCore",
                                "The per-step state and choice of `--draft auto`'s speculation policy (policy.py).")
        .def(
            "__init__",
            [](SpeculationCore* self, std::vector<std::int32_t> match_buckets, std::vector<double> match_priors,
               double split_prior_factor, std::vector<std::int32_t> tree_sizes, std::vector<double> tree_priors,
               int max_depth, int max_streak, int price_block, double prior_weight, double local_weight,
               double unanimous, double margin, double draft_overhead) {
                new (self) SpeculationCore(PolicyParams{std::move(match_buckets), std::move(match_priors),
                                                        split_prior_factor, std::move(tree_sizes),
                                                        std::move(tree_priors), max_depth, max_streak, price_block,
                                                        prior_weight, local_weight, unanimous, margin, draft_overhead});
            },
            "match_buckets"_a, "match_priors"_a, "split_prior_factor"_a, "tree_sizes"_a, "tree_priors"_a,
            "max_depth"_a, "max_streak"_a, "price_block"_a, "prior_weight"_a, "local_weight"_a, "unanimous"_a,
            "margin"_a, "draft_overhead"_a)
        .def("set_limits", &SpeculationCore::set_limits, "max_tree"_a, "max_chain"_a)
        .def(
            "set_costs", [](SpeculationCore& self, InVector<double> costs) { self.set_costs(span_of(costs)); },
            "costs"_a, "Step cost in ms by row count (costs[k]: k rows).")
        .def("reset", &SpeculationCore::reset, "decay"_a)
        .def(
            "choose",
            [](SpeculationCore& self, InVector<std::int32_t> chain, int match_n, double agreement, int n_deferred,
               double row_extra) {
                const PolicyChoice c = self.choose(span_of(chain), match_n, agreement, n_deferred, row_extra);
                return std::make_tuple(c.tree_size, c.draft_len, c.expected_tokens, c.cost_ms);
            },
            "chain"_a, "match_n"_a, "agreement"_a, "n_deferred"_a, "row_extra"_a,
            "(tree_size, draft_len, expected_tokens, cost_ms) of the option with the most expected tokens per ms.")
        .def(
            "observe",
            [](SpeculationCore& self, const std::vector<std::int32_t>& produced) {
                self.observe(Span<std::int32_t>{produced.data(), produced.size()});
            },
            "produced"_a, "The tokens the step produced: accepted draft tokens, then the bonus token.")
        .def("stats_key", &SpeculationCore::stats_key, "match_n"_a, "unanimous"_a, "streak"_a,
             "The statistics key of a match of match_n tokens after `streak` predicted steps.")
        .def(
            "counts",
            [](SpeculationCore& self, std::size_t key) {
                const DepthStats& s = self.stats(key);
                return std::make_pair(s.trials(), s.hits());
            },
            "key"_a, "(trials, hits) by depth over everything seen, faded by generation.")
        .def(
            "set_counts",
            [](SpeculationCore& self, std::size_t key, InVector<double> trials, InVector<double> hits) {
                self.stats(key).set_counts(span_of(trials), span_of(hits));
            },
            "key"_a, "trials"_a, "hits"_a)
        .def(
            "rate",
            [](SpeculationCore& self, std::size_t key, std::size_t depth) { return self.stats(key).rate(depth); },
            "key"_a, "depth"_a)
        .def("tree_mean", &SpeculationCore::tree_mean, "index"_a)
        .def("tree_counts", &SpeculationCore::tree_counts, "index"_a, "(total accepted, steps) of a tree size.")
        .def("set_tree_counts", &SpeculationCore::set_tree_counts, "index"_a, "total"_a, "count"_a)
        .def_prop_ro("steps_by_kind",
                     [](const SpeculationCore& self) {
                         const auto& k = self.steps_by_kind();
                         nb::dict steps;
                         steps["plain"] = k[kPlain];
                         steps["ngram"] = k[kNgram];
                         steps["tree"] = k[kTree];
                         steps["hybrid"] = k[kHybrid];
                         return steps;
                     })
        .def_prop_ro("max_chain", &SpeculationCore::max_chain)
        .def_prop_ro("n_trees", &SpeculationCore::n_trees);
}

// FileError -> OSError subclass chosen by errno (FileNotFoundError, PermissionError, ...).
void translate_file_error(const std::exception_ptr& error, void*) {
    try {
        std::rethrow_exception(error);
    } catch (const FileError& e) {
        errno = e.errno_value();
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, e.path().c_str());
    }
}

}  // namespace

NB_MODULE(_native, m) {
    m.doc() = "specdec native core: n-gram and Token Recycling drafting, draft-tree batch layout, "
              "lossless verification, the speculation policy's per-step choice.";
    nb::register_exception_translator(translate_file_error);
    bind_ngram_index(m);
    bind_suffix_automaton(m);
    bind_recycling_matrix(m);
    bind_topk(m);
    bind_trees(m);
    bind_verification(m);
    bind_policy(m);
}
