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

	"github.com/helsegate/helsegate/integration/dpopclient"
	"github.com/helsegate/helsegate/integration/helseidsim"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "call",
		Usage: "[--org <orgnr>] [--child <orgnr>] [--scope <scope>] [--user] [--method GET] [--replay] [--bearer] [--token <jwt> --key <file>] <url>",
		Short: "Sends one DPoP-protected request, as a HelseID client would",
		Long: `
call is a DPoP client for people and scripts. It gets an access token for the
chosen organization from the HelseID simulator of 'helsegate dev' (or takes
--token with the private JWK in --key that it is bound to), signs a fresh DPoP
proof for the request, sends it and prints the status, the relevant response
headers and the body.

--replay sends the same proof twice (the second must be refused);
--bearer sends the DPoP-bound token with the Bearer scheme and no proof (a
downgrade the gateway must refuse). A use_dpop_nonce answer is retried once
with the nonce. Exit status: 0 when every response was 2xx, 1 otherwise.`,
		CobraFunc: func(cmd *cobra.Command) {
			f := cmd.Flags()
			f.String("issuer", "http://127.0.0.1:8081", "HelseID simulator to get the token from")
			f.String("org", "917897468", "orgnr_parent of the token")
			f.String("child", "", "orgnr_child of the token")
			f.String("scope", helseidsim.DefaultScope, "scopes of the token, space-separated")
			f.String("audience", helseidsim.DefaultAudience, "audience (resource) of the token")
			f.Bool("user", false, "ask for a user token (pid, security level 4, HPR number)")
			f.String("method", "GET", "HTTP method")
			f.String("alg", "ES256", "proof key algorithm")
			f.Bool("replay", false, "send the same proof twice")
			f.Bool("bearer", false, "send the token as Bearer, without a proof")
			f.String("token", "", "use this access token instead of asking the simulator")
			f.String("key", "", "file with the private JWK the --token is bound to")
			f.Bool("quiet", false, "print only the status line of each response")
			cmd.Args = cobra.ExactArgs(1)
			cmd.RunE = func(cmd *cobra.Command, args []string) error {
				code, err := runCall(cmd, args[0])
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

func runCall(cmd *cobra.Command, target string) (int, error) {
	f := cmd.Flags()
	str := func(n string) string { v, _ := f.GetString(n); return v }
	flag := func(n string) bool { v, _ := f.GetBool(n); return v }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return 1, fmt.Errorf("call: %q is not an absolute URL", target)
	}
	key, token, err := credentials(ctx, str, flag)
	if err != nil {
		return 1, err
	}
	htu := *u
	htu.RawQuery, htu.Fragment = "", ""

	send := func(proof string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, str("method"), target, nil)
		if err != nil {
			return nil, err
		}
		if flag("bearer") {
			req.Header.Set("Authorization", "Bearer "+token)
		} else {
			req.Header.Set("Authorization", "DPoP "+token)
			req.Header.Set("DPoP", proof)
		}
		return http.DefaultClient.Do(req)
	}
	newProof := func(nonce string) (string, error) {
		return key.Proof(str("method"), htu.String(), token, dpopclient.ProofOptions{Nonce: nonce})
	}

	proof, err := newProof("")
	if err != nil {
		return 1, err
	}
	resp, err := send(proof)
	if err != nil {
		return 1, err
	}
	if nonce := resp.Header.Get("DPoP-Nonce"); resp.StatusCode == http.StatusUnauthorized && nonce != "" &&
		strings.Contains(resp.Header.Get("WWW-Authenticate"), "use_dpop_nonce") && !flag("bearer") {
		printResponse(resp, flag("quiet"), "nonce requested; retrying with it")
		if proof, err = newProof(nonce); err != nil {
			return 1, err
		}
		if resp, err = send(proof); err != nil {
			return 1, err
		}
	}
	code := printResponse(resp, flag("quiet"), "")
	if flag("replay") {
		resp, err := send(proof)
		if err != nil {
			return 1, err
		}
		if printResponse(resp, flag("quiet"), "the same proof again (replay)") == 0 {
			code = 0
		} else {
			code = 1
		}
	}
	return code, nil
}

// credentials returns the proof key and the access token: from --token and
// --key, or a fresh key and a token from the simulator bound to it.
func credentials(ctx context.Context, str func(string) string, flag func(string) bool) (*dpopclient.Key, string, error) {
	if tok := str("token"); tok != "" {
		if str("key") == "" {
			return nil, "", errors.New("call: --token needs --key, the private JWK the token is bound to")
		}
		data, err := os.ReadFile(str("key"))
		if err != nil {
			return nil, "", err
		}
		key, err := dpopclient.LoadKey(data)
		return key, tok, err
	}
	key, err := dpopclient.NewKey(str("alg"))
	if err != nil {
		return nil, "", err
	}
	form := url.Values{
		"client_id":              {helseidsim.DefaultClientID},
		"scope":                  {str("scope")},
		"resource":               {str("audience")},
		helseidsim.FormOrgParent: {str("org")},
	}
	if c := str("child"); c != "" {
		form.Set(helseidsim.FormOrgChild, c)
	}
	if flag("user") {
		form.Set(helseidsim.FormUser, "true")
		form.Set(helseidsim.FormHPRNumber, "431001110")
	}
	tok, err := key.FetchToken(ctx, strings.TrimSuffix(str("issuer"), "/")+helseidsim.TokenPath, form)
	if err != nil {
		return nil, "", fmt.Errorf("call: getting a token from %s: %w", str("issuer"), err)
	}
	return key, tok, nil
}

// printResponse prints the status, the headers that explain a decision and
// the body; it returns 0 for a 2xx status, 1 otherwise.
func printResponse(resp *http.Response, quiet bool, note string) int {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if note != "" {
		fmt.Printf("# %s\n", note)
	}
	fmt.Println(resp.Proto, resp.Status)
	if !quiet {
		for _, h := range []string{"WWW-Authenticate", "DPoP-Nonce", "Retry-After", "Content-Type"} {
			for _, v := range resp.Header.Values(h) {
				fmt.Printf("%s: %s\n", h, v)
			}
		}
		fmt.Println()
		fmt.Println(strings.TrimSpace(string(body)))
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return 0
	}
	return 1
}
