package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// The decisions of the membership check: statuses, headers upstream, audit.
func TestMembershipDecisions(t *testing.T) {
	_, prefix := needRedis(t)
	const regToken = "registry-token-0123456789"
	member, child, other := newOrg(t), newOrg(t), newOrg(t)
	suspended, expired, notMember, unknown, early := newOrg(t), newOrg(t), newOrg(t), newOrg(t), newOrg(t)
	past := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	future := time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)
	reg := startRegistry(t, registrysim.Options{Token: regToken, Members: []authz.Authorization{
		active(member),
		active(child),
		active(other),
		{Organization: suspended, Service: service, Member: true, Status: "suspended"},
		{Organization: expired, Service: service, Member: true, Status: "active", ValidTo: &past},
		{Organization: notMember, Service: service, Member: false, Status: "active"},
		{Organization: early, Service: service, Member: true, Status: "active", ValidFrom: &future},
	}})
	up := newUpstream(t)
	iss := sharedSim.Issuer()
	rb := redisBlock(redisAddr(), prefix)
	route := func(path string, lines ...string) string {
		h := helseid(iss, membershipBlock(append([]string{"registry " + reg.URL()}, lines...)...), rb)
		return fmt.Sprintf("handle %s {\n%s\treverse_proxy %s\n}\n", path, indent(h), up.URL())
	}
	g := startGateway(t, 1, func(addrs []string) string {
		return fmt.Sprintf("http://%s {\n%s}\n", addrs[0], indent(
			route("/p/*", "registry_token "+regToken)+
				route("/c/*", "registry_token "+regToken, "org child")+
				route("/both/*", "registry_token "+regToken, "org both")+
				route("/wrong/*", "registry_token not-the-"+regToken)))
	})
	c := newCaller(t, sharedSim)
	parent := g.url(0, "/p/x")

	t.Run("member passes", func(t *testing.T) {
		up.reset()
		r, _ := c.asOrg(t, parent, member)
		expectMemberOK(t, up, r)
		g.expectReason(t, "allow", "member")
		if _, _, _, h := up.last(); h.Get("X-Helseid-Org-Parent") != member {
			t.Errorf("upstream X-Helseid-Org-Parent = %q, want %s", h.Get("X-Helseid-Org-Parent"), member)
		}
	})

	denials := []struct{ name, org, reason string }{
		{"unknown organization (404)", unknown, "not_member"},
		{"member false", notMember, "not_member"},
		{"suspended", suspended, "suspended"},
		{"expired", expired, "outside_validity"},
		{"not yet valid", early, "outside_validity"},
	}
	for _, d := range denials {
		t.Run(d.name, func(t *testing.T) {
			up.reset()
			r, tok := c.asOrg(t, parent, d.org)
			expectNotMember(t, g, r, tok, d.org, d.reason)
			if hits, _, _, _ := up.last(); hits != 0 {
				t.Errorf("a denied request reached the upstream")
			}
		})
	}

	t.Run("invalid org number never reaches the registry", func(t *testing.T) {
		bad := member[:8] + strconv.Itoa((int(member[8]-'0')+1)%10)
		if authz.ValidOrgNumber(bad) {
			t.Fatalf("test bug: %s is valid", bad)
		}
		before := reg.Calls()
		r, tok := c.asOrg(t, parent, bad)
		expectNotMember(t, g, r, tok, bad, "org_invalid")
		if n := reg.Calls() - before; n != 0 {
			t.Errorf("the registry was asked %d times about an invalid org number", n)
		}
	})

	t.Run("org child", func(t *testing.T) {
		url := g.url(0, "/c/x")
		up.reset()
		// The parent is not a member; the child is: org child asks about the child only.
		r, _ := c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: unknown, OrgChild: child})
		expectMemberOK(t, up, r)

		r, tok := c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member})
		expectNotMember(t, g, r, tok, member, "org_missing")

		r, tok = c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member, OrgChild: suspended})
		expectNotMember(t, g, r, tok, suspended, "suspended")
	})

	t.Run("org both", func(t *testing.T) {
		url := g.url(0, "/both/x")
		up.reset()
		r, _ := c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member, OrgChild: child})
		expectMemberOK(t, up, r)
		r, tok := c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member, OrgChild: expired})
		expectNotMember(t, g, r, tok, expired, "outside_validity")
		r, tok = c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: unknown, OrgChild: child})
		expectNotMember(t, g, r, tok, unknown, "not_member")
		r, tok = c.doSpec(t, "GET", url, helseidsim.TokenSpec{OrgParent: member})
		expectNotMember(t, g, r, tok, member, "org_missing")
	})

	t.Run("registry refuses the registry_token", func(t *testing.T) {
		up.reset()
		before := reg.Calls()
		// An org no other route asked about: the Redis tier is shared by
		// every route of the service.
		r, tok := c.asOrg(t, g.url(0, "/wrong/x"), other)
		expectUnavailable(t, g, r, tok, other, "registry_misconfigured")
		if reg.Calls() == before {
			t.Errorf("the registry was not asked")
		}
		if hits, _, _, _ := up.last(); hits != 0 {
			t.Errorf("a denied request reached the upstream")
		}
		// A configuration error is not a registry failure: it neither opens
		// the breaker nor is cached.
		for range 6 {
			before := reg.Calls()
			r, tok := c.asOrg(t, g.url(0, "/wrong/x"), other)
			expectUnavailable(t, g, r, tok, other, "registry_misconfigured")
			if reg.Calls() == before {
				t.Fatalf("the registry was not asked: a 401 must not open the breaker nor be cached")
			}
		}
		if g.findLog(msgContains("error", "refused the gateway's credentials")) == nil {
			t.Errorf("no error-level log says the registry refused the gateway's credentials")
		}
		for _, e := range g.logEntries() {
			line, _ := json.Marshal(e)
			if strings.Contains(string(line), regToken) {
				t.Errorf("the registry token is logged: %s", line)
			}
		}
	})
}

// The file source is reloaded when the file changes, and a bad file
// keeps the last good one. With the default cache_ttl a change shows at the
// next poll: a reload evicts the in-process tier, and a file source has no
// Redis tier in front of it (a file is per-replica configuration), even with
// redis configured.
func TestMembershipFile(t *testing.T) {
	rc, prefix := needRedis(t)
	x, y, z := newOrg(t), newOrg(t), newOrg(t)
	path := filepath.Join(t.TempDir(), "members.json")
	writeMembers := func(body string) {
		t.Helper()
		// Atomic replace with a later mtime, as a deploy would.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		next := time.Now().Add(time.Second)
		if fi, err := os.Stat(path); err == nil && !fi.ModTime().Before(next) {
			next = fi.ModTime().Add(time.Second)
		}
		if err := os.Chtimes(tmp, next, next); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	doc := func(orgs ...string) string {
		var d registrysim.Document
		for _, o := range orgs {
			d.Authorizations = append(d.Authorizations, active(o))
		}
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	writeMembers(doc(x, y))
	up := newUpstream(t)
	g := startGateway(t, 1, simpleSite(sharedSim.Issuer(), up.URL(),
		membershipBlock("file "+path), // default cache_ttl 5m, negative_ttl 1m
		redisBlock(redisAddr(), prefix)))
	c := newCaller(t, sharedSim)
	url := g.url(0, "/api/f")

	for _, org := range []string{x, y} {
		r, _ := c.asOrg(t, url, org)
		expectMemberOK(t, up, r)
	}
	r, tok := c.asOrg(t, url, newOrg(t))
	expectNotMember(t, g, r, tok, "", "not_member")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if keys, err := redisKeys(ctx, rc, prefix+"v1:membership:*"); err != nil || len(keys) != 0 {
		t.Errorf("the file source's answers reached Redis: %q (%v)", keys, err)
	}

	t.Run("member removed", func(t *testing.T) {
		// y is cached in-process, fresh for cache_ttl: only the reload's
		// eviction can make the change show.
		writeMembers(doc(x, z))
		r, took := pollStatus(t, c, url, y, http.StatusForbidden, 5*time.Second)
		if r.status != http.StatusForbidden {
			t.Fatalf("the removed member still gets %d %s 5 s after the file changed", r.status, r.body)
		}
		t.Logf("the removal showed after %s", took)
		expectNotMember(t, g, r, "", y, "not_member")
		r, _ = c.asOrg(t, url, x)
		expectMemberOK(t, up, r)
	})

	t.Run("broken file keeps the last good one", func(t *testing.T) {
		writeMembers(`{"authorizations":[`)
		deadline := time.Now().Add(5 * time.Second)
		for g.findLog(msgContains("error", "membership file rejected")) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("no error log rejecting the broken membership file 5 s after it was written")
			}
			time.Sleep(100 * time.Millisecond)
		}
		// z was never asked about: the answer comes from the last good set,
		// not from a cache.
		r, _ := c.asOrg(t, url, z)
		expectMemberOK(t, up, r)
		r, _ = c.asOrg(t, url, x)
		expectMemberOK(t, up, r)
		r, tok := c.asOrg(t, url, y)
		expectNotMember(t, g, r, tok, y, "not_member")
	})
}

// Validate refuses a membership file with an invalid org number
// and a membership block without a source, naming the file and line.
func TestMembershipValidate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, membership string) (path, content string) {
		return writeValidateConfig(t, dir, name,
			"\t\tissuer https://helseid-sts.invalid\n\t\taudience nhn:kjernejournal\n\t\tscopes nhn:kjernejournal/api\n"+membership)
	}

	t.Run("file with an invalid org number", func(t *testing.T) {
		members := filepath.Join(dir, "members.json")
		good := active(newOrg(t))
		bad := active("917897469") // check digit wrong
		b, _ := json.Marshal(registrysim.Document{Authorizations: []authz.Authorization{good, bad}})
		if err := os.WriteFile(members, b, 0o600); err != nil {
			t.Fatal(err)
		}
		path, content := write("badfile.Caddyfile", "\t\tmembership kjernejournal {\n\t\t\tfile "+members+"\n\t\t}")
		out := validateRefuses(t, path, content)
		for _, want := range []string{members, "authorizations[1]", "not a valid organization number"} {
			if !strings.Contains(out, want) {
				t.Errorf("the error does not name %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "917897469") {
			t.Errorf("the error quotes the org number:\n%s", out)
		}

		// The same file fixed validates.
		b, _ = json.Marshal(registrysim.Document{Authorizations: []authz.Authorization{good}})
		if err := os.WriteFile(members, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := validate(t, path); err != nil {
			t.Errorf("validate failed on a good membership file: %v\n%s", err, out)
		}
	})

	t.Run("membership without registry or file", func(t *testing.T) {
		path, content := write("nosource.Caddyfile", "\t\tmembership kjernejournal {\n\t\t\tcache_ttl 1m\n\t\t}")
		out := validateRefuses(t, path, content)
		if !strings.Contains(out, "registry") || !strings.Contains(out, "file") {
			t.Errorf("the error does not say a registry or a file is needed:\n%s", out)
		}
		line := lineNamed(t, out, path)
		first := lineOf(content, "membership kjernejournal")
		if line < first || line > first+2 {
			t.Errorf("the error names line %d, want one of the membership block (%d–%d):\n%s", line, first, first+2, out)
		}
	})
}
