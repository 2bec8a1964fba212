//go:build arena_broken

package main

import "errors"

// Built only with -tags arena_broken (GOFLAGS=-tags=arena_broken hotrelease build ...):
// a release that serves requests but fails its health check, for rollback demos and tests.
func healthCheck() error { return errors.New("arena: broken build (arena_broken tag)") }
