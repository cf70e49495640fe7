// Error types that bindings.cpp maps onto Python exceptions. Invalid arguments use
// std::invalid_argument (ValueError) and std::out_of_range (IndexError) directly.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace specdec {

// A failed file operation; becomes OSError (FileNotFoundError, PermissionError, ...)
// so callers can tell "no saved matrix yet" from "the saved matrix is corrupt".
class FileError : public std::runtime_error {
public:
    FileError(int errno_value, std::string path, const std::string& what)
        : std::runtime_error(what), errno_value_(errno_value), path_(std::move(path)) {}

    int errno_value() const { return errno_value_; }
    const std::string& path() const { return path_; }

private:
    int errno_value_;
    std::string path_;
};

}  // namespace specdec
