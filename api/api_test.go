package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/go-messaging-system/messaging/internal/testenv"
	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var testSecret = []byte("0123456789abcdef0123456789abcdef-test-secret")

// fakeTenants keeps tenants in memory.
type fakeTenants struct {
	mu      sync.Mutex
	tenants map[string]TenantView
	err     error  // returned by every call when set
	panicOn string // method name that panics
}

var _ Tenants = (*fakeTenants)(nil)

func newFakeTenants(ids ...string) *fakeTenants {
	f := &fakeTenants{tenants: map[string]TenantView{}}
	for i, id := range ids {
		f.tenants[id] = TenantView{
			ID: id, Name: "Tenant " + id, WorkerCount: 3, WorkersRunning: 3,
			CreatedAt: time.Date(2024, 1, 1, 0, 0, i, 0, time.UTC),
		}
	}
	return f
}

func (f *fakeTenants) check(method string) error {
	if f.panicOn == method {
		panic("fake tenants: boom in " + method)
	}
	return f.err
}

func (f *fakeTenants) Create(_ context.Context, id, name string, workerCount int) (TenantView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("Create"); err != nil {
		return TenantView{}, err
	}
	if _, ok := f.tenants[id]; ok {
		return TenantView{}, persistence.ErrTenantExists
	}
	t := TenantView{ID: id, Name: name, WorkerCount: workerCount, WorkersRunning: workerCount, CreatedAt: time.Now().UTC()}
	f.tenants[id] = t
	return t, nil
}

func (f *fakeTenants) List(context.Context) ([]TenantView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("List"); err != nil {
		return nil, err
	}
	var out []TenantView
	for _, t := range f.tenants {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

func (f *fakeTenants) Get(_ context.Context, id string) (TenantView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("Get"); err != nil {
		return TenantView{}, err
	}
	t, ok := f.tenants[id]
	if !ok {
		return TenantView{}, persistence.ErrTenantNotFound
	}
	return t, nil
}

func (f *fakeTenants) Resize(_ context.Context, id string, workerCount int) (TenantView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("Resize"); err != nil {
		return TenantView{}, err
	}
	t, ok := f.tenants[id]
	if !ok {
		return TenantView{}, persistence.ErrTenantNotFound
	}
	t.WorkerCount = workerCount
	f.tenants[id] = t
	return t, nil
}

func (f *fakeTenants) Delete(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("Delete"); err != nil {
		return err
	}
	if _, ok := f.tenants[id]; !ok {
		return persistence.ErrTenantNotFound
	}
	delete(f.tenants, id)
	return nil
}

// fakePublisher records what it publishes.
type fakePublisher struct {
	mu        sync.Mutex
	published map[string][]transport.OutgoingMessage
	calls     int
	err       error
}

var _ Publisher = (*fakePublisher)(nil)

func (f *fakePublisher) Publish(_ context.Context, tenantID string, msgs []transport.OutgoingMessage) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return f.err
	}
	if f.published == nil {
		f.published = map[string][]transport.OutgoingMessage{}
	}
	f.published[tenantID] = append(f.published[tenantID], msgs...)
	return nil
}

func (f *fakePublisher) messages(tenantID string) []transport.OutgoingMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]transport.OutgoingMessage(nil), f.published[tenantID]...)
}

// fakeMessages serves stored messages in position order.
type fakeMessages struct {
	mu        sync.Mutex
	stored    map[string][]persistence.StoredMessage
	nextID    int64
	err       error
	lastAfter persistence.Position
	lastLimit int
}

var _ Messages = (*fakeMessages)(nil)

// add stores n messages for tenantID, each in its own transaction.
func (f *fakeMessages) add(tenantID string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stored == nil {
		f.stored = map[string][]persistence.StoredMessage{}
	}
	for range n {
		f.nextID++
		now := time.Now().UTC()
		f.stored[tenantID] = append(f.stored[tenantID], persistence.StoredMessage{
			ID:          f.nextID,
			MessageID:   "m-" + time.Duration(f.nextID).String(),
			Payload:     json.RawMessage(`{"n":` + jsonInt(f.nextID) + `}`),
			PublishedAt: now,
			StoredAt:    now,
			Position:    persistence.Position{TxID: uint64(1000 + f.nextID), ID: f.nextID},
		})
	}
}

func jsonInt(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func (f *fakeMessages) ListMessages(_ context.Context, tenantID string, after persistence.Position, limit int) (persistence.Page, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastAfter, f.lastLimit = after, limit
	if f.err != nil {
		return persistence.Page{}, f.err
	}
	page := persistence.Page{Next: after}
	for _, m := range f.stored[tenantID] {
		if m.Position.TxID < after.TxID || (m.Position.TxID == after.TxID && m.Position.ID <= after.ID) {
			continue
		}
		if len(page.Messages) == limit {
			page.HasMore = true
			break
		}
		page.Messages = append(page.Messages, m)
		page.Next = m.Position
	}
	return page, nil
}

type testEnv struct {
	handler http.Handler
	cfg     Config
	tenants *fakeTenants
	pub     *fakePublisher
	msgs    *fakeMessages
	reg     *prometheus.Registry
	logs    *testenv.LockedBuffer
	options []Option
}

type setupOption func(*testEnv, *[]ReadinessCheck)

func withConfig(change func(*Config)) setupOption {
	return func(e *testEnv, _ *[]ReadinessCheck) { change(&e.cfg) }
}

func withChecks(checks ...ReadinessCheck) setupOption {
	return func(_ *testEnv, c *[]ReadinessCheck) { *c = checks }
}

func withOptions(opts ...Option) setupOption {
	return func(e *testEnv, _ *[]ReadinessCheck) { e.options = append(e.options, opts...) }
}

// setup builds a handler over fakes holding the tenants "alpha" and "beta".
func setup(t *testing.T, opts ...setupOption) *testEnv {
	t.Helper()
	env := &testEnv{
		cfg: Config{
			JWTSecret:          testSecret,
			DefaultWorkerCount: 3,
			MaxWorkerCount:     64,
		},
		tenants: newFakeTenants("alpha", "beta"),
		pub:     &fakePublisher{},
		msgs:    &fakeMessages{},
		reg:     prometheus.NewRegistry(),
		logs:    &testenv.LockedBuffer{},
	}
	var checks []ReadinessCheck
	for _, opt := range opts {
		opt(env, &checks)
	}
	logger := slog.New(slog.NewJSONHandler(env.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, err := NewHandler(env.cfg, env.tenants, env.pub, env.msgs, checks, env.reg, env.reg, logger, env.options...)
	require.NoError(t, err)
	env.handler = h
	return env
}

func discardLogger() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}

func signed(t testing.TB, claims Claims) string {
	t.Helper()
	token, err := SignToken(testSecret, claims, time.Hour)
	require.NoError(t, err)
	return token
}

func adminToken(t testing.TB) string {
	return signed(t, Claims{Role: RoleAdmin})
}

func tenantToken(t testing.TB, id string) string {
	return signed(t, Claims{Role: RoleTenant, TenantID: id})
}

type request struct {
	method      string
	path        string
	token       string // sent as "Bearer <token>" unless empty
	auth        string // raw Authorization header, overrides token
	body        string
	contentType string // defaults to application/json when body is set
}

func (e *testEnv) do(t testing.TB, req request) *httptest.ResponseRecorder {
	t.Helper()
	var body io.Reader
	if req.body != "" {
		body = strings.NewReader(req.body)
	}
	r := httptest.NewRequest(req.method, req.path, body)
	if req.body != "" {
		ct := req.contentType
		if ct == "" {
			ct = "application/json"
		}
		if ct != "-" {
			r.Header.Set("Content-Type", ct)
		}
	}
	switch {
	case req.auth != "":
		r.Header.Set("Authorization", req.auth)
	case req.token != "":
		r.Header.Set("Authorization", "Bearer "+req.token)
	}
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, r)
	return rec
}

func newRecorder(e *testEnv, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, r)
	return rec
}

// requireProblem checks that rec is a problem document with status and a
// detail containing detailPart.
func requireProblem(t *testing.T, rec *httptest.ResponseRecorder, status int, detailPart string) problem {
	t.Helper()
	require.Equal(t, status, rec.Code, "body: %s", rec.Body.String())
	require.Equal(t, problemContentType, rec.Header().Get("Content-Type"))
	var p problem
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
	require.Equal(t, status, p.Status)
	require.Equal(t, http.StatusText(status), p.Title)
	require.NotEmpty(t, p.Detail)
	require.Contains(t, p.Detail, detailPart)
	return p
}

func decodeJSON[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var v T
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &v), "body: %s", rec.Body.String())
	return v
}

func TestNewHandlerRejectsBadConfig(t *testing.T) {
	t.Parallel()
	base := Config{JWTSecret: testSecret, DefaultWorkerCount: 3, MaxWorkerCount: 64}
	cases := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"short secret", func(c *Config) { c.JWTSecret = []byte("short") }, "JWTSecret"},
		{"no secret", func(c *Config) { c.JWTSecret = nil }, "JWTSecret"},
		{"no max workers", func(c *Config) { c.MaxWorkerCount = 0 }, "MaxWorkerCount"},
		{"default above max", func(c *Config) { c.DefaultWorkerCount = 65 }, "DefaultWorkerCount"},
		{"default zero", func(c *Config) { c.DefaultWorkerCount = 0 }, "DefaultWorkerCount"},
		{"negative body limit", func(c *Config) { c.MaxBodyBytes = -1 }, "MaxBodyBytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := base
			tc.change(&cfg)
			_, err := NewHandler(cfg, newFakeTenants(), &fakePublisher{}, &fakeMessages{}, nil,
				prometheus.NewRegistry(), nil, slog.New(slog.DiscardHandler))
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestNewHandlerRejectsBadDependencies(t *testing.T) {
	t.Parallel()
	cfg := Config{JWTSecret: testSecret, DefaultWorkerCount: 3, MaxWorkerCount: 64}
	logger := slog.New(slog.DiscardHandler)
	check := func(context.Context) error { return nil }

	_, err := NewHandler(cfg, nil, &fakePublisher{}, &fakeMessages{}, nil, nil, nil, logger)
	require.ErrorContains(t, err, "required")

	_, err = NewHandler(cfg, newFakeTenants(), &fakePublisher{}, &fakeMessages{},
		[]ReadinessCheck{{Name: "db", Check: check}, {Name: "db", Check: check}}, nil, nil, logger)
	require.ErrorContains(t, err, `duplicate readiness check "db"`)

	_, err = NewHandler(cfg, newFakeTenants(), &fakePublisher{}, &fakeMessages{},
		[]ReadinessCheck{{Name: "db"}}, nil, nil, logger)
	require.ErrorContains(t, err, "readiness check")

	reg := prometheus.NewRegistry()
	_, err = NewHandler(cfg, newFakeTenants(), &fakePublisher{}, &fakeMessages{}, nil, reg, nil, logger)
	require.NoError(t, err)
	_, err = NewHandler(cfg, newFakeTenants(), &fakePublisher{}, &fakeMessages{}, nil, reg, nil, logger)
	require.ErrorContains(t, err, "messaging_http_requests_total")
}

func TestNewHandlerWithoutRegistryServesMetrics(t *testing.T) {
	t.Parallel()
	cfg := Config{JWTSecret: testSecret, DefaultWorkerCount: 3, MaxWorkerCount: 64}
	h, err := NewHandler(cfg, newFakeTenants(), &fakePublisher{}, &fakeMessages{}, nil, nil, nil,
		slog.New(slog.DiscardHandler))
	require.NoError(t, err)

	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/health", nil))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, rec.Body.String(), `messaging_http_requests_total{code="200",method="GET",route="/health"} 1`)
}

func TestErrUnavailableMapsTo503(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.pub.err = errors.Join(errors.New("publishing"), transport.ErrUnavailable)

	rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages",
		token: tenantToken(t, "alpha"), body: `{"payload": 1}`})
	requireProblem(t, rec, http.StatusServiceUnavailable, "broker is unavailable")
	require.Equal(t, "5", rec.Header().Get("Retry-After"))
}

func TestTenantDeletingMapsTo503(t *testing.T) {
	t.Parallel()
	admin := adminToken(t)
	cases := []struct {
		name      string
		publisher bool // the error comes from the publisher, else from Tenants
		req       request
	}{
		{"publish", true, request{method: http.MethodPost, path: "/api/v1/messages",
			token: tenantToken(t, "alpha"), body: `{"payload": 1}`}},
		{"resize", false, request{method: http.MethodPut, path: "/api/v1/tenants/alpha/config/concurrency",
			token: admin, body: `{"worker_count": 2}`}},
		{"delete", false, request{method: http.MethodDelete, path: "/api/v1/tenants/alpha", token: admin}},
	}
	for _, tc := range cases {
		env := setup(t)
		err := fmt.Errorf("supervisor: %w", ErrTenantDeleting)
		if tc.publisher {
			env.pub.err = err
		} else {
			env.tenants.err = err
		}

		rec := env.do(t, tc.req)
		requireProblem(t, rec, http.StatusServiceUnavailable, "the tenant is being deleted")
		require.Equal(t, "5", rec.Header().Get("Retry-After"), tc.name)
	}
}

// A tenant token for another tenant gets the same 404 whether or not that
// tenant is being deleted.
func TestTenantDeletingHiddenFromOtherTenants(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.tenants.err = ErrTenantDeleting
	gamma := tenantToken(t, "gamma")

	for _, path := range []string{"/api/v1/tenants/%s", "/api/v1/tenants/%s/messages"} {
		deleting := env.do(t, request{method: http.MethodGet, path: fmt.Sprintf(path, "alpha"), token: gamma})
		unknown := env.do(t, request{method: http.MethodGet, path: fmt.Sprintf(path, "ghost"), token: gamma})
		requireProblem(t, deleting, http.StatusNotFound, "tenant not found")
		require.Equal(t, unknown.Code, deleting.Code, path)
		require.Equal(t, unknown.Header(), deleting.Header(), path)
		require.Equal(t, unknown.Body.String(), deleting.Body.String(), path)
	}
}

func TestShuttingDownMapsTo503(t *testing.T) {
	t.Parallel()
	env := setup(t)
	env.tenants.err = fmt.Errorf("%w: supervisor stopped", ErrShuttingDown)

	for _, req := range []request{
		{method: http.MethodPost, path: "/api/v1/tenants", token: adminToken(t), body: `{"name": "late"}`},
		{method: http.MethodPut, path: "/api/v1/tenants/alpha/config/concurrency", token: adminToken(t),
			body: `{"worker_count": 2}`},
		{method: http.MethodDelete, path: "/api/v1/tenants/alpha", token: adminToken(t)},
	} {
		rec := env.do(t, req)
		requireProblem(t, rec, http.StatusServiceUnavailable, "shutting down")
		require.Equal(t, "5", rec.Header().Get("Retry-After"), "%s %s", req.method, req.path)
	}
}

// A tenant change that timed out gets 503 with Retry-After, whether it was
// dropped in the queue or may still take effect, never 500.
func TestTenantChangeTimeoutMapsTo503(t *testing.T) {
	t.Parallel()
	admin := adminToken(t)
	outcomes := []struct {
		err    error
		detail string
	}{
		{ErrChangeNotApplied, "was not applied; retry later"},
		{ErrChangeMaybeApplied, "may still take effect; GET the tenant"},
	}
	for _, outcome := range outcomes {
		env := setup(t)
		env.tenants.err = fmt.Errorf("%w: supervisor request: %w", outcome.err, context.DeadlineExceeded)
		for _, req := range []request{
			{method: http.MethodPost, path: "/api/v1/tenants", token: admin, body: `{"name": "late", "id": "late"}`},
			{method: http.MethodPut, path: "/api/v1/tenants/alpha/config/concurrency", token: admin,
				body: `{"worker_count": 2}`},
			{method: http.MethodDelete, path: "/api/v1/tenants/alpha", token: admin},
		} {
			rec := env.do(t, req)
			requireProblem(t, rec, http.StatusServiceUnavailable, outcome.detail)
			require.Equal(t, "5", rec.Header().Get("Retry-After"), "%s %s", req.method, req.path)
		}
	}
}

func TestLostDatabaseMapsTo503(t *testing.T) {
	t.Parallel()
	env := setup(t)
	// What pgx returns when pg_terminate_backend ends the connection.
	env.tenants.err = fmt.Errorf("get tenant: %w",
		&pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"})

	rec := env.do(t, request{method: http.MethodPost, path: "/api/v1/messages",
		token: tenantToken(t, "alpha"), body: `{"payload": 1}`})
	requireProblem(t, rec, http.StatusServiceUnavailable, "database is unavailable")
	require.Equal(t, "5", rec.Header().Get("Retry-After"))
	require.Empty(t, env.pub.messages("alpha"), "nothing is published when the tenant lookup failed")
}
