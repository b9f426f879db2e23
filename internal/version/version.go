// Package version says which helsegate and which Caddy a binary is.
package version

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/caddyserver/caddy/v2"
)

// ModulePath is helsegate's Go module.
const ModulePath = "github.com/helsegate/helsegate"

// version is set at link time by make build (git describe):
//
//	-ldflags "-X github.com/helsegate/helsegate/internal/version.version=v0.1.0"
var version string

// Helsegate returns helsegate's version: the one set at link time, else the
// module's from the build info (a dependency's version in an xcaddy build,
// the main module's in `go build` or `go install …@version`), else
// "unknown". A local checkout built without make reads "(devel)".
func Helsegate() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) string {
	for _, dep := range bi.Deps {
		if dep.Path != ModulePath {
			continue
		}
		v := dep.Version
		if dep.Replace != nil {
			// xcaddy --replace github.com/helsegate/helsegate=<checkout>: a
			// replace without a version.
			v += " => " + dep.Replace.Path
			if dep.Replace.Version != "" {
				v += "@" + dep.Replace.Version
			}
		}
		return v
	}
	if bi.Main.Path == ModulePath && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "unknown"
}

// Print writes what `helsegate version` prints: helsegate's version, then
// Caddy's (as `caddy version` prints it) and the Go toolchain's.
func Print(w io.Writer) {
	_, caddyFull := caddy.Version()
	fmt.Fprintf(w, "helsegate %s\n", Helsegate())
	fmt.Fprintf(w, "caddy %s\n", caddyFull)
	fmt.Fprintf(w, "go %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
