package authz

import (
	"context"
	"errors"
	"time"
)

// Membership answers the membership question: is organization org authorized for
// service at the time of asking? Implementations are the registry sources
// (HTTP, file) and the caching decorators in package cache, which wrap a
// Membership and are one themselves.
type Membership interface {
	// Lookup returns what is known of org's authorization for service. An
	// error means nothing usable is known (the registry failed and nothing
	// cached is young enough); it wraps ErrRegistryUnavailable or
	// ErrRegistryConfig.
	Lookup(ctx context.Context, service, org string) (Answer, error)
}

// Errors a Membership returns.
var (
	// ErrRegistryUnavailable: the registry did not answer (timeout,
	// connection error, 429, 5xx, breaker open) and no decision was cached.
	ErrRegistryUnavailable = errors.New("membership registry unavailable")
	// ErrRegistryConfig: the registry refused the gateway (401/403): a
	// configuration error on our side.
	ErrRegistryConfig = errors.New("membership registry refused the gateway's credentials")
)

// Authorization is one record of the registry: the body of a 200 answer of
// contract v1, and an element of the file source's "authorizations".
type Authorization struct {
	Organization string     `json:"organization"`
	Service      string     `json:"service"`
	Member       bool       `json:"member"`
	Status       string     `json:"status"`
	ValidFrom    *time.Time `json:"valid_from,omitempty"`
	ValidTo      *time.Time `json:"valid_to"`
}

// Answer is what a Membership knows of one (service, org): the registry's
// record, or nil for a definite no (404, absent from the file); when it was
// fetched from the registry; and where it came from.
type Answer struct {
	Record    *Authorization
	FetchedAt time.Time
	Source    string // "registry", "file", "local", "redis"
	Stale     bool   // served past its TTL because the registry is failing
}

// Membership reasons: the closed list of outcomes of a membership check.
const (
	ReasonMember          = "member"
	ReasonNotMember       = "not_member"
	ReasonSuspended       = "suspended"
	ReasonOutsideValidity = "outside_validity"
	ReasonNoOrg           = "org_missing"
	ReasonInvalidOrg      = "org_invalid"
	ReasonUnavailable     = "registry_unavailable"
	ReasonRegistryConfig  = "registry_misconfigured"
)

// Decide says whether the answer authorizes at now, and why: member and
// status active and now inside [valid_from, valid_to).
func (a Answer) Decide(now time.Time) (bool, string) {
	r := a.Record
	switch {
	case r == nil || !r.Member:
		return false, ReasonNotMember
	case r.Status != "active":
		return false, ReasonSuspended
	case r.ValidFrom != nil && now.Before(*r.ValidFrom):
		return false, ReasonOutsideValidity
	case r.ValidTo != nil && !now.Before(*r.ValidTo):
		return false, ReasonOutsideValidity
	}
	return true, ReasonMember
}

// ValidOrgNumber reports whether s is a Norwegian organization number: nine
// digits whose last is the mod-11 check digit of Enhetsregisteret (weights
// 3 2 7 6 5 4 3 2). An invalid number never reaches the registry or Redis.
func ValidOrgNumber(s string) bool {
	if len(s) != 9 {
		return false
	}
	weights := [8]int{3, 2, 7, 6, 5, 4, 3, 2}
	sum := 0
	for i := 0; i < 9; i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
		if i < 8 {
			sum += int(s[i]-'0') * weights[i]
		}
	}
	check := 11 - sum%11
	if check == 11 {
		check = 0
	}
	return check != 10 && check == int(s[8]-'0')
}

// OrgRule says which organization number must be authorized.
type OrgRule string

// The org rules.
const (
	OrgParent OrgRule = "parent" // the legal entity owns the membership (default)
	OrgChild  OrgRule = "child"
	OrgBoth   OrgRule = "both"
)

// MembershipCheck is the membership step of one route: service is the
// membership argument, rule says which org numbers must be authorized.
type MembershipCheck struct {
	Service string
	Rule    OrgRule
	Source  Membership
	Clock   Clock
}

// Check authorizes p for the service, or returns the denial: NotMember (403)
// for a missing, invalid or unauthorized organization, Unavailable (503) when
// nothing is known and the registry is down or refuses us. The denial's
// Caller is p. Once a lookup answers, Check records on p how old the answer
// was and whether it was stale (MembershipAnswered, MembershipAge,
// MembershipStale), for the audit entry. With a recording span in ctx, the
// check is a helseid.membership child span.
func (m *MembershipCheck) Check(ctx context.Context, p *Principal) *Error {
	ctx, span := startSpan(ctx, SpanMembership)
	tier, stale, derr := m.check(ctx, p)
	if span != nil {
		result := ReasonMember
		if derr != nil {
			result = derr.Reason
		}
		span.SetAttributes(
			AttrMembershipSvc.String(m.Service),
			AttrMembershipTier.String(tier),
			AttrMembershipResult.String(result),
			AttrMembershipStale.Bool(stale),
		)
		endSpan(span, derr)
	}
	if derr != nil {
		derr.Caller = p
	}
	return derr
}

// check is Check without the span. tier is the coldest tier that answered
// ("" when no lookup was made or none answered); stale reports whether an
// answer was served stale.
func (m *MembershipCheck) check(ctx context.Context, p *Principal) (tier string, stale bool, derr *Error) {
	var orgs [2]string
	n := 1
	switch m.Rule {
	case OrgChild:
		orgs[0] = p.OrgChild
	case OrgBoth:
		orgs[0], orgs[1] = p.OrgParent, p.OrgChild
		n = 2
	default:
		orgs[0] = p.OrgParent
	}
	for _, org := range orgs[:n] {
		if org == "" {
			return "", false, deny(NotMember, ReasonNoOrg, "the access token names no organization to authorize")
		}
		if !ValidOrgNumber(org) {
			return "", false, deny(NotMember, ReasonInvalidOrg, "the access token names an invalid organization number")
		}
	}
	for _, org := range orgs[:n] {
		ans, err := m.Source.Lookup(ctx, m.Service, org)
		switch {
		case errors.Is(err, ErrRegistryConfig):
			return tier, stale, denyErr(Unavailable, ReasonRegistryConfig, "the membership registry is unavailable", err)
		case err != nil:
			return tier, stale, denyErr(Unavailable, ReasonUnavailable, "the membership registry is unavailable", err)
		}
		if tierRank(ans.Source) >= tierRank(tier) {
			tier = ans.Source
		}
		stale = stale || ans.Stale
		now := m.Clock.Now()
		// An answer stamped ahead of our clock (another replica's) is new.
		age := max(now.Sub(ans.FetchedAt), 0)
		p.MembershipAge = max(p.MembershipAge, age)
		p.MembershipStale = p.MembershipStale || ans.Stale
		p.MembershipAnswered = true
		if ok, reason := ans.Decide(now); !ok {
			return tier, stale, deny(NotMember, reason, "the organization is not authorized for this service")
		}
	}
	return tier, stale, nil
}

// tierRank orders answer sources from the cheapest to the costliest.
func tierRank(source string) int {
	switch source {
	case "":
		return -1
	case "local":
		return 0
	case "redis":
		return 1
	default: // the registry or the file itself
		return 2
	}
}
