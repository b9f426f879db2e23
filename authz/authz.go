// Package authz verifies HelseID access tokens and their DPoP proofs (RFC 9068,
// RFC 9449) and applies the gateway's token policy. It has no Caddy import: the
// whole verification story can be read here, and tested with an injected clock.
//
// The checks run in this order: request framing, access token, DPoP proof,
// token kind and user policy, the trust-framework attest, membership. The first failing check stops the request with an *Error that
// says which class of failure it is (DenialClass) and why (Reason).
package authz

import (
	"context"
	"errors"
	"time"
)

// Clock tells the time. Verification never calls time.Now directly, so tests
// can pin the instant a token or proof is judged at.
type Clock interface {
	Now() time.Time
}

// ClockFunc adapts a function to Clock.
type ClockFunc func() time.Time

// Now returns f().
func (f ClockFunc) Now() time.Time { return f() }

// SystemClock is the wall clock.
var SystemClock Clock = ClockFunc(time.Now)

// ReplayStore remembers DPoP proof identifiers for as long as a proof could be
// accepted, so that the same proof is never accepted twice (RFC 9449 §11.1).
type ReplayStore interface {
	// FirstUse atomically records key for ttl. It reports true when the key was
	// not recorded before (the proof is fresh) and false when it was (a replay).
	// issuedAt is the proof's iat: a store that may have lost records (a
	// restarted or failed-over Redis) cannot vouch for a proof issued before
	// the loss, and refuses it with an error wrapping ErrStoreRecovering.
	// Any error means the store could not answer; the caller denies.
	FirstUse(ctx context.Context, key string, issuedAt time.Time, ttl time.Duration) (bool, error)
}

// ErrStoreRecovering is wrapped by a ReplayStore error when the store cannot
// tell whether a proof was used before: its shared records may have been lost
// (or it cannot reach them) and the proof was issued before that moment.
// The request is denied as a temporary condition (503), not as a bad proof:
// a client that signs a fresh proof a moment later is accepted.
var ErrStoreRecovering = errors.New("the replay store may have lost records older than this proof")
