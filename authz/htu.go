package authz

import (
	"errors"
	"net/url"
	"strings"
)

// NormalizeHTU puts an http(s) URI into the form used to compare a proof's htu
// with the request (RFC 9449 §4.3 step 9): the query and fragment are dropped,
// and the syntax-based and scheme-based normalizations of RFC 3986 §6.2.2–6.2.3
// are applied: scheme and host in lower case, percent-encodings in upper case,
// percent-encoded unreserved characters decoded, dot-segments removed, the
// default port dropped and an empty path made "/".
func NormalizeHTU(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", errors.New("htu is not a URI")
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", errors.New("htu must be an http or https URI")
	}
	if u.Host == "" || u.Opaque != "" {
		return "", errors.New("htu must be absolute with a host")
	}
	if u.User != nil {
		return "", errors.New("htu must not carry userinfo")
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", errors.New("htu must be absolute with a host")
	}
	if strings.Contains(host, "%") { // an IPv6 zone (RFC 6874) names no host of ours
		return "", errors.New("htu must not carry an IPv6 zone")
	}
	port := u.Port()
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	if strings.Contains(host, ":") { // IPv6 literal
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	p, err := normalizePercent(u.EscapedPath())
	if err != nil {
		return "", err
	}
	p = removeDotSegments(p)
	if p == "" {
		p = "/"
	}
	return scheme + "://" + host + p, nil
}

// normalizePercent upper-cases the hex digits of every percent-encoding and
// decodes the ones that encode an unreserved character (RFC 3986 §6.2.2.1–2).
func normalizePercent(p string) (string, error) {
	if !strings.Contains(p, "%") {
		return p, nil
	}
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			b.WriteByte(p[i])
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			return "", errors.New("htu has a bad percent-encoding")
		}
		c := unhex(p[i+1])<<4 | unhex(p[i+2])
		if isUnreserved(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(upperHex(p[i+1]))
			b.WriteByte(upperHex(p[i+2]))
		}
		i += 2
	}
	return b.String(), nil
}

// removeDotSegments is the algorithm of RFC 3986 §5.2.4.
func removeDotSegments(in string) string {
	if !strings.Contains(in, ".") {
		return in
	}
	var out []string
	for len(in) > 0 {
		switch {
		case strings.HasPrefix(in, "../"):
			in = in[3:]
		case strings.HasPrefix(in, "./"):
			in = in[2:]
		case strings.HasPrefix(in, "/./"):
			in = in[2:]
		case in == "/.":
			in = "/"
		case strings.HasPrefix(in, "/../"):
			in = in[3:]
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		case in == "/..":
			in = "/"
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		case in == "." || in == "..":
			in = ""
		default:
			start := 0
			if in[0] == '/' {
				start = 1
			}
			end := strings.IndexByte(in[start:], '/')
			if end < 0 {
				end = len(in)
			} else {
				end += start
			}
			out = append(out, in[:end])
			in = in[end:]
		}
	}
	return strings.Join(out, "")
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// expectedHTU is the normalized URI a proof's htu must name. When the
// request's URI is already in normal form (the common case: a lower-case
// host and a path with nothing to decode, escape or remove) it is kept as
// its pieces, scheme "://" host path, so that comparing a proof with it
// builds no string; otherwise scheme and host are empty and path is the
// whole normalized URI.
type expectedHTU struct {
	scheme, host string
	path         string
}

// String returns the URI.
func (e expectedHTU) String() string {
	if e.scheme == "" {
		return e.path
	}
	return e.scheme + "://" + e.host + e.path
}

// matches reports whether a proof's htu names the expected URI once
// normalized (RFC 9449 §4.3 step 9). An htu already equal to it byte for
// byte matches without normalizing: the expected URI is in normal form and
// normalizing is idempotent.
func (e expectedHTU) matches(htu []byte) bool {
	if htuEqual(e, htu) {
		return true
	}
	got, err := NormalizeHTU(string(htu))
	return err == nil && htuEqual(e, got)
}

// htuEqual reports whether s is the expected URI, byte for byte.
func htuEqual[T ~string | ~[]byte](e expectedHTU, s T) bool {
	if e.scheme == "" {
		return string(s) == e.path
	}
	h := len(e.scheme) + len("://")
	p := h + len(e.host)
	return len(s) == p+len(e.path) &&
		string(s[:len(e.scheme)]) == e.scheme && string(s[len(e.scheme):h]) == "://" &&
		string(s[h:p]) == e.host && string(s[p:]) == e.path
}

// newExpectedHTU returns the expected htu of a request to scheme://host
// with the given escaped path, which NormalizeHTU refuses or normalizes.
func newExpectedHTU(scheme, host, path string) (expectedHTU, error) {
	if isNormalOrigin(scheme, host) && isNormalPath(path) {
		return expectedHTU{scheme: scheme, host: host, path: path}, nil
	}
	// host is pasted into a URI: a delimiter in it would let the sender
	// choose which URI is expected ("api.example.no/kj#" and any path).
	if !isAuthority(host) {
		return expectedHTU{}, errors.New("the request host is not host[:port]")
	}
	full, err := NormalizeHTU(scheme + "://" + host + path)
	if err != nil {
		return expectedHTU{}, err
	}
	return expectedHTU{path: full}, nil
}

// isAuthority reports whether host can only be read as host[:port]: a
// registered name, an IPv4 address or a bracketed IPv6 literal, and a port;
// no userinfo, path, query, fragment, percent-encoding or white space.
func isAuthority(host string) bool {
	if host == "" {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '-' || c == '_' || c == '~' || c == ':' || c == '[' || c == ']') {
			return false
		}
	}
	return true
}

// isNormalOrigin reports whether scheme://host is in the form NormalizeHTU
// gives it: http or https, a host name of lower-case letters, digits, dots
// and hyphens, and a port only when it is not the scheme's default. (IP
// literals, upper case and the rest take the long way.)
func isNormalOrigin(scheme, host string) bool {
	if scheme != "https" && scheme != "http" {
		return false
	}
	name, port, hasPort := strings.Cut(host, ":")
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	if !hasPort {
		return true
	}
	if port == "" || (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		return false
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return false
		}
	}
	return true
}

// isNormalPath reports whether an escaped path is left unchanged by
// NormalizeHTU: it starts with "/", holds only characters that are never
// escaped in a path (RFC 3986 unreserved, sub-delims that Go's URL parser
// keeps, ":" "@" "/"), no percent-encoding and no "." or ".." segment.
func isNormalPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if normalPathByte[c] {
			continue
		}
		if c != '/' {
			return false
		}
		// A dot segment: "/." or "/.." followed by "/" or the end.
		if i+1 < len(p) && p[i+1] == '.' {
			rest := p[i+1:]
			if rest == "." || rest == ".." || strings.HasPrefix(rest, "./") || strings.HasPrefix(rest, "../") {
				return false
			}
		}
	}
	return true
}

// normalPathByte marks the bytes isNormalPath takes as they are ("/" aside):
// a table, as the path is read on every request.
var normalPathByte = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_~:@$&+,;=.", byte(c)) >= 0
	}
	return t
}()
