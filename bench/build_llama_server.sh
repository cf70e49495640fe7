#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` and `llama-bench` from the llama.cpp that the pinned
# llama-cpp-python sdist vendors, so that the benchmark's peer runs exactly the kernels
# specdec runs. Cached: the second call builds nothing. The last line printed is the path
# of the llama-server binary (for `specdec bench --llama-server "$(bench/build_llama_server.sh | tail -1)"`).
#
#   bench/build_llama_server.sh [--cmake-args "-DGGML_CUDA=on ..."]
#
# Environment: SPECDEC_CACHE_DIR (default: ~/.cache/specdec) holds the sdist and the build;
# JOBS (default: nproc). Takes ~6 minutes on 2 cores the first time.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
extra_cmake_args=""
if [[ "${1:-}" == "--cmake-args" ]]; then
    extra_cmake_args="${2:-}"
fi

pin="$(python3 - "$here/pyproject.toml" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(next(re.sub(r"^llama-cpp-python==", "", d) for d in deps if d.startswith("llama-cpp-python==")))
EOF
)"
cache="${SPECDEC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/specdec}/llama-server"
flavour="$(printf '%s' "$extra_cmake_args" | sha256sum | cut -c1-8)"
build="$cache/llama-cpp-python-$pin-$flavour"
binary="$build/build/bin/llama-server"

if [[ -x "$binary" && -x "$build/build/bin/llama-bench" ]]; then
    echo "llama-server for llama-cpp-python $pin is built already" >&2
    echo "$binary"
    exit 0
fi

mkdir -p "$cache/sdist"
sdist="$(ls "$cache/sdist"/llama_cpp_python-"$pin".tar.gz 2>/dev/null || true)"
if [[ -z "$sdist" ]]; then
    echo "downloading the llama-cpp-python $pin sdist ..." >&2
    # --no-build-isolation: pip reads the sdist's metadata with the build tools already
    # installed instead of setting up a fresh build environment for it.
    python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        "llama-cpp-python==$pin" -d "$cache/sdist" >&2
    sdist="$cache/sdist/llama_cpp_python-$pin.tar.gz"
fi

src="$build/src"
rm -rf "$src"
mkdir -p "$src"
tar -xzf "$sdist" -C "$src" --strip-components=3 "llama_cpp_python-$pin/vendor/llama.cpp"

echo "building llama-server and llama-bench (llama.cpp vendored by llama-cpp-python $pin) ..." >&2
# shellcheck disable=SC2086  # extra_cmake_args is a list of words on purpose
cmake -S "$src" -B "$build/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $extra_cmake_args >&2
cmake --build "$build/build" --target llama-server llama-bench -j "${JOBS:-$(nproc)}" >&2
echo "$binary"
