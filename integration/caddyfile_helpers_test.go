package integration

import (
	"fmt"
	"strings"
)

// Caddyfile pieces the tests build their sites from.

// helseid renders a helseid directive for issuer with the required
// subdirectives and extra lines.
func helseid(issuer string, extra ...string) string {
	var b strings.Builder
	b.WriteString("helseid {\n")
	fmt.Fprintf(&b, "\tissuer %s\n\taudience %s\n\tscopes %s\n", issuer, audience, scope)
	for _, e := range extra {
		b.WriteString("\t" + strings.ReplaceAll(e, "\n", "\n\t") + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// indent indents every line of s by one tab.
func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = "\t" + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// simpleSite is one site: helseid with extra lines, then reverse_proxy.
func simpleSite(issuer, upstreamURL string, extra ...string) siteFunc {
	return func(addrs []string) string {
		return fmt.Sprintf("http://%s {\n%s\treverse_proxy %s\n}\n", addrs[0], indent(helseid(issuer, extra...)), upstreamURL)
	}
}
