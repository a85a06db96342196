//go:build faults

package faults

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/config"
)

// batchRetriesMetric counts batch inserts retried after a transient
// database error.
const batchRetriesMetric = "messaging_batch_retries_total"

// maxPoolConns is the server's default pool size, DATABASE_MAX_CONNS,
// which the tests leave unset.
func maxPoolConns() int { return config.Default().DatabaseMaxConns }

// lockPartition takes an ACCESS EXCLUSIVE lock on the partition for hold
// in a psql session, as an operator running a long migration would. It
// returns once the lock is granted, with a function that waits for the
// session to commit.
func lockPartition(t *testing.T, databaseURL, partition string, hold time.Duration) func() {
	t.Helper()
	requireTool(t, "psql", "install the Debian package postgresql-client")
	script := fmt.Sprintf("BEGIN;\nLOCK TABLE %s IN ACCESS EXCLUSIVE MODE;\nSELECT pg_sleep(%f);\nCOMMIT;\n",
		pgx.Identifier{partition}.Sanitize(), hold.Seconds())
	done := make(chan error, 1)
	var out string
	go func() {
		var err error
		out, err = psqlRun(databaseURL, script)
		done <- err
	}()
	var finished bool
	wait := func() {
		t.Helper()
		if finished {
			return
		}
		finished = true
		select {
		case err := <-done:
			require.NoError(t, err, "psql: %s", out)
		case <-time.After(hold + commandTimeout):
			t.Fatalf("psql session holding the lock on %s did not end", partition)
		}
	}
	t.Cleanup(wait)

	withConn(t, databaseURL, func(ctx context.Context, conn *pgx.Conn) {
		eventually(t, 10*time.Second, 20*time.Millisecond, "ACCESS EXCLUSIVE lock on "+partition, func() bool {
			var n int
			err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
				WHERE c.relname = $1 AND l.mode = 'AccessExclusiveLock' AND l.granted`, partition).Scan(&n)
			require.NoError(t, err)
			return n > 0
		})
	})
	return wait
}

func TestDatabaseConnectionsTerminatedUnderLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := e.start(t)
	id := e.createTenant(t, "dbterm", 3)
	partition := partitionName(t, e.databaseURL, id)

	l := startLoad(t, e, id, 12000, 2400, 1000)
	time.Sleep(time.Second)

	// End every server connection six times, 700 ms apart.
	terminated := 0
	for range 6 {
		terminated += terminateServerConnections(t, e.databaseURL)
		time.Sleep(700 * time.Millisecond)
	}
	// Then hold the tenant's partition for 3 s: batches wait or time out
	// and are retried.
	unlock := lockPartition(t, e.databaseURL, partition, 3*time.Second)
	lockedAt := time.Now()
	unlock()
	locked := time.Since(lockedAt)

	rows := l.finish(t, e, id)
	srv.RequireRunning(t)
	status, body := e.ready()
	require.Equal(t, http.StatusOK, status, body)

	retries := e.metrics(t)[fmt.Sprintf(`%s{tenant=%q}`, batchRetriesMetric, id)]
	require.Positive(t, retries, "no batch was retried: the terminations missed every insert")
	conns := serverConnections(t, e.databaseURL)
	require.LessOrEqual(t, conns, maxPoolConns(), "server sessions on the test database after the faults")
	t.Logf("terminated %d server sessions over 6 rounds, locked %s for %s; %d batch retries; "+
		"%d server sessions left (pool max %d); %d rows stored", terminated, partition,
		locked.Round(time.Millisecond), int(retries), conns, maxPoolConns(), rows.total)
}

func TestDatabaseRestartUnderLoad(t *testing.T) {
	// Not parallel: the restart ends every session of every database.
	if os.Getenv("FAULTS_DB_RESTART") != "1" {
		t.Skip("restarts the machine's PostgreSQL, which breaks every other test using it; " +
			"set FAULTS_DB_RESTART=1 to run it")
	}
	e := newEnv(t)
	srv := e.start(t)
	id := e.createTenant(t, "dbrestart", 3)

	l := startLoad(t, e, id, 10000, 2000, 1000)
	time.Sleep(2 * time.Second)
	began := time.Now()
	restartPostgres(t)
	restarted := time.Since(began)
	eventually(t, 60*time.Second, 200*time.Millisecond, "/ready 200 after the PostgreSQL restart", func() bool {
		status, _ := e.ready()
		return status == http.StatusOK
	})

	rows := l.finish(t, e, id)
	srv.RequireRunning(t)
	require.Positive(t, e.metrics(t)[fmt.Sprintf(`%s{tenant=%q}`, batchRetriesMetric, id)])
	conns := serverConnections(t, e.databaseURL)
	require.LessOrEqual(t, conns, maxPoolConns())
	require.True(t, strings.Contains(e.output.String(), "batch insert failed, retrying"),
		"the server log has no retried batch")
	t.Logf("PostgreSQL restart took %s; %d rows stored; %d server sessions after", restarted.Round(time.Millisecond),
		rows.total, conns)
}

func TestPublishDuringDatabaseLossAnswers503(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.start(t)
	id := e.createTenant(t, "dbpub", 2)

	// POST /api/v1/messages looks the tenant up in the database first. A
	// lost database connection is transient, so a client must get 503 and
	// retry, not 500.
	hp := newHTTPProducer(e, e.tenantToken(t, id), id, 3000, 500)
	hp.batch = 10
	wait := hp.start(t)
	time.Sleep(500 * time.Millisecond)
	for range 15 {
		terminateServerConnections(t, e.databaseURL)
		time.Sleep(300 * time.Millisecond)
	}
	require.NoError(t, wait())
	waitDrained(t, id)
	requireExactlyOnce(t, e.databaseURL, id, hp.confirmed.snapshot())

	failures, _, samples := hp.failures()
	t.Logf("HTTP failures by status %v, first %q", failures, samples)
	if failures[http.StatusInternalServerError] > 0 {
		t.Fatalf("POST /api/v1/messages returned 500, not 503, when its tenant lookup "+
			"hit a terminated database connection (%d of %d requests)",
			failures[http.StatusInternalServerError], hp.count/hp.batch)
	}
	for status := range failures {
		require.Equal(t, http.StatusServiceUnavailable, status, "HTTP failures by status %v", failures)
	}
}
