package cache

// Exports for the tests of this package only.

// Len returns the number of entries held, expired ones not yet swept included.
func (s *LocalReplay) Len() int { return s.entries.Len() }
