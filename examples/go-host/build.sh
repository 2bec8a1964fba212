#!/bin/sh
# Build the example game-server host:  examples/go-host/build.sh [OUTPUT]   (default ./gamehost)
#
# The flags matter: plugins are built with -trimpath (reproducible), and plugin.Open compares
# the host's copy of every shared package (runtime included) with the plugin's, so the host
# needs -trimpath too, the same Go toolchain, and cgo (plugin.Open is implemented with dlopen).
# Do not strip the binary (-ldflags=-s): the ABI check reads package fingerprints from its
# symbol table.
set -eu
out=${1:-gamehost}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
cd "$(dirname "$0")"
CGO_ENABLED=1 GOPROXY=off exec go build -trimpath -buildvcs=false -o "$out" .
