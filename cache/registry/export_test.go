package registry

import "time"

// WithPollInterval sets how often Start looks at the file's modification time
// and size (default DefaultPollInterval), for tests that cannot wait a
// second. Values <= 0 keep the default.
func WithPollInterval(d time.Duration) FileOption {
	return func(f *File) {
		if d > 0 {
			f.interval = d
		}
	}
}
