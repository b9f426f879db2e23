package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// Clients: a DPoP caller with its own key, and the raw request sender.

// httpClient sends every request on a fresh connection: a DPoP proof must
// never be sent twice by a transport retry, and reloads close old connections.
var httpClient = &http.Client{
	Timeout:   15 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// reply is a gateway's answer.
type reply struct {
	status int
	header http.Header
	body   string
}

func (r reply) String() string {
	return fmt.Sprintf("%d %v %q", r.status, r.header, r.body)
}

// send sends a request with header set exactly as given (map keys are not
// canonicalized, so odd spellings reach the wire).
func send(t *testing.T, method, url string, header map[string][]string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

// caller is a client with one DPoP key, getting tokens from a simulator.
type caller struct {
	sim *helseidsim.Server
	key *dpopclient.Key
}

func newCaller(t *testing.T, sim *helseidsim.Server) *caller {
	t.Helper()
	key, err := dpopclient.NewKey("ES256")
	if err != nil {
		t.Fatal(err)
	}
	return &caller{sim: sim, key: key}
}

// token mints a token bound to the caller's key (unless spec.JKT is "-",
// which mints an unbound one) for orgParent unless spec says otherwise.
func (c *caller) token(t *testing.T, spec helseidsim.TokenSpec) string {
	t.Helper()
	switch spec.JKT {
	case "":
		spec.JKT = c.key.Thumbprint()
	case "-":
		spec.JKT = ""
	}
	if spec.OrgParent == "" {
		spec.OrgParent = orgParent
	}
	tok, err := c.sim.Mint(spec)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// proof signs a proof for method and htu bound to token.
func (c *caller) proof(t *testing.T, method, htu, token string, o dpopclient.ProofOptions) string {
	t.Helper()
	p, err := c.key.Proof(method, htu, token, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// dpopHeaders returns Authorization: DPoP <token> and DPoP: <proof>.
func dpopHeaders(token, proof string) map[string][]string {
	return map[string][]string{"Authorization": {"DPoP " + token}, "DPoP": {proof}}
}

// htuOf is url without its query.
func htuOf(url string) string {
	u, _, _ := strings.Cut(url, "?")
	return u
}

// do sends method url with a fresh default token and a correct proof.
func (c *caller) do(t *testing.T, method, url string) reply {
	t.Helper()
	tok := c.token(t, helseidsim.TokenSpec{})
	return send(t, method, url, dpopHeaders(tok, c.proof(t, method, htuOf(url), tok, dpopclient.ProofOptions{})))
}

// randomKid is a kid shaped like HelseID's: 40 upper-case hex characters.
func randomKid() string { return strings.ToUpper(randHex(20)) }
