//go:build faults

package faults

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/transport"
)

func TestServerKilledUnderLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := e.start(t)
	id := e.createTenant(t, "kill9", 3)

	// A higher rate than the other tests keeps more deliveries between
	// commit and ack when the process dies.
	l := startLoad(t, e, id, 12000, 2400, 3000)
	time.Sleep(2 * time.Second)
	srv.Kill(t)
	killedAt := time.Now()

	// With the process gone, the broker has taken back every unacked delivery,
	// and AMQP producers keep publishing into the queue.
	time.Sleep(time.Second)
	stats := queueStats(t)[transport.QueueName(id)]
	require.Zero(t, stats.unacked, "deliveries still unacked with the server killed: %+v", stats)
	require.Zero(t, stats.consumers, "consumers with the server killed: %+v", stats)

	e.start(t)
	downFor := time.Since(killedAt)
	rows := l.finish(t, e, id)
	duplicates := e.metrics(t)[fmt.Sprintf(`messaging_messages_duplicates_total{tenant=%q}`, id)]
	t.Logf("server down %s after SIGKILL; %d rows; the restarted server skipped %d redelivered duplicates",
		downFor.Round(time.Millisecond), rows.total, int(duplicates))
}

func TestServerTerminatedUnderLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := e.start(t)
	id := e.createTenant(t, "sigterm", 3)

	l := startLoad(t, e, id, 10000, 2000, 1000)
	time.Sleep(3 * time.Second)

	// Hold the partition so that the workers have uncommitted batches when
	// SIGTERM arrives: a graceful stop waits for them to commit and ack.
	unlock := lockPartition(t, e.databaseURL, partitionName(t, e.databaseURL, id), 3*time.Second)
	time.Sleep(500 * time.Millisecond)
	took := srv.Stop(t, shutdownTimeout)
	unlock()
	log := e.output.String()
	require.Contains(t, log, "server: stopped", "graceful shutdown did not finish")
	require.NotContains(t, log, "batch abandoned at shutdown")

	// A graceful stop settles or returns every delivery before it closes
	// the channels.
	stats := queueStats(t)[transport.QueueName(id)]
	require.Zero(t, stats.unacked, "deliveries still unacked after SIGTERM: %+v", stats)
	require.Zero(t, stats.consumers, "consumers after SIGTERM: %+v", stats)

	time.Sleep(time.Second)
	e.start(t)
	rows := l.finish(t, e, id)
	status, body := e.ready()
	require.Equal(t, http.StatusOK, status, body)
	t.Logf("SIGTERM to exit 0 took %s (SHUTDOWN_TIMEOUT %s); %d rows; shutdown log: %s",
		took.Round(time.Millisecond), shutdownTimeout, rows.total, lastLine(log, "server: stopped"))
}

// lastLine returns the last line of log that contains substr.
func lastLine(log, substr string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], substr) {
			return lines[i]
		}
	}
	return ""
}
