package main

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// tokenRefresh is how long a client uses one access token: short enough
// that new tokens (with the new kid after a rotation) reach both replicas
// within the rotation phase, long enough that most requests hit the
// gateway's verified-token cache, as real clients do.
const tokenRefresh = 40 * time.Second

// client is one caller: an organization, a DPoP key and the token bound to
// it, re-minted every tokenRefresh.
type client struct {
	org    string
	member bool
	key    *dpopclient.Key

	mu     sync.Mutex
	token  string
	minted time.Time
}

// identities are the callers of the soak.
type identities struct {
	sim        *helseidsim.Server
	members    []*client
	nonMembers []*client
	expired    *client // its token is always expired
}

// orgNumbers returns n valid organization numbers (mod-11) from start on.
func orgNumbers(start, n int) []string {
	var out []string
	for i := start; len(out) < n && i < start+100_000; i++ {
		if s := fmt.Sprint(i); authz.ValidOrgNumber(s) {
			out = append(out, s)
		}
	}
	return out
}

// newIdentities makes 12 member clients over 6 member orgs (registered in
// the registry by the caller) and 4 non-member clients over 4 orgs the
// registry does not know. Several orgs, so that membership lookups miss and
// refill during registry faults; several clients per org, so that tokens
// are re-minted at different moments.
func newIdentities(sim *helseidsim.Server) (*identities, []string, error) {
	orgs := orgNumbers(910_000_000, 10)
	id := &identities{sim: sim}
	mk := func(org string, member bool) (*client, error) {
		k, err := dpopclient.NewKey("ES256")
		if err != nil {
			return nil, err
		}
		return &client{org: org, member: member, key: k}, nil
	}
	for i := range 12 {
		c, err := mk(orgs[i%6], true)
		if err != nil {
			return nil, nil, err
		}
		id.members = append(id.members, c)
	}
	for i := range 4 {
		c, err := mk(orgs[6+i], false)
		if err != nil {
			return nil, nil, err
		}
		id.nonMembers = append(id.nonMembers, c)
	}
	c, err := mk(orgs[0], true)
	if err != nil {
		return nil, nil, err
	}
	id.expired = c
	return id, orgs[:6], nil
}

// pick returns a random member or non-member client.
func (id *identities) pick(member bool) *client {
	if member {
		return id.members[rand.IntN(len(id.members))]
	}
	return id.nonMembers[rand.IntN(len(id.nonMembers))]
}

// tokenFor returns c's current token, minting a new one (with the
// simulator's current key) when it is older than refresh.
func (id *identities) tokenFor(c *client, refresh time.Duration, spec helseidsim.TokenSpec) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != "" && time.Since(c.minted) < refresh {
		return c.token, nil
	}
	spec.OrgParent = c.org
	spec.JKT = c.key.Thumbprint()
	tok, err := id.sim.Mint(spec)
	if err != nil {
		return "", err
	}
	// Stagger the clients' refreshes so they do not all mint at once.
	c.token, c.minted = tok, time.Now().Add(-time.Duration(rand.Int64N(int64(refresh/4))))
	return tok, nil
}

// validToken returns a valid token of c.
func (id *identities) validToken(c *client) (string, error) {
	return id.tokenFor(c, tokenRefresh, helseidsim.TokenSpec{})
}

// expiredToken returns a token that expired 20 minutes ago (re-minted every
// 10 s, so that it carries the current kid).
func (id *identities) expiredToken() (string, error) {
	return id.tokenFor(id.expired, 10*time.Second, helseidsim.TokenSpec{
		IssuedAt: time.Now().Add(-30 * time.Minute), Lifetime: 10 * time.Minute,
	})
}
