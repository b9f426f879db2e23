package registry

import (
	"context"
	"os"
	"time"

	"go.uber.org/zap"
)

// Start polls the file every poll interval in a goroutine of its own and
// reloads it when its modification time or size changes, until ctx is done.
// A change that does not load is logged once at Error level and the last
// good set is kept. Start returns at once; calling it again does nothing.
func (f *File) Start(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started {
		return
	}
	f.started = true
	go f.poll(ctx)
}

// poll is Start's loop.
func (f *File) poll(ctx context.Context) {
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.check()
		}
	}
}

// check reloads the file if it changed since it was last looked at, and
// after a successful reload calls the WithOnReload function.
func (f *File) check() {
	if f.checkLocked() {
		f.reloaded()
	}
}

// checkLocked is check under f.mu; it reports whether the file reloaded.
func (f *File) checkLocked() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if stampOf(f.path).same(f.seen) {
		return false
	}
	n, err := f.load()
	if err != nil {
		f.log.Error("membership file rejected; keeping the last good set",
			zap.String("path", f.path), zap.Int("authorizations", f.Len()), zap.Error(err))
		return false
	}
	f.log.Info("membership file reloaded", zap.String("path", f.path), zap.Int("authorizations", n))
	return true
}

// stampOf stats path.
func stampOf(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{err: err.Error()}
	}
	return stamp{mod: fi.ModTime(), size: fi.Size()}
}
