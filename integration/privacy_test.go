package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// No personal data in logs, metrics or spans. Requests whose tokens carry a
// pid and an HPR number, allowed and
// denied, through Caddy with its access log, error routes and tracing on
// (spans exported to stdout). The pid must appear in no log line (access,
// audit, error), no metric and no span attribute; the HPR number in the
// audit entries only. The tokens themselves appear nowhere either.
func TestNoPersonalDataInLogsMetricsSpans(t *testing.T) {
	const (
		pid = "17056600574"
		hpr = "431001110"
	)
	// Caddy's tracing exports through autoexport: "console" writes the spans
	// to the process's stdout, which the harness keeps with its log.
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")

	up := newUpstream(t)
	file := opsMembershipFile(t, orgParent)
	deadRegistry := "http://" + mustFreePort()
	iss := sharedSim.Issuer()
	g := startGateway(t, 1, func(addrs []string) string {
		route := func(matcher, extra string) string {
			var lines []string
			if extra != "" {
				lines = append(lines, extra)
			}
			return fmt.Sprintf("handle %s{\n%s\treverse_proxy %s\n}\n", matcher, indent(helseid(iss, lines...)), up.URL())
		}
		// The access log as Caddyfile.example has it: Caddy redacts
		// Authorization, the filter drops the DPoP proof.
		site := "log {\n\toutput stderr\n\tformat filter {\n\t\twrap json\n\t\trequest>headers>Dpop delete\n\t}\n}\n" +
			"tracing {\n\tspan gateway\n}\n" +
			route("/member/* ", "membership "+opsService+" {\n\tfile "+file+"\n}") +
			route("/dead/* ", "membership "+opsService+" {\n\tregistry "+deadRegistry+"\n\ttimeout 200ms\n}") +
			route("", "") +
			"handle_errors {\n\trespond \"{err.status_code}\" {err.status_code}\n}\n"
		return fmt.Sprintf("http://%s {\n%s}\n", addrs[0], indent(site))
	})
	c := newCaller(t, sharedSim)
	user := func(org string) string {
		return c.token(t, helseidsim.TokenSpec{OrgParent: org, OrgChild: orgChild, PID: pid, SecurityLevel: "4", HPRNumber: hpr})
	}
	var tokens, proofs []string
	sendUser := func(url, htu, org string) reply {
		tok := user(org)
		proof := c.proof(t, "GET", htu, tok, dpopclient.ProofOptions{})
		tokens, proofs = append(tokens, tok), append(proofs, proof)
		return send(t, "GET", url, dpopHeaders(tok, proof))
	}
	wantStatus := func(r reply, status int) {
		t.Helper()
		if r.status != status {
			hostBug(t, r)
			t.Fatalf("status %d, want %d: %s", r.status, status, r)
		}
	}

	member, api, dead := g.url(0, "/member/Patient"), g.url(0, "/api/Patient"), g.url(0, "/dead/Patient")
	wantStatus(sendUser(member, member, orgParent), http.StatusOK)                    // allow, member
	wantStatus(sendUser(api+"?x=1", api, orgParent), http.StatusOK)                   // allow, ok
	wantStatus(sendUser(api, g.url(0, "/other"), orgParent), http.StatusUnauthorized) // proof_htu, after the token verified
	wantStatus(sendUser(member, member, orgChild), http.StatusForbidden)              // not_member
	wantStatus(sendUser(dead, dead, orgParent), http.StatusServiceUnavailable)        // registry_unavailable: error logs
	wantStatus(send(t, "GET", api, nil), http.StatusUnauthorized)                     // no_credentials

	// The spans reach stdout within the batch delay: wait for the six
	// request spans (Caddy's, named "gateway" above) and helsegate's.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(g.errPath)
		out := string(b)
		if strings.Count(out, `"Name":"gateway"`) >= 6 && strings.Contains(out, `"Name":"helseid.membership"`) &&
			strings.Contains(out, `"Name":"helseid.verify_proof"`) && strings.Contains(out, `"Name":"helseid.replay"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spans were not exported to stdout (is Caddy's tracing on?); log:\n%s", g.logTail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}

	raw, err := os.ReadFile(g.errPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	checkSpanParents(t, lines)
	var access, errorLines, audits, hprAudits int
	for i, line := range lines {
		var e map[string]any
		isJSON := json.Unmarshal([]byte(line), &e) == nil
		logger, _ := e["logger"].(string)
		switch {
		case strings.HasPrefix(logger, "http.log.access"):
			access++
		case strings.HasPrefix(logger, "http.log.error") || e["level"] == "error":
			errorLines++
		case logger == "http.handlers.helseid.audit":
			audits++
			if e["hpr_number"] == hpr {
				hprAudits++
			}
		}
		if strings.Contains(line, pid) {
			t.Errorf("line %d carries the pid: %.300s", i+1, line)
		}
		for _, tok := range tokens {
			if strings.Contains(line, tok) || strings.Contains(line, strings.Split(tok, ".")[1]) {
				t.Errorf("line %d carries an access token: %.300s", i+1, line)
			}
		}
		for _, proof := range proofs {
			if strings.Contains(line, strings.Split(proof, ".")[2]) {
				t.Errorf("line %d carries a DPoP proof: %.300s", i+1, line)
			}
		}
		if strings.Contains(line, hpr) && (!isJSON || logger != "http.handlers.helseid.audit") {
			t.Errorf("line %d carries the HPR number outside the audit log: %.300s", i+1, line)
		}
	}
	if access != 6 || errorLines == 0 || audits != 6 {
		t.Errorf("the log has %d access, %d error and %d audit lines, want 6, some and 6: the checks above saw too little", access, errorLines, audits)
	}
	// Every request whose token verified names the health worker: all but
	// the one without credentials.
	if hprAudits != 5 {
		t.Errorf("%d audit entries name the HPR number, want 5", hprAudits)
	}

	_, metrics := opsScrape(t, g)
	for _, v := range []string{pid, hpr, orgParent, orgChild, orgSupp, helseidsim.DefaultClientID, c.key.Thumbprint()} {
		if strings.Contains(metrics, v) {
			t.Errorf("the metrics carry %q", v)
		}
	}
}

// checkSpanParents reads the spans the console exporter wrote (one JSON
// object a line) and checks that helsegate's are children of Caddy's request
// span ("gateway"), the replay check a child of the proof verification.
func checkSpanParents(t *testing.T, lines []string) {
	t.Helper()
	type span struct {
		Name        string
		SpanContext struct{ SpanID string }
		Parent      struct{ SpanID string }
	}
	byID := map[string]span{}
	var ours []span
	for _, line := range lines {
		var sp span
		if !strings.HasPrefix(line, `{"Name":`) || json.Unmarshal([]byte(line), &sp) != nil {
			continue
		}
		byID[sp.SpanContext.SpanID] = sp
		if strings.HasPrefix(sp.Name, "helseid.") {
			ours = append(ours, sp)
		}
	}
	want := map[string]string{
		"helseid.verify_token": "gateway", "helseid.verify_proof": "gateway",
		"helseid.membership": "gateway", "helseid.replay": "helseid.verify_proof",
	}
	seen := map[string]bool{}
	for _, sp := range ours {
		parent, ok := byID[sp.Parent.SpanID]
		if w, known := want[sp.Name]; known && (!ok || parent.Name != w) {
			t.Errorf("span %s has parent %q, want %s", sp.Name, parent.Name, w)
		}
		seen[sp.Name] = true
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("no %s span was exported", name)
		}
	}
}
