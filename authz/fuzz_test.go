package authz

import (
	"context"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// FuzzVerifyToken feeds arbitrary Authorization values and access tokens
// through the whole verifier; none may panic, and none may pass.
func FuzzVerifyToken(f *testing.F) {
	fx := newFixture(f, nil)
	good := fx.token(nil)
	for _, s := range []string{good, "a.b.c", "", "..", "eyJhbGciOiJub25lIn0.e30.", good + ".x.y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		r := fx.request(token, "x.y.z")
		if p, derr := fx.v.Verify(context.Background(), r); derr == nil {
			t.Fatalf("a fuzzed token with a garbage proof passed: %+v", p)
		}
	})
}

// FuzzVerifyProof feeds arbitrary DPoP header values with a good token; none
// may panic, and only the one good proof may pass.
func FuzzVerifyProof(f *testing.F) {
	fx := newFixture(f, nil)
	tok := fx.token(nil)
	for _, s := range []string{fx.proof(tok, nil), "a.b.c", "", "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6Im5vbmUifQ.e30.", "x,y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, proof string) {
		if _, derr := fx.v.Verify(context.Background(), fx.request(tok, proof)); derr == nil {
			// Whatever passes is signed by the key the token is bound to,
			// cached proof header or not.
			if _, err := jws.Verify([]byte(strings.TrimSpace(proof)), jws.WithKey(jwa.ES256, clientPriv.Public())); err != nil {
				t.Fatalf("a proof passed that the client's key did not sign: %v", err)
			}
		}
	})
}
