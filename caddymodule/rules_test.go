package caddymodule

import (
	"strings"
	"testing"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

// TestRulesSameInCaddyfileAndJSON checks that a Caddyfile and a JSON config
// breaking the same rule fail with the same words: the rule's own function
// answers both.
func TestRulesSameInCaddyfileAndJSON(t *testing.T) {
	const head = "helseid {\n issuer https://x.example\n audience a\n"
	for _, tc := range []struct {
		name      string
		caddyfile string       // the block's lines after issuer and audience
		json      func() error // the same value through Provision or Validate
		rule      error        // what the rule's function says of the value
	}{
		{"on_store_error", " on_store_error maybe\n",
			func() error { return (&Handler{OnStoreError: "maybe", verifier: new(authz.Verifier)}).Validate() },
			cache.ValidateFallbackMode("maybe")},
		{"dpop_nonce", " dpop_nonce abc\n",
			func() error { _, err := (&Handler{DPoPNonce: "abc"}).authzConfig(); return err },
			checkNonceSecret("abc")},
		{"attest options", " purposes BTG\n",
			func() error { _, err := (&Handler{Purposes: []string{"BTG"}}).authzConfig(); return err },
			errAttestOptions},
		{"route", " route /kj\n",
			func() error { _, err := (&Handler{Route: "/kj"}).routeLabel(); return err },
			checkRoute("/kj")},
		{"membership org", " membership kj {\n registry https://r.example\n org sibling\n }\n",
			func() error {
				_, err := (&MembershipConfig{Service: "kj", Registry: "https://r.example", Org: "sibling"}).validate()
				return err
			},
			checkOrg("sibling")},
		{"membership source", " membership kj {\n org parent\n }\n",
			func() error { _, err := (&MembershipConfig{Service: "kj"}).validate(); return err },
			(&MembershipConfig{}).checkSource()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.rule == nil {
				t.Fatal("the rule accepts the value")
			}
			_, cerr := parse(t, head+tc.caddyfile+"}")
			jerr := tc.json()
			for from, err := range map[string]error{"Caddyfile": cerr, "JSON": jerr} {
				if err == nil || !strings.Contains(err.Error(), tc.rule.Error()) {
					t.Errorf("%s config: got %v, want an error with %q", from, err, tc.rule)
				}
			}
		})
	}
}
