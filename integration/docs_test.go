package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The Caddyfile snippets of the docs, and how TestDocsSnippets reads them.
//
// Every Caddyfile snippet in README.md and docs/*.md is a ```caddyfile block,
// and every one is adapted and validated by the built binary's `validate`
// subcommand (provisioning included, no network), so a snippet pasted from
// the docs works. A block is a whole Caddyfile unless its first line says
// which fragment it is:
//
//	# fragment: helseid   lines inside a `helseid { }` block; the test adds
//	                      `issuer` and `audience` when the fragment has none
//	# fragment: site      lines inside a site block (handle, route, …)
//	# fragment: global    lines inside the global options block
//
// Lines `# env: NAME=value` set an environment variable for that snippet.
// Every other variable the snippet names ({env.NAME}, {$NAME},
// {$NAME:default}) is set to a test value chosen by its name (testEnvValue).
// Absolute paths under /etc, /var, /run, /srv, /data and /config are moved
// into a temporary directory (a members file gets an empty members list), so
// that a snippet can name its production paths.
//
// A fenced block without a language that looks like a Caddyfile (a `helseid`
// block, a `reverse_proxy`, `helseid_environment`) fails the test: mark it
// ```caddyfile, or ```text when it is not one.

// docSnippet is one fenced block of a Markdown file.
type docSnippet struct {
	file string // relative to the repository root
	line int    // of the opening fence
	lang string
	body []string
}

var fenceRE = regexp.MustCompile("^(\\s*)```\\s*([A-Za-z0-9_+-]*)\\s*$")

// readSnippets returns the fenced blocks of a Markdown file.
func readSnippets(t *testing.T, root, rel string) []docSnippet {
	t.Helper()
	f, err := os.Open(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		out    []docSnippet
		cur    *docSnippet
		indent string
		n      int
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		n++
		line := sc.Text()
		m := fenceRE.FindStringSubmatch(line)
		switch {
		case cur == nil && m != nil:
			cur = &docSnippet{file: rel, line: n, lang: strings.ToLower(m[2])}
			indent = m[1]
		case cur != nil && m != nil && m[2] == "":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.body = append(cur.body, strings.TrimPrefix(line, indent))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Errorf("%s:%d: a fenced block that never closes", rel, cur.line)
	}
	return out
}

var (
	looksLikeCaddyfileRE = regexp.MustCompile(`(?m)^\s*(helseid\s*\{|helseid_environment\s|reverse_proxy\s)`)
	fragmentRE           = regexp.MustCompile(`^#\s*fragment:\s*(\S+)`)
	envLineRE            = regexp.MustCompile(`^\s*#\s*env:\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$`)
	envNameRE            = regexp.MustCompile(`\{(?:env\.|\$)([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}`)
	prodPathRE           = regexp.MustCompile(`(^|[\s.{])(/(?:etc|var|run|srv|data|config)/[A-Za-z0-9._/-]+)`)
	caddyfileLineRE      = regexp.MustCompile(`Caddyfile:(\d+)`)
	hasSubdirectiveRE    = func(name string) *regexp.Regexp { return regexp.MustCompile(`(?m)^\s*` + name + `\s`) }
)

// testEnvValue is the value a snippet's environment variable gets, chosen by
// the name's suffix.
func testEnvValue(name string) string {
	switch u := strings.ToUpper(name); {
	case strings.Contains(u, "REDIS") && strings.HasSuffix(u, "_URL"):
		return "redis://127.0.0.1:6379/0"
	case strings.HasSuffix(u, "ENVIRONMENT"):
		return "production"
	case strings.HasSuffix(u, "ISSUER"):
		return "https://helseid-sts.nhn.no"
	case strings.HasSuffix(u, "ORIGIN"):
		return "https://kj.example.no"
	case strings.HasSuffix(u, "REGISTRY"):
		return "https://medlem.example.no"
	case strings.HasSuffix(u, "UPSTREAM"):
		return "127.0.0.1:9080"
	case strings.HasSuffix(u, "BIND"):
		return "127.0.0.1"
	case strings.HasSuffix(u, "SITE"):
		return "kj.example.no"
	case strings.HasSuffix(u, "PORT"):
		return "8443"
	case strings.HasSuffix(u, "_URL"):
		return "https://example.no"
	}
	// Tokens, passwords, nonce secrets (at least 16 characters) and the rest.
	return "test-value-0123456789abcdef"
}

// wrapSnippet returns the Caddyfile to validate for a snippet and the line
// of that file where the snippet's first line is.
func wrapSnippet(kind string, body []string) (content string, first int, err error) {
	text := strings.Join(body, "\n")
	const global = "{\n\tadmin off\n}\n"
	switch kind {
	case "":
		return text + "\n", 1, nil
	case "global":
		return "{\n" + text + "\n}\n\nhttp://127.0.0.1:8080 {\n\trespond ok\n}\n", 2, nil
	case "site":
		head := global + "\nhttp://127.0.0.1:8080 {\n"
		return head + text + "\n}\n", strings.Count(head, "\n") + 1, nil
	case "helseid":
		head := global + "\nhttp://127.0.0.1:8080 {\n\thelseid {\n"
		if !hasSubdirectiveRE("issuer").MatchString(text) {
			head += "\t\tissuer https://helseid-sts.nhn.no\n"
		}
		if !hasSubdirectiveRE("audience").MatchString(text) {
			head += "\t\taudience nhn:kjernejournal\n"
		}
		return head + text + "\n\t}\n\treverse_proxy 127.0.0.1:9\n}\n", strings.Count(head, "\n") + 1, nil
	}
	return "", 0, fmt.Errorf("unknown fragment kind %q (helseid, site or global)", kind)
}

// TestDocsSnippets adapts and validates every ```caddyfile block of README.md
// and docs/*.md with the built binary, and fails with the file and line of
// a snippet that does not.
func TestDocsSnippets(t *testing.T) {
	root := ".."
	files := []string{"README.md"}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		rel, _ := filepath.Rel(root, d)
		files = append(files, filepath.ToSlash(rel))
	}
	sort.Strings(files[1:])

	var snippets []docSnippet
	for _, f := range files {
		for _, s := range readSnippets(t, root, f) {
			switch {
			case s.lang == "caddyfile":
				snippets = append(snippets, s)
			case s.lang == "" && looksLikeCaddyfileRE.MatchString(strings.Join(s.body, "\n")):
				t.Errorf("%s:%d: a Caddyfile snippet in a fenced block without a language: mark it ```caddyfile (or ```text when it is not a Caddyfile)", s.file, s.line)
			}
		}
	}
	if len(snippets) < 5 {
		t.Fatalf("only %d ```caddyfile blocks found in %v: is the convention still ```caddyfile?", len(snippets), files)
	}

	for _, s := range snippets {
		name := strings.ReplaceAll(fmt.Sprintf("%s:%d", s.file, s.line), "/", "_")
		t.Run(name, func(t *testing.T) {
			where := fmt.Sprintf("%s:%d", s.file, s.line)
			body := s.body
			kind := ""
			if len(body) > 0 {
				if m := fragmentRE.FindStringSubmatch(strings.TrimSpace(body[0])); m != nil {
					kind = m[1]
				}
			}
			dir := t.TempDir()

			// The environment: what the snippet sets, then what it names.
			set := map[string]bool{}
			for _, l := range body {
				if m := envLineRE.FindStringSubmatch(l); m != nil {
					t.Setenv(m[1], strings.TrimSpace(m[2]))
					set[m[1]] = true
				}
			}
			for _, m := range envNameRE.FindAllStringSubmatch(strings.Join(body, "\n"), -1) {
				if !set[m[1]] {
					t.Setenv(m[1], testEnvValue(m[1]))
					set[m[1]] = true
				}
			}

			// Production paths, moved under dir.
			moved := make([]string, len(body))
			for i, l := range body {
				moved[i] = prodPathRE.ReplaceAllStringFunc(l, func(match string) string {
					sm := prodPathRE.FindStringSubmatch(match)
					p := filepath.Join(dir, "fs", sm[2])
					if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
						t.Fatal(err)
					}
					if strings.Contains(filepath.Base(p), ".") || strings.HasSuffix(sm[1], ".") {
						content := "test-value-0123456789abcdef"
						if strings.HasSuffix(p, ".json") {
							content = `{"authorizations":[]}`
						}
						if _, err := os.Stat(p); err != nil {
							if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
								t.Fatal(err)
							}
						}
					}
					return sm[1] + p
				})
			}

			content, first, err := wrapSnippet(kind, moved)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			path := filepath.Join(dir, "Caddyfile")
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := validate(t, path)
			if err != nil || !strings.Contains(out, "Valid configuration") {
				// Point at the snippet's own line where the error names one.
				at := where
				if m := caddyfileLineRE.FindStringSubmatch(out); m != nil {
					if n, _ := strconv.Atoi(m[1]); n >= first && n < first+len(body) {
						at = fmt.Sprintf("%s:%d", s.file, s.line+1+n-first)
					}
				}
				t.Errorf("%s: the snippet (```caddyfile block at %s, fragment %q) does not validate: %v\n%s\nvalidated as:\n%s",
					at, where, kind, err, out, numbered(content))
			}
		})
	}
}

func numbered(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Fprintf(&b, "%4d  %s\n", i+1, l)
	}
	return b.String()
}
