// Package api serves the HTTP API: tenant administration, publishing and
// reading messages, health, readiness and Prometheus metrics.
//
// Requests carry an HS256 JWT in "Authorization: Bearer <token>". Errors are
// RFC 9457 problem documents (application/problem+json) with title, status
// and detail. A tenant token never learns whether another tenant exists: it
// gets the same 404 for another tenant's id as for an unknown id.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/go-messaging-system/messaging/persistence"
	"github.com/go-messaging-system/messaging/transport"
)

// TenantView is a tenant as the API returns it.
type TenantView struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	WorkerCount    int       `json:"worker_count"`
	WorkersRunning int       `json:"workers_running"`
	CreatedAt      time.Time `json:"created_at"`
}

// Tenants manages tenants and their workers.
type Tenants interface {
	// Create returns persistence.ErrTenantExists when the id is taken.
	Create(ctx context.Context, id, name string, workerCount int) (TenantView, error)
	List(ctx context.Context) ([]TenantView, error)
	// Get, Resize and Delete return persistence.ErrTenantNotFound for an
	// unknown id.
	Get(ctx context.Context, id string) (TenantView, error)
	Resize(ctx context.Context, id string, workerCount int) (TenantView, error)
	Delete(ctx context.Context, id string) error
}

// Publisher sends messages to a tenant's queue and returns once the broker
// has confirmed all of them. An error wrapping transport.ErrUnavailable
// means the broker is down or did not confirm in time.
type Publisher interface {
	Publish(ctx context.Context, tenantID string, msgs []transport.OutgoingMessage) error
}

// Messages reads stored messages in cursor order.
type Messages interface {
	ListMessages(ctx context.Context, tenantID string, after persistence.Position, limit int) (persistence.Page, error)
}

// ReadinessCheck is one dependency that /ready checks. Check should return
// within the context's deadline.
type ReadinessCheck struct {
	Name  string
	Check func(ctx context.Context) error
}

// Defaults and bounds of Config and of query parameters.
const (
	DefaultMaxBodyBytes     = 1 << 20   // 1 MiB
	DefaultMaxPayloadBytes  = 256 << 10 // 256 KiB
	DefaultMaxBatchMessages = 1000

	defaultLimit = 10
	maxLimit     = 1000

	// minSecretBytes is the HS256 key size that RFC 7518, section 3.2,
	// requires: at least the 256-bit hash output.
	minSecretBytes = 32

	readinessTimeout = 2 * time.Second
	// requestTimeout bounds the backend calls of one request. It is shorter
	// than ServerWriteTimeout so that the 503 still reaches the client.
	requestTimeout = ServerWriteTimeout - 5*time.Second
)

// Config holds the API settings. Zero values take the documented defaults.
type Config struct {
	// JWTSecret is the HS256 key for tokens, at least 32 bytes. Required.
	JWTSecret []byte
	// DefaultWorkerCount is the worker_count of a tenant created without
	// one. Required, 1..MaxWorkerCount.
	DefaultWorkerCount int
	// MaxWorkerCount is the largest worker_count the API accepts. Required.
	MaxWorkerCount int
	// MaxBodyBytes caps a request body. Default 1 MiB.
	MaxBodyBytes int64
	// MaxPayloadBytes caps one message payload after compaction. Default
	// 256 KiB.
	MaxPayloadBytes int
	// MaxBatchMessages caps the messages of one POST. Default 1000.
	MaxBatchMessages int
	// CursorKey is the HMAC-SHA256 key of pagination cursors. Default: a key
	// derived from JWTSecret, so cursors stay valid across restarts.
	CursorKey []byte
}

func (c *Config) setDefaults() {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if c.MaxBatchMessages == 0 {
		c.MaxBatchMessages = DefaultMaxBatchMessages
	}
	if len(c.CursorKey) == 0 {
		c.CursorKey = deriveKey(c.JWTSecret, "messaging cursor key v1")
	}
}

func (c *Config) validate() error {
	if err := checkSecret(c.JWTSecret); err != nil {
		return fmt.Errorf("invalid JWTSecret: %w", err)
	}
	if c.MaxWorkerCount < 1 {
		return fmt.Errorf("invalid MaxWorkerCount %d: set it to 1 or more", c.MaxWorkerCount)
	}
	if c.DefaultWorkerCount < 1 || c.DefaultWorkerCount > c.MaxWorkerCount {
		return fmt.Errorf("invalid DefaultWorkerCount %d: set it between 1 and MaxWorkerCount (%d)",
			c.DefaultWorkerCount, c.MaxWorkerCount)
	}
	if c.MaxBodyBytes < 1 || c.MaxPayloadBytes < 1 || c.MaxBatchMessages < 1 {
		return errors.New("invalid limits: MaxBodyBytes, MaxPayloadBytes and MaxBatchMessages must be positive")
	}
	return nil
}

// handler holds what the route handlers share.
type handler struct {
	cfg      Config
	tenants  Tenants
	pub      Publisher
	msgs     Messages
	ready    []ReadinessCheck
	cursors  cursorCodec
	metrics  *httpMetrics
	logger   *slog.Logger
	errorLog *logLimiter
	router   *httprouter.Router
}

// NewHandler returns the HTTP handler of the API. It registers the HTTP
// metrics on reg and serves gatherer on /metrics. A nil reg keeps the HTTP
// metrics on a private registry, and a nil gatherer serves reg.
func NewHandler(cfg Config, tenants Tenants, pub Publisher, msgs Messages,
	ready []ReadinessCheck, reg *prometheus.Registry, gatherer prometheus.Gatherer,
	logger *slog.Logger) (http.Handler, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("creating api handler: %w", err)
	}
	if tenants == nil || pub == nil || msgs == nil || logger == nil {
		return nil, errors.New("creating api handler: tenants, publisher, messages and logger are required")
	}
	if err := validateChecks(ready); err != nil {
		return nil, fmt.Errorf("creating api handler: %w", err)
	}

	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if gatherer == nil {
		gatherer = reg
	}
	metrics, err := newHTTPMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("creating api handler: %w", err)
	}

	h := &handler{
		cfg:      cfg,
		tenants:  tenants,
		pub:      pub,
		msgs:     msgs,
		ready:    ready,
		cursors:  cursorCodec{key: cfg.CursorKey},
		metrics:  metrics,
		logger:   logger,
		errorLog: newLogLimiter(),
	}
	h.router = h.routes(gatherer)
	return h.wrap(h.router), nil
}

func validateChecks(checks []ReadinessCheck) error {
	seen := make(map[string]bool, len(checks))
	for _, c := range checks {
		if c.Name == "" || c.Check == nil {
			return errors.New("every readiness check needs a name and a function")
		}
		if seen[c.Name] {
			return fmt.Errorf("duplicate readiness check %q", c.Name)
		}
		seen[c.Name] = true
	}
	return nil
}

// Access rules of a route.
type access int

const (
	public      access = iota // no token
	adminOnly                 // admin token
	tenantOnly                // tenant token; the tenant comes from the token
	adminOrSelf               // admin token, or the token of the tenant in :id
)

// authedHandle is a route handler that runs after authorization. tenantID
// is the tenant the request acts on: the :id parameter, or the token's
// tenant on tenantOnly routes.
type authedHandle func(w http.ResponseWriter, r *http.Request, ps httprouter.Params, tenantID string)

func (h *handler) routes(gatherer prometheus.Gatherer) *httprouter.Router {
	rt := httprouter.New()
	rt.RedirectTrailingSlash = false
	rt.RedirectFixedPath = false
	rt.HandleMethodNotAllowed = true
	rt.HandleOPTIONS = true
	rt.GlobalOPTIONS = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	rt.NotFound = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	rt.MethodNotAllowed = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusMethodNotAllowed,
			fmt.Sprintf("method %s is not allowed here; allowed: %s", r.Method, w.Header().Get("Allow")))
	})

	h.handle(rt, http.MethodPost, "/api/v1/tenants", adminOnly, h.createTenant)
	h.handle(rt, http.MethodGet, "/api/v1/tenants", adminOnly, h.listTenants)
	h.handle(rt, http.MethodGet, "/api/v1/tenants/:id", adminOrSelf, h.getTenant)
	h.handle(rt, http.MethodPut, "/api/v1/tenants/:id/config/concurrency", adminOnly, h.resizeTenant)
	h.handle(rt, http.MethodDelete, "/api/v1/tenants/:id", adminOnly, h.deleteTenant)
	h.handle(rt, http.MethodGet, "/api/v1/tenants/:id/messages", adminOrSelf, h.listMessages)
	h.handle(rt, http.MethodPost, "/api/v1/messages", tenantOnly, h.publishMessages)
	h.handle(rt, http.MethodGet, "/api/v1/messages", tenantOnly, h.listMessages)

	h.handle(rt, http.MethodGet, "/health", public, h.health)
	h.handle(rt, http.MethodGet, "/ready", public, h.readiness)
	h.handle(rt, http.MethodGet, "/metrics", public, h.metricsHandler(gatherer))
	return rt
}

// handle registers next under path, labels its metrics with path (the route
// template, never the raw URL) and runs the access rule before next.
func (h *handler) handle(rt *httprouter.Router, method, path string, rule access, next authedHandle) {
	rt.Handle(method, path, func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		setRoute(r.Context(), path)

		tenantID, ok := h.authorize(w, r, ps, rule)
		if !ok {
			return
		}
		next(w, r, ps, tenantID)
	})
}
