package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/transport"
)

// serverBinary is the server that TestMain builds once.
var serverBinary string

func TestMain(m *testing.M) {
	binary, remove, err := testenv.BuildServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	serverBinary = binary
	code := m.Run()
	remove()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// The helpers below copy the end-to-end tests' way of running the server
// binary, trimmed to what these tests need. They are copied because the e2e
// package is a test package that cannot be imported.

// testServer is a running server process with its own database.
type testServer struct {
	url         string
	databaseURL string
	secret      string
	cmd         *exec.Cmd
	done        chan error
}

// startServer runs the server binary on a free loopback port and waits
// until /ready returns 200. The process is stopped with SIGTERM, and must
// exit with status 0, when the test ends.
func startServer(t *testing.T) *testServer {
	t.Helper()
	s := &testServer{
		databaseURL: testenv.NewDatabase(t),
		secret:      "loadtest-" + testenv.RandomSuffix() + testenv.RandomSuffix() + testenv.RandomSuffix(),
		done:        make(chan error, 1),
	}
	addr := testenv.FreeAddr(t)
	s.url = "http://" + addr
	s.cmd = exec.Command(serverBinary)
	s.cmd.Env = append(os.Environ(),
		"DATABASE_URL="+s.databaseURL,
		"RABBITMQ_URL="+testenv.RequireRabbitMQ(t),
		"HTTP_ADDR="+addr,
		"JWT_SECRET="+s.secret,
		"SHUTDOWN_TIMEOUT=20s",
		"LOG_FORMAT=text",
	)
	out := &testenv.LockedBuffer{}
	s.cmd.Stdout, s.cmd.Stderr = out, out
	require.NoError(t, s.cmd.Start())
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("server output:\n%s", tail(out.String(), 8000))
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-s.done:
			t.Fatalf("server exited before it was ready: %v\n%s", err, out.String())
		default:
		}
		if res, err := http.Get(s.url + "/ready"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				http.DefaultClient.CloseIdleConnections()
				return s
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("server not ready within 60s\n%s", tail(out.String(), 8000))
	return nil
}

func (s *testServer) stop(t *testing.T) {
	t.Helper()
	if s.cmd.ProcessState != nil {
		return
	}
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-s.done:
		require.NoError(t, err, "server exit status after SIGTERM")
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		t.Fatal("server did not exit within 30s of SIGTERM")
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// runHarness runs the command in-process with -json and returns its exit
// status and decoded report.
func runHarness(t *testing.T, args ...string) (int, Report) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append([]string{"-json", "-rabbitmq", testenv.RabbitMQURL(), "-timeout", "45s"}, args...)
	code := run(t.Context(), args, func(string) string { return "" }, &stdout, &stderr)
	var rep Report
	if stdout.Len() > 0 {
		require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep), "report: %s", stdout.String())
	}
	if stderr.Len() > 0 {
		t.Logf("loadtest stderr:\n%s", stderr.String())
	}
	return code, rep
}

// requireExactlyOnce checks that every message was stored exactly once.
func requireExactlyOnce(t *testing.T, rep Report, messages, tenants int) {
	t.Helper()
	require.Empty(t, rep.Error)
	require.Equal(t, messages, rep.Published, "published")
	require.Equal(t, messages, rep.Stored, "stored")
	require.Zero(t, rep.Missing, "missing")
	require.Zero(t, rep.Duplicates, "duplicates")
	require.Zero(t, rep.Unexpected, "unexpected")
	require.Len(t, rep.Tenants, tenants)
	sum := 0
	for _, ts := range rep.Tenants {
		require.Zero(t, ts.Missing, "tenant %s missing", ts.ID)
		require.Zero(t, ts.Duplicates, "tenant %s duplicates", ts.ID)
		sum += ts.Stored
	}
	require.Equal(t, messages, sum, "per-tenant stored adds up")
	require.Positive(t, rep.StoredPerSecond)
	require.Positive(t, rep.LatencyMS.P50)
	require.GreaterOrEqual(t, rep.LatencyMS.P99, rep.LatencyMS.P50)
	require.GreaterOrEqual(t, rep.LatencyMS.Max, rep.LatencyMS.P99)
}

// requireTenantsDeleted checks that the run removed its tenants.
func requireTenantsDeleted(t *testing.T, s *testServer, prefix string) {
	t.Helper()
	a := newAPIClient(s.url, mintAdmin(t, s), 1)
	defer a.close()
	_, err := a.getTenant(t.Context(), prefix+"-0")
	var se *statusError
	require.ErrorAs(t, err, &se)
	require.Equal(t, http.StatusNotFound, se.status)
}

func mintAdmin(t *testing.T, s *testServer) string {
	t.Helper()
	c := Config{JWTSecret: s.secret}
	tok, err := adminToken(&c)
	require.NoError(t, err)
	return tok
}

func TestHarnessAgainstServer(t *testing.T) {
	s := startServer(t)
	common := []string{"-server", s.url, "-jwt-secret", s.secret, "-tenants", "3"}

	t.Run("amqp through the list API", func(t *testing.T) {
		prefix := "lt-amqp-" + testenv.RandomSuffix()
		code, rep := runHarness(t, append(common, "-via", "amqp", "-messages", "2000", "-skew", "0.5",
			"-tenant-prefix", prefix)...)
		require.Equal(t, 0, code)
		requireExactlyOnce(t, rep, 2000, 3)
		require.Equal(t, 1000, rep.Tenants[0].Published, "-skew 0.5 sends half to the first tenant")
		requireTenantsDeleted(t, s, prefix)
	})

	t.Run("http through the database", func(t *testing.T) {
		prefix := "lt-http-" + testenv.RandomSuffix()
		code, rep := runHarness(t, append(common, "-via", "http", "-messages", "2000", "-rate", "4000",
			"-database-url", s.databaseURL, "-tenant-prefix", prefix)...)
		require.Equal(t, 0, code)
		requireExactlyOnce(t, rep, 2000, 3)
		require.Less(t, rep.PublishedPerSecond, 4400.0, "-rate caps the offered load")
		requireTenantsDeleted(t, s, prefix)
	})

	t.Run("phases publish a backlog", func(t *testing.T) {
		prefix := "lt-phase-" + testenv.RandomSuffix()
		phase := func(name string) (int, Report) {
			return runHarness(t, append(common, "-phase", name, "-messages", "600", "-tenant-prefix", prefix)...)
		}
		code, _ := phase(phaseSetup)
		require.Equal(t, 0, code, "setup")
		code, rep := phase(phasePublish)
		require.Equal(t, 0, code, "publish")
		require.Equal(t, 600, rep.Published)
		code, rep = phase(phaseVerify)
		require.Equal(t, 0, code, "verify")
		requireExactlyOnce(t, rep, 600, 3)
		requireTenantsDeleted(t, s, prefix)
	})

	t.Run("missing messages fail the run", func(t *testing.T) {
		prefix := "lt-missing-" + testenv.RandomSuffix()
		code, _ := runHarness(t, append(common, "-phase", phaseSetup, "-tenant-prefix", prefix)...)
		require.Equal(t, 0, code, "setup")
		// Nothing was published, so verify finds every planned message missing.
		code, rep := runHarness(t, append(common, "-phase", phaseVerify, "-messages", "30",
			"-tenant-prefix", prefix, "-timeout", "300ms")...)
		require.Equal(t, 1, code)
		require.Equal(t, 30, rep.Missing)
		requireTenantsDeleted(t, s, prefix)
	})
}

func TestBatchBaseline(t *testing.T) {
	t.Parallel()
	prefix := "lt-base-" + testenv.RandomSuffix()
	code, rep := runHarness(t, "-baseline", "batch", "-messages", "300", "-tenants", "2",
		"-database-url", testenv.NewDatabase(t), "-tenant-prefix", prefix)
	require.Equal(t, 0, code)
	require.Equal(t, "batch", rep.Mode)
	requireExactlyOnce(t, rep, 300, 2)
	require.Equal(t, defaultBaselineWorkers*500, rep.Prefetch, "a full batch per goroutine")
	require.Equal(t, 1, rep.Connections)
}

func TestUnroutableMessagesFailTheRun(t *testing.T) {
	t.Parallel()
	// No queue is bound for these tenants, so the broker returns every
	// message instead of dropping it silently.
	code, rep := runHarness(t, "-phase", phasePublish, "-messages", "5", "-tenants", "1",
		"-tenant-prefix", "lt-noqueue-"+testenv.RandomSuffix())
	require.Equal(t, 1, code)
	require.True(t, strings.Contains(rep.Error, "unroutable"), "error %q", rep.Error)
	require.Zero(t, rep.Published)
}

func TestBrokerBaselineForDuration(t *testing.T) {
	t.Parallel()
	code, rep := runHarness(t, "-baseline", "broker", "-duration", "300ms", "-rate", "1000", "-tenants", "2",
		"-tenant-prefix", "lt-broker-"+testenv.RandomSuffix())
	require.Equal(t, 0, code)
	require.Equal(t, "broker", rep.Mode)
	// Only an upper bound: how many messages a loaded machine publishes in
	// 300 ms varies, but the rate must never let through more than 300.
	require.Positive(t, rep.Published)
	require.LessOrEqual(t, rep.Published, 330, "300ms at 1000 messages per second")
	requireExactlyOnce(t, rep, rep.Published, 2)
}

func TestBrokerBaselineDrainsBacklog(t *testing.T) {
	t.Parallel()
	code, rep := runHarness(t, "-baseline", "broker", "-backlog", "-messages", "400", "-tenants", "2",
		"-tenant-prefix", "lt-backlog-"+testenv.RandomSuffix())
	require.Equal(t, 0, code)
	requireExactlyOnce(t, rep, 400, 2)
	require.Positive(t, rep.StoredPerSecond)
	// Nothing is consumed while publishing, so the first message waits at
	// least as long as publishing takes, and the first half of them at
	// least half as long.
	publishMS := rep.PublishSeconds * 1000
	require.GreaterOrEqual(t, rep.LatencyMS.Max, 0.9*publishMS, "the first message was consumed before publishing ended")
	require.GreaterOrEqual(t, rep.LatencyMS.P50, 0.4*publishMS, "half the messages were consumed while publishing")
}

func TestBrokerBaselineOverSeveralConnections(t *testing.T) {
	t.Parallel()
	code, rep := runHarness(t, "-baseline", "broker", "-messages", "300", "-tenants", "3",
		"-connections", "3", "-prefetch", "2", "-tenant-prefix", "lt-conns-"+testenv.RandomSuffix())
	require.Equal(t, 0, code)
	requireExactlyOnce(t, rep, 300, 3)
	require.Equal(t, 2, rep.Prefetch, "the report names the prefetch")
	require.Equal(t, 3, rep.Connections, "the report names the connections")
	require.Equal(t, defaultBaselineWorkers, rep.Workers)
}

func TestBaselineClosesConnectionsWhenDatabaseFails(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1. TestMain's leak check fails the package if
	// the broker connections dialled before the database stay open.
	code, rep := runHarness(t, "-baseline", "batch", "-messages", "10", "-tenants", "2", "-connections", "2",
		"-database-url", "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=5")
	require.Equal(t, 1, code, "the run fails")
	require.Zero(t, rep.Published, "nothing is published without a database")
}

func TestBaselineSpreadsTenantsOverConnections(t *testing.T) {
	t.Parallel()
	first, second, third := new(transport.Broker), new(transport.Broker), new(transport.Broker)
	b := &baseline{broker: first, extra: []*transport.Broker{second, third}}
	for tenant, want := range []*transport.Broker{first, second, third, first, second} {
		require.Same(t, want, b.consumer(tenant), "tenant %d", tenant)
	}
	require.Same(t, first, (&baseline{broker: first}).consumer(4), "one connection takes every tenant")
}

func TestProgressOnlyOnTerminals(t *testing.T) {
	t.Parallel()
	require.False(t, isTerminal(&bytes.Buffer{}), "a buffer")
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	require.False(t, isTerminal(w), "a pipe")
	require.IsType(t, noProgress{}, progressFactory{w: w}.newProgress("x", 10))
}

func TestAMQPPublisherClosedConnection(t *testing.T) {
	t.Parallel()
	conn, err := dialAMQP(testenv.RequireRabbitMQ(t))
	require.NoError(t, err)
	p, err := newAMQPPublisher(conn, []string{"lt-closed-" + testenv.RandomSuffix()}, 64, 10)
	require.NoError(t, err)
	require.NoError(t, conn.Close())

	done := make(chan error, 1)
	go func() { done <- publish(t.Context(), p, job{n: 3}) }()
	select {
	case err := <-done:
		require.Error(t, err, "publishing on a closed connection")
	case <-time.After(10 * time.Second):
		t.Fatal("publish did not return within 10s of the connection closing")
	}
	require.ErrorContains(t, p.wait(t.Context(), "x", nil), "AMQP channel closed")
	require.NoError(t, p.close())
}
