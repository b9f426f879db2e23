package helseidsim

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// ClaimAttest is the claim of the trust-framework attest
// (tillitsrammeverket): who the health worker is, for which legal entity and
// point of care, for which purpose, on whose decision.
const ClaimAttest = "nhn:tillitsrammeverk:parameters"

// OIDs and code systems of the attest (NHN's data model).
const (
	SystemFNumber       = "urn:oid:2.16.578.1.12.4.1.4.1"   // fødselsnummer
	SystemDNumber       = "urn:oid:2.16.578.1.12.4.1.4.2"   // D-nummer
	SystemOrgNumber     = "urn:oid:2.16.578.1.12.4.1.4.101" // Enhetsregisteret
	SystemRESH          = "urn:oid:2.16.578.1.12.4.1.4.102"
	SystemPurposeOfUse  = "urn:oid:2.16.840.1.113883.1.11.20448"
	SystemHealthService = "urn:oid:2.16.578.1.12.4.1.1.8666"
)

// Defaults of an attest from the token endpoint or Attest's zero fields
// (synthetic test values).
const (
	DefaultPurposeOfUse = "TREAT"
	DefaultPointOfCare  = "974600951"
	DefaultDecisionRef  = "sim-decision-0001"
)

// AttestEncoding is how the claim carries the attest. HelseID's production
// encoding is not published: the one public consumer reads a JSON string,
// RFC 9396-style authorization details would be an object.
type AttestEncoding string

// The encodings.
const (
	AttestObject AttestEncoding = "object" // the claim is the JSON object
	AttestString AttestEncoding = "string" // the claim is a JSON string holding the object
)

// Attest describes the attest of a token for Mint (TokenSpec.Attest). Empty
// string fields are left out of the document, except those with a default.
type Attest struct {
	Encoding AttestEncoding // default AttestObject
	// Wrapped puts the parameters in an "attestation" object, as NHN's data
	// model v1.1 does; toa stays beside it, at the top.
	Wrapped bool
	// TOA is the time of attestation (toa, Unix seconds). Zero: no toa.
	TOA time.Time

	PractitionerID     string // practitioner.identifier.id; default the token's pid, else DefaultPID
	PractitionerSystem string // its system; default SystemFNumber
	HPRNumber          string // practitioner.hpr_nr.id
	LegalEntity        string // practitioner.legal_entity.id (hovedenhet)
	PointOfCare        string // practitioner.point_of_care.id (underenhet)
	Department         string // practitioner.department.id (RESH)
	PurposeOfUse       string // care_relationship.purpose_of_use.code; default DefaultPurposeOfUse
	HealthcareService  string // care_relationship.healthcare_service.code
	DecisionRef        string // care_relationship.decision_ref.id
	UserSelected       bool   // care_relationship.decision_ref.user_selected

	// Raw, when not nil, is the claim's value as it is, for malformed
	// attests (Encoding and everything above are ignored).
	Raw any
}

// Document returns the attest as a JSON-ready object, for a token whose pid
// is pid.
func (a Attest) Document(pid string) map[string]any {
	id := a.PractitionerID
	if id == "" {
		id = pid
	}
	if id == "" {
		id = DefaultPID
	}
	system := a.PractitionerSystem
	if system == "" {
		system = SystemFNumber
	}
	practitioner := map[string]any{
		"identifier": map[string]any{"id": id, "system": system, "authority": "https://www.skatteetaten.no"},
	}
	org := func(name, id, system string) {
		if id != "" {
			practitioner[name] = map[string]any{"id": id, "system": system, "authority": "https://www.brreg.no"}
		}
	}
	org("legal_entity", a.LegalEntity, SystemOrgNumber)
	org("point_of_care", a.PointOfCare, SystemOrgNumber)
	org("department", a.Department, SystemRESH)
	if a.HPRNumber != "" {
		practitioner["hpr_nr"] = map[string]any{"id": a.HPRNumber, "system": "urn:oid:2.16.578.1.12.4.1.4.4", "authority": "https://www.helsedirektoratet.no/"}
	}
	purpose := a.PurposeOfUse
	if purpose == "" {
		purpose = DefaultPurposeOfUse
	}
	care := map[string]any{
		"purpose_of_use": map[string]any{"code": purpose, "system": SystemPurposeOfUse, "assigner": "http://www.hl7.org/"},
	}
	if a.HealthcareService != "" {
		care["healthcare_service"] = map[string]any{"code": a.HealthcareService, "system": SystemHealthService, "assigner": "https://www.helsedirektoratet.no/"}
	}
	if a.DecisionRef != "" {
		care["decision_ref"] = map[string]any{"id": a.DecisionRef, "user_selected": a.UserSelected}
	}
	params := map[string]any{"practitioner": practitioner, "care_relationship": care, "patients": []any{}}
	doc := params
	if a.Wrapped {
		doc = map[string]any{"attestation": params}
	}
	if !a.TOA.IsZero() {
		doc["toa"] = a.TOA.Unix()
	}
	return doc
}

// claim returns the claim's value: the document, or a JSON string of it.
func (a Attest) claim(pid string) (any, error) {
	if a.Raw != nil {
		return a.Raw, nil
	}
	doc := a.Document(pid)
	switch a.Encoding {
	case "", AttestObject:
		return doc, nil
	case AttestString:
		b, err := json.Marshal(doc)
		return string(b), err
	default:
		return nil, fmt.Errorf("helseidsim: attest encoding must be object or string, not %q", a.Encoding)
	}
}

// Form fields of the token endpoint for the attest (simulator-only: real
// HelseID takes the attest from the client's authorization request or client
// assertion and fills in the practitioner's identifier itself).
const (
	FormAttest             = "attest"                 // object or string: mint the attest in that encoding
	FormAttestWrapped      = "attest_wrapped"         // "true": data model v1.1's attestation wrapper
	FormAttestAge          = "attest_age"             // a duration: toa that long ago (default 0, now)
	FormAttestTOA          = "attest_toa"             // "omit": no toa
	FormAttestPID          = "attest_pid"             // practitioner.identifier.id (default the pid)
	FormAttestPIDSystem    = "attest_pid_system"      // its system (default SystemFNumber)
	FormLegalEntity        = "legal_entity"           // default orgnr_parent
	FormPointOfCare        = "point_of_care"          // default orgnr_child, else DefaultPointOfCare
	FormDepartment         = "department"             // RESH id
	FormPurposeOfUse       = "purpose_of_use"         // default DefaultPurposeOfUse
	FormHealthcareService  = "healthcare_service"     // code
	FormDecisionRef        = "decision_ref"           // default DefaultDecisionRef
	FormDecisionUserSelect = "decision_user_selected" // "true" or "false" (default)
)

// attestFromForm reads the attest fields of a token request; nil when the
// request asks for none.
func attestFromForm(f url.Values, now time.Time) (*Attest, error) {
	enc := f.Get(FormAttest)
	if enc == "" {
		return nil, nil
	}
	a := &Attest{
		Encoding:           AttestEncoding(enc),
		Wrapped:            f.Get(FormAttestWrapped) == "true",
		PractitionerID:     f.Get(FormAttestPID),
		PractitionerSystem: f.Get(FormAttestPIDSystem),
		HPRNumber:          f.Get(FormHPRNumber),
		LegalEntity:        f.Get(FormLegalEntity),
		PointOfCare:        f.Get(FormPointOfCare),
		Department:         f.Get(FormDepartment),
		PurposeOfUse:       f.Get(FormPurposeOfUse),
		HealthcareService:  f.Get(FormHealthcareService),
		DecisionRef:        orDefault(f.Get(FormDecisionRef), DefaultDecisionRef),
	}
	if a.Encoding != AttestObject && a.Encoding != AttestString {
		return nil, fmt.Errorf("%s must be object or string", FormAttest)
	}
	if _, ok := f[FormLegalEntity]; !ok {
		a.LegalEntity = f.Get(FormOrgParent)
	}
	if _, ok := f[FormPointOfCare]; !ok {
		a.PointOfCare = orDefault(f.Get(FormOrgChild), DefaultPointOfCare)
	}
	if s := f.Get(FormDecisionUserSelect); s != "" {
		v, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("%s must be true or false", FormDecisionUserSelect)
		}
		a.UserSelected = v
	}
	switch f.Get(FormAttestTOA) {
	case "":
		age := time.Duration(0)
		if s := f.Get(FormAttestAge); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 {
				return nil, fmt.Errorf("%s must be a non-negative duration", FormAttestAge)
			}
			age = d
		}
		a.TOA = now.Add(-age)
	case "omit":
		if f.Get(FormAttestAge) != "" {
			return nil, fmt.Errorf("%s and %s=omit exclude each other", FormAttestAge, FormAttestTOA)
		}
	default:
		return nil, fmt.Errorf("%s must be omit or absent", FormAttestTOA)
	}
	return a, nil
}
