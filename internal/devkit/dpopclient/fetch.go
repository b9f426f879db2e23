package dpopclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// TokenError is a non-200 answer from the token endpoint.
type TokenError struct {
	Status      int    // HTTP status
	Code        string // OAuth "error", e.g. "invalid_dpop_proof"
	Description string // "error_description"
}

func (e *TokenError) Error() string {
	return fmt.Sprintf("dpopclient: token endpoint: %d %s: %s", e.Status, e.Code, e.Description)
}

// FetchToken gets a DPoP-bound access token with client_credentials. form
// holds client_id, scope, resource and, against helseidsim, its simulator
// fields; grant_type defaults to client_credentials. The request carries a
// fresh proof signed by k; if the server asks for a nonce (400
// use_dpop_nonce with a DPoP-Nonce header) it retries once with it. A
// non-200 answer is returned as *TokenError.
func (k *Key) FetchToken(ctx context.Context, tokenEndpoint string, form url.Values) (string, error) {
	body := url.Values{}
	for name, v := range form {
		body[name] = append([]string(nil), v...)
	}
	if body.Get("grant_type") == "" {
		body.Set("grant_type", "client_credentials")
	}
	nonce := ""
	for attempt := 0; ; attempt++ {
		tok, terr, err := k.tokenRequest(ctx, tokenEndpoint, body.Encode(), nonce)
		if err != nil {
			return "", err
		}
		if terr == nil {
			return tok, nil
		}
		if attempt == 0 && terr.Code == "use_dpop_nonce" && terr.nonce != "" {
			nonce = terr.nonce
			continue
		}
		return "", &terr.TokenError
	}
}

type tokenErr struct {
	TokenError
	nonce string
}

func (k *Key) tokenRequest(ctx context.Context, endpoint, body, nonce string) (string, *tokenErr, error) {
	proof, err := k.Proof(http.MethodPost, endpoint, "", ProofOptions{Nonce: nonce})
	if err != nil {
		return "", nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(body))
	if err != nil {
		return "", nil, fmt.Errorf("dpopclient: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("DPoP", proof)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", nil, fmt.Errorf("dpopclient: token request: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", nil, fmt.Errorf("dpopclient: read token response: %w", err)
	}
	var r struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	_ = json.Unmarshal(data, &r)
	if resp.StatusCode != http.StatusOK {
		return "", &tokenErr{
			TokenError: TokenError{Status: resp.StatusCode, Code: r.Error, Description: r.Description},
			nonce:      resp.Header.Get("DPoP-Nonce"),
		}, nil
	}
	if r.AccessToken == "" {
		return "", nil, fmt.Errorf("dpopclient: token response without access_token")
	}
	if !strings.EqualFold(r.TokenType, "DPoP") {
		return "", nil, fmt.Errorf("dpopclient: token_type %q, want DPoP", r.TokenType)
	}
	return r.AccessToken, nil, nil
}
