package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "call",
		Usage: "[--org <orgnr>] [--child <orgnr>] [--scope <scope>] [--user] [--attest object|string] [--purpose <code>] [--legal-entity <orgnr>] [--point-of-care <orgnr>] [--decision-ref <id>] [--attest-age <duration>] [--method GET] [--replay] [--bearer] [--key <file>] [--token <jwt> --key <file>] <url> | --new-key <file> [--alg ES256]",
		Short: "Sends one DPoP-protected request, as a HelseID client would",
		Long: `
call is a DPoP client for people and scripts. It gets an access token for the
chosen organization from the HelseID simulator of 'helsegate dev', bound to a
fresh proof key (or to the private JWK in --key), or takes --token with the
private JWK in --key that it is bound to. It signs a fresh DPoP proof for the
request, sends it and prints the status, the relevant response headers and
the body.

--new-key <file> writes a fresh private JWK for --alg to <file> (mode 0600,
never overwriting) and prints its RFC 7638 thumbprint, the cnf.jkt of tokens
bound to it; use it with --key. Keep the file secret.

--attest asks the simulator for a user token with the trust-framework
attest (nhn:tillitsrammeverk:parameters) as a JSON object or a JSON string;
--purpose, --legal-entity (default --org), --point-of-care (default --child),
--decision-ref, --attest-age (toa that long ago), --no-toa, --attest-wrapped
(data model v1.1's attestation wrapper) and --attest-pid (another person's
identifier) shape it, and each implies --attest object and --user.

--replay sends the same proof twice (the second must be refused);
--bearer sends the DPoP-bound token with the Bearer scheme and no proof (the
gateway must refuse it). A use_dpop_nonce answer is retried once with the
nonce; the retried answer is the one that counts.

Exit status: 0 when every response was 2xx, 1 otherwise. With --replay:
0 when the first response was 2xx and the replayed proof was refused with
401 invalid_dpop_proof (the gateway caught the replay), 1 otherwise.`,
		CobraFunc: func(cmd *cobra.Command) {
			callFlags(cmd)
			cmd.Args = cobra.MaximumNArgs(1)
			cmd.RunE = func(cmd *cobra.Command, args []string) error {
				code, err := runCall(cmd, args)
				if err != nil {
					return err
				}
				if code != 0 {
					os.Exit(code)
				}
				return nil
			}
		},
	})
}

// callFlags defines the flags of call on cmd.
func callFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.String("issuer", "http://127.0.0.1:8081", "HelseID simulator to get the token from")
	f.String("org", "917897468", "orgnr_parent of the token")
	f.String("child", "", "orgnr_child of the token")
	f.String("scope", helseidsim.DefaultScope, "scopes of the token, space-separated")
	f.String("audience", helseidsim.DefaultAudience, "audience (resource) of the token")
	f.Bool("user", false, "ask for a user token (pid, security level 4, HPR number)")
	f.String("method", "GET", "HTTP method")
	f.String("alg", "ES256", "proof key algorithm (of a fresh key, and of --new-key)")
	f.Bool("replay", false, "send the same proof twice")
	f.Bool("bearer", false, "send the token as Bearer, without a proof")
	f.String("token", "", "use this access token instead of asking the simulator (needs --key)")
	f.String("key", "", "file with the private JWK to sign proofs with: the one --token is bound to, or the one the simulator's token is bound to")
	f.String("new-key", "", "write a fresh private JWK for --alg to this file and exit")
	f.Bool("quiet", false, "print only the status line of each response")

	f.String("attest", "", "put the trust-framework attest in the token: object or string (implies --user)")
	f.Bool("attest-wrapped", false, "the attest inside data model v1.1's attestation object")
	f.String("purpose", "", "the attest's purpose_of_use code (simulator default TREAT)")
	f.String("legal-entity", "", "the attest's legal_entity (default --org)")
	f.String("point-of-care", "", "the attest's point_of_care (default --child)")
	f.String("decision-ref", "", "the attest's decision_ref id")
	f.Duration("attest-age", 0, "the attest's age: toa that long ago")
	f.Bool("no-toa", false, "an attest without toa")
	f.String("attest-pid", "", "the attest's practitioner identifier (default the token's pid; another one is another person's attest)")
}

// attestFlags are the flags that shape the attest; any of them asks for one.
var attestFlags = []string{"attest", "attest-wrapped", "purpose", "legal-entity", "point-of-care", "decision-ref", "attest-age", "no-toa", "attest-pid"}

// attestForm adds the simulator's attest fields for the attest flags to
// form, and reports whether the token carries an attest.
func attestForm(f *pflag.FlagSet, form url.Values) (bool, error) {
	asked := false
	for _, n := range attestFlags {
		asked = asked || f.Changed(n)
	}
	if !asked {
		return false, nil
	}
	str := func(n string) string { v, _ := f.GetString(n); return v }
	enc := str("attest")
	switch enc {
	case "":
		enc = "object"
	case "object", "string":
	default:
		return false, fmt.Errorf("call: --attest must be object or string, not %q", enc)
	}
	form.Set(helseidsim.FormAttest, enc)
	if v, _ := f.GetBool("attest-wrapped"); v {
		form.Set(helseidsim.FormAttestWrapped, "true")
	}
	noTOA, _ := f.GetBool("no-toa")
	age, _ := f.GetDuration("attest-age")
	switch {
	case noTOA && f.Changed("attest-age"):
		return false, errors.New("call: --no-toa and --attest-age exclude each other")
	case noTOA:
		form.Set(helseidsim.FormAttestTOA, "omit")
	case age < 0:
		return false, errors.New("call: --attest-age must not be negative")
	case age > 0:
		form.Set(helseidsim.FormAttestAge, age.String())
	}
	for flag, field := range map[string]string{
		"purpose":       helseidsim.FormPurposeOfUse,
		"decision-ref":  helseidsim.FormDecisionRef,
		"attest-pid":    helseidsim.FormAttestPID,
		"legal-entity":  helseidsim.FormLegalEntity,
		"point-of-care": helseidsim.FormPointOfCare,
	} {
		if f.Changed(flag) {
			form.Set(field, str(flag))
		}
	}
	return true, nil
}

func runCall(cmd *cobra.Command, args []string) (int, error) {
	f := cmd.Flags()
	str := func(n string) string { v, _ := f.GetString(n); return v }
	flag := func(n string) bool { v, _ := f.GetBool(n); return v }
	out := cmd.OutOrStdout()

	if p := str("new-key"); p != "" {
		if len(args) != 0 {
			return 1, errors.New("call: --new-key takes no URL")
		}
		return 0, writeNewKey(out, p, str("alg"))
	}
	if len(args) != 1 {
		return 1, errors.New("call: needs the URL to call (or --new-key <file>)")
	}
	if flag("replay") && flag("bearer") {
		return 1, errors.New("call: --replay needs a proof, --bearer sends none")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := newCaller(ctx, f, str, flag, args[0])
	if err != nil {
		return 1, err
	}

	proof, resp, err := c.call(out, flag("quiet"))
	if err != nil {
		return 1, err
	}
	first := printResponse(out, resp, flag("quiet"), "")
	if !flag("replay") {
		return exitCode(first, nil), nil
	}
	if resp, err = c.send(proof); err != nil {
		return 1, err
	}
	second := printResponse(out, resp, flag("quiet"), "the same proof again (replay)")
	return exitCode(first, &second), nil
}

// caller sends the request of call: one method and URL, with one token and
// the key it is bound to.
type caller struct {
	ctx    context.Context
	method string
	target string
	htu    string // target without query and fragment (RFC 9449 §4.2)
	key    *dpopclient.Key
	token  string
	bearer bool // send the token as Bearer, without a proof
}

// newCaller checks target and gets the credentials the flags ask for.
func newCaller(ctx context.Context, f *pflag.FlagSet, str func(string) string, flag func(string) bool, target string) (*caller, error) {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("call: %q is not an absolute URL", target)
	}
	key, token, err := credentials(ctx, f, str, flag)
	if err != nil {
		return nil, err
	}
	htu := *u
	htu.RawQuery, htu.Fragment = "", ""
	return &caller{ctx: ctx, method: str("method"), target: target, htu: htu.String(), key: key, token: token, bearer: flag("bearer")}, nil
}

// call sends the request with a fresh proof. An answer asking for a nonce
// (RFC 9449 §9: 401 use_dpop_nonce with DPoP-Nonce) is printed and the
// request sent once more with a proof carrying it. It returns the last
// proof sent and the answer that counts.
func (c *caller) call(out io.Writer, quiet bool) (string, *http.Response, error) {
	proof, err := c.proof("")
	if err != nil {
		return "", nil, err
	}
	resp, err := c.send(proof)
	if err != nil {
		return "", nil, err
	}
	if nonce := resp.Header.Get("DPoP-Nonce"); resp.StatusCode == http.StatusUnauthorized && nonce != "" &&
		strings.Contains(resp.Header.Get("WWW-Authenticate"), "use_dpop_nonce") && !c.bearer {
		printResponse(out, resp, quiet, "nonce requested; retrying with it")
		if proof, err = c.proof(nonce); err != nil {
			return "", nil, err
		}
		if resp, err = c.send(proof); err != nil {
			return "", nil, err
		}
	}
	return proof, resp, nil
}

// proof signs a fresh DPoP proof for the request, with nonce if not empty.
func (c *caller) proof(nonce string) (string, error) {
	return c.key.Proof(c.method, c.htu, c.token, dpopclient.ProofOptions{Nonce: nonce})
}

// send sends the request with the token and proof (or the token alone as
// Bearer).
func (c *caller) send(proof string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(c.ctx, c.method, c.target, nil)
	if err != nil {
		return nil, err
	}
	if c.bearer {
		req.Header.Set("Authorization", "Bearer "+c.token)
	} else {
		req.Header.Set("Authorization", "DPoP "+c.token)
		req.Header.Set("DPoP", proof)
	}
	return http.DefaultClient.Do(req)
}

// outcome is what the exit status is decided on: the status and the error
// code of the WWW-Authenticate challenge, if any.
type outcome struct {
	status int
	err    string
}

// exitCode is 0 when the response was 2xx; with a replay, 0 only when the
// first response was 2xx and the replayed proof was refused as a bad proof
// (401 invalid_dpop_proof). Otherwise 1.
func exitCode(first outcome, replay *outcome) int {
	if first.status < 200 || first.status > 299 {
		return 1
	}
	if replay != nil && (replay.status != http.StatusUnauthorized || replay.err != "invalid_dpop_proof") {
		return 1
	}
	return 0
}

// credentials returns the proof key and the access token: from --token and
// --key, or a token from the simulator bound to --key or to a fresh key.
func credentials(ctx context.Context, f *pflag.FlagSet, str func(string) string, flag func(string) bool) (*dpopclient.Key, string, error) {
	key, err := loadKey(str("key"))
	if err != nil {
		return nil, "", err
	}
	if tok := str("token"); tok != "" {
		for _, n := range attestFlags {
			if f.Changed(n) {
				return nil, "", fmt.Errorf("call: --%s shapes the simulator's token; --token brings its own", n)
			}
		}
		if key == nil {
			return nil, "", errors.New("call: --token needs --key, the private JWK the token is bound to")
		}
		return key, tok, nil
	}
	if key == nil {
		if key, err = dpopclient.NewKey(str("alg")); err != nil {
			return nil, "", err
		}
	}
	form, err := tokenForm(f, str, flag)
	if err != nil {
		return nil, "", err
	}
	tok, err := key.FetchToken(ctx, strings.TrimSuffix(str("issuer"), "/")+helseidsim.TokenPath, form)
	if err != nil {
		return nil, "", fmt.Errorf("call: getting a token from %s: %w", str("issuer"), err)
	}
	return key, tok, nil
}

// loadKey reads the private JWK at path; no path, no key.
func loadKey(path string) (*dpopclient.Key, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("call: --key: %w", err)
	}
	key, err := dpopclient.LoadKey(data)
	if err != nil {
		return nil, fmt.Errorf("call: --key %s: %w", path, err)
	}
	return key, nil
}

// tokenForm is the simulator's token request for the flags.
func tokenForm(f *pflag.FlagSet, str func(string) string, flag func(string) bool) (url.Values, error) {
	form := url.Values{
		"client_id":              {helseidsim.DefaultClientID},
		"scope":                  {str("scope")},
		"resource":               {str("audience")},
		helseidsim.FormOrgParent: {str("org")},
	}
	if c := str("child"); c != "" {
		form.Set(helseidsim.FormOrgChild, c)
	}
	attest, err := attestForm(f, form)
	if err != nil {
		return nil, err
	}
	if flag("user") || attest {
		form.Set(helseidsim.FormUser, "true")
		form.Set(helseidsim.FormHPRNumber, "431001110")
	}
	return form, nil
}

// writeNewKey writes a fresh private JWK for alg to path, readable by its
// owner only and never over an existing file, and prints the thumbprint.
func writeNewKey(out io.Writer, path, alg string) error {
	key, err := dpopclient.NewKey(alg)
	if err != nil {
		return fmt.Errorf("call: --new-key: %w", err)
	}
	data, err := key.MarshalPrivateJWK()
	if err != nil {
		return fmt.Errorf("call: --new-key: %w", err)
	}
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("call: --new-key: %w", err)
	}
	if _, err = file.Write(append(data, '\n')); err == nil {
		err = file.Close()
	} else {
		_ = file.Close()
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("call: --new-key: %w", err)
	}
	fmt.Fprintf(out, "wrote a private %s JWK to %s (keep it secret)\njkt (RFC 7638 thumbprint): %s\n", key.Alg(), path, key.Thumbprint())
	return nil
}

// printResponse prints the status, the headers that explain a decision and
// the body, and returns the status with the challenge's error code.
func printResponse(out io.Writer, resp *http.Response, quiet bool, note string) outcome {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if note != "" {
		fmt.Fprintf(out, "# %s\n", note)
	}
	fmt.Fprintln(out, resp.Proto, resp.Status)
	if !quiet {
		for _, h := range []string{"WWW-Authenticate", "DPoP-Nonce", "Retry-After", "Content-Type"} {
			for _, v := range resp.Header.Values(h) {
				fmt.Fprintf(out, "%s: %s\n", h, v)
			}
		}
		fmt.Fprintln(out)
		fmt.Fprintln(out, strings.TrimSpace(string(body)))
	}
	return outcome{status: resp.StatusCode, err: challengeError(resp.Header.Values("WWW-Authenticate"))}
}

// challengeError returns the error="…" parameter of a WWW-Authenticate
// challenge, or "".
func challengeError(values []string) string {
	for _, v := range values {
		i := strings.Index(v, `error="`)
		if i < 0 {
			continue
		}
		rest := v[i+len(`error="`):]
		if j := strings.IndexByte(rest, '"'); j >= 0 {
			return rest[:j]
		}
	}
	return ""
}
