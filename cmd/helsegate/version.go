package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"reflect"
	"strings"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/helsegate/helsegate/internal/version"
)

// Caddy's `version` prints Caddy's version alone, and its commands cannot be
// replaced (caddycmd.RegisterCommand panics on a taken name), so main takes
// these two before Caddy sees them.

// runVersion answers `helsegate version`: helsegate's version, then Caddy's.
func runVersion() { version.Print(os.Stdout) }

// runListModules runs Caddy's list-modules and adds helsegate's version and
// module path to its modules. Caddy looks a module's version up among the
// build's dependencies; helsegate is the main module of its own build, not
// a dependency, so Caddy prints its modules bare. Annotating Caddy's output
// keeps every flag and format of the command without copying it. (An xcaddy
// build has Caddy's own main, and helsegate among the dependencies: there
// Caddy prints the version itself.)
func runListModules(args []string) {
	r, w, err := os.Pipe()
	if err != nil {
		caddycmd.Main()
		return
	}
	stdout := os.Stdout
	os.Stdout = w
	out := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		out <- b
	}()
	caddycmd.Main() // returns on success; on failure it exits, and the error is on stderr
	os.Stdout = stdout
	_ = w.Close()
	_, _ = stdout.Write(annotateModules(<-out, ownModules(), args, version.Helsegate()))
}

// ownModules lists the IDs of the Caddy modules helsegate's packages register.
func ownModules() map[string]bool {
	own := map[string]bool{}
	for _, id := range caddy.Modules() {
		info, err := caddy.GetModule(id)
		if err != nil {
			continue
		}
		t := reflect.TypeOf(info.New())
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if p := t.PkgPath(); p == version.ModulePath || strings.HasPrefix(p, version.ModulePath+"/") {
			own[id] = true
		}
	}
	return own
}

// annotateModules adds v (with --versions) and the module path (with
// --packages) to the lines of list-modules' text output that name one of
// own, or the version and package_url fields to its --json output.
func annotateModules(out []byte, own map[string]bool, args []string, v string) []byte {
	flag := func(name string) bool {
		for _, a := range args {
			if a == "--"+name || a == "-"+name || a == "--"+name+"=true" {
				return true
			}
		}
		return false
	}
	if flag("json") {
		var mods []map[string]any
		if err := json.Unmarshal(out, &mods); err != nil {
			return out
		}
		for _, m := range mods {
			if id, _ := m["module_name"].(string); own[id] {
				m["version"], m["package_url"] = v, version.ModulePath
			}
		}
		b, err := json.MarshalIndent(mods, "", "  ")
		if err != nil {
			return out
		}
		return append(b, '\n')
	}
	versions, packages := flag("versions"), flag("packages")
	if !versions && !packages {
		return out
	}
	lines := bytes.Split(out, []byte("\n"))
	for i, l := range lines {
		if !own[string(l)] {
			continue
		}
		if versions {
			l = append(l, " "+v...)
		}
		if packages {
			l = append(l, " "+version.ModulePath...)
		}
		lines[i] = l
	}
	return bytes.Join(lines, []byte("\n"))
}
