// Command helsegate is Caddy with its standard modules and the helseid handler.
package main

import (
	"os"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/helsegate/helsegate/caddymodule"
)

func main() {
	if len(os.Args) > 1 {
		switch {
		case os.Args[1] == "version" && len(os.Args) == 2:
			runVersion()
			return
		case os.Args[1] == "list-modules":
			runListModules(os.Args[2:])
			return
		}
	}
	caddycmd.Main()
}
