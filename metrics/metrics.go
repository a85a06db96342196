// Package metrics defines the server's Prometheus collectors. Every name
// starts with messaging_.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds the collectors shared by the actors, the transport and the
// API. Series labelled by tenant are removed by ForgetTenant.
type Metrics struct {
	Received           *prometheus.CounterVec
	Persisted          *prometheus.CounterVec
	Duplicates         *prometheus.CounterVec
	DeadLettered       *prometheus.CounterVec
	BatchSize          prometheus.Histogram
	BatchDuration      prometheus.Histogram
	BatchRetries       *prometheus.CounterVec
	TransactionBatches prometheus.Histogram
	StoreLatency       prometheus.Histogram
	WorkersLive        *prometheus.GaugeVec
	WorkerRestarts     *prometheus.CounterVec
	ConsumerRunning    *prometheus.GaugeVec
	Tenants            prometheus.Gauge
	BrokerConnected    prometheus.Gauge
	BrokerReconnect    prometheus.Counter
}

// New creates the collectors and registers them, with the Go and process
// collectors, on reg.
func New(reg prometheus.Registerer) *Metrics {
	tenant := []string{"tenant"}
	m := &Metrics{
		Received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "messaging_messages_received_total",
			Help: "Deliveries taken from a tenant's queue by its workers.",
		}, tenant),
		Persisted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "messaging_messages_persisted_total",
			Help: "Messages stored in the tenant's partition.",
		}, tenant),
		Duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "messaging_messages_duplicates_total",
			Help: "Deliveries whose message_id was already stored; acked without a second row.",
		}, tenant),
		DeadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "messaging_messages_dead_lettered_total",
			Help: "Messages moved to the tenant's dead-letter queue, by reason.",
		}, []string{"tenant", "reason"}),
		BatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "messaging_batch_size",
			Help:    "Messages in each batch a worker inserted.",
			Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000},
		}),
		BatchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "messaging_batch_insert_duration_seconds",
			Help:    "Time to insert and commit one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		BatchRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "messaging_batch_retries_total",
			Help: "Batch inserts retried after a transient database error.",
		}, tenant),
		TransactionBatches: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "messaging_insert_transaction_batches",
			Help:    "Batches stored together by each insert transaction (GROUP_COMMIT).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128},
		}),
		StoreLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "messaging_publish_to_stored_seconds",
			Help:    "Time from a message's published_at to its commit.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		WorkersLive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "messaging_workers_live",
			Help: "Worker actors actually running for a tenant.",
		}, tenant),
		WorkerRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "messaging_worker_restarts_total",
			Help: "Worker actors restarted by their supervisor after a failure.",
		}, tenant),
		ConsumerRunning: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "messaging_consumer_running",
			Help: "1 while the tenant's queue consumer runs, else 0.",
		}, tenant),
		Tenants: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "messaging_tenants",
			Help: "Tenants with a running tenant actor.",
		}),
		BrokerConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "messaging_broker_connected",
			Help: "1 while both RabbitMQ connections (consume and publish) are open, else 0.",
		}),
		BrokerReconnect: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "messaging_broker_reconnects_total",
			Help: "Successful re-dials of the RabbitMQ consume connection after a loss.",
		}),
	}
	reg.MustRegister(
		m.Received, m.Persisted, m.Duplicates, m.DeadLettered,
		m.BatchSize, m.BatchDuration, m.BatchRetries, m.TransactionBatches, m.StoreLatency,
		m.WorkersLive, m.WorkerRestarts, m.ConsumerRunning,
		m.Tenants, m.BrokerConnected, m.BrokerReconnect,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// ForgetTenant removes every series labelled with the tenant, so a deleted
// tenant disappears from /metrics.
func (m *Metrics) ForgetTenant(tenantID string) {
	labels := prometheus.Labels{"tenant": tenantID}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{
		m.Received, m.Persisted, m.Duplicates, m.DeadLettered, m.BatchRetries,
		m.WorkerRestarts, m.WorkersLive, m.ConsumerRunning,
	} {
		v.DeletePartialMatch(labels)
	}
}
