#!/usr/bin/env bash
# Regenerates the speech fixtures in tests/fixtures (committed; the tests never run this).
# Needs Debian's festival, festvox-us-slt-hts and sox: apt-get install festival festvox-us-slt-hts sox
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
say() { text2wave -eval '(voice_cmu_us_slt_arctic_hts)' "$1" -o "$2"; }

echo "She sells seashells by the seashore." > "$tmp/s.txt"
say "$tmp/s.txt" "$tmp/s.wav"
sox "$tmp/s.wav" -r 16000 -c 1 -b 16 "$out/seashells.wav"              # 2.5 s, 16 kHz mono
sox "$tmp/s.wav" -r 44100 -c 2 -b 16 "$out/seashells_44k_stereo.wav"   # the same, 44.1 kHz stereo

say "$out/long.txt" "$tmp/long.wav"                                     # about 53 s
sox "$tmp/long.wav" -r 16000 -c 1 "$out/long.ogg"                       # Ogg Vorbis: another container
