package authz

import (
	"context"
	"testing"
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
	if _, derr := f.v.Verify(context.Background(), reqs[b.N]); derr != nil {
		b.Fatal(derr)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, derr := f.v.Verify(ctx, reqs[i]); derr != nil {
			b.Fatal(derr)
		}
	}
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
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, derr := f.v.Verify(ctx, reqs[i]); derr != nil {
			b.Fatal(derr)
		}
	}
}

func BenchmarkNormalizeHTU(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, _ = NormalizeHTU("https://api.example.no/kjernejournal/v1/patient")
	}
}
