package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"plugin"
	"sync"
	"sync/atomic"
	"time"

	gameapi "hotrelease.example/gameapi"
)

// loaded is one plugin version the host can serve with. It is immutable once published
// through Host.active, so a request that picked it up keeps using it to the end.
type loaded struct {
	game       gameapi.Game
	version    string
	pluginPath string
	release    string
	loadedAt   time.Time
}

// Host owns everything that must outlive a plugin: listeners, sessions, counters.
type Host struct {
	name    string
	current string
	abi     *HostABI

	active atomic.Pointer[loaded]

	reloadMu    sync.Mutex
	loadedPaths map[string]string // plugin path -> realpath of the .so it was loaded from
	versions    []string          // versions loaded into this process, in order
	reloads     int64
	refusals    int64
	lastError   string
	lastReload  time.Time
	lastTiming  ReloadTiming
	restartAt   int // recommend a restart once this many plugins are loaded (0 = never)

	sessMu   sync.Mutex
	sessions map[string]*sessionSlot

	inFlight    atomic.Int64
	served      atomic.Int64
	failed      atomic.Int64
	connsOpened atomic.Int64
}

type sessionSlot struct {
	mu sync.Mutex
	s  gameapi.Session
}

func NewHost(name, current string, abi *HostABI) *Host {
	return &Host{name: name, current: current, abi: abi, loadedPaths: map[string]string{},
		sessions: map[string]*sessionSlot{}}
}

// ReloadTiming is how long the last successful swap took inside the host.
type ReloadTiming struct {
	CheckMS float64 `json:"abi_check_ms"`
	OpenMS  float64 `json:"open_ms"`
	TotalMS float64 `json:"total_ms"`
}

// ReloadResult says what a reload did.
type ReloadResult struct {
	Changed bool   `json:"changed"`
	Version string `json:"version"`
	Release string `json:"release"`
	Error   string `json:"error,omitempty"`
}

// Reload resolves the `current` link once, checks the release it points at, opens its
// plugin and swaps the handler. On any error the old handler keeps serving.
func (h *Host) Reload(reason string) (ReloadResult, error) {
	h.reloadMu.Lock()
	defer h.reloadMu.Unlock()
	res, err := h.reloadLocked(reason)
	h.lastReload = time.Now()
	if err != nil {
		h.refusals++
		h.lastError = err.Error()
		res.Error = err.Error()
		log.Printf("reload (%s) refused, still serving %s: %v", reason, res.Version, err)
	} else if res.Changed {
		h.lastError = ""
	}
	return res, err
}

func (h *Host) reloadLocked(reason string) (ReloadResult, error) {
	var res ReloadResult
	start := time.Now()
	cur := h.active.Load()
	if cur != nil {
		res.Version, res.Release = cur.version, cur.release
	}
	release, err := filepath.EvalSymlinks(h.current)
	if err != nil {
		return res, fmt.Errorf("resolve %s: %w", h.current, err)
	}
	if cur != nil && cur.release == release {
		return res, nil // already serving it
	}
	// The ABI check reads manifest.json and the .so as data. Nothing is loaded unless it passes.
	facts, err := CheckRelease(release, h.name, h.abi)
	if err != nil {
		return res, err
	}
	checked := time.Now()
	for _, w := range facts.Warnings {
		log.Printf("abi check warning: %s", w)
	}
	so, err := filepath.EvalSymlinks(facts.PluginFile)
	if err != nil {
		return res, err
	}
	// plugin.Open refuses a plugin path already loaded from another file ("plugin already
	// loaded"), and that failure leaves the new module behind: refuse it here instead.
	// The same file again is fine: plugin.Open returns the cached plugin (a rollback).
	if prev, ok := h.loadedPaths[facts.PluginPath]; ok && prev != so {
		return res, &ABIError{release, []string{fmt.Sprintf("plugin path %q is already loaded "+
			"from %s; every version needs its own plugin path", facts.PluginPath, prev)}}
	}
	log.Printf("plugin.Open %s (plugin path %s, reason: %s)", so, facts.PluginPath, reason)
	p, err := plugin.Open(so)
	if err != nil {
		return res, fmt.Errorf("plugin.Open: %w", err)
	}
	h.loadedPaths[facts.PluginPath] = so
	newGame, err := lookup[func() gameapi.Game](p, gameapi.NewGameSymbol)
	if err != nil {
		return res, err
	}
	version, err := lookup[*string](p, gameapi.VersionSymbol)
	if err != nil {
		return res, err
	}
	if *version != facts.Version {
		return res, fmt.Errorf("plugin reports version %q but its manifest says %q", *version,
			facts.Version)
	}
	game := newGame()
	if game == nil {
		return res, errors.New("NewGame returned nil")
	}
	next := &loaded{game: game, version: *version, pluginPath: facts.PluginPath,
		release: release, loadedAt: time.Now()}
	h.active.Store(next) // the swap: new requests see next, in-flight ones keep theirs
	done := time.Now()
	h.lastTiming = ReloadTiming{CheckMS: ms(checked.Sub(start)), OpenMS: ms(done.Sub(checked)),
		TotalMS: ms(done.Sub(start))}
	h.reloads++
	if len(h.versions) == 0 || h.versions[len(h.versions)-1] != next.version {
		h.versions = append(h.versions, next.version)
	}
	log.Printf("now serving %s %s from %s", h.name, next.version, release)
	return ReloadResult{Changed: true, Version: next.version, Release: release}, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func lookup[T any](p *plugin.Plugin, name string) (T, error) {
	var zero T
	sym, err := p.Lookup(name)
	if err != nil {
		return zero, fmt.Errorf("plugin does not export %s: %w", name, err)
	}
	v, ok := sym.(T)
	if !ok {
		return zero, fmt.Errorf("plugin symbol %s has type %T, want %T", name, sym, zero)
	}
	return v, nil
}

func (h *Host) session(id string) *sessionSlot {
	h.sessMu.Lock()
	defer h.sessMu.Unlock()
	slot := h.sessions[id]
	if slot == nil {
		slot = &sessionSlot{s: gameapi.Session{ID: id, Data: map[string]string{}}}
		h.sessions[id] = slot
	}
	return slot
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

const maxBody = 64 << 10

func (h *Host) handlePlay(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "POST only"})
		return
	}
	cur := h.active.Load() // picked once: this request finishes on this handler
	if cur == nil {
		h.failed.Add(1)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "no game logic loaded"})
		return
	}
	h.inFlight.Add(1)
	defer h.inFlight.Add(-1)
	var req gameapi.Request
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request: " + err.Error()})
		return
	}
	if req.Session == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "session is required"})
		return
	}
	slot := h.session(req.Session)
	slot.mu.Lock()
	resp, err := safeHandle(cur.game, &slot.s, req)
	slot.mu.Unlock()
	w.Header().Set("X-Plugin-Version", cur.version)
	if err != nil {
		h.failed.Add(1)
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error(),
			"version": cur.version})
		return
	}
	h.served.Add(1)
	writeJSON(w, http.StatusOK, resp)
}

// safeHandle keeps a panicking plugin from taking the connection (or the process) down.
func safeHandle(g gameapi.Game, s *gameapi.Session, r gameapi.Request) (resp gameapi.Response, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("plugin panicked: %v", p)
		}
	}()
	return g.Handle(s, r)
}

func safeHealthy(g gameapi.Game) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("plugin health check panicked: %v", p)
		}
	}()
	return g.Healthy()
}

// Health is what GET /health reports.
type Health struct {
	Status             string       `json:"status"` // ok | unhealthy
	Plugin             string       `json:"plugin"`
	Version            string       `json:"version"`
	PluginPath         string       `json:"plugin_path"`
	Release            string       `json:"release"`
	Error              string       `json:"error,omitempty"`
	LastError          string       `json:"last_reload_error,omitempty"`
	Loaded             []string     `json:"loaded_versions"`
	PluginsMapped      int          `json:"plugins_mapped"`
	RestartRecommended bool         `json:"restart_recommended"`
	LastReload         ReloadTiming `json:"last_reload"`
	Reloads            int64        `json:"reloads"`
	Refusals           int64        `json:"refusals"`
	Sessions           int          `json:"sessions"`
	InFlight           int64        `json:"in_flight"`
	Served             int64        `json:"served"`
	Failed             int64        `json:"failed"`
	ConnsOpened        int64        `json:"connections_opened"`
	GoVersion          string       `json:"go_version"`
	PID                int          `json:"pid"`
}

func (h *Host) health() (int, Health) {
	out := Health{Status: "ok", Plugin: h.name, GoVersion: h.abi.GoVersion, PID: os.Getpid(),
		InFlight: h.inFlight.Load(), Served: h.served.Load(), Failed: h.failed.Load(),
		ConnsOpened: h.connsOpened.Load()}
	h.reloadMu.Lock()
	out.LastError, out.Reloads, out.Refusals = h.lastError, h.reloads, h.refusals
	out.Loaded = append([]string{}, h.versions...)
	out.PluginsMapped = len(h.loadedPaths)
	out.RestartRecommended = h.restartAt > 0 && len(h.loadedPaths) >= h.restartAt
	out.LastReload = h.lastTiming
	h.reloadMu.Unlock()
	h.sessMu.Lock()
	out.Sessions = len(h.sessions)
	h.sessMu.Unlock()
	cur := h.active.Load()
	if cur == nil {
		out.Status, out.Error = "unhealthy", "no game logic loaded"
		return http.StatusServiceUnavailable, out
	}
	out.Version, out.PluginPath, out.Release = cur.version, cur.pluginPath, cur.release
	if err := safeHealthy(cur.game); err != nil {
		out.Status, out.Error = "unhealthy", err.Error()
		return http.StatusServiceUnavailable, out
	}
	return http.StatusOK, out
}

func (h *Host) handleHealth(w http.ResponseWriter, r *http.Request) {
	code, body := h.health()
	if r.URL.Query().Get("version") != "" && r.URL.Query().Get("version") != body.Version {
		// Lets a plain HTTP health check insist on a version: /health?version=1.1.0
		body.Status = "unhealthy"
		body.Error = fmt.Sprintf("serving %q, not %q", body.Version, r.URL.Query().Get("version"))
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, body)
}

func (h *Host) handleReload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "POST only"})
		return
	}
	res, err := h.Reload("admin endpoint")
	code := http.StatusOK
	var abiErr *ABIError
	switch {
	case errors.As(err, &abiErr):
		code = http.StatusConflict
	case err != nil:
		code = http.StatusInternalServerError
	}
	writeJSON(w, code, res)
}

func (h *Host) handleSession(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	h.sessMu.Lock()
	slot := h.sessions[id]
	h.sessMu.Unlock()
	if slot == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such session"})
		return
	}
	slot.mu.Lock()
	s := slot.s
	data := make(map[string]string, len(s.Data))
	for k, v := range s.Data {
		data[k] = v
	}
	s.Data = data
	slot.mu.Unlock()
	writeJSON(w, http.StatusOK, s)
}

// Mux returns the player-facing routes, plus the admin routes when admin is true.
func (h *Host) Mux(admin bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/play", h.handlePlay)
	mux.HandleFunc("/health", h.handleHealth)
	mux.HandleFunc("/session", h.handleSession)
	if admin {
		h.adminRoutes(mux)
	}
	return mux
}

func (h *Host) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/admin/reload", h.handleReload)
	mux.HandleFunc("/admin/abi", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, h.abi)
	})
}

// Server wraps a mux in an http.Server that keeps client connections open across reloads
// and counts them (a reconnect would show as an extra opened connection).
func (h *Host) Server(handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateNew {
				h.connsOpened.Add(1)
			}
		},
	}
}

// Watch polls the `current` link and reloads when its target changes.
func (h *Host) Watch(every time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	last, _ := filepath.EvalSymlinks(h.current)
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			target, err := filepath.EvalSymlinks(h.current)
			if err != nil || target == last {
				continue
			}
			last = target
			_, _ = h.Reload("current link changed")
		}
	}
}
