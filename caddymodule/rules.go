package caddymodule

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/helsegate/helsegate/authz"
)

// The rules a config value is held to, one function each. The Caddyfile
// calls them as it reads (so that an error names its line) and Provision or
// Validate calls them for the JSON config, which may never have been a
// Caddyfile. The callers add where the value came from; the rule is here.
// (on_store_error's rule is cache.ValidateFallbackMode, beside the modes.)

// validRoute is what a route label may be: a config's name for an API, short
// and from a closed alphabet, so that no path or per-caller value fits.
var validRoute = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// checkRoute checks a route label (see validRoute).
func checkRoute(route string) error {
	if !validRoute.MatchString(route) {
		return fmt.Errorf("route %q must be 1 to 64 of a-z A-Z 0-9 _ . -", route)
	}
	return nil
}

// minNonceSecret is the shortest dpop_nonce secret: the HMAC key of the
// stateless nonces, which every replica sharing it accepts.
const minNonceSecret = 16

// checkNonceSecret checks a dpop_nonce secret.
func checkNonceSecret(secret string) error {
	if len(secret) < minNonceSecret {
		return fmt.Errorf("dpop_nonce secret must be at least %d characters", minNonceSecret)
	}
	return nil
}

// errAttestOptions: the attest settings mean nothing when the attest is not read.
var errAttestOptions = errors.New("attest_max_age and purposes need attest required or optional")

// checkAttestOptions refuses attest_max_age or purposes without attest.
func (h *Handler) checkAttestOptions() error {
	if h.Attest == "" && (h.AttestMaxAge != 0 || len(h.Purposes) > 0) {
		return errAttestOptions
	}
	return nil
}

// orgRule is the membership org setting as a rule: parent (also when
// empty, the default), child or both.
func orgRule(org string) (authz.OrgRule, error) {
	switch rule := authz.OrgRule(org); rule {
	case "":
		return authz.OrgParent, nil
	case authz.OrgParent, authz.OrgChild, authz.OrgBoth:
		return rule, nil
	}
	return "", fmt.Errorf("org must be parent or child or both, not %q", org)
}

// checkOrg checks a membership org setting (see orgRule).
func checkOrg(org string) error {
	_, err := orgRule(org)
	return err
}

// checkSource checks that the membership block names one source: a
// registry URL or a file.
func (m *MembershipConfig) checkSource() error {
	switch {
	case m.Registry == "" && m.File == "":
		return errors.New("membership needs a registry <url> or a file <path>")
	case m.Registry != "" && m.File != "":
		return errors.New("membership needs exactly one of registry and file")
	}
	return nil
}
