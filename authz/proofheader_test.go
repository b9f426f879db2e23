package authz

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// headerSeg is the protected header segment of a compact JWS.
func headerSeg(jws string) string { return jws[:strings.IndexByte(jws, '.')] }

// withSignatureOf returns proof with the signature segment of other.
func withSignatureOf(proof, other string) string {
	return proof[:strings.LastIndexByte(proof, '.')] + other[strings.LastIndexByte(other, '.'):]
}

func TestProofHeaderCache(t *testing.T) {
	t.Run("a header is cached once its proof passed", func(t *testing.T) {
		f := newFixture(t, nil)
		tok := f.token(nil)
		p1 := f.proof(tok, nil)
		f.check(t, f.request(tok, p1), 0, "")
		if f.v.proofHeaders.len() != 1 {
			t.Fatalf("cache holds %d headers, want 1", f.v.proofHeaders.len())
		}
		ph, ok := f.v.proofHeaders.get(headerSeg(p1))
		if !ok || ph.jkt != f.jkt {
			t.Fatalf("cached header %+v, want thumbprint %s", ph, f.jkt)
		}
		// The next proofs of the client, under the same header, are served
		// from the cache and still fully checked.
		p2 := f.proof(tok, nil)
		if headerSeg(p2) != headerSeg(p1) {
			t.Fatal("the fixture's proofs do not share their header")
		}
		f.check(t, f.request(tok, p2), 0, "")
		f.check(t, f.request(tok, p2), InvalidProof, "proof_replay")
		f.check(t, f.request(tok, f.proof(tok, func(h, c map[string]any) { c["htm"] = "POST" })), InvalidProof, "proof_htm")
		if f.v.proofHeaders.len() != 1 {
			t.Fatalf("cache holds %d headers, want 1", f.v.proofHeaders.len())
		}
	})

	t.Run("a long header passes but is not kept", func(t *testing.T) {
		f := newFixture(t, nil)
		tok := f.token(nil)
		for i := 0; i < 3; i++ { // each with another junk member: a new header
			p := f.proof(tok, func(h, c map[string]any) { h["x-junk"] = strings.Repeat(string(rune('a'+i)), maxCachedProofHeader) })
			f.check(t, f.request(tok, p), 0, "")
		}
		if n := f.v.proofHeaders.len(); n != 0 {
			t.Fatalf("cache holds %d long headers, want none", n)
		}
	})

	t.Run("a bad signature under a cached header is refused", func(t *testing.T) {
		f := newFixture(t, nil)
		tok := f.token(nil)
		f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
		// Same header (the client's key), signed by another key.
		h, c := f.proofParts(tok)
		forged := sign(t, h, c, client2Priv)
		if _, ok := f.v.proofHeaders.get(headerSeg(forged)); !ok {
			t.Fatal("the forged proof's header is not the cached one")
		}
		f.check(t, f.request(tok, forged), InvalidProof, "proof_signature")
		// A good proof's signature on other claims.
		good := f.proof(tok, nil)
		other := f.proof(tok, func(h, c map[string]any) { c["htu"] = "https://" + testHost + "/other" })
		f.check(t, f.request(tok, withSignatureOf(other, good)), InvalidProof, "proof_signature")
		// A truncated and an empty signature.
		f.check(t, f.request(tok, good[:len(good)-4]), InvalidProof, "proof_signature")
		f.check(t, f.request(tok, good[:strings.LastIndexByte(good, '.')+1]), InvalidProof, "proof_signature")
		f.check(t, f.request(tok, good), 0, "")
	})

	t.Run("a header that fails a check is never cached", func(t *testing.T) {
		otherP256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		otherPub, _ := jwk.FromRaw(otherP256.Public())
		privJWK, _ := jwk.FromRaw(clientPriv)
		for _, tc := range []struct {
			name   string
			proof  func(f *fixture, tok string) string
			reason string
		}{
			{"typ", func(f *fixture, tok string) string {
				return f.proof(tok, func(h, c map[string]any) { h["typ"] = "jwt" })
			}, "proof_typ"},
			{"alg outside the list", func(f *fixture, tok string) string {
				h, c := f.proofParts(tok)
				h["alg"] = "ES384"
				return sign(t, h, c, clientPriv)
			}, "proof_alg"},
			{"private jwk", func(f *fixture, tok string) string {
				return f.proof(tok, func(h, c map[string]any) { h["jwk"] = privJWK })
			}, "proof_jwk"},
			{"crit", func(f *fixture, tok string) string {
				return f.proof(tok, func(h, c map[string]any) { h["crit"] = []string{"x"}; h["x"] = 1 })
			}, "proof_malformed"},
			{"unencoded payload", func(f *fixture, tok string) string {
				h, c := f.proofParts(tok)
				h["b64"] = false
				return unsigned(t, h, c) + "AAAA"
			}, "proof_malformed"},
			// The header checks pass, but a later check fails: the header
			// is still not cached.
			{"bad signature", func(f *fixture, tok string) string {
				h, c := f.proofParts(tok)
				return sign(t, h, c, client2Priv)
			}, "proof_signature"},
			{"claims", func(f *fixture, tok string) string {
				return f.proof(tok, func(h, c map[string]any) { delete(c, "jti") })
			}, "proof_claims"},
			{"htu", func(f *fixture, tok string) string {
				return f.proof(tok, func(h, c map[string]any) { c["htu"] = "https://evil.example/" })
			}, "proof_htu"},
			{"key not bound to the token", func(f *fixture, tok string) string {
				h, c := f.proofParts(tok)
				h["jwk"] = otherPub
				return sign(t, h, c, otherP256)
			}, "proof_jkt"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				f := newFixture(t, func(c *Config) { c.DPoPAlgorithms = []string{"ES256", "RS256"} })
				tok := f.token(nil)
				p := tc.proof(f, tok)
				f.check(t, f.request(tok, p), InvalidProof, tc.reason)
				if n := f.v.proofHeaders.len(); n != 0 {
					t.Fatalf("a proof that failed left %d headers in the cache", n)
				}
				// A second time, the same answer: nothing was remembered.
				if tc.reason != "proof_replay" {
					f.check(t, f.request(tok, p), InvalidProof, tc.reason)
				}
			})
		}
	})

	t.Run("a header that failed is checked again, and cached once a proof passes", func(t *testing.T) {
		f := newFixture(t, nil)
		tok := f.token(nil)
		h, c := f.proofParts(tok)
		bad := sign(t, h, c, client2Priv)
		f.check(t, f.request(tok, bad), InvalidProof, "proof_signature")
		good := f.proof(tok, nil)
		if headerSeg(good) != headerSeg(bad) {
			t.Fatal("not the same header")
		}
		f.check(t, f.request(tok, good), 0, "")
		if f.v.proofHeaders.len() != 1 {
			t.Fatal("the header of a passing proof was not cached")
		}
	})

	t.Run("bounded", func(t *testing.T) {
		c := newProofHeaderCache(2)
		for i := 0; i < 5; i++ {
			c.put(strings.Repeat("h", i+1), &proofHeader{})
			if c.len() > 2 {
				t.Fatalf("cache grew past its bound: %d", c.len())
			}
		}
		if _, ok := c.get("hhhhh"); !ok {
			t.Fatal("the newest entry was dropped")
		}
		// Through the verifier: many keys, each bound to its own token.
		f := newFixture(t, nil)
		f.v.proofHeaders = newProofHeaderCache(3)
		for i := 0; i < 6; i++ {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			pub, _ := jwk.FromRaw(k.Public())
			tok := f.token(func(h, c map[string]any) { c["cnf"] = map[string]any{"jkt": thumbprint(t, k.Public())} })
			h, c := f.proofParts(tok)
			h["jwk"] = pub
			f.check(t, f.request(tok, sign(t, h, c, k)), 0, "")
			if n := f.v.proofHeaders.len(); n > 3 {
				t.Fatalf("cache grew past its bound: %d", n)
			}
		}
	})

	t.Run("cached per verifier: another route's algorithms apply", func(t *testing.T) {
		f := newFixture(t, nil)
		tok := f.token(nil)
		f.check(t, f.request(tok, f.proof(tok, nil)), 0, "")
		g := newFixture(t, func(c *Config) { c.DPoPAlgorithms = []string{"RS256"} })
		g.check(t, g.request(tok, g.proof(tok, nil)), InvalidProof, "proof_alg")
	})
}

// TestProofHeaderCacheKeepsNoRequest: the cache key is a copy, not a slice
// of the request's header value.
func TestProofHeaderCacheKeepsNoRequest(t *testing.T) {
	c := newProofHeaderCache(1)
	big := strings.Repeat("x", 1<<16)
	c.put(big[:10], &proofHeader{})
	for k := range c.entries.All() {
		if len(k) != 10 || unsafe.StringData(k) == unsafe.StringData(big) {
			t.Fatal("unexpected key")
		}
	}
}

// TestProofHeaderCacheConcurrent: proofs under one header verified at once
// (run with -race).
func TestProofHeaderCacheConcurrent(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.token(nil)
	const workers, each = 8, 20
	reqs := make([][]Request, workers)
	for w := range reqs {
		for range each {
			reqs[w] = append(reqs[w], f.request(tok, f.proof(tok, nil)))
		}
	}
	var wg sync.WaitGroup
	for w := range reqs {
		wg.Go(func() {
			for _, r := range reqs[w] {
				if _, derr := f.v.Verify(context.Background(), r); derr != nil {
					t.Error(derr)
				}
			}
		})
	}
	wg.Wait()
	if n := f.v.proofHeaders.len(); n != 1 {
		t.Fatalf("%d headers cached, want 1", n)
	}
}
