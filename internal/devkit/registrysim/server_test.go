package registrysim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/authz"
)

const (
	orgA = "917897468"
	orgB = "974600951"
	svc  = "kjernejournal"
)

func start(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// get asks s for org's authorization for service with the Authorization
// header auth (none when empty) and returns the status and body.
func get(t *testing.T, s *Server, org, service, auth string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.URL()+"/v1/organizations/"+org+"/services/"+service, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestLookup(t *testing.T) {
	from := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	s := start(t, Options{Members: []authz.Authorization{
		{Organization: orgA, Service: svc, Member: true, Status: "active", ValidFrom: &from},
	}})

	code, body := get(t, s, orgA, svc, "")
	if code != http.StatusOK {
		t.Fatalf("member: %d %s", code, body)
	}
	// The exact shape of contract v1, valid_to null included.
	var raw map[string]any
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		t.Fatal(err)
	}
	if raw["organization"] != orgA || raw["service"] != svc || raw["member"] != true || raw["status"] != "active" ||
		raw["valid_from"] != "2024-01-01T00:00:00Z" {
		t.Errorf("record %s", body)
	}
	if v, ok := raw["valid_to"]; !ok || v != nil {
		t.Errorf("valid_to must be present and null: %s", body)
	}

	if code, body := get(t, s, orgB, svc, ""); code != http.StatusNotFound {
		t.Errorf("unknown org: %d %s, want 404", code, body)
	}
	if code, _ := get(t, s, orgA, "persontjenesten", ""); code != http.StatusNotFound {
		t.Errorf("other service: %d, want 404", code)
	}

	s.Set(authz.Authorization{Organization: orgB, Service: svc, Member: true, Status: "suspended"})
	if code, body := get(t, s, orgB, svc, ""); code != http.StatusOK || !strings.Contains(body, `"suspended"`) {
		t.Errorf("after Set: %d %s", code, body)
	}
	s.Remove(orgA, svc)
	if code, _ := get(t, s, orgA, svc, ""); code != http.StatusNotFound {
		t.Errorf("after Remove: %d, want 404", code)
	}
	if n := s.Calls(); n != 5 {
		t.Errorf("Calls = %d, want 5", n)
	}
	// Other routes are not lookups.
	resp, err := http.Get(s.URL() + "/v2/whatever")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || s.Calls() != 5 {
		t.Errorf("other route: %d, Calls %d", resp.StatusCode, s.Calls())
	}
}

func TestToken(t *testing.T) {
	s := start(t, Options{Token: "s3cret", Members: []authz.Authorization{
		{Organization: orgA, Service: svc, Member: true, Status: "active"},
	}})
	for _, auth := range []string{"", "Bearer wrong", "Basic s3cret", "bearer  s3cret"} {
		if code, _ := get(t, s, orgA, svc, auth); code != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d, want 401", auth, code)
		}
	}
	if code, body := get(t, s, orgA, svc, "Bearer s3cret"); code != http.StatusOK {
		t.Errorf("right token: %d %s", code, body)
	}
}

func TestMembersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "members.json")
	doc := `{"authorizations":[
		{"organization":"917897468","service":"kjernejournal","member":true,"status":"active","valid_to":null},
		{"organization":"974600951","service":"kjernejournal","member":true,"status":"active","valid_to":"2020-01-01T00:00:00Z"}
	]}`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	// Members win over the file.
	s := start(t, Options{MembersFile: path, Members: []authz.Authorization{
		{Organization: orgB, Service: svc, Member: false, Status: "active"},
	}})
	if code, _ := get(t, s, orgA, svc, ""); code != http.StatusOK {
		t.Errorf("file member: %d", code)
	}
	if code, body := get(t, s, orgB, svc, ""); code != http.StatusOK || !strings.Contains(body, `"member":false`) {
		t.Errorf("overridden member: %d %s", code, body)
	}

	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"authorizations":[{"organization":"917897468","valid_too":null}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(Options{MembersFile: bad}); err == nil || !strings.Contains(err.Error(), "valid_too") {
		t.Errorf("bad file: err = %v, want one naming the unknown field", err)
	}
	if _, err := Start(Options{MembersFile: filepath.Join(t.TempDir(), "missing.json")}); err == nil {
		t.Error("missing file: no error")
	}
}

func TestDecodeDocument(t *testing.T) {
	doc, err := DecodeDocument([]byte(`{"authorizations":[{"organization":"917897468","service":"kjernejournal","member":true,"status":"active"}]}`))
	if err != nil || len(doc.Authorizations) != 1 || doc.Authorizations[0].Organization != orgA {
		t.Fatalf("good document: %+v, %v", doc, err)
	}
	for name, bad := range map[string]string{
		"misspelled field":   `{"authorizations":[{"organization":"917897468","stauts":"active"}]}`,
		"misspelled top":     `{"authorisations":[]}`,
		"trailing data":      `{"authorizations":[]} {}`,
		"not a JSON object":  `[]`,
		"truncated document": `{"authorizations":[`,
	} {
		if _, err := DecodeDocument([]byte(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestFailures(t *testing.T) {
	s := start(t, Options{Members: []authz.Authorization{
		{Organization: orgA, Service: svc, Member: true, Status: "active"},
	}})

	for _, code := range []int{503, 429} {
		s.SetFailure(Status(code))
		if got, _ := get(t, s, orgA, svc, ""); got != code {
			t.Errorf("Status(%d): %d", code, got)
		}
	}

	s.SetFailure(Down())
	before := s.Calls()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(s.URL() + "/v1/organizations/" + orgA + "/services/" + svc)
	if err == nil {
		resp.Body.Close()
		t.Errorf("Down: got %s, want a connection error", resp.Status)
	}
	if s.Calls() == before {
		t.Error("Down: the lookup was not counted")
	}

	s.SetFailure(Slow(time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/v1/organizations/"+orgA+"/services/"+svc, nil)
	start := time.Now()
	resp, err = http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Errorf("Slow: got %s before the caller's deadline", resp.Status)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Slow: err = %v, want the caller's deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Slow: took %s", d)
	}

	s.SetFailure(Slow(50 * time.Millisecond))
	start = time.Now()
	if code, _ := get(t, s, orgA, svc, ""); code != http.StatusOK || time.Since(start) < 50*time.Millisecond {
		t.Errorf("Slow(50ms): %d after %s", code, time.Since(start))
	}

	s.SetFailure(None())
	if code, _ := get(t, s, orgA, svc, ""); code != http.StatusOK {
		t.Errorf("None: %d", code)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, addr := range []string{":0", "0.0.0.0:0", "192.0.2.1:0", "example.com:0", "nonsense"} {
		if s, err := Start(Options{Addr: addr}); err == nil {
			_ = s.Close()
			t.Errorf("Start(%q) succeeded", addr)
		}
	}
	for _, addr := range []string{"", "127.0.0.1:0", "localhost:0"} {
		s, err := Start(Options{Addr: addr})
		if err != nil {
			t.Errorf("Start(%q): %v", addr, err)
			continue
		}
		if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") {
			t.Errorf("Start(%q).URL() = %s", addr, s.URL())
		}
		_ = s.Close()
	}
}

func TestHang(t *testing.T) {
	s := start(t, Options{Members: []authz.Authorization{{Organization: orgA, Service: svc, Member: true, Status: "active"}}})
	s.SetFailure(Hang())
	codes := make(chan int, 1)
	go func() {
		code, _ := get(t, s, orgA, svc, "")
		codes <- code
	}()
	deadline := time.Now().Add(10 * time.Second)
	for s.Held() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the lookup was not held")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case code := <-codes:
		t.Fatalf("answered %d while hanging", code)
	default:
	}
	s.SetFailure(Status(http.StatusServiceUnavailable))
	select {
	case code := <-codes:
		if code != http.StatusServiceUnavailable {
			t.Fatalf("released into status 503: got %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held lookup was not released")
	}
	if s.Held() != 0 {
		t.Fatalf("Held() = %d after the release", s.Held())
	}
}
