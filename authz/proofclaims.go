package authz

import (
	"encoding/json"
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

// Errors of parseProofClaims. They never quote the payload.
var (
	errClaimsNotObject = errors.New("the claims are not a JSON object")
	errClaimsSyntax    = errors.New("the claims are not valid JSON")
	errClaimsDepth     = errors.New("the claims nest too deeply")
	errClaimsDuplicate = errors.New("a claim appears twice")
	errClaimsType      = errors.New("a claim has the wrong JSON type")
	errClaimsUTF8      = errors.New("a claim is not valid UTF-8")
	errNumericDate     = errors.New("NumericDate must be a number of seconds in range")
)

// maxJSONDepth is the deepest nesting of arrays and objects a proof's claims
// may have; a proof has no nested claims at all, and deeper is refused.
const maxJSONDepth = 64

// parseProofClaims decodes a proof payload into c. It is a strict JSON
// reader for the one shape a proof has (an object of claims) that neither
// reflects nor allocates in the common case: the payload must be exactly one
// JSON object (RFC 8259); the claims the gateway reads are matched by their
// exact, case-sensitive names (RFC 7519 §4), may each appear once (RFC 7519
// §4 lets a parser refuse duplicates, and this one does, so no two readers of
// the same proof can disagree on its claims) and must be valid UTF-8; any
// other member is checked for syntax and skipped.
func parseProofClaims(b []byte) (proofClaims, error) {
	var c proofClaims
	p := jsonReader{b: b}
	p.space()
	if !p.take('{') {
		return c, errClaimsNotObject
	}
	p.space()
	if !p.take('}') {
		for {
			p.space()
			name, err := p.key()
			if err != nil {
				return c, err
			}
			p.space()
			if !p.take(':') {
				return c, errClaimsSyntax
			}
			p.space()
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
			p.space()
			if p.take(',') {
				continue
			}
			if p.take('}') {
				break
			}
			return c, errClaimsSyntax
		}
	}
	p.space()
	if p.i != len(p.b) {
		return c, errClaimsSyntax
	}
	return c, nil
}

// jsonReader reads JSON (RFC 8259) from b, starting at i.
type jsonReader struct {
	b    []byte
	i    int
	high bool // the last string read had a byte outside ASCII
}

// space skips insignificant whitespace.
func (p *jsonReader) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// take consumes c if it is next.
func (p *jsonReader) take(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// literal consumes lit if it is next.
func (p *jsonReader) literal(lit string) bool {
	if len(p.b)-p.i >= len(lit) && string(p.b[p.i:p.i+len(lit)]) == lit {
		p.i += len(lit)
		return true
	}
	return false
}

// rawString consumes a string and returns what lies between its quotes,
// and whether that holds an escape. Control characters must be escaped and
// every escape must be one of RFC 8259 §7. It notes in p.high whether the
// string has a byte outside ASCII (only then can it be invalid UTF-8).
func (p *jsonReader) rawString() (raw []byte, escaped bool, err error) {
	if !p.take('"') {
		return nil, false, errClaimsSyntax
	}
	// The index is kept in a local and plain bytes are skipped by a table:
	// the loop over p.i cost about three times the instructions per byte.
	b, start, i := p.b, p.i, p.i
	p.high = false
	for {
		for i < len(b) && strClass[b[i]] == strPlain {
			i++
		}
		if i >= len(b) {
			return nil, false, errClaimsSyntax
		}
		switch strClass[b[i]] {
		case strQuote:
			p.i = i + 1
			return b[start:i], escaped, nil
		case strHigh:
			p.high = true
			i++
		case strBackslash:
			escaped = true
			i++
			if i >= len(b) {
				return nil, false, errClaimsSyntax
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if len(b)-i < 5 || !isHex(b[i+1]) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) {
					return nil, false, errClaimsSyntax
				}
				i += 5
			default:
				return nil, false, errClaimsSyntax
			}
		default: // a control character
			return nil, false, errClaimsSyntax
		}
	}
}

// The classes of bytes in a JSON string, for rawString.
const (
	strPlain = iota // printable ASCII but '"' and '\\'
	strQuote
	strBackslash
	strControl // below 0x20: must be escaped
	strHigh    // 0x80 and above: part of a multi-byte UTF-8 sequence, or invalid
)

var strClass = func() (t [256]byte) {
	for c := range t {
		switch {
		case c < 0x20:
			t[c] = strControl
		case c == '"':
			t[c] = strQuote
		case c == '\\':
			t[c] = strBackslash
		case c >= 0x80:
			t[c] = strHigh
		}
	}
	return t
}()

// str consumes a string and returns its value. A string without escapes is
// returned in place; one with escapes is decoded by encoding/json into a
// copy (rare: no client escapes a jti or a URI).
func (p *jsonReader) str() ([]byte, error) {
	raw, escaped, err := p.rawString()
	if err != nil || !escaped {
		return raw, err
	}
	quoted := make([]byte, 0, len(raw)+2)
	quoted = append(append(append(quoted, '"'), raw...), '"')
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return nil, errClaimsSyntax
	}
	return []byte(s), nil
}

// key reads a member name.
func (p *jsonReader) key() ([]byte, error) {
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return nil, errClaimsSyntax
	}
	return p.str()
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
	if p.i >= len(p.b) || p.b[p.i] != '"' {
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

// number consumes a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *jsonReader) number() ([]byte, error) {
	start := p.i
	p.take('-')
	switch {
	case p.take('0'):
	case p.i < len(p.b) && '1' <= p.b[p.i] && p.b[p.i] <= '9':
		p.digits()
	default:
		return nil, errClaimsSyntax
	}
	if p.take('.') && p.digits() == 0 {
		return nil, errClaimsSyntax
	}
	if p.take('e') || p.take('E') {
		if !p.take('+') {
			p.take('-')
		}
		if p.digits() == 0 {
			return nil, errClaimsSyntax
		}
	}
	return p.b[start:p.i], nil
}

// digits consumes decimal digits and returns how many.
func (p *jsonReader) digits() int {
	start := p.i
	for p.i < len(p.b) && '0' <= p.b[p.i] && p.b[p.i] <= '9' {
		p.i++
	}
	return p.i - start
}

// skipValue consumes any JSON value, checking its syntax. depth is the
// nesting level the value would open (the claims object is level 1).
func (p *jsonReader) skipValue(depth int) error {
	if p.i >= len(p.b) {
		return errClaimsSyntax
	}
	switch c := p.b[p.i]; {
	case c == '"':
		_, _, err := p.rawString()
		return err
	case c == '{':
		if depth > maxJSONDepth {
			return errClaimsDepth
		}
		p.i++
		p.space()
		if p.take('}') {
			return nil
		}
		for {
			p.space()
			if _, _, err := p.rawString(); err != nil {
				return err
			}
			p.space()
			if !p.take(':') {
				return errClaimsSyntax
			}
			p.space()
			if err := p.skipValue(depth + 1); err != nil {
				return err
			}
			p.space()
			if p.take(',') {
				continue
			}
			if p.take('}') {
				return nil
			}
			return errClaimsSyntax
		}
	case c == '[':
		if depth > maxJSONDepth {
			return errClaimsDepth
		}
		p.i++
		p.space()
		if p.take(']') {
			return nil
		}
		for {
			p.space()
			if err := p.skipValue(depth + 1); err != nil {
				return err
			}
			p.space()
			if p.take(',') {
				continue
			}
			if p.take(']') {
				return nil
			}
			return errClaimsSyntax
		}
	case c == '-' || ('0' <= c && c <= '9'):
		_, err := p.number()
		return err
	case p.literal("true"), p.literal("false"), p.literal("null"):
		return nil
	default:
		return errClaimsSyntax
	}
}
