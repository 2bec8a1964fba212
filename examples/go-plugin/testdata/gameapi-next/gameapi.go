// Package gameapi is the contract between the game-server host and its game-logic plugins.
//
// Both sides import this package, so it must be byte-for-byte the same version in the host
// binary and in every plugin: plugin.Open refuses a plugin whose copy of a shared package
// differs from the host's ("plugin was built with a different version of package ...").
// Keep it small and stable, change it only with a new module version, and rebuild the host
// and every plugin together when it changes.
//
// State that must survive a hot reload (sessions, scores) lives in Session, which the host
// owns; a plugin must not keep player state in its own package-level variables, because the
// next version is a different plugin with its own copy of those variables.
package gameapi

// APIVersion is bumped whenever the contract changes incompatibly.
const APIVersion = 2

// Session is one player's state. The host owns it and keeps it across plugin swaps; the
// host holds the session's lock while a plugin's Handle runs, so Handle may mutate it.
type Session struct {
	ID    string            `json:"id"`
	Plays int64             `json:"plays"`
	Score int64             `json:"score"`
	Level int               `json:"level"` // new in v1.1.0: changes the layout of Session
	Data  map[string]string `json:"data,omitempty"`
}

// Request is one client action.
type Request struct {
	Session string `json:"session"`
	Action  string `json:"action"`
	Amount  int64  `json:"amount"`
}

// Response is what the client gets back.
type Response struct {
	Version string `json:"version"` // the plugin version that served the request
	Message string `json:"message"`
	Plays   int64  `json:"plays"`
	Score   int64  `json:"score"`
}

// Game is the game logic a plugin provides.
type Game interface {
	// Version is the plugin's release version (stamped at build time).
	Version() string
	// Handle runs one request against the player's session.
	Handle(s *Session, r Request) (Response, error)
	// Healthy returns nil when the logic is fit to serve; the host reports it on /health.
	Healthy() error
}

// NewGameSymbol and VersionSymbol are the names a plugin exports:
//
//	func NewGame() gameapi.Game
//	var Version string
const (
	NewGameSymbol = "NewGame"
	VersionSymbol = "Version"
)
