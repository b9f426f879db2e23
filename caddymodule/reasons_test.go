package caddymodule

import (
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/helsegate/helsegate/authz"
)

// reasonsDoc is the page that documents every reason code, in its section
// reasonsSection.
const (
	reasonsDoc     = "../docs/checks-and-responses.md"
	reasonsSection = "\n## Reason codes"
)

// TestOperationsDocListsEveryReason compares the reason codes of
// docs/checks-and-responses.md (section "Reason codes") with the closed list
// of authz, including the outcome and the status of each.
func TestOperationsDocListsEveryReason(t *testing.T) {
	b, err := os.ReadFile(reasonsDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i := strings.Index(doc, reasonsSection)
	if i < 0 {
		t.Fatalf("%s has no section %q", reasonsDoc, reasonsSection[1:])
	}
	doc = doc[i+1:]
	if j := strings.Index(doc[3:], "\n## "); j >= 0 {
		doc = doc[:j+3]
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| (allow|deny|error) \\| ([0-9]+|upstream's) \\| (.+) \\|$")
	documented := map[string][]string{}
	for _, m := range row.FindAllStringSubmatch(doc, -1) {
		if _, dup := documented[m[1]]; dup {
			t.Errorf("%s lists %q twice", reasonsDoc, m[1])
		}
		documented[m[1]] = m[2:]
	}
	want := map[string][]string{}
	for _, r := range authz.AllowReasons() {
		want[r.Code] = []string{"allow", "upstream's"}
	}
	for _, r := range authz.DenialReasons() {
		want[r.Code] = []string{outcomeOf(r.Class), strconv.Itoa(status(r.Class))}
	}
	var missing, extra []string
	for code, w := range want {
		d, ok := documented[code]
		if !ok {
			missing = append(missing, code)
			continue
		}
		if d[0] != w[0] || d[1] != w[1] {
			t.Errorf("%s: %s is %s %s, the code says %s %s", reasonsDoc, code, d[0], d[1], w[0], w[1])
		}
	}
	for code := range documented {
		if _, ok := want[code]; !ok {
			extra = append(extra, code)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("the reason codes of %s differ from authz.AllowReasons+DenialReasons: missing %q, not in the code %q", reasonsDoc, missing, extra)
	}
}
