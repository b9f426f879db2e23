package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/strictjson"
)

// maxFile bounds the membership file read into memory.
const maxFile = 64 << 20

// key identifies one authorization: the service, and the organization.
type key struct{ service, org string }

// fileDoc is the members file format: {"authorizations":[...]}, each the
// object of the HTTP contract v1.
type fileDoc struct {
	Authorizations *[]authz.Authorization `json:"authorizations"`
}

// parseFile decodes and validates a membership document. Errors name the
// record by index and never quote the document or an organization number.
func parseFile(b []byte) (map[key]authz.Authorization, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	// A typo such as "valid_too" must not silently drop an expiry.
	dec.DisallowUnknownFields()
	var doc fileDoc
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decoding: data after the top-level object")
	}
	if err := strictjson.Check(b, reflect.TypeFor[fileDoc]()); err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	if doc.Authorizations == nil {
		return nil, errors.New(`missing "authorizations" array`)
	}
	recs := *doc.Authorizations
	set := make(map[key]authz.Authorization, len(recs))
	first := make(map[key]int, len(recs))
	for i, r := range recs {
		if err := checkRecord(r); err != nil {
			return nil, fmt.Errorf("authorizations[%d]: %w", i, err)
		}
		k := key{r.Service, r.Organization}
		if j, dup := first[k]; dup {
			return nil, fmt.Errorf("authorizations[%d]: duplicate of authorizations[%d] (same organization and service)", i, j)
		}
		first[k] = i
		set[k] = r
	}
	return set, nil
}

// checkRecord validates one record of the file.
func checkRecord(r authz.Authorization) error {
	switch {
	case !authz.ValidOrgNumber(r.Organization):
		return errors.New("organization is not a valid organization number (nine digits, mod-11 check digit)")
	case r.Service == "":
		return errors.New("service is empty")
	case r.Status == "":
		return errors.New("status is empty")
	case r.ValidFrom != nil && r.ValidTo != nil && !r.ValidTo.After(*r.ValidFrom):
		return errors.New("valid_to is not after valid_from")
	}
	return nil
}
