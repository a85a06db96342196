package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/require"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/persistence"
)

func gatherText(t *testing.T, env *testEnv) string {
	t.Helper()
	families, err := env.reg.Gather()
	require.NoError(t, err)
	var buf bytes.Buffer
	for _, f := range families {
		_, err := expfmt.MetricFamilyToText(&buf, f)
		require.NoError(t, err)
	}
	return buf.String()
}

func TestUnknownRouteIsProblem404(t *testing.T) {
	t.Parallel()
	env := setup(t)
	for _, path := range []string{"/", "/nope", "/api/v1/tenants/", "/api/v1/Tenants", "/api/v1/tenants/alpha/extra", "/health/"} {
		rec := env.do(t, request{method: http.MethodGet, path: path, token: adminToken(t)})
		requireProblem(t, rec, http.StatusNotFound, "no route")
	}
}

func TestWrongMethodIsProblem405(t *testing.T) {
	t.Parallel()
	env := setup(t)
	cases := []struct {
		method, path, allow string
	}{
		{http.MethodPatch, "/api/v1/tenants", "GET, OPTIONS, POST"},
		{http.MethodPost, "/api/v1/tenants/alpha", "DELETE, GET, OPTIONS"},
		{http.MethodDelete, "/api/v1/messages", "GET, OPTIONS, POST"},
		{http.MethodGet, "/api/v1/tenants/alpha/config/concurrency", "OPTIONS, PUT"},
		{http.MethodPost, "/health", "GET, OPTIONS"},
		{"BREW", "/metrics", "GET, OPTIONS"},
	}
	for _, tc := range cases {
		rec := env.do(t, request{method: tc.method, path: tc.path, token: adminToken(t)})
		requireProblem(t, rec, http.StatusMethodNotAllowed, "allowed: "+tc.allow)
		require.Equal(t, tc.allow, rec.Header().Get("Allow"))
	}
	require.Contains(t, gatherText(t, env), `messaging_http_requests_total{code="405",method="other",route="unmatched"} 1`)
}

func TestOptionsListsMethods(t *testing.T) {
	t.Parallel()
	env := setup(t)
	rec := env.do(t, request{method: http.MethodOptions, path: "/api/v1/tenants/alpha"})
	require.Equal(t, http.StatusNoContent, rec.Code)
	require.Equal(t, "DELETE, GET, OPTIONS", rec.Header().Get("Allow"))
}

func TestPanicIsProblem500WithoutStack(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.tenants.panicOn = "List"

	rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: adminToken(t)})
	requireProblem(t, rec, http.StatusInternalServerError, "internal error")
	require.NotContains(t, rec.Body.String(), "boom")
	require.NotContains(t, rec.Body.String(), "goroutine")

	logs := env.logs.String()
	require.Contains(t, logs, "handler panicked")
	require.Contains(t, logs, "boom in List")
	require.Contains(t, logs, "goroutine", "the stack is logged")
	require.Contains(t, logs, `"route":"/api/v1/tenants"`)
	require.Contains(t, gatherText(t, env), `messaging_http_requests_total{code="500",method="GET",route="/api/v1/tenants"} 1`)

	env.tenants.panicOn = ""
	rec = env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: adminToken(t)})
	require.Equal(t, http.StatusOK, rec.Code, "the handler keeps serving")
}

func TestAbortHandlerPanicPropagates(t *testing.T) {
	t.Parallel()
	env := setup(t)
	abort := &abortingTenants{fakeTenants: env.tenants}
	handler, err := NewHandler(env.cfg, abort, env.pub, env.msgs, nil, nil, nil, discardLogger())
	require.NoError(t, err)

	r := httptest.NewRequest(http.MethodGet, "/api/v1/tenants", nil)
	r.Header.Set("Authorization", "Bearer "+adminToken(t))
	require.PanicsWithValue(t, http.ErrAbortHandler, func() {
		handler.ServeHTTP(httptest.NewRecorder(), r)
	})
}

// abortingTenants aborts the response the way net/http expects.
type abortingTenants struct{ *fakeTenants }

func (a *abortingTenants) List(context.Context) ([]TenantView, error) {
	panic(http.ErrAbortHandler)
}

func TestMetricsUseRouteTemplates(t *testing.T) {
	t.Parallel()
	env := setup(t)
	admin := adminToken(t)
	for _, path := range []string{"/api/v1/tenants/alpha", "/api/v1/tenants/beta", "/api/v1/tenants/ghost", "/scan/1", "/scan/2"} {
		env.do(t, request{method: http.MethodGet, path: path, token: admin})
	}

	text := gatherText(t, env)
	require.Contains(t, text, `messaging_http_requests_total{code="200",method="GET",route="/api/v1/tenants/:id"} 2`)
	require.Contains(t, text, `messaging_http_requests_total{code="404",method="GET",route="/api/v1/tenants/:id"} 1`)
	require.Contains(t, text, `messaging_http_requests_total{code="404",method="GET",route="unmatched"} 2`)
	require.Contains(t, text, `messaging_http_request_duration_seconds_count{method="GET",route="/api/v1/tenants/:id"} 3`)
	require.NotContains(t, text, "alpha")
	require.NotContains(t, text, "/scan")
}

func TestRequestLogNeverContainsToken(t *testing.T) {
	t.Parallel()
	env := setup(t)
	token := adminToken(t)
	env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants/alpha", token: token})
	env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: token + "x"})
	env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", auth: "Basic c2VjcmV0OnNlY3JldA=="})

	logs := env.logs.String()
	require.Contains(t, logs, `"msg":"api: request"`)
	require.Contains(t, logs, `"route":"/api/v1/tenants/:id"`)
	require.Contains(t, logs, `"status":401`)
	require.Contains(t, logs, `"duration_ms":`)
	require.NotContains(t, logs, token[:20])
	require.NotContains(t, logs, "c2VjcmV0")
	require.NotContains(t, logs, "Bearer")
	require.NotContains(t, logs, "Authorization")
}

func TestResponsesCarrySafetyHeaders(t *testing.T) {
	t.Parallel()
	env := setup(t)
	for _, rec := range []*httptest.ResponseRecorder{
		env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: adminToken(t)}),
		env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants"}),
	} {
		require.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"))
		require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	env := setup(t)
	rec := env.do(t, request{method: http.MethodGet, path: "/health"})
	require.Equal(t, http.StatusOK, rec.Code)
	require.JSONEq(t, `{"status": "ok"}`, rec.Body.String())
}

func TestReadyWhenEveryCheckPasses(t *testing.T) {
	t.Parallel()
	ok := func(context.Context) error { return nil }
	env := setup(t, withChecks(ReadinessCheck{Name: "postgres", Check: ok}, ReadinessCheck{Name: "rabbitmq", Check: ok}))
	rec := env.do(t, request{method: http.MethodGet, path: "/ready"})
	require.Equal(t, http.StatusOK, rec.Code)
	require.JSONEq(t, `{"status": "ready"}`, rec.Body.String())
}

func TestReadyReportsFailedChecks(t *testing.T) {
	t.Parallel()
	env := setup(t, withChecks(
		ReadinessCheck{Name: "postgres", Check: func(context.Context) error { return nil }},
		ReadinessCheck{Name: "rabbitmq", Check: func(context.Context) error { return errors.New("connection refused") }},
		ReadinessCheck{Name: "consumers", Check: func(context.Context) error { panic("bad check") }},
		ReadinessCheck{Name: "slow", Check: func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}},
	))

	start := time.Now()
	rec := env.do(t, request{method: http.MethodGet, path: "/ready"})
	elapsed := time.Since(start)
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Less(t, elapsed, readinessTimeout+time.Second)

	report := decodeJSON[readinessReport](t, rec)
	require.Equal(t, "unavailable", report.Status)
	require.Len(t, report.Failed, 3)
	require.Equal(t, "connection refused", report.Failed["rabbitmq"])
	require.Contains(t, report.Failed["consumers"], "panicked")
	require.NotEmpty(t, report.Failed["slow"])
	require.NotContains(t, report.Failed, "postgres")
	require.Contains(t, env.logs.String(), "readiness check failed")
}

func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.do(t, request{method: http.MethodGet, path: "/health"})
	rec := env.do(t, request{method: http.MethodGet, path: "/metrics"})
	require.Equal(t, http.StatusOK, rec.Code)
	require.True(t, strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain"), rec.Header().Get("Content-Type"))
	require.Contains(t, rec.Body.String(), "# TYPE messaging_http_requests_total counter")
	require.Contains(t, rec.Body.String(), "# TYPE messaging_http_request_duration_seconds histogram")
}

func TestRequestTargetMustBeAbsolutePath(t *testing.T) {
	t.Parallel()
	env := setup(t)
	r := httptest.NewRequest(http.MethodGet, "/health", nil)
	r.URL.Path = ""
	requireProblem(t, newRecorder(env, r), http.StatusNotFound, "absolute path")

	r = httptest.NewRequest(http.MethodOptions, "/health", nil)
	r.URL.Path = "*"
	requireProblem(t, newRecorder(env, r), http.StatusNotFound, "absolute path")
}

func TestNewServerSetsTimeouts(t *testing.T) {
	t.Parallel()
	h := http.NotFoundHandler()
	srv := NewServer("127.0.0.1:0", h)
	require.Equal(t, "127.0.0.1:0", srv.Addr)
	require.NotNil(t, srv.Handler)
	require.Equal(t, ServerReadHeaderTimeout, srv.ReadHeaderTimeout)
	require.Equal(t, ServerReadTimeout, srv.ReadTimeout)
	require.Equal(t, ServerWriteTimeout, srv.WriteTimeout)
	require.Equal(t, ServerIdleTimeout, srv.IdleTimeout)
	require.Equal(t, ServerMaxHeaderBytes, srv.MaxHeaderBytes)
	for _, d := range []time.Duration{srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout} {
		require.Positive(t, d)
	}
}

func TestBackendErrorsMapToStatus(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		err    error
		status int
		detail string
	}{
		{"timeout", fmt.Errorf("querying: %w", context.DeadlineExceeded), 503, "timed out"},
		{"not found", fmt.Errorf("getting: %w", persistence.ErrTenantNotFound), 404, "tenant not found"},
		{"other", errors.New("disk on fire"), 500, "internal error while trying to list tenants"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := setup(t)
			env.tenants.err = tc.err
			rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: adminToken(t)})
			requireProblem(t, rec, tc.status, tc.detail)
		})
	}
}

func TestCanceledRequestIsLoggedAtDebug(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.tenants.err = context.Canceled
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/v1/tenants", nil)
	r.Header.Set("Authorization", "Bearer "+adminToken(t))

	requireProblem(t, newRecorder(env, r), http.StatusServiceUnavailable, "canceled")
	require.Contains(t, env.logs.String(), `"level":"DEBUG","msg":"api: request canceled"`)
	require.NotContains(t, env.logs.String(), `"level":"ERROR"`)
}

func TestRepeatedBackendErrorsAreRateLimited(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.tenants.err = errors.New("connection reset")
	token := adminToken(t)
	for range 20 {
		rec := env.do(t, request{method: http.MethodGet, path: "/api/v1/tenants", token: token})
		require.Equal(t, http.StatusInternalServerError, rec.Code)
	}
	require.Equal(t, 1, strings.Count(env.logs.String(), `"msg":"api: request failed"`))
}

func TestLogLimiterReportsSuppressed(t *testing.T) {
	t.Parallel()
	var buf testenv.LockedBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	l := newLogLimiter()
	for range 3 {
		l.log(context.Background(), logger, slog.LevelWarn, "api: broker unavailable", "publish")
	}
	l.log(context.Background(), logger, slog.LevelWarn, "api: broker unavailable", "list")
	require.Equal(t, 2, strings.Count(buf.String(), "broker unavailable"), "one line per op")

	l.kinds["WARN|api: broker unavailable|publish"].last = time.Now().Add(-2 * logInterval)
	l.log(context.Background(), logger, slog.LevelWarn, "api: broker unavailable", "publish")
	require.Contains(t, buf.String(), `"suppressed":2`)
}
