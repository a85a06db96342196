package metrics_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/metrics"
)

func TestNamesArePrefixed(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.Received.WithLabelValues("a").Inc()
	m.DeadLettered.WithLabelValues("a", "invalid_json").Inc()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		name := f.GetName()
		ok := strings.HasPrefix(name, "messaging_") || strings.HasPrefix(name, "go_") ||
			strings.HasPrefix(name, "process_")
		require.True(t, ok, "metric %s lacks the messaging_ prefix", name)
	}
}

func TestForgetTenantRemovesItsSeries(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	for _, id := range []string{"gone", "kept"} {
		m.Received.WithLabelValues(id).Inc()
		m.Persisted.WithLabelValues(id).Inc()
		m.Duplicates.WithLabelValues(id).Inc()
		m.DeadLettered.WithLabelValues(id, "too_large").Inc()
		m.DeadLettered.WithLabelValues(id, "rejected").Inc()
		m.BatchRetries.WithLabelValues(id).Inc()
		m.WorkerRestarts.WithLabelValues(id).Inc()
		m.WorkersLive.WithLabelValues(id).Set(3)
		m.ConsumerRunning.WithLabelValues(id).Set(1)
	}
	m.ForgetTenant("gone")

	families, err := reg.Gather()
	require.NoError(t, err)
	kept := 0
	for _, f := range families {
		for _, metric := range f.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() != "tenant" {
					continue
				}
				require.NotEqual(t, "gone", l.GetValue(), "series %s of a forgotten tenant", f.GetName())
				kept++
			}
		}
	}
	require.Equal(t, 9, kept, "the other tenant keeps all its series")
	require.Equal(t, 3.0, testutil.ToFloat64(m.WorkersLive.WithLabelValues("kept")))
}
