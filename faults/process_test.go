//go:build faults

package faults

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
	require.NotContains(t, log, "batch abandoned")

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

func TestServerTerminatedWhileLockedExitsAtDeadline(t *testing.T) {
	t.Parallel()
	const timeout = 3 * time.Second
	// exitBound leaves room for a loaded machine. A server that waits for
	// the lock to end exits seconds later.
	const exitBound = timeout + 500*time.Millisecond
	e := newEnv(t)
	srv := e.start(t, "SHUTDOWN_TIMEOUT="+timeout.String())
	id := e.createTenant(t, "deadline", 3)

	l := startLoad(t, e, id, 4000, 800, 1000)
	time.Sleep(time.Second)

	// The lock outlasts the shutdown deadline, so the workers cannot commit
	// in time, and a read of the tenant's messages waits for it on a pooled
	// connection.
	unlock := lockPartition(t, e.databaseURL, partitionName(t, e.databaseURL, id), timeout+4*time.Second)
	read := readBlockedOnLock(t, e, id)

	took, exitErr := srv.Terminate(t, timeout+30*time.Second)
	log := e.output.String()
	require.Contains(t, log, "server: shutdown incomplete", "the lock should have held the shutdown up to its deadline")
	require.LessOrEqual(t, took, exitBound,
		"server exited %s after SIGTERM with SHUTDOWN_TIMEOUT %s", took.Round(time.Millisecond), timeout)

	// With the process gone, the broker has taken back every delivery that
	// was not acked.
	eventually(t, 10*time.Second, 200*time.Millisecond, "no unacked delivery and no consumer", func() bool {
		stats := queueStats(t)[transport.QueueName(id)]
		return stats.unacked == 0 && stats.consumers == 0
	})
	readStatus := read()
	unlock()

	// Nothing was acked that had not committed: after a restart every
	// confirmed message is stored, once.
	e.start(t)
	rows := l.finish(t, e, id)
	t.Logf("SIGTERM to exit took %s (SHUTDOWN_TIMEOUT %s, %v); the blocked read got %s; %d rows; %s",
		took.Round(time.Millisecond), timeout, exitErr, readStatus, rows.total, lastLine(log, "server: shutdown incomplete"))
}

func TestServerTerminatedWithHungRequests(t *testing.T) {
	t.Parallel()
	const timeout = 6 * time.Second
	// exitBound leaves room for a loaded machine. A server that lets the
	// hung requests take the whole budget exits at the deadline with
	// status 1, before its tenants have drained.
	const exitBound = timeout + 500*time.Millisecond
	e := newEnv(t)
	srv := e.start(t, "SHUTDOWN_TIMEOUT="+timeout.String())
	id := e.createTenant(t, "hung-drain", 3)
	idle := e.createTenant(t, "hung-read", 1)

	l := startLoad(t, e, id, 6000, 1200, 1000)
	time.Sleep(time.Second)

	// Two requests that outlast the budget: a read of the idle tenant,
	// whose partition stays locked past the deadline, and a publish whose
	// client stops sending its body.
	unlockIdle := lockPartition(t, e.databaseURL, partitionName(t, e.databaseURL, idle), timeout+3*time.Second)
	read := readBlockedOnLock(t, e, idle)
	upload := stalledUpload(t, e, e.tenantToken(t, id))

	// A short lock gives the busy tenant's workers uncommitted batches
	// that can commit well within the budget once it ends.
	unlock := lockPartition(t, e.databaseURL, partitionName(t, e.databaseURL, id), 2*time.Second)
	time.Sleep(500 * time.Millisecond)
	took, exitErr := srv.Terminate(t, timeout+30*time.Second)
	log := e.output.String()
	require.NoError(t, exitErr, "exit status after SIGTERM; last shutdown line: %s", lastLine(log, "server: shutdown"))
	require.Contains(t, log, "server: stopped", "graceful shutdown did not finish")
	require.NotContains(t, log, "batch abandoned")
	require.LessOrEqual(t, took, exitBound,
		"server exited %s after SIGTERM with SHUTDOWN_TIMEOUT %s", took.Round(time.Millisecond), timeout)
	_, afterSignal, _ := strings.Cut(log, "server: shutting down")
	require.Contains(t, afterSignal, "batch insert succeeded after retries",
		"no batch held up by the lock committed during the shutdown")

	// The workers committed and acked before the channels closed.
	stats := queueStats(t)[transport.QueueName(id)]
	require.Zero(t, stats.unacked, "deliveries still unacked after SIGTERM: %+v", stats)
	require.Zero(t, stats.consumers, "consumers after SIGTERM: %+v", stats)

	// The hung requests ended with an error, not with a success the
	// server could not stand behind.
	readStatus, uploadStatus := read(), upload()
	require.NotEqual(t, "status 200", readStatus)
	require.NotEqual(t, "no response", readStatus)
	require.NotContains(t, uploadStatus, "202", "the stalled publish was accepted")
	unlock()
	unlockIdle()

	// Publishes in flight at SIGTERM were confirmed or failed visibly.
	// None got a 404, which means that the tenant does not exist.
	failures, _, samples := l.http.failures()
	require.Zero(t, failures[http.StatusNotFound], "publishes answered 404 during the shutdown: %q", samples)

	e.start(t)
	rows := l.finish(t, e, id)
	t.Logf("SIGTERM to exit 0 took %s (SHUTDOWN_TIMEOUT %s); the blocked read got %s, the stalled upload %s; "+
		"%d rows; %s; %s", took.Round(time.Millisecond), timeout, readStatus, uploadStatus, rows.total,
		lastLine(log, "server: HTTP requests"), lastLine(log, "server: stopped"))
}

// stalledUpload opens a connection of its own and sends the headers of a
// publish with only the first bytes of its body, as a slow client does.
// The handler then waits for the rest until the server drops the
// connection. The returned function waits for the connection to end and
// describes the response.
func stalledUpload(t *testing.T, e *env, token string) func() string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	const body = `{"messages": [{"payload": {"stalled": true}, "message_id": "stalled-1"}]}`
	_, err = fmt.Fprintf(conn, "POST /api/v1/messages HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", e.addr, token, len(body), body[:20])
	require.NoError(t, err)
	return func() string {
		// The server's ReadTimeout, 30 s, would end the upload by itself.
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(requestTimeout)))
		data, err := io.ReadAll(conn)
		status, _, _ := strings.Cut(string(data), "\r\n")
		switch {
		case err != nil:
			return fmt.Sprintf("%q, then %v", status, err)
		case status == "":
			return "connection closed without a response"
		default:
			return fmt.Sprintf("%q", status)
		}
	}
}

// readBlockedOnLock sends GET /api/v1/messages for the tenant, whose
// partition is locked, and returns once its query waits for the lock. The
// returned function waits for the response and describes it.
func readBlockedOnLock(t *testing.T, e *env, tenantID string) func() string {
	t.Helper()
	done := make(chan string, 1)
	token := e.tenantToken(t, tenantID)
	go func() {
		status, _, err := do(http.MethodGet, e.url("/api/v1/messages?limit=10"), token, nil)
		if err != nil {
			done <- "error: " + err.Error()
			return
		}
		done <- fmt.Sprintf("status %d", status)
	}()
	var result string
	var finished bool
	wait := func() string {
		if !finished {
			finished = true
			select {
			case result = <-done:
			case <-time.After(requestTimeout + 5*time.Second):
				result = "no response"
			}
		}
		return result
	}
	t.Cleanup(func() { wait() })

	withConn(t, e.databaseURL, func(ctx context.Context, conn *pgx.Conn) {
		eventually(t, 10*time.Second, 20*time.Millisecond, "the read to wait for the lock", func() bool {
			var n int
			err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock'
				AND query LIKE '%pg_snapshot_xmin%'`).Scan(&n)
			require.NoError(t, err)
			return n > 0
		})
	})
	return wait
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
