package main

import (
	"fmt"
	"io"
	"sort"
	"time"
)

// report joins the audit reasons to the records, judges them and prints
// the whole report, the last lines being the counts; it returns the
// verdicts.
func (res soakResult) report(w io.Writer, duration time.Duration, skipped int64, reps []*replica) verdicts {
	joined, missing := joinAudit(res.recs, res.audits)
	v := judge(res.recs, res.outs)
	fmt.Fprintf(w, "\n== run: %d requests in %s (%d ticks skipped at the concurrency limit); audit reasons joined for %d, missing for %d\n",
		len(res.recs), duration, skipped, joined, missing)
	fmt.Fprintln(w, "== phases as run")
	for _, s := range res.spans {
		fmt.Fprintf(w, "  %-19s %s – %s (+%.0fs – +%.0fs) %s\n", s.name, s.start.Format("15:04:05"), s.end.Format("15:04:05"),
			s.start.Sub(res.start).Seconds(), s.end.Sub(res.start).Seconds(), s.note)
	}
	printAnswers(w, res.recs, v)
	printRecovery(w, res.recs, res.outs, len(reps))
	printResources(w, res.samples)
	printLogDigests(w, reps)
	printExceptions(w, v.exceptions, res.start)
	res.printWrong(w, v.wrong, reps)
	fmt.Fprintf(w, "\nunexpected_answers=%d (not acceptable for their phase, not wrong 200s)\n", v.unexpected)
	fmt.Fprintf(w, "documented_local_outage_replays=%d\n", len(v.exceptions))
	fmt.Fprintf(w, "wrong_200s=%d\n", len(v.wrong))
	return v
}

// printLogDigests prints each replica's most frequent log lines above info.
func printLogDigests(w io.Writer, reps []*replica) {
	fmt.Fprintln(w, "\n== gateway log lines above info (count, level logger: msg)")
	for _, r := range reps {
		dg := logDigest(r.logPath)
		keys := make([]string, 0, len(dg))
		for k := range dg {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return dg[keys[i]] > dg[keys[j]] })
		fmt.Fprintf(w, "r%d (%s):\n", r.index, r.logPath)
		for _, k := range keys[:min(len(keys), 12)] {
			fmt.Fprintf(w, "  %6d %s\n", dg[k], k)
		}
	}
}

// printExceptions lists the first replays of the documented local-outage
// exception.
func printExceptions(w io.Writer, exceptions []*record, start time.Time) {
	if len(exceptions) == 0 {
		return
	}
	fmt.Fprintf(w, "\n== replays accepted on the local route of proofs first used during a Redis outage (documented on_store_error local exception): %d\n", len(exceptions))
	for _, r := range exceptions[:min(len(exceptions), 10)] {
		fmt.Fprintln(w, "  "+describe(r, start))
	}
}

// printWrong lists every wrong 200, the first 20 with the replicas' audit
// entries of its path and their log lines around it.
func (res soakResult) printWrong(w io.Writer, wrong []*record, reps []*replica) {
	if len(wrong) == 0 {
		return
	}
	fmt.Fprintf(w, "\n== WRONG 200s: %d\n", len(wrong))
	sort.Slice(wrong, func(i, j int) bool { return wrong[i].sent.Before(wrong[j].sent) })
	for i, r := range wrong {
		fmt.Fprintln(w, "  "+describe(r, res.start))
		if i >= 20 {
			continue // the first 20 with their log lines
		}
		for _, rep := range reps {
			for _, e := range res.audits[rep.index][r.path] {
				fmt.Fprintf(w, "    r%d audit: %s\n", rep.index, e.line)
			}
			for _, l := range logLinesAround(rep.logPath, r.sent, 2*time.Second, 6) {
				fmt.Fprintf(w, "    r%d log: %s\n", rep.index, l)
			}
		}
	}
}
