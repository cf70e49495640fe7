// Read-only views of contiguous memory. C++17 has no std::span; arrays handed over
// from numpy (token lists, llama.cpp's logits buffer) are viewed in place, never copied.
#pragma once

#include <cstddef>

namespace specdec {

template <typename T>
struct Span {
    const T* data = nullptr;
    std::size_t size = 0;

    const T& operator[](std::size_t i) const { return data[i]; }
    const T* begin() const { return data; }
    const T* end() const { return data + size; }
    bool empty() const { return size == 0; }
};

// Row-major [rows, cols] matrix.
template <typename T>
struct MatrixView {
    const T* data = nullptr;
    std::size_t rows = 0;
    std::size_t cols = 0;

    const T* row(std::size_t i) const { return data + i * cols; }
};

}  // namespace specdec
