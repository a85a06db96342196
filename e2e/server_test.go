package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/api"
	"github.com/go-messaging-system/messaging/internal/testenv"
)

// serverBinary is the server built once by TestMain.
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
	os.Exit(code)
}

// env is one test's server environment.
type env struct {
	databaseURL string
	rabbitURL   string
	secret      []byte
	addr        string
	admin       string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{
		databaseURL: testenv.NewDatabase(t),
		rabbitURL:   testenv.RequireRabbitMQ(t),
		secret:      []byte(testenv.RandomSuffix() + testenv.RandomSuffix() + testenv.RandomSuffix()),
		addr:        testenv.FreeAddr(t),
	}
	e.admin = e.token(t, api.Claims{Role: api.RoleAdmin})
	return e
}

func (e *env) token(t *testing.T, c api.Claims) string {
	t.Helper()
	tok, err := api.SignToken(e.secret, c, time.Hour)
	require.NoError(t, err)
	return tok
}

func (e *env) url(path string) string { return "http://" + e.addr + path }

// start runs the server binary and waits until /ready returns 200. The
// server's output is logged when the test fails.
func (e *env) start(t *testing.T, extraEnv ...string) *testenv.Server {
	t.Helper()
	vars := append([]string{
		"DATABASE_URL=" + e.databaseURL,
		"RABBITMQ_URL=" + e.rabbitURL,
		"HTTP_ADDR=" + e.addr,
		"JWT_SECRET=" + string(e.secret),
		"TENANT_SYNC_INTERVAL=1s",
		"SHUTDOWN_TIMEOUT=20s",
		"LOG_FORMAT=text",
	}, extraEnv...)
	out := &testenv.LockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server output:\n%s", tail(out.String(), 8000))
		}
	})
	return testenv.StartServer(t, serverBinary, vars, out, e.url("/ready"), 60*time.Second)
}

func readAll(t *testing.T, res *http.Response) string {
	t.Helper()
	data, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return string(data)
}

func testLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// call sends a JSON request and decodes a JSON response into out (when not
// nil), requiring the status want.
func call(t *testing.T, method, url, token string, body any, want int, out any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		require.NoError(t, err)
		r = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	require.NoError(t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.Equal(t, want, res.StatusCode, "%s %s: %s", method, url, data)
	if out != nil {
		require.NoError(t, json.Unmarshal(data, out), "%s %s: %s", method, url, data)
	}
}

// eventually polls cond every 100ms until it returns true or timeout ends.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}
