package caddymodule

import (
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestRequireEnvOption(t *testing.T) {
	t.Setenv("HG_RE_SET", "x")
	t.Setenv("HG_RE_EMPTY", "")
	parse := func(input string, existing any) (any, error) {
		return parseRequireEnvOption(caddyfile.NewTestDispenser(input), existing)
	}

	t.Run("all set", func(t *testing.T) {
		v, err := parse("require_env HG_RE_SET", nil)
		if err != nil || !reflect.DeepEqual(v, []string{"HG_RE_SET"}) {
			t.Fatalf("got %v, %v", v, err)
		}
	})
	t.Run("a second line adds to the first", func(t *testing.T) {
		v, err := parse("require_env HG_RE_SET", []string{"A"})
		if err != nil || !reflect.DeepEqual(v, []string{"A", "HG_RE_SET"}) {
			t.Fatalf("got %v, %v", v, err)
		}
	})
	for _, tc := range []struct {
		name, input string
		want        []string
	}{
		{"unset", "require_env HG_RE_SET HG_RE_UNSET_1", []string{"HG_RE_UNSET_1 is not set"}},
		{"empty is missing", "require_env HG_RE_EMPTY", []string{"HG_RE_EMPTY is not set (or empty)"}},
		{"every missing one named", "require_env HG_RE_UNSET_1 HG_RE_SET HG_RE_EMPTY", []string{"variables HG_RE_UNSET_1, HG_RE_EMPTY are not set"}},
		{"no names", "require_env", []string{"wrong argument count"}},
		{"not a name", "require_env HG-RE", []string{`"HG-RE" is not an environment variable name`}},
		{"block", "require_env HG_RE_SET {\n\tx\n}", []string{"takes no block"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(tc.input, nil)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
