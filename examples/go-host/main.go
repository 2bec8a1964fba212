// Command gamehost is an example game server that hot-reloads its game logic from Go plugins
// released by hotrelease.
//
// Build (from the repository root; the host must use the same toolchain and flags as the
// plugins, hence -trimpath, and cgo, which plugin.Open needs):
//
//	examples/go-host/build.sh /path/to/gamehost
//
// Serve:
//
//	gamehost -current /var/lib/hotrelease/plugins/arena/current -listen 127.0.0.1:7000
//
// Pre-activation check for the agent (exit 0 = compatible, 1 = refused, 2 = usage):
//
//	gamehost -check-abi /var/lib/hotrelease/releases/arena/1.1.0
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		listen      = flag.String("listen", "127.0.0.1:7000", "player-facing HTTP address")
		adminListen = flag.String("admin-listen", "", "separate address for /admin/* (default: served on -listen)")
		current     = flag.String("current", "", "path of the agent's `current` link for this plugin (releases/<name>/current)")
		name        = flag.String("plugin", "arena", "plugin name: loads <release>/files/<name>.so")
		pidFile     = flag.String("pidfile", "", "write the process id here (for the agent's SIGHUP reload hook)")
		addrFile    = flag.String("addr-file", "", "write the bound address here once listening (useful with port 0)")
		watch       = flag.Duration("watch", 0, "also poll the current link at this interval and reload on change (0 = off)")
		checkABI    = flag.String("check-abi", "", "check a release directory against this host's ABI, print the result and exit")
		printABI    = flag.Bool("abi", false, "print this host's ABI facts as JSON and exit")
		restartAt   = flag.Int("restart-after", 16, "report restart_recommended on /health once this many plugin versions are mapped (Go never unloads a plugin; 0 = never)")
	)
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)
	log.SetPrefix("gamehost: ")

	abi, err := LoadHostABI()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gamehost:", err)
		return 2
	}
	if *printABI {
		out, _ := json.MarshalIndent(abi, "", "  ")
		fmt.Println(string(out))
		return 0
	}
	if *checkABI != "" {
		facts, err := CheckRelease(*checkABI, *name, abi)
		for _, w := range facts.Warnings {
			fmt.Fprintln(os.Stderr, "gamehost: warning:", w)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "gamehost:", err)
			return 1
		}
		fmt.Printf("ABI ok: %s %s (plugin path %s) matches this host (%s, %d shared packages, shared modules %v)\n",
			facts.Name, facts.Version, facts.PluginPath, abi.GoVersion, facts.SharedPkgs, facts.SharedMods)
		return 0
	}
	if *current == "" {
		fmt.Fprintln(os.Stderr, "gamehost: -current is required (or use -check-abi / -abi)")
		return 2
	}

	h := NewHost(*name, *current, abi)
	h.restartAt = *restartAt
	if _, err := h.Reload("start-up"); err != nil {
		log.Printf("starting without game logic: %v", err)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Print(err)
		return 2
	}
	srv := h.Server(h.Mux(*adminListen == ""))
	servers := []*http.Server{srv}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if *adminListen != "" {
		aln, err := net.Listen("tcp", *adminListen)
		if err != nil {
			log.Print(err)
			return 2
		}
		mux := http.NewServeMux()
		h.adminRoutes(mux)
		mux.HandleFunc("/health", h.handleHealth)
		asrv := h.Server(mux)
		servers = append(servers, asrv)
		go func() { errc <- asrv.Serve(aln) }()
		log.Printf("admin on %s", aln.Addr())
	}
	log.Printf("serving on %s (pid %d)", ln.Addr(), os.Getpid())
	if *pidFile != "" {
		if err := writeFileAtomic(*pidFile, strconv.Itoa(os.Getpid())+"\n"); err != nil {
			log.Print(err)
			return 2
		}
		defer os.Remove(*pidFile)
	}
	if *addrFile != "" {
		if err := writeFileAtomic(*addrFile, ln.Addr().String()+"\n"); err != nil {
			log.Print(err)
			return 2
		}
	}

	stop := make(chan struct{})
	if *watch > 0 {
		go h.Watch(*watch, stop)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case err := <-errc:
			if !errors.Is(err, http.ErrServerClosed) {
				log.Print(err)
				return 1
			}
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				go h.Reload("SIGHUP")
				continue
			}
			log.Printf("%v: shutting down", sig)
			close(stop)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			for _, s := range servers {
				_ = s.Shutdown(ctx)
			}
			cancel()
			return 0
		}
	}
}

func writeFileAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
