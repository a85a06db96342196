//go:build faults

package faults

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/api"
	"github.com/go-messaging-system/messaging/internal/testenv"
)

const (
	// requestTimeout bounds every HTTP request of the tests.
	requestTimeout = 20 * time.Second
	// shutdownTimeout is the SHUTDOWN_TIMEOUT of every server started here.
	shutdownTimeout = 10 * time.Second
	// readyTimeout bounds the wait for a started server's /ready.
	readyTimeout = 60 * time.Second
)

// env is one test's server environment: its own database, listen address
// and JWT secret. A restarted server reuses all three.
type env struct {
	databaseURL string
	rabbitURL   string
	secret      []byte
	addr        string
	admin       string
	// output collects the log of every server process of the test.
	output *testenv.LockedBuffer
	// tenants are the ids createTenant made, whose queues are deleted when
	// the test ends.
	tenants []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{
		databaseURL: testenv.NewDatabase(t),
		rabbitURL:   testenv.RequireRabbitMQ(t),
		secret:      []byte(testenv.RandomSuffix() + testenv.RandomSuffix() + testenv.RandomSuffix()),
		addr:        testenv.FreeAddr(t),
		output:      &testenv.LockedBuffer{},
	}
	e.admin = e.token(t, api.Claims{Role: api.RoleAdmin})
	// Registered before any server starts, so it runs after every server
	// process is gone: a running server would declare the queues again.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server output:\n%s", tail(e.output.String(), 12000))
		}
		saveServerLog(t, e.output.String())
		deleteQueues(t, e.rabbitURL, e.tenants...)
	})
	return e
}

// saveServerLog writes the server output of the test to
// $FAULTS_SERVER_LOG_DIR/<test name>.log when that variable is set.
func saveServerLog(t *testing.T, log string) {
	dir := os.Getenv("FAULTS_SERVER_LOG_DIR")
	if dir == "" {
		return
	}
	path := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".log")
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Logf("save server log: %v", err)
	}
}

func (e *env) token(t *testing.T, c api.Claims) string {
	t.Helper()
	tok, err := api.SignToken(e.secret, c, time.Hour)
	require.NoError(t, err)
	return tok
}

func (e *env) url(path string) string { return "http://" + e.addr + path }

// start runs the server binary and waits until /ready returns 200. Each
// of extra is a NAME=value that overrides the test's default.
func (e *env) start(t *testing.T, extra ...string) *testenv.Server {
	t.Helper()
	vars := []string{
		"DATABASE_URL=" + e.databaseURL,
		"RABBITMQ_URL=" + e.rabbitURL,
		"HTTP_ADDR=" + e.addr,
		"JWT_SECRET=" + string(e.secret),
		"TENANT_SYNC_INTERVAL=1s",
		"SHUTDOWN_TIMEOUT=" + shutdownTimeout.String(),
		"LOG_FORMAT=text",
	}
	vars = append(vars, extra...) // the last value of a name wins
	fmt.Fprintf(e.output, "==> server start at %s\n", time.Now().Format(time.RFC3339Nano))
	return testenv.StartServer(t, serverBinary, vars, e.output, e.url("/ready"), readyTimeout)
}

// ready returns the status code and body of GET /ready, or 0 when the
// request failed.
func (e *env) ready() (int, string) {
	res, err := httpClient.Get(e.url("/ready"))
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// do sends a JSON request and returns the status code and the body. It does
// not touch t, so producer goroutines use it too.
func do(method, url, token string, body any) (int, []byte, error) {
	status, _, data, err := doWithHeader(method, url, token, body)
	return status, data, err
}

// doWithHeader is do that also returns the response header.
func doWithHeader(method, url, token string, body any) (int, http.Header, []byte, error) {
	var r io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return 0, nil, nil, err
		}
		r = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return 0, nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, data, err
}

// call sends a JSON request, requires the status want and decodes the
// response into out when out is not nil.
func call(t *testing.T, method, url, token string, body any, want int, out any) {
	t.Helper()
	status, data, err := do(method, url, token, body)
	require.NoError(t, err, "%s %s", method, url)
	require.Equal(t, want, status, "%s %s: %s", method, url, data)
	if out != nil {
		require.NoError(t, json.Unmarshal(data, out), "%s %s: %s", method, url, data)
	}
}

type tenantView struct {
	ID             string `json:"id"`
	WorkerCount    int    `json:"worker_count"`
	WorkersRunning int    `json:"workers_running"`
}

// createTenant creates a tenant with a fresh id and returns the id.
func (e *env) createTenant(t *testing.T, prefix string, workers int) string {
	t.Helper()
	id := testenv.TenantID(prefix)
	var v tenantView
	call(t, http.MethodPost, e.url("/api/v1/tenants"), e.admin,
		map[string]any{"id": id, "name": "Fault test " + id, "worker_count": workers}, http.StatusCreated, &v)
	require.Equal(t, id, v.ID)
	e.tenants = append(e.tenants, id)
	return id
}

func (e *env) tenantToken(t *testing.T, id string) string {
	return e.token(t, api.Claims{Role: api.RoleTenant, TenantID: id})
}

// metrics returns every sample of GET /metrics by its series, such as
// `messaging_workers_live{tenant="a"}`.
func (e *env) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	status, data, err := do(http.MethodGet, e.url("/metrics"), "", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status)
	samples := make(map[string]float64)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cut := strings.LastIndexByte(line, ' ')
		if cut < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[cut+1:], 64)
		if err == nil {
			samples[line[:cut]] = v
		}
	}
	require.NoError(t, sc.Err())
	return samples
}

// metricsText returns the body of GET /metrics.
func (e *env) metricsText(t *testing.T) string {
	t.Helper()
	status, data, err := do(http.MethodGet, e.url("/metrics"), "", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status)
	return string(data)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// eventually polls cond every interval until it returns true or timeout
// passes.
func eventually(t *testing.T, timeout, interval time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(interval)
	}
}
