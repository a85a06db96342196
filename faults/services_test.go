//go:build faults

package faults

import (
	"context"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/transport"
)

// commandTimeout bounds every rabbitmqctl, psql and pg_ctlcluster call.
const commandTimeout = 90 * time.Second

// requireTool skips the test, or fails it when CI is set, when a command
// line tool is not installed.
func requireTool(t *testing.T, name, how string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	msg := name + " not found; " + how
	if testenv.InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// run runs a command with commandTimeout and returns its combined output.
func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func rabbitmqctl(t *testing.T, args ...string) string {
	t.Helper()
	requireTool(t, "rabbitmqctl", "install RabbitMQ (Debian package rabbitmq-server)")
	out, err := run("rabbitmqctl", args...)
	require.NoError(t, err, "rabbitmqctl %s: %s", strings.Join(args, " "), out)
	return out
}

// queueStat is one line of rabbitmqctl list_queues.
type queueStat struct {
	ready, unacked, consumers int
}

// queueStats lists every queue of the default virtual host. Unlike a
// passive declare it also counts deliveries not yet acked.
func queueStats(t *testing.T) map[string]queueStat {
	t.Helper()
	out := rabbitmqctl(t, "list_queues", "-q", "--no-table-headers",
		"name", "messages_ready", "messages_unacknowledged", "consumers")
	stats := make(map[string]queueStat)
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		var s queueStat
		var errs [3]error
		s.ready, errs[0] = strconv.Atoi(f[1])
		s.unacked, errs[1] = strconv.Atoi(f[2])
		s.consumers, errs[2] = strconv.Atoi(f[3])
		if errs[0] == nil && errs[1] == nil && errs[2] == nil {
			stats[f[0]] = s
		}
	}
	return stats
}

// stopBroker stops the RabbitMQ application (the Erlang node keeps
// running) and makes sure it is started again when the test ends.
func stopBroker(t *testing.T) {
	t.Helper()
	rabbitmqctl(t, "stop_app")
	t.Cleanup(func() {
		if brokerUp() {
			return
		}
		if out, err := run("rabbitmqctl", "start_app"); err != nil {
			t.Errorf("restore broker: rabbitmqctl start_app: %v: %s", err, out)
		}
		if out, err := run("rabbitmqctl", "await_startup", "--timeout", "60"); err != nil {
			t.Errorf("restore broker: rabbitmqctl await_startup: %v: %s", err, out)
		}
	})
}

func startBroker(t *testing.T) {
	t.Helper()
	rabbitmqctl(t, "start_app")
	rabbitmqctl(t, "await_startup", "--timeout", "60")
}

// brokerUp reports whether the AMQP port accepts connections.
func brokerUp() bool {
	u, err := url.Parse(testenv.RabbitMQURL())
	if err != nil {
		return false
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "5672")
	}
	c, err := net.DialTimeout("tcp", host, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// deleteQueues removes the queues a test may leave behind.
func deleteQueues(t *testing.T, rabbitURL string, tenantIDs ...string) {
	conn, err := amqp.DialConfig(rabbitURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Logf("clean up queues: %v", err)
		return
	}
	defer conn.Close()
	for _, id := range tenantIDs {
		for _, q := range []string{transport.QueueName(id), transport.DeadLetterQueueName(id)} {
			ch, err := conn.Channel()
			if err != nil {
				return
			}
			_, _ = ch.QueueDelete(q, false, false, false)
			_ = ch.Close()
		}
	}
}

// databaseName returns the database of a postgres:// URL.
func databaseName(t *testing.T, databaseURL string) string {
	t.Helper()
	u, err := url.Parse(databaseURL)
	require.NoError(t, err)
	return strings.TrimPrefix(u.Path, "/")
}

// psql runs script in a psql session on the database, as an operator
// would, and fails the test when any statement fails.
func psql(t *testing.T, databaseURL, script string) string {
	t.Helper()
	requireTool(t, "psql", "install the Debian package postgresql-client")
	out, err := psqlRun(databaseURL, script)
	require.NoError(t, err, "psql: %s", out)
	return out
}

func psqlRun(databaseURL, script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", databaseURL)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// checkApplication is the application_name of the tests' own sessions,
// which serverConnections leaves out.
const checkApplication = "faults-check"

// withConn runs fn on a new connection to the database and closes it. A
// new connection per check keeps the checks working across a PostgreSQL
// restart and leaves no session of the test open for long.
func withConn(t *testing.T, databaseURL string, fn func(ctx context.Context, conn *pgx.Conn)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(databaseURL)
	require.NoError(t, err)
	cfg.RuntimeParams["application_name"] = checkApplication
	conn, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	fn(ctx, conn)
}

// partitionName returns the name of the tenant's partition.
func partitionName(t *testing.T, databaseURL, tenantID string) string {
	t.Helper()
	var name string
	withConn(t, databaseURL, func(ctx context.Context, conn *pgx.Conn) {
		err := conn.QueryRow(ctx, `SELECT partition_name FROM tenants WHERE id = $1`, tenantID).Scan(&name)
		require.NoError(t, err)
	})
	return name
}

// serverConnections counts the sessions on the test database that are not
// the tests' own checks or psql sessions.
func serverConnections(t *testing.T, databaseURL string) int {
	t.Helper()
	var n int
	withConn(t, databaseURL, func(ctx context.Context, conn *pgx.Conn) {
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name NOT IN ($1, 'psql')`,
			checkApplication).Scan(&n)
		require.NoError(t, err)
	})
	return n
}

// terminateServerConnections ends every other session on the test database
// with pg_terminate_backend and returns how many it ended.
func terminateServerConnections(t *testing.T, databaseURL string) int {
	t.Helper()
	db := databaseName(t, databaseURL)
	out := psql(t, testenv.DatabaseURL(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = '`+db+`' AND pid <> pg_backend_pid();`)
	n, err := strconv.Atoi(strings.TrimSpace(out))
	require.NoError(t, err, "psql output %q", out)
	return n
}

// restartPostgres restarts the local PostgreSQL cluster with pg_ctlcluster.
func restartPostgres(t *testing.T) {
	t.Helper()
	requireTool(t, "pg_ctlcluster", "install the Debian package postgresql-common")
	entries, err := os.ReadDir("/etc/postgresql")
	require.NoError(t, err)
	require.Len(t, entries, 1, "expected one PostgreSQL version under /etc/postgresql")
	version := entries[0].Name()
	t.Cleanup(func() {
		if out, err := run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"); err != nil &&
			!strings.Contains(out, "already running") {
			t.Errorf("restore PostgreSQL: %v: %s", err, out)
		}
	})
	out, err := run("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart")
	require.NoError(t, err, "pg_ctlcluster restart: %s", out)
}
