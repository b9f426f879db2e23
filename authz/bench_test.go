package authz

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// BenchmarkVerifyCachedTokenES256 is the hot path: a reused (cached) access
// token and a fresh ES256 proof per request. Proofs are signed before the
// timer starts, so the numbers are the gateway's alone.
func BenchmarkVerifyCachedTokenES256(b *testing.B) {
	f := newFixture(b, nil)
	tok := f.token(nil)
	reqs := make([]Request, b.N+1)
	for i := range reqs {
		reqs[i] = f.request(tok, f.proof(tok, nil))
	}
	verifyEach(b, f, reqs[:b.N], reqs[b.N])
}

// BenchmarkVerifyUncachedToken adds the RS256 signature of a new token to
// every request.
func BenchmarkVerifyUncachedToken(b *testing.B) {
	f := newFixture(b, nil)
	reqs := make([]Request, b.N)
	for i := range reqs {
		tok := f.token(func(h, c map[string]any) { c["jti"] = randomJTI() })
		reqs[i] = f.request(tok, f.proof(tok, nil))
	}
	verifyEach(b, f, reqs, Request{})
}

func BenchmarkNormalizeHTU(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, _ = NormalizeHTU("https://api.example.no/kjernejournal/v1/patient")
	}
}

// BenchmarkVerifyCachedTokenRS256 is the hot path with an RSA client: a
// cached access token and a fresh RS256 proof per request.
func BenchmarkVerifyCachedTokenRS256(b *testing.B) {
	f := newFixture(b, nil)
	tok := f.token(func(h, c map[string]any) { c["cnf"] = map[string]any{"jkt": thumbprint(b, otherRSA.Public())} })
	pub, err := jwk.FromRaw(otherRSA.Public())
	if err != nil {
		b.Fatal(err)
	}
	reqs := make([]Request, b.N+1)
	for i := range reqs {
		h, c := f.proofParts(tok)
		h["jwk"], h["alg"] = pub, "RS256"
		reqs[i] = f.request(tok, sign(b, h, c, otherRSA))
	}
	verifyEach(b, f, reqs[:b.N], reqs[b.N])
}

// BenchmarkVerifyBearerCached is dpop optional with a reused unbound Bearer
// token: no proof, the token's signature cached.
func BenchmarkVerifyBearerCached(b *testing.B) {
	f := newFixture(b, func(c *Config) { c.DPoP = DPoPOptional })
	tok := f.token(func(h, c map[string]any) { delete(c, "cnf") })
	r := Request{Method: "GET", Scheme: "https", Host: testHost, EscapedPath: testPath, Authorization: []string{"Bearer " + tok}}
	ctx := context.Background()
	if _, derr := f.v.Verify(ctx, r); derr != nil {
		b.Fatal(derr)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, derr := f.v.Verify(ctx, r); derr != nil {
			b.Fatal(derr)
		}
	}
}

// BenchmarkJWXVerifyES256 and BenchmarkJWXVerifyRS256 are the floor: jwx's
// verification of one proof signature, the cost no gateway can avoid.
func BenchmarkJWXVerifyES256(b *testing.B) {
	testKeys(b)
	benchJWXVerify(b, jwa.ES256, clientPriv, &clientPriv.PublicKey)
}

func BenchmarkJWXVerifyRS256(b *testing.B) {
	testKeys(b)
	benchJWXVerify(b, jwa.RS256, otherRSA, &otherRSA.PublicKey)
}

func benchJWXVerify(b *testing.B, alg jwa.SignatureAlgorithm, priv, pub any) {
	f := newFixture(b, nil)
	tok := f.token(nil)
	const n = 64
	inputs, sigs := make([][]byte, n), make([][]byte, n)
	for i := range inputs {
		h, c := f.proofParts(tok)
		delete(h, "jwk")
		h["alg"] = alg.String()
		p := sign(b, h, c, priv)
		dot := strings.LastIndexByte(p, '.')
		sig, err := base64.RawURLEncoding.DecodeString(p[dot+1:])
		if err != nil {
			b.Fatal(err)
		}
		inputs[i], sigs[i] = []byte(p[:dot]), sig
	}
	v, err := jws.NewVerifier(alg)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := v.Verify(inputs[i%n], sigs[i%n], pub); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// verifyEach verifies reqs, one per iteration, after warm (when it has
// credentials) has filled the caches outside the timer.
func verifyEach(b *testing.B, f *fixture, reqs []Request, warm Request) {
	b.Helper()
	ctx := context.Background()
	if warm.Authorization != nil {
		if _, derr := f.v.Verify(ctx, warm); derr != nil {
			b.Fatal(derr)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range reqs {
		if _, derr := f.v.Verify(ctx, reqs[i]); derr != nil {
			b.Fatal(derr)
		}
	}
}
