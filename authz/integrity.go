package authz

import (
	"bytes"
	"errors"
	"io"
	"strings"
)

// Request integrity: what the upstream gets must be what the proof covered.
// These checks are plain functions of the request's bytes, so that the
// Caddy glue and the tests call them alike.

// checkPath refuses a request path that RFC 3986 normalization (how htu is
// compared) and a rewrite in front of the upstream (Caddy's handle_path and
// uri strip_prefix, or the upstream's own router) could read as two
// different resources: a "." or ".." segment, plain or percent-encoded; an
// encoded "/" or "\"; a raw "\"; an empty segment ("//"). The proof then
// covers the path as sent, and a prefix stripped from it leaves the path
// the upstream gets, with nothing left to resolve. A path without any of
// these (the only kind clients send) costs one pass over its bytes.
func checkPath(escapedPath string) *Error {
	if ambiguousPath(escapedPath) {
		return deny(InvalidRequest, "path_ambiguous", "the request path has dot segments, encoded slashes or empty segments")
	}
	return nil
}

// ambiguousPath reports whether an escaped path has a dot segment (".",
// "..", "%2e", "%2E%2e", ".%2e" and so on), an encoded "/" or "\", a raw
// "\" or two slashes in a row.
func ambiguousPath(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			return true
		case '%':
			if i+2 < len(p) {
				if c := unhexPair(p[i+1], p[i+2]); c == '/' || c == '\\' {
					return true
				}
			}
		case '/':
			if i+1 == len(p) {
				break
			}
			switch p[i+1] {
			case '/':
				return true
			case '.', '%': // only these can start a dot segment
				if isDotSegment(p[i+1:]) {
					return true
				}
			}
		}
	}
	return p != "" && p[0] != '/' && isDotSegment(p) // a relative path that starts with one
}

// isDotSegment reports whether s starts with a segment that is "." or ".."
// once decoded ("%2e" is a dot).
func isDotSegment(s string) bool {
	end := strings.IndexByte(s, '/')
	if end < 0 {
		end = len(s)
	}
	seg, dots := s[:end], 0
	for len(seg) > 0 {
		switch {
		case seg[0] == '.':
			seg = seg[1:]
		case len(seg) >= 3 && seg[0] == '%' && unhexPair(seg[1], seg[2]) == '.':
			seg = seg[3:]
		default:
			return false
		}
		dots++
	}
	return dots == 1 || dots == 2
}

// unhexPair is the byte %XY encodes, or 0 when X or Y is not hex.
func unhexPair(x, y byte) byte {
	if !isHex(x) || !isHex(y) {
		return 0
	}
	return unhex(x)<<4 | unhex(y)
}

// accessTokenParam is the parameter name of RFC 6750 §2.2 and §2.3.
const accessTokenParam = "access_token"

// HasAccessTokenParam reports whether a query string or a form-encoded body
// names access_token in any spelling a parser could read as it: pairs split
// at "&" or ";", names percent-decoded (invalid escapes kept as they are),
// "+" read as a space, ASCII letters in any case (ASP.NET Core reads query
// and form keys case-insensitively), and ".", " " and "[" taken for "_"
// (PHP rewrites them so in parameter names).
func HasAccessTokenParam(raw string) bool {
	for raw != "" {
		var pair string
		if i := strings.IndexAny(raw, "&;"); i >= 0 {
			pair, raw = raw[:i], raw[i+1:]
		} else {
			pair, raw = raw, ""
		}
		name, _, _ := strings.Cut(pair, "=")
		if len(name) >= len(accessTokenParam) && decodesToAccessToken(name) {
			return true
		}
	}
	return false
}

// decodesToAccessToken reports whether a form name, decoded and folded as
// HasAccessTokenParam says, is access_token.
func decodesToAccessToken(name string) bool {
	j := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '+':
			c = ' '
		case c == '%' && i+2 < len(name) && isHex(name[i+1]) && isHex(name[i+2]):
			c = unhexPair(name[i+1], name[i+2])
			i += 2
		}
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '.' || c == ' ' || c == '[':
			c = '_'
		}
		if j >= len(accessTokenParam) || accessTokenParam[j] != c {
			return false
		}
		j++
	}
	return j == len(accessTokenParam)
}

// MaxFormBody bounds the form-encoded body CheckFormBody reads.
const MaxFormBody = 1 << 20

// errFormTooLarge is the cause of a form_body_too_large denial.
var errFormTooLarge = errors.New("the form body is larger than MaxFormBody")

// FormBody says whether a request's body must be checked as a form by
// CheckFormBody, from its Content-Type and Content-Encoding headers: a
// single Content-Type of application/x-www-form-urlencoded (any case, any
// parameters). A body whose type is ambiguous (several Content-Type
// headers, or a list, one of them a form: a framework may take any of
// them) or a form in an encoding (gzip: it cannot be read as a form here)
// is refused.
func FormBody(contentTypes []string, contentEncoding string) (bool, *Error) {
	forms := 0
	n := 0
	for _, v := range contentTypes {
		for ct := range strings.SplitSeq(v, ",") {
			n++
			mt, _, _ := strings.Cut(ct, ";")
			if strings.EqualFold(strings.TrimSpace(mt), "application/x-www-form-urlencoded") {
				forms++
			}
		}
	}
	switch {
	case forms == 0:
		return false, nil
	case n > 1:
		return false, deny(InvalidRequest, "content_type_ambiguous", "the request names more than one content type")
	case contentEncoding != "" && !strings.EqualFold(strings.TrimSpace(contentEncoding), "identity"):
		return false, deny(InvalidRequest, "form_body_unreadable", "a form-encoded body must not be content-encoded")
	}
	return true, nil
}

// CheckFormBody reads a form-encoded (application/x-www-form-urlencoded)
// body and refuses it when it carries an access_token (RFC 6750 §2.2: this
// gateway takes tokens from the Authorization header only, and a token in
// a body would reach the upstream). It reads at most MaxFormBody+1 bytes: a
// longer form cannot be checked without holding all of it, and is refused.
// It returns what it read, which the caller sends on in place of the body.
// Bodies of other media types are never read.
func CheckFormBody(body io.Reader) ([]byte, *Error) {
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(body, MaxFormBody+1))
	switch {
	case err != nil:
		return nil, denyErr(InvalidRequest, "form_body_unreadable", "the request body could not be read", err)
	case n > MaxFormBody:
		return nil, denyErr(InvalidRequest, "form_body_too_large", "the form-encoded request body is too large", errFormTooLarge)
	case HasAccessTokenParam(buf.String()):
		return nil, deny(InvalidRequest, "token_in_body", "access tokens are accepted only in the Authorization header")
	}
	return buf.Bytes(), nil
}
