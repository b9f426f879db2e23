package caddymodule

import (
	"fmt"
	"slices"
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
	seen, err := parseBlock(d, "subdirective", h, subdirectives, nil)
	if err != nil {
		return err
	}
	if h.Issuer == "" {
		return d.Err("helseid: issuer is required")
	}
	if h.Audience == "" {
		return d.Err("helseid: audience is required")
	}
	if err := h.checkAttestOptions(); err != nil {
		tok, ok := seen["attest_max_age"]
		if !ok {
			tok = seen["purposes"]
		}
		return fmt.Errorf("helseid: %w, at %s:%d", err, tok.File, tok.Line)
	}
	return h.checkResourceMetadata()
}

// parsers are the parsers of a block's subdirectives, by name: each reads
// its arguments (and any block of its own) into the config.
type parsers[T any] map[string]func(*T, *caddyfile.Dispenser) error

// parseBlock reads the block that follows at d into dst, each subdirective
// by its parser and none twice. what names them in errors ("subdirective",
// "redis option"); alias maps a second spelling to the name it stands for,
// so that the two count as one. It returns where each was read (by the
// name an alias stands for), for the errors found once the whole block is
// known.
func parseBlock[T any](d *caddyfile.Dispenser, what string, dst *T, ps parsers[T], alias map[string]string) (map[string]caddyfile.Token, error) {
	seen := map[string]caddyfile.Token{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		key := name
		if a, ok := alias[name]; ok {
			key = a
		}
		if _, dup := seen[key]; dup {
			return nil, d.Errf("duplicate %s %q", what, name)
		}
		seen[key] = d.Token()
		parse, ok := ps[name]
		if !ok {
			return nil, d.Errf("unknown %s %q", what, name)
		}
		if err := parse(dst, d); err != nil {
			return nil, err
		}
	}
	return seen, nil
}

// dispenser shortens the parser tables' lines.
type dispenser = caddyfile.Dispenser

// subdirectives are the parsers of the helseid block.
var subdirectives = parsers[Handler]{
	"issuer":             func(h *Handler, d *dispenser) error { return h.pinnedURL(d, &h.Issuer) },
	"jwks_url":           func(h *Handler, d *dispenser) error { return h.pinnedURL(d, &h.JWKSURL) },
	"audience":           func(h *Handler, d *dispenser) error { return oneArg(d, &h.Audience) },
	"single_audience":    func(h *Handler, d *dispenser) error { return flag(d, &h.SingleAudience) },
	"scopes":             func(h *Handler, d *dispenser) error { return someArgs(d, &h.Scopes, nil) },
	"token_types":        func(h *Handler, d *dispenser) error { return someArgs(d, &h.TokenTypes, nil) },
	"algorithms":         func(h *Handler, d *dispenser) error { return someArgs(d, &h.Algorithms, authz.CheckAlgorithm) },
	"dpop_algorithms":    func(h *Handler, d *dispenser) error { return someArgs(d, &h.DPoPAlgorithms, authz.CheckAlgorithm) },
	"clock_skew":         func(h *Handler, d *dispenser) error { return duration(d, &h.ClockSkew) },
	"dpop_max_age":       func(h *Handler, d *dispenser) error { return duration(d, &h.DPoPMaxAge) },
	"dpop_future_skew":   func(h *Handler, d *dispenser) error { return duration(d, &h.DPoPFutureSkew) },
	"dpop":               func(h *Handler, d *dispenser) error { return oneOf(d, &h.DPoP, "required", "optional") },
	"dpop_nonce":         func(h *Handler, d *dispenser) error { return checkedArg(d, &h.DPoPNonce, checkNonceSecret) },
	"public_origin":      func(h *Handler, d *dispenser) error { return checkedArg(d, &h.PublicOrigin, authz.CheckOrigin) },
	"token_kind":         func(h *Handler, d *dispenser) error { return oneOf(d, &h.TokenKind, "user", "machine", "any") },
	"min_security_level": (*Handler).unmarshalSecurityLevel,
	"require_hpr":        func(h *Handler, d *dispenser) error { return flag(d, &h.RequireHPR) },
	"attest":             func(h *Handler, d *dispenser) error { return oneOf(d, &h.Attest, "required", "optional") },
	"attest_max_age":     func(h *Handler, d *dispenser) error { return duration(d, &h.AttestMaxAge) },
	"purposes":           (*Handler).unmarshalPurposes,
	"redis":              (*Handler).unmarshalRedis,
	"forward_token":      (*Handler).unmarshalForwardToken,
	"membership":         (*Handler).unmarshalMembership,
	"resource_metadata":  (*Handler).unmarshalResourceMetadata,
	"route":              (*Handler).unmarshalRoute,
	"on_store_error": func(h *Handler, d *dispenser) error {
		return checkedArg(d, &h.OnStoreError, written("on_store_error", cache.ValidateFallbackMode))
	},
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

// unmarshalSecurityLevel reads min_security_level <1-4>.
func (h *Handler) unmarshalSecurityLevel(d *caddyfile.Dispenser) error {
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
}

// unmarshalPurposes reads purposes <code...>, each code once.
func (h *Handler) unmarshalPurposes(d *caddyfile.Dispenser) error {
	if err := someArgs(d, &h.Purposes, authz.CheckPurpose); err != nil {
		return err
	}
	for i, code := range h.Purposes {
		if slices.Contains(h.Purposes[:i], code) {
			return d.Errf("purposes: %q is named twice", code)
		}
	}
	return nil
}

// unmarshalForwardToken reads forward_token on|off.
func (h *Handler) unmarshalForwardToken(d *caddyfile.Dispenser) error {
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
}

// unmarshalRoute reads route <name>. A placeholder is refused: the name is
// a metrics label, fixed by the config.
func (h *Handler) unmarshalRoute(d *caddyfile.Dispenser) error {
	if err := oneArg(d, &h.Route); err != nil {
		return err
	}
	if err := checkRoute(h.Route); err != nil {
		return d.Errf("%v (a name for the API, never a path)", err)
	}
	return nil
}

// unmarshalRedis reads redis none | <url> | [<url>] { … }.
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
	if _, err := parseBlock(d, "redis option", r, redisOptions, nil); err != nil {
		return err
	}
	return checkRedisTarget(d, r)
}

// redisOptions are the parsers of the redis block.
var redisOptions = parsers[cache.RedisConfig]{
	"addrs":       func(r *cache.RedisConfig, d *dispenser) error { return someArgs(d, &r.Addrs, nil) },
	"master_name": func(r *cache.RedisConfig, d *dispenser) error { return oneArg(d, &r.MasterName) },
	"username":    func(r *cache.RedisConfig, d *dispenser) error { return oneArg(d, &r.Username) },
	"password":    func(r *cache.RedisConfig, d *dispenser) error { return oneArg(d, &r.Password) },
	"db":          unmarshalRedisDB,
	"tls":         func(r *cache.RedisConfig, d *dispenser) error { return flag(d, &r.TLS) },
	"key_prefix":  func(r *cache.RedisConfig, d *dispenser) error { return oneArg(d, &r.KeyPrefix) },
}

// unmarshalRedisDB reads db <n>.
func unmarshalRedisDB(r *cache.RedisConfig, d *caddyfile.Dispenser) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return d.Errf("redis db must be a non-negative number, not %q", s)
	}
	r.DB = n
	return nil
}

// checkRedisTarget checks, once the redis block is read, that it names one
// target: a URL or addrs.
func checkRedisTarget(d *caddyfile.Dispenser, r *cache.RedisConfig) error {
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
	return checkedArg(d, dst, func(s string) error { return authz.CheckURL(name, s) })
}

// written wraps the rule of a setting whose empty value means "the default"
// (as the JSON config's omitted field does): in the Caddyfile the
// subdirective is written to set it, so an empty value ("") is a mistake,
// refused rather than read as the default.
func written(name string, check func(string) error) func(string) error {
	return func(s string) error {
		if s == "" {
			return fmt.Errorf("%s needs a value", name)
		}
		return check(s)
	}
}

// checkedArg reads exactly one argument and, unless it holds a placeholder
// (checked at Provision, once resolved), checks it with check: the rule the
// JSON config is held to as well.
func checkedArg(d *caddyfile.Dispenser, dst *string, check func(string) error) error {
	if err := oneArg(d, dst); err != nil {
		return err
	}
	if !hasPlaceholder(*dst) {
		if err := check(*dst); err != nil {
			return d.WrapErr(err)
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
