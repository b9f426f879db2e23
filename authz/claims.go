package authz

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"time"
)

// accessClaims is the payload of an access token as far as the gateway reads
// it, HelseID's claims by the names HelseID's tokens carry. Decoding is
// strict about types: a claim of the wrong JSON type fails the whole token
// instead of being read as empty.
type accessClaims struct {
	Iss            string       `json:"iss"`
	Aud            stringList   `json:"aud"`
	Exp            *numericDate `json:"exp"`
	Nbf            *numericDate `json:"nbf"`
	ClientID       string       `json:"client_id"`
	Scope          scopeList    `json:"scope"`
	JTI            string       `json:"jti"`
	Sub            string       `json:"sub"`
	Cnf            *confirm     `json:"cnf"`
	PID            string       `json:"helseid://claims/identity/pid"`
	SecurityLevel  string       `json:"helseid://claims/identity/security_level"`
	AssuranceLevel string       `json:"helseid://claims/identity/assurance_level"`
	HPRNumber      string       `json:"helseid://claims/hpr/hpr_number"`
	OrgParent      string       `json:"helseid://claims/client/claims/orgnr_parent"`
	OrgChild       string       `json:"helseid://claims/client/claims/orgnr_child"`
	OrgSupplier    string       `json:"helseid://claims/client/claims/orgnr_supplier"`
	ClientTenancy  string       `json:"helseid://claims/client/client_tenancy"`
}

// confirm is the cnf claim (RFC 7800 §3.1). JKT is a pointer so that a cnf
// without jkt is told apart from a cnf with an empty one.
type confirm struct {
	JKT *string `json:"jkt"`
}

// numericDate is a JWT NumericDate (RFC 7519 §2): a JSON number of seconds,
// possibly fractional. Anything else fails to decode.
type numericDate struct{ time.Time }

func (d *numericDate) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return errors.New("NumericDate must be a number")
	}
	t, ok := numericDateTime(f)
	if !ok {
		return errors.New("NumericDate out of range")
	}
	d.Time = t
	return nil
}

// numericDateTime is the time of a NumericDate of f seconds, refusing what
// no token or proof date can be: negative, NaN, infinite, or beyond 2^40 s.
func numericDateTime(f float64) (time.Time, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1<<40 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// stringList is a JSON string or an array of strings (aud, RFC 7519 §4.1.3).
type stringList []string

func (l *stringList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*l = stringList{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(b, &a); err != nil {
		return errors.New("must be a string or an array of strings")
	}
	*l = a
	return nil
}

// scopeList is scope as HelseID sends it (a JSON array) or as RFC 9068 §2.2.3
// defines it (one space-delimited string); both are accepted.
type scopeList []string

func (l *scopeList) UnmarshalJSON(b []byte) error {
	var sl stringList
	if err := sl.UnmarshalJSON(b); err != nil {
		return err
	}
	var out []string
	for _, s := range sl {
		out = append(out, strings.Fields(s)...)
	}
	*l = out
	return nil
}

func (l scopeList) has(scope string) bool {
	for _, s := range l {
		if s == scope {
			return true
		}
	}
	return false
}
