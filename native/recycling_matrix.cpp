#include "recycling_matrix.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <system_error>

#include "errors.hpp"

#ifdef _WIN32
#include <io.h>
#include <process.h>
#else
#include <unistd.h>
#endif

namespace specdec {

namespace {

// On-disk layout, native byte order (little-endian on every platform llama.cpp runs on;
// a big-endian reader fails the version check instead of misreading rows):
//   char[8] magic, u32 version, u32 n_vocab, u32 k, u32 reserved (0),
//   u64 checksum of the payload, then the payload: n_vocab * k int32 token ids.
constexpr char kMagic[8] = {'S', 'D', 'R', 'E', 'C', 'Y', 'C', 'L'};
constexpr std::uint32_t kVersion = 1;

struct FileHeader {
    char magic[8];
    std::uint32_t version;
    std::uint32_t n_vocab;
    std::uint32_t k;
    std::uint32_t reserved;
    std::uint64_t checksum;
};
static_assert(sizeof(FileHeader) == 32, "FileHeader must have no padding");

// Catches bit rot and partial overwrites that keep the file size intact.
std::uint64_t payload_checksum(const std::vector<std::int32_t>& ids) {
    std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a offset basis, applied per 32-bit word
    for (std::int32_t id : ids) {
        h ^= static_cast<std::uint32_t>(id);
        h *= 0x100000001b3ULL;
    }
    return h;
}

std::string temporary_path_for(const std::string& path) {
#ifdef _WIN32
    const int pid = _getpid();
#else
    const int pid = static_cast<int>(getpid());
#endif
    return path + ".tmp." + std::to_string(pid);
}

void flush_to_disk(std::FILE* file) {
#ifdef _WIN32
    _commit(_fileno(file));
#else
    fsync(fileno(file));
#endif
}

[[noreturn]] void throw_errno(const std::string& path, const std::string& action) {
    const int err = errno;
    throw FileError(err, path, action + " " + path + ": " + std::strerror(err));
}

[[noreturn]] void throw_corrupt(const std::string& path, const std::string& why) {
    throw std::invalid_argument("not a valid recycling matrix file: " + path + " (" + why + ")");
}

// Owns a FILE* so every error path closes it.
struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

}  // namespace

RecyclingMatrix::RecyclingMatrix(std::int32_t n_vocab, std::int32_t k) : n_vocab_(n_vocab), k_(k) {
    if (n_vocab <= 0 || k <= 0) {
        throw std::invalid_argument("RecyclingMatrix needs n_vocab > 0 and k > 0, got n_vocab=" +
                                    std::to_string(n_vocab) + ", k=" + std::to_string(k));
    }
    ids_.assign(static_cast<std::size_t>(n_vocab) * k, kEmpty);
}

void RecyclingMatrix::check_token(std::int32_t token) const {
    if (token < 0 || token >= n_vocab_) {
        throw std::out_of_range("token " + std::to_string(token) + " is outside the vocabulary [0, " +
                                std::to_string(n_vocab_) + ")");
    }
}

void RecyclingMatrix::update(Span<std::int32_t> tokens, MatrixView<std::int32_t> topk_ids) {
    if (topk_ids.rows != tokens.size) {
        throw std::invalid_argument("update: topk_ids has " + std::to_string(topk_ids.rows) + " rows for " +
                                    std::to_string(tokens.size) + " tokens");
    }
    if (topk_ids.cols < static_cast<std::size_t>(k_)) {
        throw std::invalid_argument("update: topk_ids has " + std::to_string(topk_ids.cols) +
                                    " columns, the matrix keeps k=" + std::to_string(k_));
    }
    for (std::size_t i = 0; i < tokens.size; ++i) {
        check_token(tokens[i]);
        const std::int32_t* ids = topk_ids.row(i);
        for (std::int32_t j = 0; j < k_; ++j) {
            if (ids[j] < kEmpty || ids[j] >= n_vocab_) {
                throw std::invalid_argument("update: candidate id " + std::to_string(ids[j]) +
                                            " is outside the vocabulary");
            }
        }
    }
    for (std::size_t i = 0; i < tokens.size; ++i) {
        std::int32_t* row = row_data(tokens[i]);
        const bool was_filled = row[0] != kEmpty;
        std::copy_n(topk_ids.row(i), k_, row);
        const bool is_filled = row[0] != kEmpty;
        filled_rows_ += static_cast<std::size_t>(is_filled) - static_cast<std::size_t>(was_filled);
    }
}

Span<std::int32_t> RecyclingMatrix::row(std::int32_t token) const {
    check_token(token);
    return Span<std::int32_t>{row_data(token), static_cast<std::size_t>(k_)};
}

std::int32_t RecyclingMatrix::candidate(std::int32_t token, int rank) const {
    if (token < 0 || token >= n_vocab_ || rank < 0 || rank >= k_) return kEmpty;
    return row_data(token)[rank];
}

std::size_t RecyclingMatrix::count_filled_rows() const {
    std::size_t filled = 0;
    for (std::int32_t token = 0; token < n_vocab_; ++token) filled += row_data(token)[0] != kEmpty;
    return filled;
}

void RecyclingMatrix::save(const std::string& path) const {
    FileHeader header{};
    std::memcpy(header.magic, kMagic, sizeof kMagic);
    header.version = kVersion;
    header.n_vocab = static_cast<std::uint32_t>(n_vocab_);
    header.k = static_cast<std::uint32_t>(k_);
    header.checksum = payload_checksum(ids_);

    const std::string tmp_path = temporary_path_for(path);
    {
        FilePtr file(std::fopen(tmp_path.c_str(), "wb"));
        if (!file) throw_errno(tmp_path, "cannot create");
        const bool written = std::fwrite(&header, sizeof header, 1, file.get()) == 1 &&
                             std::fwrite(ids_.data(), sizeof(std::int32_t), ids_.size(), file.get()) == ids_.size() &&
                             std::fflush(file.get()) == 0;
        if (!written) {
            const int err = errno;
            file.reset();
            std::remove(tmp_path.c_str());
            errno = err;
            throw_errno(tmp_path, "cannot write");
        }
        // Without this the rename can reach the disk before the data does.
        flush_to_disk(file.get());
    }
    std::error_code ec;
    std::filesystem::rename(tmp_path, path, ec);  // replaces an existing file atomically
    if (ec) {
        std::remove(tmp_path.c_str());
        throw FileError(ec.value(), path, "cannot replace " + path + ": " + ec.message());
    }
}

RecyclingMatrix RecyclingMatrix::load(const std::string& path, std::int32_t n_vocab, std::int32_t k) {
    RecyclingMatrix matrix(n_vocab, k);
    FilePtr file(std::fopen(path.c_str(), "rb"));
    if (!file) throw_errno(path, "cannot open");

    FileHeader header{};
    if (std::fread(&header, sizeof header, 1, file.get()) != 1) throw_corrupt(path, "truncated header");
    if (std::memcmp(header.magic, kMagic, sizeof kMagic) != 0) throw_corrupt(path, "bad magic");
    if (header.version != kVersion) {
        throw_corrupt(path, "unsupported version " + std::to_string(header.version));
    }
    if (header.n_vocab != static_cast<std::uint32_t>(n_vocab) || header.k != static_cast<std::uint32_t>(k)) {
        throw std::invalid_argument("recycling matrix " + path + " is for n_vocab=" + std::to_string(header.n_vocab) +
                                    ", k=" + std::to_string(header.k) + ", expected n_vocab=" +
                                    std::to_string(n_vocab) + ", k=" + std::to_string(k));
    }
    const std::size_t n_ids = matrix.ids_.size();
    if (std::fread(matrix.ids_.data(), sizeof(std::int32_t), n_ids, file.get()) != n_ids) {
        throw_corrupt(path, "truncated payload");
    }
    if (std::fgetc(file.get()) != EOF) throw_corrupt(path, "trailing bytes");
    if (payload_checksum(matrix.ids_) != header.checksum) throw_corrupt(path, "checksum mismatch");
    const auto out_of_vocab = [n_vocab](std::int32_t id) { return id < kEmpty || id >= n_vocab; };
    if (std::any_of(matrix.ids_.begin(), matrix.ids_.end(), out_of_vocab)) {
        throw_corrupt(path, "token id outside the vocabulary");
    }
    matrix.filled_rows_ = matrix.count_filled_rows();
    return matrix;
}

}  // namespace specdec
