package helseidsim

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/helsegate/helsegate/internal/devkit/jwsheader"
)

// Defaults used by Mint and the token endpoint.
const (
	DefaultAudience = "nhn:kjernejournal"
	DefaultScope    = "nhn:kjernejournal/api"
	DefaultClientID = "6b2f2b8e-3d1c-4f0a-9c5e-8a7d4b1e2f30"
	DefaultLifetime = 10 * time.Minute
)

// HelseID claim names.
const (
	ClaimOrgParent      = "helseid://claims/client/claims/orgnr_parent"
	ClaimOrgChild       = "helseid://claims/client/claims/orgnr_child"
	ClaimOrgSupplier    = "helseid://claims/client/claims/orgnr_supplier"
	ClaimTenancy        = "helseid://claims/client/client_tenancy"
	ClaimPID            = "helseid://claims/identity/pid"
	ClaimSecurityLevel  = "helseid://claims/identity/security_level"
	ClaimAssuranceLevel = "helseid://claims/identity/assurance_level"
	ClaimHPRNumber      = "helseid://claims/hpr/hpr_number"
)

// TokenSpec describes a token for Mint. The zero value gives a valid,
// unbound machine token for Kjernejournal. Empty string fields are left out
// of the token.
type TokenSpec struct {
	Audience      []string // default [DefaultAudience]; one value is emitted as a string, several as an array
	Scopes        []string // default [DefaultScope]
	ScopeAsString bool     // emit scope as a space-separated string instead of HelseID's array
	ClientID      string   // default DefaultClientID

	OrgParent   string // orgnr_parent
	OrgChild    string // orgnr_child
	OrgSupplier string // orgnr_supplier
	Tenancy     string // client_tenancy: "single-tenant" or "multi-tenant"

	JKT string // cnf.jkt (RFC 7638 thumbprint); empty = unbound token

	Subject        string // sub; HelseID puts an opaque pseudonym in user tokens
	PID            string // user tokens: helseid://claims/identity/pid
	SecurityLevel  string // e.g. "4"; always a string, as HelseID sends it
	AssuranceLevel string // e.g. "high"
	HPRNumber      string

	IssuedAt  time.Time     // default: the server clock
	Lifetime  time.Duration // exp = iat + Lifetime; default DefaultLifetime
	NotBefore time.Time     // default IssuedAt
	OmitExp   bool          // leave exp out

	Typ    string // header typ; default "at+jwt"
	Alg    string // signing alg; default RS256. "none" makes an unsigned token
	Kid    string // header kid; default the current key's kid
	Issuer string // default Issuer()

	// SignWith signs with this key instead of the simulator's (for bad
	// signatures): any key jws.WithKey accepts, e.g. *rsa.PrivateKey,
	// *ecdsa.PrivateKey, []byte for HS*, or a jwk.Key.
	SignWith any

	// Attest, when not nil, is the trust-framework attest (ClaimAttest).
	Attest *Attest

	// Extra is merged into the claims last; a nil value deletes the claim.
	Extra map[string]any
	// Header is merged into the protected header last; a nil value deletes
	// the member. "alg" cannot be set this way (use Alg).
	Header map[string]any
}

// Mint signs a token described by spec with the current key (or
// spec.SignWith).
func (s *Server) Mint(spec TokenSpec) (string, error) {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()

	claims, err := s.claims(spec)
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("helseidsim: marshal claims: %w", err)
	}
	hdr, err := mintHeader(spec, cur.kid)
	if err != nil {
		return "", err
	}
	tok, err := jws.Sign(payload, signOption(spec, cur.priv, hdr))
	if err != nil {
		return "", fmt.Errorf("helseidsim: sign: %w", err)
	}
	return string(tok), nil
}

// mintHeader builds the protected header: typ and kid (spec's or the
// defaults), then spec.Header merged over them.
func mintHeader(spec TokenSpec, currentKid string) (jws.Headers, error) {
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, orDefault(spec.Typ, "at+jwt")); err != nil {
		return nil, err
	}
	if err := hdr.Set(jws.KeyIDKey, orDefault(spec.Kid, currentKid)); err != nil {
		return nil, err
	}
	if err := jwsheader.Merge(hdr, spec.Header); err != nil {
		return nil, fmt.Errorf("helseidsim: %w", err)
	}
	return hdr, nil
}

// signOption picks how the token is signed: not at all for alg "none",
// with spec.SignWith when set, otherwise with the simulator's current key.
func signOption(spec TokenSpec, current any, hdr jws.Headers) jws.SignOption {
	alg := jwa.SignatureAlgorithm(orDefault(spec.Alg, jwa.RS256.String()))
	switch {
	case alg == jwa.NoSignature:
		return jws.WithInsecureNoSignature(jws.WithProtectedHeaders(hdr))
	case spec.SignWith != nil:
		return jws.WithKey(alg, spec.SignWith, jws.WithProtectedHeaders(hdr))
	default:
		// A raw key, so that jwx does not overwrite our kid header.
		return jws.WithKey(alg, current, jws.WithProtectedHeaders(hdr))
	}
}

// claims builds the token's claim set from spec: the registered claims,
// the HelseID ones that are set, the attest, then spec.Extra over them.
func (s *Server) claims(spec TokenSpec) (map[string]any, error) {
	c := s.registeredClaims(spec)
	for name, v := range helseIDClaims(spec) {
		if v != "" {
			c[name] = v
		}
	}
	if spec.Attest != nil {
		v, err := spec.Attest.claim(spec.PID)
		if err != nil {
			return nil, err
		}
		c[ClaimAttest] = v
	}
	for name, v := range spec.Extra {
		if v == nil {
			delete(c, name)
		} else {
			c[name] = v
		}
	}
	return c, nil
}

// registeredClaims gives iss, iat, nbf, exp, aud, scope, client_id, jti and
// cnf, each from spec or its default.
func (s *Server) registeredClaims(spec TokenSpec) map[string]any {
	iat := spec.IssuedAt
	if iat.IsZero() {
		iat = s.now()
	}
	nbf := spec.NotBefore
	if nbf.IsZero() {
		nbf = iat
	}
	life := spec.Lifetime
	if life == 0 {
		life = DefaultLifetime
	}
	c := map[string]any{
		"iss":       orDefault(spec.Issuer, s.issuer),
		"iat":       iat.Unix(),
		"nbf":       nbf.Unix(),
		"client_id": orDefault(spec.ClientID, DefaultClientID),
		"jti":       randomJTI(),
		"aud":       audienceClaim(spec.Audience),
		"scope":     scopeClaim(spec.Scopes, spec.ScopeAsString),
	}
	if !spec.OmitExp {
		c["exp"] = iat.Add(life).Unix()
	}
	if spec.JKT != "" {
		c["cnf"] = map[string]any{"jkt": spec.JKT}
	}
	return c
}

// audienceClaim emits one audience as a string and several as an array.
func audienceClaim(aud []string) any {
	if aud == nil {
		aud = []string{DefaultAudience}
	}
	if len(aud) == 1 {
		return aud[0]
	}
	return aud
}

// scopeClaim emits the scopes as HelseID's array, or as a space-separated
// string when asString.
func scopeClaim(scopes []string, asString bool) any {
	if scopes == nil {
		scopes = []string{DefaultScope}
	}
	if asString {
		return strings.Join(scopes, " ")
	}
	return scopes
}

// helseIDClaims names the string claims of spec; empty ones are left out.
func helseIDClaims(spec TokenSpec) map[string]string {
	return map[string]string{
		"sub":               spec.Subject,
		ClaimOrgParent:      spec.OrgParent,
		ClaimOrgChild:       spec.OrgChild,
		ClaimOrgSupplier:    spec.OrgSupplier,
		ClaimTenancy:        spec.Tenancy,
		ClaimPID:            spec.PID,
		ClaimSecurityLevel:  spec.SecurityLevel,
		ClaimAssuranceLevel: spec.AssuranceLevel,
		ClaimHPRNumber:      spec.HPRNumber,
	}
}

// randomJTI returns 128 random bits, base64url without padding.
func randomJTI() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
