package registry

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/helsegate/helsegate/authz"
)

// BenchmarkFileLookup looks up hits and misses in a file of 10,000
// authorizations.
func BenchmarkFileLookup(b *testing.B) {
	orgs := validOrgs(10_001)
	recs := make([]authz.Authorization, 0, len(orgs)-1)
	for _, o := range orgs[:len(orgs)-1] {
		recs = append(recs, authz.Authorization{Organization: o, Service: testSvc, Member: true, Status: testStatus})
	}
	body, err := json.Marshal(map[string]any{"authorizations": recs})
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "members.json")
	if err := os.WriteFile(path, body, 0o600); err != nil {
		b.Fatal(err)
	}
	f, err := NewFile(path, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		org  string
	}{{"hit", orgs[5000]}, {"miss", orgs[len(orgs)-1]}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := f.Lookup(ctx, testSvc, bc.org); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
