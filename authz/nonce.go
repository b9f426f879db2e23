package authz

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"time"
)

// NonceLifetime is how long a server nonce is accepted after it was issued.
const NonceLifetime = 2 * time.Minute

// nonceMAC is the length of the truncated HMAC in a nonce: 128 bits.
const nonceMAC = 16

// Nonces issues and checks stateless DPoP server nonces (RFC 9449 §9). A nonce
// is base64url(issued-at seconds ‖ HMAC-SHA256(secret, label ‖ issued-at)),
// so every replica that shares the secret accepts every other replica's
// nonces, and nothing is stored.
type Nonces struct {
	secret []byte
}

// NewNonces returns a nonce issuer for secret. The verifier judges a
// nonce's age (Age) against NonceLifetime and its own future skew.
func NewNonces(secret []byte) *Nonces {
	return &Nonces{secret: append([]byte(nil), secret...)}
}

// Issue returns a nonce stamped with now.
func (n *Nonces) Issue(now time.Time) string {
	var buf [8 + nonceMAC]byte
	binary.BigEndian.PutUint64(buf[:8], uint64(now.Unix()))
	copy(buf[8:], n.mac(buf[:8]))
	return base64.RawURLEncoding.EncodeToString(buf[:])
}

// Age reports how old a nonce is, and false when it was not issued with this
// secret or is not of the nonce form at all.
func (n *Nonces) Age(nonce string, now time.Time) (time.Duration, bool) {
	var buf [8 + nonceMAC]byte
	if base64.RawURLEncoding.DecodedLen(len(nonce)) != len(buf) {
		return 0, false
	}
	if _, err := base64.RawURLEncoding.Decode(buf[:], []byte(nonce)); err != nil {
		return 0, false
	}
	if !hmac.Equal(buf[8:], n.mac(buf[:8])) {
		return 0, false
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(buf[:8])), 0)
	return now.Sub(issued), true
}

func (n *Nonces) mac(stamp []byte) []byte {
	h := hmac.New(sha256.New, n.secret)
	h.Write([]byte("helsegate dpop nonce v1\x00"))
	h.Write(stamp)
	return h.Sum(nil)[:nonceMAC]
}
