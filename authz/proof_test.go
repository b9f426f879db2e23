package authz

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

func TestProof(t *testing.T) {
	otherPub := func() jwk.Key { k, _ := jwk.FromRaw(client2Priv.Public()); return k }
	runCases(t, []verifyCase{
		{name: "not a compact jws", req: func(f *fixture) Request { return f.request(f.token(nil), "abc") }, class: InvalidProof, reason: "proof_malformed"},
		{name: "garbage segments", req: func(f *fixture) Request { return f.request(f.token(nil), "a.b.c") }, class: InvalidProof, reason: "proof_malformed"},
		{name: "typ missing", req: withProof(func(h, c map[string]any) { delete(h, "typ") }), class: InvalidProof, reason: "proof_typ"},
		{name: "typ at+jwt", req: withProof(func(h, c map[string]any) { h["typ"] = "at+jwt" }), class: InvalidProof, reason: "proof_typ"},
		{name: "alg outside dpop_algorithms", cfg: func(c *Config) { c.DPoPAlgorithms = []string{"RS256"} },
			req: withProof(nil), class: InvalidProof, reason: "proof_alg"},
		{name: "alg none", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			h["alg"] = "none"
			return f.request(tok, unsigned(t, h, c))
		}, class: InvalidProof, reason: "proof_alg"},
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
		}, class: InvalidProof, reason: "proof_alg"},
		{name: "jwk missing", req: withProof(func(h, c map[string]any) { delete(h, "jwk") }), class: InvalidProof, reason: "proof_jwk"},
		{name: "jwk with private key", req: withProof(func(h, c map[string]any) {
			priv, _ := jwk.FromRaw(clientPriv)
			h["jwk"] = priv
		}), class: InvalidProof, reason: "proof_jwk"},
		{name: "jwk EC coordinate longer than its curve", req: withProof(func(h, c map[string]any) {
			// The same point, y with a leading zero byte: 33 bytes for P-256.
			x, y := clientPriv.X.FillBytes(make([]byte, 32)), clientPriv.Y.FillBytes(make([]byte, 33))
			key, err := jwk.ParseKey([]byte(`{"kty":"EC","crv":"P-256","x":"` + base64.RawURLEncoding.EncodeToString(x) +
				`","y":"` + base64.RawURLEncoding.EncodeToString(y) + `"}`))
			if err != nil {
				t.Fatal(err)
			}
			h["jwk"] = key
		}), class: InvalidProof, reason: "proof_jwk"},
		{name: "jwk symmetric", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			sym, _ := jwk.FromRaw([]byte("0123456789abcdef0123456789abcdef"))
			h["jwk"] = sym
			h["alg"] = "HS256"
			return f.request(tok, sign(t, h, c, []byte("0123456789abcdef0123456789abcdef")))
		}, class: InvalidProof, reason: "proof_alg"},
		{name: "signature by another key than jwk", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			return f.request(tok, sign(t, h, c, client2Priv))
		}, class: InvalidProof, reason: "proof_signature"},
		{name: "jti missing", req: withProof(func(h, c map[string]any) { delete(c, "jti") }), class: InvalidProof, reason: "proof_claims"},
		{name: "jti empty", req: withProof(func(h, c map[string]any) { c["jti"] = "" }), class: InvalidProof, reason: "proof_claims"},
		{name: "htm missing", req: withProof(func(h, c map[string]any) { delete(c, "htm") }), class: InvalidProof, reason: "proof_claims"},
		{name: "htu missing", req: withProof(func(h, c map[string]any) { delete(c, "htu") }), class: InvalidProof, reason: "proof_claims"},
		{name: "iat missing", req: withProof(func(h, c map[string]any) { delete(c, "iat") }), class: InvalidProof, reason: "proof_claims"},
		{name: "iat as string", req: withProof(func(h, c map[string]any) { c["iat"] = "1764000000" }), class: InvalidProof, reason: "proof_claims"},
		{name: "htu as number", req: withProof(func(h, c map[string]any) { c["htu"] = 7 }), class: InvalidProof, reason: "proof_claims"},
		{name: "ath missing", req: withProof(func(h, c map[string]any) { delete(c, "ath") }), class: InvalidProof, reason: "proof_claims"},
		{name: "htm differs", req: withProof(func(h, c map[string]any) { c["htm"] = "POST" }), class: InvalidProof, reason: "proof_htm"},
		{name: "htm is case-sensitive", req: withProof(func(h, c map[string]any) { c["htm"] = "get" }), class: InvalidProof, reason: "proof_htm"},
		{name: "htu other path", req: withProof(func(h, c map[string]any) { c["htu"] = "https://" + testHost + "/other" }), class: InvalidProof, reason: "proof_htu"},
		{name: "htu other host", req: withProof(func(h, c map[string]any) { c["htu"] = "https://evil.example" + testPath }), class: InvalidProof, reason: "proof_htu"},
		{name: "htu other scheme", req: withProof(func(h, c map[string]any) { c["htu"] = "http://" + testHost + testPath }), class: InvalidProof, reason: "proof_htu"},
		{name: "htu relative", req: withProof(func(h, c map[string]any) { c["htu"] = testPath }), class: InvalidProof, reason: "proof_htu"},
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
			req: withProof(nil), class: InvalidProof, reason: "proof_htu"},
		{name: "iat too old", req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(-16 * time.Second).Unix() }), class: InvalidProof, reason: "proof_iat"},
		{name: "iat at max age", req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(-15 * time.Second).Unix() })},
		{name: "iat in the future", req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(6 * time.Second).Unix() }), class: InvalidProof, reason: "proof_iat"},
		{name: "iat within future skew", req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(5 * time.Second).Unix() })},
		{name: "dpop_max_age configured", cfg: func(c *Config) { c.DPoPMaxAge = 60 * time.Second },
			req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(-50 * time.Second).Unix() })},
		{name: "ath of another token", req: withProof(func(h, c map[string]any) { c["ath"] = ath("other") }), class: InvalidProof, reason: "proof_ath"},
		{name: "jwk is not the bound key", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			h["jwk"] = otherPub()
			return f.request(tok, sign(t, h, c, client2Priv))
		}, class: InvalidProof, reason: "proof_jkt"},
		{name: "replay store down", req: func(f *fixture) Request {
			f.replay.err = errBoom
			return withProof(nil)(f)
		}, class: Unavailable, reason: "replay_store_unavailable"},
		{name: "typ application/dpop+jwt accepted", req: withProof(func(h, c map[string]any) { h["typ"] = "application/dpop+jwt" })},
		{name: "typ in upper case accepted", req: withProof(func(h, c map[string]any) { h["typ"] = "DPOP+JWT" })},
		{name: "proof signature too long", req: func(f *fixture) Request {
			tok := f.token(nil)
			p := f.proof(tok, nil)
			return f.request(tok, p[:strings.LastIndexByte(p, '.')+1]+strings.Repeat("A", 800))
		}, class: InvalidProof, reason: "proof_malformed"},
		{name: "proof too large", req: withProof(func(h, c map[string]any) { c["pad"] = strings.Repeat("x", MaxProofSize) }),
			class: InvalidProof, reason: "proof_malformed"},
		{name: "rsa proof key below 2048 bits", req: func(f *fixture) Request {
			small, err := rsa.GenerateKey(rand.Reader, 1024)
			if err != nil {
				t.Fatal(err)
			}
			return rsaProof(t, f, small.Public().(*rsa.PublicKey), small)
		}, class: InvalidProof, reason: "proof_alg"},
		{name: "rsa proof key above 4096 bits", req: func(f *fixture) Request {
			// A made-up modulus: the size is refused before any signature.
			n := new(big.Int).Lsh(big.NewInt(1), 4104)
			n.Add(n, big.NewInt(12345))
			return rsaProof(t, f, &rsa.PublicKey{N: n, E: 65537}, otherRSA)
		}, class: InvalidProof, reason: "proof_alg"},
		{name: "duplicate claim", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			payload, _ := json.Marshal(c)
			// Two htm members: a reader that kept the last would see POST.
			payload = append(payload[:len(payload)-1], []byte(`,"htm":"POST"}`)...)
			return f.request(tok, signPayload(t, h, payload, clientPriv))
		}, class: InvalidProof, reason: "proof_claims"},
		{name: "data after the claims", req: func(f *fixture) Request {
			tok := f.token(nil)
			h, c := f.proofParts(tok)
			payload, _ := json.Marshal(c)
			return f.request(tok, signPayload(t, h, append(payload, []byte(`{}`)...), clientPriv))
		}, class: InvalidProof, reason: "proof_claims"},
		{name: "dpop_future_skew configured: inside", cfg: func(c *Config) { c.DPoPFutureSkew = 30 * time.Second },
			req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(25 * time.Second).Unix() })},
		{name: "dpop_future_skew configured: beyond", cfg: func(c *Config) { c.DPoPFutureSkew = 30 * time.Second },
			req: withProof(func(h, c map[string]any) { c["iat"] = testNow.Add(31 * time.Second).Unix() }), class: InvalidProof, reason: "proof_iat"},
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
