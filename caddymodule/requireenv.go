package caddymodule

import (
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption(requireEnvOption, parseRequireEnvOption)
}

// requireEnvOption is the global option that makes environment variables
// required when the Caddyfile is adapted:
//
//	{
//		require_env <NAME...>
//	}
//
// A named variable that is unset or empty is an error at the option's line
// that names every such variable. {$NAME} without a default expands to
// nothing, so without this a Caddyfile adapted in a shell that lacks its
// variables (caddy reload from an operator's terminal) loads a config with
// holes in it, or with whatever defaults the file carries.
//
// The check runs where the Caddyfile is adapted: in the CLI for run, adapt,
// validate and reload --config (a failed reload posts nothing, so the running
// config stays), and in the server for POST /load with a Caddyfile body. It
// leaves nothing in the JSON config. Global options are evaluated in order,
// so it comes first in the block: an option before it that reads a missing
// variable fails on its own terms. {env.NAME} placeholders are read by the
// server at Provision and are not this option's business.
const requireEnvOption = "require_env"

func parseRequireEnvOption(d *caddyfile.Dispenser, existing any) (any, error) {
	d.Next() // the option name
	names, _ := existing.([]string)
	var missing []string
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	for {
		name := d.Val()
		if !validEnvName(name) {
			return nil, d.Errf("require_env: %q is not an environment variable name", name)
		}
		names = append(names, name)
		// Set but empty counts as missing: {$NAME} expands to nothing either way.
		if os.Getenv(name) == "" {
			missing = append(missing, name)
		}
		if !d.NextArg() {
			break
		}
	}
	if d.NextBlock(d.Nesting()) {
		return nil, d.Err("require_env takes no block")
	}
	switch len(missing) {
	case 0:
		return names, nil
	case 1:
		return nil, d.Errf("require_env: environment variable %s is not set (or empty); this config takes it from the environment and has no default", missing[0])
	default:
		return nil, d.Errf("require_env: environment variables %s are not set (or empty); this config takes them from the environment and has no defaults", strings.Join(missing, ", "))
	}
}

// validEnvName reports whether s is a portable environment variable name:
// letters, digits and underscores, not starting with a digit.
func validEnvName(s string) bool {
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
