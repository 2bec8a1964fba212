package main

// The ABI check: decide, without loading anything, whether plugin.Open would accept a
// release's plugin. A failed plugin.Open is not harmless (the .so stays mapped and its module
// is left marked bad; see golang/go#32095), so the host never tries a load that can fail for
// an ABI reason.
//
// Two layers, both must pass:
//
//  1. The signed manifest's `abi` facts (written by `hotrelease build`): Go version,
//     GOOS/GOARCH, cgo, build mode, plugin path and the versions of the modules the plugin
//     shares with this host (the host knows its own from runtime/debug.ReadBuildInfo).
//  2. The plugin file itself, read as ELF data (debug/elf; nothing is executed): for every
//     package the plugin shares with the host, the package fingerprint the Go linker stores
//     in `go.link.pkghashbytes.<import path>` must equal the host's. This is exactly the
//     comparison the runtime makes inside plugin.Open, so a plugin that passes it cannot fail
//     with "plugin was built with a different version of package ...". It also reads the
//     plugin path from `go.link.thispluginpath`.

import (
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
)

const pkgHashPrefix = "go.link.pkghashbytes."

// HostABI is what this host binary was built with.
type HostABI struct {
	GoVersion   string            `json:"go_version"`
	GOOS        string            `json:"goos"`
	GOARCH      string            `json:"goarch"`
	MainModule  string            `json:"main_module"`
	Modules     map[string]string `json:"modules"`
	Settings    map[string]string `json:"settings"`
	PkgHashes   map[string]string `json:"package_hashes"`
	HashesError string            `json:"package_hashes_error,omitempty"`
}

// ReleaseFacts is what the check learned about a release (also printed by -check-abi).
type ReleaseFacts struct {
	Release      string            `json:"release"`
	Name         string            `json:"name"`
	Version      string            `json:"version"`
	PluginFile   string            `json:"plugin_file"`
	PluginPath   string            `json:"plugin_path"`
	SharedPkgs   int               `json:"shared_packages"`
	SharedMods   map[string]string `json:"shared_modules"`
	ManifestABI  map[string]any    `json:"manifest_abi"`
	Warnings     []string          `json:"warnings,omitempty"`
	pluginHashes map[string]string
}

// ABIError lists every reason a release was refused.
type ABIError struct {
	Release  string
	Problems []string
}

func (e *ABIError) Error() string {
	return fmt.Sprintf("ABI check refused %s: %s", e.Release, strings.Join(e.Problems, "; "))
}

// LoadHostABI describes the running binary.
func LoadHostABI() (*HostABI, error) {
	h := &HostABI{GoVersion: runtime.Version(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH,
		Modules: map[string]string{}, Settings: map[string]string{}}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil, errors.New("the host binary has no build info (build it with `go build` in module mode)")
	}
	h.MainModule = bi.Main.Path
	for _, dep := range bi.Deps {
		h.Modules[dep.Path] = dep.Version
	}
	for _, s := range bi.Settings {
		h.Settings[s.Key] = s.Value
	}
	// /proc/self/exe stays readable even if the binary on disk was replaced or deleted.
	exe := "/proc/self/exe"
	if _, err := os.Stat(exe); err != nil {
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	hashes, err := elfPkgHashes(exe)
	if err != nil {
		h.HashesError = err.Error()
	} else if len(hashes) == 0 {
		h.HashesError = "the host binary has no " + pkgHashPrefix + "* symbols (stripped with -s?)"
	}
	h.PkgHashes = hashes
	return h, nil
}

type elfSyms struct {
	file *elf.File
	syms []elf.Symbol
}

func openELF(path string) (*elfSyms, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	syms, err := f.Symbols()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: no symbol table (%v); do not strip Go plugins or the host", path, err)
	}
	return &elfSyms{f, syms}, nil
}

func (e *elfSyms) data(s elf.Symbol) ([]byte, error) {
	if int(s.Section) <= 0 || int(s.Section) >= len(e.file.Sections) {
		return nil, fmt.Errorf("symbol %s has no section", s.Name)
	}
	sect := e.file.Sections[s.Section]
	if sect.Type == elf.SHT_NOBITS || s.Value < sect.Addr || s.Value+s.Size > sect.Addr+sect.Size {
		return nil, fmt.Errorf("symbol %s lies outside its section", s.Name)
	}
	buf := make([]byte, s.Size)
	if _, err := sect.ReadAt(buf, int64(s.Value-sect.Addr)); err != nil {
		return nil, err
	}
	return buf, nil
}

func elfPkgHashes(path string) (map[string]string, error) {
	e, err := openELF(path)
	if err != nil {
		return nil, err
	}
	defer e.file.Close()
	return e.pkgHashes()
}

func (e *elfSyms) pkgHashes() (map[string]string, error) {
	out := map[string]string{}
	for _, s := range e.syms {
		if !strings.HasPrefix(s.Name, pkgHashPrefix) {
			continue
		}
		b, err := e.data(s)
		if err != nil {
			return nil, err
		}
		out[strings.TrimPrefix(s.Name, pkgHashPrefix)] = hex.EncodeToString(b)
	}
	return out, nil
}

func (e *elfSyms) stringSym(name string) (string, bool) {
	for _, s := range e.syms {
		if s.Name == name {
			if b, err := e.data(s); err == nil {
				return strings.TrimRight(string(b), "\x00"), true
			}
		}
	}
	return "", false
}

// pathToPrefix mirrors how the Go toolchain escapes an import path in symbol names
// (cmd/internal/objabi.PathToPrefix): control bytes, '%', '"', DEL and non-ASCII anywhere,
// and '.' after the last slash become %xx.
func pathToPrefix(s string) string {
	slash := strings.LastIndex(s, "/")
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || (c == '.' && i > slash) || c == '%' || c == '"' || c >= 0x7F {
			fmt.Fprintf(&b, "%%%02x", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

var elfMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "386": elf.EM_386, "arm": elf.EM_ARM,
	"ppc64le": elf.EM_PPC64, "s390x": elf.EM_S390, "riscv64": elf.EM_RISCV,
}

type manifestDoc struct {
	Name    string         `json:"name"`
	Version string         `json:"version"`
	Kind    string         `json:"kind"`
	ABI     map[string]any `json:"abi"`
}

func factString(abi map[string]any, key string) (string, bool) {
	v, ok := abi[key]
	if !ok || v == nil {
		return "", false
	}
	s, ok := v.(string)
	if !ok {
		return fmt.Sprint(v), true
	}
	return s, true
}

// CheckRelease runs both layers of the check against releaseDir (which holds manifest.json
// and files/<name>.so). It never opens the plugin with the dynamic loader.
func CheckRelease(releaseDir, name string, host *HostABI) (*ReleaseFacts, error) {
	facts := &ReleaseFacts{Release: releaseDir, SharedMods: map[string]string{}}
	refuse := func(format string, args ...any) *ABIError {
		return &ABIError{Release: releaseDir, Problems: []string{fmt.Sprintf(format, args...)}}
	}
	raw, err := os.ReadFile(filepath.Join(releaseDir, "manifest.json"))
	if err != nil {
		return facts, refuse("cannot read manifest.json: %v", err)
	}
	var m manifestDoc
	if err := json.Unmarshal(raw, &m); err != nil {
		return facts, refuse("manifest.json is not valid JSON: %v", err)
	}
	facts.Name, facts.Version, facts.ManifestABI = m.Name, m.Version, m.ABI
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	// --- layer 1: the manifest's recorded facts ---------------------------------------------
	if m.Name != name {
		add("manifest name %q is not this host's plugin %q", m.Name, name)
	}
	if m.Kind != "go" {
		add("manifest kind %q is not \"go\"", m.Kind)
	}
	if m.Version == "" {
		add("manifest has no version")
	}
	abi := m.ABI
	if abi == nil {
		abi = map[string]any{}
	}
	if v, ok := factString(abi, "go_version"); ok {
		if v != host.GoVersion {
			add("Go version: plugin built with %s, host built with %s", v, host.GoVersion)
		}
	} else {
		facts.Warnings = append(facts.Warnings, "manifest abi records no go_version; "+
			"relying on the package fingerprints (which include the runtime's)")
	}
	for key, want := range map[string]string{"goos": host.GOOS, "goarch": host.GOARCH,
		"cgo_enabled": "1", "buildmode": "plugin"} {
		if v, ok := factString(abi, key); ok && v != want {
			add("%s: plugin has %s, host needs %s", key, v, want)
		}
	}
	if v, ok := factString(abi, "trimpath"); ok && host.Settings["-trimpath"] != "" &&
		v != host.Settings["-trimpath"] {
		add("-trimpath: plugin %s, host %s (every standard package would differ)", v,
			host.Settings["-trimpath"])
	}
	if mods, ok := abi["modules"].(map[string]any); ok {
		paths := make([]string, 0, len(mods))
		for p := range mods {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		for _, p := range paths {
			hostVer, shared := host.Modules[p]
			if !shared {
				continue
			}
			pv := fmt.Sprint(mods[p])
			facts.SharedMods[p] = pv
			if pv != hostVer {
				add("shared module %s: plugin built with %s, host has %s", p, pv, hostVer)
			}
		}
	}
	manifestPath, hasPath := factString(abi, "plugin_path")
	if !hasPath {
		add("manifest abi has no plugin_path")
	}

	// --- layer 2: the plugin file itself -----------------------------------------------------
	so := filepath.Join(releaseDir, "files", name+".so")
	facts.PluginFile = so
	if st, err := os.Lstat(so); err != nil {
		add("plugin file: %v", err)
		return facts, &ABIError{releaseDir, problems}
	} else if !st.Mode().IsRegular() {
		add("plugin file %s is not a regular file", so)
		return facts, &ABIError{releaseDir, problems}
	}
	e, err := openELF(so)
	if err != nil {
		add("plugin file: %v", err)
		return facts, &ABIError{releaseDir, problems}
	}
	defer e.file.Close()
	if e.file.Type != elf.ET_DYN {
		add("plugin file is ELF type %v, not a shared object", e.file.Type)
	}
	if want, ok := elfMachine[host.GOARCH]; ok && e.file.Machine != want {
		add("plugin file is for %v, host is %s", e.file.Machine, host.GOARCH)
	}
	if pp, ok := e.stringSym("go.link.thispluginpath"); ok {
		facts.PluginPath = pp
		if hasPath {
			if pp != pathToPrefix(manifestPath) {
				add("plugin path in the file is %q but the manifest says %q", pp, manifestPath)
			} else {
				facts.PluginPath = manifestPath
			}
		}
		if v, ok := e.stringSym(pp + ".Version.str"); ok && m.Version != "" && v != m.Version {
			add("plugin file stamps version %q but the manifest says %q", v, m.Version)
		}
	} else {
		add("plugin file has no go.link.thispluginpath symbol: not a Go plugin (-buildmode=plugin)?")
	}
	ph, err := e.pkgHashes()
	if err != nil {
		add("plugin package fingerprints: %v", err)
	}
	facts.pluginHashes = ph
	// If the manifest records the fingerprints too (see docs/go-hot-reload.md), they bind the
	// signed manifest to this very file.
	if mh, ok := abi["package_hashes"].(map[string]any); ok && err == nil {
		for pkg, want := range mh {
			if got, ok := ph[pkg]; !ok || got != fmt.Sprint(want) {
				add("package fingerprint of %s in the plugin file does not match the manifest", pkg)
				break
			}
		}
	}
	switch {
	case host.HashesError != "":
		add("cannot verify package fingerprints: %s", host.HashesError)
	case len(ph) == 0:
		add("plugin file has no package fingerprints (%s*)", pkgHashPrefix)
	default:
		var differ []string
		for pkg, h := range ph {
			hh, shared := host.PkgHashes[pkg]
			if !shared {
				continue
			}
			facts.SharedPkgs++
			if hh != h {
				differ = append(differ, pkg)
			}
		}
		sort.Strings(differ)
		if len(differ) > 0 {
			more := ""
			if len(differ) > 8 {
				more = fmt.Sprintf(" and %d more", len(differ)-8)
				differ = differ[:8]
			}
			add("plugin was built with a different version of package %s%s "+
				"(package fingerprints differ from the host's; rebuild the plugin with the "+
				"host's Go toolchain, flags and shared module versions)",
				strings.Join(differ, ", "), more)
		}
		if facts.SharedPkgs == 0 {
			add("plugin shares no package with the host (not built for this host?)")
		}
	}
	if len(problems) > 0 {
		return facts, &ABIError{releaseDir, problems}
	}
	return facts, nil
}
