package authz

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// TestReasonsClosedList reads the package's source and checks that every
// reason a denial can carry (the second argument of every deny and denyErr
// call) is in DenialReasons with the same DenialClass, and that every entry of
// DenialReasons is used: a new reason cannot slip in undocumented, and the
// list of docs/checks-and-responses.md (checked against DenialReasons in
// caddymodule) stays whole.
func TestReasonsClosedList(t *testing.T) {
	fset := token.NewFileSet()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	// The package's string constants (ReasonMember and friends).
	consts := map[string]string{}
	for _, f := range files {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							v, _ := strconv.Unquote(lit.Value)
							consts[name.Name] = v
						}
					}
				}
			}
		}
	}
	stringValue := func(e ast.Expr) (string, bool) {
		switch e := e.(type) {
		case *ast.BasicLit:
			if e.Kind == token.STRING {
				v, err := strconv.Unquote(e.Value)
				return v, err == nil
			}
		case *ast.Ident:
			v, ok := consts[e.Name]
			return v, ok
		}
		return "", false
	}

	classes := map[string]DenialClass{
		"NoCredentials": NoCredentials, "InvalidRequest": InvalidRequest, "InvalidToken": InvalidToken,
		"InvalidProof": InvalidProof, "UseNonce": UseNonce, "InsufficientScope": InsufficientScope,
		"NotMember": NotMember, "Unavailable": Unavailable,
	}
	documented := map[string]DenialClass{}
	for _, r := range DenialReasons() {
		if _, dup := documented[r.Code]; dup {
			t.Errorf("DenialReasons lists %q twice", r.Code)
		}
		documented[r.Code] = r.Class
		if r.Meaning == "" {
			t.Errorf("reason %q has no meaning", r.Code)
		}
	}
	for _, r := range AllowReasons() {
		if _, dup := documented[r.Code]; dup {
			t.Errorf("%q is both an allow and a denial reason", r.Code)
		}
	}

	used := map[string]bool{}
	calls := 0
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			fn, ok := call.Fun.(*ast.Ident)
			if !ok || (fn.Name != "deny" && fn.Name != "denyErr") || len(call.Args) < 2 {
				return true
			}
			calls++
			pos := fset.Position(call.Pos())
			classIdent, ok := call.Args[0].(*ast.Ident)
			if !ok {
				t.Errorf("%s: the class of a denial must be a DenialClass constant", pos)
				return true
			}
			class, ok := classes[classIdent.Name]
			if !ok {
				t.Errorf("%s: unknown class %s", pos, classIdent.Name)
				return true
			}
			var reasons []string
			if v, ok := stringValue(call.Args[1]); ok {
				reasons = []string{v}
			} else if id, ok := call.Args[1].(*ast.Ident); ok && id.Name == "reason" && strings.HasSuffix(pos.Filename, "membership.go") {
				// MembershipCheck: the reason comes from Answer.Decide, which
				// returns one of these.
				reasons = []string{ReasonNotMember, ReasonSuspended, ReasonOutsideValidity}
			} else {
				t.Errorf("%s: a denial reason must be a string constant (or be added to this test with the reasons it can take)", pos)
				return true
			}
			for _, r := range reasons {
				used[r] = true
				k, ok := documented[r]
				switch {
				case !ok:
					t.Errorf("%s: reason %q is not in DenialReasons (authz/reasons.go) nor in docs/checks-and-responses.md, \"Reason codes\"", pos, r)
				case k != class:
					t.Errorf("%s: reason %q comes with class %s here but DenialReasons says %d", pos, r, classIdent.Name, k)
				}
			}
			return true
		})
	}
	if calls < 40 {
		t.Fatalf("found only %d deny/denyErr calls: is the scan still looking at the right code?", calls)
	}
	var unused []string
	for r := range documented {
		if !used[r] {
			unused = append(unused, r)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Errorf("DenialReasons lists reasons no code produces: %q", unused)
	}
}
