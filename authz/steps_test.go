package authz

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The steps of Verify, each alone: what it reads and the reason it denies
// with. The same reasons come out of Verify in verifier_test.go and
// proof_test.go, in the order of the checks.

func TestAuthorizationStep(t *testing.T) {
	required := &Verifier{cfg: Config{DPoP: DPoPRequired}}
	optional := &Verifier{cfg: Config{DPoP: DPoPOptional}}
	for _, tc := range []struct {
		name          string
		v             *Verifier
		values        []string
		scheme, token string
		reason        string
	}{
		{"none", required, nil, "", "", "no_credentials"},
		{"two", required, []string{"DPoP a", "DPoP b"}, "", "", "multiple_authorization"},
		{"no token", required, []string{"DPoP"}, "", "", "malformed_authorization"},
		{"blank token", required, []string{"DPoP    "}, "", "", "malformed_authorization"},
		{"dpop, any case", required, []string{" dpop  tok "}, "DPoP", "tok", ""},
		{"basic", optional, []string{"Basic abc"}, "", "", "unsupported_scheme"},
		{"bearer where dpop is required", required, []string{"Bearer tok"}, "", "", "bearer_not_allowed"},
		{"bearer where dpop is optional", optional, []string{"BEARER tok"}, "Bearer", "tok", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scheme, token, derr := tc.v.authorization(tc.values)
			if got := reasonOf(derr); got != tc.reason || scheme != tc.scheme || token != tc.token {
				t.Fatalf("got %q %q %q, want %q %q %q", scheme, token, got, tc.scheme, tc.token, tc.reason)
			}
		})
	}
}

func TestDPoPHeaderStep(t *testing.T) {
	for _, tc := range []struct {
		values        []string
		proof, reason string
	}{
		{nil, "", "proof_missing"},
		{[]string{"a.b.c", "d.e.f"}, "", "multiple_dpop"},
		{[]string{"a.b.c,d.e.f"}, "", "multiple_dpop"},
		{[]string{" a.b.c "}, "a.b.c", ""},
	} {
		proof, derr := dpopHeader(tc.values)
		if got := reasonOf(derr); got != tc.reason || proof != tc.proof {
			t.Errorf("%q: got %q %q, want %q %q", tc.values, proof, got, tc.proof, tc.reason)
		}
	}
}

func TestSplitProofStep(t *testing.T) {
	for _, tc := range []struct {
		name, proof, reason string
	}{
		{"too large", "a." + strings.Repeat("b", MaxProofSize) + ".c", "proof_malformed"},
		{"two segments", "a.b", "proof_malformed"},
		{"four segments", "a.b.c.d", "proof_malformed"},
		{"signature too long", "a.b." + strings.Repeat("A", 4*maxSignatureSize/3+4), "proof_malformed"},
		{"compact", "hh.pp.ss", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, derr := splitProof(tc.proof)
			if got := reasonOf(derr); got != tc.reason {
				t.Fatalf("got %q, want %q", got, tc.reason)
			}
			if derr == nil && (s.header != "hh" || s.payload != "pp" || s.sig != "ss" || s.signed != "hh.pp") {
				t.Fatalf("segments %+v", s)
			}
		})
	}
}

func TestIATStep(t *testing.T) {
	v := &Verifier{cfg: Config{DPoPMaxAge: 15 * time.Second, DPoPFutureSkew: 5 * time.Second}}
	for _, tc := range []struct {
		age    time.Duration
		reason string
	}{
		{15 * time.Second, ""},
		{15*time.Second + time.Nanosecond, "proof_iat"},
		{-5 * time.Second, ""},
		{-5*time.Second - time.Nanosecond, "proof_iat"},
	} {
		if got := reasonOf(v.checkIAT(testNow.Add(-tc.age), testNow)); got != tc.reason {
			t.Errorf("iat %v old: got %q, want %q", tc.age, got, tc.reason)
		}
	}
}

func TestReplayDenialStep(t *testing.T) {
	down := errors.New("connection refused")
	for _, tc := range []struct {
		fresh  bool
		err    error
		class  DenialClass
		reason string
	}{
		{true, nil, 0, ""},
		{false, nil, InvalidProof, "proof_replay"},
		{false, down, Unavailable, "replay_store_unavailable"},
		{false, fmt.Errorf("failover: %w", ErrStoreRecovering), Unavailable, "replay_store_recovering"},
	} {
		derr := replayDenial(tc.fresh, tc.err)
		if got := reasonOf(derr); got != tc.reason || (derr != nil && (derr.Class != tc.class || derr.Err != tc.err)) {
			t.Errorf("fresh %v, err %v: got %v", tc.fresh, tc.err, derr)
		}
	}
}

// reasonOf is the reason of a denial, "" for none.
func reasonOf(derr *Error) string {
	if derr == nil {
		return ""
	}
	return derr.Reason
}
