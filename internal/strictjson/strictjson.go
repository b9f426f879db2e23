// Package strictjson reads JSON into Go structs the way a careful second
// reader would: member names match exactly and no object has a member twice.
//
// encoding/json takes "ISS" for the iss field when no exact match exists
// (case-insensitively, with Unicode's simple folding: "ſcope" is scope)
// and, of a member that appears twice, keeps the last. Another reader of
// the same document (the token's issuer, a registry's own client, a log
// pipeline) may take the first, or neither: the two would disagree about
// what the document says. Check refuses such documents before
// encoding/json reads them; encoding/json/v2 would do this by default, but
// it is still behind GOEXPERIMENT in this Go.
package strictjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
	"unsafe"
)

// Unmarshal checks data against v's type with Check, then decodes it into v
// with encoding/json.
func Unmarshal(data []byte, v any) error {
	if err := Check(data, reflect.TypeOf(v)); err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// Check returns an error when data is not valid JSON in valid UTF-8, when
// any object in it has a member name twice, or when a member name of an
// object read into a struct of t differs from one of the struct's JSON
// field names only in case. Objects read into anything else (maps, any,
// types with their own UnmarshalJSON) are checked for duplicates only.
//
// It allocates nothing for a document without escaped member names and
// with no object of more than a few dozen members: it runs on every new
// access token. Callers decode after it, and their decoder names a syntax
// error better than Check does.
func Check(data []byte, t reflect.Type) error {
	if !utf8.Valid(data) {
		return errors.New("the JSON is not valid UTF-8")
	}
	if !json.Valid(data) { // one value, no trailing data: the scanner below relies on it
		return errors.New("not a valid JSON document")
	}
	s := scanner{data: data}
	return s.value(t)
}

// scanner walks a document json.Valid accepted, so it never meets a
// syntax error: every index it reads is in range.
type scanner struct {
	data []byte
	i    int
}

func (s *scanner) space() { s.i = SkipSpace(s.data, s.i) }

// SkipSpace returns the index of the first byte of b at or after i that is
// not JSON whitespace (RFC 8259 §2: space, tab, line feed, carriage return),
// or len(b). Both strict readers of the module skip whitespace with it.
func SkipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// value checks the value at s.i against t and moves past it.
func (s *scanner) value(t reflect.Type) error {
	s.space()
	switch s.data[s.i] {
	case '{':
		return s.object(deref(t))
	case '[':
		return s.array(deref(t))
	case '"':
		s.str()
	default: // a number, true, false or null
		for s.i < len(s.data) {
			if c := s.data[s.i]; c == ',' || c == ']' || c == '}' || c == ' ' || c == '\t' || c == '\n' || c == '\r' {
				break
			}
			s.i++
		}
	}
	return nil
}

// str moves past the string at s.i and returns it with its quotes, and
// whether it has an escape.
func (s *scanner) str() (quoted []byte, escaped bool) {
	start := s.i
	for s.i++; s.data[s.i] != '"'; s.i++ {
		if s.data[s.i] == '\\' {
			escaped = true
			s.i++
		}
	}
	s.i++
	return s.data[start:s.i], escaped
}

func (s *scanner) array(t reflect.Type) error {
	var elem reflect.Type
	if t != nil && !customDecoder(t) && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
		elem = t.Elem()
	}
	s.i++ // [
	s.space()
	if s.data[s.i] == ']' {
		s.i++
		return nil
	}
	for {
		if err := s.value(elem); err != nil {
			return err
		}
		s.space()
		s.i++ // , or ]
		if s.data[s.i-1] == ']' {
			return nil
		}
	}
}

// smallObject is how many member names an object's names are compared
// with one by one; beyond it they go into a map.
const smallObject = 32

// object checks the object at s.i against t and moves past it: no member
// twice, and, when t is a struct, no member name that is one of its field
// names in another case.
func (s *scanner) object(t reflect.Type) error {
	fields := fieldsOf(t)
	var seen nameSet
	s.i++ // {
	s.space()
	if s.data[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		s.space()
		name, err := s.memberName()
		if err != nil {
			return err
		}
		if seen.add(name) {
			return fmt.Errorf("member %q appears twice", name)
		}
		ft, err := exactField(fields, name)
		if err != nil {
			return err
		}
		s.space()
		s.i++ // :
		if err := s.value(ft); err != nil {
			return err
		}
		s.space()
		s.i++ // , or }
		if s.data[s.i-1] == '}' {
			return nil
		}
	}
}

// memberName moves past the member name at s.i and returns it as
// encoding/json reads it.
func (s *scanner) memberName() (string, error) {
	quoted, escaped := s.str()
	if !escaped {
		// A view of the document's bytes, kept no longer than Check runs.
		return unsafe.String(unsafe.SliceData(quoted[1:]), len(quoted)-2), nil
	}
	// An escaped name is decoded as encoding/json decodes it.
	var decoded string
	if err := json.Unmarshal(quoted, &decoded); err != nil {
		return "", err
	}
	return decoded, nil
}

// nameSet holds the member names of one object: compared one by one while
// few (no allocation), then in a map.
type nameSet struct {
	small [smallObject]string
	n     int
	big   map[string]struct{}
}

// add records name and reports whether it was there already.
func (ns *nameSet) add(name string) bool {
	if ns.big == nil {
		dup := slices.Contains(ns.small[:ns.n], name)
		if ns.n < len(ns.small) {
			ns.small[ns.n] = name
			ns.n++
			return dup
		}
		ns.big = make(map[string]struct{}, 2*ns.n)
		for _, n := range ns.small[:ns.n] {
			ns.big[n] = struct{}{}
		}
	}
	_, dup := ns.big[name]
	ns.big[name] = struct{}{}
	return dup
}

// exactField returns the type of the field that member name is read into
// (nil for none), or an error when name is a field's name in another case:
// encoding/json would read it into that field, another reader would not.
func exactField(fields map[string]reflect.Type, name string) (reflect.Type, error) {
	if ft, exact := fields[name]; exact {
		return ft, nil
	}
	for known := range fields {
		if strings.EqualFold(known, name) {
			return nil, fmt.Errorf("member %q is not %q: names match exactly", name, known)
		}
	}
	return nil, nil
}

func deref(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

var unmarshaler = reflect.TypeFor[json.Unmarshaler]()

// customDecoder reports whether t decodes itself (UnmarshalJSON): its
// members are its own business, not field names.
func customDecoder(t reflect.Type) bool {
	return t.Implements(unmarshaler) || reflect.PointerTo(t).Implements(unmarshaler)
}

// fieldCache holds fieldsOf's answers by type.
var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// fieldsOf returns the JSON member names of struct t and their types, or
// nil when t is not a struct decoded field by field.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	if t == nil || t.Kind() != reflect.Struct || customDecoder(t) {
		return nil
	}
	if f, ok := fieldCache.Load(t); ok {
		return f.(map[string]reflect.Type)
	}
	fields := map[string]reflect.Type{}
	addFields(fields, t)
	fieldCache.Store(t, fields)
	return fields
}

func addFields(fields map[string]reflect.Type, t reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			if et := deref(f.Type); et.Kind() == reflect.Struct {
				addFields(fields, et)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
}
