#!/bin/sh
# POST echo for the Apache httpd origin of upkeep's interoperability suite: the request
# body (Content-Length or chunked; Apache dechunks) sent back byte for byte.
# Each request's query string (id=...) is appended to posts.log beside this script: the
# suite counts arrivals there (Apache's access log can lose the line of a request that a
# child was serving when a graceful restart ended it).
printf '%s\n' "${QUERY_STRING:-}" >> "$(dirname "$0")/posts.log"
# Read the whole body first: Apache writes all of it before it reads our output, so
# echoing while reading would deadlock on a full pipe.
t=$(mktemp) || exit 1
trap 'rm -f "$t"' EXIT
cat > "$t"
printf 'Content-Type: application/octet-stream\r\nContent-Length: %s\r\n\r\n' "$(stat -c %s "$t")"
cat "$t"
