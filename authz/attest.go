package authz

import (
	"bytes"
	"errors"
	"strings"
	"time"
	"unicode/utf8"
)

// ClaimAttest is the claim that carries the trust framework's attest
// ("tillitsrammeverk"): who the health worker is, for which legal entity and
// point of care, for which purpose, on whose decision. HelseID puts it in an
// access token only when the client sent it, so a route that needs it must
// say so (AttestRequired).
const ClaimAttest = "nhn:tillitsrammeverk:parameters"

// AttestMode says whether a route reads the attest.
type AttestMode string

// The attest modes. The zero value does not read the claim at all.
const (
	AttestOff      AttestMode = ""
	AttestOptional AttestMode = "optional" // validated when present
	AttestRequired AttestMode = "required" // must be present, and is validated
)

// Defaults of the attest checks.
const (
	// DefaultAttestMaxAge is how old an attest (its toa) may be: rule ATT-58
	// of the trust framework's business rules (60 minutes).
	DefaultAttestMaxAge = 60 * time.Minute
)

// DefaultPurposes are the purpose_of_use codes a route accepts unless it
// narrows them: treatment, emergency treatment, coordination of care and
// break the glass.
var DefaultPurposes = []string{"TREAT", "ETREAT", "COC", "BTG"}

// The OIDs a practitioner identifier's system may name (rule ATT-10): a
// national identity number (F-number) or a D-number.
const (
	oidFNumber = "2.16.578.1.12.4.1.4.1"
	oidDNumber = "2.16.578.1.12.4.1.4.2"
)

// Attest is what a validated attest contributes to the principal: codes and
// ids only, never free text, never the practitioner's identifier (the pid)
// and never anything about the patient.
type Attest struct {
	LegalEntity          string // practitioner.legal_entity.id: an org number (hovedenhet)
	PointOfCare          string // practitioner.point_of_care.id: an org number (underenhet)
	Department           string // practitioner.department.id (a RESH id)
	PurposeOfUse         string // care_relationship.purpose_of_use.code
	HealthcareService    string // care_relationship.healthcare_service.code
	DecisionRef          string // care_relationship.decision_ref.id
	DecisionUserSelected string // care_relationship.decision_ref.user_selected: "true", "false" or ""
}

// attestDoc is an attest as read, before it is checked.
type attestDoc struct {
	Attest
	practitionerID     string // practitioner.identifier.id: the pid, never passed on
	practitionerSystem string // practitioner.identifier.system
	toa                time.Time
	hasTOA             bool
	// Which parts were read, so that a part given twice (inside and
	// outside the attestation wrapper) is refused.
	hasWrapper, hasPractitioner, hasCareRelationship, hasPatients bool
	// partsAtTop: a part was read beside the wrapper's place. With the
	// wrapper, only toa may stand beside it: a reader of the forwarded token
	// that looks in the wrapper alone must see the attest the gateway judged.
	partsAtTop bool
}

// Bounds of an attest. A real one is about a kilobyte, four levels deep
// (wrapper, practitioner, identifier, value); a value is a code or an id.
const (
	MaxAttestSize  = 16 << 10
	maxAttestDepth = 8
	maxAttestValue = 256
)

// Errors of the attest reader. They never quote the attest.
var (
	errAttestNotObject = errors.New("the attest is not an object, nor a string holding exactly one object")
	errAttestTooLarge  = errors.New("the attest is larger than the limit")
	errAttestDepth     = errors.New("the attest nests too deeply")
	errAttestCase      = errors.New("a member name differs from a known one only in case")
	errAttestValue     = errors.New("an attest value is too long, or holds control characters")
	errAttestClaim     = errors.New("the payload names the attest claim twice, or in another case")
	errAttestSplit     = errors.New("the attest's parts are split between the attestation wrapper and the top level, or the wrapper nests another")
)

// findClaim returns the raw JSON value of the member name of the JSON object
// b (a token's payload), or found false when there is none or it is null.
// Like every reader of the attest, it refuses the name twice, or in another
// case: no two readers of one token may disagree on which attest it carries.
func findClaim(b []byte, name string) (raw []byte, found bool, err error) {
	p := jsonReader{b: b}
	seen := false
	err = p.forEachMember(func(key []byte) error {
		switch {
		case string(key) == name:
			if seen {
				return errAttestClaim
			}
			seen = true
			start := p.i
			if p.literal("null") {
				return nil
			}
			if err := p.skipValue(2); err != nil {
				return err
			}
			raw, found = p.b[start:p.i], true
			return nil
		case bytes.EqualFold(key, []byte(name)):
			return errAttestClaim
		}
		return p.skipValue(2)
	})
	if err == nil && !p.atEnd() {
		err = errClaimsSyntax
	}
	return raw, found, err
}

// parseAttest reads an attest claim's value, raw: an object, or a JSON
// string holding exactly one object (HelseID's production encoding is not
// published, and consumers have seen the string form). Either shape of the
// trust framework's data model is read: the parts at the top, or (data model
// v1.1) inside an "attestation" wrapper, with "toa" beside or inside it.
//
// The reader is strict in the way the proof claims reader is: member names
// are matched exactly, a known member may appear once and a name differing
// from a known one only in case is refused (another reader might match it
// case-insensitively), the types are checked, the size and the depth are
// bounded. Unknown members are checked for syntax and skipped: the data
// model grows. patients is checked and skipped: nothing of the patient is
// read.
func parseAttest(raw []byte) (attestDoc, error) {
	var d attestDoc
	if len(raw) > MaxAttestSize {
		return d, errAttestTooLarge
	}
	b := raw
	if len(b) > 0 && b[0] == '"' {
		p := jsonReader{b: b}
		s, err := p.str()
		if err != nil || p.i != len(p.b) {
			return d, errAttestNotObject
		}
		b = s
	}
	if depth, ok := jsonDepth(b, maxAttestDepth); !ok {
		return d, errClaimsSyntax
	} else if depth > maxAttestDepth {
		return d, errAttestDepth
	}
	p := jsonReader{b: b}
	p.space()
	if !p.at('{') {
		return d, errAttestNotObject
	}
	if err := p.attestBody(&d, true); err != nil {
		return d, err
	}
	if d.hasWrapper && d.partsAtTop {
		return d, errAttestSplit
	}
	if !p.atEnd() {
		return d, errAttestNotObject
	}
	return d, nil
}

// attestBody reads the object of the attest's parts; top says whether it is
// the outermost one, which may hold the attestation wrapper.
func (p *jsonReader) attestBody(d *attestDoc, top bool) error {
	known := attestWrapped
	if top {
		known = attestTop
	}
	return p.knownMembers(known, func(name string) error {
		if top && name != "attestation" && name != "toa" {
			d.partsAtTop = true
		}
		switch name {
		case "attestation":
			if !top {
				return errAttestSplit
			}
			if err := once(&d.hasWrapper); err != nil {
				return err
			}
			if !p.at('{') {
				return p.skipWrongType()
			}
			return p.attestBody(d, false)
		case "toa":
			return p.numericDate(&d.toa, &d.hasTOA)
		case "practitioner":
			if err := once(&d.hasPractitioner); err != nil {
				return err
			}
			return p.practitioner(d)
		case "care_relationship":
			if err := once(&d.hasCareRelationship); err != nil {
				return err
			}
			return p.careRelationship(d)
		case "patients":
			if err := once(&d.hasPatients); err != nil {
				return err
			}
			if !p.at('[') {
				return p.skipWrongType()
			}
		}
		return p.skipValue(2)
	})
}

// The member names each object of the attest knows.
var (
	attestTop          = []string{"attestation", "toa", "practitioner", "care_relationship", "patients"}
	attestWrapped      = []string{"attestation", "toa", "practitioner", "care_relationship", "patients"}
	attestPractitioner = []string{"identifier", "hpr_nr", "authorization", "legal_entity", "point_of_care", "department"}
	attestCare         = []string{"healthcare_service", "purpose_of_use", "purpose_of_use_details", "decision_ref"}
	attestElementNames = []string{"id", "code", "system", "name", "text", "authority", "assigner"}
	attestDecisionRef  = []string{"id", "user_selected"}
)

// once marks a part as read, refusing it the second time.
func once(seen *bool) error {
	if *seen {
		return errClaimsDuplicate
	}
	*seen = true
	return nil
}

// practitioner reads practitioner: the identifier (for rules ATT-10 and
// ATT-11) and the organization ids; hpr_nr and authorization are checked
// for their shape only.
func (p *jsonReader) practitioner(d *attestDoc) error {
	return p.knownObject(attestPractitioner, func(name string) error {
		var e attestElement
		if err := p.element(&e); err != nil {
			return err
		}
		switch name {
		case "identifier":
			d.practitionerID, d.practitionerSystem = e.id, e.system
		case "legal_entity":
			d.LegalEntity = e.id
		case "point_of_care":
			d.PointOfCare = e.id
		case "department":
			d.Department = e.id
		}
		return nil
	})
}

// careRelationship reads care_relationship: the codes and the decision.
func (p *jsonReader) careRelationship(d *attestDoc) error {
	return p.knownObject(attestCare, func(name string) error {
		if name == "decision_ref" {
			return p.decisionRef(d)
		}
		var e attestElement
		if err := p.element(&e); err != nil {
			return err
		}
		switch name {
		case "healthcare_service":
			d.HealthcareService = e.code
		case "purpose_of_use":
			d.PurposeOfUse = e.code
		}
		return nil
	})
}

// decisionRef reads decision_ref: its id and whether the health worker
// chose it (true) or the system derived it (false).
func (p *jsonReader) decisionRef(d *attestDoc) error {
	var hasID, hasSel bool
	return p.knownObject(attestDecisionRef, func(name string) error {
		if name == "id" {
			return p.attestString(&d.DecisionRef, &hasID)
		}
		if hasSel {
			return errClaimsDuplicate
		}
		hasSel = true
		switch {
		case p.literal("true"):
			d.DecisionUserSelected = "true"
		case p.literal("false"):
			d.DecisionUserSelected = "false"
		case p.literal("null"):
		default:
			return p.skipWrongType()
		}
		return nil
	})
}

// attestElement is one identified or coded element of the data model
// ({"id"|"code", "system", and text for people}).
type attestElement struct {
	id, code, system string
}

// element reads an element, keeping id, code and system; name, text,
// authority and assigner must be strings and are not kept.
func (p *jsonReader) element(e *attestElement) error {
	var has [7]bool
	var discard string
	return p.knownObject(attestElementNames, func(name string) error {
		for i, k := range attestElementNames {
			if k != name {
				continue
			}
			switch name {
			case "id":
				return p.attestString(&e.id, &has[i])
			case "code":
				return p.attestString(&e.code, &has[i])
			case "system":
				return p.attestString(&e.system, &has[i])
			default:
				return p.attestText(&discard, &has[i])
			}
		}
		return nil
	})
}

// attestString reads a string value that is passed on or compared: at most
// maxAttestValue bytes of UTF-8 without control characters (it may become a
// header), or null for "absent".
func (p *jsonReader) attestString(dst *string, seen *bool) error {
	if err := p.attestText(dst, seen); err != nil {
		return err
	}
	if len(*dst) > maxAttestValue {
		return errAttestValue
	}
	for _, r := range *dst {
		if r < 0x20 || r == 0x7f {
			return errAttestValue
		}
	}
	return nil
}

// attestText reads a string of valid UTF-8, or null; once.
func (p *jsonReader) attestText(dst *string, seen *bool) error {
	if *seen {
		return errClaimsDuplicate
	}
	*seen = true
	if p.literal("null") {
		return nil
	}
	if !p.at('"') {
		return p.skipWrongType()
	}
	v, err := p.str()
	if err != nil {
		return err
	}
	if !utf8.Valid(v) {
		return errClaimsUTF8
	}
	*dst = string(v)
	return nil
}

// checkAttest is step 4a: the trust framework's attest, when the route reads
// it. A validated attest is recorded on p, and its legal entity and point of
// care stand in for orgnr_parent and orgnr_child when the token has none
// (HelseID plans to drop those flat claims in favour of the attest).
func (v *Verifier) checkAttest(p *Principal, vt *verifiedToken, now time.Time) *Error {
	if !vt.hasAttest {
		if v.cfg.Attest == AttestRequired {
			return deny(InsufficientScope, "attest_missing", "this API requires the trust-framework attest")
		}
		return nil
	}
	if vt.attestErr != nil {
		return denyErr(InvalidToken, "attest_malformed", "the trust-framework attest is malformed", vt.attestErr)
	}
	d := &vt.attest
	if derr := attestPerson(p, d, vt.claims.PID); derr != nil {
		return derr
	}
	if derr := attestOrgs(p, d); derr != nil {
		return derr
	}
	if derr := v.attestAge(d, now); derr != nil {
		return derr
	}
	if !contains(v.cfg.Purposes, d.PurposeOfUse) {
		return deny(InsufficientScope, "attest_purpose", "this API does not accept the attest's purpose of use")
	}
	p.Attest = d.Attest
	if p.OrgParent == "" {
		p.OrgParent = d.LegalEntity
	}
	if p.OrgChild == "" {
		p.OrgChild = d.PointOfCare
	}
	return nil
}

// attestPerson checks that the attest speaks for the caller, a person: the
// token is a user token at security level 4 (rule ATT-9), and the
// practitioner is the token's pid (ATT-11) identified by an F- or D-number
// (ATT-10).
func attestPerson(p *Principal, d *attestDoc, pid string) *Error {
	// ATT-9: assurance level high is HelseID's security level 4.
	if p.Kind != KindUser {
		return deny(InsufficientScope, "attest_not_user", "the trust-framework attest requires a user token")
	}
	if p.SecurityLevel != "4" {
		return deny(InsufficientScope, "attest_security_level", "the trust-framework attest requires security level 4")
	}
	// ATT-11: the practitioner is the authenticated user.
	if d.practitionerID == "" || d.practitionerID != pid {
		return deny(InvalidToken, "attest_not_caller", "the trust-framework attest does not name the authenticated user")
	}
	// ATT-10: identified by an F-number or a D-number.
	if !personOID(d.practitionerSystem) {
		return deny(InvalidToken, "attest_identifier_system", "the trust-framework attest does not identify the user by an F- or D-number")
	}
	return nil
}

// attestOrgs checks that the attest's organizations are organization
// numbers, and that its legal entity is the token's own.
func attestOrgs(p *Principal, d *attestDoc) *Error {
	if (d.LegalEntity != "" && !ValidOrgNumber(d.LegalEntity)) || (d.PointOfCare != "" && !ValidOrgNumber(d.PointOfCare)) {
		return deny(InvalidToken, "attest_org_invalid", "the trust-framework attest names an invalid organization number")
	}
	if d.LegalEntity != "" && p.OrgParent != "" && d.LegalEntity != p.OrgParent {
		return deny(InvalidToken, "attest_org_mismatch", "the trust-framework attest names another legal entity than the token")
	}
	return nil
}

// attestAge applies rule ATT-58: an attest at most attest_max_age old (its
// toa, with the clock skew), refused with attestation_has_expired, which the
// rule wants in the error. An attest without toa (the shapes before data
// model v1.1) has no age to check and is accepted.
func (v *Verifier) attestAge(d *attestDoc, now time.Time) *Error {
	if !d.hasTOA {
		return nil
	}
	if now.Sub(d.toa) > v.cfg.AttestMaxAge+v.cfg.ClockSkew {
		return deny(InvalidToken, "attestation_has_expired", "attestation_has_expired")
	}
	if d.toa.Sub(now) > v.cfg.ClockSkew {
		return deny(InvalidToken, "attest_toa_future", "the trust-framework attest is dated in the future")
	}
	return nil
}

// IsAttestReason reports whether reason is a denial of the attest step: its
// reasons, and no others, start with "attest" (attest_*, and
// attestation_has_expired, the code rule ATT-58 prescribes).
func IsAttestReason(reason string) bool {
	return strings.HasPrefix(reason, "attest")
}

// personOID reports whether system names the F-number or the D-number OID,
// as urn:oid:<oid> or the bare OID.
func personOID(system string) bool {
	oid := strings.TrimPrefix(system, "urn:oid:")
	return oid == oidFNumber || oid == oidDNumber
}

// readAttest reads the attest claim of a verified token's payload, keeping
// the outcome for checkAttest.
func (vt *verifiedToken) readAttest(payload []byte) {
	raw, found, err := findClaim(payload, ClaimAttest)
	if err != nil {
		vt.hasAttest, vt.attestErr = true, err
		return
	}
	if !found {
		return
	}
	vt.hasAttest = true
	vt.attest, vt.attestErr = parseAttest(raw)
}
