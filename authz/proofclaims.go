package authz

import (
	"errors"
	"strconv"
	"time"
	"unicode/utf8"
)

// proofClaims is the payload of a DPoP proof (RFC 9449 §4.2) as far as the
// gateway reads it. A string claim's value is a slice of the decoded payload
// (of a copy, for a string with escapes); absent and null are both "not
// present", and presence with the wrong JSON type fails the whole payload.
type proofClaims struct {
	JTI, HTM, HTU, ATH, Nonce claimString
	IAT                       time.Time
	HasIAT                    bool
}

// claimString is a string claim: its UTF-8 value and whether it is present.
type claimString struct {
	V       []byte
	Present bool
}

// errNumericDate is the error of a NumericDate out of range. It never
// quotes the payload.
var errNumericDate = errors.New("NumericDate must be a number of seconds in range")

// parseProofClaims decodes a proof payload into c, with the strict claims
// reader (jsonReader) and without an allocation in the common case: the
// payload must be exactly one JSON object (RFC 8259); the claims the gateway
// reads are matched by their exact, case-sensitive names (RFC 7519 §4), may
// each appear once (RFC 7519 §4 lets a parser refuse duplicates, and this
// one does, so no two readers of the same proof can disagree on its claims)
// and must be valid UTF-8; any other member is checked for syntax and
// skipped.
func parseProofClaims(b []byte) (proofClaims, error) {
	var c proofClaims
	p := jsonReader{b: b}
	for first := true; ; first = false {
		raw, escaped, end, err := p.member(first)
		if err != nil {
			return c, err
		}
		if end {
			break
		}
		name, err := unescape(raw, escaped)
		if err != nil {
			return c, err
		}
		switch string(name) {
		case "jti":
			c.JTI, err = p.claimString(c.JTI)
		case "htm":
			c.HTM, err = p.claimString(c.HTM)
		case "htu":
			c.HTU, err = p.claimString(c.HTU)
		case "ath":
			c.ATH, err = p.claimString(c.ATH)
		case "nonce":
			c.Nonce, err = p.claimString(c.Nonce)
		case "iat":
			err = p.numericDate(&c.IAT, &c.HasIAT)
		default:
			err = p.skipValue(2)
		}
		if err != nil {
			return c, err
		}
	}
	if !p.atEnd() {
		return c, errClaimsSyntax
	}
	return c, nil
}

// claimString reads the value of a string claim, prev being what was read
// of it so far: a string, or null for "absent".
func (p *jsonReader) claimString(prev claimString) (claimString, error) {
	if prev.Present {
		return prev, errClaimsDuplicate
	}
	if p.literal("null") {
		return prev, nil
	}
	if !p.at('"') {
		if err := p.skipValue(2); err != nil {
			return prev, err
		}
		return prev, errClaimsType
	}
	start := p.i
	v, err := p.str()
	if err != nil {
		return prev, err
	}
	// What is compared and hashed is the client's bytes: they must be text
	// (an ASCII string is).
	if p.high && !utf8.Valid(p.b[start:p.i]) {
		return prev, errClaimsUTF8
	}
	return claimString{V: v, Present: true}, nil
}

// numericDate reads a JWT NumericDate (RFC 7519 §2): a JSON number of
// seconds, possibly fractional, or null for "absent".
func (p *jsonReader) numericDate(dst *time.Time, present *bool) error {
	if *present {
		return errClaimsDuplicate
	}
	if p.literal("null") {
		return nil
	}
	if p.i >= len(p.b) || (p.b[p.i] != '-' && (p.b[p.i] < '0' || p.b[p.i] > '9')) {
		if err := p.skipValue(2); err != nil {
			return err
		}
		return errClaimsType
	}
	num, err := p.number()
	if err != nil {
		return err
	}
	var f float64
	if n, ok := smallInt(num); ok {
		f = float64(n)
	} else if f, err = strconv.ParseFloat(string(num), 64); err != nil {
		return errNumericDate
	}
	t, ok := numericDateTime(f)
	if !ok {
		return errNumericDate
	}
	*dst, *present = t, true
	return nil
}

// smallInt reads a number of at most 15 digits and nothing else, exactly.
func smallInt(num []byte) (int64, bool) {
	if len(num) == 0 || len(num) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range num {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
