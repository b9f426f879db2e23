package authz

import (
	"fmt"
	"net/url"
	"strings"
)

// Environment is the HelseID environment a gateway serves. Declared, it pins
// the issuer: HelseID's test token service signs with the same key as real
// test tokens, so a production gateway that trusted a test issuer would
// accept tokens anyone can get (reference: HelseID's test-token service
// documentation).
type Environment string

// The environments.
const (
	// EnvNone declares nothing: the issuer is not checked against a list.
	EnvNone Environment = ""
	// EnvProduction refuses HelseID's test, QA and development issuers.
	EnvProduction Environment = "production"
	// EnvTest refuses HelseID's production issuer.
	EnvTest Environment = "test"
)

// productionHost is the host of HelseID's production issuer,
// https://helseid-sts.nhn.no.
const productionHost = "helseid-sts.nhn.no"

// nonProductionDomains are where HelseID's non-production issuers live:
// test (helseid-sts.test.nhn.no, and the test token service
// helseid-ttt.test.nhn.no), and the older development and QA issuers.
var nonProductionDomains = []string{".test.nhn.no", ".utvikling.nhn.no", ".qa.nhn.no"}

// CheckEnvironment reports whether raw, the URL of what (issuer, jwks_url),
// belongs to env. It knows HelseID's public hosts only: any other host
// (a simulator on loopback, an issuer of another kind) passes in either
// environment. It never touches the network.
func CheckEnvironment(env Environment, what, raw string) error {
	switch env {
	case EnvNone:
		return nil
	case EnvProduction, EnvTest:
	default:
		return fmt.Errorf("helseid_environment must be production or test, not %q", env)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil // CheckURL reports it
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if env == EnvTest && host == productionHost {
		return fmt.Errorf("%s %s is HelseID's production issuer, and helseid_environment is test", what, raw)
	}
	if env == EnvProduction && isHelseIDNonProduction(host) {
		return fmt.Errorf("%s %s is one of HelseID's test issuers, and helseid_environment is production (HelseID's test token service signs with the test key: a production gateway must never trust it)", what, raw)
	}
	return nil
}

// isHelseIDNonProduction reports whether host is one of HelseID's test,
// QA or development hosts.
func isHelseIDNonProduction(host string) bool {
	for _, d := range nonProductionDomains {
		if strings.HasSuffix(host, d) && strings.HasPrefix(host, "helseid-") {
			return true
		}
	}
	return false
}
