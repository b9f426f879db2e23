// Package jwsheader lets the test doubles shape a JWS protected header the
// way a test asks, including headers no honest signer would write.
package jwsheader

import (
	"fmt"

	"github.com/lestrrat-go/jwx/v2/jws"
)

// Merge sets every member of m in hdr; a nil value removes the member.
func Merge(hdr jws.Headers, m map[string]any) error {
	for name, v := range m {
		var err error
		if v == nil {
			err = hdr.Remove(name)
		} else {
			err = hdr.Set(name, v)
		}
		if err != nil {
			return fmt.Errorf("header %q: %w", name, err)
		}
	}
	return nil
}
