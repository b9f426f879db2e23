package authz

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

type verifyCase struct {
	name   string
	cfg    func(*Config)
	req    func(f *fixture) Request
	kind   Kind
	reason string // "" = allowed
}

// withToken builds a request with a token changed by mod and a good proof for it.
func withToken(mod func(h, c map[string]any)) func(f *fixture) Request {
	return func(f *fixture) Request {
		tok := f.token(mod)
		return f.request(tok, f.proof(tok, nil))
	}
}

// withProof builds a request with a good token and a proof changed by mod.
func withProof(mod func(h, c map[string]any)) func(f *fixture) Request {
	return func(f *fixture) Request {
		tok := f.token(nil)
		return f.request(tok, f.proof(tok, mod))
	}
}

func runCases(t *testing.T, cases []verifyCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.cfg)
			f.check(t, tc.req(f), tc.kind, tc.reason)
		})
	}
}

func TestFraming(t *testing.T) {
	optional := func(c *Config) { c.DPoP = DPoPOptional }
	runCases(t, []verifyCase{
		{name: "allowed", req: withToken(nil)},
		{name: "no credentials", req: func(f *fixture) Request {
			r := f.request("x", "")
			r.Authorization = nil
			return r
		}, kind: NoCredentials, reason: "no_credentials"},
		{name: "token in query", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.TokenInQuery = true
			return r
		}, kind: InvalidRequest, reason: "token_in_query"},
		{name: "two authorization headers", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization = append(r.Authorization, r.Authorization[0])
			return r
		}, kind: InvalidRequest, reason: "multiple_authorization"},
		{name: "scheme without token", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization = []string{"DPoP"}
			return r
		}, kind: InvalidRequest, reason: "malformed_authorization"},
		{name: "token not token68", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization = []string{"DPoP abc def"}
			return r
		}, kind: InvalidRequest, reason: "malformed_authorization"},
		{name: "other scheme is no credentials", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization = []string{"Basic dXNlcjpwYXNz"}
			return r
		}, kind: NoCredentials, reason: "unsupported_scheme"},
		{name: "scheme is case-insensitive", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization[0] = "dpop " + strings.TrimPrefix(r.Authorization[0], "DPoP ")
			return r
		}},
		{name: "bearer refused when dpop required", req: func(f *fixture) Request {
			r := withToken(func(h, c map[string]any) { delete(c, "cnf") })(f)
			r.Authorization[0] = "Bearer " + strings.TrimPrefix(r.Authorization[0], "DPoP ")
			return r
		}, kind: InvalidToken, reason: "bearer_not_allowed"},
		{name: "bearer with unbound token when optional", cfg: optional, req: func(f *fixture) Request {
			tok := f.token(func(h, c map[string]any) { delete(c, "cnf") })
			return Request{Method: "GET", Scheme: "https", Host: testHost, EscapedPath: testPath, Authorization: []string{"Bearer " + tok}}
		}},
		{name: "bound token as bearer refused", cfg: optional, req: func(f *fixture) Request {
			tok := f.token(nil)
			return Request{Method: "GET", Scheme: "https", Host: testHost, EscapedPath: testPath, Authorization: []string{"Bearer " + tok}}
		}, kind: InvalidToken, reason: "bound_token_as_bearer"},
		{name: "dpop scheme without proof", req: func(f *fixture) Request {
			return f.request(f.token(nil), "")
		}, kind: InvalidProof, reason: "proof_missing"},
		{name: "two dpop headers", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.DPoP = append(r.DPoP, r.DPoP[0])
			return r
		}, kind: InvalidRequest, reason: "multiple_dpop"},
		{name: "comma-joined dpop values", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.DPoP = []string{r.DPoP[0] + ", " + r.DPoP[0]}
			return r
		}, kind: InvalidRequest, reason: "multiple_dpop"},
	})
}

func TestAccessToken(t *testing.T) {
	runCases(t, []verifyCase{
		{name: "jwe-shaped token", req: func(f *fixture) Request {
			return f.request("a.b.c.d.e", f.proof("a.b.c.d.e", nil))
		}, kind: InvalidToken, reason: "token_malformed"},
		{name: "garbage segments", req: func(f *fixture) Request {
			return f.request("a.b.c", f.proof("a.b.c", nil))
		}, kind: InvalidToken, reason: "token_malformed"},
		{name: "typ JOSE refused", req: withToken(func(h, c map[string]any) { h["typ"] = "JOSE" }), kind: InvalidToken, reason: "token_typ"},
		{name: "typ missing refused", req: withToken(func(h, c map[string]any) { delete(h, "typ") }), kind: InvalidToken, reason: "token_typ"},
		{name: "typ dpop+jwt refused", req: withToken(func(h, c map[string]any) { h["typ"] = "dpop+jwt" }), kind: InvalidToken, reason: "token_typ"},
		{name: "typ upper case accepted", req: withToken(func(h, c map[string]any) { h["typ"] = "AT+JWT" })},
		{name: "typ JWT accepted", req: withToken(func(h, c map[string]any) { h["typ"] = "JWT" })},
		{name: "typ application/at+jwt accepted", req: withToken(func(h, c map[string]any) { h["typ"] = "application/at+jwt" })},
		{name: "typ restricted by config", cfg: func(c *Config) { c.TokenTypes = []string{"at+jwt"} },
			req: withToken(func(h, c map[string]any) { h["typ"] = "JWT" }), kind: InvalidToken, reason: "token_typ"},
		{name: "alg outside the configured list", cfg: func(c *Config) { c.Algorithms = []string{"PS256"} },
			req: withToken(nil), kind: InvalidToken, reason: "token_alg"},
		{name: "alg none", req: func(f *fixture) Request {
			h := tokenHeader()
			h["alg"] = "none"
			tok := unsigned(t, h, f.tokenClaims())
			return f.request(tok, f.proof(tok, nil))
		}, kind: InvalidToken, reason: "token_alg"},
		{name: "alg HS256 keyed with the public key", req: func(f *fixture) Request {
			h := tokenHeader()
			h["alg"] = "HS256"
			pubDER, _ := jwk.FromRaw(issuerPriv.Public())
			n, _ := pubDER.Get("n")
			tok := sign(t, h, f.tokenClaims(), n.([]byte))
			return f.request(tok, f.proof(tok, nil))
		}, kind: InvalidToken, reason: "token_alg"},
		{name: "alg does not fit the key type", req: func(f *fixture) Request {
			h := tokenHeader()
			h["alg"] = "ES256"
			tok := sign(t, h, f.tokenClaims(), ecIssuer)
			return f.request(tok, f.proof(tok, nil))
		}, kind: InvalidToken, reason: "token_alg"},
		{name: "alg differs from the key's own alg", req: func(f *fixture) Request {
			h := tokenHeader()
			h["alg"] = "PS256"
			tok := sign(t, h, f.tokenClaims(), issuerPriv)
			return f.request(tok, f.proof(tok, nil))
		}, kind: InvalidToken, reason: "token_alg"},
		{name: "kid missing", req: withToken(func(h, c map[string]any) { delete(h, "kid") }), kind: InvalidToken, reason: "token_kid"},
		{name: "kid unknown", req: withToken(func(h, c map[string]any) { h["kid"] = "0000" }), kind: InvalidToken, reason: "token_kid"},
		{name: "signature by another key", req: func(f *fixture) Request {
			tok := sign(t, tokenHeader(), f.tokenClaims(), otherRSA)
			return f.request(tok, f.proof(tok, nil))
		}, kind: InvalidToken, reason: "token_signature"},
		{name: "signature tampered", req: func(f *fixture) Request {
			tok := f.token(nil)
			i := strings.LastIndexByte(tok, '.')
			c := "A"
			if tok[i+1] == 'A' { // the change must change something
				c = "B"
			}
			tok = tok[:i+1] + c + tok[i+2:]
			return f.request(tok, f.proof(tok, nil))
		}, kind: InvalidToken, reason: "token_signature"},
		{name: "critical header", req: withToken(func(h, c map[string]any) { h["crit"] = []string{"exp"} }), kind: InvalidToken, reason: "token_malformed"},
		{name: "claims of wrong type", req: withToken(func(h, c map[string]any) { c["iss"] = 42 }), kind: InvalidToken, reason: "token_claims"},
		// Exact names, none twice (a duplicate cannot come out of a map: see TestTokenClaimsStrict).
		{name: "ISS for iss", req: withToken(func(h, c map[string]any) { c["ISS"] = c["iss"]; delete(c, "iss") }), kind: InvalidToken, reason: "token_claims"},
		{name: "CNF for cnf", req: withToken(func(h, c map[string]any) { c["CNF"] = c["cnf"]; delete(c, "cnf") }), kind: InvalidToken, reason: "token_claims"},
		{name: "JKT in cnf", req: withToken(func(h, c map[string]any) { c["cnf"] = map[string]any{"JKT": c["cnf"].(map[string]any)["jkt"]} }), kind: InvalidToken, reason: "token_claims"},
		{name: "upper-case orgnr_parent", req: withToken(func(h, c map[string]any) {
			c[strings.ToUpper(ClaimOrgParent)] = c[ClaimOrgParent]
			delete(c, ClaimOrgParent)
		}), kind: InvalidToken, reason: "token_claims"},
		{name: "issuer differs", req: withToken(func(h, c map[string]any) { c["iss"] = "https://helseid-sts.nhn.no" }), kind: InvalidToken, reason: "token_issuer"},
		{name: "issuer with trailing slash", req: withToken(func(h, c map[string]any) { c["iss"] = testIssuer + "/" }), kind: InvalidToken, reason: "token_issuer"},
		{name: "audience differs", req: withToken(func(h, c map[string]any) { c["aud"] = "nhn:msh" }), kind: InvalidToken, reason: "token_audience"},
		{name: "audience missing", req: withToken(func(h, c map[string]any) { delete(c, "aud") }), kind: InvalidToken, reason: "token_audience"},
		{name: "audience in an array", req: withToken(func(h, c map[string]any) { c["aud"] = []string{"nhn:msh", testAudience} })},
		{name: "single audience refuses two", cfg: func(c *Config) { c.SingleAudience = true },
			req: withToken(func(h, c map[string]any) { c["aud"] = []string{"nhn:msh", testAudience} }), kind: InvalidToken, reason: "token_audience"},
		{name: "single audience accepts one in an array", cfg: func(c *Config) { c.SingleAudience = true },
			req: withToken(func(h, c map[string]any) { c["aud"] = []string{testAudience} })},
		{name: "exp missing", req: withToken(func(h, c map[string]any) { delete(c, "exp") }), kind: InvalidToken, reason: "token_exp_missing"},
		{name: "expired", req: withToken(func(h, c map[string]any) { c["exp"] = testNow.Add(-6 * time.Second).Unix() }), kind: InvalidToken, reason: "token_expired"},
		{name: "expired within clock skew", req: withToken(func(h, c map[string]any) { c["exp"] = testNow.Add(-4 * time.Second).Unix() })},
		{name: "exp as string", req: withToken(func(h, c map[string]any) { c["exp"] = "1999999999" }), kind: InvalidToken, reason: "token_claims"},
		{name: "not yet valid", req: withToken(func(h, c map[string]any) { c["nbf"] = testNow.Add(6 * time.Second).Unix() }), kind: InvalidToken, reason: "token_not_yet_valid"},
		{name: "nbf within clock skew", req: withToken(func(h, c map[string]any) { c["nbf"] = testNow.Add(4 * time.Second).Unix() })},
		{name: "client_id missing", req: withToken(func(h, c map[string]any) { delete(c, "client_id") }), kind: InvalidToken, reason: "token_client_id"},
		{name: "jti missing", req: withToken(func(h, c map[string]any) { delete(c, "jti") }), kind: InvalidToken, reason: "token_jti"},
		{name: "exp negative", req: withToken(func(h, c map[string]any) { c["exp"] = -1 }), kind: InvalidToken, reason: "token_claims"},
		{name: "exp beyond range", req: withToken(func(h, c map[string]any) { c["exp"] = 1e300 }), kind: InvalidToken, reason: "token_claims"},
		{name: "issuer RSA key below 2048 bits", req: func(f *fixture) Request {
			small, err := rsa.GenerateKey(rand.Reader, 1024)
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := jwk.FromRaw(small.Public())
			f.keys.mu.Lock()
			f.keys.keys["small"] = pub
			f.keys.mu.Unlock()
			h := tokenHeader()
			h["kid"] = "small"
			tok := sign(t, h, f.tokenClaims(), small)
			return f.request(tok, f.proof(tok, nil))
		}, kind: InvalidToken, reason: "token_alg"},
		{name: "issuer RSA key above 16384 bits", req: func(f *fixture) Request {
			n := new(big.Int).Lsh(big.NewInt(1), 16400) // made up: refused before any signature
			n.Add(n, big.NewInt(12345))
			pub, _ := jwk.FromRaw(&rsa.PublicKey{N: n, E: 65537})
			f.keys.mu.Lock()
			f.keys.keys["huge"] = pub
			f.keys.mu.Unlock()
			h := tokenHeader()
			h["kid"] = "huge"
			tok := sign(t, h, f.tokenClaims(), issuerPriv)
			return f.request(tok, f.proof(tok, nil))
		}, kind: InvalidToken, reason: "token_alg"},
		{name: "RS256 header naming the issuer's EC key", req: func(f *fixture) Request {
			h := tokenHeader()
			h["kid"] = "EC1"
			tok := sign(t, h, f.tokenClaims(), issuerPriv)
			return f.request(tok, f.proof(tok, nil))
		}, kind: InvalidToken, reason: "token_alg"},
		{name: "scope missing", req: withToken(func(h, c map[string]any) { c["scope"] = []string{"openid"} }), kind: InsufficientScope, reason: "scope_missing"},
		{name: "scope absent", req: withToken(func(h, c map[string]any) { delete(c, "scope") }), kind: InsufficientScope, reason: "scope_missing"},
		{name: "scope as a space-separated string", req: withToken(func(h, c map[string]any) { c["scope"] = "openid " + testScope })},
		{name: "every configured scope required", cfg: func(c *Config) { c.Scopes = []string{testScope, "nhn:kjernejournal/tillitsrammeverk"} },
			req: withToken(nil), kind: InsufficientScope, reason: "scope_missing"},
		{name: "cnf without jkt", req: withToken(func(h, c map[string]any) { c["cnf"] = map[string]any{"x5t#S256": "abc"} }), kind: InvalidToken, reason: "token_cnf"},
		{name: "dpop scheme with unbound token", req: withToken(func(h, c map[string]any) { delete(c, "cnf") }), kind: InvalidToken, reason: "token_not_bound"},
		{name: "issuer keys unavailable", req: func(f *fixture) Request {
			f.keys.err = errBoom
			return withToken(nil)(f)
		}, kind: Unavailable, reason: "jwks_unavailable"},
	})
}

func TestProof(t *testing.T) {
	otherPub := func() jwk.Key { k, _ := jwk.FromRaw(client2Priv.Public()); return k }
	runCases(t, []verifyCase{
		{name: "not a compact jws", req: func(f *fixture) Request { return f.request(f.token(nil), "abc") }, kind: InvalidProof, reason: "proof_malformed"},
		{name: "garbage segments", req: func(f *fixture) Request { return f.request(f.token(nil), "a.b.c") }, kind: InvalidProof, reason: "proof_malformed"},
		{name: "typ missing", req: withProof(func(h, c map[string]any) { delete(h, "typ") }), kind: InvalidProof, reason: "proof_typ"},
		{name: "typ at+jwt", req: withProof(func(h, c map[string]any) { h["typ"] = "at+jwt" }), kind: InvalidProof, reason: "proof_typ"},
		{name: "alg outside dpop_algorithms", cfg: func(c *Config) { c.DPoPAlgorithms = []string{"RS256"} },
			req: withProof(nil), kind: InvalidProof, reason: "proof_alg"},
		{name: "alg none", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			h["alg"] = "none"
			return f.request(tok, unsigned(t, h, c))
		}, kind: InvalidProof, reason: "proof_alg"},
		{name: "alg does not fit the jwk curve", req: func(f *fixture) Request {
			tok := f.token(nil)
			p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			pub, _ := jwk.FromRaw(p384.Public())
			h, c := f.proofParts(tok)
			h["jwk"] = pub
			h["alg"] = "ES384"
			_ = h
			// Signed correctly with P-384 under ES384 but the jwk claims ES256 curve mismatch below.
			h["alg"] = "ES256"
			return f.request(tok, sign(t, h, c, clientPriv))
		}, kind: InvalidProof, reason: "proof_alg"},
		{name: "jwk missing", req: withProof(func(h, c map[string]any) { delete(h, "jwk") }), kind: InvalidProof, reason: "proof_jwk"},
		{name: "jwk with private key", req: withProof(func(h, c map[string]any) {
			priv, _ := jwk.FromRaw(clientPriv)
			h["jwk"] = priv
		}), kind: InvalidProof, reason: "proof_jwk"},
		{name: "jwk symmetric", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			sym, _ := jwk.FromRaw([]byte("0123456789abcdef0123456789abcdef"))
			h["jwk"] = sym
			h["alg"] = "HS256"
			return f.request(tok, sign(t, h, c, []byte("0123456789abcdef0123456789abcdef")))
		}, kind: InvalidProof, reason: "proof_alg"},
		{name: "signature by another key than jwk", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			return f.request(tok, sign(t, h, c, client2Priv))
		}, kind: InvalidProof, reason: "proof_signature"},
		{name: "jti missing", req: withProof(func(h, c map[string]any) { delete(c, "jti") }), kind: InvalidProof, reason: "proof_claims"},
		{name: "jti empty", req: withProof(func(h, c map[string]any) { c["jti"] = "" }), kind: InvalidProof, reason: "proof_claims"},
		{name: "htm missing", req: withProof(func(h, c map[string]any) { delete(c, "htm") }), kind: InvalidProof, reason: "proof_claims"},
		{name: "htu missing", req: withProof(func(h, c map[string]any) { delete(c, "htu") }), kind: InvalidProof, reason: "proof_claims"},
		{name: "iat missing", req: withProof(func(h, c map[string]any) { delete(c, "iat") }), kind: InvalidProof, reason: "proof_claims"},
		{name: "iat as string", req: withProof(func(h, c map[string]any) { c["iat"] = "1764000000" }), kind: InvalidProof, reason: "proof_claims"},
		{name: "htu as number", req: withProof(func(h, c map[string]any) { c["htu"] = 7 }), kind: InvalidProof, reason: "proof_claims"},
		{name: "ath missing", req: withProof(func(h, c map[string]any) { delete(c, "ath") }), kind: InvalidProof, reason: "proof_claims"},
		{name: "htm differs", req: withProof(func(h, c map[string]any) { c["htm"] = "POST" }), kind: InvalidProof, reason: "proof_htm"},
		{name: "htm is case-sensitive", req: withProof(func(h, c map[string]any) { c["htm"] = "get" }), kind: InvalidProof, reason: "proof_htm"},
		{name: "htu other path", req: withProof(func(h, c map[string]any) { c["htu"] = "https://" + testHost + "/other" }), kind: InvalidProof, reason: "proof_htu"},
		{name: "htu other host", req: withProof(func(h, c map[string]any) { c["htu"] = "https://evil.example" + testPath }), kind: InvalidProof, reason: "proof_htu"},
		{name: "htu other scheme", req: withProof(func(h, c map[string]any) { c["htu"] = "http://" + testHost + testPath }), kind: InvalidProof, reason: "proof_htu"},
		{name: "htu relative", req: withProof(func(h, c map[string]any) { c["htu"] = testPath }), kind: InvalidProof, reason: "proof_htu"},
		{name: "htu query and fragment ignored", req: withProof(func(h, c map[string]any) { c["htu"] = "https://" + testHost + testPath + "?a=1#f" })},
		{name: "htu normalized", req: withProof(func(h, c map[string]any) { c["htu"] = "HTTPS://API.Example.NO:443/kjernejournal/./v1/%70atient" })},
		{name: "public origin decides, not the Host header", cfg: func(c *Config) { c.PublicOrigin = "https://kj.helsenett.no" },
			req: func(f *fixture) Request {
				tok := f.token(nil)
				r := f.request(tok, f.proof(tok, func(h, c map[string]any) { c["htu"] = "https://kj.helsenett.no" + testPath }))
				r.Host = "internal:8080"
				return r
			}},
		{name: "htu on the Host header refused under public origin", cfg: func(c *Config) { c.PublicOrigin = "https://kj.helsenett.no" },
			req: withProof(nil), kind: InvalidProof, reason: "proof_htu"},
		{name: "iat too old", req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(-16 * time.Second).Unix() }), kind: InvalidProof, reason: "proof_iat"},
		{name: "iat at max age", req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(-15 * time.Second).Unix() })},
		{name: "iat in the future", req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(6 * time.Second).Unix() }), kind: InvalidProof, reason: "proof_iat"},
		{name: "iat within future skew", req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(5 * time.Second).Unix() })},
		{name: "dpop_max_age configured", cfg: func(c *Config) { c.DPoPMaxAge = 60 * time.Second },
			req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(-50 * time.Second).Unix() })},
		{name: "ath of another token", req: withProof(func(h, c map[string]any) { c["ath"] = ath("other") }), kind: InvalidProof, reason: "proof_ath"},
		{name: "jwk is not the bound key", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			h["jwk"] = otherPub()
			return f.request(tok, sign(t, h, c, client2Priv))
		}, kind: InvalidProof, reason: "proof_jkt"},
		{name: "replay store down", req: func(f *fixture) Request {
			f.replay.err = errBoom
			return withProof(nil)(f)
		}, kind: Unavailable, reason: "replay_store_unavailable"},
		{name: "typ application/dpop+jwt accepted", req: withProof(func(h, c map[string]any) { h["typ"] = "application/dpop+jwt" })},
		{name: "typ in upper case accepted", req: withProof(func(h, c map[string]any) { h["typ"] = "DPOP+JWT" })},
		{name: "proof signature too long", req: func(f *fixture) Request {
			tok := f.token(nil)
			p := f.proof(tok, nil)
			return f.request(tok, p[:strings.LastIndexByte(p, '.')+1]+strings.Repeat("A", 800))
		}, kind: InvalidProof, reason: "proof_malformed"},
		{name: "proof too large", req: withProof(func(h, c map[string]any) { c["pad"] = strings.Repeat("x", MaxProofSize) }),
			kind: InvalidProof, reason: "proof_malformed"},
		{name: "rsa proof key below 2048 bits", req: func(f *fixture) Request {
			small, err := rsa.GenerateKey(rand.Reader, 1024)
			if err != nil {
				t.Fatal(err)
			}
			return rsaProof(t, f, small.Public().(*rsa.PublicKey), small)
		}, kind: InvalidProof, reason: "proof_alg"},
		{name: "rsa proof key above 4096 bits", req: func(f *fixture) Request {
			// A made-up modulus: the size is refused before any signature.
			n := new(big.Int).Lsh(big.NewInt(1), 4104)
			n.Add(n, big.NewInt(12345))
			return rsaProof(t, f, &rsa.PublicKey{N: n, E: 65537}, otherRSA)
		}, kind: InvalidProof, reason: "proof_alg"},
		{name: "duplicate claim", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			payload, _ := json.Marshal(c)
			// Two htm members: a reader that kept the last would see POST.
			payload = append(payload[:len(payload)-1], []byte(`,"htm":"POST"}`)...)
			return f.request(tok, signPayload(t, h, payload, clientPriv))
		}, kind: InvalidProof, reason: "proof_claims"},
		{name: "data after the claims", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			payload, _ := json.Marshal(c)
			return f.request(tok, signPayload(t, h, append(payload, []byte(`{}`)...), clientPriv))
		}, kind: InvalidProof, reason: "proof_claims"},
		{name: "dpop_future_skew configured: inside", cfg: func(c *Config) { c.DPoPFutureSkew = 30 * time.Second },
			req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(25 * time.Second).Unix() })},
		{name: "dpop_future_skew configured: beyond", cfg: func(c *Config) { c.DPoPFutureSkew = 30 * time.Second },
			req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(31 * time.Second).Unix() }), kind: InvalidProof, reason: "proof_iat"},
		{name: "rsa proof", req: func(f *fixture) Request {
			tok := f.token(func(h, c map[string]any) { c["cnf"] = map[string]any{"jkt": thumbprint(t, otherRSA.Public())} })
			h, c := f.proofParts(tok)
			pub, _ := jwk.FromRaw(otherRSA.Public())
			h["jwk"] = pub
			h["alg"] = "PS256"
			return f.request(tok, sign(t, h, c, otherRSA))
		}},
	})
}

func TestReplay(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.token(nil)
	proof := f.proof(tok, nil)
	f.check(t, f.request(tok, proof), 0, "")
	f.check(t, f.request(tok, proof), InvalidProof, "proof_replay")
	// The same jti under another key is another proof.
	const jti = "same-jti"
	f.check(t, f.request(tok, f.proof(tok, func(h, c map[string]any) { c["jti"] = jti })), 0, "")
	tok2 := f.token(func(h, c map[string]any) { c["cnf"] = map[string]any{"jkt": thumbprint(t, client2Priv.Public())} })
	h, c := f.proofParts(tok2)
	h["jwk"], _ = jwk.FromRaw(client2Priv.Public())
	c["jti"] = jti
	f.check(t, f.request(tok2, sign(t, h, c, client2Priv)), 0, "")
	for key, ttl := range f.replay.seen {
		if want := DefaultDPoPMaxAge + DefaultDPoPFutureSkew; ttl < want {
			t.Fatalf("replay entry %s kept %v, shorter than the acceptance window %v", key, ttl, want)
		}
	}
	// A failed proof records nothing.
	f2 := newFixture(t, nil)
	bad := f2.proof(tok, func(h, c map[string]any) { c["htm"] = "POST" })
	f2.check(t, f2.request(tok, bad), InvalidProof, "proof_htm")
	if len(f2.replay.seen) != 0 {
		t.Fatalf("an invalid proof was recorded in the replay store")
	}
}

func TestNonce(t *testing.T) {
	secret := func(c *Config) { c.NonceSecret = []byte("0123456789abcdef0123456789abcdef") }
	f := newFixture(t, secret)
	tok := f.token(nil)
	f.check(t, f.request(tok, f.proof(tok, nil)), UseNonce, "nonce_required")

	nonce := f.v.NewNonce()
	if nonce == "" {
		t.Fatal("no nonce issued")
	}
	f.check(t, f.request(tok, f.proof(tok, func(h, c map[string]any) { c["nonce"] = "made-up" })), UseNonce, "nonce_stale")
	other := NewNonces([]byte("another secret, another gateway!")).Issue(f.now)
	f.check(t, f.request(tok, f.proof(tok, func(h, c map[string]any) { c["nonce"] = other })), UseNonce, "nonce_stale")
	// A nonce of ours, but dated later than the future skew allows.
	future := NewNonces([]byte("0123456789abcdef0123456789abcdef")).Issue(f.now.Add(time.Minute))
	f.check(t, f.request(tok, f.proof(tok, func(h, c map[string]any) { c["nonce"] = future })), UseNonce, "nonce_stale")
	p := f.check(t, f.request(tok, f.proof(tok, func(h, c map[string]any) { c["nonce"] = nonce; c["jti"] = "n1" })), 0, "")
	if p.NonceRefresh != "" {
		t.Fatal("a fresh nonce should not be refreshed")
	}

	// Another replica with the same secret accepts it.
	g := newFixture(t, secret)
	g.check(t, g.request(tok, g.proof(tok, func(h, c map[string]any) { c["nonce"] = nonce; c["jti"] = "n2" })), 0, "")

	// Past half its life the gateway hands out a new one; past its life it is stale.
	f.now = f.now.Add(NonceLifetime/2 + time.Second)
	tok2 := f.token(nil)
	p = f.check(t, f.request(tok2, f.proof(tok2, func(h, c map[string]any) { c["nonce"] = nonce; c["jti"] = "n3" })), 0, "")
	if p.NonceRefresh == "" {
		t.Fatal("want a new nonce past half the lifetime")
	}
	f.now = testNow.Add(NonceLifetime + time.Second)
	tok3 := f.token(nil)
	f.check(t, f.request(tok3, f.proof(tok3, func(h, c map[string]any) { c["nonce"] = nonce; c["jti"] = "n4" })), UseNonce, "nonce_stale")
}

func TestPolicy(t *testing.T) {
	user := func(level, hpr string) func(h, c map[string]any) {
		return func(h, c map[string]any) {
			c[ClaimPID] = "17056600574"
			c["sub"] = "tzto6g"
			if level != "" {
				c[ClaimSecurityLevel] = level
			}
			if hpr != "" {
				c[ClaimHPRNumber] = hpr
			}
		}
	}
	runCases(t, []verifyCase{
		{name: "user route refuses machine token", cfg: func(c *Config) { c.TokenKind = KindUser }, req: withToken(nil), kind: InsufficientScope, reason: "token_kind"},
		{name: "user route accepts user token", cfg: func(c *Config) { c.TokenKind = KindUser }, req: withToken(user("4", ""))},
		{name: "machine route refuses user token", cfg: func(c *Config) { c.TokenKind = KindMachine }, req: withToken(user("4", "")), kind: InsufficientScope, reason: "token_kind"},
		{name: "sub alone does not make a user", cfg: func(c *Config) { c.TokenKind = KindUser },
			req: withToken(func(h, c map[string]any) { c["sub"] = "x" }), kind: InsufficientScope, reason: "token_kind"},
		{name: "security level too low", cfg: func(c *Config) { c.MinSecurityLevel = 4 }, req: withToken(user("3", "")), kind: InsufficientScope, reason: "security_level"},
		{name: "security level missing", cfg: func(c *Config) { c.MinSecurityLevel = 4 }, req: withToken(user("", "")), kind: InsufficientScope, reason: "security_level"},
		{name: "security level as number refused", cfg: func(c *Config) { c.MinSecurityLevel = 3 },
			req: withToken(func(h, c map[string]any) { user("", "")(h, c); c[ClaimSecurityLevel] = 4 }), kind: InvalidToken, reason: "token_claims"},
		{name: "security level enough", cfg: func(c *Config) { c.MinSecurityLevel = 4 }, req: withToken(user("4", ""))},
		{name: "security level applies to user tokens only", cfg: func(c *Config) { c.MinSecurityLevel = 4 }, req: withToken(nil)},
		{name: "hpr required", cfg: func(c *Config) { c.RequireHPR = true }, req: withToken(user("4", "")), kind: InsufficientScope, reason: "hpr_missing"},
		{name: "hpr present", cfg: func(c *Config) { c.RequireHPR = true }, req: withToken(user("4", "431001110"))},
	})
}

func TestPrincipal(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.token(func(h, c map[string]any) {
		c[ClaimPID] = "17056600574"
		c[ClaimSecurityLevel] = "4"
		c[ClaimHPRNumber] = "431001110"
		c["sub"] = "subject-1"
	})
	p := f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
	want := Principal{Scheme: "DPoP", ClientID: "8cd7c619-0e1d-4a6b-9c0e-6f2d6b3a5d11", Subject: "subject-1", TokenID: "6745A1B2",
		Kind: KindUser, SecurityLevel: "4", HPRNumber: "431001110", OrgParent: "917897468", OrgChild: "922734046",
		ClientTenancy: "multi-tenant", JKT: f.jkt, Expires: time.Unix(testNow.Add(9*time.Minute).Unix(), 0),
		Memo: p.Memo} // the token's memo: whichever it is, it must be there
	if p.Memo == nil {
		t.Fatal("no token memo")
	}
	if *p != want {
		t.Fatalf("principal\n got %+v\nwant %+v", *p, want)
	}
}

func TestTokenCache(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.token(func(h, c map[string]any) { c["exp"] = testNow.Add(time.Minute).Unix() })
	for i := 0; i < 3; i++ {
		f.check(t, f.request(tok, f.proof(tok, func(h, c map[string]any) { c["jti"] = string(rune('a' + i)) })), 0, "")
	}
	if f.keys.calls != 1 {
		t.Fatalf("want the signature checked once for a reused token, key lookups = %d", f.keys.calls)
	}
	// A cached token still expires.
	f.now = testNow.Add(time.Minute + 6*time.Second)
	f.check(t, f.request(tok, f.proof(tok, func(h, c map[string]any) { c["jti"] = "z" })), InvalidToken, "token_expired")

	c := newTokenCache(2)
	for i := byte(0); i < 5; i++ {
		c.put(string(rune('a'+i)), &verifiedToken{exp: testNow.Add(time.Hour)}, testNow)
	}
	if c.len() > 2 {
		t.Fatalf("token cache grew past its bound: %d", c.len())
	}

	// Full, an expired entry makes room before a live one (every time: the
	// arbitrary eviction would pick the live one half of the time).
	for i := 0; i < 64; i++ {
		c = newTokenCache(2)
		c.put("1", &verifiedToken{exp: testNow.Add(-time.Second)}, testNow.Add(-time.Minute))
		c.put("2", &verifiedToken{exp: testNow.Add(time.Hour)}, testNow.Add(-time.Minute))
		c.put("3", &verifiedToken{exp: testNow.Add(time.Hour)}, testNow)
		if _, ok := c.get("2"); !ok || c.len() != 2 {
			t.Fatalf("the live entry was evicted while an expired one was there (len %d)", c.len())
		}
	}
}

// rsaProof signs a PS256 proof with priv under a jwk of pub, for a token
// bound to pub.
func rsaProof(t *testing.T, f *fixture, pub *rsa.PublicKey, priv *rsa.PrivateKey) Request {
	t.Helper()
	k, err := jwk.FromRaw(pub)
	if err != nil {
		t.Fatal(err)
	}
	tok := f.token(func(h, c map[string]any) { c["cnf"] = map[string]any{"jkt": thumbprint(t, pub)} })
	h, c := f.proofParts(tok)
	h["jwk"], h["alg"] = k, "PS256"
	return f.request(tok, sign(t, h, c, priv))
}

func TestConfigValidate(t *testing.T) {
	good := Config{Issuer: testIssuer, Audience: testAudience}
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"good", func(c *Config) {}, ""},
		{"issuer missing", func(c *Config) { c.Issuer = "" }, "issuer is required"},
		{"issuer http", func(c *Config) { c.Issuer = "http://helseid-sts.nhn.no" }, "https"},
		{"issuer http loopback", func(c *Config) { c.Issuer = "http://127.0.0.1:9000" }, ""},
		{"jwks http", func(c *Config) { c.JWKSURL = "http://keys.example/jwks" }, "https"},
		{"audience missing", func(c *Config) { c.Audience = "" }, "audience is required"},
		{"alg none", func(c *Config) { c.Algorithms = []string{"none"} }, "never accepted"},
		{"alg HS256", func(c *Config) { c.DPoPAlgorithms = []string{"HS256"} }, "HMAC"},
		{"alg unknown", func(c *Config) { c.Algorithms = []string{"EdDSA"} }, "unknown algorithm"},
		{"dpop mode", func(c *Config) { c.DPoP = "sometimes" }, "dpop"},
		{"token kind", func(c *Config) { c.TokenKind = "robot" }, "token_kind"},
		{"security level", func(c *Config) { c.MinSecurityLevel = 5 }, "min_security_level"},
		{"public origin with path", func(c *Config) { c.PublicOrigin = "https://a.example/x" }, "public_origin"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error with %q, got %v", tc.want, err)
			}
		})
	}
}

func TestNoSecretsInErrors(t *testing.T) {
	// Every denial description is generic: it never repeats a claim value.
	f := newFixture(t, func(c *Config) { c.MinSecurityLevel = 4; c.Scopes = []string{"x"} })
	tok := f.token(func(h, c map[string]any) { c[ClaimPID] = "17056600574"; c[ClaimSecurityLevel] = "1" })
	_, derr := f.v.Verify(context.Background(), f.request(tok, f.proof(tok, nil)))
	if derr == nil {
		t.Fatal("want a denial")
	}
	for _, s := range []string{"17056600574", "917897468", tok} {
		if strings.Contains(derr.Error(), s) {
			t.Fatalf("denial text leaks %q", s)
		}
	}
}

var _ = jwa.RS256

// TestProofSignaturesConcurrently verifies ES256 and PS256 proofs, good ones
// and ones carrying another proof's signature, from several goroutines at
// once: the proof path shares state between requests (the header cache, the
// pooled signature buffers), and each proof must still be judged on its own
// signature, whatever is verified beside it.
func TestProofSignaturesConcurrently(t *testing.T) {
	f := newFixture(t, nil)
	type proofCase struct {
		r  Request
		ok bool
	}
	var cases []proofCase
	tok := f.token(nil)
	for range 40 {
		cases = append(cases, proofCase{f.request(tok, f.proof(tok, nil)), true})
		bad := f.request(tok, withSignatureOf(f.proof(tok, nil), f.proof(tok, nil)))
		cases = append(cases, proofCase{bad, false})
		cases = append(cases, proofCase{rsaProof(t, f, &otherRSA.PublicKey, otherRSA), true})
	}
	errs := make([]*Error, len(cases))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(cases); i = int(next.Add(1) - 1) {
				_, errs[i] = f.v.Verify(context.Background(), cases[i].r)
			}
		}()
	}
	wg.Wait()
	for i, c := range cases {
		switch {
		case c.ok && errs[i] != nil:
			t.Errorf("case %d: a good proof was denied: %v", i, errs[i])
		case !c.ok && (errs[i] == nil || errs[i].Reason != "proof_signature"):
			t.Errorf("case %d: a proof with another proof's signature: want proof_signature, got %v", i, errs[i])
		}
	}
}
