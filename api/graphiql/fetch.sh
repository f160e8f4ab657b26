#!/usr/bin/env bash
# Fetches GraphiQL's assets from the npm registry as PACKAGES pins them and
# writes them to dist/ (which is committed and compiled into the binary, so a
# build needs no network). With --check, compares dist/ with the packages
# instead and fails on any difference. Needs node's npm.
set -euo pipefail
cd "$(dirname "$0")"
check=false
[ "${1:-}" = "--check" ] && check=true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p dist
status=0
while read -r package version integrity files; do
    case "$package" in ''|'#'*) continue ;; esac
    got=$(cd "$work" && npm pack --silent --json "$package@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["integrity"])')
    if [ "$got" != "$integrity" ]; then
        echo "$package@$version: integrity $got, PACKAGES pins $integrity" >&2
        exit 1
    fi
    mkdir -p "$work/$package"
    tar -xzf "$work/$package-$version.tgz" -C "$work/$package"
    for file in $files; do
        name=$(basename "$file")
        if $check; then
            if ! cmp -s "$work/$package/package/$file" "dist/$name"; then
                echo "dist/$name differs from $package@$version's $file" >&2
                status=1
            fi
        else
            cp "$work/$package/package/$file" "dist/$name"
            echo "dist/$name <- $package@$version/$file"
        fi
    done
done < PACKAGES
$check && [ "$status" -eq 0 ] && echo "dist/ is exactly the pinned npm packages' files"
exit "$status"
