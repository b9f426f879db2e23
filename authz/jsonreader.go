package authz

import (
	"bytes"
	"encoding/json"
	"errors"

	"github.com/helsegate/helsegate/internal/strictjson"
)

// jsonReader is the one strict JSON (RFC 8259) reader of the claims the
// gateway reads member by member: a DPoP proof's payload (parseProofClaims),
// the attest claim of an access token and its value (findClaim, parseAttest).
// It reads b from i, checks the syntax of whatever it skips, and neither
// reflects nor allocates unless a string has escapes. Every object is walked
// by member; the callers decide what a name means.
//
// It is hand-written because no library reads a proof without allocating on
// every request: encoding/json (behind internal/strictjson, which refuses
// duplicate and case-variant names before decoding) reflects and allocates
// per claim.
type jsonReader struct {
	b    []byte
	i    int
	high bool // the last string read had a byte outside ASCII
}

// Errors of the reader. They never quote the input.
var (
	errClaimsNotObject = errors.New("the claims are not a JSON object")
	errClaimsSyntax    = errors.New("the claims are not valid JSON")
	errClaimsDepth     = errors.New("the claims nest too deeply")
	errClaimsDuplicate = errors.New("a claim appears twice")
	errClaimsType      = errors.New("a claim has the wrong JSON type")
	errClaimsUTF8      = errors.New("a claim is not valid UTF-8")
)

// maxJSONDepth is the deepest nesting of arrays and objects a skipped value
// may reach; a proof has no nested claims at all, and deeper is refused.
const maxJSONDepth = 64

// space skips insignificant whitespace.
func (p *jsonReader) space() { p.i = strictjson.SkipSpace(p.b, p.i) }

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

// at reports whether c is the next byte.
func (p *jsonReader) at(c byte) bool {
	return p.i < len(p.b) && p.b[p.i] == c
}

// atEnd skips trailing whitespace and reports whether nothing follows.
func (p *jsonReader) atEnd() bool {
	p.space()
	return p.i == len(p.b)
}

// member steps through an object, one member a call: the first call
// consumes the '{', a later one the ',' after the value of the member
// before. It returns the next member's name raw (between its quotes, with
// escaped telling whether unescape must decode it) and leaves the reader at
// that member's value, which the caller consumes before the next call. end
// is true once the closing '}' is consumed.
func (p *jsonReader) member(first bool) (name []byte, escaped, end bool, err error) {
	p.space()
	if first {
		if !p.take('{') {
			return nil, false, false, errClaimsNotObject
		}
		p.space()
		if p.take('}') {
			return nil, false, true, nil
		}
	} else {
		if p.take('}') {
			return nil, false, true, nil
		}
		if !p.take(',') {
			return nil, false, false, errClaimsSyntax
		}
		p.space()
	}
	if name, escaped, err = p.rawString(); err != nil {
		return nil, false, false, err
	}
	p.space()
	if !p.take(':') {
		return nil, false, false, errClaimsSyntax
	}
	p.space()
	return name, escaped, false, nil
}

// forEachMember reads an object, calling fn with each member's name with the
// reader at the value, which fn consumes. The name is a view of the input
// (or of a decoded copy), valid while fn runs. (The proof's claims, on the
// hot path, step with member themselves: no closure.)
func (p *jsonReader) forEachMember(fn func(name []byte) error) error {
	for first := true; ; first = false {
		raw, escaped, end, err := p.member(first)
		if err != nil || end {
			return err
		}
		name, err := unescape(raw, escaped)
		if err != nil {
			return err
		}
		if err := fn(name); err != nil {
			return err
		}
	}
}

// knownObject reads an object value (or null, for "absent") with
// knownMembers.
func (p *jsonReader) knownObject(known []string, fn func(name string) error) error {
	if p.literal("null") {
		return nil
	}
	if !p.at('{') {
		return p.skipWrongType()
	}
	return p.knownMembers(known, fn)
}

// knownMembers reads an object whose members named in known (at most 64)
// are read by fn, which consumes the value; a known member given twice is
// refused, and so is a name that equals a known one but for case. Another
// member is skipped. fn is given the name as known spells it.
func (p *jsonReader) knownMembers(known []string, fn func(name string) error) error {
	var seen uint64
	return p.forEachMember(func(name []byte) error {
		for i, k := range known {
			if string(name) == k {
				if seen&(1<<i) != 0 {
					return errClaimsDuplicate
				}
				seen |= 1 << i
				return fn(k)
			}
		}
		for _, k := range known {
			if bytes.EqualFold(name, []byte(k)) {
				return errAttestCase
			}
		}
		return p.skipValue(2)
	})
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
			p.i = i
			if !p.escape() {
				return nil, false, errClaimsSyntax
			}
			i = p.i
		default: // a control character
			return nil, false, errClaimsSyntax
		}
	}
}

// The classes of bytes in a JSON string, for rawString.
const (
	strPlain     = iota // printable ASCII but '"' and '\\'
	strQuote            // the closing quote
	strBackslash        // an escape
	strControl          // below 0x20: must be escaped
	strHigh             // 0x80 and above: part of a multi-byte UTF-8 sequence, or invalid
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

// escape consumes the escape sequence at the backslash at i, and reports
// whether it is one of RFC 8259 §7.
func (p *jsonReader) escape() bool {
	p.i++
	if p.i >= len(p.b) {
		return false
	}
	switch p.b[p.i] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		p.i++
		return true
	case 'u':
		if len(p.b)-p.i < 5 || !isHex(p.b[p.i+1]) || !isHex(p.b[p.i+2]) || !isHex(p.b[p.i+3]) || !isHex(p.b[p.i+4]) {
			return false
		}
		p.i += 5
		return true
	}
	return false
}

// str consumes a string and returns its value (see unescape).
func (p *jsonReader) str() ([]byte, error) {
	raw, escaped, err := p.rawString()
	if err != nil {
		return nil, err
	}
	return unescape(raw, escaped)
}

// unescape returns the value of a string rawString read. A string without
// escapes is returned in place; one with escapes is decoded by
// encoding/json into a copy (rare: no client escapes a jti or a URI).
func unescape(raw []byte, escaped bool) ([]byte, error) {
	if !escaped {
		return raw, nil
	}
	return decodeEscaped(raw)
}

// decodeEscaped decodes the escapes of a string rawString read.
func decodeEscaped(raw []byte) ([]byte, error) {
	quoted := make([]byte, 0, len(raw)+2)
	quoted = append(append(append(quoted, '"'), raw...), '"')
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return nil, errClaimsSyntax
	}
	return []byte(s), nil
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
	case c == '{', c == '[':
		if depth > maxJSONDepth {
			return errClaimsDepth
		}
		if c == '{' {
			return p.skipObject(depth)
		}
		return p.skipArray(depth)
	case c == '-' || ('0' <= c && c <= '9'):
		_, err := p.number()
		return err
	case p.literal("true"), p.literal("false"), p.literal("null"):
		return nil
	default:
		return errClaimsSyntax
	}
}

// skipObject consumes the object at i, opened at level depth.
func (p *jsonReader) skipObject(depth int) error {
	for first := true; ; first = false {
		_, _, end, err := p.member(first)
		if err != nil || end {
			return err
		}
		if err := p.skipValue(depth + 1); err != nil {
			return err
		}
	}
}

// skipArray consumes the array at i, opened at level depth.
func (p *jsonReader) skipArray(depth int) error {
	p.i++ // [
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
}

// skipWrongType skips the value (checking its syntax) and reports a type error.
func (p *jsonReader) skipWrongType() error {
	if err := p.skipValue(2); err != nil {
		return err
	}
	return errClaimsType
}

// jsonDepth returns the deepest nesting of arrays and objects in the JSON
// text b, stopping early once it passes limit; ok is false when the brackets
// do not balance. Strings are skipped, escapes included.
func jsonDepth(b []byte, limit int) (depth int, ok bool) {
	cur := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			cur++
			if cur > depth {
				depth = cur
				if depth > limit {
					return depth, true
				}
			}
		case '}', ']':
			cur--
			if cur < 0 {
				return depth, false
			}
		}
	}
	return depth, cur == 0
}
