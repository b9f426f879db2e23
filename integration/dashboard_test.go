package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// The shipped dashboard and alert rules, from the repository root.
var (
	dashboardPath  = filepath.Join("..", "dist", "grafana", "helsegate.json")
	alertRulesPath = filepath.Join("..", "dist", "prometheus", "helsegate-alerts.yml")
)

// metricName finds the series names in a PromQL expression. Every query of
// the dashboard and every alert names caddy_helseid_* series only, so this
// is enough, and a query naming none is itself an error below.
var metricName = regexp.MustCompile(`\bcaddy_helseid_[a-z0-9_]+\b`)

// TestDashboardAndAlertsNameExportedSeries starts the built binary with two
// named routes, Redis and an HTTP registry (so that the breakers and the key
// set exist), sends a few requests, scrapes the admin /metrics and checks
// that every metric name in every dashboard query and alert expression is in
// the scrape, and that the route label carries the routes' names.
func TestDashboardAndAlertsNameExportedSeries(t *testing.T) {
	exprs := dashboardExprs(t)
	exprs = append(exprs, alertExprs(t)...)

	_, prefix := needRedis(t)
	reg := startRegistry(t, registrysim.Options{Members: []authz.Authorization{active(orgParent)}})
	up := newUpstream(t)
	iss := sharedSim.Issuer()
	redisLine := fmt.Sprintf("redis redis://%s {\n\tkey_prefix %s\n}", redisAddr(), prefix)
	g := startGateway(t, 1, func(addrs []string) string {
		route := func(matcher string, extra ...string) string {
			return fmt.Sprintf("handle %s {\n%s\treverse_proxy %s\n}\n", matcher, indent(helseid(iss, extra...)), up.URL())
		}
		site := route("/kj/*", redisLine, membershipBlock("registry "+reg.URL())) +
			route("/pjd/*", redisLine, "route pjd", membershipBlock("registry "+reg.URL()))
		return fmt.Sprintf("http://%s {\n%s}\n", addrs[0], indent(site))
	})
	c := newCaller(t, sharedSim)
	kj, pjd := g.url(0, "/kj/a"), g.url(0, "/pjd/a")
	expectOK(t, c.do(t, "GET", kj))
	expectOK(t, c.do(t, "GET", pjd))
	expectProblem(t, send(t, "GET", kj, nil), http.StatusUnauthorized, "unauthorized")

	scrape, body := opsScrape(t, g)
	exported := map[string]bool{}
	for series := range scrape {
		name, _, _ := strings.Cut(series, "{")
		exported[name] = true
	}
	var missing []string
	for _, e := range exprs {
		names := metricName.FindAllString(e.expr, -1)
		if len(names) == 0 {
			t.Errorf("%s: %q names no caddy_helseid_* series", e.where, e.expr)
		}
		for _, n := range names {
			if !exported[n] {
				missing = append(missing, fmt.Sprintf("%s (%s)", n, e.where))
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("named but not in the scrape:\n  %s", strings.Join(missing, "\n  "))
	}

	// The route label: the membership service, and the route's own name.
	for _, s := range []string{
		opsSeries("caddy_helseid_requests_total", "outcome", "allow", "reason", "member", "route", "kjernejournal"),
		opsSeries("caddy_helseid_requests_total", "outcome", "allow", "reason", "member", "route", "pjd"),
		opsSeries("caddy_helseid_requests_total", "outcome", "deny", "reason", "no_credentials", "route", "kjernejournal"),
	} {
		if scrape[s] != 1 {
			t.Errorf("%s = %v, want 1", s, scrape[s])
		}
	}
	opsLogSeriesOnFailure(t, "scrape", body)
}

type namedExpr struct{ where, expr string }

// dashboardExprs returns the query of every panel target and every query
// variable of the Grafana dashboard.
func dashboardExprs(t *testing.T) []namedExpr {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var out []namedExpr
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, namedExpr{"panel " + p.Title, tg.Expr})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		out = append(out, namedExpr{"variable " + v.Name, q.Query})
	}
	if len(out) < 10 {
		t.Fatalf("the dashboard has %d queries: not read right?", len(out))
	}
	return out
}

// alertExprs returns the expression of every alert rule.
func alertExprs(t *testing.T) []namedExpr {
	t.Helper()
	b, err := os.ReadFile(alertRulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", alertRulesPath, err)
	}
	var out []namedExpr
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out = append(out, namedExpr{"alert " + r.Alert, r.Expr})
		}
	}
	if len(out) < 8 {
		t.Fatalf("%s has %d rules: not read right?", alertRulesPath, len(out))
	}
	return out
}
