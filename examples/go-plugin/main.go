// Package main is the arena game logic, built as a Go plugin (-buildmode=plugin) that the
// example host (examples/go-host) loads and hot-swaps.
//
// It keeps no player state of its own: everything that must survive a reload lives in the
// host-owned gameapi.Session it is handed.
package main

import (
	"fmt"
	"time"

	gameapi "hotrelease.example/gameapi"
)

// Version is stamped at build time: -ldflags "-X main.Version={version}".
var Version = "0.0.0-dev"

type arena struct{}

// NewGame is the entry point the host looks up.
func NewGame() gameapi.Game { return arena{} }

func (arena) Version() string { return Version }

func (arena) Handle(s *gameapi.Session, r gameapi.Request) (gameapi.Response, error) {
	switch r.Action {
	case "hit", "":
		s.Score += r.Amount
	case "slow":
		// a long-running request: sleeps Amount milliseconds (capped), to show that an
		// in-flight request finishes on the handler it started with
		ms := r.Amount
		if ms > 5000 {
			ms = 5000
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
	case "note":
		if s.Data == nil {
			s.Data = map[string]string{}
		}
		s.Data["note"] = fmt.Sprintf("set by %s", Version)
	default:
		return gameapi.Response{}, fmt.Errorf("unknown action %q", r.Action)
	}
	s.Plays++
	return gameapi.Response{Version: Version, Plays: s.Plays, Score: s.Score,
		Message: fmt.Sprintf("arena %s: %s by %d", Version, actionName(r.Action), r.Amount)}, nil
}

func (arena) Healthy() error { return healthCheck() }

func actionName(a string) string {
	if a == "" {
		return "hit"
	}
	return a
}
