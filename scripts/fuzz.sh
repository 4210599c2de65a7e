#!/bin/bash
# Builds the libFuzzer harnesses of fuzz/ with clang, under ASan and
# UBSan (build/fuzz), and runs each on a copy of its corpus in fuzz/corpus
# for SECONDS (default 20): the corpus first, so every crash found before
# (kept there as regress-*) is a regression test, then new inputs.  Fails
# on the first crash, leak or hang, leaving the input in build/fuzz/crashes.
#
#   scripts/fuzz.sh [SECONDS [HARNESS...]]
#
# A long run, as docs/testing.rst records: scripts/fuzz.sh 3600 catalog
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/common.sh"

seconds=${1:-20}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(catalog manifest lock listing qmp sigv4 xml export kubevirt)
dir=$BUILD/fuzz

if [ ! -f "$dir/build.ninja" ]; then
    CC=clang meson setup --buildtype=debugoptimized "$dir" "$REPO" \
        -Dfuzzing=true >/dev/null
fi
ninja -C "$dir" >/dev/null
rm -rf "$dir/crashes"
mkdir -p "$dir/crashes"
for h in "${harnesses[@]}"; do
    work=$dir/corpus-$h
    rm -rf "$work"
    cp -r "$REPO/fuzz/corpus/$h" "$work"
    echo "fuzz-$h: ${seconds}s"
    # -close_fd_mask=3: the code's own warnings would drown the log
    status=0
    (cd "$dir/crashes" &&
     "$dir/fuzz-$h" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
         -rss_limit_mb=2048 -close_fd_mask=3 -print_final_stats=1 \
         "$work" >"$dir/fuzz-$h.log" 2>&1) || status=$?
    grep -E '^(stat::number_of_executed_units|SUMMARY|artifact)' \
        "$dir/fuzz-$h.log" || true
    if [ "$status" -ne 0 ] || ls "$dir/crashes" | grep -q .; then
        echo "fuzz-$h failed ($status): see $dir/fuzz-$h.log and $dir/crashes"
        exit 1
    fi
done
