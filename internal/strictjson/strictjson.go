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
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"unicode/utf8"
)

// Unmarshal checks data against v's type with Check, then decodes it into v
// with encoding/json.
func Unmarshal(data []byte, v any) error {
	if err := Check(data, reflect.TypeOf(v)); err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// Check returns an error when data is not one JSON value in valid UTF-8,
// when any object in it has a member name twice, or when a member name of
// an object read into a struct of t differs from one of the struct's JSON
// field names only in case. Objects read into anything else (maps, any,
// types with their own UnmarshalJSON) are checked for duplicates only.
func Check(data []byte, t reflect.Type) error {
	if !utf8.Valid(data) {
		return errors.New("the JSON is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := checkValue(dec, t); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
			return errors.New("data after the top-level object")
		}
		return errors.New("data after the top-level value")
	}
	return nil
}

// checkValue reads one value from dec, checking its objects against t.
func checkValue(dec *json.Decoder, t reflect.Type) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	t = deref(t)
	switch d {
	case '[':
		var elem reflect.Type
		if t != nil && !customDecoder(t) && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := checkValue(dec, elem); err != nil {
				return err
			}
		}
	case '{':
		fields := fieldsOf(t)
		seen := make(map[string]struct{})
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			name, _ := tok.(string)
			if _, dup := seen[name]; dup {
				return fmt.Errorf("member %q appears twice", name)
			}
			seen[name] = struct{}{}
			ft, exact := fields[name]
			if !exact {
				for known := range fields {
					if strings.EqualFold(known, name) {
						return fmt.Errorf("member %q is not %q: names match exactly", name, known)
					}
				}
			}
			if err := checkValue(dec, ft); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
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
