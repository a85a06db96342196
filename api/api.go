// Package api serves the HTTP API: tenant administration, publishing and
// reading messages, health, readiness and Prometheus metrics.
//
// Requests carry a JWT in "Authorization: Bearer <token>": HS256 with the
// configured secret, or RS256 or ES256 with the public key that its kid
// header names. Errors are RFC 9457 problem documents
// (application/problem+json) with title, status and detail. A tenant token
// never learns whether another tenant exists: it gets the same 404 for
// another tenant's id as for an unknown id. openapi.json documents every
// route, status and limit, and is served at GET /api/v1/openapi.json.
//
// Limits, with the status past each one:
//
//   - request body: Config.MaxBodyBytes (1 MiB), 413;
//   - request headers: ServerMaxHeaderBytes (32 KiB) in all, 431 from
//     net/http before any route runs;
//   - token: 4096 bytes, 401;
//   - messages per publish request: Config.MaxBatchMessages (1000), or
//     Config.PublishRateBurst when that is lower, 400;
//   - payload: Config.MaxPayloadBytes (256 KiB) as PostgreSQL stores it, 400;
//   - message_id: 200 bytes, 400;
//   - tenant name: 200 characters, 400;
//   - tenant id: 63 characters of [a-z0-9_-], 400 in a request body and 404
//     in a path;
//   - worker_count: Config.MaxWorkerCount, 400;
//   - limit: 1000 messages or 100 dead letters per page, 400;
//   - cursor: 64 characters, 400;
//   - message_ids per replay request: 1000, 400;
//   - publish rate per tenant: Config.PublishRateLimit messages per second,
//     429 with Retry-After.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
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

// ErrTenantDeleting is wrapped by Tenants and Publisher errors for a tenant
// while a delete of it is in progress. The API responds 503 with
// Retry-After, not 404, because a delete that fails keeps the tenant.
var ErrTenantDeleting = errors.New("tenant is being deleted")

// ErrShuttingDown is returned by Tenants once the server has begun to shut
// down and no longer creates, resizes or deletes tenants. The API returns
// 503 with Retry-After for it, so that a client retries against the next
// process.
var ErrShuttingDown = errors.New("server shutting down")

// ErrChangeNotApplied is wrapped by Tenants errors for a create, resize or
// delete that timed out while queued behind other tenant changes. It was
// dropped, so a retry is safe. The API responds 503 with Retry-After.
var ErrChangeNotApplied = errors.New("tenant change timed out before it was applied")

// ErrChangeMaybeApplied is wrapped by Tenants errors for a create, resize
// or delete that timed out while it was being applied. It goes on and may
// take effect, so the API responds 503 with Retry-After and a detail that
// asks the client to read the tenant before retrying.
var ErrChangeMaybeApplied = errors.New("tenant change timed out while being applied")

// Tenants manages tenants and their workers. Create, Resize and Delete
// return an error wrapping ErrShuttingDown during a shutdown, and one
// wrapping ErrChangeNotApplied or ErrChangeMaybeApplied when they time out.
type Tenants interface {
	// Create returns persistence.ErrTenantExists when the id is taken.
	Create(ctx context.Context, id, name string, workerCount int) (TenantView, error)
	List(ctx context.Context) ([]TenantView, error)
	// Get, Resize and Delete return persistence.ErrTenantNotFound for an
	// unknown id. Resize and Delete may return ErrTenantDeleting.
	Get(ctx context.Context, id string) (TenantView, error)
	Resize(ctx context.Context, id string, workerCount int) (TenantView, error)
	Delete(ctx context.Context, id string) error
}

// Publisher sends messages to a tenant's queue and returns once the broker
// has confirmed all of them. An error wrapping transport.ErrUnavailable
// means the broker is down or did not confirm in time. It returns
// persistence.ErrTenantNotFound for a tenant that does not run and
// ErrTenantDeleting for one whose delete is in progress.
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
	DefaultMaxBodyBytes     = 1 << 20   // 1 MiB; a larger body gets 413
	DefaultMaxPayloadBytes  = 256 << 10 // 256 KiB; a larger payload gets 400
	DefaultMaxBatchMessages = 1000      // more messages in one request get 400

	defaultLimit = 10
	maxLimit     = 1000 // a larger limit query value gets 400

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
	// JWTSecret is the HS256 key for tokens, at least 32 bytes. Without it
	// HS256 tokens are rejected. JWTSecret, PublicKeys or both are
	// required.
	JWTSecret []byte
	// PublicKeys verify RS256 and ES256 tokens, each selected by the
	// token's kid header and pinned to its own algorithm. See
	// ParsePublicKeys.
	PublicKeys []PublicKey
	// Issuer, when set, must equal the iss claim of every token.
	Issuer string
	// Audience, when set, must be among the aud claim values of every
	// token.
	Audience string
	// DefaultWorkerCount is the worker_count of a tenant created without
	// one. Required, 1..MaxWorkerCount.
	DefaultWorkerCount int
	// MaxWorkerCount is the largest worker_count the API accepts. Required.
	MaxWorkerCount int
	// MaxBodyBytes caps a request body; a larger body gets 413. Default
	// 1 MiB.
	MaxBodyBytes int64
	// MaxPayloadBytes caps one message payload after compaction, with
	// numbers counted as PostgreSQL jsonb prints them; a larger payload
	// gets 400. Default 256 KiB.
	MaxPayloadBytes int
	// MaxBatchMessages caps the messages of one POST; more get 400.
	// Default 1000.
	MaxBatchMessages int
	// PublishRateLimit is the sustained number of messages per second that
	// each tenant may publish over HTTP. Zero, the default, turns the limit
	// off.
	PublishRateLimit float64
	// PublishRateBurst is the number of messages a tenant may publish at
	// once before PublishRateLimit applies, and so also caps the messages
	// of one request. Default max(MaxBatchMessages, PublishRateLimit
	// rounded up). Ignored when PublishRateLimit is zero.
	PublishRateBurst int
	// CursorKey is the HMAC-SHA256 key of pagination cursors, at least 32
	// bytes. Default: a key derived from JWTSecret, so cursors stay valid
	// across restarts. Required when JWTSecret is empty.
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
	if c.PublishRateLimit > 0 && c.PublishRateBurst == 0 {
		c.PublishRateBurst = max(c.MaxBatchMessages, int(math.Ceil(c.PublishRateLimit)))
	}
	if len(c.CursorKey) == 0 && len(c.JWTSecret) > 0 {
		c.CursorKey = deriveKey(c.JWTSecret, "messaging cursor key v1")
	}
}

func (c *Config) validate() error {
	if len(c.JWTSecret) == 0 && len(c.PublicKeys) == 0 {
		return errors.New("invalid JWTSecret: set JWTSecret (HS256), PublicKeys (RS256, ES256) or both")
	}
	if len(c.JWTSecret) > 0 {
		if err := checkSecret(c.JWTSecret); err != nil {
			return fmt.Errorf("invalid JWTSecret: %w", err)
		}
	}
	if len(c.CursorKey) < minSecretBytes {
		return fmt.Errorf("invalid CursorKey: it has %d bytes, need at least %d (it is required when JWTSecret is empty)",
			len(c.CursorKey), minSecretBytes)
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
	if c.PublishRateLimit < 0 || math.IsNaN(c.PublishRateLimit) || math.IsInf(c.PublishRateLimit, 0) {
		return fmt.Errorf("invalid PublishRateLimit %v: set it to a positive number of messages per second, or 0 for no limit",
			c.PublishRateLimit)
	}
	if c.PublishRateLimit > 0 && c.PublishRateBurst < 1 {
		return fmt.Errorf("invalid PublishRateBurst %d: set it to 1 or more", c.PublishRateBurst)
	}
	return nil
}

// Option configures NewHandler beyond Config.
type Option func(*handler)

// WithDeadLetters serves the dead-letter routes from d. Without it they
// respond with 501 Not Implemented.
func WithDeadLetters(d DeadLetters) Option {
	return func(h *handler) { h.deadLetters = d }
}

// handler holds what the route handlers share.
type handler struct {
	cfg      Config
	tenants  Tenants
	pub      Publisher
	msgs     Messages
	ready    []ReadinessCheck
	cursors  cursorCodec
	verifier *tokenVerifier
	limiter  *publishLimiter
	// deadLetters is nil unless WithDeadLetters was given.
	deadLetters DeadLetters
	// routeList has "METHOD /path/:param" of every registered route.
	routeList []string
	metrics   *httpMetrics
	logger    *slog.Logger
	errorLog  *logLimiter
	router    *httprouter.Router
}

// NewHandler returns the HTTP handler of the API. It registers the HTTP
// metrics on reg and serves gatherer on /metrics. A nil reg keeps the HTTP
// metrics on a private registry, and a nil gatherer serves reg. opts add
// optional services such as WithDeadLetters.
func NewHandler(cfg Config, tenants Tenants, pub Publisher, msgs Messages,
	ready []ReadinessCheck, reg *prometheus.Registry, gatherer prometheus.Gatherer,
	logger *slog.Logger, opts ...Option) (http.Handler, error) {
	h, err := newHandler(cfg, tenants, pub, msgs, ready, reg, gatherer, logger, opts...)
	if err != nil {
		return nil, fmt.Errorf("creating api handler: %w", err)
	}
	return h.wrap(h.router), nil
}

// newHandler builds the handler and its router, without the middleware.
func newHandler(cfg Config, tenants Tenants, pub Publisher, msgs Messages,
	ready []ReadinessCheck, reg *prometheus.Registry, gatherer prometheus.Gatherer,
	logger *slog.Logger, opts ...Option) (*handler, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	verifier, err := newTokenVerifier(cfg.JWTSecret, cfg.PublicKeys, cfg.Issuer, cfg.Audience)
	if err != nil {
		return nil, fmt.Errorf("invalid PublicKeys: %w", err)
	}
	if tenants == nil || pub == nil || msgs == nil || logger == nil {
		return nil, errors.New("tenants, publisher, messages and logger are required")
	}
	if err := validateChecks(ready); err != nil {
		return nil, err
	}

	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if gatherer == nil {
		gatherer = reg
	}
	metrics, err := newHTTPMetrics(reg)
	if err != nil {
		return nil, err
	}

	h := &handler{
		cfg:      cfg,
		tenants:  tenants,
		pub:      pub,
		msgs:     msgs,
		ready:    ready,
		cursors:  cursorCodec{key: cfg.CursorKey},
		verifier: verifier,
		limiter:  newPublishLimiter(cfg.PublishRateLimit, cfg.PublishRateBurst),
		metrics:  metrics,
		logger:   logger,
		errorLog: newLogLimiter(),
	}
	for _, opt := range opts {
		opt(h)
	}
	h.router = h.routes(gatherer)
	return h, nil
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
	h.handle(rt, http.MethodGet, "/api/v1/tenants/:id/dead-letters", adminOnly, h.listDeadLetters)
	h.handle(rt, http.MethodPost, "/api/v1/tenants/:id/dead-letters/replay", adminOnly, h.replayDeadLetters)
	h.handle(rt, http.MethodGet, "/api/v1/openapi.json", public, h.openAPI)

	h.handle(rt, http.MethodGet, "/health", public, h.health)
	h.handle(rt, http.MethodGet, "/ready", public, h.readiness)
	h.handle(rt, http.MethodGet, "/metrics", public, h.metricsHandler(gatherer))
	return rt
}

// handle registers next under path, labels its metrics with path (the route
// template, never the raw URL) and runs the access rule before next.
func (h *handler) handle(rt *httprouter.Router, method, path string, rule access, next authedHandle) {
	h.routeList = append(h.routeList, method+" "+path)
	rt.Handle(method, path, func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		setRoute(r.Context(), path)

		tenantID, ok := h.authorize(w, r, ps, rule)
		if !ok {
			return
		}
		next(w, r, ps, tenantID)
	})
}
