#!/usr/bin/env bash
# Prints CHANGELOG.md's section for a released version: the lines under
# `## [VERSION] - YYYY-MM-DD` up to the next `## ` heading or the link list.
# Fails when there is none, so a tag whose changelog was not written (still
# under [Unreleased]) is not released.
#
#   deploy/release-notes.sh 0.1.0 [CHANGELOG.md]
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:?usage: deploy/release-notes.sh VERSION [CHANGELOG]}
changelog=${2:-CHANGELOG.md}
case "$version" in
  *[!0-9A-Za-z.+-]* | "")
    echo "release-notes: $version is not a version" >&2
    exit 64
    ;;
esac
heading="## [$version] - "
if ! awk -v heading="$heading" '
  index($0, heading) == 1 && substr($0, length(heading) + 1) ~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]$/ { found = 1; next }
  found && (/^## / || /^\[[^]]*\]: /) { exit }
  found { print }
  END { exit found ? 0 : 1 }
' "$changelog" | sed -e '/./,$!d'; then
  echo "release-notes: $changelog has no section \"$heading<date>\"" >&2
  exit 1
fi
