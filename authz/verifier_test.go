package authz

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

type verifyCase struct {
	name   string
	cfg    func(*Config)
	req    func(f *fixture) Request
	class  DenialClass
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
			f.check(t, tc.req(f), tc.class, tc.reason)
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
		}, class: NoCredentials, reason: "no_credentials"},
		{name: "token in query", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.TokenInQuery = true
			return r
		}, class: InvalidRequest, reason: "token_in_query"},
		{name: "two authorization headers", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization = append(r.Authorization, r.Authorization[0])
			return r
		}, class: InvalidRequest, reason: "multiple_authorization"},
		{name: "scheme without token", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization = []string{"DPoP"}
			return r
		}, class: InvalidRequest, reason: "malformed_authorization"},
		{name: "token not token68", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization = []string{"DPoP abc def"}
			return r
		}, class: InvalidRequest, reason: "malformed_authorization"},
		{name: "other scheme is no credentials", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization = []string{"Basic dXNlcjpwYXNz"}
			return r
		}, class: NoCredentials, reason: "unsupported_scheme"},
		{name: "scheme is case-insensitive", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.Authorization[0] = "dpop " + strings.TrimPrefix(r.Authorization[0], "DPoP ")
			return r
		}},
		{name: "bearer refused when dpop required", req: func(f *fixture) Request {
			r := withToken(func(h, c map[string]any) { delete(c, "cnf") })(f)
			r.Authorization[0] = "Bearer " + strings.TrimPrefix(r.Authorization[0], "DPoP ")
			return r
		}, class: InvalidToken, reason: "bearer_not_allowed"},
		{name: "bearer with unbound token when optional", cfg: optional, req: func(f *fixture) Request {
			tok := f.token(func(h, c map[string]any) { delete(c, "cnf") })
			return Request{Method: "GET", Scheme: "https", Host: testHost, EscapedPath: testPath, Authorization: []string{"Bearer " + tok}}
		}},
		{name: "bound token as bearer refused", cfg: optional, req: func(f *fixture) Request {
			tok := f.token(nil)
			return Request{Method: "GET", Scheme: "https", Host: testHost, EscapedPath: testPath, Authorization: []string{"Bearer " + tok}}
		}, class: InvalidToken, reason: "bound_token_as_bearer"},
		{name: "dpop scheme without proof", req: func(f *fixture) Request {
			return f.request(f.token(nil), "")
		}, class: InvalidProof, reason: "proof_missing"},
		{name: "two dpop headers", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.DPoP = append(r.DPoP, r.DPoP[0])
			return r
		}, class: InvalidRequest, reason: "multiple_dpop"},
		{name: "comma-joined dpop values", req: func(f *fixture) Request {
			r := withToken(nil)(f)
			r.DPoP = []string{r.DPoP[0] + ", " + r.DPoP[0]}
			return r
		}, class: InvalidRequest, reason: "multiple_dpop"},
	})
}

func TestAccessToken(t *testing.T) {
	runCases(t, []verifyCase{
		{name: "jwe-shaped token", req: func(f *fixture) Request {
			return f.request("a.b.c.d.e", f.proof("a.b.c.d.e", nil))
		}, class: InvalidToken, reason: "token_malformed"},
		{name: "garbage segments", req: func(f *fixture) Request {
			return f.request("a.b.c", f.proof("a.b.c", nil))
		}, class: InvalidToken, reason: "token_malformed"},
		{name: "typ JOSE refused", req: withToken(func(h, c map[string]any) { h["typ"] = "JOSE" }), class: InvalidToken, reason: "token_typ"},
		{name: "typ missing refused", req: withToken(func(h, c map[string]any) { delete(h, "typ") }), class: InvalidToken, reason: "token_typ"},
		{name: "typ dpop+jwt refused", req: withToken(func(h, c map[string]any) { h["typ"] = "dpop+jwt" }), class: InvalidToken, reason: "token_typ"},
		{name: "typ upper case accepted", req: withToken(func(h, c map[string]any) { h["typ"] = "AT+JWT" })},
		{name: "typ JWT accepted", req: withToken(func(h, c map[string]any) { h["typ"] = "JWT" })},
		{name: "typ application/at+jwt accepted", req: withToken(func(h, c map[string]any) { h["typ"] = "application/at+jwt" })},
		{name: "typ restricted by config", cfg: func(c *Config) { c.TokenTypes = []string{"at+jwt"} },
			req: withToken(func(h, c map[string]any) { h["typ"] = "JWT" }), class: InvalidToken, reason: "token_typ"},
		{name: "alg outside the configured list", cfg: func(c *Config) { c.Algorithms = []string{"PS256"} },
			req: withToken(nil), class: InvalidToken, reason: "token_alg"},
		{name: "alg none", req: func(f *fixture) Request {
			h := tokenHeader()
			h["alg"] = "none"
			tok := unsigned(t, h, f.tokenClaims())
			return f.request(tok, f.proof(tok, nil))
		}, class: InvalidToken, reason: "token_alg"},
		{name: "alg HS256 keyed with the public key", req: func(f *fixture) Request {
			h := tokenHeader()
			h["alg"] = "HS256"
			pubDER, _ := jwk.FromRaw(issuerPriv.Public())
			n, _ := pubDER.Get("n")
			tok := sign(t, h, f.tokenClaims(), n.([]byte))
			return f.request(tok, f.proof(tok, nil))
		}, class: InvalidToken, reason: "token_alg"},
		{name: "alg does not fit the key type", req: func(f *fixture) Request {
			h := tokenHeader()
			h["alg"] = "ES256"
			tok := sign(t, h, f.tokenClaims(), ecIssuer)
			return f.request(tok, f.proof(tok, nil))
		}, class: InvalidToken, reason: "token_alg"},
		{name: "alg differs from the key's own alg", req: func(f *fixture) Request {
			h := tokenHeader()
			h["alg"] = "PS256"
			tok := sign(t, h, f.tokenClaims(), issuerPriv)
			return f.request(tok, f.proof(tok, nil))
		}, class: InvalidToken, reason: "token_alg"},
		{name: "kid missing", req: withToken(func(h, c map[string]any) { delete(h, "kid") }), class: InvalidToken, reason: "token_kid"},
		{name: "kid unknown", req: withToken(func(h, c map[string]any) { h["kid"] = "0000" }), class: InvalidToken, reason: "token_kid"},
		{name: "signature by another key", req: func(f *fixture) Request {
			tok := sign(t, tokenHeader(), f.tokenClaims(), otherRSA)
			return f.request(tok, f.proof(tok, nil))
		}, class: InvalidToken, reason: "token_signature"},
		{name: "signature tampered", req: func(f *fixture) Request {
			tok := f.token(nil)
			i := strings.LastIndexByte(tok, '.')
			c := "A"
			if tok[i+1] == 'A' { // the change must change something
				c = "B"
			}
			tok = tok[:i+1] + c + tok[i+2:]
			return f.request(tok, f.proof(tok, nil))
		}, class: InvalidToken, reason: "token_signature"},
		{name: "critical header", req: withToken(func(h, c map[string]any) { h["crit"] = []string{"exp"} }), class: InvalidToken, reason: "token_malformed"},
		{name: "claims of wrong type", req: withToken(func(h, c map[string]any) { c["iss"] = 42 }), class: InvalidToken, reason: "token_claims"},
		// Exact names, none twice (a duplicate cannot come out of a map: see TestTokenClaimsStrict).
		{name: "ISS for iss", req: withToken(func(h, c map[string]any) { c["ISS"] = c["iss"]; delete(c, "iss") }), class: InvalidToken, reason: "token_claims"},
		{name: "CNF for cnf", req: withToken(func(h, c map[string]any) { c["CNF"] = c["cnf"]; delete(c, "cnf") }), class: InvalidToken, reason: "token_claims"},
		{name: "JKT in cnf", req: withToken(func(h, c map[string]any) { c["cnf"] = map[string]any{"JKT": c["cnf"].(map[string]any)["jkt"]} }), class: InvalidToken, reason: "token_claims"},
		{name: "upper-case orgnr_parent", req: withToken(func(h, c map[string]any) {
			c[strings.ToUpper(ClaimOrgParent)] = c[ClaimOrgParent]
			delete(c, ClaimOrgParent)
		}), class: InvalidToken, reason: "token_claims"},
		{name: "issuer differs", req: withToken(func(h, c map[string]any) { c["iss"] = "https://helseid-sts.nhn.no" }), class: InvalidToken, reason: "token_issuer"},
		{name: "issuer with trailing slash", req: withToken(func(h, c map[string]any) { c["iss"] = testIssuer + "/" }), class: InvalidToken, reason: "token_issuer"},
		{name: "audience differs", req: withToken(func(h, c map[string]any) { c["aud"] = "nhn:msh" }), class: InvalidToken, reason: "token_audience"},
		{name: "audience missing", req: withToken(func(h, c map[string]any) { delete(c, "aud") }), class: InvalidToken, reason: "token_audience"},
		{name: "audience in an array", req: withToken(func(h, c map[string]any) { c["aud"] = []string{"nhn:msh", testAudience} })},
		{name: "single audience refuses two", cfg: func(c *Config) { c.SingleAudience = true },
			req: withToken(func(h, c map[string]any) { c["aud"] = []string{"nhn:msh", testAudience} }), class: InvalidToken, reason: "token_audience"},
		{name: "single audience accepts one in an array", cfg: func(c *Config) { c.SingleAudience = true },
			req: withToken(func(h, c map[string]any) { c["aud"] = []string{testAudience} })},
		{name: "exp missing", req: withToken(func(h, c map[string]any) { delete(c, "exp") }), class: InvalidToken, reason: "token_exp_missing"},
		{name: "expired", req: withToken(func(h, c map[string]any) { c["exp"] = testNow.Add(-6 * time.Second).Unix() }), class: InvalidToken, reason: "token_expired"},
		{name: "expired within clock skew", req: withToken(func(h, c map[string]any) { c["exp"] = testNow.Add(-4 * time.Second).Unix() })},
		{name: "exp as string", req: withToken(func(h, c map[string]any) { c["exp"] = "1999999999" }), class: InvalidToken, reason: "token_claims"},
		{name: "not yet valid", req: withToken(func(h, c map[string]any) { c["nbf"] = testNow.Add(6 * time.Second).Unix() }), class: InvalidToken, reason: "token_not_yet_valid"},
		{name: "nbf within clock skew", req: withToken(func(h, c map[string]any) { c["nbf"] = testNow.Add(4 * time.Second).Unix() })},
		{name: "client_id missing", req: withToken(func(h, c map[string]any) { delete(c, "client_id") }), class: InvalidToken, reason: "token_client_id"},
		{name: "jti missing", req: withToken(func(h, c map[string]any) { delete(c, "jti") }), class: InvalidToken, reason: "token_jti"},
		{name: "exp negative", req: withToken(func(h, c map[string]any) { c["exp"] = -1 }), class: InvalidToken, reason: "token_claims"},
		{name: "exp beyond range", req: withToken(func(h, c map[string]any) { c["exp"] = 1e300 }), class: InvalidToken, reason: "token_claims"},
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
		}, class: InvalidToken, reason: "token_alg"},
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
		}, class: InvalidToken, reason: "token_alg"},
		{name: "RS256 header naming the issuer's EC key", req: func(f *fixture) Request {
			h := tokenHeader()
			h["kid"] = "EC1"
			tok := sign(t, h, f.tokenClaims(), issuerPriv)
			return f.request(tok, f.proof(tok, nil))
		}, class: InvalidToken, reason: "token_alg"},
		{name: "scope missing", req: withToken(func(h, c map[string]any) { c["scope"] = []string{"openid"} }), class: InsufficientScope, reason: "scope_missing"},
		{name: "scope absent", req: withToken(func(h, c map[string]any) { delete(c, "scope") }), class: InsufficientScope, reason: "scope_missing"},
		{name: "scope as a space-separated string", req: withToken(func(h, c map[string]any) { c["scope"] = "openid " + testScope })},
		{name: "every configured scope required", cfg: func(c *Config) { c.Scopes = []string{testScope, "nhn:kjernejournal/tillitsrammeverk"} },
			req: withToken(nil), class: InsufficientScope, reason: "scope_missing"},
		{name: "cnf without jkt", req: withToken(func(h, c map[string]any) { c["cnf"] = map[string]any{"x5t#S256": "abc"} }), class: InvalidToken, reason: "token_cnf"},
		{name: "dpop scheme with unbound token", req: withToken(func(h, c map[string]any) { delete(c, "cnf") }), class: InvalidToken, reason: "token_not_bound"},
		{name: "issuer keys unavailable", req: func(f *fixture) Request {
			f.keys.err = errBoom
			return withToken(nil)(f)
		}, class: Unavailable, reason: "jwks_unavailable"},
	})
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
		{name: "user route refuses machine token", cfg: func(c *Config) { c.TokenKind = KindUser }, req: withToken(nil), class: InsufficientScope, reason: "token_kind"},
		{name: "user route accepts user token", cfg: func(c *Config) { c.TokenKind = KindUser }, req: withToken(user("4", ""))},
		{name: "machine route refuses user token", cfg: func(c *Config) { c.TokenKind = KindMachine }, req: withToken(user("4", "")), class: InsufficientScope, reason: "token_kind"},
		{name: "sub alone does not make a user", cfg: func(c *Config) { c.TokenKind = KindUser },
			req: withToken(func(h, c map[string]any) { c["sub"] = "x" }), class: InsufficientScope, reason: "token_kind"},
		{name: "security level too low", cfg: func(c *Config) { c.MinSecurityLevel = 4 }, req: withToken(user("3", "")), class: InsufficientScope, reason: "security_level"},
		{name: "security level missing", cfg: func(c *Config) { c.MinSecurityLevel = 4 }, req: withToken(user("", "")), class: InsufficientScope, reason: "security_level"},
		{name: "security level as number refused", cfg: func(c *Config) { c.MinSecurityLevel = 3 },
			req: withToken(func(h, c map[string]any) { user("", "")(h, c); c[ClaimSecurityLevel] = 4 }), class: InvalidToken, reason: "token_claims"},
		{name: "security level enough", cfg: func(c *Config) { c.MinSecurityLevel = 4 }, req: withToken(user("4", ""))},
		{name: "security level applies to user tokens only", cfg: func(c *Config) { c.MinSecurityLevel = 4 }, req: withToken(nil)},
		{name: "hpr required", cfg: func(c *Config) { c.RequireHPR = true }, req: withToken(user("4", "")), class: InsufficientScope, reason: "hpr_missing"},
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
