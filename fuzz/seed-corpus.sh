#!/bin/sh
# Seeds fuzz/corpus/<target>/ with every .sf file of the repository: the prelude and
# compatibility library (configs/), the examples, and the sd-lang golden and error tests.
# The corpus is not committed (fuzz/corpus is in .gitignore). Usage: fuzz/seed-corpus.sh
set -eu
cd "$(dirname "$0")/.."
for target in resolve unparse_roundtrip; do
    mkdir -p "fuzz/corpus/$target"
    find configs crates/sd-lang/tests -name '*.sf' -type f | while read -r file; do
        # One corpus file per source file, named after its path.
        cp "$file" "fuzz/corpus/$target/seed-$(printf '%s' "$file" | tr '/' '_')"
    done
done
echo "seeded: $(ls fuzz/corpus/resolve | wc -l) files per target"
