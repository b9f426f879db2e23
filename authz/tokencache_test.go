package authz

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// benchToken is about the size of a HelseID access token.
var benchToken = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoIiwidHlwIjoiYXQrand0In0." +
	strings.Repeat("eyJzdWIiOiJiZW5jaCJ9", 40) + "." + strings.Repeat("c2ln", 86)

func TestTokenCacheExactText(t *testing.T) {
	c := newTokenCache(4)
	vt := &verifiedToken{exp: testNow.Add(time.Hour)}
	tok := []byte(benchToken)
	c.put(string(tok), vt, testNow)
	tok[0] = 'X' // the cache keeps its own copy of the text
	if got, ok := c.get(benchToken); !ok || got != vt {
		t.Fatal("the token is not found by its text")
	}
	other := benchToken[:len(benchToken)-1] + "A"
	if _, ok := c.get(other); ok {
		t.Fatal("a token differing in its last byte was found")
	}
	if _, ok := c.get(benchToken[:len(benchToken)-1]); ok {
		t.Fatal("a prefix of a cached token was found")
	}
}

// TestTokenCacheHitAllocs holds the cached-token lookup to no allocation.
func TestTokenCacheHitAllocs(t *testing.T) {
	c := newTokenCache(4)
	c.put(benchToken, &verifiedToken{exp: testNow.Add(time.Hour)}, testNow)
	if n := testing.AllocsPerRun(100, func() {
		if _, ok := c.get(benchToken); !ok {
			t.Fatal("miss")
		}
	}); n != 0 {
		t.Fatalf("a token cache hit allocates %.0f times, want 0", n)
	}
}

// BenchmarkTokenCacheHit is the lookup of a reused token of about 1 KB (it
// was a SHA-256 of the token and a map lookup of the digest).
func BenchmarkTokenCacheHit(b *testing.B) {
	c := newTokenCache(DefaultTokenCacheSize)
	c.put(benchToken, &verifiedToken{exp: testNow.Add(time.Hour)}, testNow)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.get(benchToken); !ok {
			b.Fatal("miss")
		}
	}
}

// TestCachedTokenSyntax: the token68 scan is skipped only for the exact text
// of a cached token; the same token with one character more is scanned and
// refused.
func TestCachedTokenSyntax(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.token(nil)
	f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
	if f.v.tokens.len() != 1 {
		t.Fatalf("want the token cached, cache holds %d", f.v.tokens.len())
	}
	for _, bad := range []string{tok + "!", tok + "\x00", "\"" + tok} {
		f.check(t, f.request(bad, f.proof(bad, nil)), InvalidRequest, "malformed_authorization")
	}
	f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
}

// TestVerifyCachedTokenAllocs holds the hot path, a cached token and a fresh
// ES256 proof, to two allocations besides the signature verification's own
// (jwx and crypto/ecdsa): the Principal and the replay key. The proof's
// payload is decoded on the stack.
func TestVerifyCachedTokenAllocs(t *testing.T) {
	f := newFixture(t, nil)
	f.replay.seen = make(map[string]time.Duration, 1024) // no growth in the loop
	tok := f.token(nil)
	const runs = 200
	reqs := make([]Request, runs+2)
	for i := range reqs {
		reqs[i] = f.request(tok, f.proof(tok, nil))
	}
	ctx := context.Background()
	if _, derr := f.v.Verify(ctx, reqs[0]); derr != nil {
		t.Fatal(derr)
	}
	i := 1
	got := testing.AllocsPerRun(runs, func() {
		if _, derr := f.v.Verify(ctx, reqs[i]); derr != nil {
			t.Fatal(derr)
		}
		i++
	})

	// The same proof signature verified by jwx alone: the floor's allocations.
	p := reqs[0].DPoP[0]
	dot := strings.LastIndexByte(p, '.')
	sig, err := base64.RawURLEncoding.DecodeString(p[dot+1:])
	if err != nil {
		t.Fatal(err)
	}
	v, err := jws.NewVerifier(jwa.ES256)
	if err != nil {
		t.Fatal(err)
	}
	input := []byte(p[:dot])
	floor := testing.AllocsPerRun(runs, func() {
		if err := v.Verify(input, sig, &clientPriv.PublicKey); err != nil {
			t.Fatal(err)
		}
	})
	if got-floor > 2 {
		t.Fatalf("Verify of a cached token allocates %.1f times, the signature alone %.1f: want at most 2 more", got, floor)
	}
}

// TestTokenMemoPerToken holds Principal.Memo to the token: every request
// with one token is handed the same memo, another token another one.
func TestTokenMemoPerToken(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.token(nil)
	p1 := f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
	p2 := f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
	if p1.Memo == nil || p1.Memo != p2.Memo {
		t.Fatalf("two requests with one token got memos %p and %p", p1.Memo, p2.Memo)
	}
	p1.Memo.Store("kept")
	if got := p2.Memo.Load(); got != "kept" {
		t.Fatalf("memo holds %v", got)
	}
	other := f.token(func(h, c map[string]any) { c["jti"] = "another-jti" })
	if p3 := f.check(t, f.request(other, f.proof(other, nil)), 0, ""); p3.Memo == p1.Memo {
		t.Fatal("another token shares the memo")
	}
}
