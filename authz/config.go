package authz

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// DefaultAlgorithms are the asymmetric JWS algorithms HelseID advertises for
// access tokens and DPoP proofs (its discovery document's signing algorithms).
var DefaultAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}

// DefaultTokenTypes are the accepted access-token typ values (RFC 9068 §2.1 and
// HelseID's own rule that APIs accept JWT too), compared case-insensitively.
var DefaultTokenTypes = []string{"at+jwt", "application/at+jwt", "jwt"}

// Defaults for the durations of Config.
const (
	DefaultClockSkew      = 5 * time.Second
	DefaultDPoPMaxAge     = 15 * time.Second
	DefaultDPoPFutureSkew = 5 * time.Second
)

// DPoPMode says whether a route accepts Bearer tokens besides DPoP.
type DPoPMode string

// The DPoP modes.
const (
	// DPoPRequired accepts only the DPoP scheme with a proof.
	DPoPRequired DPoPMode = "required"
	// DPoPOptional also accepts a token WITHOUT cnf under the Bearer scheme;
	// a token with cnf must still come as DPoP (RFC 9449 §7.2).
	DPoPOptional DPoPMode = "optional"
)

// TokenKind is what kind of token a route accepts: a user token carries the
// pid claim, a machine (client credentials) token does not.
type TokenKind string

// The token kinds.
const (
	KindAny     TokenKind = "any"
	KindUser    TokenKind = "user"
	KindMachine TokenKind = "machine"
)

// Config is what a route demands of a token and its proof. NewVerifier fills
// in the zero values with the defaults above.
type Config struct {
	Issuer         string        // exact iss; https unless the host is loopback
	JWKSURL        string        // optional override of the discovered jwks_uri
	Audience       string        // required; aud must contain it
	SingleAudience bool          // aud must be exactly [Audience]
	Scopes         []string      // all required
	TokenTypes     []string      // accepted typ values (case-insensitive)
	Algorithms     []string      // accepted access-token algs
	ClockSkew      time.Duration // leeway for exp and nbf

	DPoP           DPoPMode
	DPoPAlgorithms []string
	DPoPMaxAge     time.Duration // oldest acceptable proof iat
	DPoPFutureSkew time.Duration // newest acceptable proof iat
	NonceSecret    []byte        // enables RFC 9449 §9 server nonces when set
	PublicOrigin   string        // scheme://host[:port] used to build the expected htu

	TokenKind        TokenKind
	MinSecurityLevel int // 0 = no requirement
	RequireHPR       bool

	// The trust-framework attest (ClaimAttest): not read when off.
	Attest       AttestMode
	AttestMaxAge time.Duration // oldest acceptable toa; default DefaultAttestMaxAge
	Purposes     []string      // accepted purpose_of_use codes; default DefaultPurposes
	// Environment, when declared, pins Issuer and JWKSURL to HelseID's hosts
	// of that environment (CheckEnvironment).
	Environment Environment
}

// withDefaults returns a copy of c with every zero value replaced by its default.
func (c Config) withDefaults() Config {
	if len(c.TokenTypes) == 0 {
		c.TokenTypes = DefaultTokenTypes
	}
	if len(c.Algorithms) == 0 {
		c.Algorithms = DefaultAlgorithms
	}
	if len(c.DPoPAlgorithms) == 0 {
		c.DPoPAlgorithms = DefaultAlgorithms
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = DefaultClockSkew
	}
	if c.DPoPMaxAge == 0 {
		c.DPoPMaxAge = DefaultDPoPMaxAge
	}
	if c.DPoPFutureSkew == 0 {
		c.DPoPFutureSkew = DefaultDPoPFutureSkew
	}
	if c.DPoP == "" {
		c.DPoP = DPoPRequired
	}
	if c.TokenKind == "" {
		c.TokenKind = KindAny
	}
	if c.AttestMaxAge == 0 {
		c.AttestMaxAge = DefaultAttestMaxAge
	}
	if len(c.Purposes) == 0 {
		c.Purposes = DefaultPurposes
	}
	return c
}

// Validate reports the first thing wrong with c, without touching the network.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := c.validateIssuer(); err != nil {
		return err
	}
	if c.Audience == "" {
		return errors.New("audience is required")
	}
	if err := c.validateAlgorithms(); err != nil {
		return err
	}
	if err := c.validatePolicy(); err != nil {
		return err
	}
	if c.PublicOrigin != "" {
		if err := CheckOrigin(c.PublicOrigin); err != nil {
			return err
		}
	}
	return c.validateAttest()
}

// validateIssuer checks the issuer and the jwks_url override: required and
// https (CheckURL), and of the declared environment (CheckEnvironment).
func (c Config) validateIssuer() error {
	if c.Issuer == "" {
		return errors.New("issuer is required")
	}
	if err := CheckURL("issuer", c.Issuer); err != nil {
		return err
	}
	if c.JWKSURL != "" {
		if err := CheckURL("jwks_url", c.JWKSURL); err != nil {
			return err
		}
	}
	if err := CheckEnvironment(c.Environment, "issuer", c.Issuer); err != nil {
		return err
	}
	if c.JWKSURL != "" {
		return CheckEnvironment(c.Environment, "jwks_url", c.JWKSURL)
	}
	return nil
}

// validateAlgorithms checks the algorithms of tokens and proofs
// (CheckAlgorithm) and the token types.
func (c Config) validateAlgorithms() error {
	for _, alg := range c.Algorithms {
		if err := CheckAlgorithm(alg); err != nil {
			return fmt.Errorf("algorithms: %w", err)
		}
	}
	for _, alg := range c.DPoPAlgorithms {
		if err := CheckAlgorithm(alg); err != nil {
			return fmt.Errorf("dpop_algorithms: %w", err)
		}
	}
	for _, typ := range c.TokenTypes {
		if typ == "" {
			return errors.New("token_types: empty type")
		}
	}
	return nil
}

// validatePolicy checks the durations, the DPoP mode, the token kind and
// the minimum security level.
func (c Config) validatePolicy() error {
	if c.ClockSkew < 0 || c.DPoPMaxAge < 0 || c.DPoPFutureSkew < 0 {
		return errors.New("durations must not be negative")
	}
	switch c.DPoP {
	case DPoPRequired, DPoPOptional:
	default:
		return fmt.Errorf("dpop must be required or optional, not %q", c.DPoP)
	}
	switch c.TokenKind {
	case KindAny, KindUser, KindMachine:
	default:
		return fmt.Errorf("token_kind must be user, machine or any, not %q", c.TokenKind)
	}
	if c.MinSecurityLevel < 0 || c.MinSecurityLevel > 4 {
		return fmt.Errorf("min_security_level must be 1 to 4, not %d", c.MinSecurityLevel)
	}
	return nil
}

// validateAttest checks the attest settings: a mode, a non-negative age, and
// purposes that are codes, each named once.
func (c Config) validateAttest() error {
	switch c.Attest {
	case AttestOff, AttestOptional, AttestRequired:
	default:
		return fmt.Errorf("attest must be required or optional, not %q", c.Attest)
	}
	if c.AttestMaxAge < 0 {
		return errors.New("attest_max_age must not be negative")
	}
	for i, code := range c.Purposes {
		if err := CheckPurpose(code); err != nil {
			return err
		}
		if contains(c.Purposes[:i], code) {
			return fmt.Errorf("purposes: %q is named twice", code)
		}
	}
	return nil
}

// CheckPurpose accepts a purpose_of_use code: a non-empty token of letters,
// digits, '-', '_' and '.' (the codes seen are TREAT, ETREAT, COC, BTG and
// an old "1").
func CheckPurpose(code string) error {
	if code == "" || len(code) > 64 {
		return fmt.Errorf("purposes: %q is not a purpose_of_use code", code)
	}
	for _, r := range code {
		if !('A' <= r && r <= 'Z' || 'a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("purposes: %q is not a purpose_of_use code", code)
		}
	}
	return nil
}

// CheckAlgorithm accepts only the asymmetric JWS algorithms this gateway can
// verify: never "none", never an HMAC algorithm (RFC 8725 §3.1, RFC 9449 §11.6).
func CheckAlgorithm(alg string) error {
	for _, a := range DefaultAlgorithms {
		if alg == a {
			return nil
		}
	}
	switch {
	case strings.EqualFold(alg, "none"):
		return errors.New(`algorithm "none" is never accepted`)
	case strings.HasPrefix(strings.ToUpper(alg), "HS"):
		return fmt.Errorf("HMAC algorithm %q is never accepted: tokens and proofs must be asymmetric", alg)
	}
	return fmt.Errorf("unknown algorithm %q (want one of %s)", alg, strings.Join(DefaultAlgorithms, " "))
}

// CheckURL demands an absolute https URL, or http on a loopback host.
func CheckURL(what, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("%s must be an absolute http(s) URL, got %q", what, raw)
	}
	if u.Scheme == "http" && !IsLoopback(u.Hostname()) {
		return fmt.Errorf("%s must use https (plain http is allowed only for loopback hosts), got %q", what, raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%s must not have a query or fragment", what)
	}
	return nil
}

// CheckOrigin demands scheme://host[:port] and nothing else.
func CheckOrigin(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("public_origin must be scheme://host[:port], got %q", raw)
	}
	return nil
}

// IsLoopback reports whether host is localhost or a loopback IP address.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
