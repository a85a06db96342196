package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
	"time"
)

// Latency holds publish-to-stored latency percentiles in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Stats are the counts, rates and latency of all tenants or of one.
type Stats struct {
	ID                 string  `json:"id,omitempty"`
	Published          int     `json:"published"`
	Stored             int     `json:"stored"`
	Missing            int     `json:"missing"`
	Duplicates         int     `json:"duplicates"`
	Unexpected         int     `json:"unexpected"`
	PublishFailed      int     `json:"publish_failed"`
	PublishedPerSecond float64 `json:"published_per_second"`
	StoredPerSecond    float64 `json:"stored_per_second"`
	LatencyMS          Latency `json:"latency_ms"`
}

// Report is the harness's output.
type Report struct {
	Mode           string  `json:"mode"` // "server" or the baseline's name
	Via            string  `json:"via"`
	Phase          string  `json:"phase"`
	PayloadBytes   int     `json:"payload_bytes"`
	Rate           float64 `json:"rate"`
	Workers        int     `json:"workers,omitempty"`     // worker_count, or the baseline's goroutines per tenant, or 0 for the server's default
	Prefetch       int     `json:"prefetch,omitempty"`    // baselines: each consumer's prefetch count
	Connections    int     `json:"connections,omitempty"` // baselines: consume connections
	Backlog        bool    `json:"backlog,omitempty"`     // baselines: consumers started after publishing
	SetupSeconds   float64 `json:"setup_seconds"`
	PublishSeconds float64 `json:"publish_seconds"`
	StoreSeconds   float64 `json:"store_seconds"`
	Error          string  `json:"error,omitempty"`
	Stats
	Tenants []Stats `json:"tenants"`
}

// failed reports whether the run must exit with a non-zero status.
func (r *Report) failed() bool {
	return r.Missing > 0 || r.Duplicates > 0 || r.Error != ""
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted values, or 0 for none.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func latencyOf(values []float64) Latency {
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	l := Latency{P50: percentile(sorted, 50), P95: percentile(sorted, 95), P99: percentile(sorted, 99)}
	if len(sorted) > 0 {
		l.Max = sorted[len(sorted)-1]
	}
	return l
}

// perSecond returns n divided by d in seconds, or 0 when d is not positive.
func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// window is the time span that rates are computed over.
type window struct {
	publishStart time.Time
	publishEnd   time.Time
	// storeStart is the start of the stored_per_second interval: the
	// publish start, or the first stored_at when this process did not
	// publish.
	storeStart time.Time
}

// buildStats sums tallies into Stats. Rates use the window, so the stored
// rate runs from w.storeStart to the last stored_at of the tallies.
func buildStats(id string, tallies []tally, w window) Stats {
	s := Stats{ID: id}
	var latencies []float64
	var last time.Time
	for _, t := range tallies {
		s.Published += t.published
		s.Stored += t.stored
		s.Missing += t.missing
		s.Duplicates += t.duplicates
		s.Unexpected += t.unexpected
		s.PublishFailed += t.failed
		latencies = append(latencies, t.latencies...)
		if t.lastStored.After(last) {
			last = t.lastStored
		}
	}
	s.PublishedPerSecond = perSecond(s.Published, w.publishEnd.Sub(w.publishStart))
	if !last.IsZero() {
		s.StoredPerSecond = perSecond(s.Stored, last.Sub(w.storeStart))
	}
	s.LatencyMS = latencyOf(latencies)
	return s
}

// buildReport fills the overall and per-tenant stats of r.
func buildReport(r *Report, ids []string, tallies []tally, w window) {
	if w.storeStart.IsZero() {
		for _, t := range tallies {
			if !t.firstStored.IsZero() && (w.storeStart.IsZero() || t.firstStored.Before(w.storeStart)) {
				w.storeStart = t.firstStored
			}
		}
	}
	r.Stats = buildStats("", tallies, w)
	r.PublishSeconds = w.publishEnd.Sub(w.publishStart).Seconds()
	if r.StoredPerSecond > 0 {
		r.StoreSeconds = float64(r.Stored) / r.StoredPerSecond
	}
	r.Tenants = make([]Stats, len(tallies))
	for i := range tallies {
		r.Tenants[i] = buildStats(ids[i], tallies[i:i+1], w)
	}
}

func writeJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// maxTenantRows caps the per-tenant lines of the text table.
const maxTenantRows = 50

func writeText(w io.Writer, r *Report) error {
	fmt.Fprintf(w, "%s via %s, %d tenants, %d-byte payloads: setup %.2fs, publish %.2fs, stored after %.2fs\n",
		r.Mode, r.Via, len(r.Tenants), r.PayloadBytes, r.SetupSeconds, r.PublishSeconds, r.StoreSeconds)
	if r.Prefetch > 0 {
		fmt.Fprintf(w, "baseline settings: %d workers per tenant, prefetch %d, %d consume connections, backlog %t\n",
			r.Workers, r.Prefetch, r.Connections, r.Backlog)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "error: %s\n", r.Error)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tenant\tpublished\tstored\tmissing\tduplicates\tunexpected\tpublished/s\tstored/s\tp50 ms\tp95 ms\tp99 ms\tmax ms\t")
	writeRow(tw, "all", r.Stats)
	for i, t := range r.Tenants {
		if i == maxTenantRows {
			fmt.Fprintf(tw, "(%d more tenants; -json lists all)\t\n", len(r.Tenants)-i)
			break
		}
		writeRow(tw, t.ID, t)
	}
	return tw.Flush()
}

func writeRow(w io.Writer, name string, s Stats) {
	fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t\n",
		name, s.Published, s.Stored, s.Missing, s.Duplicates, s.Unexpected,
		s.PublishedPerSecond, s.StoredPerSecond,
		s.LatencyMS.P50, s.LatencyMS.P95, s.LatencyMS.P99, s.LatencyMS.Max)
}
