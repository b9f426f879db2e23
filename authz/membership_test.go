package authz

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestValidOrgNumber(t *testing.T) {
	for _, tc := range []struct {
		org  string
		want bool
	}{
		{"917897468", true},
		{"922734046", true},
		{"994598759", true},
		{"917897469", false}, // wrong check digit
		{"91789746", false},  // eight digits
		{"9178974680", false},
		{"91789746a", false},
		{"", false},
		{"000000000", true}, // check digit 0
		{"100000008", true},
		{"400000000", false}, // remainder 1: the check digit would be 10
	} {
		t.Run(tc.org, func(t *testing.T) {
			if got := ValidOrgNumber(tc.org); got != tc.want {
				t.Fatalf("ValidOrgNumber(%q) = %v", tc.org, got)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	now := testNow
	before, after := now.Add(-time.Hour), now.Add(time.Hour)
	rec := func(mod func(*Authorization)) *Authorization {
		a := &Authorization{Organization: "917897468", Service: "kjernejournal", Member: true, Status: "active"}
		if mod != nil {
			mod(a)
		}
		return a
	}
	for _, tc := range []struct {
		name   string
		rec    *Authorization
		ok     bool
		reason string
	}{
		{"active member", rec(nil), true, ReasonMember},
		{"no record", nil, false, ReasonNotMember},
		{"member false", rec(func(a *Authorization) { a.Member = false }), false, ReasonNotMember},
		{"suspended", rec(func(a *Authorization) { a.Status = "suspended" }), false, ReasonSuspended},
		{"not yet valid", rec(func(a *Authorization) { a.ValidFrom = &after }), false, ReasonOutsideValidity},
		{"valid from now", rec(func(a *Authorization) { a.ValidFrom = &now }), true, ReasonMember},
		{"expired", rec(func(a *Authorization) { a.ValidTo = &before }), false, ReasonOutsideValidity},
		{"valid to now is over", rec(func(a *Authorization) { a.ValidTo = &now }), false, ReasonOutsideValidity},
		{"inside validity", rec(func(a *Authorization) { a.ValidFrom = &before; a.ValidTo = &after }), true, ReasonMember},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, reason := Answer{Record: tc.rec}.Decide(now)
			if ok != tc.ok || reason != tc.reason {
				t.Fatalf("got %v %s, want %v %s", ok, reason, tc.ok, tc.reason)
			}
		})
	}
}

// mapMembership answers from a map and counts lookups per org.
type mapMembership struct {
	recs  map[string]*Authorization
	err   error
	asked []string
}

func (m *mapMembership) Lookup(_ context.Context, service, org string) (Answer, error) {
	m.asked = append(m.asked, org)
	if m.err != nil {
		return Answer{}, m.err
	}
	return Answer{Record: m.recs[service+"/"+org], FetchedAt: testNow, Source: "registry"}, nil
}

func TestMembershipCheck(t *testing.T) {
	active := func(org string) *Authorization {
		return &Authorization{Organization: org, Service: "kjernejournal", Member: true, Status: "active"}
	}
	src := &mapMembership{recs: map[string]*Authorization{
		"kjernejournal/917897468": active("917897468"),
		"kjernejournal/922734046": active("922734046"),
	}}
	p := func(parent, child string) *Principal { return &Principal{OrgParent: parent, OrgChild: child} }
	for _, tc := range []struct {
		name   string
		rule   OrgRule
		p      *Principal
		err    error
		class  DenialClass
		reason string
	}{
		{"parent member", OrgParent, p("917897468", ""), nil, 0, ""},
		{"parent not member", OrgParent, p("994598759", "917897468"), nil, NotMember, ReasonNotMember},
		{"parent missing", OrgParent, p("", "917897468"), nil, NotMember, ReasonNoOrg},
		{"parent invalid", OrgParent, p("917897469", ""), nil, NotMember, ReasonInvalidOrg},
		{"child member", OrgChild, p("994598759", "922734046"), nil, 0, ""},
		{"child missing", OrgChild, p("917897468", ""), nil, NotMember, ReasonNoOrg},
		{"both needs both", OrgBoth, p("917897468", "994598759"), nil, NotMember, ReasonNotMember},
		{"both members", OrgBoth, p("917897468", "922734046"), nil, 0, ""},
		{"registry down", OrgParent, p("917897468", ""), fmt.Errorf("x: %w", ErrRegistryUnavailable), Unavailable, ReasonUnavailable},
		{"registry refuses us", OrgParent, p("917897468", ""), fmt.Errorf("x: %w", ErrRegistryConfig), Unavailable, ReasonRegistryConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src.err, src.asked = tc.err, nil
			m := &MembershipCheck{Service: "kjernejournal", Rule: tc.rule, Source: src, Clock: ClockFunc(func() time.Time { return testNow })}
			derr := m.Check(context.Background(), tc.p)
			if tc.reason == "" {
				if derr != nil {
					t.Fatalf("want allowed, got %v", derr)
				}
				return
			}
			if derr == nil || derr.Class != tc.class || derr.Reason != tc.reason {
				t.Fatalf("want %d %s, got %v", tc.class, tc.reason, derr)
			}
			if tc.reason == ReasonInvalidOrg || tc.reason == ReasonNoOrg {
				if len(src.asked) != 0 {
					t.Fatalf("an invalid or missing org reached the source: %v", src.asked)
				}
			}
		})
	}
	_ = errors.New
}

// answersMembership answers every org from a fixed Answer per org.
type answersMembership map[string]Answer

func (m answersMembership) Lookup(_ context.Context, _, org string) (Answer, error) {
	if a, ok := m[org]; ok {
		return a, nil
	}
	return Answer{}, ErrRegistryUnavailable
}

// Check carries the age and staleness of the answers it decided on out on
// the principal, for the audit entry.
func TestMembershipCheckAge(t *testing.T) {
	const parent, child, other = "917897468", "922734046", "994598759"
	rec := func(org string) *Authorization {
		return &Authorization{Organization: org, Service: "kjernejournal", Member: true, Status: "active"}
	}
	src := answersMembership{
		parent: {Record: rec(parent), FetchedAt: testNow.Add(-90 * time.Second), Source: "local"},
		child:  {Record: rec(child), FetchedAt: testNow.Add(-20 * time.Minute), Source: "local", Stale: true},
		other:  {FetchedAt: testNow.Add(time.Second), Source: "redis"}, // another replica's clock is ahead
	}
	for _, tc := range []struct {
		name     string
		rule     OrgRule
		p        Principal
		allowed  bool
		answered bool
		age      time.Duration
		stale    bool
	}{
		{"fresh answer", OrgParent, Principal{OrgParent: parent}, true, true, 90 * time.Second, false},
		{"stale answer", OrgChild, Principal{OrgChild: child}, true, true, 20 * time.Minute, true},
		{"both: the older, stale when either is", OrgBoth, Principal{OrgParent: parent, OrgChild: child}, true, true, 20 * time.Minute, true},
		{"a denial from an answer", OrgParent, Principal{OrgParent: other}, false, true, 0, false},
		{"no lookup", OrgParent, Principal{OrgParent: "917897469"}, false, false, 0, false},
		{"no answer", OrgParent, Principal{OrgParent: "974760002"}, false, false, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &MembershipCheck{Service: "kjernejournal", Rule: tc.rule, Source: src, Clock: ClockFunc(func() time.Time { return testNow })}
			p := tc.p
			derr := m.Check(context.Background(), &p)
			if (derr == nil) != tc.allowed {
				t.Fatalf("allowed %v (%v), want %v", derr == nil, derr, tc.allowed)
			}
			if derr != nil && derr.Caller != &p {
				t.Fatal("the denial's caller is not the principal")
			}
			if p.MembershipAnswered != tc.answered || p.MembershipAge != tc.age || p.MembershipStale != tc.stale {
				t.Fatalf("answered %v age %s stale %v, want %v %s %v",
					p.MembershipAnswered, p.MembershipAge, p.MembershipStale, tc.answered, tc.age, tc.stale)
			}
		})
	}
}
