package gatewayproc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"strings"
)

// LogTail returns the last n lines of the log.
func (p *Process) LogTail(n int) string { return Tail(p.logPath, n) }

// LogEntries returns every JSON entry of the log written so far (lines that
// are not JSON, such as a panic's, are skipped).
func (p *Process) LogEntries() []map[string]any {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return nil
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e map[string]any
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// Tail returns the last n lines of a file, for error messages.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return TailString(string(b), n)
}

// TailString returns the last n lines of s.
func TailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
