//go:build faults

package faults

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

// TestWorkerPanicUnderLoad crashes workers for real: the suite's server is
// built with the faultinject tag, whose hook panics in the worker that
// stores a message with the header x-fault-inject: panic.
func TestWorkerPanicUnderLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := e.start(t)
	const workers = 3
	id := e.createTenant(t, "panic", workers)

	const total = 3000
	panicAt := map[int]bool{400: true, 1500: true, 2600: true}
	p := newAMQPProducer(e.rabbitURL, id, id, total, 1000)
	p.headers = func(i int) amqp.Table {
		if panicAt[i] {
			return amqp.Table{"x-fault-inject": "panic"}
		}
		return nil
	}
	require.NoError(t, p.start(t)())
	waitDrained(t, id)

	// Every other message is stored once, also those that were in a batch
	// when its worker crashed and went back to the queue.
	expected := make(map[string]bool, total)
	for mid := range p.confirmed.snapshot() {
		expected[mid] = true
	}
	require.Len(t, expected, total)
	for i := range panicAt {
		delete(expected, p.id(i))
	}
	rows := requireExactlyOnce(t, e.databaseURL, id, expected)
	require.Equal(t, total-len(panicAt), rows.total)

	// Each marked message crashed a worker maxAttempts times and was then
	// dead-lettered; nothing else was.
	got := make(map[string]deadLetter)
	for _, dl := range deadLetters(t, e.rabbitURL, id) {
		got[dl.messageID] = dl
	}
	require.Len(t, got, len(panicAt), "dead-lettered: %v", got)
	for i := range panicAt {
		dl, ok := got[p.id(i)]
		require.True(t, ok, "message %s not dead-lettered", p.id(i))
		require.Equal(t, "max_attempts", dl.reason)
	}

	// The supervisor restarted every crashed worker and the pool is whole.
	m := e.metrics(t)
	restarts := m[fmt.Sprintf(`messaging_worker_restarts_total{tenant=%q}`, id)]
	require.GreaterOrEqual(t, restarts, float64(len(panicAt)*maxAttempts))
	eventually(t, 20*time.Second, 200*time.Millisecond, "all workers live again", func() bool {
		return e.metrics(t)[fmt.Sprintf(`messaging_workers_live{tenant=%q}`, id)] == workers
	})
	var v tenantView
	call(t, http.MethodGet, e.url("/api/v1/tenants/"+id), e.admin, nil, http.StatusOK, &v)
	require.Equal(t, workers, v.WorkersRunning)
	srv.RequireRunning(t)
	t.Logf("%d rows; %d dead-lettered as max_attempts; %.0f worker restarts", rows.total, len(got), restarts)
}
