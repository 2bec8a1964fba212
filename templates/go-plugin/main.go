// Package main is game logic built as a Go plugin (-buildmode=plugin) that a host process
// loads with plugin.Open and swaps at run time.
//
// Keep player state out of the plugin: a plugin can never be unloaded, so every version stays
// in memory, and anything that must survive a swap belongs to the host. The exported symbols
// below use only standard-library types, so host and plugin share no module but the runtime;
// if you share an API module, host and plugin must be built against the very same version
// (hotrelease records it in the manifest, see docs/go-hot-reload.md).
package main

import "fmt"

// Version is stamped at build time: -ldflags "-X main.Version={version}".
var Version = "0.0.0-dev"

// Handle serves one request; state is owned by the host and survives a swap.
func Handle(request map[string]string, state map[string]int) map[string]string {
	player := request["player"]
	if player == "" {
		player = "player"
	}
	state[player]++
	return map[string]string{
		"message": fmt.Sprintf("Hello, %s! (visit %d)", player, state[player]),
		"version": Version,
	}
}

// Health reports whether this version can serve; the host's health endpoint calls it.
func Health() error { return nil }

func main() {}
