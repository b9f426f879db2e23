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

	hdr := jws.NewHeaders()
	typ := spec.Typ
	if typ == "" {
		typ = "at+jwt"
	}
	kid := spec.Kid
	if kid == "" {
		kid = cur.kid
	}
	if err := hdr.Set(jws.TypeKey, typ); err != nil {
		return "", err
	}
	if err := hdr.Set(jws.KeyIDKey, kid); err != nil {
		return "", err
	}
	for name, v := range spec.Header {
		if v == nil {
			err = hdr.Remove(name)
		} else {
			err = hdr.Set(name, v)
		}
		if err != nil {
			return "", fmt.Errorf("helseidsim: header %q: %w", name, err)
		}
	}

	alg := jwa.SignatureAlgorithm(spec.Alg)
	if spec.Alg == "" {
		alg = jwa.RS256
	}
	var opt jws.SignOption
	switch {
	case alg == jwa.NoSignature:
		opt = jws.WithInsecureNoSignature(jws.WithProtectedHeaders(hdr))
	case spec.SignWith != nil:
		opt = jws.WithKey(alg, spec.SignWith, jws.WithProtectedHeaders(hdr))
	default:
		// A raw key, so that jwx does not overwrite our kid header.
		opt = jws.WithKey(alg, cur.priv, jws.WithProtectedHeaders(hdr))
	}
	tok, err := jws.Sign(payload, opt)
	if err != nil {
		return "", fmt.Errorf("helseidsim: sign: %w", err)
	}
	return string(tok), nil
}

func (s *Server) claims(spec TokenSpec) (map[string]any, error) {
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
	iss := spec.Issuer
	if iss == "" {
		iss = s.issuer
	}
	aud := spec.Audience
	if aud == nil {
		aud = []string{DefaultAudience}
	}
	scopes := spec.Scopes
	if scopes == nil {
		scopes = []string{DefaultScope}
	}
	clientID := spec.ClientID
	if clientID == "" {
		clientID = DefaultClientID
	}

	c := map[string]any{
		"iss":       iss,
		"iat":       iat.Unix(),
		"nbf":       nbf.Unix(),
		"client_id": clientID,
		"jti":       randomJTI(),
	}
	if !spec.OmitExp {
		c["exp"] = iat.Add(life).Unix()
	}
	if len(aud) == 1 {
		c["aud"] = aud[0]
	} else {
		c["aud"] = aud
	}
	if spec.ScopeAsString {
		c["scope"] = strings.Join(scopes, " ")
	} else {
		c["scope"] = scopes
	}
	if spec.JKT != "" {
		c["cnf"] = map[string]any{"jkt": spec.JKT}
	}
	for name, v := range map[string]string{
		"sub":               spec.Subject,
		ClaimOrgParent:      spec.OrgParent,
		ClaimOrgChild:       spec.OrgChild,
		ClaimOrgSupplier:    spec.OrgSupplier,
		ClaimTenancy:        spec.Tenancy,
		ClaimPID:            spec.PID,
		ClaimSecurityLevel:  spec.SecurityLevel,
		ClaimAssuranceLevel: spec.AssuranceLevel,
		ClaimHPRNumber:      spec.HPRNumber,
	} {
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

// randomJTI returns 128 random bits, base64url without padding.
func randomJTI() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
