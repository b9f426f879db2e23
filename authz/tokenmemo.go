package authz

import "sync/atomic"

// TokenMemo is the caller's slot on one verified access token: it lives as
// long as the token's entry in the verified-token cache, and every request
// that presents the token is handed the same one (Principal.Memo). A caller
// keeps there what it derives from the token's own fields, so as to derive
// it once per token instead of on every request: the Caddy handler keeps
// its audit entry's caller fields there, encoded. The verifier never reads
// it; what a caller keeps must be checked by the caller against the
// Principal it is used for.
type TokenMemo struct{ v atomic.Pointer[any] }

// Load returns what was last stored, or nil.
func (m *TokenMemo) Load() any {
	if p := m.v.Load(); p != nil {
		return *p
	}
	return nil
}

// Store replaces what is kept.
func (m *TokenMemo) Store(v any) { m.v.Store(&v) }
