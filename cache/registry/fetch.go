package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/strictjson"
)

// maxBody bounds the 200 body read and decoded; maxDrain bounds what is read
// and thrown away from any other body so the connection can be reused.
const (
	maxBody  = 64 << 10
	maxDrain = 64 << 10
)

// fetch makes one call of contract v1. Every error it returns wraps
// authz.ErrRegistryConfig or authz.ErrRegistryUnavailable, and none names the
// organization (errors travel to Error-level logs; only Debug logs may).
func (h *HTTP) fetch(ctx context.Context, service, org string) (authz.Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		h.base+"/v1/organizations/"+url.PathEscape(org)+"/services/"+url.PathEscape(service), nil)
	if err != nil {
		return authz.Answer{}, fmt.Errorf("%w: building the request: %w", authz.ErrRegistryConfig, stripURL(err))
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "helsegate")
	if h.auth != "" {
		req.Header.Set("Authorization", h.auth)
	}

	resp, err := h.client.Do(req)
	if err != nil {
		err = fmt.Errorf("%w: %w", authz.ErrRegistryUnavailable, stripURL(err))
		h.debug("membership registry call failed", service, org, 0, err)
		return authz.Answer{}, err
	}
	defer drainClose(resp.Body)

	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		rec, err := decodeRecord(resp.Body, service, org)
		if err != nil {
			err = fmt.Errorf("%w: %w", authz.ErrRegistryUnavailable, err)
			h.log.Warn("membership registry broke contract v1", zap.String("service", service), zap.Error(err))
			h.debug("membership registry answer rejected", service, org, code, err)
			return authz.Answer{}, err
		}
		return authz.Answer{Record: rec, FetchedAt: h.clock.Now(), Source: SourceRegistry}, nil
	case code == http.StatusNotFound:
		return authz.Answer{FetchedAt: h.clock.Now(), Source: SourceRegistry}, nil
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		err := fmt.Errorf("%w: HTTP %d", authz.ErrRegistryConfig, code)
		h.logConfigError(code)
		return authz.Answer{}, err
	case code == http.StatusTooManyRequests || code >= 500:
		err := fmt.Errorf("%w: HTTP %d", authz.ErrRegistryUnavailable, code)
		h.debug("membership registry call failed", service, org, code, err)
		return authz.Answer{}, err
	default:
		err := fmt.Errorf("%w: unexpected HTTP %d", authz.ErrRegistryUnavailable, code)
		h.log.Warn("membership registry broke contract v1", zap.String("service", service), zap.Error(err))
		h.debug("membership registry call failed", service, org, code, err)
		return authz.Answer{}, err
	}
}

// decodeRecord reads a 200 body and checks that it is the record asked for.
func decodeRecord(body io.Reader, service, org string) (*authz.Authorization, error) {
	b, err := io.ReadAll(io.LimitReader(body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading the body: %w", err)
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("body larger than %d bytes", maxBody)
	}
	var rec authz.Authorization
	// Exact member names, none twice: "member":false,"MEMBER":true is no member.
	if err := strictjson.Unmarshal(bytes.TrimSpace(b), &rec); err != nil {
		return nil, fmt.Errorf("decoding the body: %w", err)
	}
	if rec.Organization != org || rec.Service != service {
		return nil, errors.New("the record is not for the organization and service asked")
	}
	return &rec, nil
}

// logConfigError logs a 401/403 at Error level, at most once per
// configLogEvery however many requests hit it.
func (h *HTTP) logConfigError(code int) {
	if !h.configLog.AllowN(h.clock.Now(), 1) {
		return
	}
	h.log.Error("membership registry refused the gateway's credentials; check registry_token and the registry's client configuration",
		zap.Int("status", code))
}

// debug logs one failed call at Debug level, the only level that names the
// organization.
func (h *HTTP) debug(msg, service, org string, code int, err error) {
	if ce := h.log.Check(zapcore.DebugLevel, msg); ce != nil {
		ce.Write(zap.String("service", service), zap.String("org", org), zap.Int("status", code), zap.Error(err))
	}
}

// stripURL drops the request URL (it names the organization) from a client
// error, keeping what went wrong.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// drainClose reads what is left of a body, up to maxDrain, and closes it, so
// the connection goes back to the pool.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, maxDrain))
	_ = body.Close()
}
