package main

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPercentileNearestRank(t *testing.T) {
	t.Parallel()
	values := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	cases := []struct {
		p    float64
		want float64
	}{
		{p: 50, want: 5},
		{p: 90, want: 9},
		{p: 95, want: 10},
		{p: 99, want: 10},
		{p: 100, want: 10},
		{p: 0.1, want: 1},
		{p: 10, want: 1},
		{p: 11, want: 2},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, percentile(values, tc.p), "p%v", tc.p)
	}
}

func TestPercentileEdgeCases(t *testing.T) {
	t.Parallel()
	require.Zero(t, percentile(nil, 50), "no values")
	require.Equal(t, 7.0, percentile([]float64{7}, 1), "one value, low percentile")
	require.Equal(t, 7.0, percentile([]float64{7}, 99), "one value, high percentile")
}

func TestLatencyOfUnsortedInput(t *testing.T) {
	t.Parallel()
	values := make([]float64, 0, 1000)
	for i := 1000; i >= 1; i-- {
		values = append(values, float64(i))
	}
	l := latencyOf(values)
	require.Equal(t, 500.0, l.P50)
	require.Equal(t, 950.0, l.P95)
	require.Equal(t, 990.0, l.P99)
	require.Equal(t, 1000.0, l.Max)
	require.Equal(t, 1000.0, values[0], "latencyOf must not reorder its input")
}

func TestVerifyCountsMissingDuplicatesUnexpected(t *testing.T) {
	t.Parallel()
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	states := []byte{stateConfirmed, stateConfirmed, stateConfirmed, stateFailed, stateConfirmed}
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	rows := []row{
		{messageID: "msg-0", publishedAt: base, storedAt: at(10)},
		{messageID: "msg-1", publishedAt: base, storedAt: at(20)},
		{messageID: "msg-1", publishedAt: base, storedAt: at(30)}, // duplicate
		{messageID: "msg-3", publishedAt: base, storedAt: at(5)},  // failed publish, stored anyway
		{messageID: "other", publishedAt: base, storedAt: at(5)},  // not from this run
		{messageID: "msg-99", publishedAt: base, storedAt: at(5)}, // never published
	}
	got := verify(states, rows)
	require.Equal(t, 4, got.published)
	require.Equal(t, 1, got.failed)
	require.Equal(t, 6, got.stored)
	require.Equal(t, 2, got.missing, "msg-2 and msg-4 have no row")
	require.Equal(t, 1, got.duplicates)
	require.Equal(t, 3, got.unexpected)
	require.Equal(t, []float64{10, 20}, got.latencies)
	require.Equal(t, at(10), got.firstStored)
	require.Equal(t, at(20), got.lastStored)
}

func TestBuildReportRates(t *testing.T) {
	t.Parallel()
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	w := window{publishStart: start, publishEnd: start.Add(2 * time.Second), storeStart: start}
	tallies := []tally{
		{published: 300, stored: 300, latencies: []float64{1, 2, 3}, lastStored: start.Add(3 * time.Second)},
		{published: 100, stored: 99, missing: 1, latencies: []float64{4}, lastStored: start.Add(time.Second)},
	}
	var rep Report
	buildReport(&rep, []string{"a", "b"}, tallies, w)

	require.Equal(t, 400, rep.Published)
	require.Equal(t, 399, rep.Stored)
	require.Equal(t, 1, rep.Missing)
	require.InDelta(t, 200.0, rep.PublishedPerSecond, 1e-9, "400 messages in 2s")
	require.InDelta(t, 133.0, rep.StoredPerSecond, 1e-9, "399 rows by the last stored_at at 3s")
	require.InDelta(t, 3.0, rep.StoreSeconds, 1e-9)
	require.Equal(t, Latency{P50: 2, P95: 4, P99: 4, Max: 4}, rep.LatencyMS)
	require.Len(t, rep.Tenants, 2)
	require.Equal(t, "b", rep.Tenants[1].ID)
	require.InDelta(t, 99.0, rep.Tenants[1].StoredPerSecond, 1e-9)
	require.True(t, rep.failed(), "a missing message fails the run")
}

func TestBuildReportVerifyPhaseStartsAtFirstStored(t *testing.T) {
	t.Parallel()
	first := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tallies := []tally{{published: 10, stored: 10, firstStored: first, lastStored: first.Add(2 * time.Second)}}
	var rep Report
	buildReport(&rep, []string{"a"}, tallies, window{})
	require.InDelta(t, 5.0, rep.StoredPerSecond, 1e-9)
	require.Zero(t, rep.PublishedPerSecond, "nothing was published by this process")
	require.False(t, rep.failed())
}

func TestReportJSONFieldNames(t *testing.T) {
	t.Parallel()
	rep := Report{Mode: "server", Via: "amqp", Stats: Stats{Published: 3, Stored: 3}, Tenants: []Stats{{ID: "t-0"}}}
	var buf bytes.Buffer
	require.NoError(t, writeJSON(&buf, &rep))
	var got map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &got))
	for _, key := range []string{"published", "stored", "missing", "duplicates", "published_per_second",
		"stored_per_second", "latency_ms", "tenants"} {
		require.Contains(t, got, key)
	}
	latency := got["latency_ms"].(map[string]any)
	for _, key := range []string{"p50", "p95", "p99", "max"} {
		require.Contains(t, latency, key)
	}
	tenant := got["tenants"].([]any)[0].(map[string]any)
	require.Equal(t, "t-0", tenant["id"])
	require.Contains(t, tenant, "latency_ms")
}

func TestWriteTextCapsTenantRows(t *testing.T) {
	t.Parallel()
	rep := Report{Mode: "server", Via: "amqp", Tenants: make([]Stats, maxTenantRows+5)}
	var buf bytes.Buffer
	require.NoError(t, writeText(&buf, &rep))
	require.Contains(t, buf.String(), "(5 more tenants; -json lists all)")
}
