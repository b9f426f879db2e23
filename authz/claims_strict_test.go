package authz

import (
	"encoding/json"
	"testing"
)

// Two readers of one token must not disagree: a claim twice (encoding/json
// keeps the last, others the first) is refused, whatever its values.
func TestTokenClaimsStrict(t *testing.T) {
	for _, extra := range []string{
		`"iss":"https://evil.example",`,
		`"cnf":{"jkt":"another"},`,
		`"` + ClaimOrgParent + `":"974600951",`,
		`"aud":"other",`,
		`"x":{"a":1,"a":2},`,
	} {
		t.Run(extra, func(t *testing.T) {
			f := newFixture(t, nil)
			c, err := json.Marshal(f.tokenClaims())
			if err != nil {
				t.Fatal(err)
			}
			payload := append([]byte("{"+extra), c[1:]...)
			tok := signPayload(t, tokenHeader(), payload, issuerPriv)
			f.check(t, f.request(tok, f.proof(tok, nil)), InvalidToken, "token_claims")
		})
	}
}
