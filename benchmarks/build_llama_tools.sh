#!/usr/bin/env bash
# Build llama-bench, llama-mtmd-cli and llama-server from the llama.cpp that the pinned
# llama-cpp-python vendors (its sdist), so the benchmark compares kvl against
# the very same ggml code.
#
#   benchmarks/build_llama_tools.sh [WORKDIR]     (default: .bench/)
#
# Prints the bin/ folder on the last line. Re-running reuses the build.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$here/.bench}"
py="${PYTHON:-$here/.venv/bin/python}"
# the llama-cpp-python that kvl actually runs on
ver="$("$py" -c 'import llama_cpp; print(llama_cpp.__version__)')"
mkdir -p "$work"
src="$work/llama_cpp_python-$ver"
if [ ! -d "$src/vendor/llama.cpp" ]; then
    python3 -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$ver"
    tar -xzf "$work/llama_cpp_python-$ver.tar.gz" -C "$work"
fi
build="$work/llama.cpp-build-$ver"
cmake -S "$src/vendor/llama.cpp" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" --target llama-bench llama-mtmd-cli llama-server -j "$(nproc)" >/dev/null
echo "$build/bin"
