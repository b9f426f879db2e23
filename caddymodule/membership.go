package caddymodule

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/helsegate/helsegate/authz"
)

// MembershipConfig is the membership block: after the token and proof pass,
// the caller's organization must be authorized for Service by the registry
// (Medlemstjenesten, through HTTP contract v1 or a JSON file).
type MembershipConfig struct {
	// The service the organization must be authorized for. Required.
	Service string `json:"service,omitempty"`
	// Base URL of the registry (HTTP contract v1). https unless loopback.
	// Exactly one of registry and file.
	Registry string `json:"registry,omitempty"`
	// Path of a JSON registry file, reloaded when it changes.
	File string `json:"file,omitempty"`
	// Sent to the registry as Authorization: Bearer.
	RegistryToken string `json:"registry_token,omitempty"`
	// Which org number must be authorized: "parent" (default), "child" or "both".
	Org string `json:"org,omitempty"`
	// How long a positive decision is cached. Default: 5m.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`
	// How long a negative decision is cached. Default: 1m.
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`
	// How long a last-known decision may be used while the registry is down. Default: 1h.
	StaleFor caddy.Duration `json:"stale_for,omitempty"`
	// Timeout of one registry call. Default: 2s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// unmarshalMembership parses
//
//	membership <service> {
//		registry <url> | registry file <path> | file <path>
//		registry_token <token>
//		org parent|child|both
//		cache_ttl <duration>
//		negative_ttl <duration>
//		stale_for <duration>
//		timeout <duration>
//	}
func (h *Handler) unmarshalMembership(d *caddyfile.Dispenser) error {
	m := &MembershipConfig{}
	h.Membership = m
	if err := oneArg(d, &m.Service); err != nil {
		return err
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		key := name
		if key == "file" {
			key = "registry"
		}
		if seen[key] {
			return d.Errf("duplicate membership option %q", name)
		}
		seen[key] = true
		var err error
		switch name {
		case "registry":
			args := d.RemainingArgs()
			switch {
			case len(args) == 1:
				m.Registry = args[0]
				if !hasPlaceholder(m.Registry) {
					if cerr := authz.CheckURL("registry", m.Registry); cerr != nil {
						return d.Err(cerr.Error())
					}
				}
			case len(args) == 2 && args[0] == "file":
				m.File = args[1]
			default:
				return d.ArgErr()
			}
		case "file":
			err = oneArg(d, &m.File)
		case "registry_token":
			err = oneArg(d, &m.RegistryToken)
		case "org":
			err = oneOf(d, &m.Org, "parent", "child", "both")
		case "cache_ttl":
			err = duration(d, &m.CacheTTL)
		case "negative_ttl":
			err = duration(d, &m.NegativeTTL)
		case "stale_for":
			err = duration(d, &m.StaleFor)
		case "timeout":
			err = duration(d, &m.Timeout)
		default:
			return d.Errf("unknown membership option %q", name)
		}
		if err != nil {
			return err
		}
	}
	if m.Registry == "" && m.File == "" {
		return d.Err("membership needs a registry <url> or a file <path>")
	}
	return nil
}
