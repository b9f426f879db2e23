package authz

import "fmt"

// DenialClass is the class of a denial. It decides the HTTP status and the
// WWW-Authenticate challenge; the caller maps it, authz does not
// know about HTTP responses.
type DenialClass int

const (
	// NoCredentials: the request carries no Authorization header. 401, no error code.
	NoCredentials DenialClass = iota + 1
	// InvalidRequest: the request is malformed (two Authorization or DPoP
	// headers, a token in the query). 400 invalid_request.
	InvalidRequest
	// InvalidToken: the access token fails a check. 401 invalid_token.
	InvalidToken
	// InvalidProof: the DPoP proof fails a check, replay included. 401 invalid_dpop_proof.
	InvalidProof
	// UseNonce: nonces are enabled and the proof has none or a stale one. 401 use_dpop_nonce.
	UseNonce
	// InsufficientScope: a scope, the token kind, the security level or the HPR
	// number is missing. 403 insufficient_scope.
	InsufficientScope
	// NotMember: the organization is not authorized for the service. 403.
	NotMember
	// Unavailable: a dependency needed for the decision did not answer. 503.
	Unavailable
)

// Error is a denial. Reason is a stable, machine-readable code from a closed
// list (it goes to the audit log and to metrics); Description is the generic,
// human-readable text returned to the caller. Neither ever holds a claim value,
// a token, a proof, a pid or an organization number. Err, when set, is the
// underlying cause for debug logs only: it may hold library messages but never
// secrets either.
type Error struct {
	Class       DenialClass
	Reason      string
	Description string
	Err         error
	// Caller is the verified access token's principal when the denial came
	// after the token verified (scope, proof, binding, policy, membership),
	// else nil. It is for the audit log only: a request that got an Error
	// is never authenticated, and Error() never prints it.
	Caller *Principal
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Reason, e.Description, e.Err)
	}
	return e.Reason + ": " + e.Description
}

func (e *Error) Unwrap() error { return e.Err }

func deny(class DenialClass, reason, description string) *Error {
	return &Error{Class: class, Reason: reason, Description: description}
}

func denyErr(class DenialClass, reason, description string, err error) *Error {
	return &Error{Class: class, Reason: reason, Description: description, Err: err}
}
