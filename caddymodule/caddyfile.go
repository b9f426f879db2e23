package caddymodule

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("helseid", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("helseid", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterGlobalOption(environmentOption, parseEnvironmentOption)
}

// environmentOption is the global option that declares the HelseID
// environment of every helseid handler in the Caddyfile:
//
//	{
//		helseid_environment production|test
//	}
//
// Declared, an issuer or jwks_url on a HelseID host of the other environment
// is an error at its line. A global option, not a subdirective: one
// declaration covers every route, and a route added later cannot forget it.
const environmentOption = "helseid_environment"

func parseEnvironmentOption(d *caddyfile.Dispenser, _ any) (any, error) {
	d.Next() // the option name
	var env string
	if err := oneOf(d, &env, string(authz.EnvProduction), string(authz.EnvTest)); err != nil {
		return nil, err
	}
	return env, nil
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var m Handler
	if env, ok := h.Option(environmentOption).(string); ok {
		m.Environment = env
	}
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return &m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	helseid {
//		issuer            <url>
//		jwks_url          <url>
//		audience          <aud>
//		single_audience
//		scopes            <scope...>
//		token_types       <typ...>
//		algorithms        <alg...>
//		clock_skew        <duration>
//		dpop              required|optional
//		dpop_algorithms   <alg...>
//		dpop_max_age      <duration>
//		dpop_future_skew  <duration>
//		dpop_nonce        <secret>
//		public_origin     <scheme://host[:port]>
//		token_kind        user|machine|any
//		min_security_level <1-4>
//		require_hpr
//		attest            required|optional
//		attest_max_age    <duration>
//		purposes          <code...>
//		redis             none | <url> | redis [<url>] { addrs <host:port...>; master_name <name>; username <u>; password <p>; db <n>; tls; key_prefix <p> }
//		on_store_error    local|deny
//		forward_token     on|off
//		resource_metadata [<resource>]
//		route             <name>
//		membership <service> { … }   (see unmarshalMembership)
//	}
//
// issuer and audience are required. Every error names the file and line.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]caddyfile.Token{} // where each subdirective was read
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if _, dup := seen[name]; dup {
			return d.Errf("duplicate subdirective %q", name)
		}
		seen[name] = d.Token()
		if err := h.unmarshalSubdirective(d, name); err != nil {
			return err
		}
	}
	if h.Issuer == "" {
		return d.Err("helseid: issuer is required")
	}
	if h.Audience == "" {
		return d.Err("helseid: audience is required")
	}
	for _, name := range []string{"attest_max_age", "purposes"} {
		if tok, ok := seen[name]; ok && h.Attest == "" {
			return fmt.Errorf("helseid: attest_max_age and purposes need attest required or optional, at %s:%d", tok.File, tok.Line)
		}
	}
	return h.checkResourceMetadata()
}

// unmarshalResourceMetadata reads resource_metadata [<resource>]: an
// absolute URL, or a path on public_origin (default: public_origin itself).
func (h *Handler) unmarshalResourceMetadata(d *caddyfile.Dispenser) error {
	h.ResourceMetadata = &ResourceMetadata{}
	h.resourceMetadataAt = d.Token()
	if !d.NextArg() {
		return nil
	}
	h.ResourceMetadata.Resource = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// checkResourceMetadata checks resource_metadata once the whole block is
// read (public_origin may come after it); an error names its line.
func (h *Handler) checkResourceMetadata() error {
	if h.ResourceMetadata == nil || hasPlaceholder(h.ResourceMetadata.Resource) || hasPlaceholder(h.PublicOrigin) {
		return nil
	}
	if _, err := resourceURL(h.ResourceMetadata, h.PublicOrigin); err != nil {
		tok := h.resourceMetadataAt
		return fmt.Errorf("%w, at %s:%d", err, tok.File, tok.Line)
	}
	return nil
}

func (h *Handler) unmarshalSubdirective(d *caddyfile.Dispenser, name string) error {
	switch name {
	case "issuer":
		return h.pinnedURL(d, &h.Issuer)
	case "jwks_url":
		return h.pinnedURL(d, &h.JWKSURL)
	case "audience":
		return oneArg(d, &h.Audience)
	case "single_audience":
		return flag(d, &h.SingleAudience)
	case "scopes":
		return someArgs(d, &h.Scopes, nil)
	case "token_types":
		return someArgs(d, &h.TokenTypes, nil)
	case "algorithms":
		return someArgs(d, &h.Algorithms, authz.CheckAlgorithm)
	case "dpop_algorithms":
		return someArgs(d, &h.DPoPAlgorithms, authz.CheckAlgorithm)
	case "clock_skew":
		return duration(d, &h.ClockSkew)
	case "dpop_max_age":
		return duration(d, &h.DPoPMaxAge)
	case "dpop_future_skew":
		return duration(d, &h.DPoPFutureSkew)
	case "dpop":
		return oneOf(d, &h.DPoP, "required", "optional")
	case "dpop_nonce":
		if err := oneArg(d, &h.DPoPNonce); err != nil {
			return err
		}
		if !hasPlaceholder(h.DPoPNonce) && len(h.DPoPNonce) < 16 {
			return d.Err("dpop_nonce secret must be at least 16 characters")
		}
		return nil
	case "public_origin":
		if err := oneArg(d, &h.PublicOrigin); err != nil {
			return err
		}
		if !hasPlaceholder(h.PublicOrigin) {
			if err := authz.CheckOrigin(h.PublicOrigin); err != nil {
				return d.Err(err.Error())
			}
		}
		return nil
	case "token_kind":
		return oneOf(d, &h.TokenKind, "user", "machine", "any")
	case "min_security_level":
		var s string
		if err := oneArg(d, &s); err != nil {
			return err
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 4 {
			return d.Errf("min_security_level must be 1, 2, 3 or 4, not %q", s)
		}
		h.MinSecurityLevel = n
		return nil
	case "require_hpr":
		return flag(d, &h.RequireHPR)
	case "attest":
		return oneOf(d, &h.Attest, "required", "optional")
	case "attest_max_age":
		return duration(d, &h.AttestMaxAge)
	case "purposes":
		if err := someArgs(d, &h.Purposes, authz.CheckPurpose); err != nil {
			return err
		}
		for i, code := range h.Purposes {
			for _, prev := range h.Purposes[:i] {
				if code == prev {
					return d.Errf("purposes: %q is named twice", code)
				}
			}
		}
		return nil
	case "redis":
		return h.unmarshalRedis(d)
	case "on_store_error":
		return oneOf(d, &h.OnStoreError, "local", "deny")
	case "forward_token":
		var s string
		if err := oneOf(d, &s, "on", "off"); err != nil {
			return err
		}
		if hasPlaceholder(s) {
			// A JSON boolean: nothing is left to resolve it at Provision.
			return d.Errf("forward_token must be on or off, not a runtime placeholder (%q); {$VAR} substitutes the environment when the Caddyfile is adapted", s)
		}
		h.StripToken = s == "off"
		return nil
	case "membership":
		return h.unmarshalMembership(d)
	case "resource_metadata":
		return h.unmarshalResourceMetadata(d)
	case "route":
		if err := oneArg(d, &h.Route); err != nil {
			return err
		}
		if !validRoute.MatchString(h.Route) {
			return d.Errf("route %q must be 1 to 64 of a-z A-Z 0-9 _ . - (a name for the API, never a path)", h.Route)
		}
		return nil
	default:
		return d.Errf("unknown subdirective %q", name)
	}
}

func (h *Handler) unmarshalRedis(d *caddyfile.Dispenser) error {
	r := &cache.RedisConfig{}
	h.Redis = r
	if d.NextArg() {
		r.URL = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	if r.URL == "none" {
		// "redis none": the in-process store, spelled out so that a config can
		// take Redis from the environment ({$REDIS_URL:none}).
		h.Redis = nil
		if d.NextBlock(d.Nesting()) {
			return d.Err("redis none takes no options")
		}
		return nil
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("duplicate redis option %q", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "addrs":
			err = someArgs(d, &r.Addrs, nil)
		case "master_name":
			err = oneArg(d, &r.MasterName)
		case "username":
			err = oneArg(d, &r.Username)
		case "password":
			err = oneArg(d, &r.Password)
		case "db":
			var s string
			if err = oneArg(d, &s); err == nil {
				if r.DB, err = strconv.Atoi(s); err != nil || r.DB < 0 {
					return d.Errf("redis db must be a non-negative number, not %q", s)
				}
			}
		case "tls":
			err = flag(d, &r.TLS)
		case "key_prefix":
			err = oneArg(d, &r.KeyPrefix)
		default:
			return d.Errf("unknown redis option %q", name)
		}
		if err != nil {
			return err
		}
	}
	if r.URL == "" && len(r.Addrs) == 0 {
		return d.Err("redis needs a URL or addrs")
	}
	if r.URL != "" && len(r.Addrs) > 0 {
		return d.Err("redis takes a URL or addrs, not both")
	}
	if !hasPlaceholder(r.URL) && !anyPlaceholder(r.Addrs) {
		if _, err := r.UniversalOptions(); err != nil {
			return d.Err(err.Error())
		}
	}
	return nil
}

// pinnedURL reads one URL with oneURL and checks it against the declared
// environment (helseid_environment), so that the error names its line.
func (h *Handler) pinnedURL(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if err := oneURL(d, dst); err != nil {
		return err
	}
	if hasPlaceholder(*dst) || hasPlaceholder(h.Environment) {
		return nil // checked at Provision, once resolved
	}
	if err := authz.CheckEnvironment(authz.Environment(h.Environment), name, *dst); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// oneArg reads exactly one argument.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// oneURL reads one http(s) URL; https unless loopback.
func oneURL(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if err := oneArg(d, dst); err != nil {
		return err
	}
	if !hasPlaceholder(*dst) {
		if err := authz.CheckURL(name, *dst); err != nil {
			return d.Err(err.Error())
		}
	}
	return nil
}

// someArgs reads one or more arguments, each checked by check when not nil.
func someArgs(d *caddyfile.Dispenser, dst *[]string, check func(string) error) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	for _, a := range args {
		if check != nil && !hasPlaceholder(a) {
			if err := check(a); err != nil {
				return d.Err(err.Error())
			}
		}
	}
	*dst = args
	return nil
}

// oneOf reads one argument that must be one of the choices.
func oneOf(d *caddyfile.Dispenser, dst *string, choices ...string) error {
	name := d.Val()
	if err := oneArg(d, dst); err != nil {
		return err
	}
	if hasPlaceholder(*dst) {
		return nil
	}
	for _, c := range choices {
		if *dst == c {
			return nil
		}
	}
	return d.Errf("%s must be %s, not %q", name, strings.Join(choices, " or "), *dst)
}

// flag reads a subdirective that takes no argument.
func flag(d *caddyfile.Dispenser, dst *bool) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = true
	return nil
}

// duration reads one non-negative duration.
func duration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur <= 0 {
		return d.Errf("%s must be a positive duration, not %q", name, s)
	}
	*dst = caddy.Duration(dur)
	return nil
}

func hasPlaceholder(s string) bool { return strings.Contains(s, "{") }

func anyPlaceholder(list []string) bool {
	for _, s := range list {
		if hasPlaceholder(s) {
			return true
		}
	}
	return false
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
